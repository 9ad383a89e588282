//! The receiving side of the live engine: [`apply_loop`] takes the peer's frames, refuses what
//! this side must not apply, settles conflicts ([`wins`]) and applies the rest below the
//! mount's [`Root`](crate::Root), recording the result so it is not echoed back.

use super::state::{MountCfg, Shared, State};
use crate::{
    check_rel, create_temp, create_temp_symlink, cstring, error_frame, excluded,
    has_temp_component, install_at, is_absent, lstat_at, mkdirat, now_ns, openat, same_opt,
    set_fd_attrs, set_fd_mtime, set_link_mtime, split_rel, symlink_stays_inside, unlinkat, Attrs,
    Change, Frame, FsSyncError, Kind, Meta, Msg, Op, Outbox, Root, DIR_FLAGS,
};
use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Applies the peer's frames until the stream ends (`Ok`) or a fatal error, which is also
/// reported to the peer.
pub(super) fn apply_loop(
    sh: &Shared,
    out: &Outbox,
    mut rx: mpsc::Receiver<Frame>,
) -> Result<(), FsSyncError> {
    let r = apply_frames(sh, out, &mut rx);
    if let Some(f) = r.as_ref().err().and_then(error_frame) {
        let _ = out.blocking_send(f);
    }
    r
}

/// Dispatches the peer's frames: changes are applied, `Refused` is logged, anything else ends
/// the session.
fn apply_frames(
    sh: &Shared,
    out: &Outbox,
    rx: &mut mpsc::Receiver<Frame>,
) -> Result<(), FsSyncError> {
    while let Some(f) = rx.blocking_recv() {
        match f {
            Frame::Msg(Msg::Change(c)) => apply_change(sh, out, rx, c)?,
            Frame::Msg(Msg::Refused {
                mount,
                path,
                reason,
            }) => warn!("volume sync: peer refused {path:?} of mount {mount}: {reason}"),
            Frame::Msg(Msg::Error { message }) => return Err(FsSyncError::Remote(message)),
            Frame::Msg(m) => {
                return Err(FsSyncError::Protocol(format!(
                    "unexpected {} message during live sync",
                    m.name()
                )))
            }
            Frame::Data(_) => {
                return Err(FsSyncError::Protocol(
                    "file data outside a file transfer".into(),
                ))
            }
        }
    }
    Ok(())
}

/// Receives the `size` bytes of a file transfer into `sink` (if any). `Ok(false)` if the sender
/// aborted or a local write failed (the rest is drained).
fn receive_data(
    rx: &mut mpsc::Receiver<Frame>,
    size: u64,
    mut sink: Option<&mut File>,
    path: &str,
) -> Result<bool, FsSyncError> {
    let mut left = size;
    let mut ok = true;
    while left > 0 {
        match rx.blocking_recv() {
            Some(Frame::Data(d)) => {
                if d.len() as u64 > left {
                    return Err(FsSyncError::Protocol(format!(
                        "more data than announced for {path:?}"
                    )));
                }
                left -= d.len() as u64;
                if let Some(f) = sink.as_deref_mut() {
                    if let Err(e) = f.write_all(&d) {
                        warn!("volume sync: writing {path:?}: {e}");
                        sink = None;
                        ok = false;
                    }
                }
            }
            Some(Frame::Msg(Msg::Abort)) => return Ok(false),
            Some(Frame::Msg(m)) => {
                return Err(FsSyncError::Protocol(format!(
                    "{} message inside the data of {path:?}",
                    m.name()
                )))
            }
            None => {
                return Err(FsSyncError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream ended inside a file transfer",
                )))
            }
        }
    }
    Ok(ok)
}

/// Notes the peer's `seq` as processed and its `seen` as acknowledged.
fn note_seen(st: &mut State, c: &Change) {
    st.seen = st.seen.max(c.seq);
    st.peer_seen = st.peer_seen.max(c.seen);
}

/// Whether an incoming change may replace the local state of its path (conflict resolution).
fn wins(sh: &Shared, st: &State, i: usize, c: &Change, local: Option<&Meta>) -> bool {
    if !sh.cfg[i].send {
        return true; // we never send for this mount: the peer is authoritative
    }
    let e = st.mounts[i].entries.get(&c.path);
    let synced = e.and_then(|e| e.meta.as_ref());
    let unsent = !same_opt(local, synced);
    let in_flight = e.is_some_and(|e| e.last_sent > c.seen);
    if !unsent && !in_flight {
        return true;
    }
    let ours = if unsent {
        match local {
            Some(m) if m.kind != Kind::Dir => m.mtime_ns,
            _ => now_ns(),
        }
    } else {
        e.map_or(0, |e| e.sent_time)
    };
    let theirs = c.time_ns > ours || (c.time_ns == ours && !sh.opts.is_agent);
    debug!(
        "volume sync: conflict on {} (ours {ours}, theirs {}): {} wins",
        c.path,
        c.time_ns,
        if theirs { "peer" } else { "local" }
    );
    theirs
}

/// Records `meta` as the synced state of `rel`, touched by the applier in a new epoch (so a
/// scan that started earlier leaves it alone).
fn record(st: &mut State, i: usize, rel: &str, meta: Option<Meta>) {
    st.epoch += 1;
    let epoch = st.epoch;
    let e = st.mounts[i].entries.entry(rel.to_string()).or_default();
    e.meta = meta;
    e.touched = epoch;
}

/// Records the parent directories the applier just created.
fn record_created(st: &mut State, i: usize, dir: &Root, created: &[String]) {
    for d in created {
        let m = dir.stat(d).ok().flatten();
        record(st, i, d, m);
    }
}

/// Opens directory `parent` of mount `i`, with `create` making (and recording) the missing
/// directories on the way.
fn open_parent(
    cfg: &MountCfg,
    st: &mut State,
    i: usize,
    parent: &str,
    create: bool,
) -> io::Result<OwnedFd> {
    let mut created = Vec::new();
    let dir = cfg.root.open_dir(parent, create.then_some(&mut created));
    record_created(st, i, &cfg.root, &created);
    dir
}

/// Applies (or refuses) one change from the peer.
fn apply_change(
    sh: &Shared,
    out: &Outbox,
    rx: &mut mpsc::Receiver<Frame>,
    c: Change,
) -> Result<(), FsSyncError> {
    let i = c.mount as usize;
    let Some(cfg) = sh.cfg.get(i) else {
        return Err(FsSyncError::Protocol(format!("unknown mount {}", c.mount)));
    };
    check_rel(&c.path)?;
    if let Some(reason) = refusal(cfg, &c) {
        return refuse(sh, out, rx, c, reason);
    }
    match c.op {
        Op::File { size, attrs } => apply_file(sh, i, rx, &c, size, attrs),
        _ => apply_entry(sh, i, &c),
    }
}

/// Why this side will not apply `c`, if it will not.
fn refusal(cfg: &MountCfg, c: &Change) -> Option<&'static str> {
    let refuse = if !cfg.accept {
        Some("read-only mount")
    } else if excluded(&c.path, &cfg.excludes) {
        Some("path belongs to another mount")
    } else if has_temp_component(&c.path) {
        Some("reserved name")
    } else {
        None
    };
    if let Op::Symlink { target } = &c.op {
        if !symlink_stays_inside(&c.path, target) {
            return refuse.or(Some("symlink target leaves the mount"));
        }
    }
    refuse
}

/// Skips a refused change (and its data) and tells the peer.
fn refuse(
    sh: &Shared,
    out: &Outbox,
    rx: &mut mpsc::Receiver<Frame>,
    c: Change,
    reason: &str,
) -> Result<(), FsSyncError> {
    if let Op::File { size, .. } = c.op {
        receive_data(rx, size, None, &c.path)?;
    }
    note_seen(&mut sh.lock(), &c);
    info!(
        "volume sync: refused {:?} of mount {}: {reason}",
        c.path, c.mount
    );
    let _ = out.blocking_send(Frame::Msg(Msg::Refused {
        mount: c.mount,
        path: c.path,
        reason: reason.to_string(),
    }));
    Ok(())
}

/// A `file` change: receives the content into a temporary file next to the target (without
/// holding the state lock), then installs it if the change wins.
fn apply_file(
    sh: &Shared,
    i: usize,
    rx: &mut mpsc::Receiver<Frame>,
    c: &Change,
    size: u64,
    attrs: Attrs,
) -> Result<(), FsSyncError> {
    let cfg = &sh.cfg[i];
    let (parent, name) = split_rel(&c.path);
    let cname = cstring(name)?;
    let dir = open_parent(cfg, &mut sh.lock(), i, parent, true);
    let mut target = dir
        .and_then(|d| create_temp(d.as_fd()).map(|t| (d, t)))
        .map_err(|e| warn!("volume sync: cannot write {:?}: {e}", c.path))
        .ok();
    let complete = receive_data(rx, size, target.as_mut().map(|(_, (_, f))| f), &c.path);
    let Some((dir, (tmp, file))) = target else {
        complete?;
        note_seen(&mut sh.lock(), c);
        return Ok(());
    };
    let complete = complete.inspect_err(|_| {
        let _ = unlinkat(dir.as_fd(), &tmp, 0);
    })?;
    let finished = complete && finish_temp(sh, &file, c, attrs);
    drop(file);
    let mut st = sh.lock();
    if !(finished && install_if_wins(sh, &mut st, i, c, dir.as_fd(), &tmp, &cname)) {
        let _ = unlinkat(dir.as_fd(), &tmp, 0);
    }
    note_seen(&mut st, c);
    Ok(())
}

/// Gives a received temporary file the change's attributes and mtime; false (logged) if that
/// failed.
fn finish_temp(sh: &Shared, file: &File, c: &Change, attrs: Attrs) -> bool {
    set_fd_attrs(file.as_fd(), Kind::File, attrs, sh.chown)
        .and_then(|()| set_fd_mtime(file.as_fd(), c.time_ns))
        .map_err(|e| warn!("volume sync: attributes of {:?}: {e}", c.path))
        .is_ok()
}

/// Renames the received `tmp` over `cname` in `dir` if the change wins, and records it;
/// false if it did not win or could not be installed (logged).
fn install_if_wins(
    sh: &Shared,
    st: &mut State,
    i: usize,
    c: &Change,
    dir: BorrowedFd<'_>,
    tmp: &CStr,
    cname: &CStr,
) -> bool {
    lstat_at(dir, cname)
        .and_then(|local| {
            if !wins(sh, st, i, c, local.as_ref()) {
                return Ok(false);
            }
            install_at(dir, tmp, cname)?;
            record(st, i, &c.path, lstat_at(dir, cname)?);
            Ok(true)
        })
        .unwrap_or_else(|e| {
            warn!("volume sync: cannot install {:?}: {e}", c.path);
            false
        })
}

/// A `mkdir`, `symlink` or `delete` change, applied under the state lock if it wins.
fn apply_entry(sh: &Shared, i: usize, c: &Change) -> Result<(), FsSyncError> {
    let cfg = &sh.cfg[i];
    let (parent, name) = split_rel(&c.path);
    let cname = cstring(name)?;
    let delete = matches!(c.op, Op::Delete);
    let mut st = sh.lock();
    let dir = open_parent(cfg, &mut st, i, parent, !delete);
    let result = dir.and_then(|dir| {
        let dir = dir.as_fd();
        let local = lstat_at(dir, &cname)?;
        if !wins(sh, &st, i, c, local.as_ref()) {
            return Ok(());
        }
        apply_op(dir, &cname, local.as_ref(), c, sh.chown)?;
        let m = lstat_at(dir, &cname)?;
        record(&mut st, i, &c.path, if delete { None } else { m });
        Ok(())
    });
    match result {
        Ok(()) => debug!("volume sync: applied {:?} {}", c.op, c.path),
        Err(e) if delete && is_absent(&e) => record(&mut st, i, &c.path, None),
        Err(e) => warn!("volume sync: cannot apply {:?} to {:?}: {e}", c.op, c.path),
    }
    note_seen(&mut st, c);
    Ok(())
}

/// Makes `name` in `dir` what a winning `mkdir`, `symlink` or `delete` change says.
fn apply_op(
    dir: BorrowedFd<'_>,
    name: &CStr,
    local: Option<&Meta>,
    c: &Change,
    chown: bool,
) -> io::Result<()> {
    match &c.op {
        Op::Mkdir { attrs } => make_dir(dir, name, local, *attrs, chown),
        Op::Symlink { target } => {
            let tmp = create_temp_symlink(dir, &cstring(target)?)?;
            install_at(dir, &tmp, name).inspect_err(|_| {
                let _ = unlinkat(dir, &tmp, 0);
            })?;
            let _ = set_link_mtime(dir, name, c.time_ns);
            Ok(())
        }
        Op::Delete => delete_entry(dir, name, local),
        Op::File { .. } => unreachable!("handled by apply_file"),
    }
}

/// Removes `name` (a file, symlink or empty directory) from `dir`.
fn delete_entry(dir: BorrowedFd<'_>, name: &CStr, local: Option<&Meta>) -> io::Result<()> {
    let r = match local.map(|m| m.kind) {
        None => Ok(()),
        Some(Kind::Dir) => unlinkat(dir, name, libc::AT_REMOVEDIR),
        Some(_) => unlinkat(dir, name, 0),
    };
    match r {
        // Local files the peer has not seen yet keep the directory; it is recorded as absent
        // on the peer, so it is sent back with them.
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
        other => other,
    }
}

/// Makes `name` in `dir` a directory (replacing a non-directory) with `attrs`.
fn make_dir(
    dir: BorrowedFd<'_>,
    name: &CStr,
    local: Option<&Meta>,
    attrs: Attrs,
    chown: bool,
) -> io::Result<()> {
    match local.map(|m| m.kind) {
        Some(Kind::Dir) => {}
        Some(_) => {
            unlinkat(dir, name, 0)?;
            mkdirat(dir, name, 0o700)?;
        }
        None => mkdirat(dir, name, 0o700)?,
    }
    let fd = openat(dir, name, DIR_FLAGS, 0)?;
    set_fd_attrs(fd.as_fd(), Kind::Dir, attrs, chown)
}
