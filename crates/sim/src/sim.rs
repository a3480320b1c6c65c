//! The simulation loop. See the crate docs for the time model.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use serde::Serialize;
use switchyard_engine::{Catalog, Engine, EngineError, FinishReason, Request, Role, StepOutcome};
use switchyard_kv::{BlockHash, KvEvent, TraceBlockMapper, WorkerKey};
use switchyard_metrics::{ChunkGaps, RequestRecord, Status, TimeSeries, quantize};
use switchyard_route::{Router, Ticket};
use switchyard_trace::Trace;

use crate::SimError;
use crate::blockid::BlockIds;
use crate::config::{Deployment, TransferMode};
use crate::network::{Completed, Network};

/// Knobs of one run that are not part of the deployment.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Replay arrivals this many times faster.
    pub speedup: f64,
    /// Override the deployment's seed.
    pub seed: Option<u64>,
    /// Name blocks by their real chained hashes instead of grouped ids (same results, slower;
    /// for tests that check exactly that).
    #[doc(hidden)]
    pub real_block_hashes: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            speedup: 1.0,
            seed: None,
            real_block_hashes: false,
        }
    }
}

/// Per-worker outcome of a run.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerReport {
    pub name: String,
    pub role: &'static str,
    pub gpus: u32,
    pub description: String,
    pub kv_capacity_tokens: u64,
    pub requests: u64,
    pub steps: u64,
    pub busy_fraction: f64,
    pub prefix_hit_rate: f64,
    pub preemptions: u64,
}

/// What the router did over a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RoutingReport {
    pub policy: &'static str,
    pub decisions: u64,
    /// Disaggregated only: requests whose decode worker prefilled locally.
    pub local_prefills: u64,
    /// Mean leading blocks the chosen worker already held, per decision.
    pub mean_overlap_blocks: f64,
    pub kv_events_applied: u64,
    pub rejected: u64,
}

/// Everything a run produces.
#[derive(Clone, Debug)]
pub struct SimOutput {
    /// One line: workers, GPUs, KV capacity.
    pub description: String,
    /// One per trace request, in trace order.
    pub records: Vec<RequestRecord>,
    /// Gauges over time (queue depth and KV usage per worker).
    pub series: Vec<TimeSeries>,
    /// GPU-weighted share of the run (first arrival to last finish) that engines were busy.
    pub gpu_busy_fraction: f64,
    pub workers: Vec<WorkerReport>,
    pub routing: RoutingReport,
    /// Engine steps simulated, all workers.
    pub steps: u64,
}

/// Simulate `dep` on `trace`. `progress(done, total)` is called now and then.
pub fn simulate(
    dep: &Deployment,
    catalog: &Catalog,
    trace: &Trace,
    opts: &RunOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SimOutput, SimError> {
    let mut sim = Sim::new(dep, catalog, trace, opts)?;
    let n = trace.requests.len();
    for i in 0..n {
        let t = sim.arrival(i);
        sim.advance_all(t);
        sim.drain_inbox(t);
        sim.route(i, t)?;
        sim.sample(t);
        if i % 512 == 0 {
            progress(i, n);
        }
    }
    sim.advance_all(f64::INFINITY);
    sim.drain_inbox(f64::INFINITY);
    progress(n, n);
    Ok(sim.finish())
}

/// One engine worker in the simulation.
struct Worker {
    name: String,
    role: Role,
    engine: Engine,
    gpus: u32,
    /// End time of every step, in order (token times of decoding requests).
    timeline: Vec<f64>,
    /// Earliest time the next step may start (latest external input).
    wake: f64,
    requests: u64,
    /// Sampled gauges: (time, waiting, kv used %).
    samples: Vec<(f64, f64, f64)>,
}

/// Per-request state.
#[derive(Default)]
struct Req {
    arrival: f64,
    hashes: Vec<BlockHash>,
    /// Aggregated worker or prefill worker.
    prefill: Option<(usize, u32)>,
    /// Decode worker (disaggregated).
    decode: Option<(usize, u32)>,
    ticket_p: Option<Ticket>,
    ticket_d: Option<Ticket>,
    started: Option<f64>,
    first: Option<(f64, u32)>,
    finish: Option<(f64, u32)>,
    preempted_at: Option<u32>,
    cached: u32,
    xfer: Option<(f64, Option<f64>)>,
    output_tokens: u32,
    error: Option<Status>,
}

/// Something the router learns, at a time.
enum Notice {
    Kv(WorkerKey, KvEvent),
    FirstToken(Ticket),
    Finish(Ticket),
}

struct Timed {
    at: f64,
    seq: u64,
    notice: Notice,
}

impl PartialEq for Timed {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Timed {
    // Min-heap on (time, sequence).
    fn cmp(&self, o: &Self) -> Ordering {
        o.at.total_cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}

struct Sim<'a> {
    trace: &'a Trace,
    speedup: f64,
    t0: f64,
    workers: Vec<Worker>,
    /// Workers that take new requests: aggregated, or prefill when disaggregated.
    front: Vec<usize>,
    decode: Vec<usize>,
    front_keys: Vec<WorkerKey>,
    decode_keys: Vec<WorkerKey>,
    disagg: bool,
    router: Router,
    ids: BlockIds,
    net: Network,
    /// First network link of each worker (one link per DP rank).
    link_base: Vec<usize>,
    kv_bytes_per_token: f64,
    /// Layer-wise transfer: usable bytes/s of a prefill rank's link and the model's layers.
    layerwise: Option<(Vec<f64>, f64)>,
    event_lag: f64,
    inbox: BinaryHeap<Timed>,
    kv_batch: Vec<(WorkerKey, KvEvent)>,
    seq: u64,
    reqs: Vec<Req>,
    routing: RoutingReport,
    overlap_sum: u64,
    /// Prefill completions of the current epoch: (time, request).
    handoffs: Vec<(f64, usize)>,
    completed: Vec<Completed>,
    sample_every: usize,
    arrivals_seen: usize,
}

impl<'a> Sim<'a> {
    fn new(
        dep: &Deployment,
        catalog: &Catalog,
        trace: &'a Trace,
        opts: &RunOptions,
    ) -> Result<Self, SimError> {
        let invalid = |message: String| SimError::Invalid {
            deployment: dep.name.clone(),
            message,
        };
        if !(opts.speedup.is_finite() && opts.speedup > 0.0) {
            return Err(invalid(format!(
                "speedup must be positive, got {}",
                opts.speedup
            )));
        }
        let mut workers = Vec::new();
        let mut link_bw = Vec::new();
        let mut link_base = Vec::new();
        let mut kv_bytes_per_token = None;
        let mut block_size = None;
        for (gi, g) in dep.groups.iter().enumerate() {
            let role = role_name(g.engine.role);
            let mut cfg = g.engine.clone();
            // Events cost work; only produce them when the router consumes them: a KV-aware
            // policy (or a disaggregated pair choice, which is KV-aware) fed by events.
            let kv_policy =
                dep.router.policy == switchyard_route::PolicyKind::Kv || dep.is_disaggregated();
            cfg.kv_events =
                kv_policy && dep.router.kv_feed != switchyard_route::KvFeed::Approximate;
            let engine = Engine::new(catalog, &cfg).map_err(|source| SimError::Engine {
                deployment: dep.name.clone(),
                group: gi + 1,
                role: role.into(),
                source,
            })?;
            if *block_size.get_or_insert(cfg.block_size) != cfg.block_size {
                return Err(invalid(
                    "every group must use the same KV block_size".into(),
                ));
            }
            // What a transfer moves per token: the whole model's KV, unsharded.
            let kvb = engine.kv_bytes_per_token() as f64;
            let prev = *kv_bytes_per_token.get_or_insert(kvb);
            if (prev - kvb).abs() > 0.5 && dep.is_disaggregated() {
                return Err(invalid(
                    "prefill and decode groups must store KV the same way (model and kv_dtype)"
                        .into(),
                ));
            }
            let gpu = catalog.gpu(&cfg.gpu).map_err(|source| SimError::Engine {
                deployment: dep.name.clone(),
                group: gi + 1,
                role: role.into(),
                source,
            })?;
            let nic = dep.network.nic_gb_s.unwrap_or(gpu.nic_gb_s) * 1e9 * dep.network.efficiency;
            for _ in 0..g.count {
                link_base.push(link_bw.len());
                // One link per DP rank: a request's KV lives on its rank's TP GPUs and moves
                // over their NICs.
                for _ in 0..engine.dp_ranks() {
                    link_bw.push(nic * cfg.tp as f64);
                }
                workers.push(Worker {
                    name: format!(
                        "{role}-{}",
                        workers
                            .iter()
                            .filter(|w: &&Worker| w.role == cfg.role)
                            .count()
                            + 1
                    ),
                    role: cfg.role,
                    engine: engine.clone(),
                    gpus: cfg.gpus(),
                    timeline: Vec::new(),
                    wake: 0.0,
                    requests: 0,
                    samples: Vec::new(),
                });
            }
        }
        let link_bw_copy = link_bw.clone();
        let layers = workers
            .first()
            .and_then(|w: &Worker| catalog.model(&w.engine.config().model).ok())
            .map_or(1.0, |m| m.layers as f64);
        let keys = |idx: &[usize], ws: &[Worker]| -> Vec<WorkerKey> {
            idx.iter()
                .flat_map(|&w| {
                    (0..ws[w].engine.dp_ranks()).map(move |r| WorkerKey::new(w as u64, r))
                })
                .collect()
        };
        let disagg = dep.is_disaggregated();
        let front: Vec<usize> = (0..workers.len())
            .filter(|&w| workers[w].role != Role::Decode)
            .collect();
        let decode: Vec<usize> = (0..workers.len())
            .filter(|&w| workers[w].role == Role::Decode)
            .collect();
        if front.is_empty() {
            return Err(invalid(
                "no worker accepts requests (add an aggregated or prefill group)".into(),
            ));
        }
        let mut router_cfg = dep.router.clone();
        router_cfg.block_size = block_size.unwrap_or(16);
        if let Some(s) = opts.seed {
            router_cfg.seed = s;
        } else if dep.seed != 0 {
            router_cfg.seed = dep.seed;
        }
        let router = Router::new(router_cfg)?;
        let routing = RoutingReport {
            policy: if disagg {
                "kv (prefill/decode pair)"
            } else {
                router.policy_name()
            },
            ..Default::default()
        };
        let n = trace.requests.len();
        let ids = BlockIds::new(
            TraceBlockMapper::with_trace_block_size(block_size.unwrap_or(16), trace.block_size)?,
            trace.block_size,
            !opts.real_block_hashes,
        );
        let mut router = router;
        if ids.grouped() {
            router.use_grouped_ids();
            for w in &mut workers {
                w.engine.use_grouped_block_ids();
            }
        }
        Ok(Sim {
            trace,
            speedup: opts.speedup,
            t0: trace.requests.first().map_or(0.0, |r| r.timestamp),
            front_keys: keys(&front, &workers),
            decode_keys: keys(&decode, &workers),
            front,
            decode,
            workers,
            disagg,
            router,
            ids,
            net: Network::new(link_bw, dep.network.setup_ms / 1e3),
            link_base,
            kv_bytes_per_token: kv_bytes_per_token.unwrap_or(0.0),
            layerwise: (dep.network.transfer == TransferMode::Layerwise)
                .then_some((link_bw_copy, layers)),
            event_lag: dep.events.lag_ms / 1e3,
            inbox: BinaryHeap::new(),
            kv_batch: Vec::new(),
            seq: 0,
            reqs: (0..n).map(|_| Req::default()).collect(),
            routing,
            overlap_sum: 0,
            handoffs: Vec::new(),
            completed: Vec::new(),
            sample_every: (n / 600).max(1),
            arrivals_seen: 0,
        })
    }

    /// Arrival time of trace request `i` in seconds from the trace start.
    fn arrival(&self, i: usize) -> f64 {
        (self.trace.requests[i].timestamp - self.t0) / 1000.0 / self.speedup
    }

    fn notify(&mut self, at: f64, notice: Notice) {
        self.seq += 1;
        self.inbox.push(Timed {
            at,
            seq: self.seq,
            notice,
        });
    }

    /// Apply everything the router would have learned by `t`, in time order. Runs of KV
    /// events go to the index as one batch (it prefetches across events).
    fn drain_inbox(&mut self, t: f64) {
        let mut batch = std::mem::take(&mut self.kv_batch);
        while self.inbox.peek().is_some_and(|x| x.at <= t) {
            let Some(x) = self.inbox.pop() else { break };
            if let Notice::Kv(key, ev) = x.notice {
                batch.push((key, ev));
                continue;
            }
            self.flush_kv(&mut batch);
            // Tickets are ours and used in order; a stale one would be a bug the router
            // counts (`stale_ticket_uses`), never a crash.
            match x.notice {
                Notice::FirstToken(t) => {
                    let _ = self.router.first_token(t);
                }
                Notice::Finish(t) => {
                    let _ = self.router.finish(t);
                }
                Notice::Kv(..) => {}
            }
        }
        self.flush_kv(&mut batch);
        self.kv_batch = batch;
    }

    fn flush_kv(&mut self, batch: &mut Vec<(WorkerKey, KvEvent)>) {
        if !batch.is_empty() {
            self.router.apply_events(batch);
            self.routing.kv_events_applied += batch.len() as u64;
            batch.clear();
        }
    }

    /// Route trace request `i` at time `t` and admit it.
    fn route(&mut self, i: usize, t: f64) -> Result<(), SimError> {
        let trace = self.trace;
        let tr = &trace.requests[i];
        let mut hashes = Vec::new();
        self.ids
            .map_into(&tr.hash_ids, tr.input_length, &mut hashes);
        let input = tr.input_length;
        let output = tr.output_length;
        self.routing.decisions += 1;
        let req = &mut self.reqs[i];
        req.arrival = t;
        if !self.disagg {
            let (d, ticket) = self.router.route(&hashes, input, &self.front_keys, t)?;
            self.overlap_sum += d.overlap_blocks() as u64;
            let (w, rank) = (d.worker.worker as usize, d.worker.dp_rank);
            let req = &mut self.reqs[i];
            req.prefill = Some((w, rank));
            req.ticket_p = Some(ticket);
            req.cached = self.workers[w]
                .engine
                .cached_prefix_tokens(rank, &hashes)
                .min(input);
            req.hashes = hashes;
            self.admit(i, w, rank, output, t);
        } else {
            let (d, tickets) =
                self.router
                    .route_pair(&hashes, input, &self.front_keys, &self.decode_keys, t)?;
            let (dw, drank) = (d.decode.worker.worker as usize, d.decode.worker.dp_rank);
            let req = &mut self.reqs[i];
            req.decode = Some((dw, drank));
            req.ticket_d = Some(tickets.decode);
            req.hashes = hashes;
            match &d.prefill {
                Some(p) => {
                    self.overlap_sum += p.overlap_blocks() as u64;
                    let (pw, prank) = (p.worker.worker as usize, p.worker.dp_rank);
                    let req = &mut self.reqs[i];
                    req.prefill = Some((pw, prank));
                    req.ticket_p = tickets.prefill;
                    req.cached = self.workers[pw]
                        .engine
                        .cached_prefix_tokens(prank, &req.hashes)
                        .min(input);
                    self.admit(i, pw, prank, 1, t);
                }
                None => {
                    // Conditional disaggregation: few uncached tokens on the decode worker, so
                    // it prefills them itself (no prefill worker, no transfer).
                    self.routing.local_prefills += 1;
                    let req = &mut self.reqs[i];
                    req.cached = self.workers[dw]
                        .engine
                        .cached_prefix_tokens(drank, &req.hashes)
                        .min(input);
                    req.xfer = None;
                    self.admit_local(i, dw, drank, output, t);
                }
            }
        }
        Ok(())
    }

    /// Admit request `i` to a front worker (aggregated or prefill).
    fn admit(&mut self, i: usize, w: usize, rank: u32, max_output: u32, t: f64) {
        let tr = &self.trace.requests[i];
        // The hashes are still needed later only when a decode worker takes over.
        let block_hashes = if self.disagg {
            self.reqs[i].hashes.clone()
        } else {
            std::mem::take(&mut self.reqs[i].hashes)
        };
        let req = Request {
            id: i as u64,
            prompt_tokens: tr.input_length,
            block_hashes,
            max_output_tokens: max_output,
            dp_rank: Some(rank),
        };
        let wk = &mut self.workers[w];
        wk.requests += 1;
        match wk.engine.admit(req, t) {
            Ok(_) => wk.wake = wk.wake.max(t),
            Err(e) => self.reject(i, t, e),
        }
    }

    /// Admit request `i` to its decode worker for a local prefill: it computes the uncached
    /// part of the prompt itself, then decodes every output token.
    fn admit_local(&mut self, i: usize, w: usize, rank: u32, output: u32, t: f64) {
        let tr = &self.trace.requests[i];
        let req = Request {
            id: i as u64,
            prompt_tokens: tr.input_length,
            block_hashes: std::mem::take(&mut self.reqs[i].hashes),
            max_output_tokens: output,
            dp_rank: Some(rank),
        };
        let wk = &mut self.workers[w];
        wk.requests += 1;
        match wk.engine.admit_local(req, t) {
            Ok(_) => wk.wake = wk.wake.max(t),
            Err(e) => self.reject(i, t, e),
        }
    }

    /// Admit request `i` to its decode worker at `t` (its prefill just finished): reserve KV
    /// for the transfer.
    fn admit_decode(&mut self, i: usize, t: f64) {
        let Some((dw, drank)) = self.reqs[i].decode else {
            return;
        };
        self.run_worker(dw, t);
        let tr = &self.trace.requests[i];
        let req = Request {
            id: i as u64,
            prompt_tokens: tr.input_length,
            // Last use of the hashes.
            block_hashes: std::mem::take(&mut self.reqs[i].hashes),
            // The decode worker generates every token the client sees (vLLM's P/D flow: the
            // prefill worker's single token is not streamed).
            max_output_tokens: tr.output_length + 1,
            dp_rank: Some(drank),
        };
        let wk = &mut self.workers[dw];
        wk.requests += 1;
        match wk.engine.admit(req, t) {
            Ok(info) => {
                wk.wake = wk.wake.max(t);
                if let Some(cached) = info.kv_reserved {
                    self.start_transfer(i, cached, t);
                }
            }
            Err(e) => self.reject(i, t, e),
        }
    }

    /// KV blocks for request `i` are reserved on its decode worker: move the uncached part.
    fn start_transfer(&mut self, i: usize, cached_on_decode: u32, t: f64) {
        let tr = &self.trace.requests[i];
        let Some((dw, drank)) = self.reqs[i].decode else {
            return;
        };
        let uncached = tr.input_length.saturating_sub(cached_on_decode) as f64;
        let (pw, prank) = self.reqs[i].prefill.unwrap_or((dw, drank));
        let (src, dst) = (
            self.link_base[pw] + prank as usize,
            self.link_base[dw] + drank as usize,
        );
        let mut bytes = uncached * self.kv_bytes_per_token;
        if let (Some((bw, layers)), Some(started)) = (&self.layerwise, self.reqs[i].started) {
            // Streamed while the prefill computed: what the link could carry by now is gone,
            // the last layer's KV always remains.
            let streamed = bw[src] * (t - started).max(0.0);
            bytes = (bytes - streamed).max(bytes / layers);
        }
        self.reqs[i].xfer = Some((t, None));
        self.net.start(i as u64, src, dst, bytes, t);
    }

    fn kv_arrived(&mut self, i: usize, at: f64) {
        let Some((dw, _)) = self.reqs[i].decode else {
            return;
        };
        self.run_worker(dw, at);
        let wk = &mut self.workers[dw];
        if wk.engine.kv_arrived(i as u64, at).is_ok() {
            wk.wake = wk.wake.max(at);
        }
        if let Some((s, _)) = self.reqs[i].xfer {
            self.reqs[i].xfer = Some((s, Some(at)));
        }
    }

    fn reject(&mut self, i: usize, t: f64, e: EngineError) {
        self.routing.rejected += 1;
        let req = &mut self.reqs[i];
        if req.error.is_none() {
            req.error = Some(Status::error("rejected", e.to_string()));
            req.finish = Some((t, 0));
        }
        for ticket in [req.ticket_p.take(), req.ticket_d.take()]
            .into_iter()
            .flatten()
        {
            self.notify(t, Notice::Finish(ticket));
        }
        for (w, _) in [self.reqs[i].prefill, self.reqs[i].decode]
            .into_iter()
            .flatten()
        {
            self.workers[w].engine.abort(i as u64);
        }
    }

    /// Run every engine through all steps that start before `t`, in causal order.
    fn advance_all(&mut self, t: f64) {
        for k in 0..self.front.len() {
            let w = self.front[k];
            self.run_worker(w, t);
        }
        if self.disagg {
            let mut handoffs = std::mem::take(&mut self.handoffs);
            handoffs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            for &(at, i) in &handoffs {
                self.transfers_until(at);
                self.admit_decode(i, at);
            }
            handoffs.clear();
            self.handoffs = handoffs;
            self.transfers_until(t);
            for k in 0..self.decode.len() {
                let w = self.decode[k];
                self.run_worker(w, t);
            }
        }
    }

    /// Complete every KV transfer that ends by `t`.
    fn transfers_until(&mut self, t: f64) {
        let mut done = std::mem::take(&mut self.completed);
        self.net.advance(t, &mut done);
        for c in &done {
            let i = c.id as usize;
            if let Some((pw, _)) = self.reqs[i].prefill {
                // The prefill worker frees the blocks once they are pulled.
                let _ = self.workers[pw].engine.release(i as u64);
                self.workers[pw].wake = self.workers[pw].wake.max(c.at);
                if let Some(tp) = self.reqs[i].ticket_p.take() {
                    self.notify(c.at, Notice::Finish(tp));
                }
            }
            self.kv_arrived(i, c.at);
        }
        done.clear();
        self.completed = done;
    }

    /// Step worker `w` while its next step starts before `limit`, in the engine's tight loop;
    /// it returns at every visible step (first token, completion, KV event...).
    fn run_worker(&mut self, w: usize, limit: f64) {
        loop {
            let wk = &mut self.workers[w];
            let start = wk.engine.busy_until().max(wk.wake);
            if start >= limit {
                return;
            }
            // Every step's end is a token time for the requests decoding in it.
            let a = wk.engine.advance_recording(start, limit, &mut wk.timeline);
            let Some(out) = a.outcome else { return };
            let idx = (self.workers[w].timeline.len() - 1) as u32;
            self.on_step(w, idx, out);
        }
    }

    /// React to a visible step of worker `w` (its index `idx` in the worker's timeline).
    fn on_step(&mut self, w: usize, idx: u32, out: StepOutcome) {
        let end = out.end;
        let role = self.workers[w].role;
        for &id in &out.started {
            let i = id as usize;
            if role == Role::Decode {
                // A decode worker's request joins the batch and emits its first token (the
                // first the client sees) at the end of this step.
                if self.reqs[i].first.is_none() {
                    self.reqs[i].first = Some((end, idx));
                    if let Some(t) = self.reqs[i].ticket_d {
                        self.notify(end, Notice::FirstToken(t));
                    }
                }
            } else if self.reqs[i].started.is_none() {
                self.reqs[i].started = Some(out.start);
            }
        }
        for &id in &out.first_tokens {
            let i = id as usize;
            match role {
                Role::Aggregated => {
                    self.reqs[i].first = Some((end, idx));
                    if let Some(t) = self.reqs[i].ticket_p {
                        self.notify(end, Notice::FirstToken(t));
                    }
                }
                Role::Prefill => {
                    if let Some(t) = self.reqs[i].ticket_p {
                        self.notify(end, Notice::FirstToken(t));
                    }
                }
                Role::Decode => {}
            }
        }
        for f in &out.finished {
            let i = f.id as usize;
            match f.reason {
                FinishReason::PrefillDone => self.handoffs.push((end, i)),
                FinishReason::Length => {
                    let r = &mut self.reqs[i];
                    r.finish = Some((end, idx));
                    r.output_tokens = self.trace.requests[i].output_length;
                    let ticket = if role == Role::Aggregated {
                        r.ticket_p.take()
                    } else {
                        r.ticket_d.take()
                    };
                    if let Some(t) = ticket {
                        self.notify(end, Notice::Finish(t));
                    }
                }
            }
        }
        for &id in &out.preempted {
            let r = &mut self.reqs[id as usize];
            r.preempted_at.get_or_insert(idx);
        }
        for kr in &out.kv_reserved {
            self.start_transfer(kr.id as usize, kr.cached_tokens, end);
        }
        if !out.kv_events.is_empty() {
            let at = end + self.event_lag;
            // Moved, not copied: an event can name hundreds of blocks.
            for ev in out.kv_events {
                let key = WorkerKey::new(w as u64, ev.dp_rank);
                self.notify(at, Notice::Kv(key, ev.event));
            }
        }
    }

    /// Record gauges every `sample_every` arrivals.
    fn sample(&mut self, t: f64) {
        self.arrivals_seen += 1;
        if !self.arrivals_seen.is_multiple_of(self.sample_every) {
            return;
        }
        for wk in &mut self.workers {
            let l = wk.engine.load();
            let kv = if l.kv_blocks_total > 0 {
                100.0 * l.kv_blocks_used as f64 / l.kv_blocks_total as f64
            } else {
                0.0
            };
            wk.samples.push((t, (l.waiting + l.awaiting_kv) as f64, kv));
        }
    }

    fn finish(self) -> SimOutput {
        let mut records = Vec::with_capacity(self.reqs.len());
        let mut end = 0.0f64;
        for (i, r) in self.reqs.iter().enumerate() {
            let tr = &self.trace.requests[i];
            let rec = match (&r.error, r.first, r.finish) {
                (None, Some((ft, fidx)), Some((et, eidx))) => {
                    let emitter = if self.disagg { r.decode } else { r.prefill };
                    let gaps = emitter.map_or_else(ChunkGaps::default, |(w, _)| {
                        token_gaps(
                            &self.workers[w].timeline,
                            fidx,
                            eidx,
                            r.preempted_at,
                            tr.output_length,
                        )
                    });
                    let mut rec = RequestRecord::ok(
                        i as u64,
                        r.arrival,
                        ft,
                        et,
                        tr.input_length,
                        tr.output_length,
                    );
                    rec.gaps = gaps;
                    rec.cached_tokens = r.cached;
                    rec.prefill_worker = r.prefill.map(|p| p.0 as u32);
                    rec.decode_worker = r.decode.map(|d| d.0 as u32);
                    rec.kv_transfer = r.xfer.and_then(|(s, e)| e.map(|e| e - s));
                    rec.queueing = r.started.map(|s| (s - r.arrival).max(0.0));
                    rec
                }
                (Some(status), _, _) => RequestRecord::failed(
                    i as u64,
                    r.arrival,
                    r.finish.map_or(r.arrival, |f| f.0),
                    tr.input_length,
                    status.clone(),
                ),
                _ => RequestRecord::failed(
                    i as u64,
                    r.arrival,
                    r.arrival,
                    tr.input_length,
                    Status::error(
                        "unfinished",
                        "the simulation ended before this request finished",
                    ),
                ),
            };
            end = end.max(rec.finish);
            records.push(rec);
        }
        let start = records.first().map_or(0.0, |r| r.sent);
        let span = (end - start).max(1e-9);
        let mut busy_gpu = 0.0;
        let mut gpus = 0.0;
        let mut steps = 0;
        let mut workers = Vec::new();
        let mut series = Vec::new();
        for wk in &self.workers {
            let st = wk.engine.stats();
            busy_gpu += st.busy_time * wk.gpus as f64;
            gpus += wk.gpus as f64;
            steps += st.steps;
            workers.push(WorkerReport {
                name: wk.name.clone(),
                role: role_name(wk.role),
                gpus: wk.gpus,
                description: wk.engine.description().to_string(),
                kv_capacity_tokens: wk.engine.kv_capacity_tokens(),
                requests: wk.requests,
                steps: st.steps,
                busy_fraction: st.busy_time / span,
                prefix_hit_rate: st.prefix_hit_rate(),
                preemptions: st.preemptions,
            });
            series.push(TimeSeries {
                chart: "Queue depth (requests waiting)".into(),
                name: wk.name.clone(),
                points: wk.samples.iter().map(|s| (s.0, s.1)).collect(),
            });
            series.push(TimeSeries {
                chart: "KV cache usage (%)".into(),
                name: wk.name.clone(),
                points: wk.samples.iter().map(|s| (s.0, s.2)).collect(),
            });
        }
        let mut routing = self.routing.clone();
        routing.mean_overlap_blocks = self.overlap_sum as f64 / routing.decisions.max(1) as f64;
        // One clause per run of identical workers: "6x prefill [Qwen3-32B BF16 on 2x H200 TP2, vllm] KV 754,256 tok".
        let mut parts: Vec<String> = Vec::new();
        let mut k = 0;
        while k < self.workers.len() {
            let wk = &self.workers[k];
            let n = self.workers[k..]
                .iter()
                .take_while(|o| o.role == wk.role && o.gpus == wk.gpus)
                .count();
            let c = wk.engine.config();
            let mut par = format!("TP{}", c.tp);
            if c.dp > 1 {
                par.push_str(&format!(" DP{}", c.dp));
            }
            if c.ep > 1 {
                par.push_str(&format!(" EP{}", c.ep));
            }
            parts.push(format!(
                "{n}x {} [{} {} on {}x {} {par}, {}] KV {} tokens each",
                role_name(wk.role),
                c.model,
                c.weight_dtype.name(),
                c.gpus(),
                c.gpu,
                c.engine,
                thousands(wk.engine.kv_capacity_tokens())
            ));
            k += n;
        }
        let description = format!("{} GPUs: {}", gpus, parts.join(" + "));
        SimOutput {
            description,
            records,
            series,
            gpu_busy_fraction: busy_gpu / (gpus * span).max(1e-9),
            workers,
            routing,
            steps,
        }
    }
}

fn thousands(v: u64) -> String {
    let d = v.to_string();
    let mut out = String::new();
    for (i, ch) in d.chars().enumerate() {
        if i > 0 && (d.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Aggregated => "aggregated",
        Role::Prefill => "prefill",
        Role::Decode => "decode",
    }
}

/// Token gaps are kept at microsecond resolution: far below any latency that matters, and
/// equal consecutive gaps then collapse into runs, which keeps `requests-*.jsonl` small.
const GAP_RESOLUTION: f64 = 1e6;

/// Token gaps of a request that emitted its first token at step `fidx` and its last at `eidx`
/// of its worker's timeline, one token per step in between. A preempted request emitted
/// nothing between its preemption and its recomputation: its tokens are the steps up to the
/// preemption plus the last ones before it finished.
fn token_gaps(
    timeline: &[f64],
    fidx: u32,
    eidx: u32,
    preempted: Option<u32>,
    output: u32,
) -> ChunkGaps {
    let (f, e) = (fidx as usize, eidx as usize);
    let want = output.saturating_sub(1) as usize;
    let mut gaps = ChunkGaps::new();
    if e <= f || e >= timeline.len() {
        return gaps;
    }
    match preempted {
        Some(p) if (p as usize) > f && (p as usize) < e && e - f > want => {
            let p = p as usize;
            let before = p - f;
            for k in f + 1..p {
                gaps.push(quantize(timeline[k] - timeline[k - 1], GAP_RESOLUTION));
            }
            let after = want.saturating_sub(before.saturating_sub(1));
            let resume = e + 1 - after.min(e - p);
            let mut prev = timeline[p - 1];
            for &t in &timeline[resume..=e] {
                gaps.push(quantize(t - prev, GAP_RESOLUTION));
                prev = t;
            }
        }
        _ => {
            for k in f + 1..=e {
                gaps.push(quantize(timeline[k] - timeline[k - 1], GAP_RESOLUTION));
            }
        }
    }
    gaps
}
