//! The accuracy gate: the test part's median errors may not rise above recorded bounds.
//!
//! Bounds live in `data/calibration/bounds.toml`, one `[[cell]]` per (GPU, engine, model) with
//! at least [`MIN_ROWS`] test rows, plus the whole test part. They are written by
//! `cargo run --release -p switchyard-calibrate --example report -- --bounds FILE` as the
//! current error rounded up to the next whole percent plus [`MARGIN`] points; they are
//! tightened when the model improves and never loosened without a note in the file.

use std::fmt::Write;

use crate::report::{Evaluation, stats};
use crate::split::Part;

/// Cells with fewer test rows are reported but not gated.
pub const MIN_ROWS: usize = 10;
/// Headroom over the recorded error, percentage points.
pub const MARGIN: f64 = 1.0;

fn bound(x: f64) -> f64 {
    x.ceil() + MARGIN
}

/// Bounds for the current errors, as TOML.
pub fn bounds_toml(ev: &Evaluation) -> String {
    let mut s = String::from(
        "# Accuracy gate of crates/calibrate (tests/accuracy.rs): median |error| bounds, percent,\n\
         # on the test part of the silicon sample. Tighten when the model improves; loosen only\n\
         # with a note here saying why.\n\n",
    );
    let all = ev.overall(Part::Test);
    let (t, p) = (stats(&all.ttft), stats(&all.tpot));
    let _ = writeln!(
        s,
        "[all]\nttft = {:.0}\ntpot = {:.0}\n",
        bound(t.median_abs),
        bound(p.median_abs)
    );
    for ((part, k), e) in &ev.cells {
        if *part != Part::Test || e.ttft.len() < MIN_ROWS {
            continue;
        }
        let (t, p) = (stats(&e.ttft), stats(&e.tpot));
        let _ = writeln!(
            s,
            "[[cell]]\nsystem = \"{}\"\nbackend = \"{}\"\nmodel = \"{}\"\nttft = {:.0}\ntpot = {:.0}\n",
            k.system,
            k.backend,
            k.model,
            bound(t.median_abs),
            bound(p.median_abs)
        );
    }
    s
}
