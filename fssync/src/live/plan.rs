//! Deciding what to send: [`plan_changes`] compares a fresh scan of a mount with what was
//! last synced and returns the changes in sending order, holding back files that are still
//! being written ([`MAX_DEFER`], [`SMALL_FILE`]).

use super::state::{MountState, State};
use crate::{is_under, now_ns, same_opt, Attrs, Change, Frame, Kind, Meta, Msg, Op, WalkReport};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A file below [`SMALL_FILE`] bytes that keeps changing at every poll (a log being appended
/// to) is sent anyway once it has been changing this long; larger files wait until they settle.
pub const MAX_DEFER: Duration = Duration::from_secs(1);
/// See [`MAX_DEFER`].
pub const SMALL_FILE: u64 = 1 << 20;

/// What the scanner decided to send.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Planned {
    pub(super) path: String,
    pub(super) seq: u64,
    pub(super) seen: u64,
    pub(super) time_ns: i64,
    pub(super) what: PlanOp,
}

/// The kind of change planned (file content and symlink targets are read when sending).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum PlanOp {
    File,
    Mkdir(Attrs),
    Symlink,
    Delete,
}

impl Planned {
    /// The `Change` message for this plan in mount `mount`, with `time_ns` and `op`.
    pub(super) fn change(&self, mount: usize, time_ns: i64, op: Op) -> Frame {
        Frame::Msg(Msg::Change(Change {
            mount: mount as u32,
            path: self.path.clone(),
            seq: self.seq,
            seen: self.seen,
            time_ns,
            op,
        }))
    }
}

/// Compares a fresh scan with the synced state, records what will be sent, and returns it in
/// sending order (deletions deepest first, then creations parents first).
pub(super) fn plan_changes(
    st: &mut State,
    i: usize,
    found: HashMap<String, Meta>,
    report: &WalkReport,
    start: u64,
    force: bool,
) -> Vec<Planned> {
    let now = now_ns();
    let State {
        mounts,
        next_seq,
        seen,
        peer_seen,
        ..
    } = st;
    let ms = &mut mounts[i];
    let peer_seen = *peer_seen;
    ms.entries
        .retain(|_, e| e.meta.is_some() || e.last_sent > peer_seen || e.touched > start);

    let mut creates = changed_paths(ms, &found, start, force);
    let mut deletes = deleted_paths(ms, &found, report, start);
    deletes.sort_unstable_by(|a, b| b.cmp(a));
    creates.sort_unstable();

    let mut plan = Vec::with_capacity(deletes.len() + creates.len());
    for p in deletes {
        plan.push(plan_delete(ms, p, take_seq(next_seq), *seen, now));
    }
    for p in creates {
        let cur = found[&p];
        plan.push(plan_create(ms, p, cur, take_seq(next_seq), *seen, now));
    }
    ms.prev = untouched(ms, found, start);
    plan
}

/// The next of our sequence numbers.
fn take_seq(next_seq: &mut u64) -> u64 {
    let seq = *next_seq;
    *next_seq += 1;
    seq
}

/// Paths of `found` that differ from their synced state and may be sent now: not touched by
/// the applier since the scan started, and (regular files, unless `force`) stable since the
/// previous scan or, for small files, changing for at least [`MAX_DEFER`]. Remembers which
/// files are still unstable.
fn changed_paths(
    ms: &mut MountState,
    found: &HashMap<String, Meta>,
    start: u64,
    force: bool,
) -> Vec<String> {
    let mut creates = Vec::new();
    let mut unstable = HashMap::new();
    for (p, cur) in found {
        let e = ms.entries.get(p);
        if e.is_some_and(|e| e.touched > start) {
            continue;
        }
        if same_opt(Some(cur), e.and_then(|e| e.meta.as_ref())) {
            continue;
        }
        if cur.kind == Kind::File && !force && !ms.prev.get(p).is_some_and(|pm| pm.same(cur)) {
            // Not stable yet: wait for it to settle (small files: at most MAX_DEFER).
            let since = ms
                .unstable_since
                .get(p)
                .copied()
                .unwrap_or_else(Instant::now);
            if cur.size >= SMALL_FILE || since.elapsed() < MAX_DEFER {
                unstable.insert(p.clone(), since);
                continue;
            }
        }
        creates.push(p.clone());
    }
    ms.unstable_since = unstable;
    creates
}

/// Synced paths missing from `found`, except those the applier touched since the scan started
/// and those below a subtree the walk could not read.
fn deleted_paths(
    ms: &MountState,
    found: &HashMap<String, Meta>,
    report: &WalkReport,
    start: u64,
) -> Vec<String> {
    ms.entries
        .iter()
        .filter(|(p, e)| {
            e.meta.is_some()
                && e.touched <= start
                && !found.contains_key(*p)
                && !report.incomplete.iter().any(|x| is_under(p, x))
        })
        .map(|(p, _)| p.clone())
        .collect()
}

/// Records the deletion of `p` as sent with `seq` and plans it.
fn plan_delete(ms: &mut MountState, p: String, seq: u64, seen: u64, now: i64) -> Planned {
    let e = ms.entries.get_mut(&p).expect("listed by deleted_paths");
    e.meta = None;
    e.last_sent = seq;
    e.sent_time = now;
    Planned {
        path: p,
        seq,
        seen,
        time_ns: now,
        what: PlanOp::Delete,
    }
}

/// Records `p` as sent in state `cur` with `seq` and plans it (directories carry the detection
/// time `now`, files and symlinks their mtime).
fn plan_create(
    ms: &mut MountState,
    p: String,
    cur: Meta,
    seq: u64,
    seen: u64,
    now: i64,
) -> Planned {
    let (time_ns, what) = match cur.kind {
        Kind::Dir => (now, PlanOp::Mkdir(cur.attrs())),
        Kind::Symlink => (cur.mtime_ns, PlanOp::Symlink),
        _ => (cur.mtime_ns, PlanOp::File),
    };
    let e = ms.entries.entry(p.clone()).or_default();
    e.meta = Some(cur);
    e.last_sent = seq;
    e.sent_time = time_ns;
    Planned {
        path: p,
        seq,
        seen,
        time_ns,
        what,
    }
}

/// The scan to compare the next one with: `found` without the paths the applier touched since
/// the scan started (their state there may predate the applier's change).
fn untouched(
    ms: &MountState,
    mut found: HashMap<String, Meta>,
    start: u64,
) -> HashMap<String, Meta> {
    for (p, e) in &ms.entries {
        if e.touched > start {
            found.remove(p);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::super::state::Entry;
    use super::*;
    use crate::{scan, Root};
    use std::collections::HashSet;

    fn state_with(baseline: HashMap<String, Meta>) -> State {
        State::new(vec![MountState::synced(baseline)])
    }

    /// A mount tree, its root, the synced state and the baseline walk report.
    struct Fixture {
        dir: tempfile::TempDir,
        root: Root,
        none: HashSet<String>,
        rep: WalkReport,
        st: State,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path();
            std::fs::create_dir(p.join("old")).unwrap();
            std::fs::write(p.join("old/f"), "1").unwrap();
            let root = Root::open(p).unwrap();
            let none = HashSet::new();
            let (base, rep) = scan(&root, &none).unwrap();
            let st = state_with(base);
            Fixture {
                dir,
                root,
                none,
                rep,
                st,
            }
        }

        fn path(&self, rel: &str) -> std::path::PathBuf {
            self.dir.path().join(rel)
        }

        /// Plans a fresh scan against `report`, as a scan that started at epoch `start`.
        fn plan_with(&mut self, report: &WalkReport, start: u64, force: bool) -> Vec<Planned> {
            let found = scan(&self.root, &self.none).unwrap().0;
            plan_changes(&mut self.st, 0, found, report, start, force)
        }

        fn plan(&mut self, force: bool) -> Vec<Planned> {
            let rep = self.rep.clone();
            self.plan_with(&rep, 0, force)
        }
    }

    #[test]
    fn plan_waits_for_stable_files_orders_and_skips_touched() {
        let mut fx = Fixture::new();
        assert!(fx.plan(false).is_empty());
        new_entries_wait_until_stable(&mut fx);
        small_files_go_after_max_defer(&mut fx);
        large_files_wait_until_settled(&mut fx);
        deletions_come_first_children_first(&mut fx);
        touched_paths_are_left_alone(&mut fx);
    }

    fn new_entries_wait_until_stable(fx: &mut Fixture) {
        // A new directory goes at once; a new file only once it looked the same twice.
        std::fs::create_dir(fx.path("new")).unwrap();
        std::fs::write(fx.path("new/g"), "22").unwrap();
        let plan = fx.plan(false);
        let what: Vec<(&str, &PlanOp)> = plan.iter().map(|x| (x.path.as_str(), &x.what)).collect();
        assert_eq!(what.len(), 1);
        assert_eq!(what[0].0, "new");
        let plan = fx.plan(false);
        assert_eq!(plan.len(), 1);
        assert_eq!(
            (plan[0].path.as_str(), &plan[0].what),
            ("new/g", &PlanOp::File)
        );
        assert_eq!(plan[0].seq, 2);
        // Nothing more once sent.
        assert!(fx.plan(false).is_empty());

        // A file that keeps growing is not sent; force (final flush) sends it anyway.
        std::fs::write(fx.path("new/g"), "333").unwrap();
        assert!(fx.plan(false).is_empty());
        std::fs::write(fx.path("new/g"), "4444").unwrap();
        assert!(fx.plan(false).is_empty());
        let plan = fx.plan(true);
        assert_eq!(plan.len(), 1);
    }

    fn small_files_go_after_max_defer(fx: &mut Fixture) {
        // A small file that changes at every poll still goes out after MAX_DEFER.
        let t = std::time::Instant::now();
        let mut sent = false;
        for n in 0.. {
            std::fs::write(fx.path("new/log"), "x".repeat(n + 1)).unwrap();
            let plan = fx.plan(false);
            if plan.iter().any(|x| x.path == "new/log") {
                sent = true;
                break;
            }
            if t.elapsed() > MAX_DEFER * 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(sent && t.elapsed() >= MAX_DEFER, "{:?}", t.elapsed());
    }

    fn large_files_wait_until_settled(fx: &mut Fixture) {
        // A large file that keeps changing waits until it settles, however long that takes.
        let big = vec![7u8; SMALL_FILE as usize];
        let t = std::time::Instant::now();
        for n in 0.. {
            let mut body = big.clone();
            body.extend(std::iter::repeat_n(1u8, n));
            std::fs::write(fx.path("new/big"), body).unwrap();
            let plan = fx.plan(false);
            assert!(
                plan.iter().all(|x| x.path != "new/big"),
                "sent while changing"
            );
            if t.elapsed() > MAX_DEFER * 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let plan = fx.plan(false);
        assert!(
            plan.iter().any(|x| x.path == "new/big"),
            "sent once settled"
        );
    }

    fn deletions_come_first_children_first(fx: &mut Fixture) {
        // Deletions: children before parents, before creations.
        std::fs::remove_dir_all(fx.path("old")).unwrap();
        std::fs::create_dir(fx.path("z")).unwrap();
        let plan = fx.plan(false);
        let what: Vec<(&str, &PlanOp)> = plan.iter().map(|x| (x.path.as_str(), &x.what)).collect();
        assert_eq!(what[0], ("old/f", &PlanOp::Delete));
        assert_eq!(what[1], ("old", &PlanOp::Delete));
        assert_eq!(what[2].0, "z");

        // No deletions inferred below a subtree the walk could not read.
        std::fs::remove_dir_all(fx.path("new")).unwrap();
        let partial = WalkReport {
            incomplete: vec!["new".into()],
            skipped: 0,
        };
        assert!(fx.plan_with(&partial, 0, false).is_empty());
    }

    fn touched_paths_are_left_alone(fx: &mut Fixture) {
        // Paths the applier touched after the scan started are left alone.
        std::fs::write(fx.path("t"), "t").unwrap();
        fx.st.epoch = 5;
        fx.st.mounts[0].entries.insert(
            "t".into(),
            Entry {
                meta: None,
                last_sent: 0,
                sent_time: 0,
                touched: 5,
            },
        );
        for _ in 0..3 {
            let plan = fx.plan_with(&fx.rep.clone(), 4, false);
            assert!(plan.iter().all(|x| x.path != "t"), "{plan:?}");
        }
    }
}
