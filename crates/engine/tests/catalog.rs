//! Catalog: built-in files, user overrides, the text table, bad files.

use std::fs;

use switchyard_engine::{Catalog, Engine, EngineConfig, EngineError};

#[test]
fn builtin_catalog_lists_everything() {
    let c = Catalog::builtin().unwrap();
    let names = |v: Vec<&str>| v.join(",");
    assert_eq!(
        names(c.gpus.iter().map(|g| g.name.as_str()).collect()),
        "H100-SXM,H200,B200,GB200"
    );
    assert_eq!(
        names(c.models.iter().map(|m| m.name.as_str()).collect()),
        "Qwen3-32B,Llama-3.1-8B,Llama-3.1-70B,DeepSeek-V3,DeepSeek-V3.2,Qwen3-235B-A22B,MiniMax-M2.5"
    );
    assert_eq!(
        names(c.engines.iter().map(|e| e.name.as_str()).collect()),
        "vllm,sglang,trtllm"
    );
    // Aliases and case-insensitive lookup.
    assert_eq!(c.gpu("h100").unwrap().name, "H100-SXM");
    assert_eq!(c.model("llama-3.3-70b").unwrap().name, "Llama-3.1-70B");
    let t = c.render_table();
    for needle in [
        "H100-SXM",
        "GB200",
        "DeepSeek-V3.2",
        "MLA 128h+DSA2048",
        "MoE 256e top8+1",
        "671.0B",
        "trtllm",
    ] {
        assert!(t.contains(needle), "table lacks {needle}:\n{t}");
    }
    println!("{t}");
}

#[test]
fn user_directory_adds_and_overrides() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("gpus")).unwrap();
    fs::create_dir_all(dir.path().join("engines")).unwrap();
    // A new GPU...
    fs::write(
        dir.path().join("gpus/b300.toml"),
        r#"name = "B300"
bf16_tflops = 2500.0
fp8_tflops = 5000.0
fp4_tflops = 15000.0
memory_gib = 268.0
hbm_tb_s = 8.0
nvlink_gb_s = 900.0
nvlink_domain = 8
nic_gb_s = 100.0
"#,
    )
    .unwrap();
    // ...and an override of a built-in engine profile (same name, different overhead).
    let mut vllm = include_str!("../../../data/catalog/engines/vllm.toml").to_string();
    vllm = vllm.replace("step_overhead_us = ", "step_overhead_us = 1");
    fs::write(dir.path().join("engines/vllm.toml"), &vllm).unwrap();
    let c = Catalog::load(Some(dir.path())).unwrap();
    assert_eq!(c.gpus.len(), 5);
    assert_eq!(c.engines.len(), 3);
    let base = Catalog::builtin()
        .unwrap()
        .engine("vllm")
        .unwrap()
        .step_overhead_us;
    assert!(c.engine("vllm").unwrap().step_overhead_us > base);
    // The new GPU is usable.
    let e = Engine::new(
        &c,
        &EngineConfig {
            gpu: "B300".into(),
            ..EngineConfig::default()
        },
    )
    .unwrap();
    assert!(e.description().contains("B300"));
}

#[test]
fn bad_catalog_files_are_reported_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("models")).unwrap();
    fs::write(
        dir.path().join("models/broken.toml"),
        "name = \"x\"\nlayers = 2\nhiddn = 3\n",
    )
    .unwrap();
    let err = Catalog::load(Some(dir.path())).unwrap_err();
    match &err {
        EngineError::Catalog { file, reason } => {
            assert!(file.ends_with("models/broken.toml"), "{file}");
            assert!(reason.contains("hiddn"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    fs::write(
        dir.path().join("models/broken.toml"),
        "name = \"x\"\nlayers = 2\nhidden = 64\nvocab = 10\nmax_context = 100\n[dense_ffn]\nintermediate = 128\n",
    )
    .unwrap();
    let err = Catalog::load(Some(dir.path())).unwrap_err().to_string();
    assert!(err.contains("exactly one of [gqa] or [mla]"), "{err}");
    assert!(Catalog::load(Some(&dir.path().join("missing"))).is_err());
}
