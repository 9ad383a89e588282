//! The symmetric live-sync engine, [`run_live`]: a reader task forwards the peer's frames to
//! the applier (`live/apply.rs`), a scanner (`live/send.rs`, planning in `live/plan.rs`) polls
//! the local trees and sends what changed, and the stream's writer task sends both sides'
//! frames; `live/state.rs` holds the state they share.

mod apply;
mod plan;
mod send;
mod state;

pub use plan::{MAX_DEFER, SMALL_FILE};

use crate::{read_frame, Frame, FsSyncError, Meta, Msg, Outbox, Root};
use apply::apply_loop;
use send::{scan_loop, Ctl};
use state::Shared;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};
use tracing::{debug, warn};

/// How often each side looks for local changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(300);
/// How long a client's final flush may take at shutdown.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
const APPLY_DEPTH: usize = 32;

/// One mount as the live engine sees it.
pub struct LiveMount {
    /// The local directory of the mount.
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
    /// How often local trees are scanned for changes (normally [`POLL_INTERVAL`]).
    pub poll: Duration,
}

/// A finished task's result, a panic or cancellation becoming an i/o error.
fn join<T>(r: Result<Result<T, FsSyncError>, JoinError>) -> Result<T, FsSyncError> {
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
    let shared = Arc::new(Shared::new(mounts, opts));
    let (apply_tx, apply_rx) = mpsc::channel::<Frame>(APPLY_DEPTH);
    let (ctl, ctl_rx) = std::sync::mpsc::channel::<Ctl>();
    let applier = tokio::task::spawn_blocking({
        let sh = shared.clone();
        let out = out.clone();
        move || apply_loop(&sh, &out, apply_rx)
    });
    let err_out = out.clone();
    let scanner = tokio::task::spawn_blocking({
        let sh = shared.clone();
        move || scan_loop(&sh, &out, ctl_rx)
    });
    let mut tasks = Tasks {
        shared,
        applier,
        scanner,
        writer,
        ctl,
        err_out,
    };
    let mut read = Box::pin(forward_frames(reader, apply_tx));
    tokio::pin!(shutdown);

    tokio::select! {
        r = &mut read => tasks.peer_closed(r, read).await,
        _ = &mut shutdown => tasks.shut_down(read).await,
        r = &mut tasks.applier => tasks.applier_ended(r, read).await,
        r = &mut tasks.writer => tasks.writer_ended(r, read).await,
    }
}

/// Hands every frame the peer sends to the applier, until the stream ends (`Ok`), a frame is
/// malformed, or the applier is gone (`Ok`).
async fn forward_frames<R>(mut reader: R, apply_tx: mpsc::Sender<Frame>) -> Result<(), FsSyncError>
where
    R: AsyncRead + Unpin,
{
    while let Some(f) = read_frame(&mut reader).await? {
        if apply_tx.send(f).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// The tasks of one [`run_live`] and the handles that steer them. Each method ends the session
/// after one of the four things [`run_live`] waits for happened; `read` is the reader future.
struct Tasks {
    shared: Arc<Shared>,
    applier: JoinHandle<Result<(), FsSyncError>>,
    scanner: JoinHandle<Result<(), FsSyncError>>,
    writer: JoinHandle<io::Result<()>>,
    /// Tells the scanner to flush; dropping it stops the scanner.
    ctl: std::sync::mpsc::Sender<Ctl>,
    /// Our handle on the outbox, for reporting a bad stream to the peer.
    err_out: Outbox,
}

impl Tasks {
    /// The peer closed (or sent garbage): let the applier finish what was queued.
    async fn peer_closed<F>(self, r: Result<(), FsSyncError>, read: F) -> Result<(), FsSyncError> {
        drop(read);
        if let Err(e) = &r {
            if !matches!(e, FsSyncError::Io(_)) {
                let message = e.to_string();
                let _ = self.err_out.try_send(Frame::Msg(Msg::Error { message }));
            }
        }
        drop(self.err_out);
        let applied = join(self.applier.await);
        drop(self.ctl);
        let _ = self.scanner.await;
        let _ = self.writer.await;
        r?;
        applied
    }

    /// `shutdown` resolved: a final scan sends what is pending while we keep reading, so a busy
    /// peer cannot stall it; after [`FLUSH_TIMEOUT`] we give up on it.
    async fn shut_down<F>(self, mut read: F) -> Result<(), FsSyncError>
    where
        F: Future<Output = Result<(), FsSyncError>> + Unpin,
    {
        let Tasks {
            shared,
            applier,
            mut scanner,
            writer,
            ctl,
            err_out,
        } = self;
        drop(err_out);
        let _ = ctl.send(Ctl::Flush);
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

    /// The applier stopped (the peer reported an error, or a change could not be handled).
    async fn applier_ended<F>(
        self,
        r: Result<Result<(), FsSyncError>, JoinError>,
        read: F,
    ) -> Result<(), FsSyncError> {
        drop(self.err_out);
        drop(self.ctl);
        drop(read);
        let _ = self.scanner.await;
        let _ = self.writer.await;
        join(r)
    }

    /// The writer stopped (the stream is gone): stop sending and reading.
    async fn writer_ended<F>(
        self,
        r: Result<io::Result<()>, JoinError>,
        read: F,
    ) -> Result<(), FsSyncError> {
        drop(self.err_out);
        self.shared.stop.store(true, Ordering::Release);
        drop(self.ctl);
        drop(read);
        let _ = self.applier.await;
        let _ = self.scanner.await;
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(FsSyncError::Io(io::Error::other(format!(
                "writer failed: {e}"
            )))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{scan, spawn_writer};
    use std::os::unix::fs::{symlink, MetadataExt};
    use std::path::{Path, PathBuf};
    use std::time::{Instant, UNIX_EPOCH};

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
        let (agent, client, stop_tx) = start_pair(a.path(), b.path());
        let (a, b) = (a.path(), b.path());

        propagates_both_ways(a, b).await;
        no_echo(a, b).await;
        conflict_goes_to_later_mtime(a, b).await;
        delete_and_rename(a, b).await;

        // A file written just before shutdown still goes out with the final flush.
        std::fs::write(b.join("last"), "bye").unwrap();
        stop_tx.send(()).unwrap();
        client.await.unwrap().unwrap();
        agent.await.unwrap().unwrap();
        assert_eq!(std::fs::read(a.join("last")).unwrap(), b"bye");
    }

    type Engine = JoinHandle<Result<(), FsSyncError>>;

    /// Both engines over an in-memory stream: the agent on `a`, the client on `b`, which stops
    /// when the returned sender fires.
    fn start_pair(a: &Path, b: &Path) -> (Engine, Engine, tokio::sync::oneshot::Sender<()>) {
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
            vec![live_mount(a)],
            opts(true),
            std::future::pending(),
        ));
        let client = tokio::spawn(run_live(
            rb,
            ob,
            tb,
            vec![live_mount(b)],
            opts(false),
            async move {
                let _ = stop_rx.await;
            },
        ));
        (agent, client, stop_tx)
    }

    async fn propagates_both_ways(a: &Path, b: &Path) {
        std::fs::write(a.join("d/new"), "from a").unwrap();
        eventually("a → b", || {
            std::fs::read(b.join("d/new")).ok().as_deref() == Some(&b"from a"[..])
        })
        .await;
        std::fs::write(b.join("d/f"), "v2 from b").unwrap();
        eventually("b → a", || {
            std::fs::read(a.join("d/f")).ok().as_deref() == Some(&b"v2 from b"[..])
        })
        .await;
        std::fs::create_dir_all(b.join("x/y")).unwrap();
        symlink("../../d/f", b.join("x/y/l")).unwrap();
        eventually("symlink b → a", || {
            std::fs::read_link(a.join("x/y/l")).ok() == Some(PathBuf::from("../../d/f"))
        })
        .await;
    }

    async fn no_echo(a: &Path, b: &Path) {
        // No echo: the originals keep their inode (an applied echo would rename over them).
        let ino_a = std::fs::metadata(a.join("d/new")).unwrap().ino();
        let ino_b = std::fs::metadata(b.join("d/f")).unwrap().ino();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(std::fs::metadata(a.join("d/new")).unwrap().ino(), ino_a);
        assert_eq!(std::fs::metadata(b.join("d/f")).unwrap().ino(), ino_b);
    }

    async fn conflict_goes_to_later_mtime(a: &Path, b: &Path) {
        // Conflict: both change `c` before either sees the other's; the later mtime wins.
        std::fs::write(a.join("c"), "a wins").unwrap();
        set_mtime(&a.join("c"), 2_000_000_000);
        std::fs::write(b.join("c"), "b loses").unwrap();
        set_mtime(&b.join("c"), 1_900_000_000);
        eventually("conflict settled", || {
            std::fs::read(a.join("c")).ok().as_deref() == Some(&b"a wins"[..])
                && std::fs::read(b.join("c")).ok().as_deref() == Some(&b"a wins"[..])
        })
        .await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(std::fs::read(b.join("c")).unwrap(), b"a wins");
    }

    async fn delete_and_rename(a: &Path, b: &Path) {
        std::fs::rename(a.join("d/new"), a.join("renamed")).unwrap();
        std::fs::remove_file(b.join("x/y/l")).unwrap();
        eventually("rename a → b", || {
            !b.join("d/new").exists()
                && std::fs::read(b.join("renamed")).ok().as_deref() == Some(&b"from a"[..])
        })
        .await;
        eventually("delete b → a", || {
            std::fs::symlink_metadata(a.join("x/y/l")).is_err()
        })
        .await;
    }
}
