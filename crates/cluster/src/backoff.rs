//! Exponential backoff with jitter for reconnect loops.

use std::time::Duration;

#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The delay before the next attempt: doubles up to `max`, with ±25% jitter so that many
    /// replicas losing the same server do not reconnect in lockstep.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = rand::random::<f64>() * 0.5 + 0.75;
        base.mul_f64(jitter)
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let d: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        let bases = [100u128, 200, 400, 800, 1000, 1000];
        for (got, base) in d.iter().zip(bases) {
            assert!(*got >= base * 3 / 4 && *got <= base * 5 / 4, "{d:?}");
        }
        b.reset();
        assert!(b.next_delay().as_millis() <= 125);
    }
}
