//! The measured rows: `data/calibration/silicon_agg.csv.gz`, embedded at compile time.

use std::io::Read;

use crate::error::CalibrateError;

/// The bundled data set (see `data/calibration/README.md` for its provenance and licence).
pub const BUNDLED_NAME: &str = "data/calibration/silicon_agg.csv.gz";
const BUNDLED: &[u8] = include_bytes!("../../../data/calibration/silicon_agg.csv.gz");

/// One measured aggregated-serving run: a fixed-length closed loop at one concurrency.
#[derive(Clone, Debug, PartialEq)]
pub struct SiliconRow {
    /// 1-based line in the CSV (for error messages and reports).
    pub line: usize,
    pub id: String,
    /// AIConfigurator's system name: `h100_sxm`, `h200_sxm`, `b200_sxm`, `gb200`, ...
    pub system: String,
    /// `vllm`, `sglang` or `trtllm`.
    pub backend: String,
    pub backend_version: String,
    /// Hugging Face id of the checkpoint.
    pub model_path: String,
    pub precision: String,
    pub gemm_quant: String,
    pub moe_quant: String,
    pub isl: u32,
    pub osl: u32,
    /// Benchmark clients (the run's concurrency), when recorded.
    pub concurrency: Option<u32>,
    /// Concurrent requests per attention-DP rank (AIConfigurator's `batch_size`).
    pub batch_size: Option<u32>,
    pub tp: Option<u32>,
    pub attention_dp: Option<u32>,
    pub moe_tp: Option<u32>,
    pub moe_ep: Option<u32>,
    pub ttft_ms: f64,
    pub tpot_ms: f64,
}

const COLUMNS: [&str; 18] = [
    "id",
    "system",
    "backend",
    "backend_version",
    "model_path",
    "precision",
    "gemm_quant_mode",
    "moe_quant_mode",
    "isl",
    "osl",
    "concurrency",
    "batch_size",
    "tp",
    "attention_dp",
    "moe_tp",
    "moe_ep",
    "ttft_ms",
    "tpot_ms",
];

/// The bundled rows.
pub fn bundled() -> Result<Vec<SiliconRow>, CalibrateError> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(BUNDLED)
        .read_to_string(&mut text)
        .map_err(|e| CalibrateError::Read {
            file: BUNDLED_NAME.into(),
            reason: e.to_string(),
        })?;
    parse(&text, BUNDLED_NAME)
}

/// Parse the normalised CSV (header row with [`COLUMNS`], in any order; no quoting: no field
/// of this data set contains a comma).
pub fn parse(text: &str, file: &str) -> Result<Vec<SiliconRow>, CalibrateError> {
    let err = |line: usize, reason: String| CalibrateError::Parse {
        file: file.to_string(),
        line,
        reason,
    };
    let mut lines = text.lines().enumerate();
    let Some((_, header)) = lines.next() else {
        return Err(err(1, "empty file (expected a header row)".into()));
    };
    let names: Vec<&str> = header.split(',').collect();
    let mut idx = [0usize; COLUMNS.len()];
    for (k, want) in COLUMNS.iter().enumerate() {
        idx[k] = names
            .iter()
            .position(|n| n.trim() == *want)
            .ok_or_else(|| err(1, format!("missing column `{want}`")))?;
    }
    let mut rows = Vec::new();
    for (i, raw) in lines {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = raw.split(',').collect();
        if f.len() != names.len() {
            return Err(err(
                line,
                format!("{} fields, the header has {}", f.len(), names.len()),
            ));
        }
        let col = |k: usize| f[idx[k]].trim();
        let int = |k: usize| -> Result<Option<u32>, CalibrateError> {
            let v = col(k);
            if v.is_empty() {
                return Ok(None);
            }
            v.parse::<u32>()
                .map(Some)
                .map_err(|_| err(line, format!("`{}`: not a whole number: {v:?}", COLUMNS[k])))
        };
        let req = |k: usize| -> Result<u32, CalibrateError> {
            int(k)?.ok_or_else(|| err(line, format!("`{}` is empty", COLUMNS[k])))
        };
        let ms = |k: usize| -> Result<f64, CalibrateError> {
            let v = col(k);
            match v.parse::<f64>() {
                Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
                _ => Err(err(
                    line,
                    format!("`{}`: not a positive number: {v:?}", COLUMNS[k]),
                )),
            }
        };
        rows.push(SiliconRow {
            line,
            id: col(0).to_string(),
            system: col(1).to_string(),
            backend: col(2).to_string(),
            backend_version: col(3).to_string(),
            model_path: col(4).to_string(),
            precision: col(5).to_string(),
            gemm_quant: col(6).to_string(),
            moe_quant: col(7).to_string(),
            isl: req(8)?,
            osl: req(9)?,
            concurrency: int(10)?,
            batch_size: int(11)?,
            tp: int(12)?,
            attention_dp: int(13)?,
            moe_tp: int(14)?,
            moe_ep: int(15)?,
            ttft_ms: ms(16)?,
            tpot_ms: ms(17)?,
        });
    }
    Ok(rows)
}
