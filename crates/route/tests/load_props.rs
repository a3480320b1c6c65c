//! Property test: under any sequence of begin / first_token / grow / finish (including stale
//! and repeated uses) the tracker's own load equals a brute-force recount of live requests,
//! and nothing leaks once every request is finished.

use std::collections::HashMap;

use proptest::prelude::*;
use switchyard_kv::WorkerKey;
use switchyard_route::{LoadTracker, RouteError, Ticket};

#[derive(Clone, Debug)]
enum Op {
    Begin { w: u64, prefill: u64, blocks: u64 },
    First(usize),
    Grow(usize, u64),
    Finish(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..4u64, 0..5000u64, 0..300u64).prop_map(|(w, prefill, blocks)| Op::Begin { w, prefill, blocks }),
        2 => any::<usize>().prop_map(Op::First),
        1 => (any::<usize>(), 0..50u64).prop_map(|(i, b)| Op::Grow(i, b)),
        2 => any::<usize>().prop_map(Op::Finish),
    ]
}

#[derive(Clone, Copy)]
struct Live {
    w: u64,
    prefill: u64,
    blocks: u64,
    prefilled: bool,
    done: bool,
}

proptest! {
    #[test]
    fn tracker_matches_recount(ops in prop::collection::vec(op(), 1..300)) {
        let mut t = LoadTracker::new(5.0);
        let mut issued: Vec<(Ticket, Live)> = Vec::new();
        for op in ops {
            match op {
                Op::Begin { w, prefill, blocks } => {
                    let k = t.begin(WorkerKey::new(w, 0), prefill, blocks);
                    issued.push((k, Live { w, prefill, blocks, prefilled: false, done: false }));
                }
                Op::First(i) if !issued.is_empty() => {
                    let n = issued.len();
                    let (k, l) = &mut issued[i % n];
                    let r = t.first_token(*k);
                    prop_assert_eq!(r.is_ok(), !l.done);
                    if !l.done { l.prefilled = true; }
                }
                Op::Grow(i, b) if !issued.is_empty() => {
                    let n = issued.len();
                    let (k, l) = &mut issued[i % n];
                    let r = t.grow(*k, b);
                    prop_assert_eq!(r.is_ok(), !l.done);
                    if !l.done { l.blocks += b; }
                }
                Op::Finish(i) if !issued.is_empty() => {
                    let n = issued.len();
                    let (k, l) = &mut issued[i % n];
                    let r = t.finish(*k);
                    if l.done {
                        prop_assert_eq!(r, Err(RouteError::StaleTicket));
                    } else {
                        prop_assert!(r.is_ok());
                        l.done = true;
                    }
                }
                _ => {}
            }
            let mut want: HashMap<u64, (u32, u64, u64)> = HashMap::new();
            for (_, l) in issued.iter().filter(|(_, l)| !l.done) {
                let e = want.entry(l.w).or_default();
                e.0 += 1;
                e.1 += if l.prefilled { 0 } else { l.prefill };
                e.2 += l.blocks;
            }
            for w in 0..4u64 {
                let s = t.snapshot(WorkerKey::new(w, 0), 0.0);
                let (r, p, b) = want.get(&w).copied().unwrap_or_default();
                prop_assert_eq!((s.active_requests, s.prefill_tokens, s.active_blocks), (r, p, b));
            }
        }
        for (k, l) in &issued {
            if !l.done {
                t.finish(*k).unwrap();
            }
        }
        prop_assert_eq!(t.in_flight(), 0);
        for w in 0..4u64 {
            prop_assert_eq!(t.snapshot(WorkerKey::new(w, 0), 0.0), Default::default());
        }
    }
}
