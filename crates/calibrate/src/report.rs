//! Errors per cell, and the markdown tables of `docs/calibration.md`.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::predict::{Prediction, Skip};
use crate::silicon::SiliconRow;
use crate::split::{Part, part};

/// Signed percentage error of a prediction: `(predicted / measured − 1) · 100`.
pub fn pct_error(predicted: f64, measured: f64) -> f64 {
    (predicted / measured - 1.0) * 100.0
}

/// A group of rows: (GPU system, engine, model).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CellKey {
    pub system: String,
    pub backend: String,
    pub model: String,
}

/// Signed percentage errors of the rows of one cell and part.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Errors {
    pub ttft: Vec<f64>,
    pub tpot: Vec<f64>,
}

/// Order statistics of one error list.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub n: usize,
    /// Median of |error|, %.
    pub median_abs: f64,
    /// 90th percentile of |error|, %.
    pub p90_abs: f64,
    /// Median signed error, % (the bias: negative = the model is too fast).
    pub median: f64,
}

/// Nearest-rank percentile of a sorted slice (`q` in 0..=1).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Median (mean of the middle two for even counts).
fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

pub fn stats(errors: &[f64]) -> Stats {
    let mut abs: Vec<f64> = errors.iter().map(|e| e.abs()).collect();
    abs.sort_by(f64::total_cmp);
    let mut signed = errors.to_vec();
    signed.sort_by(f64::total_cmp);
    Stats {
        n: errors.len(),
        median_abs: median(&abs),
        p90_abs: percentile(&abs, 0.9),
        median: median(&signed),
    }
}

/// Everything a report needs: per-cell errors for each part, and why rows were skipped.
#[derive(Clone, Debug, Default)]
pub struct Evaluation {
    pub cells: BTreeMap<(Part, CellKey), Errors>,
    /// Skipped rows by reason.
    pub skipped: BTreeMap<&'static str, usize>,
    pub compared: usize,
}

impl Evaluation {
    /// `model_name` maps a row to the model name its cell is labelled with (the catalog's).
    pub fn new(
        rows: &[SiliconRow],
        predictions: &[Result<Prediction, Skip>],
        model_name: impl Fn(&SiliconRow) -> String,
    ) -> Evaluation {
        let mut ev = Evaluation::default();
        for (r, p) in rows.iter().zip(predictions) {
            match p {
                Ok(p) => {
                    let key = CellKey {
                        system: r.system.clone(),
                        backend: r.backend.clone(),
                        model: model_name(r),
                    };
                    let e = ev.cells.entry((part(r), key)).or_default();
                    e.ttft.push(pct_error(p.ttft_ms, r.ttft_ms));
                    e.tpot.push(pct_error(p.tpot_ms, r.tpot_ms));
                    ev.compared += 1;
                }
                Err(s) => *ev.skipped.entry(s.kind()).or_default() += 1,
            }
        }
        ev
    }

    /// Errors of one part, merged over models: (system, backend) → errors.
    pub fn by_gpu_engine(&self, want: Part) -> BTreeMap<(String, String), Errors> {
        let mut out: BTreeMap<(String, String), Errors> = BTreeMap::new();
        for ((p, k), e) in &self.cells {
            if *p != want {
                continue;
            }
            let o = out
                .entry((k.system.clone(), k.backend.clone()))
                .or_default();
            o.ttft.extend_from_slice(&e.ttft);
            o.tpot.extend_from_slice(&e.tpot);
        }
        out
    }

    /// All errors of one part.
    pub fn overall(&self, want: Part) -> Errors {
        let mut o = Errors::default();
        for ((p, _), e) in &self.cells {
            if *p == want {
                o.ttft.extend_from_slice(&e.ttft);
                o.tpot.extend_from_slice(&e.tpot);
            }
        }
        o
    }
}

fn fmt_stats(s: &Stats) -> String {
    format!(
        "{:.1}% | {:.1}% | {:+.1}%",
        s.median_abs, s.p90_abs, s.median
    )
}

const HEADER: &str = "| n | TTFT median \\|err\\| | TTFT p90 \\|err\\| | TTFT bias | TPOT median \\|err\\| | TPOT p90 \\|err\\| | TPOT bias |";

/// Markdown: the per-cell table of one part, then GPU × engine and overall rows.
pub fn markdown(ev: &Evaluation, want: Part) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| GPU | engine | model {HEADER}");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for ((p, k), e) in &ev.cells {
        if *p != want {
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            k.system,
            k.backend,
            k.model,
            e.ttft.len(),
            fmt_stats(&stats(&e.ttft)),
            fmt_stats(&stats(&e.tpot))
        );
    }
    let _ = writeln!(s, "\nBy GPU and engine (all models):\n");
    let _ = writeln!(s, "| GPU | engine {HEADER}");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for ((sys, be), e) in ev.by_gpu_engine(want) {
        let _ = writeln!(
            s,
            "| {sys} | {be} | {} | {} | {} |",
            e.ttft.len(),
            fmt_stats(&stats(&e.ttft)),
            fmt_stats(&stats(&e.tpot))
        );
    }
    let all = ev.overall(want);
    let _ = writeln!(
        s,
        "| **all** | | {} | {} | {} |",
        all.ttft.len(),
        fmt_stats(&stats(&all.ttft)),
        fmt_stats(&stats(&all.tpot))
    );
    s
}

/// AIConfigurator's own predictions for some rows: id → (TTFT ms, TPOT ms).
pub type Peer = std::collections::HashMap<String, (f64, f64)>;

/// Parse `id,aic_ttft_ms,aic_tpot_ms,error` (rows with an error or blank numbers are left out).
pub fn parse_peer(text: &str) -> Peer {
    let mut out = Peer::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 3 {
            continue;
        }
        if let (Ok(t), Ok(p)) = (f[1].parse::<f64>(), f[2].parse::<f64>())
            && t > 0.0
            && p > 0.0
        {
            out.insert(f[0].to_string(), (t, p));
        }
    }
    out
}

/// Markdown: on the test rows both predicted, ours against the peer's, per GPU and engine.
pub fn peer_markdown(
    rows: &[SiliconRow],
    predictions: &[Result<Prediction, Skip>],
    peer: &Peer,
) -> String {
    let mut cells: BTreeMap<(String, String), [Vec<f64>; 4]> = BTreeMap::new();
    let mut all: [Vec<f64>; 4] = Default::default();
    for (r, p) in rows.iter().zip(predictions) {
        let (Ok(p), Some(&(at, ap))) = (p, peer.get(&r.id)) else {
            continue;
        };
        if part(r) != Part::Test {
            continue;
        }
        let e = [
            pct_error(p.ttft_ms, r.ttft_ms),
            pct_error(at, r.ttft_ms),
            pct_error(p.tpot_ms, r.tpot_ms),
            pct_error(ap, r.tpot_ms),
        ];
        let c = cells
            .entry((r.system.clone(), r.backend.clone()))
            .or_default();
        for k in 0..4 {
            c[k].push(e[k]);
            all[k].push(e[k]);
        }
    }
    let mut s = String::from(
        "| GPU | engine | n | TTFT median \\|err\\| ours | AIC | TPOT median \\|err\\| ours | AIC |\n|---|---|---|---|---|---|---|\n",
    );
    let row = |s: &mut String, a: &str, b: &str, v: &[Vec<f64>; 4]| {
        let m: Vec<String> = v
            .iter()
            .map(|x| format!("{:.1}%", stats(x).median_abs))
            .collect();
        let _ = writeln!(
            s,
            "| {a} | {b} | {} | {} | {} | {} | {} |",
            v[0].len(),
            m[0],
            m[1],
            m[2],
            m[3]
        );
    };
    for ((sys, be), v) in &cells {
        row(&mut s, sys, be, v);
    }
    row(&mut s, "**all**", "", &all);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_statistics() {
        let s = stats(&[-10.0, 5.0, 20.0, -1.0]);
        assert_eq!(s.n, 4);
        assert_eq!(s.median_abs, 7.5);
        assert_eq!(s.p90_abs, 20.0);
        assert_eq!(s.median, 2.0);
        assert!(stats(&[]).median_abs.is_nan());
    }

    #[test]
    fn peer_predictions_skip_failures() {
        let p = parse_peer(
            "id,aic_ttft_ms,aic_tpot_ms,error\na,100,10,\nb,,,GEMM data missing\nc,0,1,\n",
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p["a"], (100.0, 10.0));
    }

    #[test]
    fn pct_error_sign() {
        assert_eq!(pct_error(110.0, 100.0).round(), 10.0);
        assert_eq!(pct_error(50.0, 100.0), -50.0);
    }
}
