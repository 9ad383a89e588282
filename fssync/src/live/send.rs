//! The sending side of the live engine: [`scan_loop`] polls every mount this side sends,
//! [`plan_changes`](super::plan::plan_changes) decides what changed, and each change goes out
//! as a message (files: followed by their content in data frames).

use super::plan::{plan_changes, PlanOp, Planned};
use super::state::{MountCfg, Shared};
use crate::{
    cstring, fstat, is_absent, now_ns, readlinkat, scan, split_rel, Frame, FsSyncError, Kind, Msg,
    Op, Outbox, CHUNK,
};
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use tracing::{debug, warn};

/// Orders from [`run_live`](super::run_live) to the scanner.
pub(super) enum Ctl {
    /// Scan once more, sending even files that have not settled, then stop.
    Flush,
}

/// Polls every mount this side sends, every `opts.poll`, until told to flush or stopped.
pub(super) fn scan_loop(
    sh: &Shared,
    out: &Outbox,
    ctl: std::sync::mpsc::Receiver<Ctl>,
) -> Result<(), FsSyncError> {
    use std::sync::mpsc::RecvTimeoutError;
    loop {
        let force = match ctl.recv_timeout(sh.opts.poll) {
            Ok(Ctl::Flush) => true,
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        for i in 0..sh.cfg.len() {
            if !sh.cfg[i].send {
                continue;
            }
            if sh.stop.load(Ordering::Acquire) || !scan_mount(sh, i, force, out) {
                return Ok(());
            }
        }
        if force {
            return Ok(());
        }
    }
}

/// Scans mount `i` and sends what changed; false once the stream is gone.
fn scan_mount(sh: &Shared, i: usize, force: bool, out: &Outbox) -> bool {
    let cfg = &sh.cfg[i];
    let start = sh.lock().epoch;
    let (found, report) = match scan(&cfg.root, &cfg.excludes) {
        Ok(x) => x,
        Err(e) => {
            warn!(
                "volume sync: cannot scan {}: {e}",
                cfg.root.path().display()
            );
            return true;
        }
    };
    let plan = {
        let mut st = sh.lock();
        plan_changes(&mut st, i, found, &report, start, force)
    };
    for p in plan {
        if sh.stop.load(Ordering::Acquire) || !send_planned(sh, i, p, out) {
            return false;
        }
    }
    true
}

/// Sends one planned change; false once the stream is gone.
fn send_planned(sh: &Shared, i: usize, p: Planned, out: &Outbox) -> bool {
    let cfg = &sh.cfg[i];
    let frame = match &p.what {
        PlanOp::Delete => p.change(i, p.time_ns, Op::Delete),
        PlanOp::Mkdir(a) => p.change(i, p.time_ns, Op::Mkdir { attrs: *a }),
        PlanOp::Symlink => match symlink_change(cfg, &p, i) {
            Some(frame) => frame,
            None => return true,
        },
        PlanOp::File => return send_file(cfg, &p, i, out, sh),
    };
    debug!("volume sync: send {:?} {}", p.what, p.path);
    out.blocking_send(frame).is_ok()
}

/// The change for a planned symlink: its current target, a deletion if it is gone, or
/// nothing (logged) if its target cannot be sent.
fn symlink_change(cfg: &MountCfg, p: &Planned, i: usize) -> Option<Frame> {
    let (parent, name) = split_rel(&p.path);
    let target = cfg
        .root
        .open_dir(parent, None)
        .and_then(|d| readlinkat(d.as_fd(), &cstring(name)?));
    match target.map(String::from_utf8) {
        Ok(Ok(t)) => Some(p.change(i, p.time_ns, Op::Symlink { target: t })),
        Ok(Err(_)) => {
            debug!("volume sync: symlink {} has a non-UTF-8 target", p.path);
            None
        }
        Err(e) if is_absent(&e) || e.raw_os_error() == Some(libc::EINVAL) => {
            Some(p.change(i, now_ns(), Op::Delete))
        }
        Err(e) => {
            warn!("volume sync: cannot read symlink {}: {e}", p.path);
            None
        }
    }
}

/// Sends a planned file: the change with its current size, then its content. False once the
/// stream is gone.
fn send_file(cfg: &MountCfg, p: &Planned, i: usize, out: &Outbox, sh: &Shared) -> bool {
    let opened = cfg.root.open_read(&p.path).and_then(|f| {
        let m = fstat(f.as_fd())?;
        Ok((f, m))
    });
    let (f, m) = match opened {
        Ok((f, m)) if m.kind == Kind::File => (f, m),
        Ok(_) => return true, // replaced by something else; the next scan sees it
        Err(e) if is_absent(&e) => {
            return out.blocking_send(p.change(i, now_ns(), Op::Delete)).is_ok()
        }
        Err(e) => {
            warn!("volume sync: cannot read {}: {e}", p.path);
            return true;
        }
    };
    debug!("volume sync: send file {} ({} bytes)", p.path, m.size);
    let op = Op::File {
        size: m.size,
        attrs: m.attrs(),
    };
    if out.blocking_send(p.change(i, m.mtime_ns, op)).is_err() {
        return false;
    }
    send_content(f, m.size, out, sh)
}

/// Sends the `size` bytes announced for file `f` as data frames, or `Abort` if it ends early
/// or cannot be read. False once the stream is gone (or the engine is stopping).
fn send_content(mut f: File, size: u64, out: &Outbox, sh: &Shared) -> bool {
    let mut left = size;
    while left > 0 {
        if sh.stop.load(Ordering::Acquire) {
            return false;
        }
        let mut chunk = vec![0u8; left.min(CHUNK as u64) as usize];
        let n = match f.read(&mut chunk) {
            Ok(0) | Err(_) => return out.blocking_send(Frame::Msg(Msg::Abort)).is_ok(),
            Ok(n) => n,
        };
        chunk.truncate(n);
        left -= n as u64;
        if out.blocking_send(Frame::Data(chunk)).is_err() {
            return false;
        }
    }
    true
}
