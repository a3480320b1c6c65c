//! Sequence bookkeeping of one worker's KV-event stream: which live batches to apply, which
//! are duplicates of replayed ones, when events were lost, when the engine restarted — and
//! what a replay answer means. Pure: the subscriber in `serve` does the I/O.
//!
//! vLLM numbers batches 0, 1, 2, … per publisher and has no incarnation id, so a restarted
//! engine reuses sequence numbers. We tell a restart from a replayed duplicate by a
//! fingerprint of the payload (every batch carries its own timestamp), and a replay is asked
//! to start at the last batch we applied, so the first answer proves continuity (same seq and
//! fingerprint) or a restart (different fingerprint, or nothing that recent).

use std::collections::VecDeque;

use axum::body::Bytes;

/// Applied batches remembered for duplicate detection; far more than can queue while a
/// replay runs.
const RECENT: usize = 4096;

/// A batch as received: `(seq, payload)`.
pub type Batch = (u64, Bytes);

/// Fingerprint of a batch payload.
pub fn fingerprint(payload: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(payload)
}

/// How complete a worker's index entries are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum IndexState {
    /// Subscribing or replaying: not settled yet.
    Pending = 0,
    /// Every batch the engine published since it started has been applied (replay reached
    /// back to sequence 0, or the stream was followed from 0 without a gap).
    Complete = 1,
    /// Some batches were lost and could not be replayed: the entries are a subset of what the
    /// engine caches (never a superset: a loss clears the worker's entries first).
    Partial = 2,
    /// No replay and the stream was joined mid-way: what was cached before is unknown.
    Unknown = 3,
}

impl IndexState {
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => IndexState::Complete,
            2 => IndexState::Partial,
            3 => IndexState::Unknown,
            _ => IndexState::Pending,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            IndexState::Pending => "pending",
            IndexState::Complete => "complete",
            IndexState::Partial => "partial",
            IndexState::Unknown => "unknown",
        }
    }
}

/// What to do with a live batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Live {
    /// The next one (or the first one seen): apply it.
    Apply,
    /// Already applied (it was queued while a replay delivered it): skip.
    Duplicate,
    /// Batches between the last applied and this one are missing.
    Gap,
    /// A sequence number at or below the last one with a different payload: the engine
    /// restarted (its cache is empty again).
    Restarted,
}

/// What a replay answer means, given what was applied before. Batches to apply are always
/// consecutive: an answer with a hole (libzmq's ROUTER drops what exceeds its send
/// high-water mark, 1000 messages by default) is cut at the hole and `more` says to ask again
/// from there.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Continuous with what we have: apply these (all newer than the last applied).
    Continue { apply: Vec<Batch>, more: bool },
    /// The engine restarted: forget the worker's entries and replay from 0.
    Restarted,
    /// The buffer no longer reaches back: forget the worker's entries, apply these (a
    /// subset of the truth), state [`IndexState::Partial`].
    Lost(Vec<Batch>),
    /// Nothing was applied before (a replay from 0): apply these; `complete` when they start
    /// at 0 (or nothing was ever published).
    Fresh {
        apply: Vec<Batch>,
        complete: bool,
        more: bool,
    },
}

/// The applied end of one worker's stream.
#[derive(Debug, Default)]
pub struct Cursor {
    recent: VecDeque<(u64, u64)>,
    /// Live batches below this were settled by a replay (applied, or gone from the engine's
    /// buffer before the replay): late copies still queued are skipped, not taken for a
    /// restart.
    settled_below: u64,
    /// Nothing applied yet, but a replay showed the engine had published nothing: its next
    /// batch must be 0.
    expect_first: Option<u64>,
}

/// Keep the consecutive run at the front; true when something was cut.
fn cut_at_hole(batches: &mut Vec<Batch>) -> bool {
    let run = batches
        .windows(2)
        .position(|w| w[1].0 != w[0].0.wrapping_add(1))
        .map(|i| i + 1);
    match run {
        Some(n) => {
            batches.truncate(n);
            true
        }
        None => false,
    }
}

impl Cursor {
    /// `(seq, fingerprint)` of the last applied batch.
    pub fn last(&self) -> Option<(u64, u64)> {
        self.recent.back().copied()
    }

    /// Where a replay should start: at the last applied batch (its echo proves continuity),
    /// or at 0.
    pub fn replay_from(&self) -> u64 {
        self.last().map_or(0, |(s, _)| s)
    }

    pub fn classify(&self, seq: u64, fp: u64) -> Live {
        let Some((last, _)) = self.last() else {
            return match self.expect_first {
                Some(e) if seq != e => Live::Gap,
                _ if seq < self.settled_below => Live::Duplicate,
                _ => Live::Apply,
            };
        };
        if seq == last.wrapping_add(1) {
            return Live::Apply;
        }
        if seq > last {
            return Live::Gap;
        }
        if seq < self.settled_below && self.find(seq).is_none() {
            return Live::Duplicate;
        }
        match self.find(seq) {
            Some(f) if f == fp => Live::Duplicate,
            _ => Live::Restarted,
        }
    }

    fn find(&self, seq: u64) -> Option<u64> {
        let i = self.recent.partition_point(|&(s, _)| s < seq);
        self.recent
            .get(i)
            .filter(|&&(s, _)| s == seq)
            .map(|&(_, f)| f)
    }

    /// Record an applied batch (sequence numbers only increase between resets).
    pub fn applied(&mut self, seq: u64, fp: u64) {
        self.expect_first = None;
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((seq, fp));
    }

    /// The worker's entries were cleared: nothing is applied any more.
    pub fn reset(&mut self) {
        self.recent.clear();
        self.settled_below = 0;
        self.expect_first = None;
    }

    /// A replay from scratch settled everything below `seq` (its first batch; for an empty
    /// answer, nothing was published yet and the next batch must be 0).
    pub fn settled(&mut self, first: Option<u64>) {
        match first {
            Some(s) => self.settled_below = s,
            None => self.expect_first = Some(0),
        }
    }

    /// Interpret a replay requested from [`Cursor::replay_from`].
    pub fn plan(&self, mut batches: Vec<Batch>) -> Plan {
        // Defensive: in order, no repeats (a publisher only sends increasing seqs).
        batches.sort_by_key(|(s, _)| *s);
        batches.dedup_by_key(|(s, _)| *s);
        let Some((last, fp)) = self.last() else {
            let complete = batches.first().is_none_or(|(s, _)| *s == 0);
            let more = cut_at_hole(&mut batches);
            return Plan::Fresh {
                apply: batches,
                complete,
                more,
            };
        };
        batches.retain(|(s, _)| *s >= last);
        match batches.first() {
            // The engine's buffer always holds its newest batch; nothing at or after ours
            // means its numbering started over.
            None => Plan::Restarted,
            Some((s, p)) if *s == last => {
                if fingerprint(p) == fp {
                    let more = cut_at_hole(&mut batches);
                    batches.remove(0);
                    Plan::Continue {
                        apply: batches,
                        more,
                    }
                } else {
                    Plan::Restarted
                }
            }
            // Our last batch has left the buffer (or a restarted engine went past it).
            Some(_) => {
                cut_at_hole(&mut batches);
                Plan::Lost(batches)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(seq: u64, p: &str) -> Batch {
        (seq, Bytes::copy_from_slice(p.as_bytes()))
    }

    fn cursor(batches: &[Batch]) -> Cursor {
        let mut c = Cursor::default();
        for (s, p) in batches {
            c.applied(*s, fingerprint(p));
        }
        c
    }

    #[test]
    fn live_classification() {
        let c = Cursor::default();
        assert_eq!(c.classify(7, 1), Live::Apply);
        let c = cursor(&[b(3, "a"), b(4, "b")]);
        assert_eq!(c.classify(5, 0), Live::Apply);
        assert_eq!(c.classify(7, 0), Live::Gap);
        assert_eq!(c.classify(4, fingerprint(b"b")), Live::Duplicate);
        assert_eq!(c.classify(3, fingerprint(b"a")), Live::Duplicate);
        assert_eq!(c.classify(4, fingerprint(b"other")), Live::Restarted);
        assert_eq!(c.classify(0, 0), Live::Restarted);
        assert_eq!(c.replay_from(), 4);
    }

    #[test]
    fn recent_window_is_bounded() {
        let mut c = Cursor::default();
        for s in 0..(RECENT as u64 + 10) {
            c.applied(s, s);
        }
        assert_eq!(c.recent.len(), RECENT);
        // Too old to tell: treated as a restart (a clear is safe, a wrong skip is not).
        assert_eq!(c.classify(0, 0), Live::Restarted);
        assert_eq!(c.classify(20, 20), Live::Duplicate);
    }

    #[test]
    fn fresh_replays() {
        let c = Cursor::default();
        assert_eq!(
            c.plan(vec![b(1, "y"), b(0, "x")]),
            Plan::Fresh {
                apply: vec![b(0, "x"), b(1, "y")],
                complete: true,
                more: false
            }
        );
        assert_eq!(
            c.plan(vec![]),
            Plan::Fresh {
                apply: vec![],
                complete: true,
                more: false
            }
        );
        // The buffer wrapped: batches 0..5 are gone.
        assert_eq!(
            c.plan(vec![b(5, "p")]),
            Plan::Fresh {
                apply: vec![b(5, "p")],
                complete: false,
                more: false
            }
        );
        // A hole (dropped by the sender): only the run before it, and ask again.
        assert_eq!(
            c.plan(vec![b(0, "x"), b(1, "y"), b(3, "w")]),
            Plan::Fresh {
                apply: vec![b(0, "x"), b(1, "y")],
                complete: true,
                more: true
            }
        );
    }

    #[test]
    fn continuation_restart_and_loss() {
        let c = cursor(&[b(8, "h"), b(9, "i")]);
        // The echo of our last batch proves continuity; only newer ones are applied.
        assert_eq!(
            c.plan(vec![b(9, "i"), b(10, "j"), b(11, "k")]),
            Plan::Continue {
                apply: vec![b(10, "j"), b(11, "k")],
                more: false
            }
        );
        assert_eq!(
            c.plan(vec![b(9, "i")]),
            Plan::Continue {
                apply: vec![],
                more: false
            }
        );
        assert_eq!(
            c.plan(vec![b(9, "i"), b(10, "j"), b(12, "l")]),
            Plan::Continue {
                apply: vec![b(10, "j")],
                more: true
            }
        );
        // Same number, other content: a new incarnation.
        assert_eq!(c.plan(vec![b(9, "Z"), b(10, "j")]), Plan::Restarted);
        // Nothing as recent as ours: the numbering started over.
        assert_eq!(c.plan(vec![]), Plan::Restarted);
        // Our batch left the buffer.
        assert_eq!(
            c.plan(vec![b(12, "l"), b(13, "m")]),
            Plan::Lost(vec![b(12, "l"), b(13, "m")])
        );
        // Older entries than asked for are ignored.
        assert_eq!(
            c.plan(vec![b(3, "c"), b(9, "i"), b(10, "j")]),
            Plan::Continue {
                apply: vec![b(10, "j")],
                more: false
            }
        );
    }

    #[test]
    fn settled_batches_and_the_first_expected() {
        // Replay found batches 5.. (0..5 gone): late live copies of 2 and 3 are stale.
        let mut c = Cursor::default();
        c.settled(Some(5));
        assert_eq!(c.classify(3, 0), Live::Duplicate);
        c.applied(5, 50);
        c.applied(6, 60);
        assert_eq!(c.classify(2, 0), Live::Duplicate);
        assert_eq!(c.classify(6, 60), Live::Duplicate);
        assert_eq!(c.classify(6, 61), Live::Restarted);
        // Nothing published at replay time: the first live batch must be 0.
        let mut c = Cursor::default();
        c.settled(None);
        assert_eq!(c.classify(0, 0), Live::Apply);
        assert_eq!(c.classify(2, 0), Live::Gap);
        c.reset();
        assert_eq!(c.classify(2, 0), Live::Apply);
    }
}
