//! Descriptive statistics with numpy's conventions: population standard deviation
//! (`np.std`, ddof = 0) and percentiles with linear interpolation (`np.percentile`'s default
//! method), so numbers match AIPerf's and `vllm bench serve`'s for the same samples.

use serde::{Deserialize, Serialize};

/// Summary statistics of a non-empty sample. Units are those of the sample (seconds for
/// latencies). An empty sample has no `Stats` (`Option<Stats>` is `None`), never zeros.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub count: u64,
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    pub min: f64,
    pub max: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
}

/// The percentiles every [`Stats`] carries, ascending.
pub const PERCENTILES: [f64; 4] = [50.0, 90.0, 95.0, 99.0];

impl Stats {
    /// Statistics of `values` (finite numbers), reordering the slice in place. Linear time:
    /// percentiles come from successive selections, not a full sort, so pooling millions of
    /// inter-token gaps stays cheap. `None` for an empty slice.
    pub fn from_values(values: &mut [f64]) -> Option<Stats> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mut sum = 0.0;
        let mut min = f64::INFINITY;
        let mut max = f64::NEG_INFINITY;
        for &v in values.iter() {
            sum += v;
            min = min.min(v);
            max = max.max(v);
        }
        let mean = sum / n as f64;
        // Two-pass variance: numerically stable, like numpy.
        let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
        let p = select_percentiles(values, &PERCENTILES);
        Some(Stats {
            count: n as u64,
            mean,
            std: var.sqrt(),
            min,
            max,
            p50: p[0],
            p90: p[1],
            p95: p[2],
            p99: p[3],
        })
    }

    /// Like [`Stats::from_values`] but leaves the input untouched.
    pub fn from_slice(values: &[f64]) -> Option<Stats> {
        Self::from_values(&mut values.to_vec())
    }

    /// Statistics of a sample given as `(value, multiplicity)` runs (run-length encoded inter-
    /// token gaps), without expanding it. Sorts the runs; identical results to expanding them
    /// (up to rounding in the mean). Runs with count 0 are ignored.
    pub fn from_runs(runs: &mut [(f64, u32)]) -> Option<Stats> {
        let n: u64 = runs.iter().map(|r| u64::from(r.1)).sum();
        if n == 0 {
            return None;
        }
        runs.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        let nf = n as f64;
        let mean = runs.iter().map(|&(v, c)| v * f64::from(c)).sum::<f64>() / nf;
        let var = runs
            .iter()
            .map(|&(v, c)| (v - mean) * (v - mean) * f64::from(c))
            .sum::<f64>()
            / nf;
        // Value at 0-based rank k: the first run whose cumulative count exceeds k.
        let mut cum = Vec::with_capacity(runs.len());
        let mut acc = 0u64;
        for r in runs.iter() {
            acc += u64::from(r.1);
            cum.push(acc);
        }
        let at = |k: u64| runs[cum.partition_point(|&c| c <= k)].0;
        let mut out = [0.0; PERCENTILES.len()];
        for (o, p) in out.iter_mut().zip(PERCENTILES) {
            let rank = (p / 100.0) * (n - 1) as f64;
            let lo = rank.floor() as u64;
            let frac = rank - lo as f64;
            let a = at(lo);
            let b = if frac > 0.0 {
                at((lo + 1).min(n - 1))
            } else {
                a
            };
            *o = lerp(a, b, frac);
        }
        let first = runs.iter().find(|r| r.1 > 0).map_or(0.0, |r| r.0);
        let last = runs.iter().rev().find(|r| r.1 > 0).map_or(0.0, |r| r.0);
        Some(Stats {
            count: n,
            mean,
            std: var.sqrt(),
            min: first,
            max: last,
            p50: out[0],
            p90: out[1],
            p95: out[2],
            p99: out[3],
        })
    }

    /// Percentile by name (50, 90, 95, 99); `None` for any other.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        match p {
            50.0 => Some(self.p50),
            90.0 => Some(self.p90),
            95.0 => Some(self.p95),
            99.0 => Some(self.p99),
            _ => None,
        }
    }

    /// The same statistics with every value multiplied by `k` (e.g. 1000 for ms).
    pub fn scaled(&self, k: f64) -> Stats {
        Stats {
            count: self.count,
            mean: self.mean * k,
            std: self.std * k.abs(),
            min: self.min * k,
            max: self.max * k,
            p50: self.p50 * k,
            p90: self.p90 * k,
            p95: self.p95 * k,
            p99: self.p99 * k,
        }
    }
}

/// numpy's `_lerp`: exact at both ends and monotone in `t`.
fn lerp(a: f64, b: f64, t: f64) -> f64 {
    let d = b - a;
    if t >= 0.5 {
        b - d * (1.0 - t)
    } else {
        a + d * t
    }
}

/// Percentile `p` (0..=100) of an ascending-sorted slice, linear interpolation between the
/// closest ranks (numpy's default). `None` for an empty slice.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let rank = (p / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = (lo + 1).min(n - 1);
    Some(lerp(sorted[lo], sorted[hi], rank - lo as f64))
}

/// Percentiles `ps` (ascending, 0..=100) of `v`, which is reordered. Each rank is found with
/// `select_nth_unstable` on the part of the slice not yet known to lie below it.
fn select_percentiles(v: &mut [f64], ps: &[f64]) -> Vec<f64> {
    let n = v.len();
    let mut out = Vec::with_capacity(ps.len());
    let mut start = 0usize; // everything in v[..start] is <= everything in v[start..]
    for &p in ps {
        let rank = (p / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
        let lo = (rank.floor() as usize).max(start);
        let frac = rank - lo as f64;
        let (_, &mut at_lo, rest) = v[start..].select_nth_unstable_by(lo - start, f64::total_cmp);
        let at_hi = if frac > 0.0 {
            rest.iter().copied().fold(f64::INFINITY, f64::min)
        } else {
            at_lo
        };
        out.push(lerp(at_lo, at_hi, frac));
        start = lo;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn hand_computed_small_sample() {
        // x = [1, 2, 3, 4, 10]; mean 4; squared deviations 9,4,1,0,36 -> var 10, std sqrt(10).
        // rank(p) = p/100 * 4: p50 -> 2 -> 3; p90 -> 3.6 -> 4 + 0.6*6 = 7.6;
        // p95 -> 3.8 -> 4 + 0.8*6 = 8.8; p99 -> 3.96 -> 4 + 0.96*6 = 9.76.
        let s = Stats::from_slice(&[10.0, 3.0, 1.0, 4.0, 2.0]).unwrap();
        assert_eq!(s.count, 5);
        assert!(close(s.mean, 4.0));
        assert!(close(s.std, 10f64.sqrt()));
        assert_eq!((s.min, s.max), (1.0, 10.0));
        assert!(close(s.p50, 3.0));
        assert!(close(s.p90, 7.6), "{}", s.p90);
        assert!(close(s.p95, 8.8), "{}", s.p95);
        assert!(close(s.p99, 9.76), "{}", s.p99);
    }

    #[test]
    fn hand_computed_even_count() {
        // x = 1..=4: p50 rank 1.5 -> 2.5; p90 rank 2.7 -> 3.7; p99 rank 2.97 -> 3.97.
        // mean 2.5, var (2.25+0.25+0.25+2.25)/4 = 1.25.
        let s = Stats::from_slice(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert!(close(s.p50, 2.5));
        assert!(close(s.p90, 3.7));
        assert!(close(s.p95, 3.85));
        assert!(close(s.p99, 3.97));
        assert!(close(s.std, 1.25f64.sqrt()));
    }

    #[test]
    fn single_value_and_empty() {
        let s = Stats::from_slice(&[0.25]).unwrap();
        assert_eq!(
            (s.mean, s.std, s.min, s.max, s.p50, s.p99),
            (0.25, 0.0, 0.25, 0.25, 0.25, 0.25)
        );
        assert!(Stats::from_slice(&[]).is_none());
        assert!(percentile_sorted(&[], 50.0).is_none());
    }

    #[test]
    fn selection_agrees_with_sorting() {
        // Deterministic pseudo-random sample with many duplicates.
        let mut x = 12345u64;
        let v: Vec<f64> = (0..10_001)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) % 997) as f64 / 7.0
            })
            .collect();
        let s = Stats::from_slice(&v).unwrap();
        let mut sorted = v.clone();
        sorted.sort_by(f64::total_cmp);
        for p in PERCENTILES {
            assert_eq!(s.percentile(p), percentile_sorted(&sorted, p), "p{p}");
        }
        assert_eq!(s.min, sorted[0]);
        assert_eq!(s.max, sorted[sorted.len() - 1]);
    }

    /// Reference values printed by numpy 2.4.6 (`a.mean()`, `a.std()`,
    /// `np.percentile(a, [50, 90, 95, 99])`) for the same integer-derived samples.
    #[test]
    fn matches_numpy() {
        fn data(n: u64, seed: u64) -> Vec<f64> {
            (0..n)
                .map(|i| {
                    let v = ((i * 7919 + seed) % 1009) as f64 / 37.0;
                    if i % 97 == 0 { v * 50.0 } else { v }
                })
                .collect()
        }
        #[rustfmt::skip]
        let cases: [(u64, u64, f64, f64, [f64; 4]); 6] = [
            (1, 5, 6.756756756756757, 0.0, [6.756756756756757, 6.756756756756757, 6.756756756756757, 6.756756756756757]),
            (2, 5, 15.013513513513514, 8.256756756756756, [15.013513513513514, 21.61891891891892, 22.444594594594594, 23.105135135135136]),
            (3, 11, 19.1981981981982, 3.4983966784600624, [19.2972972972973, 22.605405405405406, 23.018918918918917, 23.349729729729727]),
            (7, 13, 13.77992277992278, 6.718586059392865, [15.216216216216216, 21.00540540540541, 22.245945945945945, 23.23837837837838]),
            (100, 17, 17.730810810810812, 41.216041633657724, [13.932432432432432, 24.43513513513514, 25.951351351351352, 30.772162162164175]),
            (2001, 19, 20.689587638613126, 80.32840218032187, [13.756756756756756, 24.783783783783782, 26.135135135135137, 27.243243243243242]),
        ];
        for (n, seed, mean, std, p) in cases {
            let v = data(n, seed);
            let s = Stats::from_slice(&v).unwrap();
            // Percentiles: same interpolation formula, so bit-identical.
            assert_eq!([s.p50, s.p90, s.p95, s.p99], p, "n={n}");
            // numpy sums pairwise; allow last-digit differences.
            assert!(
                (s.mean - mean).abs() <= 1e-12 * mean.abs(),
                "n={n}: {} vs {mean}",
                s.mean
            );
            assert!(
                (s.std - std).abs() <= 1e-12 * std.abs().max(1.0),
                "n={n}: {} vs {std}",
                s.std
            );
            // The run-length path agrees too.
            let mut runs: Vec<(f64, u32)> = v.iter().map(|&x| (x, 1)).collect();
            let r = Stats::from_runs(&mut runs).unwrap();
            assert_eq!([r.p50, r.p90, r.p95, r.p99], p, "runs n={n}");
        }
    }

    #[test]
    fn runs_agree_with_expanded_values() {
        let mut runs = vec![(0.25, 4u32), (0.1, 1), (0.3, 1), (0.2, 0), (0.05, 3)];
        let expanded: Vec<f64> = runs
            .iter()
            .flat_map(|&(v, c)| std::iter::repeat_n(v, c as usize))
            .collect();
        let a = Stats::from_runs(&mut runs).unwrap();
        let b = Stats::from_slice(&expanded).unwrap();
        assert_eq!(a.count, 9);
        assert_eq!(
            (a.min, a.max, a.p50, a.p90, a.p95, a.p99),
            (b.min, b.max, b.p50, b.p90, b.p95, b.p99)
        );
        assert!(close(a.mean, b.mean) && close(a.std, b.std));
        assert!(Stats::from_runs(&mut []).is_none());
        assert!(Stats::from_runs(&mut [(1.0, 0)]).is_none());
    }

    #[test]
    fn hand_computed_unsorted_fractions() {
        // Sorted: [0.1, 0.2, 0.35, 0.4, 0.7, 0.9, 1.8]; n - 1 = 6; median rank 3 -> 0.4.
        let a = [0.1, 0.7, 0.2, 0.9, 0.4, 0.35, 1.8];
        let s = Stats::from_slice(&a).unwrap();
        // rank 0.9*6 = 5.4 -> 0.9 + 0.4*0.9 = 1.26; 0.95*6 = 5.7 -> 0.9 + 0.7*0.9 = 1.53;
        // 0.99*6 = 5.94 -> 0.9 + 0.94*0.9 = 1.746.
        assert!(close(s.p50, 0.4));
        assert!(close(s.p90, 1.26));
        assert!(close(s.p95, 1.53));
        assert!(close(s.p99, 1.746));
        let mean = 4.45 / 7.0;
        let var = a.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / 7.0;
        assert!(close(s.std, var.sqrt()));
    }
}
