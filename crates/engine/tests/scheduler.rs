//! Scheduler, block manager and prefix cache: small cases with hand-computed expectations.

use switchyard_engine::{
    BatchShape, Catalog, Engine, EngineConfig, EngineError, FinishReason, Finished, KvDtype,
    Request, Role, StepOutcome, WeightDtype,
};
use switchyard_kv::KvEvent;

fn catalog() -> Catalog {
    Catalog::builtin().unwrap()
}

fn llama8b(f: impl FnOnce(&mut EngineConfig)) -> Engine {
    let mut cfg = EngineConfig {
        gpu: "H100-SXM".into(),
        model: "Llama-3.1-8B".into(),
        ..EngineConfig::default()
    };
    f(&mut cfg);
    Engine::new(&catalog(), &cfg).unwrap()
}

fn req(id: u64, prompt: u32, hashes: &[u64], out: u32) -> Request {
    Request {
        id,
        prompt_tokens: prompt,
        block_hashes: hashes.to_vec(),
        max_output_tokens: out,
        dp_rank: None,
    }
}

fn decode_shape(n: u32, ctx: u64) -> BatchShape {
    BatchShape {
        decode_seqs: n,
        decode_ctx: ctx,
        decode_ctx_clipped: ctx,
        logits: n,
        ..Default::default()
    }
}

fn chunk_shape(p: u64, c: u64, completes: bool) -> BatchShape {
    let mut b = BatchShape::default();
    b.add_chunk(p, c, u64::MAX, completes);
    b
}

/// Durations come back as `end - start`, which rounds; compare within an ulp or two.
fn assert_close(got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-12 * want.abs().max(1e-9),
        "got {got}, want {want}"
    );
}

fn events(o: &StepOutcome) -> Vec<KvEvent> {
    o.kv_events.iter().map(|e| e.event.clone()).collect()
}

#[test]
fn single_request_lifecycle_by_hand() {
    let mut e = llama8b(|_| {});
    let hashes: Vec<u64> = (1..=6).collect(); // 100 tokens = 6 full blocks of 16 + 4
    e.admit(req(7, 100, &hashes, 3), 0.0).unwrap();
    let o = e.step(0.0);
    assert_eq!(o.started, vec![7]);
    assert_eq!(o.first_tokens, vec![7]);
    assert_eq!(o.scheduled_tokens, 100);
    assert_close(o.duration(), e.step_time(&[chunk_shape(0, 100, true)]));
    assert_eq!(
        events(&o),
        vec![KvEvent::Stored {
            parent: None,
            blocks: hashes.clone()
        }]
    );
    // Decode 1: attends over 100 prompt tokens + the first output token.
    let t1 = o.end;
    let o = e.step(t1);
    assert_eq!(o.start, t1);
    assert_eq!(o.decoded, vec![7]);
    assert_close(o.duration(), e.step_time(&[decode_shape(1, 101)]));
    let o = e.step(o.end);
    assert_close(o.duration(), e.step_time(&[decode_shape(1, 102)]));
    assert_eq!(o.finished.len(), 1);
    assert_eq!(o.finished[0].output_tokens, 3);
    assert_eq!(o.finished[0].reason, FinishReason::Length);
    // Freed: all blocks back in the free queue, the 6 hashed ones still cached.
    let l = e.load();
    assert_eq!((l.running, l.waiting, l.kv_blocks_used), (0, 0, 0));
    assert_eq!(e.cached_prefix_tokens(0, &hashes), 96);
    // Nothing left: an empty step changes nothing.
    let before = e.stats().steps;
    let o = e.step(10.0);
    assert_eq!((o.start, o.end), (10.0, 10.0));
    assert_eq!(e.stats().steps, before);
    assert_eq!(e.stats().generated_tokens, 3);
}

#[test]
fn chunked_prefill_respects_the_token_budget() {
    let mut e = llama8b(|c| {
        c.max_num_batched_tokens = Some(1024);
        c.max_num_seqs = Some(8);
    });
    e.admit(req(1, 2500, &[], 2), 0.0).unwrap();
    let o1 = e.step(0.0);
    assert_eq!(o1.scheduled_tokens, 1024);
    assert!(o1.first_tokens.is_empty());
    assert_close(o1.duration(), e.step_time(&[chunk_shape(0, 1024, false)]));
    // A second request arrives; it waits for budget behind the running prefill (FCFS).
    e.admit(req(2, 100, &[], 2), o1.end).unwrap();
    let o2 = e.step(o1.end);
    assert_eq!(o2.scheduled_tokens, 1024);
    assert!(o2.started.is_empty());
    assert_close(
        o2.duration(),
        e.step_time(&[chunk_shape(1024, 1024, false)]),
    );
    // Last 452 tokens, then request 2 starts with the remaining 572 tokens of budget.
    let o3 = e.step(o2.end);
    assert_eq!(o3.first_tokens, vec![1, 2]);
    assert_eq!(o3.started, vec![2]);
    let mut shape = chunk_shape(2048, 452, true);
    shape.add_chunk(0, 100, u64::MAX, true);
    assert_close(o3.duration(), e.step_time(&[shape]));
    // Both decode together, then finish.
    let o4 = e.step(o3.end);
    assert_close(o4.duration(), e.step_time(&[decode_shape(2, 2501 + 101)]));
    assert_eq!(o4.finished.len(), 2);
}

#[test]
fn prefix_cache_hits_and_events() {
    let mut e = llama8b(|_| {});
    e.admit(req(1, 64, &[1, 2, 3, 4], 2), 0.0).unwrap();
    let o = e.step(0.0);
    let o = e.step(o.end);
    assert_eq!(o.finished.len(), 1);
    // Shares the first three blocks: 48 cached tokens, computes 32; stores only blocks 9, 10.
    e.admit(req(2, 80, &[1, 2, 3, 9, 10], 2), o.end).unwrap();
    let o = e.step(o.end);
    assert_close(o.duration(), e.step_time(&[chunk_shape(48, 32, true)]));
    assert_eq!(
        events(&o),
        vec![KvEvent::Stored {
            parent: Some(3),
            blocks: vec![9, 10]
        }]
    );
    assert_eq!(e.stats().prompt_tokens, 144);
    assert_eq!(e.stats().cached_prompt_tokens, 48);
    // A full hit must still compute its last token: (64 - 1) / 16 = 3 blocks reused.
    e.admit(req(3, 64, &[1, 2, 3, 4], 2), o.end).unwrap();
    let o = e.step(o.end);
    let mut shape = decode_shape(1, 81);
    shape.add_chunk(48, 16, u64::MAX, true);
    assert_close(o.duration(), e.step_time(&[shape]));
    assert!(
        events(&o).is_empty(),
        "block 4 is already cached: no new Stored event"
    );
    assert_eq!(e.stats().cached_prompt_tokens, 96);
}

#[test]
fn lru_eviction_emits_removed_in_order() {
    let mut e = llama8b(|c| c.num_gpu_blocks_override = Some(8));
    assert_eq!(e.kv_capacity_blocks(), 8);
    e.admit(req(1, 64, &[1, 2, 3, 4], 2), 0.0).unwrap();
    let o = e.step(0.0); // blocks 0..3 (hashed)
    let o = e.step(o.end); // decode: block 4 (private)
    assert_eq!(o.finished.len(), 1);
    // Free queue now: 5 6 7 | 4 3 2 1 0 (a request's blocks are freed tail first).
    e.admit(req(2, 112, &[20, 21, 22, 23, 24, 25, 26], 2), o.end)
        .unwrap();
    let o = e.step(o.end);
    assert_eq!(
        events(&o),
        vec![
            KvEvent::Removed {
                blocks: vec![4, 3, 2]
            },
            KvEvent::Stored {
                parent: None,
                blocks: vec![20, 21, 22, 23, 24, 25, 26]
            }
        ]
    );
    // The decode of position 112 needs an 8th block: evicts the last cached one (hash 1).
    let o = e.step(o.end);
    assert_eq!(events(&o), vec![KvEvent::Removed { blocks: vec![1] }]);
    assert_eq!(o.finished.len(), 1);
}

#[test]
fn preemption_recomputes_the_newest() {
    let mut e = llama8b(|c| c.num_gpu_blocks_override = Some(4));
    e.admit(req(1, 16, &[], 20), 0.0).unwrap();
    e.admit(req(2, 16, &[], 20), 0.0).unwrap();
    let mut t = 0.0;
    let mut log = Vec::new();
    for step in 1..=30 {
        let o = e.step(t);
        t = o.end;
        for &p in &o.preempted {
            log.push((step, "preempt", p, 0));
        }
        for f in &o.finished {
            log.push((step, "finish", f.id, f.output_tokens));
        }
        e.check_invariants().unwrap();
    }
    // Step 1 prefills both (1 block each); decode j writes position 15 + j. Position 32 needs
    // a third block at step 18: none free, so the newest (2) is preempted with 17 tokens out.
    // Request 1 finishes at step 20; 2 restarts at 21 recomputing 16 + 17 = 33 tokens (that
    // step emits its 18th token) and finishes two decodes later.
    assert_eq!(
        log,
        vec![
            (18, "preempt", 2, 0),
            (20, "finish", 1, 20),
            (23, "finish", 2, 20)
        ]
    );
    assert_eq!(e.stats().preemptions, 1);
    assert_eq!(e.stats().generated_tokens, 40);
}

#[test]
fn bad_input_is_rejected_with_reasons() {
    let cat = catalog();
    let err = Engine::new(
        &cat,
        &EngineConfig {
            gpu: "A100".into(),
            ..EngineConfig::default()
        },
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("unknown GPU 'A100'") && msg.contains("H100-SXM") && msg.contains("GB200"),
        "{msg}"
    );
    let msg = Engine::new(
        &cat,
        &EngineConfig {
            model: "gpt-5".into(),
            ..EngineConfig::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("Qwen3-32B") && msg.contains("DeepSeek-V3.2"),
        "{msg}"
    );
    // 70B BF16 (141 GB of weights) on one 80 GB H100.
    let err = Engine::new(
        &cat,
        &EngineConfig {
            gpu: "H100-SXM".into(),
            model: "Llama-3.1-70B".into(),
            ..EngineConfig::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, EngineError::DoesNotFit(_)));
    assert!(err.to_string().contains("weights 131.4 GiB/GPU"), "{err}");
    let err = Engine::new(
        &cat,
        &EngineConfig {
            tp: 3,
            ..EngineConfig::default()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("TP3 does not divide Qwen3-32B's 64 query heads"),
        "{err}"
    );
    let err = Engine::new(
        &cat,
        &EngineConfig {
            model: "DeepSeek-V3".into(),
            weight_dtype: WeightDtype::Fp8,
            tp: 8,
            ep: 3,
            ..EngineConfig::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("EP3 does not divide"), "{err}");
    let err = Engine::new(
        &cat,
        &EngineConfig {
            dp: 2,
            ..EngineConfig::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("dense model"), "{err}");
    // Unknown keys in a deployment file are errors.
    assert!(toml::from_str::<EngineConfig>("gpu = \"H200\"\ntpp = 2\n").is_err());
    let cfg: EngineConfig =
        toml::from_str("gpu = \"H200\"\ntp = 2\nrole = \"decode\"\nkv_dtype = \"fp8\"\n").unwrap();
    assert_eq!(
        (cfg.tp, cfg.role, cfg.kv_dtype, cfg.max_num_seqs),
        (2, Role::Decode, KvDtype::Fp8, None)
    );

    let mut e = llama8b(|c| {
        c.max_model_len = Some(4096);
        c.num_gpu_blocks_override = Some(100);
    });
    let err = e.admit(req(1, 4000, &[], 200), 0.0).unwrap_err();
    assert!(
        err.to_string().contains("exceeds the context length 4096"),
        "{err}"
    );
    let err = e.admit(req(2, 1600, &[], 10), 0.0).unwrap_err();
    assert!(err.to_string().contains("needs 101 KV blocks"), "{err}");
    assert!(e.admit(req(3, 1500, &[], 10), 0.0).is_ok());
    assert!(e.admit(req(3, 10, &[], 10), 0.0).is_err(), "duplicate id");
    assert!(
        e.admit(req(4, 20, &[1, 2], 10), 0.0).is_err(),
        "two hashes for one full block"
    );
}

#[test]
fn prefill_role_holds_kv_until_released() {
    let mut e = llama8b(|c| {
        c.role = Role::Prefill;
        c.num_gpu_blocks_override = Some(10);
    });
    e.admit(req(1, 64, &[1, 2, 3, 4], 100), 0.0).unwrap();
    let o = e.step(0.0);
    assert_eq!(o.first_tokens, vec![1]);
    assert_eq!(o.finished[0].reason, FinishReason::PrefillDone);
    assert_eq!(o.finished[0].output_tokens, 1);
    let l = e.load();
    assert_eq!((l.running, l.held, l.kv_blocks_used), (0, 1, 4));
    assert!(e.release(2).is_err());
    e.release(1).unwrap();
    assert_eq!(e.load().kv_blocks_used, 0);
    assert!(e.release(1).is_err());
}

#[test]
fn decode_role_reserves_then_decodes_after_transfer() {
    let mut e = llama8b(|c| {
        c.role = Role::Decode;
        c.num_gpu_blocks_override = Some(10);
    });
    // 64-token prompt + room for the first decode: 5 blocks reserved at once.
    let info = e.admit(req(1, 64, &[1, 2, 3, 4], 3), 0.0).unwrap();
    assert_eq!(info.kv_reserved, Some(0));
    // A second one does not fit yet (5 + 5 + 5 > 10): reserved later.
    let info = e.admit(req(2, 64, &[5, 6, 7, 8], 3), 0.0).unwrap();
    assert_eq!(info.kv_reserved, Some(0));
    let info = e.admit(req(3, 64, &[9, 10, 11, 12], 3), 0.0).unwrap();
    assert_eq!(info.kv_reserved, None);
    assert_eq!(e.load().awaiting_kv, 2);
    // Nothing runs before the KV is there.
    assert!(e.advance_until(0.0, 1.0).idle);
    e.kv_arrived(1, 0.5).unwrap();
    assert!(e.kv_arrived(1, 0.5).is_err());
    let o = e.step(0.5);
    assert_eq!(o.started, vec![1]);
    assert_eq!(
        events(&o),
        vec![KvEvent::Stored {
            parent: None,
            blocks: vec![1, 2, 3, 4]
        }]
    );
    // Decodes its second token over 64 + 1 positions.
    assert_close(o.duration(), e.step_time(&[decode_shape(1, 65)]));
    let o = e.step(o.end);
    assert_eq!(o.finished.len(), 1);
    assert_eq!(o.finished[0].output_tokens, 3);
    // Request 1 freed its blocks: request 3 gets its reservation in the next step.
    let o = e.step(o.end);
    assert_eq!(o.kv_reserved.len(), 1);
    assert_eq!(o.kv_reserved[0].id, 3);
    assert_eq!(o.duration(), 0.0);
}

#[test]
fn seed_deployments_fit() {
    let cat = catalog();
    let qwen = Engine::new(
        &cat,
        &EngineConfig {
            gpu: "H200".into(),
            model: "Qwen3-32B".into(),
            tp: 2,
            ..EngineConfig::default()
        },
    )
    .unwrap();
    println!("{}", qwen.description());
    // (140.4 GiB x 0.9 - 30.5 GiB weights - activations - reserve) / 128 KiB per token.
    let t = qwen.kv_capacity_tokens();
    assert!((700_000..800_000).contains(&t), "{t}");
    let ds = Engine::new(
        &cat,
        &EngineConfig {
            gpu: "GB200".into(),
            model: "DeepSeek-V3.2".into(),
            weight_dtype: WeightDtype::Nvfp4,
            kv_dtype: KvDtype::Fp8,
            tp: 1,
            dp: 8,
            ep: 8,
            engine: "trtllm".into(),
            ..EngineConfig::default()
        },
    )
    .unwrap();
    println!("{}", ds.description());
    assert_eq!(ds.dp_ranks(), 8);
    // FP8 MLA latent (656 B) + indexer keys (132 B) per layer, 61 layers.
    assert_eq!(ds.kv_bytes_per_token(), 61 * (656 + 132));
    assert_eq!(qwen.kv_bytes_per_token(), 262_144);
    // ~60 GiB of weights per GPU, ~100 GiB of KV at 48,068 B/token: ~2.2M tokens per rank.
    let per_rank = ds.kv_capacity_tokens() / 8;
    assert!((2_000_000..2_500_000).contains(&per_rank), "{per_rank}");
}

#[test]
fn decode_role_recomputes_its_own_preempted_sequences() {
    // 6 blocks: two 16-token prompts reserve 2 blocks each; decoding past 32 tokens needs a
    // third block each, so the newer one is preempted and recomputed locally (the decode
    // engine has its tokens), not re-requested from a prefill worker.
    let mut e = llama8b(|c| {
        c.role = Role::Decode;
        c.num_gpu_blocks_override = Some(5);
    });
    for id in [1, 2] {
        assert_eq!(
            e.admit(req(id, 16, &[], 40), 0.0).unwrap().kv_reserved,
            Some(0)
        );
        e.kv_arrived(id, 0.0).unwrap();
    }
    let mut t = 0.0;
    let mut finished = Vec::new();
    let mut preempted = Vec::new();
    for _ in 0..200 {
        let o = e.step(t);
        t = o.end;
        e.check_invariants().unwrap();
        preempted.extend(o.preempted.iter().copied());
        finished.extend(o.finished.iter().map(|f| (f.id, f.output_tokens)));
        if finished.len() == 2 {
            break;
        }
    }
    assert_eq!(preempted, vec![2]);
    assert_eq!(finished, vec![(1, 40), (2, 40)]);
    assert!(
        e.stats().prefill_tokens > 0,
        "the preempted sequence was recomputed here"
    );
    assert_eq!(e.load().pending_prefill_tokens, 0);
}

#[test]
fn decode_role_local_prefill_runs_like_an_aggregated_engine() {
    // 1,000-token prompt, 512-token budget: chunks of 512 and 488, then 3 decodes (4 output
    // tokens, the first made by the prefill). Same steps as an aggregated engine; only the
    // `started` signal moves to the first-token step (the decode role's contract).
    let cfg = |c: &mut EngineConfig| {
        c.max_num_batched_tokens = Some(512);
        c.num_gpu_blocks_override = Some(100);
    };
    let mut d = llama8b(|c| {
        cfg(c);
        c.role = Role::Decode;
    });
    let mut a = llama8b(cfg);
    let hashes: Vec<u64> = (1..=62).collect();
    let info = d.admit_local(req(1, 1000, &hashes, 4), 0.0).unwrap();
    assert_eq!(info.kv_reserved, None);
    assert_eq!(d.load().pending_prefill_tokens, 1000);
    a.admit_local(req(1, 1000, &hashes, 4), 0.0).unwrap();
    let (mut td, mut ta) = (0.0, 0.0);
    let mut first_at = None;
    for step in 1..=5 {
        let od = d.step(td);
        let oa = a.step(ta);
        d.check_invariants().unwrap();
        assert_eq!(od.start.to_bits(), oa.start.to_bits());
        assert_eq!(od.end.to_bits(), oa.end.to_bits(), "step {step}");
        assert_eq!(od.scheduled_tokens, oa.scheduled_tokens);
        assert_eq!(od.first_tokens, oa.first_tokens);
        assert_eq!(od.finished, oa.finished);
        assert_eq!(od.kv_events, oa.kv_events);
        match step {
            1 => {
                assert_eq!(oa.started, vec![1]);
                assert!(od.started.is_empty());
                assert_eq!(od.scheduled_tokens, 512);
                assert_close(od.duration(), d.step_time(&[chunk_shape(0, 512, false)]));
                // 32 full blocks registered.
                assert_eq!(
                    events(&od),
                    vec![KvEvent::Stored {
                        parent: None,
                        blocks: (1..=32).collect()
                    }]
                );
            }
            2 => {
                assert_eq!(od.started, vec![1]);
                assert_eq!(od.first_tokens, vec![1]);
                assert_eq!(od.scheduled_tokens, 488);
                assert_close(od.duration(), d.step_time(&[chunk_shape(512, 488, true)]));
                first_at = Some(od.end);
            }
            3 | 4 => {
                assert!(od.started.is_empty());
                assert_eq!(od.scheduled_tokens, 1);
            }
            _ => {
                assert_eq!(
                    od.finished,
                    vec![Finished {
                        id: 1,
                        output_tokens: 4,
                        reason: FinishReason::Length
                    }]
                );
                // Third decode: context 1,000 + 2 generated, attending over 1,003 positions.
                assert_close(od.duration(), d.step_time(&[decode_shape(1, 1003)]));
            }
        }
        td = od.end;
        ta = oa.end;
    }
    assert!(first_at.is_some());
    assert_eq!(d.stats(), a.stats());
    assert_eq!(d.stats().generated_tokens, 4);
    let l = d.load();
    assert_eq!(
        (
            l.running,
            l.waiting,
            l.kv_blocks_used,
            l.pending_prefill_tokens
        ),
        (0, 0, 0, 0)
    );
}

#[test]
fn decode_role_local_prefill_reuses_transferred_kv() {
    let mut e = llama8b(|c| {
        c.role = Role::Decode;
        c.num_gpu_blocks_override = Some(20);
    });
    // Request 1 arrives by transfer: its 4 prompt blocks enter the prefix cache.
    assert_eq!(
        e.admit(req(1, 64, &[1, 2, 3, 4], 2), 0.0)
            .unwrap()
            .kv_reserved,
        Some(0)
    );
    assert_eq!(
        e.load().pending_prefill_tokens,
        0,
        "transferred: nothing to prefill here"
    );
    e.kv_arrived(1, 0.0).unwrap();
    let o = e.step(0.0);
    assert_eq!(o.started, vec![1]);
    assert_eq!(o.finished.len(), 1);
    // Request 2 extends that prompt by one block and is prefilled locally: 64 tokens hit,
    // 16 computed in one chunk, first token at its end; 2 more decodes.
    e.admit_local(req(2, 80, &[1, 2, 3, 4, 5], 3), o.end)
        .unwrap();
    assert_eq!(e.load().pending_prefill_tokens, 80);
    let o = e.step(o.end);
    e.check_invariants().unwrap();
    assert_eq!(o.scheduled_tokens, 16);
    assert_eq!(
        (o.started.clone(), o.first_tokens.clone()),
        (vec![2], vec![2])
    );
    assert_close(o.duration(), e.step_time(&[chunk_shape(64, 16, true)]));
    assert_eq!(
        events(&o),
        vec![KvEvent::Stored {
            parent: Some(4),
            blocks: vec![5]
        }]
    );
    assert_eq!(e.load().pending_prefill_tokens, 0);
    // Request 1's reservation hit nothing; request 2 hit 4 blocks.
    assert_eq!(e.stats().cached_prompt_tokens, 64);
    assert_eq!(e.stats().prompt_tokens, 64 + 80);
    let o = e.step(o.end);
    assert_close(o.duration(), e.step_time(&[decode_shape(1, 81)]));
    let o = e.step(o.end);
    assert_eq!(
        o.finished,
        vec![Finished {
            id: 2,
            output_tokens: 3,
            reason: FinishReason::Length
        }]
    );
    assert_eq!(e.load().kv_blocks_used, 0);
}

#[test]
fn decode_role_local_prefill_is_fcfs_with_reservations() {
    // 10 blocks. Local request 1 (96 tokens, 6 blocks + 1 to decode) is prefilling; transferred
    // request 2 (64 tokens: 5 blocks) cannot be reserved until it finishes, and local request 3
    // queued behind 2 waits for 2's reservation (FCFS), not jumping ahead.
    let mut e = llama8b(|c| {
        c.role = Role::Decode;
        c.num_gpu_blocks_override = Some(10);
    });
    e.admit_local(req(1, 96, &[], 2), 0.0).unwrap();
    let o = e.step(0.0);
    assert_eq!(o.first_tokens, vec![1]);
    assert_eq!(
        e.admit(req(2, 64, &[], 2), o.end).unwrap().kv_reserved,
        None
    );
    e.admit_local(req(3, 16, &[], 1), o.end).unwrap();
    // Request 1 decodes its last token (its 7th block) and leaves; 2 is not reserved yet
    // (blocks are freed after the step), and 3 waits behind it.
    let o = e.step(o.end);
    assert_eq!(o.finished.len(), 1);
    assert!(o.kv_reserved.is_empty());
    assert!(o.first_tokens.is_empty());
    let o = e.step(o.end);
    assert_eq!(o.kv_reserved.len(), 1);
    assert_eq!(o.kv_reserved[0].id, 2);
    // ...then 3 runs in the same step: a 16-token chunk, one output token, done.
    assert_eq!(o.scheduled_tokens, 16);
    assert_eq!(o.first_tokens, vec![3]);
    assert_eq!(o.started, vec![3]);
    assert_eq!(o.finished[0].id, 3);
    assert_eq!(o.finished[0].output_tokens, 1);
    e.check_invariants().unwrap();
}

#[test]
fn admit_local_by_role() {
    let mut p = llama8b(|c| c.role = Role::Prefill);
    assert!(matches!(
        p.admit_local(req(1, 64, &[], 2), 0.0),
        Err(EngineError::Rejected { id: 1, .. })
    ));
    assert_eq!(p.stats().admitted, 0);
    // Aggregated: the same as `admit`.
    let mut a = llama8b(|_| {});
    a.admit_local(req(1, 64, &[], 1), 0.0).unwrap();
    let o = a.step(0.0);
    assert_eq!(
        (o.started.clone(), o.first_tokens.clone()),
        (vec![1], vec![1])
    );
    // Decode role: one output token is fine locally (not for a transferred request).
    let mut d = llama8b(|c| c.role = Role::Decode);
    assert!(d.admit(req(1, 64, &[], 1), 0.0).is_err());
    d.admit_local(req(1, 64, &[], 1), 0.0).unwrap();
    let o = d.step(0.0);
    assert_eq!(o.finished[0].output_tokens, 1);
    assert!(d.admit_local(req(2, 64, &[1, 2, 3, 4, 5], 2), 0.0).is_err());
}

#[test]
fn absurd_block_counts_are_rejected_not_allocated() {
    let cfg = EngineConfig {
        gpu: "H100-SXM".into(),
        model: "Llama-3.1-8B".into(),
        num_gpu_blocks_override: Some((1 << 30) + 1),
        ..EngineConfig::default()
    };
    assert!(matches!(
        Engine::new(&catalog(), &cfg),
        Err(EngineError::InvalidConfig(_))
    ));
}

/// Limits and KV sizing follow each engine's own defaults for the device.
#[test]
fn engine_defaults_follow_the_device() {
    let cat = Catalog::builtin().unwrap();
    let make = |f: &dyn Fn(&mut EngineConfig)| {
        let mut c = EngineConfig::default();
        f(&mut c);
        Engine::new(&cat, &c)
    };
    // vLLM: 1024 sequences / 8192 tokens on >= 70 GiB GPUs.
    let e = make(&|c| c.tp = 2).unwrap();
    assert_eq!(e.config().max_num_seqs, Some(1024));
    assert_eq!(e.config().max_num_batched_tokens, Some(8192));
    // Explicit values win.
    let e = make(&|c| {
        c.tp = 2;
        c.max_num_seqs = Some(64);
    })
    .unwrap();
    assert_eq!(e.config().max_num_seqs, Some(64));
    // SGLang splits its chunk across DP-attention ranks (16384 from 160 GB, 8192 below).
    let e = make(&|c| {
        c.engine = "sglang".into();
        c.model = "DeepSeek-V3".into();
        c.weight_dtype = WeightDtype::Fp8;
        c.tp = 1;
        c.dp = 8;
        c.ep = 8;
    })
    .unwrap();
    assert_eq!(e.config().max_num_batched_tokens, Some(1024));
    // TensorRT-LLM takes its fraction of the memory left after weights: a model that fills
    // most of the GPU still gets a KV cache, where 90% of the whole device would leave none.
    let fits = |engine: &str| {
        make(&|c| {
            c.engine = engine.into();
            c.gpu = "H100-SXM".into();
            c.model = "Llama-3.1-70B".into();
            c.weight_dtype = WeightDtype::Fp8;
            c.max_model_len = Some(8192);
        })
        .map(|e| e.kv_capacity_tokens())
    };
    assert!(fits("trtllm").unwrap() > 0);
    assert!(fits("vllm").unwrap_err().to_string().contains("KV cache"));
    // vLLM refuses to start when one request of max_model_len does not fit in the KV cache;
    // a shorter max_model_len starts.
    let qwen_h100 = |len: Option<u32>| {
        make(&|c| {
            c.gpu = "H100-SXM".into();
            c.max_model_len = len;
        })
    };
    let err = qwen_h100(None).unwrap_err();
    assert!(err.to_string().contains("would not start"), "{err}");
    assert!(qwen_h100(Some(16384)).is_ok());
}
