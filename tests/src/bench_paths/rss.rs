//! Resident memory of our roles' containers, read from the host's `/proc` (the engine gives each
//! container's main pid): every process of the daemon, manager and agent containers found by
//! our role label, sampled now or at its peak while some work runs.

use crate::harness::docker;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The containers of each role (by our role label) and their resident memory.
pub struct Roles {
    pids: Vec<(&'static str, Vec<u32>)>,
}

/// The roles whose memory is reported, and their role label values.
pub(super) const ROLES: [(&str, &str); 3] = [
    ("daemon", docker::logs::ROLE_DAEMON),
    ("manager", docker::logs::ROLE_TRAFFIC_MANAGER),
    ("agent", docker::provider::ROLE_AGENT),
];

impl Roles {
    /// The main processes of the running containers of each role.
    pub fn find() -> Result<Roles> {
        let mut pids = Vec::new();
        for (name, role) in ROLES {
            let ids = docker(&[
                "ps",
                "-q",
                "--filter",
                &format!("label={}={role}", docker::engine::ROLE_LABEL),
            ])?;
            let mut v = Vec::new();
            for id in ids.lines().filter(|l| !l.is_empty()) {
                v.push(container_pid(id)?);
            }
            pids.push((name, v));
        }
        Ok(Roles { pids })
    }

    /// MiB resident per role (every process of its containers).
    pub fn rss_mib(&self) -> BTreeMap<&'static str, f64> {
        self.pids
            .iter()
            .map(|(name, pids)| {
                let kib: u64 = pids.iter().map(|p| tree_rss_kib(*p)).sum();
                (*name, kib as f64 / 1024.0)
            })
            .collect()
    }
}

/// The host pid of a container's main process.
pub fn container_pid(container: &str) -> Result<u32> {
    docker(&["inspect", "-f", "{{.State.Pid}}", container])?
        .parse()
        .with_context(|| format!("no pid for {container}"))
}

/// VmRSS of `pid` and of its descendants, in KiB (0 when it is gone).
pub fn tree_rss_kib(pid: u32) -> u64 {
    let own = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    let children: u64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .map(tree_rss_kib)
        .sum();
    own + children
}

/// Peak memory per role while `work` runs (sampled every 50 ms).
pub(super) fn peak_while<T>(
    roles: &Roles,
    work: impl FnOnce() -> T,
) -> (T, BTreeMap<&'static str, f64>) {
    let peak = Mutex::new(roles.rss_mib());
    let stop = AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let now = roles.rss_mib();
                if let Ok(mut p) = peak.lock() {
                    for (k, v) in now {
                        let e = p.entry(k).or_insert(0.0);
                        *e = e.max(v);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let out = work();
        stop.store(true, Ordering::Relaxed);
        out
    });
    (out, peak.into_inner().unwrap_or_default())
}
