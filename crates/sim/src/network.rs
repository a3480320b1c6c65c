//! KV-transfer network: each worker has one link (its GPUs' NICs together); a transfer from a
//! prefill worker to a decode worker uses both ends' links. Links are shared by concurrent
//! transfers: each link splits its bandwidth equally among the transfers on it, and a
//! transfer moves at the smaller of its two shares (recomputed whenever a transfer starts or
//! ends). Time is an argument; nothing here owns a clock.

/// One transfer in flight.
#[derive(Clone, Debug)]
struct Flow {
    id: u64,
    src: usize,
    dst: usize,
    /// Bytes still to move.
    remaining: f64,
    /// When bytes start flowing (start + setup latency).
    ready_at: f64,
    rate: f64,
}

/// A transfer that finished, with its completion time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Completed {
    pub id: u64,
    pub at: f64,
}

/// Shared-link transfer model.
#[derive(Clone, Debug)]
pub struct Network {
    /// Usable bytes/s per worker link (line rate × efficiency).
    link_bw: Vec<f64>,
    setup: f64,
    flows: Vec<Flow>,
    now: f64,
    per_link: Vec<u32>,
}

impl Network {
    /// `link_bw[w]`: usable bytes/s of worker `w`'s link; `setup`: seconds before bytes flow.
    pub fn new(link_bw: Vec<f64>, setup: f64) -> Self {
        let n = link_bw.len();
        Self {
            link_bw,
            setup,
            flows: Vec::new(),
            now: 0.0,
            per_link: vec![0; n],
        }
    }

    pub fn in_flight(&self) -> usize {
        self.flows.len()
    }

    /// Add a link with `bw` usable bytes/s; returns its index (live workers learn their
    /// peers' links as transfers arrive).
    pub fn add_link(&mut self, bw: f64) -> usize {
        self.link_bw.push(bw);
        self.per_link.push(0);
        self.link_bw.len() - 1
    }

    /// Drop transfer `id` at time `at` (its receiver went away); the others speed up.
    /// Returns whether it was in flight.
    pub fn cancel(&mut self, id: u64, at: f64) -> bool {
        self.progress_to(at);
        let before = self.flows.len();
        self.flows.retain(|f| f.id != id);
        let found = self.flows.len() != before;
        if found {
            self.rerate();
        }
        found
    }

    /// Start moving `bytes` from worker `src` to worker `dst` at time `at` (≥ every earlier
    /// call's time). Completions before `at` must have been collected with [`Network::advance`].
    pub fn start(&mut self, id: u64, src: usize, dst: usize, bytes: f64, at: f64) {
        self.progress_to(at);
        self.flows.push(Flow {
            id,
            src,
            dst,
            remaining: bytes.max(0.0),
            ready_at: at + self.setup,
            rate: 0.0,
        });
        self.rerate();
    }

    /// Time of the next completion if nothing else starts, or `None` when idle.
    pub fn next_completion(&self) -> Option<f64> {
        self.flows
            .iter()
            .map(|f| self.finish_time(f))
            .min_by(f64::total_cmp)
    }

    /// Advance to time `t`, appending every transfer that completes at or before `t` (in
    /// completion order) to `done`.
    pub fn advance(&mut self, t: f64, done: &mut Vec<Completed>) {
        while let Some(next) = self.next_completion() {
            if next > t {
                break;
            }
            self.progress_to(next);
            // Everything finishing at `next` (within rounding) completes together.
            let mut i = 0;
            while i < self.flows.len() {
                if self.finish_time(&self.flows[i]) <= next + 1e-12 {
                    let f = self.flows.swap_remove(i);
                    done.push(Completed { id: f.id, at: next });
                } else {
                    i += 1;
                }
            }
            self.rerate();
        }
        self.progress_to(t.max(self.now));
    }

    fn finish_time(&self, f: &Flow) -> f64 {
        let start = f.ready_at.max(self.now);
        if f.remaining <= 0.0 {
            start
        } else if f.rate > 0.0 {
            start + f.remaining / f.rate
        } else {
            f64::INFINITY
        }
    }

    /// Move every flow's bytes forward to time `t` at the current rates.
    fn progress_to(&mut self, t: f64) {
        if t <= self.now {
            return;
        }
        for f in &mut self.flows {
            let from = f.ready_at.max(self.now);
            if t > from {
                f.remaining = (f.remaining - f.rate * (t - from)).max(0.0);
            }
        }
        self.now = t;
        // Flows whose setup just ended start sharing now.
        self.rerate();
    }

    fn rerate(&mut self) {
        self.per_link.iter_mut().for_each(|c| *c = 0);
        for f in &self.flows {
            self.per_link[f.src] += 1;
            self.per_link[f.dst] += 1;
        }
        for f in &mut self.flows {
            let s = self.link_bw[f.src] / self.per_link[f.src] as f64;
            let d = self.link_bw[f.dst] / self.per_link[f.dst] as f64;
            f.rate = s.min(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_transfer_takes_setup_plus_bytes_over_bandwidth() {
        let mut n = Network::new(vec![100.0, 50.0], 0.001);
        n.start(1, 0, 1, 100.0, 1.0);
        let mut done = vec![];
        n.advance(10.0, &mut done);
        assert_eq!(done.len(), 1);
        assert!((done[0].at - 3.001).abs() < 1e-9, "{:?}", done);
    }

    #[test]
    fn concurrent_transfers_share_the_destination_link() {
        // Two prefill workers send 100 bytes each to one decode worker (link 100 B/s).
        let mut n = Network::new(vec![100.0, 100.0, 100.0], 0.0);
        n.start(1, 0, 2, 100.0, 0.0);
        n.start(2, 1, 2, 100.0, 0.0);
        let mut done = vec![];
        n.advance(100.0, &mut done);
        assert_eq!(done.len(), 2);
        assert!((done[0].at - 2.0).abs() < 1e-9 && (done[1].at - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_late_transfer_slows_an_early_one_from_then_on() {
        let mut n = Network::new(vec![100.0, 100.0, 100.0], 0.0);
        n.start(1, 0, 2, 100.0, 0.0);
        let mut done = vec![];
        n.advance(0.5, &mut done); // 50 bytes moved alone
        n.start(2, 1, 2, 100.0, 0.5);
        n.advance(100.0, &mut done);
        // Flow 1: 50 bytes at 50 B/s -> 1.5. Flow 2: 50 bytes by 1.5, then 50 at 100 -> 2.0.
        assert!((done[0].at - 1.5).abs() < 1e-9, "{done:?}");
        assert_eq!(done[1].id, 2);
        assert!((done[1].at - 2.0).abs() < 1e-9, "{done:?}");
    }

    #[test]
    fn zero_bytes_finish_after_setup() {
        let mut n = Network::new(vec![1.0, 1.0], 0.25);
        n.start(9, 0, 1, 0.0, 2.0);
        let mut done = vec![];
        n.advance(2.2, &mut done);
        assert!(done.is_empty());
        n.advance(3.0, &mut done);
        assert_eq!(done, vec![Completed { id: 9, at: 2.25 }]);
    }

    #[test]
    fn cancel_frees_the_link_and_added_links_share() {
        let mut n = Network::new(vec![100.0], 0.0);
        let remote = n.add_link(100.0);
        assert_eq!(remote, 1);
        n.start(1, remote, 0, 100.0, 0.0);
        n.start(2, remote, 0, 100.0, 0.0);
        let mut done = vec![];
        n.advance(0.5, &mut done); // 25 bytes each at 50 B/s
        assert!(n.cancel(2, 0.5));
        assert!(!n.cancel(2, 0.5));
        n.advance(100.0, &mut done);
        // Flow 1: 75 bytes left at the full 100 B/s -> 1.25.
        assert_eq!(done, vec![Completed { id: 1, at: 1.25 }]);
    }
}
