//! The router core: index + load + policy behind one object, and the thread-safe wrapper with
//! RAII guards for the live server.

use std::sync::{Arc, Mutex, MutexGuard};

use switchyard_kv::{BlockHash, KvEvent, KvIndexer, Overlaps, WorkerKey};

use crate::RouteError;
use crate::config::RouterConfig;
use crate::disagg::{PairDecision, PairSelector};
use crate::load::{EngineLoad, LoadSnapshot, LoadTracker, Ticket};
use crate::policy::{Candidate, Decision, Policy, RequestInfo, build_policy};

/// Load handles of a disaggregated dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairTickets {
    /// The prefill worker's ticket (`None` when the decode worker prefills locally). Finish
    /// it when the prefill and the KV transfer are done.
    pub prefill: Option<Ticket>,
    /// The decode worker's ticket: `first_token` on the first generated token, `finish` at
    /// the end.
    pub decode: Ticket,
}

/// Single-threaded router core (`&mut self`), used directly by the simulator and through
/// [`SharedRouter`] by the live server.
pub struct Router {
    config: RouterConfig,
    policy: Box<dyn Policy>,
    pairs: PairSelector,
    index: KvIndexer,
    load: LoadTracker,
    overlaps: Overlaps,
    cands: Vec<Candidate>,
    prefill_cands: Vec<Candidate>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("config", &self.config)
            .field("policy", &self.policy.name())
            .finish_non_exhaustive()
    }
}

impl Router {
    /// A router with the policy `config` names.
    pub fn new(config: RouterConfig) -> Result<Self, RouteError> {
        let policy = build_policy(&config);
        Self::with_policy(config, policy)
    }

    /// A router with a custom policy (the config's `policy` field is then ignored).
    pub fn with_policy(config: RouterConfig, policy: Box<dyn Policy>) -> Result<Self, RouteError> {
        config.validate()?;
        Ok(Self {
            pairs: PairSelector::new(
                config.overlap_weight,
                config.local_prefill_threshold,
                config.seed,
            ),
            index: KvIndexer::new(config.kv_feed.into(), config.approx_config())?,
            load: LoadTracker::new(config.engine_load_max_age_secs),
            overlaps: Overlaps::new(),
            cands: Vec::new(),
            prefill_cands: Vec::new(),
            policy,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// The policy's name.
    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    /// [`RequestInfo`] for a prompt of `input_tokens` at the configured block size.
    pub fn request_info(&self, input_tokens: u32) -> RequestInfo {
        RequestInfo {
            input_tokens,
            block_size: self.config.block_size,
        }
    }

    // ----- cache and load feeds -------------------------------------------------------------

    /// Apply an engine KV event from `worker`.
    pub fn apply_event(&mut self, worker: WorkerKey, event: &KvEvent) {
        self.index.apply_event(worker, event);
    }

    /// Apply a batch of engine KV events in order (same result as one by one, faster).
    pub fn apply_events(&mut self, events: &[(WorkerKey, KvEvent)]) {
        self.index.apply_events(events);
    }

    /// An engine reported its load at `now`.
    pub fn report_load(&mut self, worker: WorkerKey, load: EngineLoad, now: f64) {
        self.load.report(worker, load, now);
    }

    /// Another router (an active-active replica) routed a prompt with chained block `hashes`
    /// to `worker` at `now`: in approximate/hybrid modes the worker is predicted to cache it,
    /// exactly as if this router had routed it. A no-op with `kv_feed = "events"`.
    pub fn record_prediction(&mut self, worker: WorkerKey, hashes: &[BlockHash], now: f64) {
        self.index.record_routing(worker, hashes, now);
    }

    /// Other routers have `requests` in flight on `worker` now (absolute; replaces the last
    /// value): added to this router's own count in the load the policies see.
    pub fn set_external_load(&mut self, worker: WorkerKey, requests: u32) {
        self.load.set_external(worker, requests);
    }

    /// A worker (re)joined the fleet.
    pub fn add_worker(&mut self, worker: WorkerKey) {
        self.index.add_worker(worker);
    }

    /// A worker left: forget its cache and its load.
    pub fn remove_worker(&mut self, worker: WorkerKey) {
        self.index.remove_worker(worker);
        self.load.remove_worker(worker);
    }

    // ----- decisions ------------------------------------------------------------------------

    /// The candidates (overlap + load) for `workers` and a request with chained block `hashes`.
    pub fn candidates(
        &mut self,
        hashes: &[BlockHash],
        workers: &[WorkerKey],
        now: f64,
    ) -> &[Candidate] {
        self.index.find_matches(hashes, now, &mut self.overlaps);
        fill(&mut self.cands, &self.overlaps, &self.load, workers, now);
        &self.cands
    }

    /// Choose among `workers` for a prompt of `input_tokens` tokens whose full blocks hash to
    /// `hashes`. Books nothing (use [`Self::route`] to dispatch).
    pub fn choose(
        &mut self,
        hashes: &[BlockHash],
        input_tokens: u32,
        workers: &[WorkerKey],
        now: f64,
    ) -> Result<Decision, RouteError> {
        if workers.is_empty() {
            return Err(RouteError::NoCandidates);
        }
        let req = self.request_info(input_tokens);
        self.index.find_matches(hashes, now, &mut self.overlaps);
        fill(&mut self.cands, &self.overlaps, &self.load, workers, now);
        self.policy.choose(&req, &self.cands)
    }

    /// Choose and dispatch: books the request's load on the chosen worker (returns its
    /// [`Ticket`]) and, in approximate/hybrid modes, records the prediction that the worker
    /// now caches the prompt.
    pub fn route(
        &mut self,
        hashes: &[BlockHash],
        input_tokens: u32,
        workers: &[WorkerKey],
        now: f64,
    ) -> Result<(Decision, Ticket), RouteError> {
        let d = self.choose(hashes, input_tokens, workers, now)?;
        let req = self.request_info(input_tokens);
        let t = self.load.begin(
            d.worker,
            req.uncached_tokens(d.overlap_blocks()),
            req.prompt_blocks(),
        );
        self.index.record_routing(d.worker, hashes, now);
        Ok((d, t))
    }

    /// Choose a (prefill, decode) pair; books nothing.
    pub fn choose_pair(
        &mut self,
        hashes: &[BlockHash],
        input_tokens: u32,
        prefill_workers: &[WorkerKey],
        decode_workers: &[WorkerKey],
        now: f64,
    ) -> Result<PairDecision, RouteError> {
        if decode_workers.is_empty() {
            return Err(RouteError::NoCandidates);
        }
        let req = self.request_info(input_tokens);
        self.index.find_matches(hashes, now, &mut self.overlaps);
        fill(
            &mut self.cands,
            &self.overlaps,
            &self.load,
            decode_workers,
            now,
        );
        fill(
            &mut self.prefill_cands,
            &self.overlaps,
            &self.load,
            prefill_workers,
            now,
        );
        self.pairs.choose(&req, &self.prefill_cands, &self.cands)
    }

    /// Choose and dispatch a pair. Remote prefill: the prefill worker is booked with its
    /// uncached tokens and the prompt's blocks (held until transfer), the decode worker with
    /// the prompt's blocks; both are predicted to cache the prompt afterwards. Local prefill:
    /// the decode worker is booked with its own uncached tokens.
    pub fn route_pair(
        &mut self,
        hashes: &[BlockHash],
        input_tokens: u32,
        prefill_workers: &[WorkerKey],
        decode_workers: &[WorkerKey],
        now: f64,
    ) -> Result<(PairDecision, PairTickets), RouteError> {
        let d = self.choose_pair(hashes, input_tokens, prefill_workers, decode_workers, now)?;
        let req = self.request_info(input_tokens);
        let blocks = req.prompt_blocks();
        let tickets = match &d.prefill {
            None => PairTickets {
                prefill: None,
                decode: self
                    .load
                    .begin(d.decode.worker, d.uncached_on_decode, blocks),
            },
            Some(p) => {
                let pt = self
                    .load
                    .begin(p.worker, d.uncached_on_prefill.unwrap_or(0), blocks);
                self.index.record_routing(p.worker, hashes, now);
                PairTickets {
                    prefill: Some(pt),
                    decode: self.load.begin(d.decode.worker, 0, blocks),
                }
            }
        };
        self.index.record_routing(d.decode.worker, hashes, now);
        Ok((d, tickets))
    }

    // ----- load updates ---------------------------------------------------------------------

    /// First token produced: the request's prefill work is done.
    pub fn first_token(&mut self, t: Ticket) -> Result<(), RouteError> {
        self.load.first_token(t)
    }

    /// The request's KV grew by `blocks` (optional, for decode-heavy workloads).
    pub fn grow(&mut self, t: Ticket, blocks: u64) -> Result<(), RouteError> {
        self.load.grow(t, blocks)
    }

    /// Completed, failed or cancelled: release the request's load.
    pub fn finish(&mut self, t: Ticket) -> Result<(), RouteError> {
        self.load.finish(t)
    }

    /// Load of `worker` as the policies see it at `now`.
    pub fn snapshot(&self, worker: WorkerKey, now: f64) -> LoadSnapshot {
        self.load.snapshot(worker, now)
    }

    /// The load tracker.
    pub fn load(&self) -> &LoadTracker {
        &self.load
    }

    /// The caller's block hashes are grouped ids (a simulator's, see
    /// [`switchyard_kv::grouped`]): lay the index out for them. Decisions do not change.
    pub fn use_grouped_ids(&mut self) {
        self.index.use_grouped_ids();
    }

    /// The KV index (counters, sizes).
    pub fn index(&self) -> &KvIndexer {
        &self.index
    }
}

fn fill(
    out: &mut Vec<Candidate>,
    overlaps: &Overlaps,
    load: &LoadTracker,
    workers: &[WorkerKey],
    now: f64,
) {
    out.clear();
    out.extend(workers.iter().map(|&w| Candidate {
        worker: w,
        load: load.snapshot(w, now),
        overlap_blocks: overlaps.get(w),
    }));
}

/// A [`Router`] shared between tasks/threads, handing out RAII load guards.
#[derive(Clone, Debug)]
pub struct SharedRouter {
    inner: Arc<Mutex<Router>>,
}

impl SharedRouter {
    /// Wrap a router.
    pub fn new(router: Router) -> Self {
        Self {
            inner: Arc::new(Mutex::new(router)),
        }
    }

    /// Lock the core (for events, load reports, inspection). A panic while holding the lock
    /// does not make the router unusable: the state is plain counters and maps, each update
    /// of which completes before any call that could panic.
    pub fn lock(&self) -> MutexGuard<'_, Router> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`Router::route`] returning a guard that releases the load when dropped.
    pub fn route(
        &self,
        hashes: &[BlockHash],
        input_tokens: u32,
        workers: &[WorkerKey],
        now: f64,
    ) -> Result<(Decision, RouteGuard), RouteError> {
        let (d, t) = self.lock().route(hashes, input_tokens, workers, now)?;
        Ok((d, RouteGuard::new(self.clone(), t)))
    }

    /// [`Router::route_pair`] returning guards.
    pub fn route_pair(
        &self,
        hashes: &[BlockHash],
        input_tokens: u32,
        prefill_workers: &[WorkerKey],
        decode_workers: &[WorkerKey],
        now: f64,
    ) -> Result<(PairDecision, PairGuards), RouteError> {
        let (d, t) =
            self.lock()
                .route_pair(hashes, input_tokens, prefill_workers, decode_workers, now)?;
        let guards = PairGuards {
            prefill: t.prefill.map(|p| RouteGuard::new(self.clone(), p)),
            decode: RouteGuard::new(self.clone(), t.decode),
        };
        Ok((d, guards))
    }
}

/// Holds one dispatched request's load; dropping it is completion (or cancellation).
#[derive(Debug)]
pub struct RouteGuard {
    router: SharedRouter,
    ticket: Ticket,
}

impl RouteGuard {
    fn new(router: SharedRouter, ticket: Ticket) -> Self {
        Self { router, ticket }
    }

    /// The underlying ticket.
    pub fn ticket(&self) -> Ticket {
        self.ticket
    }

    /// First token received: prefill done. Idempotent.
    pub fn prefill_done(&self) {
        let _ = self.router.lock().first_token(self.ticket);
    }

    /// The request's KV grew by `blocks`.
    pub fn grow(&self, blocks: u64) {
        let _ = self.router.lock().grow(self.ticket, blocks);
    }

    /// Explicit completion (same as dropping).
    pub fn finish(self) {}
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        // Cannot fail in a way that matters: a stale ticket only bumps a counter.
        let _ = self.router.lock().finish(self.ticket);
    }
}

/// Guards of a disaggregated dispatch.
#[derive(Debug)]
pub struct PairGuards {
    /// Prefill worker's guard (`None` for local prefill): drop it when prefill + transfer end.
    pub prefill: Option<RouteGuard>,
    /// Decode worker's guard.
    pub decode: RouteGuard,
}
