//! Agent end of the volume sync (protocol in [`fssync`]): the agent container sees the
//! workload's mounts at their real paths; [`serve`] offers them to the client's sync container
//! over one byte stream, sends a tar of each subscribed mount, then keeps both sides in sync
//! until the stream closes. Only directories are offered (single-file bind mounts and missing
//! paths are left out of `Hello`). Changes the client sends for a read-only mount (read-only in
//! the workload, or asked read-only by the client) are refused, never applied.

use fssync::{
    self, nested_excludes, read_frame, readlinkat, run_live, walk, Frame, FsSyncError, Kind,
    LiveMount, LiveOptions, Meta, Mount, Msg, Outbox, Root, CHUNK, PROTO_VERSION,
};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};

/// Tuning of [`serve_with`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// How often the mounts are polled for changes.
    pub poll: Duration,
    /// How long the client may take to subscribe.
    pub handshake_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            poll: fssync::POLL_INTERVAL,
            handshake_timeout: Duration::from_secs(60),
        }
    }
}

/// Serves `mounts` (absolute paths in this container) over `stream` until it closes.
pub async fn serve<S>(stream: S, mounts: Vec<Mount>) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_with(stream, mounts, ServeOptions::default())
        .await
        .map_err(io::Error::from)
}

/// [`serve`] with explicit options.
pub async fn serve_with<S>(
    stream: S,
    mounts: Vec<Mount>,
    opts: ServeOptions,
) -> Result<(), FsSyncError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let mut r = tokio::io::BufReader::with_capacity(CHUNK, r);
    let (out, writer) = fssync::spawn_writer(w);
    match initial(&mut r, &out, &mounts, &opts).await {
        Ok(live) => {
            let live_opts = LiveOptions {
                is_agent: true,
                poll: opts.poll,
            };
            run_live(r, out, writer, live, live_opts, std::future::pending()).await
        }
        Err(e) => Err(fssync::fail(out, writer, e).await),
    }
}

fn closed() -> FsSyncError {
    FsSyncError::Io(io::Error::new(
        io::ErrorKind::BrokenPipe,
        "volume sync stream closed",
    ))
}

/// Handshake and one tar per subscribed mount; returns the mounts ready for live sync.
async fn initial<R: AsyncRead + Unpin>(
    r: &mut R,
    out: &Outbox,
    mounts: &[Mount],
    opts: &ServeOptions,
) -> Result<Vec<LiveMount>, FsSyncError> {
    let offered = offered_mounts(mounts);
    out.send(Frame::Msg(Msg::Hello {
        proto: PROTO_VERSION,
        mounts: offered.clone(),
    }))
    .await
    .map_err(|_| closed())?;
    let wanted = await_subscribe(r, opts).await?;
    let mut live = Vec::with_capacity(wanted.len());
    for (i, w) in wanted.iter().enumerate() {
        let Some(ours) = offered.iter().find(|m| m.path == w.path) else {
            return Err(FsSyncError::Protocol(format!(
                "mount {:?} is not served here",
                w.path
            )));
        };
        live.push(send_mount(out, &wanted, i, ours.read_only || w.read_only).await?);
    }
    Ok(live)
}

/// The mounts offered to the client: only directories (a single-file bind mount cannot be
/// mirrored as a volume).
fn offered_mounts(mounts: &[Mount]) -> Vec<Mount> {
    mounts
        .iter()
        .filter(|m| match std::fs::metadata(&m.path) {
            Ok(md) if md.is_dir() => true,
            Ok(_) => {
                warn!("volume sync: {} is not a directory; not offered", m.path);
                false
            }
            Err(e) => {
                warn!("volume sync: {}: {e}; not offered", m.path);
                false
            }
        })
        .cloned()
        .collect()
}

/// Waits for the client's `Subscribe` (within the handshake timeout); returns the mounts it wants.
async fn await_subscribe<R: AsyncRead + Unpin>(
    r: &mut R,
    opts: &ServeOptions,
) -> Result<Vec<Mount>, FsSyncError> {
    let first = tokio::time::timeout(opts.handshake_timeout, read_frame(r))
        .await
        .map_err(|_| FsSyncError::Protocol("the client did not subscribe in time".into()))??;
    match first {
        Some(Frame::Msg(Msg::Subscribe { mounts })) => Ok(mounts),
        Some(Frame::Msg(Msg::Error { message })) => Err(FsSyncError::Remote(message)),
        Some(Frame::Msg(m)) => Err(FsSyncError::Protocol(format!(
            "expected subscribe, got {}",
            m.name()
        ))),
        Some(Frame::Data(_)) => Err(FsSyncError::Protocol("expected subscribe".into())),
        None => Err(FsSyncError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the client closed before subscribing",
        ))),
    }
}

/// Sends the tar of subscribed mount `i` of `wanted`; returns it ready for live sync.
async fn send_mount(
    out: &Outbox,
    wanted: &[Mount],
    i: usize,
    read_only: bool,
) -> Result<LiveMount, FsSyncError> {
    let w = &wanted[i];
    let root = Root::open(Path::new(&w.path))
        .map_err(|e| io::Error::new(e.kind(), format!("mount {}: {e}", w.path)))?;
    let excludes = nested_excludes(wanted, i);
    let root_attrs = fssync::fstat(root.fd()).ok().map(|m| m.attrs());
    out.send(Frame::Msg(Msg::TarBegin {
        mount: i as u32,
        root: root_attrs,
    }))
    .await
    .map_err(|_| closed())?;
    let started = Instant::now();
    let tx = out.clone();
    let ex = excludes.clone();
    let (root, baseline, stats) =
        tokio::task::spawn_blocking(move || build_tar(&root, &ex, tx).map(|(b, s)| (root, b, s)))
            .await
            .map_err(|e| FsSyncError::Io(io::Error::other(format!("tar task failed: {e}"))))??;
    out.send(Frame::Msg(Msg::TarEnd { mount: i as u32 }))
        .await
        .map_err(|_| closed())?;
    let secs = started.elapsed().as_secs_f64();
    info!(
        "volume sync: sent {} ({} entries, {} bytes, {} skipped) in {:.3}s{}",
        w.path,
        stats.entries,
        stats.bytes,
        stats.skipped,
        secs,
        if read_only { ", read-only" } else { "" }
    );
    Ok(LiveMount {
        root,
        send: true,
        accept: !read_only,
        excludes,
        baseline,
    })
}

/// What went into one mount's tar.
#[derive(Debug, Default, Clone)]
pub struct TarStats {
    /// Entries written (directories, symlinks, files).
    pub entries: u64,
    /// File content bytes written.
    pub bytes: u64,
    /// Entries left out because they could not be read.
    pub skipped: u64,
}

/// Streams a tar of `root` to `out` as data frames; returns the metadata of every entry sent
/// (the live-sync baseline).
pub fn build_tar(
    root: &Root,
    excludes: &HashSet<String>,
    out: Outbox,
) -> Result<(HashMap<String, Meta>, TarStats), FsSyncError> {
    let mut b = tar::Builder::new(ChanWriter::new(out));
    let mut baseline = HashMap::new();
    let mut stats = TarStats::default();
    let report = walk(root, excludes, &mut |e| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.meta.mode);
        h.set_uid(u64::from(e.meta.uid));
        h.set_gid(u64::from(e.meta.gid));
        h.set_mtime(e.meta.mtime_ns.div_euclid(1_000_000_000).max(0) as u64);
        match e.meta.kind {
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, e.rel, io::empty())?;
            }
            Kind::Symlink => {
                let target = match readlinkat(e.dir, e.name).map(String::from_utf8) {
                    Ok(Ok(t)) => t,
                    Ok(Err(_)) => {
                        stats.skipped += 1;
                        return Ok(());
                    }
                    Err(err) => {
                        warn!("volume sync: cannot read symlink {}: {err}", e.rel);
                        stats.skipped += 1;
                        return Ok(());
                    }
                };
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, e.rel, &target)?;
            }
            Kind::File => {
                let f = match fssync::openat(
                    e.dir,
                    e.name,
                    libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
                    0,
                ) {
                    Ok(fd) => File::from(fd),
                    Err(err) => {
                        warn!("volume sync: cannot read {}: {err}", e.rel);
                        stats.skipped += 1;
                        return Ok(());
                    }
                };
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(e.meta.size);
                b.append_data(&mut h, e.rel, Exact::new(f, e.meta.size))?;
                stats.bytes += e.meta.size;
            }
            Kind::Other => return Ok(()),
        }
        baseline.insert(e.rel.to_string(), *e.meta);
        stats.entries += 1;
        Ok(())
    })?;
    stats.skipped += report.skipped;
    let mut w = b.into_inner()?;
    w.flush()?;
    Ok((baseline, stats))
}

/// Exactly `left` bytes of a file: a file that shrank while being read is padded with zeros
/// (the live sync resends it once it settles), one that grew is cut.
struct Exact {
    f: File,
    left: u64,
}

impl Exact {
    fn new(f: File, size: u64) -> Exact {
        Exact { f, left: size }
    }
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = match self.f.read(&mut buf[..want]) {
            Ok(0) | Err(_) => {
                buf[..want].fill(0);
                want
            }
            Ok(n) => n,
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// `Write` adapter that cuts the tar stream into data frames for the stream's writer task.
struct ChanWriter {
    out: Outbox,
    buf: Vec<u8>,
}

impl ChanWriter {
    fn new(out: Outbox) -> ChanWriter {
        ChanWriter {
            out,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.out
            .blocking_send(Frame::Data(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "volume sync stream closed"))
    }
}

impl Write for ChanWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = (CHUNK - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::tests::fs::{chmod, write_file, Rng};
    use fssync::{encode_frame, Attrs, Change, Op};
    use std::os::unix::fs::symlink;
    use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

    type Reader = tokio::io::BufReader<ReadHalf<DuplexStream>>;

    fn opts() -> ServeOptions {
        ServeOptions {
            poll: Duration::from_millis(50),
            handshake_timeout: Duration::from_secs(5),
        }
    }

    async fn next(r: &mut Reader) -> Frame {
        tokio::time::timeout(Duration::from_secs(5), read_frame(r))
            .await
            .expect("frame in time")
            .expect("valid frame")
            .expect("not end of stream")
    }

    /// Plays the client up to live sync; returns the tar bytes of each mount.
    async fn subscribe(
        r: &mut Reader,
        w: &mut WriteHalf<DuplexStream>,
        mounts: Vec<Mount>,
    ) -> Vec<Vec<u8>> {
        let Frame::Msg(Msg::Hello { proto, .. }) = next(r).await else {
            panic!("no hello")
        };
        assert_eq!(proto, PROTO_VERSION);
        let n = mounts.len();
        w.write_all(&encode_frame(&Frame::Msg(Msg::Subscribe { mounts })))
            .await
            .unwrap();
        let mut tars = Vec::new();
        for i in 0..n {
            assert!(
                matches!(next(r).await, Frame::Msg(Msg::TarBegin { mount, .. }) if mount as usize == i)
            );
            let mut tar = Vec::new();
            loop {
                match next(r).await {
                    Frame::Data(d) => tar.extend(d),
                    Frame::Msg(Msg::TarEnd { mount }) if mount as usize == i => break,
                    other @ Frame::Msg(_) => panic!("unexpected {other:?}"),
                }
            }
            tars.push(tar);
        }
        tars
    }

    fn change(path: &str, seq: u64, op: Op) -> Frame {
        Frame::Msg(Msg::Change(Change {
            mount: 0,
            path: path.into(),
            seq,
            seen: 0,
            time_ns: fssync::now_ns() + 10_000_000_000,
            op,
        }))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_only_mount_refuses_every_write_but_still_sends() {
        for (agent_ro, client_ro) in [(true, false), (false, true)] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("f"), "orig").unwrap();
            let path = dir.path().to_str().unwrap().to_string();
            let (ours, theirs) = tokio::io::duplex(1 << 20);
            let served = vec![Mount {
                path: path.clone(),
                read_only: agent_ro,
            }];
            let server = tokio::spawn(serve_with(theirs, served, opts()));
            let (r, mut w) = tokio::io::split(ours);
            let mut r = tokio::io::BufReader::new(r);
            let tars = subscribe(
                &mut r,
                &mut w,
                vec![Mount {
                    path,
                    read_only: client_ro,
                }],
            )
            .await;
            assert!(!tars[0].is_empty());

            let mut wire = encode_frame(&change(
                "f",
                1,
                Op::File {
                    size: 5,
                    attrs: Attrs {
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                    },
                },
            ));
            wire.extend(encode_frame(&Frame::Data(b"evil!".to_vec())));
            wire.extend(encode_frame(&change(
                "g",
                2,
                Op::Mkdir {
                    attrs: Attrs::default(),
                },
            )));
            wire.extend(encode_frame(&change("f", 3, Op::Delete)));
            wire.extend(encode_frame(&change(
                "l",
                4,
                Op::Symlink { target: "f".into() },
            )));
            w.write_all(&wire).await.unwrap();
            let mut refused = Vec::new();
            while refused.len() < 4 {
                match next(&mut r).await {
                    Frame::Msg(Msg::Refused { path, reason, .. }) => {
                        assert_eq!(reason, "read-only mount");
                        refused.push(path);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(refused, ["f", "g", "f", "l"]);
            assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"orig");
            assert!(!dir.path().join("g").exists());
            assert!(std::fs::symlink_metadata(dir.path().join("l")).is_err());

            // The agent still sends its own changes.
            std::fs::write(dir.path().join("f"), "new").unwrap();
            match next(&mut r).await {
                Frame::Msg(Msg::Change(c)) => {
                    assert_eq!(c.path, "f");
                    assert!(matches!(c.op, Op::File { size: 3, .. }));
                }
                other => panic!("unexpected {other:?}"),
            }
            assert_eq!(next(&mut r).await, Frame::Data(b"new".to_vec()));
            drop(w);
            drop(r);
            server.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn tar_has_every_entry_with_long_names_modes_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let long_dir = "d".repeat(120);
        write_file(p, &format!("{long_dir}/sub/file"), "content");
        write_file(p, "exec", "#!/bin/sh\n");
        chmod(&p.join("exec"), 0o750);
        write_file(p, "empty", "");
        let long_target = format!("{long_dir}/sub/file");
        symlink(&long_target, p.join("link")).unwrap();
        symlink("/etc/passwd", p.join("abs")).unwrap();
        write_file(p, "nested/x", "x");

        let root = Root::open(p).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let ex: HashSet<String> = ["nested".to_string()].into();
        let (baseline, stats) =
            tokio::task::spawn_blocking(move || build_tar(&root, &ex, tx).unwrap())
                .await
                .unwrap();
        let mut bytes = Vec::new();
        while let Some(f) = rx.recv().await {
            let Frame::Data(d) = f else { panic!() };
            assert!(d.len() <= CHUNK);
            bytes.extend(d);
        }
        assert_eq!(stats.entries, 7);
        assert_eq!(stats.bytes, 17);
        assert_eq!(baseline.len(), 7);
        assert!(!baseline.contains_key("nested"));

        let mut ar = tar::Archive::new(&bytes[..]);
        let mut seen = HashMap::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e
                .path()
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('/')
                .to_string();
            let mut data = String::new();
            e.read_to_string(&mut data).unwrap();
            let link = e
                .link_name()
                .unwrap()
                .map(|l| l.to_str().unwrap().to_string());
            seen.insert(
                path,
                (
                    e.header().entry_type(),
                    e.header().mode().unwrap(),
                    data,
                    link,
                ),
            );
        }
        assert_eq!(seen.len(), 7);
        let file = &seen[&format!("{long_dir}/sub/file")];
        assert_eq!(file.2, "content");
        assert_eq!(seen["exec"].1 & 0o7777, 0o750);
        assert_eq!(seen["empty"].2, "");
        assert_eq!(seen["link"].0, tar::EntryType::Symlink);
        assert_eq!(seen["link"].3.as_deref(), Some(long_target.as_str()));
        assert_eq!(seen["abs"].3.as_deref(), Some("/etc/passwd"));
        assert_eq!(seen[&long_dir].0, tar::EntryType::Directory);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn garbage_from_the_client_is_an_error_and_writes_nothing() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("m");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(inner.join("f"), "keep").unwrap();
        let path = inner.to_str().unwrap().to_string();
        let mounts = vec![Mount {
            path: path.clone(),
            read_only: false,
        }];
        let mut rng = Rng(0x1234_5678_9abc_def1);

        // Random bytes instead of a subscription, and random bytes during live sync.
        for round in 0..40 {
            let (ours, theirs) = tokio::io::duplex(1 << 20);
            let server = tokio::spawn(serve_with(theirs, mounts.clone(), opts()));
            let (r, mut w) = tokio::io::split(ours);
            let mut r = tokio::io::BufReader::new(r);
            if round % 2 == 1 {
                subscribe(&mut r, &mut w, mounts.clone()).await;
            }
            let n = 1 + rng.next_u64() as usize % 2000;
            let junk: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            w.write_all(&junk).await.unwrap();
            w.shutdown().await.unwrap();
            let drain = tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut r, &mut sink).await;
            });
            let res = tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .expect("serve ends")
                .unwrap();
            assert!(res.is_err(), "round {round}: garbage accepted");
            drain.await.unwrap();
        }

        // A well-formed change with a hostile path.
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(serve_with(theirs, mounts.clone(), opts()));
        let (r, mut w) = tokio::io::split(ours);
        let mut r = tokio::io::BufReader::new(r);
        subscribe(&mut r, &mut w, mounts).await;
        let mut wire = encode_frame(&change(
            "../escaped",
            1,
            Op::File {
                size: 1,
                attrs: Attrs::default(),
            },
        ));
        wire.extend(encode_frame(&Frame::Data(b"x".to_vec())));
        w.write_all(&wire).await.unwrap();
        match next(&mut r).await {
            Frame::Msg(Msg::Error { message }) => assert!(message.contains("hostile"), "{message}"),
            other => panic!("unexpected {other:?}"),
        }
        let res = server.await.unwrap();
        assert!(matches!(res, Err(FsSyncError::Hostile(_))), "{res:?}");
        assert!(!dir.path().join("escaped").exists());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert_eq!(std::fs::read(inner.join("f")).unwrap(), b"keep");
    }

    #[tokio::test]
    async fn unknown_mount_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let served = vec![Mount {
            path: dir.path().to_str().unwrap().into(),
            read_only: false,
        }];
        let server = tokio::spawn(serve_with(theirs, served, opts()));
        let (r, mut w) = tokio::io::split(ours);
        let mut r = tokio::io::BufReader::new(r);
        assert!(matches!(next(&mut r).await, Frame::Msg(Msg::Hello { .. })));
        let sub = Msg::Subscribe {
            mounts: vec![Mount {
                path: "/etc".into(),
                read_only: true,
            }],
        };
        w.write_all(&encode_frame(&Frame::Msg(sub))).await.unwrap();
        assert!(matches!(next(&mut r).await, Frame::Msg(Msg::Error { .. })));
        assert!(matches!(
            server.await.unwrap(),
            Err(FsSyncError::Protocol(_))
        ));
    }
}
