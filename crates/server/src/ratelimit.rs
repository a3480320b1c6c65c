//! Per-API-key rate limits: requests per minute and tokens per minute, as token buckets that
//! refill continuously (a key may burst up to one minute's allowance, then proceeds at the
//! limit's rate). Pure: time is an argument.

use std::time::Duration;

use rustc_hash::FxHashMap;

/// The limits per key; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    pub requests_per_min: Option<u32>,
    pub tokens_per_min: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    level: f64,
    at: f64,
}

impl Bucket {
    /// Take `n` from a bucket of `capacity` refilled at `capacity` per minute; else how long
    /// until it could be taken.
    fn take(&mut self, n: f64, capacity: f64, now: f64) -> Result<(), Duration> {
        let rate = capacity / 60.0;
        self.level = (self.level + (now - self.at).max(0.0) * rate).min(capacity);
        self.at = now;
        // A single request larger than the whole allowance still goes through once the bucket
        // is full (it could never pass otherwise); it leaves the bucket in debt.
        if self.level >= n.min(capacity) {
            self.level -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (n.min(capacity) - self.level) / rate,
            ))
        }
    }
}

/// Buckets per key.
#[derive(Debug, Default)]
pub struct RateLimiter {
    limits: Limits,
    buckets: FxHashMap<usize, (Bucket, Bucket)>,
}

impl RateLimiter {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            buckets: FxHashMap::default(),
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.limits == Limits::default()
    }

    /// Charge one request of `tokens` tokens to `key` at `now` (seconds), or say how long to
    /// wait. Nothing is charged when it is refused.
    pub fn check(&mut self, key: usize, tokens: u64, now: f64) -> Result<(), Duration> {
        let l = self.limits;
        let full = |c: Option<f64>| Bucket {
            level: c.unwrap_or(0.0),
            at: now,
        };
        let (rb, tb) = self.buckets.entry(key).or_insert_with(|| {
            (
                full(l.requests_per_min.map(f64::from)),
                full(l.tokens_per_min.map(|t| t as f64)),
            )
        });
        let (mut r, mut t) = (*rb, *tb);
        if let Some(c) = l.requests_per_min {
            r.take(1.0, f64::from(c), now)?;
        }
        if let Some(c) = l.tokens_per_min {
            t.take(tokens as f64, c as f64, now)?;
        }
        (*rb, *tb) = (r, t);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_per_minute_burst_then_refill() {
        let mut r = RateLimiter::new(Limits {
            requests_per_min: Some(60),
            tokens_per_min: None,
        });
        for _ in 0..60 {
            assert!(r.check(0, 0, 0.0).is_ok());
        }
        let wait = r.check(0, 0, 0.0).unwrap_err();
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-9, "{wait:?}");
        assert!(r.check(1, 0, 0.0).is_ok(), "keys are separate");
        assert!(r.check(0, 0, 1.0).is_ok(), "one more after a second");
        assert!(r.check(0, 0, 1.0).is_err());
    }

    #[test]
    fn tokens_per_minute_and_nothing_charged_on_refusal() {
        let mut r = RateLimiter::new(Limits {
            requests_per_min: Some(100),
            tokens_per_min: Some(1000),
        });
        assert!(r.check(0, 900, 0.0).is_ok());
        assert!(r.check(0, 200, 0.0).is_err());
        // The refused request did not use up a request slot or tokens.
        assert!(r.check(0, 100, 0.0).is_ok());
        // Larger than a minute's allowance: passes once the bucket is full again.
        assert!(r.check(0, 5000, 0.0).is_err());
        assert!(r.check(0, 5000, 60.0).is_ok());
        assert!(r.check(0, 1, 60.0).is_err(), "in debt");
    }
}
