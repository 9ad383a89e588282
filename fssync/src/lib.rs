//! Volume sync protocol: how the traffic-agent (which sees the workload's mounts at their real
//! paths) and the client's sync container (one local directory per remote mount) keep those
//! trees identical over ONE byte stream. This module owns the wire format (framing and message
//! types), the confined file-system primitives both ends use (every path is resolved below a
//! mount root with `openat(O_NOFOLLOW)`, so nothing is ever written outside it), the tree
//! scanner, and the symmetric live-sync engine ([`run_live`]). The agent end
//! (`agent::fs::serve`) and the client end (`daemon_image::fs::sync`) add the handshake and the
//! initial tar transfer.
//!
//! # Wire format
//! A stream of frames: one type byte (`1` = message, `2` = data), a big-endian `u32` length
//! (at most [`MAX_FRAME`]), then the payload. A message payload is one JSON [`Msg`]; data frames
//! carry raw bytes that belong to the transfer the preceding message opened.
//!
//! # Conversation
//! 1. agent → client `Hello { proto, mounts }`; client → agent `Subscribe { mounts }` (a subset
//!    of the offered paths; `read_only` may be stricter than offered). Mount numbers are indexes
//!    into the `Subscribe` list.
//! 2. For each subscribed mount, in order: `TarBegin { mount, root }`, data frames holding one
//!    tar archive of the mount (GNU headers, parents before children), `TarEnd { mount }`.
//! 3. Live sync, both directions at once: `Change { mount, path, seq, seen, time_ns, op }` where
//!    `op` is `file` (followed by exactly `size` bytes of data frames, or an early `Abort`),
//!    `mkdir`, `symlink` or `delete`. `seq` numbers the sender's changes, `seen` is the highest
//!    peer `seq` the sender had processed. A receiver applying a change to a path it has itself
//!    changed since the last sync (not yet sent, or sent with a `seq` the peer had not seen) has
//!    a conflict: the later `time_ns` wins (ties go to the agent), decided identically on both
//!    sides. `Refused` reports a change the receiver would not apply (read-only mount, symlink
//!    leaving the mount); `Error` carries a fatal error before the sender closes.
//!
//! # Change detection
//! Each side polls its trees every [`POLL_INTERVAL`], comparing (type, size, mtime, ctime,
//! inode, mode, owner) per path with the state recorded at the last sync. A regular file is
//! only sent once it looked the same in two consecutive polls, so a file being written is not
//! sent over and over (a file under [`SMALL_FILE`] that keeps changing, like a log, still goes
//! out every [`MAX_DEFER`]). Applied changes update the recorded state (no echo); files are
//! written to a temporary name in the same directory and renamed into place, so readers never
//! see half a file. Renames travel as delete + create.

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Protocol version sent in `Hello`.
pub const PROTO_VERSION: u32 = 1;
/// Largest accepted frame payload.
pub const MAX_FRAME: usize = 1 << 20;
/// Size of the data frames this implementation sends.
pub const CHUNK: usize = 256 * 1024;
/// How often each side looks for local changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(300);
/// Names starting with this are our temporary files: never scanned, never accepted from a peer.
pub const TEMP_PREFIX: &str = ".tpsync-";
/// Longest accepted relative path.
pub const MAX_PATH: usize = 4096;
/// How long a client's final flush may take at shutdown.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// A file below [`SMALL_FILE`] bytes that keeps changing at every poll (a log being appended
/// to) is sent anyway once it has been changing this long; larger files wait until they settle.
pub const MAX_DEFER: Duration = Duration::from_secs(1);
/// See [`MAX_DEFER`].
pub const SMALL_FILE: u64 = 1 << 20;

const FRAME_MSG: u8 = 1;
const FRAME_DATA: u8 = 2;
const MAX_DEPTH: usize = 256;
const OUTBOX_DEPTH: usize = 32;
const APPLY_DEPTH: usize = 32;

/// One mount of the intercepted container: its absolute path there and whether it is read-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub path: String,
    #[serde(default)]
    pub read_only: bool,
}

/// Permission bits and owner of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Attrs {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A control message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Msg {
    Hello {
        proto: u32,
        mounts: Vec<Mount>,
    },
    Subscribe {
        mounts: Vec<Mount>,
    },
    TarBegin {
        mount: u32,
        #[serde(default)]
        root: Option<Attrs>,
    },
    TarEnd {
        mount: u32,
    },
    Change(Change),
    /// Ends a `file` change early: the sender could not read the announced size.
    Abort,
    Refused {
        mount: u32,
        path: String,
        reason: String,
    },
    Error {
        message: String,
    },
}

impl Msg {
    /// The message's wire tag.
    pub fn name(&self) -> &'static str {
        match self {
            Msg::Hello { .. } => "hello",
            Msg::Subscribe { .. } => "subscribe",
            Msg::TarBegin { .. } => "tar_begin",
            Msg::TarEnd { .. } => "tar_end",
            Msg::Change(_) => "change",
            Msg::Abort => "abort",
            Msg::Refused { .. } => "refused",
            Msg::Error { .. } => "error",
        }
    }
}

/// One change to one path of one mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub mount: u32,
    pub path: String,
    pub seq: u64,
    pub seen: u64,
    /// Writer time used to settle conflicts: the mtime for files and symlinks, the detection
    /// time for directories and deletions (ns since the epoch).
    pub time_ns: i64,
    pub op: Op,
}

/// What happened to the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Op {
    /// Regular file with this content (the next `size` bytes of data frames).
    File {
        size: u64,
        attrs: Attrs,
    },
    Mkdir {
        attrs: Attrs,
    },
    Symlink {
        target: String,
    },
    Delete,
}

/// One unit on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Msg(Msg),
    Data(Vec<u8>),
}

/// Why a sync session failed.
#[derive(Debug, thiserror::Error)]
pub enum FsSyncError {
    #[error("volume sync i/o: {0}")]
    Io(#[from] io::Error),
    #[error("volume sync protocol violation: {0}")]
    Protocol(String),
    #[error("refused hostile entry: {0}")]
    Hostile(String),
    #[error("volume sync peer reported: {0}")]
    Remote(String),
}

impl From<FsSyncError> for io::Error {
    fn from(e: FsSyncError) -> io::Error {
        match e {
            FsSyncError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Framing

/// Encodes a frame (header + payload).
pub fn encode_frame(f: &Frame) -> Vec<u8> {
    let (t, body): (u8, std::borrow::Cow<'_, [u8]>) = match f {
        Frame::Msg(m) => (
            FRAME_MSG,
            serde_json::to_vec(m).expect("messages serialize").into(),
        ),
        Frame::Data(d) => (FRAME_DATA, d.as_slice().into()),
    };
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(t);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes one frame from the front of `buf`: `Ok(None)` if more bytes are needed, else the
/// frame and how many bytes it used.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, FsSyncError> {
    if buf.len() < 5 {
        if let Some(&t) = buf.first() {
            check_type(t)?;
        }
        return Ok(None);
    }
    check_type(buf[0])?;
    let len = check_len(u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]))?;
    if buf.len() < 5 + len {
        return Ok(None);
    }
    let f = decode_body(buf[0], buf[5..5 + len].to_vec())?;
    Ok(Some((f, 5 + len)))
}

fn check_type(t: u8) -> Result<(), FsSyncError> {
    match t {
        FRAME_MSG | FRAME_DATA => Ok(()),
        other => Err(FsSyncError::Protocol(format!("unknown frame type {other}"))),
    }
}

fn check_len(len: u32) -> Result<usize, FsSyncError> {
    let len = len as usize;
    if len > MAX_FRAME {
        return Err(FsSyncError::Protocol(format!(
            "frame of {len} bytes exceeds the {MAX_FRAME} byte limit"
        )));
    }
    Ok(len)
}

fn decode_body(t: u8, body: Vec<u8>) -> Result<Frame, FsSyncError> {
    if t == FRAME_DATA {
        return Ok(Frame::Data(body));
    }
    serde_json::from_slice(&body)
        .map(Frame::Msg)
        .map_err(|e| FsSyncError::Protocol(format!("malformed message: {e}")))
}

/// Reads one frame; `Ok(None)` on a clean end of stream (between frames).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, FsSyncError> {
    let mut head = [0u8; 5];
    if r.read(&mut head[..1]).await? == 0 {
        return Ok(None);
    }
    check_type(head[0])?;
    r.read_exact(&mut head[1..]).await?;
    let len = check_len(u32::from_be_bytes([head[1], head[2], head[3], head[4]]))?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    decode_body(head[0], body).map(Some)
}

/// Writes one frame (not flushed).
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> io::Result<()> {
    match f {
        Frame::Msg(m) => {
            let body = serde_json::to_vec(m).map_err(io::Error::other)?;
            w.write_all(&[FRAME_MSG]).await?;
            w.write_all(&(body.len() as u32).to_be_bytes()).await?;
            w.write_all(&body).await
        }
        Frame::Data(d) => {
            w.write_all(&[FRAME_DATA]).await?;
            w.write_all(&(d.len() as u32).to_be_bytes()).await?;
            w.write_all(d).await
        }
    }
}

/// Frames queued for the stream's writer task.
pub type Outbox = mpsc::Sender<Frame>;

/// The frame that tells the peer why this side stops; none when the peer reported the error.
pub fn error_frame(e: &FsSyncError) -> Option<Frame> {
    (!matches!(e, FsSyncError::Remote(_))).then(|| {
        Frame::Msg(Msg::Error {
            message: e.to_string(),
        })
    })
}

/// Ends a stream after a failure: tells the peer why, lets the writer flush and half-close,
/// and hands the error back.
pub async fn fail(out: Outbox, writer: JoinHandle<io::Result<()>>, e: FsSyncError) -> FsSyncError {
    if let Some(f) = error_frame(&e) {
        let _ = out.send(f).await;
    }
    drop(out);
    let _ = writer.await;
    e
}

/// Starts the task that owns the write half: it writes queued frames, flushes whenever the
/// queue runs dry, and half-closes the stream once every [`Outbox`] clone is dropped.
pub fn spawn_writer<W>(w: W) -> (Outbox, JoinHandle<io::Result<()>>)
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Frame>(OUTBOX_DEPTH);
    let task = tokio::spawn(async move {
        let mut w = tokio::io::BufWriter::with_capacity(64 * 1024, w);
        while let Some(f) = rx.recv().await {
            write_frame(&mut w, &f).await?;
            if rx.is_empty() {
                w.flush().await?;
            }
        }
        w.flush().await?;
        let _ = w.shutdown().await;
        Ok(())
    });
    (tx, task)
}

// ---------------------------------------------------------------------------------------------
// Paths

/// Checks a mount-relative path: not empty, not absolute, no `.`/`..`/empty components, no NUL,
/// bounded length.
pub fn check_rel(p: &str) -> Result<(), FsSyncError> {
    let bad = p.is_empty()
        || p.len() > MAX_PATH
        || p.starts_with('/')
        || p.contains('\0')
        || p.split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.len() > 255);
    if bad {
        return Err(FsSyncError::Hostile(format!("path {p:?}")));
    }
    Ok(())
}

/// Whether a symlink at `rel` with `target` resolves (lexically) inside the mount: relative,
/// and never climbing above the mount root.
pub fn symlink_stays_inside(rel: &str, target: &str) -> bool {
    if target.is_empty() || target.starts_with('/') || target.contains('\0') {
        return false;
    }
    let mut depth = rel.split('/').count() as isize - 1;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

/// Splits `a/b/c` into (`a/b`, `c`); the parent of a top-level name is `""`.
pub fn split_rel(rel: &str) -> (&str, &str) {
    match rel.rfind('/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => ("", rel),
    }
}

/// Whether `rel` is `prefix` or below it.
pub fn is_under(rel: &str, prefix: &str) -> bool {
    rel == prefix || (rel.starts_with(prefix) && rel.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// The paths (relative to mount `i`) of the other mounts nested inside it: each side leaves
/// them out of mount `i`, they are synced as mounts of their own.
pub fn nested_excludes(mounts: &[Mount], i: usize) -> HashSet<String> {
    let base = mounts[i].path.trim_end_matches('/');
    mounts
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .filter_map(|(_, m)| {
            let p = m.path.trim_end_matches('/');
            let rest = if base.is_empty() {
                p.strip_prefix('/')
            } else {
                p.strip_prefix(base).and_then(|r| r.strip_prefix('/'))
            }?;
            (!rest.is_empty()).then(|| rest.to_string())
        })
        .collect()
}

/// Whether `rel` is inside one of the `excludes` subtrees.
pub fn excluded(rel: &str, excludes: &HashSet<String>) -> bool {
    !excludes.is_empty() && excludes.iter().any(|x| is_under(rel, x))
}

/// Whether a component of `rel` is one of our temporary names.
pub fn has_temp_component(rel: &str) -> bool {
    rel.split('/').any(|c| c.starts_with(TEMP_PREFIX))
}

/// Now, in ns since the epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Metadata

/// Entry type as far as syncing is concerned (devices, fifos and sockets are `Other`: skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// What a scan records per path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
}

impl Meta {
    fn from_stat(st: &libc::stat) -> Meta {
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        };
        Meta {
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
            ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec,
            ino: st.st_ino,
        }
    }

    /// Whether two observations of the same path show no change (directories: type, mode and
    /// owner only; their times move whenever a child changes).
    pub fn same(&self, o: &Meta) -> bool {
        self.kind == o.kind
            && self.mode == o.mode
            && self.uid == o.uid
            && self.gid == o.gid
            && (self.kind == Kind::Dir
                || (self.size == o.size
                    && self.mtime_ns == o.mtime_ns
                    && self.ctime_ns == o.ctime_ns
                    && self.ino == o.ino))
    }

    pub fn attrs(&self) -> Attrs {
        Attrs {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
        }
    }
}

fn same_opt(a: Option<&Meta>, b: Option<&Meta>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same(b),
        _ => false,
    }
}

/// Permission bits we are willing to set: no set-uid/set-gid on files (the sync process runs as
/// root), set-gid and sticky kept on directories.
pub fn safe_mode(kind: Kind, mode: u32) -> u32 {
    match kind {
        Kind::Dir => mode & 0o3777,
        _ => mode & 0o1777,
    }
}

/// Whether this process may give files away (`chown`).
pub fn can_chown() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

// ---------------------------------------------------------------------------------------------
// Confined file-system primitives (openat family, never following symlinks below the root)

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `s` as a C string (NUL inside is an error).
pub fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

/// Flags to open a directory below a root (never through a symlink).
pub const DIR_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;

/// `openat(2)` with `O_CLOEXEC`.
pub fn openat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: valid fd and NUL-terminated name; the returned fd is owned by us.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: `fd` was just returned by openat and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `lstat` of `name` in `dir`; `Ok(None)` if it does not exist.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<Meta>> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid fd, NUL-terminated name, `st` is a properly sized out-buffer.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: fstatat succeeded, so `st` is initialized.
    Ok(Some(Meta::from_stat(unsafe { &st.assume_init() })))
}

/// `fstat` of an open fd.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Meta> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid fd, properly sized out-buffer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded.
    Ok(Meta::from_stat(unsafe { &st.assume_init() }))
}

/// `mkdirat(2)`.
pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd and name.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) }).map(drop)
}

/// `unlinkat(2)`.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: valid fd and name.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

fn renameat(dir: BorrowedFd<'_>, from: &CStr, to: &CStr) -> io::Result<()> {
    // SAFETY: valid fd and names.
    cvt(unsafe { libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr()) })
        .map(drop)
}

/// `symlinkat(2)`.
pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: valid fd and NUL-terminated strings.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// `readlinkat(2)`: the raw target of the symlink `name` in `dir`.
pub fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: valid fd and name; buf is writable for buf.len() bytes.
        let n = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        if buf.len() >= 1 << 20 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "symlink too long",
            ));
        }
        buf.resize(buf.len() * 2, 0);
    }
}

fn timespec(ns: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: ns.div_euclid(1_000_000_000) as libc::time_t,
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    }
}

/// Sets atime and mtime of an open file.
pub fn set_fd_mtime(fd: BorrowedFd<'_>, mtime_ns: i64) -> io::Result<()> {
    let t = [timespec(mtime_ns), timespec(mtime_ns)];
    // SAFETY: valid fd and a two-element timespec array.
    cvt(unsafe { libc::futimens(fd.as_raw_fd(), t.as_ptr()) }).map(drop)
}

/// Sets atime and mtime of `name` in `dir` without following a symlink.
pub fn set_link_mtime(dir: BorrowedFd<'_>, name: &CStr, mtime_ns: i64) -> io::Result<()> {
    let t = [timespec(mtime_ns), timespec(mtime_ns)];
    // SAFETY: valid fd, name and timespec array.
    cvt(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            t.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// Owner (when `chown`) then permission bits of an open file or directory.
pub fn set_fd_attrs(fd: BorrowedFd<'_>, kind: Kind, a: Attrs, chown: bool) -> io::Result<()> {
    if chown {
        // SAFETY: valid fd.
        cvt(unsafe { libc::fchown(fd.as_raw_fd(), a.uid, a.gid) })?;
    }
    // SAFETY: valid fd.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), safe_mode(kind, a.mode) as libc::mode_t) }).map(drop)
}

/// Owner of a symlink itself.
pub fn set_link_owner(dir: BorrowedFd<'_>, name: &CStr, a: Attrs) -> io::Result<()> {
    // SAFETY: valid fd and name.
    cvt(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            a.uid,
            a.gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// The names in a directory (without `.` and `..`).
pub fn read_dir_names(dir: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    let dup = dir.try_clone_to_owned()?;
    let raw = dup.into_raw_fd();
    // SAFETY: `raw` is an fd we own; on success fdopendir takes it over.
    let dp = unsafe { libc::fdopendir(raw) };
    if dp.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, the fd is still ours to close.
        unsafe { libc::close(raw) };
        return Err(e);
    }
    // SAFETY: `dp` is a valid DIR*; a dup shares the offset, so start from the beginning.
    unsafe { libc::rewinddir(dp) };
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; resetting it lets us tell the end from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `dp` is valid until closedir below.
        let ent = unsafe { libc::readdir(dp) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            break match e.raw_os_error() {
                Some(0) | None => Ok(()),
                _ => Err(e),
            };
        }
        // SAFETY: d_name is a NUL-terminated string inside the entry readdir returned.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        let b = name.to_bytes();
        if b != b"." && b != b".." {
            names.push(name.to_owned());
        }
    };
    // SAFETY: `dp` is valid; closedir also closes the fd.
    unsafe { libc::closedir(dp) };
    result.map(|()| names)
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_name() -> CString {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!(
        "{TEMP_PREFIX}{}-{}-{n}",
        std::process::id(),
        now_ns() as u64 % 1_000_000_007
    );
    CString::new(name).expect("no NUL")
}

/// Creates a new temporary file in `dir` (mode 0600); returns its name and the open file.
pub fn create_temp(dir: BorrowedFd<'_>) -> io::Result<(CString, File)> {
    loop {
        let name = temp_name();
        match openat(
            dir,
            &name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
        ) {
            Ok(fd) => return Ok((name, File::from(fd))),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Creates a temporary symlink in `dir` pointing at `target`; returns its name.
pub fn create_temp_symlink(dir: BorrowedFd<'_>, target: &CStr) -> io::Result<CString> {
    loop {
        let name = temp_name();
        match symlinkat(target, dir, &name) {
            Ok(()) => return Ok(name),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Atomically renames `tmp` to `name` in `dir`; a directory in the way is removed first.
pub fn install_at(dir: BorrowedFd<'_>, tmp: &CStr, name: &CStr) -> io::Result<()> {
    match renameat(dir, tmp, name) {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EISDIR) | Some(libc::ENOTEMPTY) | Some(libc::EEXIST)
            ) =>
        {
            remove_all_at(dir, name)?;
            renameat(dir, tmp, name)
        }
        other => other,
    }
}

/// Removes `name` in `dir` and, for a directory, everything below it; never follows symlinks.
/// A missing entry is not an error.
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    remove_all_depth(dir, name, 0)
}

fn remove_all_depth(dir: BorrowedFd<'_>, name: &CStr, depth: usize) -> io::Result<()> {
    let Some(m) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if m.kind == Kind::Dir {
        if depth > MAX_DEPTH {
            return Err(io::Error::other("directory tree too deep to remove"));
        }
        let sub = match openat(dir, name, DIR_FLAGS, 0) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        };
        for child in read_dir_names(sub.as_fd())? {
            remove_all_depth(sub.as_fd(), &child, depth + 1)?;
        }
        drop(sub);
        match unlinkat(dir, name, libc::AT_REMOVEDIR) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    } else {
        match unlinkat(dir, name, 0) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }
}

/// A mount root: every operation below it resolves paths component by component with
/// `O_NOFOLLOW`, so a symlink (or a concurrently swapped directory) can never take a read or
/// write outside the root.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

impl Root {
    /// Opens an existing directory as a root (the root path itself may be a symlink).
    pub fn open(path: &Path) -> io::Result<Root> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
        // SAFETY: NUL-terminated path.
        let fd = cvt(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        Ok(Root {
            // SAFETY: fresh fd from open.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens directory `rel` (`""` = the root). With `created`, missing directories are made
    /// (mode 0755) and their paths appended to it.
    pub fn open_dir(
        &self,
        rel: &str,
        mut created: Option<&mut Vec<String>>,
    ) -> io::Result<OwnedFd> {
        let mut cur = self.fd.try_clone()?;
        if rel.is_empty() {
            return Ok(cur);
        }
        let mut done = 0usize;
        for comp in rel.split('/') {
            let c = cstring(comp)?;
            let next = match openat(cur.as_fd(), &c, DIR_FLAGS, 0) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && created.is_some() => {
                    match mkdirat(cur.as_fd(), &c, 0o755) {
                        Ok(()) => {
                            if let Some(v) = created.as_deref_mut() {
                                v.push(rel[..done + comp.len()].to_string());
                            }
                        }
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(e),
                    }
                    openat(cur.as_fd(), &c, DIR_FLAGS, 0)?
                }
                Err(e) => return Err(e),
            };
            cur = next;
            done += comp.len() + 1;
        }
        Ok(cur)
    }

    /// `lstat` of `rel` (`Ok(None)` if it, or a directory on the way, does not exist or is not
    /// a directory).
    pub fn stat(&self, rel: &str) -> io::Result<Option<Meta>> {
        let (parent, name) = split_rel(rel);
        let dir = match self.open_dir(parent, None) {
            Ok(d) => d,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        lstat_at(dir.as_fd(), &cstring(name)?)
    }

    /// Opens regular file `rel` for reading (never through a symlink).
    pub fn open_read(&self, rel: &str) -> io::Result<File> {
        let (parent, name) = split_rel(rel);
        let dir = self.open_dir(parent, None)?;
        openat(
            dir.as_fd(),
            &cstring(name)?,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            0,
        )
        .map(File::from)
    }

    /// Applies a remote root's mode and owner to this root.
    pub fn set_root_attrs(&self, a: Attrs, chown: bool) -> io::Result<()> {
        set_fd_attrs(self.fd(), Kind::Dir, a, chown)
    }
}

/// Whether an error means "not there" (missing, or not a directory on the way).
pub fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
    )
}

// ---------------------------------------------------------------------------------------------
// Scanning

/// One entry met by [`walk`]: its parent directory, name, mount-relative path and metadata.
pub struct WalkEntry<'a> {
    pub dir: BorrowedFd<'a>,
    pub name: &'a CStr,
    pub rel: &'a str,
    pub meta: &'a Meta,
}

/// What a walk could not see.
#[derive(Debug, Default, Clone)]
pub struct WalkReport {
    /// Subtrees that could not be read (no deletions are inferred below them).
    pub incomplete: Vec<String>,
    /// Entries skipped: names that are not UTF-8, devices, fifos, sockets.
    pub skipped: u64,
}

/// Visits every entry below `root` (parents before children, names sorted), skipping our
/// temporary files, `excludes` subtrees, non-UTF-8 names and special files.
pub fn walk(
    root: &Root,
    excludes: &HashSet<String>,
    f: &mut dyn FnMut(&WalkEntry<'_>) -> io::Result<()>,
) -> io::Result<WalkReport> {
    let mut report = WalkReport::default();
    let names = read_dir_names(root.fd())?;
    walk_names(root.fd(), names, "", 0, excludes, f, &mut report)?;
    Ok(report)
}

fn walk_names(
    dir: BorrowedFd<'_>,
    mut names: Vec<CString>,
    prefix: &str,
    depth: usize,
    excludes: &HashSet<String>,
    f: &mut dyn FnMut(&WalkEntry<'_>) -> io::Result<()>,
    report: &mut WalkReport,
) -> io::Result<()> {
    names.sort_unstable();
    for name in names {
        let Ok(s) = name.to_str() else {
            report.skipped += 1;
            continue;
        };
        if s.starts_with(TEMP_PREFIX) {
            continue;
        }
        let rel = if prefix.is_empty() {
            s.to_string()
        } else {
            format!("{prefix}/{s}")
        };
        if excluded(&rel, excludes) {
            continue;
        }
        let meta = match lstat_at(dir, &name) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(_) => {
                report.incomplete.push(rel);
                continue;
            }
        };
        if meta.kind == Kind::Other {
            report.skipped += 1;
            continue;
        }
        f(&WalkEntry {
            dir,
            name: &name,
            rel: &rel,
            meta: &meta,
        })?;
        if meta.kind == Kind::Dir {
            if depth + 1 >= MAX_DEPTH {
                report.incomplete.push(rel);
                continue;
            }
            let sub = match openat(dir, &name, DIR_FLAGS, 0) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(_) => {
                    report.incomplete.push(rel);
                    continue;
                }
            };
            match read_dir_names(sub.as_fd()) {
                Ok(children) => {
                    walk_names(sub.as_fd(), children, &rel, depth + 1, excludes, f, report)?
                }
                Err(_) => report.incomplete.push(rel),
            }
        }
    }
    Ok(())
}

/// Path → metadata of everything below `root` (see [`walk`]).
pub fn scan(
    root: &Root,
    excludes: &HashSet<String>,
) -> io::Result<(HashMap<String, Meta>, WalkReport)> {
    let mut map = HashMap::new();
    let report = walk(root, excludes, &mut |e| {
        map.insert(e.rel.to_string(), *e.meta);
        Ok(())
    })?;
    Ok((map, report))
}

// ---------------------------------------------------------------------------------------------
// Live sync engine

/// One mount as the live engine sees it.
pub struct LiveMount {
    pub root: Root,
    /// Whether local changes are sent to the peer.
    pub send: bool,
    /// Whether the peer's changes are applied (otherwise they are answered with `Refused`).
    pub accept: bool,
    /// Subtrees left out (nested mounts).
    pub excludes: HashSet<String>,
    /// The local state both sides agree on when live sync starts.
    pub baseline: HashMap<String, Meta>,
}

/// Tuning of [`run_live`].
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// This side is the agent (wins conflicts with equal times).
    pub is_agent: bool,
    pub poll: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Local metadata at the last sync of this path (`None`: absent).
    meta: Option<Meta>,
    /// Our `seq` of the last change sent for this path.
    last_sent: u64,
    /// `time_ns` of that change.
    sent_time: i64,
    /// Epoch of the last change the applier made here.
    touched: u64,
}

struct MountCfg {
    root: Root,
    send: bool,
    accept: bool,
    excludes: HashSet<String>,
}

#[derive(Default)]
struct MountState {
    entries: HashMap<String, Entry>,
    /// The previous scan, for the "stable for one poll" rule.
    prev: HashMap<String, Meta>,
    /// Since when a changed small file has kept changing (see [`MAX_DEFER`]).
    unstable_since: HashMap<String, std::time::Instant>,
}

struct State {
    mounts: Vec<MountState>,
    next_seq: u64,
    /// Highest peer seq processed.
    seen: u64,
    /// Highest of our seqs the peer said it processed.
    peer_seen: u64,
    epoch: u64,
}

struct Shared {
    cfg: Vec<MountCfg>,
    state: Mutex<State>,
    opts: LiveOptions,
    chown: bool,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

enum Ctl {
    Flush,
}

fn join<T>(r: Result<Result<T, FsSyncError>, tokio::task::JoinError>) -> Result<T, FsSyncError> {
    r.map_err(|e| FsSyncError::Io(io::Error::other(format!("sync task failed: {e}"))))?
}

/// Runs live sync over `reader` (the rest of the stream) and `out` (its writer task, whose
/// handle is `writer`) until the peer closes the stream (`Ok`), `shutdown` resolves (a final
/// scan sends pending local changes, then the stream is half-closed; `Ok`), or an error.
pub async fn run_live<R>(
    reader: R,
    out: Outbox,
    writer: JoinHandle<io::Result<()>>,
    mounts: Vec<LiveMount>,
    opts: LiveOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), FsSyncError>
where
    R: AsyncRead + Unpin + Send,
{
    let mut cfg = Vec::with_capacity(mounts.len());
    let mut states = Vec::with_capacity(mounts.len());
    for m in mounts {
        let entries = m
            .baseline
            .iter()
            .map(|(p, meta)| {
                (
                    p.clone(),
                    Entry {
                        meta: Some(*meta),
                        last_sent: 0,
                        sent_time: 0,
                        touched: 0,
                    },
                )
            })
            .collect();
        states.push(MountState {
            entries,
            prev: m.baseline,
            unstable_since: HashMap::new(),
        });
        cfg.push(MountCfg {
            root: m.root,
            send: m.send,
            accept: m.accept,
            excludes: m.excludes,
        });
    }
    let shared = Arc::new(Shared {
        cfg,
        state: Mutex::new(State {
            mounts: states,
            next_seq: 1,
            seen: 0,
            peer_seen: 0,
            epoch: 0,
        }),
        opts,
        chown: can_chown(),
        stop: AtomicBool::new(false),
    });

    let (apply_tx, apply_rx) = mpsc::channel::<Frame>(APPLY_DEPTH);
    let (ctl_tx, ctl_rx) = std::sync::mpsc::channel::<Ctl>();
    let mut applier = tokio::task::spawn_blocking({
        let sh = shared.clone();
        let out = out.clone();
        move || apply_loop(&sh, &out, apply_rx)
    });
    let err_out = out.clone();
    let mut scanner = tokio::task::spawn_blocking({
        let sh = shared.clone();
        move || scan_loop(&sh, &out, ctl_rx)
    });
    let mut writer = writer;
    let mut read = Box::pin(async move {
        let mut reader = reader;
        loop {
            match read_frame(&mut reader).await? {
                Some(f) => {
                    if apply_tx.send(f).await.is_err() {
                        return Ok(());
                    }
                }
                None => return Ok::<(), FsSyncError>(()),
            }
        }
    });
    tokio::pin!(shutdown);

    tokio::select! {
        r = &mut read => {
            // The peer closed (or sent garbage): let the applier finish what was queued.
            drop(read);
            if let Err(e) = &r {
                if !matches!(e, FsSyncError::Io(_)) {
                    let _ = err_out.try_send(Frame::Msg(Msg::Error { message: e.to_string() }));
                }
            }
            drop(err_out);
            let applied = join(applier.await);
            drop(ctl_tx);
            let _ = scanner.await;
            let _ = writer.await;
            r?;
            applied
        }
        _ = &mut shutdown => {
            drop(err_out);
            let _ = ctl_tx.send(Ctl::Flush);
            // Keep reading while the final scan is sent, so a busy peer cannot stall it.
            let flush = tokio::time::timeout(FLUSH_TIMEOUT, &mut scanner);
            tokio::pin!(flush);
            let mut reading = true;
            let flushed = loop {
                tokio::select! {
                    r = &mut flush => break r.is_ok(),
                    _ = &mut read, if reading => reading = false,
                }
            };
            if !flushed {
                warn!("volume sync: final flush did not finish in {FLUSH_TIMEOUT:?}");
                shared.stop.store(true, Ordering::Release);
                writer.abort();
            }
            drop(read);
            if let Err(e) = join(applier.await) {
                debug!("volume sync applier at shutdown: {e}");
            }
            if let Ok(Err(e)) = writer.await {
                debug!("volume sync writer at shutdown: {e}");
            }
            Ok(())
        }
        r = &mut applier => {
            drop(err_out);
            drop(ctl_tx);
            drop(read);
            let _ = scanner.await;
            let _ = writer.await;
            join(r)
        }
        r = &mut writer => {
            drop(err_out);
            shared.stop.store(true, Ordering::Release);
            drop(ctl_tx);
            drop(read);
            let _ = applier.await;
            let _ = scanner.await;
            match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(FsSyncError::Io(io::Error::other(format!("writer failed: {e}")))),
            }
        }
    }
}

// --- sending side ---

fn scan_loop(
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

/// What the scanner decided to send.
#[derive(Debug, Clone, PartialEq)]
struct Planned {
    path: String,
    seq: u64,
    seen: u64,
    time_ns: i64,
    what: PlanOp,
}

#[derive(Debug, Clone, PartialEq)]
enum PlanOp {
    File,
    Mkdir(Attrs),
    Symlink,
    Delete,
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

/// Compares a fresh scan with the synced state, records what will be sent, and returns it in
/// sending order (deletions deepest first, then creations parents first).
fn plan_changes(
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

    let mut creates = Vec::new();
    let mut unstable = HashMap::new();
    for (p, cur) in &found {
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
                .unwrap_or_else(std::time::Instant::now);
            if cur.size >= SMALL_FILE || since.elapsed() < MAX_DEFER {
                unstable.insert(p.clone(), since);
                continue;
            }
        }
        creates.push(p.clone());
    }
    ms.unstable_since = unstable;
    let mut deletes: Vec<String> = ms
        .entries
        .iter()
        .filter(|(p, e)| {
            e.meta.is_some()
                && e.touched <= start
                && !found.contains_key(*p)
                && !report.incomplete.iter().any(|x| is_under(p, x))
        })
        .map(|(p, _)| p.clone())
        .collect();
    deletes.sort_unstable_by(|a, b| b.cmp(a));
    creates.sort_unstable();

    let mut plan = Vec::with_capacity(deletes.len() + creates.len());
    for p in deletes {
        let seq = *next_seq;
        *next_seq += 1;
        let e = ms.entries.get_mut(&p).expect("listed above");
        e.meta = None;
        e.last_sent = seq;
        e.sent_time = now;
        plan.push(Planned {
            path: p,
            seq,
            seen: *seen,
            time_ns: now,
            what: PlanOp::Delete,
        });
    }
    for p in creates {
        let cur = found[&p];
        let seq = *next_seq;
        *next_seq += 1;
        let (time_ns, what) = match cur.kind {
            Kind::Dir => (now, PlanOp::Mkdir(cur.attrs())),
            Kind::Symlink => (cur.mtime_ns, PlanOp::Symlink),
            _ => (cur.mtime_ns, PlanOp::File),
        };
        let e = ms.entries.entry(p.clone()).or_insert(Entry {
            meta: None,
            last_sent: 0,
            sent_time: 0,
            touched: 0,
        });
        e.meta = Some(cur);
        e.last_sent = seq;
        e.sent_time = time_ns;
        plan.push(Planned {
            path: p,
            seq,
            seen: *seen,
            time_ns,
            what,
        });
    }
    let mut prev = found;
    for (p, e) in &ms.entries {
        if e.touched > start {
            prev.remove(p);
        }
    }
    ms.prev = prev;
    plan
}

fn send_planned(sh: &Shared, i: usize, p: Planned, out: &Outbox) -> bool {
    let cfg = &sh.cfg[i];
    let change = |time_ns: i64, op: Op| {
        Frame::Msg(Msg::Change(Change {
            mount: i as u32,
            path: p.path.clone(),
            seq: p.seq,
            seen: p.seen,
            time_ns,
            op,
        }))
    };
    let frame = match &p.what {
        PlanOp::Delete => change(p.time_ns, Op::Delete),
        PlanOp::Mkdir(a) => change(p.time_ns, Op::Mkdir { attrs: *a }),
        PlanOp::Symlink => {
            let (parent, name) = split_rel(&p.path);
            let target = cfg
                .root
                .open_dir(parent, None)
                .and_then(|d| readlinkat(d.as_fd(), &cstring(name)?));
            match target.map(String::from_utf8) {
                Ok(Ok(t)) => change(p.time_ns, Op::Symlink { target: t }),
                Ok(Err(_)) => {
                    debug!("volume sync: symlink {} has a non-UTF-8 target", p.path);
                    return true;
                }
                Err(e) if is_absent(&e) || e.raw_os_error() == Some(libc::EINVAL) => {
                    change(now_ns(), Op::Delete)
                }
                Err(e) => {
                    warn!("volume sync: cannot read symlink {}: {e}", p.path);
                    return true;
                }
            }
        }
        PlanOp::File => return send_file(cfg, &p, i, out, sh),
    };
    debug!("volume sync: send {:?} {}", p.what, p.path);
    out.blocking_send(frame).is_ok()
}

fn send_file(cfg: &MountCfg, p: &Planned, i: usize, out: &Outbox, sh: &Shared) -> bool {
    let msg = |time_ns: i64, op: Op| {
        Frame::Msg(Msg::Change(Change {
            mount: i as u32,
            path: p.path.clone(),
            seq: p.seq,
            seen: p.seen,
            time_ns,
            op,
        }))
    };
    let opened = cfg.root.open_read(&p.path).and_then(|f| {
        let m = fstat(f.as_fd())?;
        Ok((f, m))
    });
    let (mut f, m) = match opened {
        Ok((f, m)) if m.kind == Kind::File => (f, m),
        Ok(_) => return true, // replaced by something else; the next scan sees it
        Err(e) if is_absent(&e) => return out.blocking_send(msg(now_ns(), Op::Delete)).is_ok(),
        Err(e) => {
            warn!("volume sync: cannot read {}: {e}", p.path);
            return true;
        }
    };
    debug!("volume sync: send file {} ({} bytes)", p.path, m.size);
    if out
        .blocking_send(msg(
            m.mtime_ns,
            Op::File {
                size: m.size,
                attrs: m.attrs(),
            },
        ))
        .is_err()
    {
        return false;
    }
    let mut left = m.size;
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

// --- receiving side ---

fn apply_loop(sh: &Shared, out: &Outbox, mut rx: mpsc::Receiver<Frame>) -> Result<(), FsSyncError> {
    let r = apply_frames(sh, out, &mut rx);
    if let Some(f) = r.as_ref().err().and_then(error_frame) {
        let _ = out.blocking_send(f);
    }
    r
}

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

fn record(st: &mut State, i: usize, rel: &str, meta: Option<Meta>) {
    st.epoch += 1;
    let epoch = st.epoch;
    let e = st.mounts[i]
        .entries
        .entry(rel.to_string())
        .or_insert(Entry {
            meta: None,
            last_sent: 0,
            sent_time: 0,
            touched: 0,
        });
    e.meta = meta;
    e.touched = epoch;
}

fn record_created(st: &mut State, i: usize, dir: &Root, created: &[String]) {
    for d in created {
        let m = dir.stat(d).ok().flatten();
        record(st, i, d, m);
    }
}

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
    let mut refuse = if !cfg.accept {
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
            refuse = refuse.or(Some("symlink target leaves the mount"));
        }
    }
    if let Some(reason) = refuse {
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
        return Ok(());
    }
    let (parent, name) = split_rel(&c.path);
    let cname = cstring(name)?;
    if let Op::File { size, attrs } = &c.op {
        // Receive into a temporary file first, without holding the state lock.
        let dir = {
            let mut st = sh.lock();
            let mut created = Vec::new();
            let dir = cfg.root.open_dir(parent, Some(&mut created));
            record_created(&mut st, i, &cfg.root, &created);
            dir
        };
        let mut target = dir
            .and_then(|d| create_temp(d.as_fd()).map(|t| (d, t)))
            .map_err(|e| warn!("volume sync: cannot write {:?}: {e}", c.path))
            .ok();
        let complete = receive_data(rx, *size, target.as_mut().map(|(_, (_, f))| f), &c.path);
        let Some((dir, (tmp, file))) = target else {
            complete?;
            note_seen(&mut sh.lock(), &c);
            return Ok(());
        };
        let complete = complete.inspect_err(|_| {
            let _ = unlinkat(dir.as_fd(), &tmp, 0);
        })?;
        let finished = complete
            && set_fd_attrs(file.as_fd(), Kind::File, *attrs, sh.chown)
                .and_then(|()| set_fd_mtime(file.as_fd(), c.time_ns))
                .map_err(|e| warn!("volume sync: attributes of {:?}: {e}", c.path))
                .is_ok();
        drop(file);
        let mut st = sh.lock();
        let installed = finished
            && lstat_at(dir.as_fd(), &cname)
                .and_then(|local| {
                    if !wins(sh, &st, i, &c, local.as_ref()) {
                        return Ok(false);
                    }
                    install_at(dir.as_fd(), &tmp, &cname)?;
                    record(&mut st, i, &c.path, lstat_at(dir.as_fd(), &cname)?);
                    Ok(true)
                })
                .unwrap_or_else(|e| {
                    warn!("volume sync: cannot install {:?}: {e}", c.path);
                    false
                });
        if !installed {
            let _ = unlinkat(dir.as_fd(), &tmp, 0);
        }
        note_seen(&mut st, &c);
        return Ok(());
    }

    let mut st = sh.lock();
    let mut created = Vec::new();
    let create = !matches!(c.op, Op::Delete);
    let dir = cfg.root.open_dir(parent, create.then_some(&mut created));
    record_created(&mut st, i, &cfg.root, &created);
    let result = dir.and_then(|dir| {
        let dir = dir.as_fd();
        let local = lstat_at(dir, &cname)?;
        if !wins(sh, &st, i, &c, local.as_ref()) {
            return Ok(());
        }
        match &c.op {
            Op::Mkdir { attrs } => make_dir(dir, &cname, local.as_ref(), *attrs, sh.chown)?,
            Op::Symlink { target } => {
                let tmp = create_temp_symlink(dir, &cstring(target)?)?;
                install_at(dir, &tmp, &cname).inspect_err(|_| {
                    let _ = unlinkat(dir, &tmp, 0);
                })?;
                let _ = set_link_mtime(dir, &cname, c.time_ns);
            }
            Op::Delete => {
                let r = match local.map(|m| m.kind) {
                    None => Ok(()),
                    Some(Kind::Dir) => unlinkat(dir, &cname, libc::AT_REMOVEDIR),
                    Some(_) => unlinkat(dir, &cname, 0),
                };
                match r {
                    // Local files the peer has not seen yet keep the directory; it is recorded
                    // as absent on the peer, so it is sent back with them.
                    Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {}
                    other => other?,
                }
            }
            Op::File { .. } => unreachable!("handled above"),
        }
        let m = lstat_at(dir, &cname)?;
        record(
            &mut st,
            i,
            &c.path,
            if matches!(c.op, Op::Delete) { None } else { m },
        );
        Ok(())
    });
    match result {
        Ok(()) => debug!("volume sync: applied {:?} {}", c.op, c.path),
        Err(e) if matches!(c.op, Op::Delete) && is_absent(&e) => record(&mut st, i, &c.path, None),
        Err(e) => warn!("volume sync: cannot apply {:?} to {:?}: {e}", c.op, c.path),
    }
    note_seen(&mut st, &c);
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
    use std::time::Instant;

    /// Deterministic xorshift PRNG for the fuzz-ish tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn sample_msgs() -> Vec<Msg> {
        vec![
            Msg::Hello {
                proto: PROTO_VERSION,
                mounts: vec![Mount {
                    path: "/data".into(),
                    read_only: true,
                }],
            },
            Msg::Subscribe { mounts: vec![] },
            Msg::TarBegin {
                mount: 3,
                root: Some(Attrs {
                    mode: 0o755,
                    uid: 1,
                    gid: 2,
                }),
            },
            Msg::TarEnd { mount: 3 },
            Msg::Change(Change {
                mount: 0,
                path: "a/b \"c\"/\u{e9}".into(),
                seq: 7,
                seen: 5,
                time_ns: -12,
                op: Op::File {
                    size: 10,
                    attrs: Attrs::default(),
                },
            }),
            Msg::Change(Change {
                mount: 1,
                path: "x".into(),
                seq: 1,
                seen: 0,
                time_ns: 1,
                op: Op::Symlink {
                    target: "../y".into(),
                },
            }),
            Msg::Change(Change {
                mount: 1,
                path: "x".into(),
                seq: 2,
                seen: 0,
                time_ns: 1,
                op: Op::Delete,
            }),
            Msg::Abort,
            Msg::Refused {
                mount: 0,
                path: "p".into(),
                reason: "read-only".into(),
            },
            Msg::Error {
                message: "boom".into(),
            },
        ]
    }

    #[tokio::test]
    async fn frames_round_trip_sync_and_async() {
        let mut frames: Vec<Frame> = sample_msgs().into_iter().map(Frame::Msg).collect();
        frames.push(Frame::Data(vec![]));
        frames.push(Frame::Data((0..=255u8).collect()));
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(encode_frame(f));
        }
        // Incremental decoding: a prefix is "need more", never an error.
        let mut off = 0;
        let mut decoded = Vec::new();
        while off < wire.len() {
            assert!(decode_frame(&wire[off..off + 3.min(wire.len() - off)])
                .unwrap()
                .is_none());
            let (f, used) = decode_frame(&wire[off..]).unwrap().unwrap();
            decoded.push(f);
            off += used;
        }
        assert_eq!(decoded, frames);
        // The async reader, through the async writer.
        let mut buf = Vec::new();
        for f in &frames {
            write_frame(&mut buf, f).await.unwrap();
        }
        assert_eq!(buf, wire);
        let mut r = &wire[..];
        let mut got = Vec::new();
        while let Some(f) = read_frame(&mut r).await.unwrap() {
            got.push(f);
        }
        assert_eq!(got, frames);
    }

    #[tokio::test]
    async fn garbage_frames_are_errors_not_panics() {
        assert!(matches!(
            decode_frame(&[9, 0, 0, 0, 0]),
            Err(FsSyncError::Protocol(_))
        ));
        assert!(matches!(
            decode_frame(&[1, 0xff, 0xff, 0xff, 0xff]),
            Err(FsSyncError::Protocol(_))
        ));
        assert!(matches!(
            decode_frame(&[1, 0, 0, 0, 2, b'{', b'}']),
            Err(FsSyncError::Protocol(_))
        ));
        // A frame cut short is an i/o error for the stream reader.
        let mut r: &[u8] = &[2, 0, 0, 0, 9, 1, 2];
        assert!(matches!(read_frame(&mut r).await, Err(FsSyncError::Io(_))));

        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let valid: Vec<u8> = sample_msgs()
            .iter()
            .flat_map(|m| encode_frame(&Frame::Msg(m.clone())))
            .collect();
        let mut errors = 0;
        for round in 0..3000 {
            let input = if round % 2 == 0 {
                let n = (rng.next() % 600) as usize;
                rng.bytes(n)
            } else {
                // Valid frames with a few bytes flipped.
                let mut v = valid.clone();
                for _ in 0..1 + rng.next() % 4 {
                    let i = (rng.next() as usize) % v.len();
                    v[i] ^= (rng.next() as u8) | 1;
                }
                v
            };
            let mut off = 0;
            loop {
                match decode_frame(&input[off..]) {
                    Ok(Some((_, used))) => off += used,
                    Ok(None) => break,
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            let mut r = &input[..];
            while let Ok(Some(_)) = read_frame(&mut r).await {}
        }
        assert!(
            errors > 1000,
            "random input should mostly be rejected ({errors})"
        );
    }

    #[test]
    fn relative_paths_and_symlink_targets() {
        for ok in [
            "a",
            "a/b",
            "a b/\u{e9}t\u{e9}",
            ".hidden",
            "a/..b",
            "...",
            "a/b.",
        ] {
            assert!(check_rel(ok).is_ok(), "{ok}");
        }
        let long = "x/".repeat(3000) + "y";
        for bad in [
            "",
            "/etc/x",
            "../x",
            "a/../../x",
            "a/./b",
            ".",
            "a//b",
            "a/",
            "a\0b",
            long.as_str(),
        ] {
            assert!(
                matches!(check_rel(bad), Err(FsSyncError::Hostile(_))),
                "{bad:?}"
            );
        }
        assert!(symlink_stays_inside("a", "b"));
        assert!(symlink_stays_inside("a", "."));
        assert!(symlink_stays_inside("d/a", "../b"));
        assert!(symlink_stays_inside("d/a", ".."));
        assert!(symlink_stays_inside("d/e/a", "../../x/../y"));
        assert!(!symlink_stays_inside("a", ".."));
        assert!(!symlink_stays_inside("a", "../a"));
        assert!(!symlink_stays_inside("d/a", "../../x"));
        assert!(!symlink_stays_inside("d/a", "x/../../.."));
        assert!(!symlink_stays_inside("a", "/etc/passwd"));
        assert!(!symlink_stays_inside("a", ""));
        assert_eq!(split_rel("a/b/c"), ("a/b", "c"));
        assert_eq!(split_rel("c"), ("", "c"));
        assert!(is_under("a/b", "a") && is_under("a", "a") && !is_under("ab", "a"));
    }

    #[test]
    fn nested_mounts_are_excluded_from_their_parent() {
        let m = |p: &str| Mount {
            path: p.into(),
            read_only: false,
        };
        let mounts = vec![
            m("/data"),
            m("/data/cache"),
            m("/database"),
            m("/data/x/y/"),
        ];
        let ex = nested_excludes(&mounts, 0);
        assert_eq!(ex, ["cache", "x/y"].iter().map(|s| s.to_string()).collect());
        assert!(nested_excludes(&mounts, 1).is_empty());
        assert!(nested_excludes(&mounts, 2).is_empty());
        assert!(excluded("cache/f", &ex) && !excluded("cachet", &ex));
    }

    #[test]
    fn root_never_follows_symlinks_below_it() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        let dir = tempfile::tempdir().unwrap();
        symlink(outside.path(), dir.path().join("esc")).unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::fs::write(dir.path().join("real/f"), "f").unwrap();
        let root = Root::open(dir.path()).unwrap();

        let mut created = Vec::new();
        assert!(root.open_dir("esc", Some(&mut created)).is_err());
        assert!(root.open_dir("esc/deeper", Some(&mut created)).is_err());
        assert!(created.is_empty());
        assert!(root.open_read("esc/secret").is_err());
        assert!(root.open_read("esc").is_err());
        assert_eq!(root.stat("esc/secret").unwrap(), None);
        assert_eq!(root.stat("esc").unwrap().unwrap().kind, Kind::Symlink);
        assert!(root.open_read("real/f").is_ok());

        // Missing parents are created (and reported), never through a symlink.
        root.open_dir("n1/n2", Some(&mut created)).unwrap();
        assert_eq!(created, vec!["n1".to_string(), "n1/n2".to_string()]);

        // remove_all_at deletes the link, not what it points at.
        remove_all_at(root.fd(), &cstring("esc").unwrap()).unwrap();
        assert!(outside.path().join("secret").exists());
        assert!(!dir.path().join("esc").exists());
    }

    #[test]
    fn scan_sees_kinds_and_skips_temp_and_excluded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("d/e")).unwrap();
        std::fs::write(p.join("d/e/f"), "hello").unwrap();
        std::fs::write(p.join("empty"), "").unwrap();
        symlink("d/e/f", p.join("l")).unwrap();
        std::fs::write(p.join(format!("{TEMP_PREFIX}x")), "tmp").unwrap();
        std::fs::create_dir(p.join("nested")).unwrap();
        std::fs::write(p.join("nested/inner"), "i").unwrap();
        std::fs::set_permissions(p.join("empty"), std::fs::Permissions::from_mode(0o640)).unwrap();
        let root = Root::open(p).unwrap();
        let ex: HashSet<String> = ["nested".to_string()].into();
        let (m, report) = scan(&root, &ex).unwrap();
        let mut keys: Vec<&str> = m.keys().map(|s| s.as_str()).collect();
        keys.sort();
        assert_eq!(keys, ["d", "d/e", "d/e/f", "empty", "l"]);
        assert_eq!(m["d"].kind, Kind::Dir);
        assert_eq!(m["d/e/f"].kind, Kind::File);
        assert_eq!(m["d/e/f"].size, 5);
        assert_eq!(m["l"].kind, Kind::Symlink);
        assert_eq!(m["empty"].mode, 0o640);
        let md = std::fs::symlink_metadata(p.join("d/e/f")).unwrap();
        assert_eq!(m["d/e/f"].ino, md.ino());
        assert_eq!(
            m["d/e/f"].mtime_ns,
            md.mtime() * 1_000_000_000 + md.mtime_nsec()
        );
        assert!(report.incomplete.is_empty());
    }

    fn state_with(baseline: HashMap<String, Meta>) -> State {
        State {
            mounts: vec![MountState {
                entries: baseline
                    .iter()
                    .map(|(p, m)| {
                        (
                            p.clone(),
                            Entry {
                                meta: Some(*m),
                                last_sent: 0,
                                sent_time: 0,
                                touched: 0,
                            },
                        )
                    })
                    .collect(),
                prev: baseline,
                unstable_since: HashMap::new(),
            }],
            next_seq: 1,
            seen: 0,
            peer_seen: 0,
            epoch: 0,
        }
    }

    #[test]
    fn plan_waits_for_stable_files_orders_and_skips_touched() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir(p.join("old")).unwrap();
        std::fs::write(p.join("old/f"), "1").unwrap();
        let root = Root::open(p).unwrap();
        let none = HashSet::new();
        let (base, rep) = scan(&root, &none).unwrap();
        let mut st = state_with(base);
        assert!(plan_changes(&mut st, 0, scan(&root, &none).unwrap().0, &rep, 0, false).is_empty());

        // A new directory goes at once; a new file only once it looked the same twice.
        std::fs::create_dir(p.join("new")).unwrap();
        std::fs::write(p.join("new/g"), "22").unwrap();
        let plan = plan_changes(&mut st, 0, scan(&root, &none).unwrap().0, &rep, 0, false);
        let what: Vec<(&str, &PlanOp)> = plan.iter().map(|x| (x.path.as_str(), &x.what)).collect();
        assert_eq!(what.len(), 1);
        assert_eq!(what[0].0, "new");
        let plan = plan_changes(&mut st, 0, scan(&root, &none).unwrap().0, &rep, 0, false);
        assert_eq!(plan.len(), 1);
        assert_eq!(
            (plan[0].path.as_str(), &plan[0].what),
            ("new/g", &PlanOp::File)
        );
        assert_eq!(plan[0].seq, 2);
        // Nothing more once sent.
        assert!(plan_changes(&mut st, 0, scan(&root, &none).unwrap().0, &rep, 0, false).is_empty());

        // A file that keeps growing is not sent; force (final flush) sends it anyway.
        std::fs::write(p.join("new/g"), "333").unwrap();
        assert!(plan_changes(&mut st, 0, scan(&root, &none).unwrap().0, &rep, 0, false).is_empty());
        std::fs::write(p.join("new/g"), "4444").unwrap();
        assert!(plan_changes(&mut st, 0, scan(&root, &none).unwrap().0, &rep, 0, false).is_empty());
        let plan = plan_changes(&mut st, 0, scan(&root, &none).unwrap().0, &rep, 0, true);
        assert_eq!(plan.len(), 1);

        // A small file that changes at every poll still goes out after MAX_DEFER.
        let t = std::time::Instant::now();
        let mut sent = false;
        for n in 0.. {
            std::fs::write(p.join("new/log"), "x".repeat(n + 1)).unwrap();
            let plan = plan_changes(&mut st, 0, scan(&root, &none).unwrap().0, &rep, 0, false);
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
        // A large file that keeps changing waits until it settles, however long that takes.
        let big = vec![7u8; SMALL_FILE as usize];
        let t = std::time::Instant::now();
        for n in 0.. {
            let mut body = big.clone();
            body.extend(std::iter::repeat_n(1u8, n));
            std::fs::write(p.join("new/big"), body).unwrap();
            let plan = plan_changes(&mut st, 0, scan(&root, &none).unwrap().0, &rep, 0, false);
            assert!(
                plan.iter().all(|x| x.path != "new/big"),
                "sent while changing"
            );
            if t.elapsed() > MAX_DEFER * 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let plan = plan_changes(&mut st, 0, scan(&root, &none).unwrap().0, &rep, 0, false);
        assert!(
            plan.iter().any(|x| x.path == "new/big"),
            "sent once settled"
        );

        // Deletions: children before parents, before creations.
        std::fs::remove_dir_all(p.join("old")).unwrap();
        std::fs::create_dir(p.join("z")).unwrap();
        let plan = plan_changes(&mut st, 0, scan(&root, &none).unwrap().0, &rep, 0, false);
        let what: Vec<(&str, &PlanOp)> = plan.iter().map(|x| (x.path.as_str(), &x.what)).collect();
        assert_eq!(what[0], ("old/f", &PlanOp::Delete));
        assert_eq!(what[1], ("old", &PlanOp::Delete));
        assert_eq!(what[2].0, "z");

        // No deletions inferred below a subtree the walk could not read.
        std::fs::remove_dir_all(p.join("new")).unwrap();
        let partial = WalkReport {
            incomplete: vec!["new".into()],
            skipped: 0,
        };
        assert!(plan_changes(
            &mut st,
            0,
            scan(&root, &none).unwrap().0,
            &partial,
            0,
            false
        )
        .is_empty());

        // Paths the applier touched after the scan started are left alone.
        std::fs::write(p.join("t"), "t").unwrap();
        st.epoch = 5;
        st.mounts[0].entries.insert(
            "t".into(),
            Entry {
                meta: None,
                last_sent: 0,
                sent_time: 0,
                touched: 5,
            },
        );
        for _ in 0..3 {
            let plan = plan_changes(&mut st, 0, scan(&root, &none).unwrap().0, &rep, 4, false);
            assert!(plan.iter().all(|x| x.path != "t"), "{plan:?}");
        }
    }

    fn copy_tree(from: &Path, to: &Path) {
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let t = to.join(e.file_name());
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                std::fs::create_dir(&t).unwrap();
                copy_tree(&e.path(), &t);
            } else if ft.is_symlink() {
                symlink(std::fs::read_link(e.path()).unwrap(), &t).unwrap();
            } else {
                std::fs::copy(e.path(), &t).unwrap();
            }
        }
    }

    fn live_mount(p: &Path) -> LiveMount {
        let root = Root::open(p).unwrap();
        let baseline = scan(&root, &HashSet::new()).unwrap().0;
        LiveMount {
            root,
            send: true,
            accept: true,
            excludes: HashSet::new(),
            baseline,
        }
    }

    async fn eventually(what: &str, mut f: impl FnMut() -> bool) -> Duration {
        let t = Instant::now();
        while !f() {
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "not within 2 s: {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        t.elapsed()
    }

    fn set_mtime(p: &Path, secs: u64) {
        let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        f.set_modified(UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap();
    }

    /// Both engines over an in-memory stream: propagation both ways, no echo, and a conflict
    /// settled by the later mtime on both sides.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_engines_converge_without_echo() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::create_dir(a.path().join("d")).unwrap();
        std::fs::write(a.path().join("d/f"), "v1").unwrap();
        std::fs::write(a.path().join("c"), "base").unwrap();
        copy_tree(a.path(), b.path());

        let (sa, sb) = tokio::io::duplex(1 << 20);
        let opts = |is_agent| LiveOptions {
            is_agent,
            poll: Duration::from_millis(50),
        };
        let (ra, wa) = tokio::io::split(sa);
        let (rb, wb) = tokio::io::split(sb);
        let (oa, ta) = spawn_writer(wa);
        let (ob, tb) = spawn_writer(wb);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let agent = tokio::spawn(run_live(
            ra,
            oa,
            ta,
            vec![live_mount(a.path())],
            opts(true),
            std::future::pending(),
        ));
        let client = tokio::spawn(run_live(
            rb,
            ob,
            tb,
            vec![live_mount(b.path())],
            opts(false),
            async move {
                let _ = stop_rx.await;
            },
        ));

        std::fs::write(a.path().join("d/new"), "from a").unwrap();
        eventually("a → b", || {
            std::fs::read(b.path().join("d/new")).ok().as_deref() == Some(&b"from a"[..])
        })
        .await;
        std::fs::write(b.path().join("d/f"), "v2 from b").unwrap();
        eventually("b → a", || {
            std::fs::read(a.path().join("d/f")).ok().as_deref() == Some(&b"v2 from b"[..])
        })
        .await;
        std::fs::create_dir_all(b.path().join("x/y")).unwrap();
        symlink("../../d/f", b.path().join("x/y/l")).unwrap();
        eventually("symlink b → a", || {
            std::fs::read_link(a.path().join("x/y/l")).ok() == Some(PathBuf::from("../../d/f"))
        })
        .await;

        // No echo: the originals keep their inode (an applied echo would rename over them).
        let ino_a = std::fs::metadata(a.path().join("d/new")).unwrap().ino();
        let ino_b = std::fs::metadata(b.path().join("d/f")).unwrap().ino();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            std::fs::metadata(a.path().join("d/new")).unwrap().ino(),
            ino_a
        );
        assert_eq!(
            std::fs::metadata(b.path().join("d/f")).unwrap().ino(),
            ino_b
        );

        // Conflict: both change `c` before either sees the other's; the later mtime wins.
        std::fs::write(a.path().join("c"), "a wins").unwrap();
        set_mtime(&a.path().join("c"), 2_000_000_000);
        std::fs::write(b.path().join("c"), "b loses").unwrap();
        set_mtime(&b.path().join("c"), 1_900_000_000);
        eventually("conflict settled", || {
            std::fs::read(a.path().join("c")).ok().as_deref() == Some(&b"a wins"[..])
                && std::fs::read(b.path().join("c")).ok().as_deref() == Some(&b"a wins"[..])
        })
        .await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(std::fs::read(b.path().join("c")).unwrap(), b"a wins");

        // Delete and rename.
        std::fs::rename(a.path().join("d/new"), a.path().join("renamed")).unwrap();
        std::fs::remove_file(b.path().join("x/y/l")).unwrap();
        eventually("rename a → b", || {
            !b.path().join("d/new").exists()
                && std::fs::read(b.path().join("renamed")).ok().as_deref() == Some(&b"from a"[..])
        })
        .await;
        eventually("delete b → a", || {
            std::fs::symlink_metadata(a.path().join("x/y/l")).is_err()
        })
        .await;

        // A file written just before shutdown still goes out with the final flush.
        std::fs::write(b.path().join("last"), "bye").unwrap();
        stop_tx.send(()).unwrap();
        client.await.unwrap().unwrap();
        agent.await.unwrap().unwrap();
        assert_eq!(std::fs::read(a.path().join("last")).unwrap(), b"bye");
    }
}
