//! The live engine's shared state: per-mount configuration ([`MountCfg`]), what was last
//! synced per path ([`Entry`], [`MountState`]), the sequence numbers both sides exchange
//! ([`State`]), and [`Shared`], which the applier and scanner tasks hold.

use super::{LiveMount, LiveOptions};
use crate::{can_chown, Meta, Root};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

/// What this side knows about one path (the default: nothing synced, nothing sent).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Entry {
    /// Local metadata at the last sync of this path (`None`: absent).
    pub(super) meta: Option<Meta>,
    /// Our `seq` of the last change sent for this path.
    pub(super) last_sent: u64,
    /// `time_ns` of that change.
    pub(super) sent_time: i64,
    /// Epoch of the last change the applier made here.
    pub(super) touched: u64,
}

/// The fixed configuration of one mount (from its [`LiveMount`]).
pub(super) struct MountCfg {
    pub(super) root: Root,
    pub(super) send: bool,
    pub(super) accept: bool,
    pub(super) excludes: HashSet<String>,
}

#[derive(Default)]
pub(super) struct MountState {
    pub(super) entries: HashMap<String, Entry>,
    /// The previous scan, for the "stable for one poll" rule.
    pub(super) prev: HashMap<String, Meta>,
    /// Since when a changed small file has kept changing (see
    /// [`MAX_DEFER`](super::plan::MAX_DEFER)).
    pub(super) unstable_since: HashMap<String, Instant>,
}

impl MountState {
    /// The state of a mount whose tree both sides agree is `baseline`.
    pub(super) fn synced(baseline: HashMap<String, Meta>) -> MountState {
        let entries = baseline
            .iter()
            .map(|(p, meta)| {
                let e = Entry {
                    meta: Some(*meta),
                    ..Entry::default()
                };
                (p.clone(), e)
            })
            .collect();
        MountState {
            entries,
            prev: baseline,
            unstable_since: HashMap::new(),
        }
    }
}

pub(super) struct State {
    pub(super) mounts: Vec<MountState>,
    pub(super) next_seq: u64,
    /// Highest peer seq processed.
    pub(super) seen: u64,
    /// Highest of our seqs the peer said it processed.
    pub(super) peer_seen: u64,
    pub(super) epoch: u64,
}

impl State {
    /// Nothing sent or seen yet, mounts as given.
    pub(super) fn new(mounts: Vec<MountState>) -> State {
        State {
            mounts,
            next_seq: 1,
            seen: 0,
            peer_seen: 0,
            epoch: 0,
        }
    }
}

/// What the applier and scanner tasks share.
pub(super) struct Shared {
    pub(super) cfg: Vec<MountCfg>,
    pub(super) state: Mutex<State>,
    pub(super) opts: LiveOptions,
    pub(super) chown: bool,
    pub(super) stop: AtomicBool,
}

impl Shared {
    /// The engine's state at the start of live sync over `mounts`.
    pub(super) fn new(mounts: Vec<LiveMount>, opts: LiveOptions) -> Shared {
        let mut cfg = Vec::with_capacity(mounts.len());
        let mut states = Vec::with_capacity(mounts.len());
        for m in mounts {
            states.push(MountState::synced(m.baseline));
            cfg.push(MountCfg {
                root: m.root,
                send: m.send,
                accept: m.accept,
                excludes: m.excludes,
            });
        }
        Shared {
            cfg,
            state: Mutex::new(State::new(states)),
            opts,
            chown: can_chown(),
            stop: AtomicBool::new(false),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
