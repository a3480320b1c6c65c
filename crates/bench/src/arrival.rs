//! Open-loop arrival processes: the gap before each request.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};

use crate::args::ArrivalKind;
use crate::error::BenchError;

/// Seconds between consecutive arrivals at `rate` requests per second.
///
/// Gamma gaps with shape `k` and scale `1 / (rate k)` have mean `1 / rate` for every `k`;
/// `k = 1` is the exponential distribution (a Poisson process). This is `vllm bench serve`'s
/// `--burstiness`. Unlike vLLM, the cumulative schedule is not rescaled to end exactly at
/// `N / rate`: it is a genuine renewal process, which also works for unbounded runs.
#[derive(Debug, Clone)]
pub struct Gaps {
    rng: ChaCha8Rng,
    kind: GapKind,
}

#[derive(Debug, Clone)]
enum GapKind {
    /// Everything at once (`rate = inf`).
    Zero,
    Constant(f64),
    Gamma(Gamma<f64>),
}

impl Gaps {
    pub fn new(
        rate: f64,
        kind: ArrivalKind,
        burstiness: f64,
        seed: u64,
    ) -> Result<Gaps, BenchError> {
        if rate.is_nan() || rate <= 0.0 {
            return Err(BenchError::Arg(format!(
                "--request-rate must be a positive number or inf, got {rate}"
            )));
        }
        if !(burstiness.is_finite() && burstiness > 0.0) {
            return Err(BenchError::Arg(format!(
                "--burstiness must be a positive number, got {burstiness}"
            )));
        }
        let kind = if rate.is_infinite() {
            GapKind::Zero
        } else {
            match kind {
                ArrivalKind::Constant => GapKind::Constant(1.0 / rate),
                ArrivalKind::Poisson | ArrivalKind::Gamma => {
                    let g = Gamma::new(burstiness, 1.0 / (rate * burstiness))
                        .map_err(|e| BenchError::Arg(format!("invalid gamma parameters: {e}")))?;
                    GapKind::Gamma(g)
                }
            }
        };
        Ok(Gaps {
            // A stream of its own, so the arrival times do not depend on the prompts drawn.
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0xA1A1_A1A1_A1A1_A1A1),
            kind,
        })
    }

    /// The next gap in seconds.
    pub fn next_gap(&mut self) -> f64 {
        match &self.kind {
            GapKind::Zero => 0.0,
            GapKind::Constant(g) => *g,
            GapKind::Gamma(g) => g.sample(&mut self.rng),
        }
    }

    /// Human description, e.g. `Poisson process` / `Gamma distribution (burstiness 0.5)`.
    pub fn describe(kind: ArrivalKind, burstiness: f64) -> String {
        match kind {
            ArrivalKind::Constant => "constant spacing".into(),
            _ if burstiness == 1.0 => "Poisson process".into(),
            _ => format!("Gamma distribution (burstiness {burstiness})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_cv(g: &mut Gaps, n: usize) -> (f64, f64) {
        let v: Vec<f64> = (0..n).map(|_| g.next_gap()).collect();
        let m = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n as f64;
        (m, var.sqrt() / m)
    }

    #[test]
    fn gap_distributions_have_the_right_moments() {
        // Exponential: mean 1/rate, coefficient of variation 1.
        let mut p = Gaps::new(10.0, ArrivalKind::Poisson, 1.0, 7).unwrap();
        let (m, cv) = mean_cv(&mut p, 200_000);
        assert!((m - 0.1).abs() < 0.002, "{m}");
        assert!((cv - 1.0).abs() < 0.02, "{cv}");
        // Gamma shape k: CV = 1/sqrt(k).
        let mut g = Gaps::new(10.0, ArrivalKind::Gamma, 4.0, 7).unwrap();
        let (m, cv) = mean_cv(&mut g, 200_000);
        assert!((m - 0.1).abs() < 0.002, "{m}");
        assert!((cv - 0.5).abs() < 0.02, "{cv}");
        let mut c = Gaps::new(4.0, ArrivalKind::Constant, 1.0, 7).unwrap();
        assert_eq!(c.next_gap(), 0.25);
        let mut z = Gaps::new(f64::INFINITY, ArrivalKind::Poisson, 1.0, 7).unwrap();
        assert_eq!(z.next_gap(), 0.0);
        // Seeded: same seed, same gaps.
        let mut a = Gaps::new(3.0, ArrivalKind::Poisson, 1.0, 1).unwrap();
        let mut b = Gaps::new(3.0, ArrivalKind::Poisson, 1.0, 1).unwrap();
        assert_eq!(a.next_gap(), b.next_gap());
        assert!(Gaps::new(0.0, ArrivalKind::Poisson, 1.0, 0).is_err());
        assert!(Gaps::new(1.0, ArrivalKind::Gamma, 0.0, 0).is_err());
    }
}
