//! Client end of the volume sync (protocol in [`fssync`]): [`sync`] runs in our sync
//! container, where each remote mount of the intercepted container has a local directory (a
//! Docker volume that the handler container also mounts). It subscribes to the agent's mounts,
//! unpacks the initial tar of each into its directory — confined: absolute paths and `..` are
//! refused as hostile, symlinks leaving the mount and hard links are skipped, nothing is ever
//! written through a symlink — makes the directory an exact mirror, reports `ready`, then keeps
//! both sides in sync. Read-only mounts are never sent back.

use fssync::{
    self, check_rel, cstring, excluded, has_temp_component, nested_excludes, read_frame, run_live,
    split_rel, symlink_stays_inside, Attrs, Frame, FsSyncError, Kind, LiveMount, LiveOptions,
    Mount, Msg, Outbox, Root, CHUNK, PROTO_VERSION,
};
use std::collections::HashSet;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// One remote mount and where it is mirrored locally. The remote path must be a directory;
/// others are reported in [`SyncStats::unavailable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMount {
    /// Absolute path of the mount in the intercepted container.
    pub remote_path: String,
    /// Local directory that mirrors it (created if missing).
    pub local_dir: PathBuf,
    /// Never send local changes back (the workload's read-only mounts are read-only anyway).
    pub read_only: bool,
}

/// What the initial transfer brought (sent on `ready`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub mounts: usize,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// File content bytes.
    pub bytes: u64,
    /// Entries not created: symlinks leaving their mount, hard links, special files.
    pub refused: u64,
    /// Local entries removed because the remote side does not have them.
    pub removed: u64,
    /// Requested remote paths the agent does not serve (missing there, or not a directory:
    /// single-file mounts are not synced); their local directories are left alone.
    pub unavailable: Vec<String>,
    /// From the call to [`sync`] until everything was on disk.
    pub elapsed: Duration,
}

/// Tuning of [`sync_with`].
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// How often local directories are polled for changes.
    pub poll: Duration,
    /// How long the agent may take to say hello.
    pub handshake_timeout: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            poll: fssync::POLL_INTERVAL,
            handshake_timeout: Duration::from_secs(60),
        }
    }
}

/// Mirrors the remote `mounts` into their local directories; `ready` fires once every mount's
/// initial content is completely on disk; then syncs both ways until the stream closes or
/// `shutdown` resolves (pending local changes are sent first).
pub async fn sync<S>(
    stream: S,
    mounts: Vec<LocalMount>,
    ready: oneshot::Sender<SyncStats>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    sync_with(stream, mounts, ready, shutdown, SyncOptions::default())
        .await
        .map_err(io::Error::from)
}

/// [`sync`] with explicit options.
pub async fn sync_with<S>(
    stream: S,
    mounts: Vec<LocalMount>,
    ready: oneshot::Sender<SyncStats>,
    shutdown: impl Future<Output = ()>,
    opts: SyncOptions,
) -> Result<(), FsSyncError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let started = Instant::now();
    let (r, w) = tokio::io::split(stream);
    let mut r = tokio::io::BufReader::with_capacity(CHUNK, r);
    let (out, writer) = fssync::spawn_writer(w);
    tokio::pin!(shutdown);
    let first = tokio::select! {
        res = initial(&mut r, &out, &mounts, &opts) => Some(res),
        _ = &mut shutdown => None,
    };
    let (live, mut stats) = match first {
        None => {
            drop(out);
            let _ = writer.await;
            return Ok(());
        }
        Some(Err(e)) => return Err(fssync::fail(out, writer, e).await),
        Some(Ok(x)) => x,
    };
    stats.elapsed = started.elapsed();
    info!(
        "volume sync: {} mount(s) ready in {:.3}s: {} files, {} dirs, {} symlinks, {} bytes, {} refused",
        stats.mounts,
        stats.elapsed.as_secs_f64(),
        stats.files,
        stats.dirs,
        stats.symlinks,
        stats.bytes,
        stats.refused
    );
    let _ = ready.send(stats);
    let live_opts = LiveOptions {
        is_agent: false,
        poll: opts.poll,
    };
    run_live(r, out, writer, live, live_opts, shutdown).await
}

fn closed() -> FsSyncError {
    FsSyncError::Io(io::Error::new(
        io::ErrorKind::BrokenPipe,
        "volume sync stream closed",
    ))
}

fn eof(what: &str) -> FsSyncError {
    FsSyncError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        what.to_string(),
    ))
}

fn unexpected(got: Frame, wanted: &str) -> FsSyncError {
    match got {
        Frame::Msg(Msg::Error { message }) => FsSyncError::Remote(message),
        Frame::Msg(m) => FsSyncError::Protocol(format!("expected {wanted}, got {}", m.name())),
        Frame::Data(_) => FsSyncError::Protocol(format!("expected {wanted}, got data")),
    }
}

fn task_failed(e: tokio::task::JoinError) -> FsSyncError {
    FsSyncError::Io(io::Error::other(format!("volume sync task failed: {e}")))
}

/// Handshake and initial transfer of every mount.
async fn initial<R: AsyncRead + Unpin>(
    r: &mut R,
    out: &Outbox,
    mounts: &[LocalMount],
    opts: &SyncOptions,
) -> Result<(Vec<LiveMount>, SyncStats), FsSyncError> {
    let offered = hello(r, opts).await?;
    let mut stats = SyncStats::default();
    let (chosen, wanted) = choose(mounts, &offered, &mut stats);
    stats.mounts = wanted.len();
    out.send(Frame::Msg(Msg::Subscribe {
        mounts: wanted.clone(),
    }))
    .await
    .map_err(|_| closed())?;
    let chown = fssync::can_chown();
    let mut live = Vec::with_capacity(chosen.len());
    for (i, lm) in chosen.into_iter().enumerate() {
        let (mount, counts) = receive_mount(r, i, lm, &wanted, chown).await?;
        stats.files += counts.files;
        stats.dirs += counts.dirs;
        stats.symlinks += counts.symlinks;
        stats.bytes += counts.bytes;
        stats.refused += counts.refused;
        stats.removed += counts.removed;
        live.push(mount);
    }
    Ok((live, stats))
}

/// Waits for the agent's hello; the mounts it offers.
async fn hello<R: AsyncRead + Unpin>(
    r: &mut R,
    opts: &SyncOptions,
) -> Result<Vec<Mount>, FsSyncError> {
    let hello = tokio::time::timeout(opts.handshake_timeout, read_frame(r))
        .await
        .map_err(|_| FsSyncError::Protocol("the agent did not say hello in time".into()))??;
    match hello {
        Some(Frame::Msg(Msg::Hello { proto, mounts })) => {
            if proto != PROTO_VERSION {
                return Err(FsSyncError::Protocol(format!(
                    "the agent speaks volume sync protocol {proto}, this client {PROTO_VERSION}"
                )));
            }
            Ok(mounts)
        }
        Some(other) => Err(unexpected(other, "hello")),
        None => Err(eof("the agent closed before saying hello")),
    }
}

/// The requested mounts the agent offers, with what to subscribe to (read-only when either
/// side says so); the others are recorded in `stats.unavailable`.
fn choose<'a>(
    mounts: &'a [LocalMount],
    offered: &[Mount],
    stats: &mut SyncStats,
) -> (Vec<&'a LocalMount>, Vec<Mount>) {
    let mut chosen: Vec<&LocalMount> = Vec::with_capacity(mounts.len());
    let mut wanted: Vec<Mount> = Vec::with_capacity(mounts.len());
    for l in mounts {
        match offered.iter().find(|o| o.path == l.remote_path) {
            Some(o) => {
                chosen.push(l);
                wanted.push(Mount {
                    path: o.path.clone(),
                    read_only: o.read_only || l.read_only,
                });
            }
            None => {
                warn!(
                    "volume sync: the agent does not serve {:?} (missing, or not a directory)",
                    l.remote_path
                );
                stats.unavailable.push(l.remote_path.clone());
            }
        }
    }
    (chosen, wanted)
}

/// Receives mount `i`'s tar into `lm.local_dir` (removing what the agent does not have): the
/// mount ready for live sync, and what was written.
async fn receive_mount<R: AsyncRead + Unpin>(
    r: &mut R,
    i: usize,
    lm: &LocalMount,
    wanted: &[Mount],
    chown: bool,
) -> Result<(LiveMount, Counts), FsSyncError> {
    std::fs::create_dir_all(&lm.local_dir)?;
    let root = Root::open(&lm.local_dir)?;
    let excludes = nested_excludes(wanted, i);
    let root_attrs = match read_frame(r).await? {
        Some(Frame::Msg(Msg::TarBegin { mount, root })) if mount as usize == i => root,
        Some(other) => return Err(unexpected(other, &format!("tar_begin of mount {i}"))),
        None => return Err(eof("the agent closed before sending the mount")),
    };
    if let Some(a) = root_attrs {
        if let Err(e) = root.set_root_attrs(a, chown) {
            warn!("volume sync: attributes of {}: {e}", lm.local_dir.display());
        }
    }
    let (tx, rx) = mpsc::channel::<Vec<u8>>(16);
    let ex = excludes.clone();
    let mut unpack = tokio::task::spawn_blocking(move || {
        let mut u = Unpacker::new(&root, chown, &ex);
        u.unpack(ChanReader::new(rx))?;
        u.finish_dirs();
        let removed = remove_extras(&root, &u.paths, &ex)?;
        let (baseline, _) = fssync::scan(&root, &ex)?;
        let mut counts = u.counts;
        counts.removed = removed;
        Ok::<_, FsSyncError>((root, baseline, counts))
    });
    let mut finished = None;
    loop {
        match read_frame(r).await? {
            Some(Frame::Data(d)) => {
                if finished.is_none() && tx.send(d).await.is_err() {
                    // The unpacker stopped early: an error, or the end of the archive.
                    let res = (&mut unpack).await.map_err(task_failed)?;
                    finished = Some(res?);
                }
            }
            Some(Frame::Msg(Msg::TarEnd { mount })) if mount as usize == i => break,
            Some(other) => return Err(unexpected(other, &format!("the tar of mount {i}"))),
            None => return Err(eof("the agent closed in the middle of a mount")),
        }
    }
    drop(tx);
    let (root, baseline, counts) = match finished {
        Some(x) => x,
        None => unpack.await.map_err(task_failed)??,
    };
    let mount = LiveMount {
        root,
        send: !wanted[i].read_only,
        accept: true,
        excludes,
        baseline,
    };
    Ok((mount, counts))
}

/// Blocking `Read` over the data frames of one tar.
struct ChanReader {
    rx: mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl ChanReader {
    fn new(rx: mpsc::Receiver<Vec<u8>>) -> ChanReader {
        ChanReader {
            rx,
            cur: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChanReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.cur.len() {
            match self.rx.blocking_recv() {
                Some(v) => {
                    self.cur = v;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    files: u64,
    dirs: u64,
    symlinks: u64,
    bytes: u64,
    refused: u64,
    removed: u64,
}

/// Largest GNU long-name / PAX extension entry accepted.
const MAX_EXTENSION: u64 = 64 * 1024;

/// Confined tar extraction into a mount root.
pub(crate) struct Unpacker<'a> {
    root: &'a Root,
    chown: bool,
    excludes: &'a HashSet<String>,
    /// The last directory written into (tar entries come grouped by directory).
    cache: Option<(String, OwnedFd)>,
    /// Directories whose attributes are applied at the end (deepest first).
    dirs: Vec<(String, Attrs, i64)>,
    /// Every path the archive created (anything else local is removed afterwards).
    paths: HashSet<String>,
    counts: Counts,
    buf: Vec<u8>,
}

impl<'a> Unpacker<'a> {
    pub(crate) fn new(root: &'a Root, chown: bool, excludes: &'a HashSet<String>) -> Self {
        Unpacker {
            root,
            chown,
            excludes,
            cache: None,
            dirs: Vec::new(),
            paths: HashSet::new(),
            counts: Counts::default(),
            buf: vec![0u8; CHUNK],
        }
    }

    /// Extracts every entry of the archive; a hostile path aborts with an error.
    pub(crate) fn unpack<R: Read>(&mut self, reader: R) -> Result<(), FsSyncError> {
        let mut ar = tar::Archive::new(reader);
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax_path: Option<Vec<u8>> = None;
        let mut pax_link: Option<Vec<u8>> = None;
        for entry in ar.entries()?.raw(true) {
            let mut entry = entry?;
            let et = entry.header().entry_type();
            if et.is_gnu_longname() {
                long_name = Some(read_extension(&mut entry)?);
                continue;
            }
            if et.is_gnu_longlink() {
                long_link = Some(read_extension(&mut entry)?);
                continue;
            }
            if et.is_pax_local_extensions() {
                let data = read_extension(&mut entry)?;
                for ext in tar::PaxExtensions::new(&data) {
                    let ext = ext?;
                    match ext.key() {
                        Ok("path") => pax_path = Some(ext.value_bytes().to_vec()),
                        Ok("linkpath") => pax_link = Some(ext.value_bytes().to_vec()),
                        _ => {}
                    }
                }
                continue;
            }
            if et.is_pax_global_extensions() {
                continue;
            }
            let path = long_name
                .take()
                .or(pax_path.take())
                .unwrap_or_else(|| entry.header().path_bytes().into_owned());
            let link = long_link.take().or(pax_link.take()).or_else(|| {
                entry
                    .header()
                    .link_name_bytes()
                    .map(std::borrow::Cow::into_owned)
            });
            let Some(rel) = tar_rel(&path)? else {
                continue; // the root itself
            };
            if excluded(&rel, self.excludes) || has_temp_component(&rel) {
                self.counts.refused += 1;
                continue;
            }
            let h = entry.header();
            let attrs = Attrs {
                mode: h.mode()?,
                uid: h.uid()? as u32,
                gid: h.gid()? as u32,
            };
            let mtime_ns = (h.mtime()?.min(i64::MAX as u64 / 1_000_000_000) as i64) * 1_000_000_000;
            match et {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    self.file(&rel, &mut entry, attrs, mtime_ns)?;
                }
                tar::EntryType::Directory => self.dir(&rel, attrs, mtime_ns)?,
                tar::EntryType::Symlink => self.symlink(&rel, link, attrs, mtime_ns)?,
                other => {
                    warn!("volume sync: skipping {rel:?} (tar entry type {other:?})");
                    self.counts.refused += 1;
                }
            }
        }
        Ok(())
    }

    /// The directory `parent`, from the cache or opened (creating missing directories).
    fn take_dir(&mut self, parent: &str) -> Result<OwnedFd, FsSyncError> {
        if let Some((p, fd)) = self.cache.take() {
            if p == parent {
                return Ok(fd);
            }
        }
        let mut created = Vec::new();
        let fd = self.root.open_dir(parent, Some(&mut created))?;
        self.paths.extend(created);
        Ok(fd)
    }

    fn file(
        &mut self,
        rel: &str,
        entry: &mut impl Read,
        attrs: Attrs,
        mtime_ns: i64,
    ) -> Result<(), FsSyncError> {
        let (parent, name) = split_rel(rel);
        let dir = self.take_dir(parent)?;
        let cname = cstring(name)?;
        let (mut file, tmp) = match fssync::openat(
            dir.as_fd(),
            &cname,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
        ) {
            Ok(fd) => (File::from(fd), None),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let (t, f) = fssync::create_temp(dir.as_fd())?;
                (f, Some(t))
            }
            Err(e) => return Err(e.into()),
        };
        let mut size = 0u64;
        let copied = (|| -> io::Result<()> {
            loop {
                let n = entry.read(&mut self.buf)?;
                if n == 0 {
                    break;
                }
                file.write_all(&self.buf[..n])?;
                size += n as u64;
            }
            fssync::set_fd_attrs(file.as_fd(), Kind::File, attrs, self.chown)?;
            fssync::set_fd_mtime(file.as_fd(), mtime_ns)
        })();
        drop(file);
        if let Err(e) = copied {
            let _ = fssync::unlinkat(dir.as_fd(), tmp.as_deref().unwrap_or(&cname), 0);
            return Err(e.into());
        }
        if let Some(t) = tmp {
            fssync::install_at(dir.as_fd(), &t, &cname).inspect_err(|_| {
                let _ = fssync::unlinkat(dir.as_fd(), &t, 0);
            })?;
        }
        self.cache = Some((parent.to_string(), dir));
        self.paths.insert(rel.to_string());
        self.counts.files += 1;
        self.counts.bytes += size;
        Ok(())
    }

    fn dir(&mut self, rel: &str, attrs: Attrs, mtime_ns: i64) -> Result<(), FsSyncError> {
        let (parent, name) = split_rel(rel);
        let dir = self.take_dir(parent)?;
        let cname = cstring(name)?;
        match fssync::mkdirat(dir.as_fd(), &cname, 0o700) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                match fssync::lstat_at(dir.as_fd(), &cname)? {
                    Some(m) if m.kind == Kind::Dir => {}
                    _ => {
                        fssync::remove_all_at(dir.as_fd(), &cname)?;
                        fssync::mkdirat(dir.as_fd(), &cname, 0o700)?;
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
        self.cache = Some((parent.to_string(), dir));
        self.dirs.push((rel.to_string(), attrs, mtime_ns));
        self.paths.insert(rel.to_string());
        self.counts.dirs += 1;
        Ok(())
    }

    fn symlink(
        &mut self,
        rel: &str,
        link: Option<Vec<u8>>,
        attrs: Attrs,
        mtime_ns: i64,
    ) -> Result<(), FsSyncError> {
        let Some(target) = link.and_then(|l| String::from_utf8(l).ok()) else {
            return Err(FsSyncError::Hostile(format!(
                "symlink {rel:?} without a usable target"
            )));
        };
        if !symlink_stays_inside(rel, &target) {
            warn!("volume sync: skipping symlink {rel:?} -> {target:?}: it leaves the mount");
            self.counts.refused += 1;
            return Ok(());
        }
        let (parent, name) = split_rel(rel);
        let dir = self.take_dir(parent)?;
        let cname = cstring(name)?;
        let ctarget = cstring(&target)?;
        match fssync::symlinkat(&ctarget, dir.as_fd(), &cname) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let t = fssync::create_temp_symlink(dir.as_fd(), &ctarget)?;
                fssync::install_at(dir.as_fd(), &t, &cname).inspect_err(|_| {
                    let _ = fssync::unlinkat(dir.as_fd(), &t, 0);
                })?;
            }
            Err(e) => return Err(e.into()),
        }
        if self.chown {
            let _ = fssync::set_link_owner(dir.as_fd(), &cname, attrs);
        }
        let _ = fssync::set_link_mtime(dir.as_fd(), &cname, mtime_ns);
        self.cache = Some((parent.to_string(), dir));
        self.paths.insert(rel.to_string());
        self.counts.symlinks += 1;
        Ok(())
    }

    /// Applies directory modes, owners and mtimes, deepest first (adding children moves a
    /// directory's mtime; a read-only mode would stop the extraction).
    pub(crate) fn finish_dirs(&mut self) {
        self.cache = None;
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_unstable_by(|a, b| b.0.cmp(&a.0));
        for (rel, attrs, mtime_ns) in dirs {
            let r = self.root.open_dir(&rel, None).and_then(|fd| {
                fssync::set_fd_attrs(fd.as_fd(), Kind::Dir, attrs, self.chown)?;
                fssync::set_fd_mtime(fd.as_fd(), mtime_ns)
            });
            if let Err(e) = r {
                warn!("volume sync: attributes of directory {rel:?}: {e}");
            }
        }
    }
}

/// Reads a GNU long-name/long-link or PAX extension entry (bounded), without trailing NULs.
fn read_extension(entry: &mut impl Read) -> Result<Vec<u8>, FsSyncError> {
    let mut v = Vec::new();
    entry.take(MAX_EXTENSION + 1).read_to_end(&mut v)?;
    if v.len() as u64 > MAX_EXTENSION {
        return Err(FsSyncError::Hostile("oversized tar extension entry".into()));
    }
    while v.last() == Some(&0) {
        v.pop();
    }
    Ok(v)
}

/// A tar path as a mount-relative path: `Ok(None)` for the root itself; absolute paths, `..`
/// and anything not UTF-8 are hostile.
fn tar_rel(raw: &[u8]) -> Result<Option<String>, FsSyncError> {
    let s = std::str::from_utf8(raw).map_err(|_| {
        FsSyncError::Hostile(format!("non-UTF-8 path {:?}", String::from_utf8_lossy(raw)))
    })?;
    if s.starts_with('/') {
        return Err(FsSyncError::Hostile(format!("absolute path {s:?}")));
    }
    let mut p = s.trim_end_matches('/');
    while let Some(rest) = p.strip_prefix("./") {
        p = rest;
    }
    if p.is_empty() || p == "." {
        return Ok(None);
    }
    check_rel(p)?;
    Ok(Some(p.to_string()))
}

/// Removes local entries the archive did not contain (the mirror is exact); returns how many
/// subtrees were removed.
fn remove_extras(
    root: &Root,
    keep: &HashSet<String>,
    excludes: &HashSet<String>,
) -> Result<u64, FsSyncError> {
    let (found, _) = fssync::scan(root, excludes)?;
    let mut extras: Vec<&String> = found.keys().filter(|p| !keep.contains(*p)).collect();
    extras.sort_unstable();
    let mut removed = 0u64;
    let mut last: Option<&str> = None;
    for p in extras {
        if last.is_some_and(|l| fssync::is_under(p, l)) {
            continue;
        }
        let (parent, name) = split_rel(p);
        let dir = match root.open_dir(parent, None) {
            Ok(d) => d,
            Err(e) if fssync::is_absent(&e) => continue,
            Err(e) => return Err(e.into()),
        };
        fssync::remove_all_at(dir.as_fd(), &cstring(name)?)?;
        last = Some(p);
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::tests::fs::{chmod, read, same_content, set_mtime, tree_diff, within, Rng};

    const TWO_S: Duration = Duration::from_secs(2);
    const EVERY_5MS: Duration = Duration::from_millis(5);
    use agent::fs::{serve_with, ServeOptions};
    use fssync::encode_frame;
    use std::os::unix::fs::{symlink, MetadataExt};
    use std::path::Path;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    const POLL: Duration = Duration::from_millis(100);

    struct Session {
        stats: SyncStats,
        stop: oneshot::Sender<()>,
        client: tokio::task::JoinHandle<Result<(), FsSyncError>>,
        agent: tokio::task::JoinHandle<Result<(), FsSyncError>>,
    }

    impl Session {
        async fn end(self) {
            let _ = self.stop.send(());
            self.client.await.unwrap().unwrap();
            tokio::time::timeout(Duration::from_secs(5), self.agent)
                .await
                .expect("agent ends when the client closes")
                .unwrap()
                .unwrap();
        }
    }

    /// Agent serving `served` and client mirroring `locals`, over a real TCP connection.
    async fn start(served: Vec<Mount>, locals: Vec<LocalMount>) -> Session {
        start_polling(served, locals, POLL).await
    }

    async fn start_polling(served: Vec<Mount>, locals: Vec<LocalMount>, poll: Duration) -> Session {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let agent = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            let o = ServeOptions {
                poll,
                handshake_timeout: Duration::from_secs(5),
            };
            serve_with(s, served, o).await
        });
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let o = SyncOptions {
            poll,
            handshake_timeout: Duration::from_secs(5),
        };
        let client = tokio::spawn(sync_with(
            s,
            locals,
            ready_tx,
            async move {
                let _ = stop_rx.await;
            },
            o,
        ));
        let stats = match tokio::time::timeout(Duration::from_secs(120), ready_rx).await {
            Ok(Ok(stats)) => stats,
            _ => panic!("not ready: {:?}", client.await),
        };
        Session {
            stats,
            stop,
            client,
            agent,
        }
    }

    fn mount(p: &Path, read_only: bool) -> Mount {
        Mount {
            path: p.to_str().unwrap().into(),
            read_only,
        }
    }

    fn local(remote: &Path, local: &Path, read_only: bool) -> LocalMount {
        LocalMount {
            remote_path: remote.to_str().unwrap().into(),
            local_dir: local.to_path_buf(),
            read_only,
        }
    }

    /// The agent-side tree of [`initial_mirror_then_live_sync_both_ways`]: files of every
    /// kind (empty, executable, private, unicode and long names), symlinks inside the mount and
    /// two leaving it, and fixed modification times.
    fn populate_remote(r: &Path) {
        std::fs::create_dir_all(r.join("d1/d2/d3")).unwrap();
        std::fs::write(r.join("d1/d2/d3/deep.txt"), "deep").unwrap();
        std::fs::write(r.join("empty"), "").unwrap();
        chmod(&r.join("empty"), 0o600);
        std::fs::write(r.join("exec.sh"), "#!/bin/sh\necho hi\n").unwrap();
        chmod(&r.join("exec.sh"), 0o755);
        std::fs::create_dir(r.join("private")).unwrap();
        std::fs::write(r.join("private/key"), "k").unwrap();
        chmod(&r.join("private"), 0o700);
        std::fs::write(r.join("naïve 文件.txt"), "unicode").unwrap();
        let long = format!("{}/{}", "l".repeat(150), "f".repeat(200));
        std::fs::create_dir(r.join("l".repeat(150))).unwrap();
        std::fs::write(r.join(&long), "long").unwrap();
        symlink("d1/d2/d3/deep.txt", r.join("link")).unwrap();
        symlink("d1", r.join("dirlink")).unwrap();
        symlink("..", r.join("d1/up")).unwrap();
        set_mtime(&r.join("exec.sh"), 1_500_000_000);
        // Refused: they leave the mount.
        symlink("/etc/passwd", r.join("abs")).unwrap();
        symlink("../../escape", r.join("d1/esc")).unwrap();
        // Directory mtimes last (adding entries moves them).
        for d in ["d1/d2/d3", "d1/d2", "private"] {
            set_mtime(&r.join(d), 1_600_000_000);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn initial_mirror_then_live_sync_both_ways() {
        let remote = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let localp = tempfile::tempdir().unwrap();
        let r = remote.path();
        populate_remote(r);

        // The local directory has leftovers, one of them a symlink leading outside.
        let lp = localp.path().join("vol");
        std::fs::create_dir(&lp).unwrap();
        std::fs::write(lp.join("stale"), "old").unwrap();
        symlink(outside.path(), lp.join("d1")).unwrap();

        let s = start(vec![mount(r, false)], vec![local(r, &lp, false)]).await;
        println!("initial mirror: {:?}", s.stats);
        assert_eq!(s.stats.refused, 2);
        assert_eq!(s.stats.symlinks, 3);
        assert_eq!(s.stats.files, 6);
        assert_eq!(s.stats.removed, 1); // `stale` (the `d1` symlink was replaced by the dir)
        assert!(std::fs::symlink_metadata(lp.join("abs")).is_err());
        assert!(std::fs::symlink_metadata(lp.join("d1/esc")).is_err());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // Same tree apart from the two refused links.
        std::fs::remove_file(r.join("abs")).unwrap();
        std::fs::remove_file(r.join("d1/esc")).unwrap();
        set_mtime(
            &r.join("d1"),
            std::fs::metadata(lp.join("d1")).unwrap().mtime() as u64,
        );
        let mut diff = Vec::new();
        tree_diff(r, &lp, "", &mut diff);
        assert!(diff.is_empty(), "{diff:?}");

        // Live: agent → client, client → agent.
        std::fs::write(r.join("d1/from-agent"), "a1").unwrap();
        let t1 = within("new file agent → client", TWO_S, EVERY_5MS, || {
            read(&lp.join("d1/from-agent")).as_deref() == Some(&b"a1"[..])
        })
        .await;
        std::fs::write(lp.join("from-client"), "c1").unwrap();
        let t2 = within("new file client → agent", TWO_S, EVERY_5MS, || {
            read(&r.join("from-client")).as_deref() == Some(&b"c1"[..])
        })
        .await;
        std::fs::write(lp.join("d1/d2/d3/deep.txt"), "changed by client").unwrap();
        let t3 = within("modification client → agent", TWO_S, EVERY_5MS, || {
            read(&r.join("d1/d2/d3/deep.txt")).as_deref() == Some(&b"changed by client"[..])
        })
        .await;
        std::fs::write(r.join("exec.sh"), "#!/bin/sh\necho v2\n").unwrap();
        let t4 = within("modification agent → client", TWO_S, EVERY_5MS, || {
            read(&lp.join("exec.sh")).as_deref() == Some(&b"#!/bin/sh\necho v2\n"[..])
        })
        .await;
        println!("latency: new a→c {t1:?}, new c→a {t2:?}, modify c→a {t3:?}, modify a→c {t4:?}");

        // Deletions and renames, directories included.
        std::fs::remove_file(r.join("empty")).unwrap();
        std::fs::rename(lp.join("private"), lp.join("secret")).unwrap();
        std::fs::create_dir_all(lp.join("n1/n2")).unwrap();
        std::fs::write(lp.join("n1/n2/f"), "nested").unwrap();
        std::fs::remove_file(r.join("link")).unwrap();
        symlink("exec.sh", r.join("link")).unwrap();
        within("delete a → c", TWO_S, EVERY_5MS, || {
            std::fs::symlink_metadata(lp.join("empty")).is_err()
        })
        .await;
        within("rename c → a", TWO_S, EVERY_5MS, || {
            !r.join("private").exists() && read(&r.join("secret/key")).as_deref() == Some(&b"k"[..])
        })
        .await;
        within("new tree c → a", TWO_S, EVERY_5MS, || {
            read(&r.join("n1/n2/f")).as_deref() == Some(&b"nested"[..])
        })
        .await;
        within("retargeted symlink a → c", TWO_S, EVERY_5MS, || {
            std::fs::read_link(lp.join("link")).ok() == Some("exec.sh".into())
        })
        .await;
        assert_eq!(
            std::fs::metadata(r.join("secret")).unwrap().mode() & 0o7777,
            0o700
        );
        s.end().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_only_mounts_are_never_sent_back() {
        let ro = tempfile::tempdir().unwrap();
        let asked_ro = tempfile::tempdir().unwrap();
        let rw = tempfile::tempdir().unwrap();
        let locals = tempfile::tempdir().unwrap();
        for d in [ro.path(), asked_ro.path(), rw.path()] {
            std::fs::write(d.join("f"), "remote").unwrap();
        }
        let (l1, l2, l3) = (
            locals.path().join("ro"),
            locals.path().join("asked"),
            locals.path().join("rw"),
        );
        let s = start(
            vec![
                mount(ro.path(), true),
                mount(asked_ro.path(), false),
                mount(rw.path(), false),
            ],
            vec![
                local(ro.path(), &l1, false),
                local(asked_ro.path(), &l2, true),
                local(rw.path(), &l3, false),
            ],
        )
        .await;
        for l in [&l1, &l2, &l3] {
            std::fs::write(l.join("f"), "local edit").unwrap();
            std::fs::write(l.join("new"), "local").unwrap();
        }
        within("rw mount still syncs", TWO_S, EVERY_5MS, || {
            read(&rw.path().join("new")).as_deref() == Some(&b"local"[..])
        })
        .await;
        tokio::time::sleep(POLL * 8).await;
        for d in [ro.path(), asked_ro.path()] {
            assert_eq!(read(&d.join("f")).unwrap(), b"remote");
            assert!(!d.join("new").exists());
        }
        // Remote changes of read-only mounts still arrive.
        std::fs::write(ro.path().join("g"), "from the workload").unwrap();
        within("ro mount agent → client", TWO_S, EVERY_5MS, || {
            read(&l1.join("g")).as_deref() == Some(&b"from the workload"[..])
        })
        .await;
        s.end().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_and_missing_mounts_are_reported_not_fatal() {
        let remote = tempfile::tempdir().unwrap();
        let locals = tempfile::tempdir().unwrap();
        let dir = remote.path().join("dir");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("f"), "f").unwrap();
        let file = remote.path().join("single.conf");
        std::fs::write(&file, "conf").unwrap();
        let missing = remote.path().join("missing");
        let s = start(
            vec![
                mount(&file, false),
                mount(&dir, false),
                mount(&missing, false),
            ],
            vec![
                local(&file, &locals.path().join("a"), false),
                local(&dir, &locals.path().join("b"), false),
                local(&missing, &locals.path().join("c"), false),
            ],
        )
        .await;
        assert_eq!(s.stats.mounts, 1);
        assert_eq!(
            s.stats.unavailable,
            [file.to_str().unwrap(), missing.to_str().unwrap()]
        );
        assert_eq!(read(&locals.path().join("b/f")).unwrap(), b"f");
        std::fs::write(locals.path().join("b/g"), "g").unwrap();
        within("the served mount syncs", TWO_S, EVERY_5MS, || {
            read(&dir.join("g")).is_some()
        })
        .await;
        s.end().await;
    }

    /// A tar entry written byte by byte (the tar crate refuses to build hostile ones).
    fn raw_entry(name: &[u8], kind: tar::EntryType, data: &[u8], link: Option<&[u8]>) -> Vec<u8> {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
        }
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(kind);
        h.set_cksum();
        let mut v = h.as_bytes().to_vec();
        v.extend_from_slice(data);
        v.resize(v.len().div_ceil(512) * 512, 0);
        v
    }

    /// Runs a client against a fake agent that sends `hello` then `script` (raw bytes).
    async fn client_against(script: Vec<u8>, dir: &Path) -> Result<SyncStats, FsSyncError> {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let (ready_tx, mut ready_rx) = oneshot::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let locals = vec![LocalMount {
            remote_path: "/data".into(),
            local_dir: dir.to_path_buf(),
            read_only: false,
        }];
        let o = SyncOptions {
            poll: POLL,
            handshake_timeout: Duration::from_secs(5),
        };
        let client = tokio::spawn(sync_with(
            theirs,
            locals,
            ready_tx,
            async move {
                let _ = stop_rx.await;
            },
            o,
        ));
        let (r, mut w) = tokio::io::split(ours);
        let drain = tokio::spawn(async move {
            let mut r = r;
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut r, &mut sink).await;
        });
        let _ = w.write_all(&script).await;
        let res = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::select! {
                r = &mut ready_rx => r.map_err(|_| ()),
                _ = tokio::time::sleep(Duration::from_secs(5)) => Err(()),
            }
        })
        .await
        .unwrap();
        let _ = stop.send(());
        drop(w);
        let ended = tokio::time::timeout(Duration::from_secs(10), client)
            .await
            .expect("client ends")
            .unwrap();
        drain.abort();
        match res {
            Ok(stats) => ended.map(|()| stats),
            Err(()) => Err(ended.expect_err("not ready, so it must have failed")),
        }
    }

    fn agent_prelude() -> Vec<u8> {
        let mut v = encode_frame(&Frame::Msg(Msg::Hello {
            proto: PROTO_VERSION,
            mounts: vec![Mount {
                path: "/data".into(),
                read_only: false,
            }],
        }));
        v.extend(encode_frame(&Frame::Msg(Msg::TarBegin {
            mount: 0,
            root: None,
        })));
        v
    }

    fn tar_script(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut tar: Vec<u8> = entries.concat();
        tar.extend([0u8; 1024]);
        let mut v = agent_prelude();
        for c in tar.chunks(700) {
            v.extend(encode_frame(&Frame::Data(c.to_vec())));
        }
        v.extend(encode_frame(&Frame::Msg(Msg::TarEnd { mount: 0 })));
        v
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_tar_entries_are_refused() {
        let base = tempfile::tempdir().unwrap();
        let vol = base.path().join("a/b/vol");
        std::fs::create_dir_all(&vol).unwrap();
        for name in [&b"../../etc/x"[..], b"ok/../../../etc/x", b"/etc/x"] {
            let script = tar_script(&[
                raw_entry(b"fine", tar::EntryType::Regular, b"fine", None),
                raw_entry(name, tar::EntryType::Regular, b"pwned", None),
            ]);
            let err = client_against(script, &vol).await.unwrap_err();
            assert!(matches!(err, FsSyncError::Hostile(_)), "{name:?}: {err}");
            assert!(!base.path().join("a/etc/x").exists());
            assert!(!base.path().join("etc/x").exists());
            assert!(!vol.join("etc").exists());
        }

        // A symlink leading out is skipped, so a later entry through it stays inside.
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().to_str().unwrap().as_bytes().to_vec();
        let script = tar_script(&[
            raw_entry(b"esc", tar::EntryType::Symlink, b"", Some(&target)),
            raw_entry(b"up", tar::EntryType::Symlink, b"", Some(b"../..")),
            raw_entry(b"esc/pwned", tar::EntryType::Regular, b"x", None),
            raw_entry(b"up/pwned", tar::EntryType::Regular, b"x", None),
            raw_entry(b"hard", tar::EntryType::Link, b"", Some(b"/etc/passwd")),
            raw_entry(b"ok", tar::EntryType::Symlink, b"", Some(b"esc/pwned")),
        ]);
        let stats = client_against(script, &vol).await.unwrap();
        assert_eq!(stats.refused, 3, "{stats:?}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(!base.path().join("a/pwned").exists());
        assert!(std::fs::symlink_metadata(vol.join("esc")).unwrap().is_dir());
        assert_eq!(read(&vol.join("up/pwned")).unwrap(), b"x");
        assert!(std::fs::symlink_metadata(vol.join("hard")).is_err());
        assert_eq!(
            std::fs::read_link(vol.join("ok")).unwrap(),
            Path::new("esc/pwned")
        );
    }

    /// Both ends can be spawned on a multi-threaded runtime.
    #[test]
    fn futures_are_send() {
        fn assert_send<T: Send + 'static>(_: T) {}
        let (a, b) = tokio::io::duplex(64);
        let (ready, _) = oneshot::channel();
        assert_send(sync(a, vec![], ready, async {}));
        assert_send(agent::fs::serve(b, vec![]));
    }

    #[test]
    fn tar_paths_are_confined() {
        assert_eq!(tar_rel(b"a/b/").unwrap().as_deref(), Some("a/b"));
        assert_eq!(tar_rel(b"./a").unwrap().as_deref(), Some("a"));
        assert_eq!(tar_rel(b"./").unwrap(), None);
        assert_eq!(tar_rel(b".").unwrap(), None);
        for bad in [
            &b"/x"[..],
            b"../x",
            b"a/../b",
            b".//x",
            b"a//b",
            b"./../x",
            &[0xff, 0xfe][..],
        ] {
            let r = tar_rel(bad);
            assert!(matches!(r, Err(FsSyncError::Hostile(_))), "{bad:?}: {r:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn random_bytes_from_the_agent_are_errors() {
        let base = tempfile::tempdir().unwrap();
        let vol = base.path().join("vol");
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        let valid = tar_script(&[
            raw_entry(b"d", tar::EntryType::Directory, b"", None),
            raw_entry(b"d/f", tar::EntryType::Regular, b"0123456789", None),
        ]);
        let mut failures = 0;
        for round in 0..60 {
            let script = match round % 3 {
                // Random bytes instead of the protocol.
                0 => {
                    let n = 1 + rng.next_u64() as usize % 3000;
                    rng.bytes(n)
                }
                // A valid start, then random bytes as tar data.
                1 => {
                    let mut v = agent_prelude();
                    for _ in 0..1 + rng.next_u64() % 4 {
                        let n = 1 + rng.next_u64() as usize % 4000;
                        v.extend(encode_frame(&Frame::Data(rng.bytes(n))));
                    }
                    v.extend(encode_frame(&Frame::Msg(Msg::TarEnd { mount: 0 })));
                    v
                }
                // A valid session with a few flipped bytes.
                _ => {
                    let mut v = valid.clone();
                    for _ in 0..1 + rng.next_u64() % 3 {
                        let i = rng.next_u64() as usize % v.len();
                        v[i] ^= (rng.next_u64() as u8) | 1;
                    }
                    v
                }
            };
            if client_against(script, &vol).await.is_err() {
                failures += 1;
            }
            // Whatever happened, nothing was written beside the volume.
            let names: Vec<_> = std::fs::read_dir(base.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert!(names.iter().all(|n| n == "vol"), "{names:?}");
        }
        assert!(
            failures >= 40,
            "only {failures} of 60 garbage sessions failed"
        );
    }

    /// Fills `p` with `len` pseudo-random bytes.
    fn big_file(p: &Path, len: usize) {
        let mut f = std::io::BufWriter::new(File::create(p).unwrap());
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            for c in buf.chunks_mut(8) {
                c.copy_from_slice(&rng.next_u64().to_le_bytes()[..c.len()]);
            }
            let n = left.min(buf.len());
            f.write_all(&buf[..n]).unwrap();
            left -= n;
        }
        f.flush().unwrap();
    }

    #[allow(unsafe_code)]
    fn flush_page_cache() {
        // SAFETY: sync(2) has no preconditions.
        unsafe { libc::sync() };
    }

    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_tree(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    /// 100 directories of 100 small files each under `root`; their total size.
    fn ten_thousand_files(root: &Path) -> u64 {
        let mut total = 0u64;
        for d in 0..100 {
            let dir = root.join(format!("dir{d:03}"));
            std::fs::create_dir(&dir).unwrap();
            for f in 0..100 {
                let body = format!("file {d}/{f} ").repeat(1 + (d * 100 + f) % 40);
                total += body.len() as u64;
                std::fs::write(dir.join(format!("f{f:03}.txt")), body).unwrap();
            }
        }
        total
    }

    /// How long a plain local copy of `tree` into `scratch` takes (the copy is removed). File
    /// creation on this VM is several times slower while freshly generated data is still
    /// dirty, so the page cache is flushed first (for the reference and for the measured runs
    /// alike).
    fn reference_copy(tree: &Path, scratch: &Path) -> Duration {
        flush_page_cache();
        let copy = scratch.join("reference-copy");
        let t = Instant::now();
        copy_tree(tree, &copy);
        let reference = t.elapsed();
        std::fs::remove_dir_all(&copy).unwrap();
        flush_page_cache();
        reference
    }

    /// The size target of the volume sync: 10,000 small files and one 200 MiB file. Prints
    /// the figures (no timing asserts; completeness is asserted).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_thousand_files_and_a_200_mib_file() {
        let small = tempfile::tempdir().unwrap();
        let large = tempfile::tempdir().unwrap();
        let locals = tempfile::tempdir().unwrap();
        let total_small = ten_thousand_files(small.path());
        const BIG: usize = 200 << 20;
        big_file(&large.path().join("big.bin"), BIG);
        let reference = reference_copy(small.path(), locals.path());

        let (ls, ll) = (locals.path().join("small"), locals.path().join("large"));
        let t = Instant::now();
        let s = start_polling(
            vec![mount(small.path(), false)],
            vec![local(small.path(), &ls, false)],
            fssync::POLL_INTERVAL,
        )
        .await;
        let small_time = t.elapsed();
        assert_eq!(s.stats.files, 10_000);
        assert_eq!(s.stats.dirs, 100);
        assert_eq!(s.stats.bytes, total_small);
        let mut diff = Vec::new();
        tree_diff(small.path(), &ls, "", &mut diff);
        assert!(diff.is_empty(), "{:?}", &diff[..diff.len().min(5)]);

        // What one poll of this tree costs.
        let root = Root::open(&ls).unwrap();
        let t = Instant::now();
        let (scanned, _) = fssync::scan(&root, &HashSet::new()).unwrap();
        let scan_time = t.elapsed();
        assert_eq!(scanned.len(), 10_100);

        // Live latency with a 10,000-file tree being polled on both sides, default interval.
        std::fs::write(small.path().join("dir050/live"), "agent").unwrap();
        let a2c = within("a → c", TWO_S, EVERY_5MS, || {
            read(&ls.join("dir050/live")).is_some()
        })
        .await;
        std::fs::write(ls.join("dir051/live"), "client").unwrap();
        let c2a = within("c → a", TWO_S, EVERY_5MS, || {
            read(&small.path().join("dir051/live")).is_some()
        })
        .await;
        s.end().await;

        flush_page_cache();
        let t = Instant::now();
        let s = start(
            vec![mount(large.path(), false)],
            vec![local(large.path(), &ll, false)],
        )
        .await;
        let large_time = t.elapsed();
        assert_eq!(s.stats.bytes, BIG as u64);
        assert!(same_content(
            &large.path().join("big.bin"),
            &ll.join("big.bin")
        ));
        s.end().await;

        let mbps = BIG as f64 / 1e6 / large_time.as_secs_f64();
        println!(
            "10,000 files ({total_small} bytes): ready in {:.3}s ({:.0} files/s)",
            small_time.as_secs_f64(),
            10_000.0 / small_time.as_secs_f64()
        );
        println!(
            "reference: local copy of the same 10,000 files (std::fs::copy) {:.3}s",
            reference.as_secs_f64()
        );
        println!(
            "200 MiB file: ready in {:.3}s = {mbps:.0} MB/s",
            large_time.as_secs_f64()
        );
        println!(
            "change latency with 10,000 files polled every {:?}: agent→client {a2c:?}, client→agent {c2a:?}; one scan {scan_time:?}",
            fssync::POLL_INTERVAL
        );
    }
}
