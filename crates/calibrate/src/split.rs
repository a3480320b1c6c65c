//! The fixed train/test split.
//!
//! Rows are split by *configuration*, not by row: every concurrency of one (system, engine,
//! version, model, quantisation, ISL/OSL, parallelism) lands on the same side, so a test row
//! never has a sibling at a neighbouring concurrency in the training part. The side is
//! `FNV-1a-64(key) mod 10 < 3` → test (about 30% of the configurations). The key and the
//! hash are spelled out here so the split can be reproduced outside this code.

use crate::silicon::SiliconRow;

/// Which part of the data a row belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// May be used to set the model's factors.
    Train,
    /// Never used to set anything; errors here are the ones reported.
    Test,
}

impl Part {
    pub fn name(self) -> &'static str {
        match self {
            Part::Train => "train",
            Part::Test => "test",
        }
    }
}

fn opt(v: Option<u32>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

/// The configuration key: every column except the concurrency, the batch size, the id and
/// the measurements, joined with `|`.
pub fn config_key(r: &SiliconRow) -> String {
    [
        r.system.as_str(),
        &r.backend,
        &r.backend_version,
        &r.model_path,
        &r.precision,
        &r.gemm_quant,
        &r.moe_quant,
        &r.isl.to_string(),
        &r.osl.to_string(),
        &opt(r.tp),
        &opt(r.attention_dp),
        &opt(r.moe_tp),
        &opt(r.moe_ep),
    ]
    .join("|")
}

/// 64-bit FNV-1a.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub fn part(r: &SiliconRow) -> Part {
    if fnv1a64(config_key(r).as_bytes()) % 10 < 3 {
        Part::Test
    } else {
        Part::Train
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
