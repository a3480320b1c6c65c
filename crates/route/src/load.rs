//! Per-worker load: the router's own bookkeeping of what it dispatched, and engine-reported
//! load when a worker publishes it (preferred while fresh).
//!
//! Two interfaces over one state:
//! * explicit, allocation-free handles — [`LoadTracker::begin`] returns a [`Ticket`] (a plain
//!   `Copy` value), [`LoadTracker::first_token`] and [`LoadTracker::finish`] consume it. This is
//!   what the discrete-event simulator uses: it cannot hold borrows across events;
//! * RAII guards ([`crate::RouteGuard`]) for the live server, a thin wrapper over tickets, so
//!   that no exit path (error, client disconnect, panic unwinding) can leak load.
//!
//! Engine-reported load arrives with a timestamp; until the next report, requests the router
//! dispatched *after* it are added on top (the engine could not have seen them yet), so a burst
//! between two reports does not all land on the worker that looked idle.

use rustc_hash::FxHashMap;
use switchyard_kv::WorkerKey;

use crate::RouteError;

/// What the policies see of one worker's load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadSnapshot {
    /// Requests dispatched and not finished (engine: running + waiting).
    pub active_requests: u32,
    /// Prompt tokens still to prefill (requests that have not produced a first token).
    pub prefill_tokens: u64,
    /// KV blocks held by active requests.
    pub active_blocks: u64,
    /// True when the numbers come from a fresh engine report.
    pub engine_reported: bool,
}

impl LoadSnapshot {
    /// Ordering used by least-load, power-of-two and tie-breaks: fewer active requests, then
    /// fewer active blocks, then fewer pending prefill tokens.
    pub fn key(&self) -> (u32, u64, u64) {
        (
            self.active_requests,
            self.active_blocks,
            self.prefill_tokens,
        )
    }
}

/// Load as an engine reports it (vLLM: `num_requests_running`, `num_requests_waiting`,
/// `kv_cache_usage_perc` × total blocks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineLoad {
    /// Requests in the running batch.
    pub running_requests: u32,
    /// Requests queued.
    pub waiting_requests: u32,
    /// KV blocks in use.
    pub active_blocks: u64,
    /// Prompt tokens not yet prefilled, when the engine reports it (otherwise the router's own
    /// estimate is used for that component).
    pub prefill_tokens: Option<u64>,
}

/// Handle for one dispatched request's load. `Copy`, 8 bytes; using it after
/// [`LoadTracker::finish`] is detected ([`RouteError::StaleTicket`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ticket {
    slot: u32,
    generation: u32,
}

#[derive(Clone, Copy, Debug, Default)]
struct Delta {
    requests: u32,
    prefill_tokens: u64,
    blocks: u64,
}

#[derive(Clone, Debug, Default)]
struct WorkerState {
    key: WorkerKey,
    /// Bumped when the worker is removed; tickets from an older generation no longer count.
    generation: u32,
    own: Delta,
    engine: Option<(EngineLoad, f64)>,
    /// Bumped at every engine report.
    epoch: u32,
    /// Requests other routers (active-active replicas) have in flight on this worker.
    external_requests: u32,
    /// Dispatched since the last engine report (and not finished).
    since_report: Delta,
}

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    generation: u32,
    live: bool,
    worker: u32,
    worker_generation: u32,
    epoch: u32,
    prefill_tokens: u64,
    blocks: u64,
    prefilled: bool,
}

/// Load bookkeeping for every worker. Pure: time is an argument.
#[derive(Clone, Debug)]
pub struct LoadTracker {
    index: FxHashMap<WorkerKey, u32>,
    workers: Vec<WorkerState>,
    entries: Vec<Entry>,
    free: Vec<u32>,
    max_engine_age: f64,
    stale_ticket_uses: u64,
    /// Running mean of prompt blocks per dispatched request: the footprint assumed for each
    /// of another router's requests (it reports counts only).
    blocks_per_request: f64,
}

/// Weight of the newest request in [`LoadTracker`]'s running mean of blocks per request.
const BLOCKS_PER_REQUEST_ALPHA: f64 = 0.05;

impl LoadTracker {
    /// Engine reports older than `max_engine_age_secs` are ignored.
    pub fn new(max_engine_age_secs: f64) -> Self {
        Self {
            index: FxHashMap::default(),
            workers: Vec::new(),
            entries: Vec::new(),
            free: Vec::new(),
            max_engine_age: max_engine_age_secs,
            stale_ticket_uses: 0,
            blocks_per_request: 0.0,
        }
    }

    fn worker_idx(&mut self, w: WorkerKey) -> u32 {
        if let Some(&i) = self.index.get(&w) {
            return i;
        }
        let i = self.workers.len() as u32;
        self.workers.push(WorkerState {
            key: w,
            ..WorkerState::default()
        });
        self.index.insert(w, i);
        i
    }

    /// A request was dispatched to `worker`: `prefill_tokens` prompt tokens it must compute
    /// (uncached part), `blocks` KV blocks it will hold. Allocation-free once warmed up.
    pub fn begin(&mut self, worker: WorkerKey, prefill_tokens: u64, blocks: u64) -> Ticket {
        self.blocks_per_request = if self.blocks_per_request == 0.0 {
            blocks as f64
        } else {
            self.blocks_per_request
                + BLOCKS_PER_REQUEST_ALPHA * (blocks as f64 - self.blocks_per_request)
        };
        let wi = self.worker_idx(worker);
        let ws = &mut self.workers[wi as usize];
        ws.own.requests += 1;
        ws.own.prefill_tokens += prefill_tokens;
        ws.own.blocks += blocks;
        ws.since_report.requests += 1;
        ws.since_report.prefill_tokens += prefill_tokens;
        ws.since_report.blocks += blocks;
        let (worker_generation, epoch) = (ws.generation, ws.epoch);
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.entries.push(Entry::default());
                (self.entries.len() - 1) as u32
            }
        };
        let e = &mut self.entries[slot as usize];
        let generation = e.generation.wrapping_add(1);
        *e = Entry {
            generation,
            live: true,
            worker: wi,
            worker_generation,
            epoch,
            prefill_tokens,
            blocks,
            prefilled: false,
        };
        Ticket { slot, generation }
    }

    fn entry(&mut self, t: Ticket) -> Result<usize, RouteError> {
        match self.entries.get(t.slot as usize) {
            Some(e) if e.live && e.generation == t.generation => Ok(t.slot as usize),
            _ => {
                self.stale_ticket_uses += 1;
                Err(RouteError::StaleTicket)
            }
        }
    }

    /// The request produced its first token: its prefill work is done. Idempotent.
    pub fn first_token(&mut self, t: Ticket) -> Result<(), RouteError> {
        let i = self.entry(t)?;
        let e = self.entries[i];
        if e.prefilled {
            return Ok(());
        }
        self.entries[i].prefilled = true;
        let ws = &mut self.workers[e.worker as usize];
        if ws.generation == e.worker_generation {
            ws.own.prefill_tokens = ws.own.prefill_tokens.saturating_sub(e.prefill_tokens);
            if ws.epoch == e.epoch {
                ws.since_report.prefill_tokens = ws
                    .since_report
                    .prefill_tokens
                    .saturating_sub(e.prefill_tokens);
            }
        }
        Ok(())
    }

    /// The request's KV footprint grew by `blocks` (decode filled new blocks).
    pub fn grow(&mut self, t: Ticket, blocks: u64) -> Result<(), RouteError> {
        let i = self.entry(t)?;
        let e = self.entries[i];
        self.entries[i].blocks += blocks;
        let ws = &mut self.workers[e.worker as usize];
        if ws.generation == e.worker_generation {
            ws.own.blocks += blocks;
            if ws.epoch == e.epoch {
                ws.since_report.blocks += blocks;
            }
        }
        Ok(())
    }

    /// The request completed, failed or was cancelled: release all its load.
    pub fn finish(&mut self, t: Ticket) -> Result<(), RouteError> {
        let i = self.entry(t)?;
        let e = self.entries[i];
        self.entries[i].live = false;
        self.free.push(t.slot);
        let ws = &mut self.workers[e.worker as usize];
        if ws.generation != e.worker_generation {
            return Ok(());
        }
        let pf = if e.prefilled { 0 } else { e.prefill_tokens };
        ws.own.requests = ws.own.requests.saturating_sub(1);
        ws.own.prefill_tokens = ws.own.prefill_tokens.saturating_sub(pf);
        ws.own.blocks = ws.own.blocks.saturating_sub(e.blocks);
        if ws.epoch == e.epoch {
            ws.since_report.requests = ws.since_report.requests.saturating_sub(1);
            ws.since_report.prefill_tokens = ws.since_report.prefill_tokens.saturating_sub(pf);
            ws.since_report.blocks = ws.since_report.blocks.saturating_sub(e.blocks);
        }
        Ok(())
    }

    /// Where `t` was dispatched, if it is still live.
    pub fn ticket_worker(&self, t: Ticket) -> Option<WorkerKey> {
        self.entries
            .get(t.slot as usize)
            .filter(|e| e.live && e.generation == t.generation)
            .map(|e| self.workers[e.worker as usize].key)
    }

    /// An engine reported its load at time `now`.
    pub fn report(&mut self, worker: WorkerKey, load: EngineLoad, now: f64) {
        let wi = self.worker_idx(worker);
        let ws = &mut self.workers[wi as usize];
        ws.engine = Some((load, now));
        ws.epoch = ws.epoch.wrapping_add(1);
        ws.since_report = Delta::default();
    }

    /// `worker` left: forget its load. Its outstanding tickets stay valid to finish (no error)
    /// but no longer count.
    pub fn remove_worker(&mut self, worker: WorkerKey) {
        if let Some(&wi) = self.index.get(&worker) {
            let ws = &mut self.workers[wi as usize];
            ws.generation = ws.generation.wrapping_add(1);
            ws.own = Delta::default();
            ws.since_report = Delta::default();
            ws.engine = None;
            ws.external_requests = 0;
        }
    }

    /// Other routers (active-active frontend replicas sharing this fleet) have `requests` in
    /// flight on `worker` now: an absolute count that replaces the previous one. Each is
    /// assumed to hold the running mean of prompt blocks of this router's own requests (the
    /// replicas behind one load balancer see the same traffic) and to be past its prefill.
    pub fn set_external(&mut self, worker: WorkerKey, requests: u32) {
        let wi = self.worker_idx(worker);
        self.workers[wi as usize].external_requests = requests;
    }

    fn external_blocks(&self, ws: &WorkerState) -> u64 {
        (f64::from(ws.external_requests) * self.blocks_per_request).round() as u64
    }

    /// The load policies should see for `worker` at time `now`: a fresh engine report plus what
    /// was dispatched since, else the router's own bookkeeping.
    pub fn snapshot(&self, worker: WorkerKey, now: f64) -> LoadSnapshot {
        let Some(&wi) = self.index.get(&worker) else {
            return LoadSnapshot::default();
        };
        let ws = &self.workers[wi as usize];
        // This router's requests plus the other routers' (as they last reported them).
        let fleet_requests = ws.own.requests.saturating_add(ws.external_requests);
        let fleet_blocks = ws.own.blocks.saturating_add(self.external_blocks(ws));
        match ws.engine {
            // The engine's report already includes every router's requests as of its time;
            // the routers' live counts can be newer (a burst since the report): whichever
            // is larger.
            Some((e, at)) if now - at <= self.max_engine_age => LoadSnapshot {
                active_requests: e
                    .running_requests
                    .saturating_add(e.waiting_requests)
                    .saturating_add(ws.since_report.requests)
                    .max(fleet_requests),
                prefill_tokens: match e.prefill_tokens {
                    Some(p) => p.saturating_add(ws.since_report.prefill_tokens),
                    None => ws.own.prefill_tokens,
                },
                active_blocks: e
                    .active_blocks
                    .saturating_add(ws.since_report.blocks)
                    .max(fleet_blocks),
                engine_reported: true,
            },
            _ => LoadSnapshot {
                active_requests: fleet_requests,
                prefill_tokens: ws.own.prefill_tokens,
                active_blocks: fleet_blocks,
                engine_reported: false,
            },
        }
    }

    /// Requests in flight across all workers (router's own count).
    pub fn in_flight(&self) -> u64 {
        self.workers.iter().map(|w| u64::from(w.own.requests)).sum()
    }

    /// Uses of finished/unknown tickets so far (should stay 0; export as a metric).
    pub fn stale_ticket_uses(&self) -> u64 {
        self.stale_ticket_uses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: WorkerKey = WorkerKey::new(1, 0);

    #[test]
    fn begin_first_token_finish_round_trip() {
        let mut t = LoadTracker::new(5.0);
        let a = t.begin(W, 1000, 70);
        let b = t.begin(W, 200, 20);
        let s = t.snapshot(W, 0.0);
        assert_eq!(
            (s.active_requests, s.prefill_tokens, s.active_blocks),
            (2, 1200, 90)
        );
        t.first_token(a).unwrap();
        t.first_token(a).unwrap(); // idempotent
        assert_eq!(t.snapshot(W, 0.0).prefill_tokens, 200);
        t.grow(a, 5).unwrap();
        assert_eq!(t.snapshot(W, 0.0).active_blocks, 95);
        t.finish(b).unwrap(); // cancelled before first token: its prefill goes too
        let s = t.snapshot(W, 0.0);
        assert_eq!(
            (s.active_requests, s.prefill_tokens, s.active_blocks),
            (1, 0, 75)
        );
        t.finish(a).unwrap();
        assert_eq!(t.snapshot(W, 0.0), LoadSnapshot::default());
        assert_eq!(t.finish(a), Err(RouteError::StaleTicket));
        assert_eq!(t.first_token(b), Err(RouteError::StaleTicket));
        assert_eq!(t.stale_ticket_uses(), 2);
        // Slot reuse does not revive old tickets.
        let c = t.begin(W, 1, 1);
        assert_ne!(c, a);
        assert_eq!(t.finish(a), Err(RouteError::StaleTicket));
        t.finish(c).unwrap();
    }

    #[test]
    fn engine_report_preferred_while_fresh_plus_dispatches_since() {
        let mut t = LoadTracker::new(5.0);
        let old = t.begin(W, 500, 40);
        t.report(
            W,
            EngineLoad {
                running_requests: 7,
                waiting_requests: 2,
                active_blocks: 900,
                prefill_tokens: None,
            },
            10.0,
        );
        let s = t.snapshot(W, 11.0);
        assert!(s.engine_reported);
        assert_eq!((s.active_requests, s.active_blocks), (9, 900));
        assert_eq!(
            s.prefill_tokens, 500,
            "own estimate when the engine does not report it"
        );
        let new = t.begin(W, 100, 10);
        let s = t.snapshot(W, 11.0);
        assert_eq!((s.active_requests, s.active_blocks), (10, 910));
        // Finishing a request the report already included does not touch the delta.
        t.finish(old).unwrap();
        assert_eq!(t.snapshot(W, 11.0).active_requests, 10);
        t.finish(new).unwrap();
        assert_eq!(t.snapshot(W, 11.0).active_requests, 9);
        // Stale report: back to own bookkeeping (nothing in flight now).
        let s = t.snapshot(W, 15.5);
        assert!(!s.engine_reported);
        assert_eq!(s, LoadSnapshot::default());
    }

    #[test]
    fn external_requests_add_to_own_and_blend_with_engine_reports() {
        let mut t = LoadTracker::new(5.0);
        let a = t.begin(W, 100, 10);
        let _b = t.begin(W, 100, 30); // mean blocks per request: 10 + 0.05 × (30 − 10) = 11
        t.set_external(W, 3);
        let s = t.snapshot(W, 0.0);
        assert_eq!((s.active_requests, s.active_blocks), (5, 40 + 33));
        assert_eq!(s.prefill_tokens, 200, "peers' requests count as decoding");
        // Absolute, not cumulative.
        t.set_external(W, 1);
        assert_eq!(t.snapshot(W, 0.0).active_requests, 3);
        // Other workers are unaffected.
        let other = WorkerKey::new(2, 0);
        assert_eq!(t.snapshot(other, 0.0), LoadSnapshot::default());
        // A fresh engine report that already counts everyone wins when larger ...
        let report = |running| EngineLoad {
            running_requests: running,
            waiting_requests: 0,
            active_blocks: 500,
            prefill_tokens: None,
        };
        t.report(W, report(9), 1.0);
        let s = t.snapshot(W, 1.5);
        assert_eq!((s.active_requests, s.active_blocks), (9, 500));
        // ... and the routers' live counts win when a burst came after the report.
        t.set_external(W, 20);
        let s = t.snapshot(W, 1.5);
        assert_eq!((s.active_requests, s.active_blocks), (22, 500));
        // A removed worker forgets its external load.
        t.finish(a).unwrap();
        t.remove_worker(W);
        assert_eq!(t.snapshot(W, 1.5), LoadSnapshot::default());
    }

    #[test]
    fn removed_worker_tickets_finish_quietly() {
        let mut t = LoadTracker::new(5.0);
        let a = t.begin(W, 10, 1);
        t.remove_worker(W);
        assert_eq!(t.snapshot(W, 0.0), LoadSnapshot::default());
        let b = t.begin(W, 5, 1);
        t.finish(a).unwrap();
        let s = t.snapshot(W, 0.0);
        assert_eq!((s.active_requests, s.prefill_tokens), (1, 5));
        t.finish(b).unwrap();
        assert_eq!(t.in_flight(), 0);
    }
}
