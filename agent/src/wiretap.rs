//! Wiretaps in the agent: the copy of a connection's caller → workload bytes (or of one matching
//! HTTP request) that goes to each wiretapping client, and the drop counters reported to the
//! manager.
//!
//! A wiretapped connection is relayed in user space ([`relay`]; unwiretapped ones keep
//! `relay::splice`) so each chunk read from the caller can be queued for the copies with
//! [`CopySender::push`], which never waits: every copy has its own byte budget
//! ([`COPY_BUDGET`]); when a chunk does not fit, or the copy's delivery failed, the copy is
//! closed and counted once as dropped, and the caller goes on as if nothing happened. Each copy is
//! delivered by its own task ([`deliver`]) over its own tunnel connection (kind `Intercept`,
//! the wiretap's id), which the manager pairs with the client as it does intercepted
//! connections; the handler's answers are read and discarded.

use crate::routes::Tap;
use bytes::Bytes;
use protocol::manager::{SessionInfo, WiretapReport};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, warn};

/// Bytes queued for one copy before it is dropped (a slow handler costs the agent at most this
/// much memory per wiretapped connection).
pub const COPY_BUDGET: usize = 1024 * 1024;
/// How long a finished copy waits for the handler to close its side.
const LINGER: Duration = Duration::from_secs(5);
/// Relay buffer of a wiretapped connection.
const BUF: usize = 32 * 1024;

/// Copies dropped per wiretap since the agent started; reported to the manager when they change.
#[derive(Default)]
pub struct Counters {
    dropped: Mutex<HashMap<Arc<str>, u64>>,
    changed: Notify,
}

impl Counters {
    fn count(&self, id: &Arc<str>) {
        *self
            .dropped
            .lock()
            .expect("counters lock")
            .entry(id.clone())
            .or_default() += 1;
        self.changed.notify_one();
    }

    /// The copies dropped so far, by wiretap id.
    pub fn snapshot(&self) -> HashMap<String, u64> {
        self.dropped
            .lock()
            .expect("counters lock")
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }
}

/// What both ends of one copy share: its queued bytes and whether it was dropped.
struct CopyState {
    id: Arc<str>,
    counters: Arc<Counters>,
    queued: AtomicUsize,
    dropped: AtomicBool,
}

impl CopyState {
    /// Marks the copy dropped; counts it the first time only.
    fn drop_once(&self) {
        if !self.dropped.swap(true, Ordering::AcqRel) {
            self.counters.count(&self.id);
        }
    }
}

/// The caller's end of one copy.
pub struct CopySender {
    tx: Option<mpsc::UnboundedSender<Bytes>>,
    state: Arc<CopyState>,
    budget: usize,
}

/// The delivering end of one copy.
pub struct CopyReceiver {
    rx: mpsc::UnboundedReceiver<Bytes>,
    state: Arc<CopyState>,
}

/// A new copy for wiretap `id`, dropped once more than `budget` bytes wait in it.
pub fn copy(id: Arc<str>, counters: Arc<Counters>, budget: usize) -> (CopySender, CopyReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let state = Arc::new(CopyState {
        id,
        counters,
        queued: AtomicUsize::new(0),
        dropped: AtomicBool::new(false),
    });
    (
        CopySender {
            tx: Some(tx),
            state: state.clone(),
            budget,
        },
        CopyReceiver { rx, state },
    )
}

impl CopySender {
    /// Queues a copy of `data` without waiting. When it does not fit in the budget, or the copy
    /// already failed, the copy is closed and counted as dropped (once); returns whether `data`
    /// was queued.
    pub fn push(&mut self, data: &[u8]) -> bool {
        self.push_bytes(Bytes::copy_from_slice(data))
    }

    /// Like [`CopySender::push`] for a chunk already in a [`Bytes`]: several copies of one chunk
    /// share its buffer instead of each copying it.
    pub fn push_bytes(&mut self, data: Bytes) -> bool {
        let Some(tx) = &self.tx else {
            return false;
        };
        let queued = self.state.queued.load(Ordering::Acquire);
        let fits =
            !self.state.dropped.load(Ordering::Acquire) && queued + data.len() <= self.budget;
        if fits {
            self.state.queued.fetch_add(data.len(), Ordering::AcqRel);
            if tx.send(data).is_ok() {
                return true;
            }
        }
        // Marked first, so the delivering end sees a drop, not the end of the caller's stream.
        self.state.drop_once();
        self.tx = None;
        false
    }
}

impl CopyReceiver {
    /// The next chunk to deliver (`None`: the caller's stream ended, or the copy was dropped).
    pub async fn next(&mut self) -> Option<Bytes> {
        if self.state.dropped.load(Ordering::Acquire) {
            return None;
        }
        let b = self.rx.recv().await?;
        self.state.queued.fetch_sub(b.len(), Ordering::AcqRel);
        Some(b)
    }

    /// The copy could not be delivered in full.
    pub fn dropped(&self) {
        self.state.drop_once();
    }

    fn was_dropped(&self) -> bool {
        self.state.dropped.load(Ordering::Acquire)
    }
}

/// Starts one copy per wiretap in `taps` and its delivery task; returns the caller's ends.
pub(crate) fn start(
    taps: Vec<Tap>,
    shared: &crate::forward::Shared,
    service_port: u16,
) -> Vec<CopySender> {
    taps.into_iter()
        .map(|tap| {
            let (tx, rx) = copy(
                tap.intercept_id.clone(),
                shared.counters.clone(),
                COPY_BUDGET,
            );
            let addr = shared.tunnel_addr.clone();
            let token = shared.token.clone();
            let offered = shared.offered.clone();
            tokio::spawn(async move {
                let s = crate::forward::open_tunnel(
                    &offered,
                    tap.tunnel,
                    &addr,
                    &tap.intercept_id,
                    crate::session::TunnelAuth {
                        session_id: tap.session_id.to_string(),
                        token: token.clone(),
                    },
                    service_port,
                )
                .await;
                match s {
                    Ok(s) => deliver(s, rx).await,
                    Err(e) => {
                        debug!(
                            "wiretap {}: tunnel {addr} unreachable: {e}",
                            tap.intercept_id
                        );
                        rx.dropped();
                    }
                }
            });
            tx
        })
        .collect()
}

/// Writes the copy's chunks to `out` while reading and discarding what comes back. The copy is
/// dropped when a write fails, the other side resets, or it closed while bytes were still to
/// come; after the last chunk it waits up to [`LINGER`] for the other side to close.
pub async fn deliver<S: AsyncRead + AsyncWrite + Unpin>(out: S, mut copy: CopyReceiver) {
    let (mut rd, mut wr) = tokio::io::split(out);
    let mut buf = vec![0u8; 8192];
    let mut closed = false;
    loop {
        tokio::select! {
            r = rd.read(&mut buf), if !closed => match r {
                Ok(0) => closed = true,
                Ok(_) => {}
                Err(_) => return copy.dropped(),
            },
            chunk = copy.next() => match chunk {
                Some(_) if closed => return copy.dropped(),
                Some(b) => {
                    if wr.write_all(&b).await.is_err() {
                        return copy.dropped();
                    }
                }
                None => break,
            },
        }
    }
    if copy.was_dropped() {
        return;
    }
    let _ = wr.shutdown().await;
    if !closed {
        let drain = async {
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        };
        if let Ok(Err(_)) = tokio::time::timeout(LINGER, drain).await {
            copy.dropped();
        }
    }
}

/// Relays a wiretapped connection between the caller and `outbound` (the app or an intercept's
/// tunnel) like `relay::splice`, queueing a copy of every chunk from the caller for each of
/// `copies` before forwarding it. Ends when both directions are done, or either fails.
/// Queues one chunk of the caller for every copy, in one buffer they share.
pub(crate) fn push_all(copies: &mut [CopySender], data: &[u8]) {
    if copies.is_empty() {
        return;
    }
    let chunk = Bytes::copy_from_slice(data);
    for c in copies {
        c.push_bytes(chunk.clone());
    }
}

pub(crate) async fn relay(
    inbound: TcpStream,
    outbound: TcpStream,
    copies: Vec<CopySender>,
) -> io::Result<()> {
    let (mut ci, mut co) = inbound.into_split();
    let (mut ui, mut uo) = outbound.into_split();
    let up = async move {
        let mut copies = copies;
        let mut buf = vec![0u8; BUF];
        loop {
            let n = ci.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            push_all(&mut copies, &buf[..n]);
            uo.write_all(&buf[..n]).await?;
        }
        // The copies end with the caller's stream.
        drop(copies);
        uo.shutdown().await
    };
    let down = async move {
        tokio::io::copy(&mut ui, &mut co).await?;
        co.shutdown().await
    };
    tokio::try_join!(up, down).map(|_| ())
}

/// A caller's stream whose every byte read is also queued for `copies` (a wiretapped
/// connection on a port routed per HTTP request).
pub(crate) struct Tee<S> {
    pub inner: S,
    pub copies: Vec<CopySender>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tee<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(()))) {
            let new = &buf.filled()[before..];
            if new.is_empty() {
                // The caller's stream ended: so do the copies.
                self.copies.clear();
            }
            if !self.copies.is_empty() {
                // One shared buffer for every copy of this chunk.
                let chunk = Bytes::copy_from_slice(new);
                for c in &mut self.copies {
                    c.push_bytes(chunk.clone());
                }
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tee<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Reports the drop counters to the manager whenever they change (at most every 250 ms).
pub(crate) async fn report_loop(
    mut client: crate::session::Client,
    counters: Arc<Counters>,
    session_rx: watch::Receiver<SessionInfo>,
) {
    loop {
        counters.changed.notified().await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        let report = WiretapReport {
            session: Some(session_rx.borrow().clone()),
            dropped: counters.snapshot(),
        };
        let r =
            tokio::time::timeout(crate::session::RPC_TIMEOUT, client.report_wiretaps(report)).await;
        if !matches!(r, Ok(Ok(_))) {
            warn!("reporting wiretap drop counters failed; trying again");
            counters.changed.notify_one();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(c: &Counters, id: &str) -> u64 {
        c.snapshot().get(id).copied().unwrap_or(0)
    }

    #[tokio::test]
    async fn a_full_copy_is_dropped_and_counted_once() {
        let counters = Arc::new(Counters::default());
        let (mut tx, mut rx) = copy("t1".into(), counters.clone(), 10);
        assert!(tx.push(b"12345"));
        assert!(tx.push(b"6789"));
        assert_eq!(counted(&counters, "t1"), 0);
        // 9 queued: 2 more do not fit.
        assert!(!tx.push(b"ab"));
        assert_eq!(counted(&counters, "t1"), 1);
        // Dropped for good, even once the queue drained.
        assert_eq!(rx.next().await, None, "the receiver sees the copy end");
        assert!(!tx.push(b"x"));
        assert_eq!(counted(&counters, "t1"), 1, "counted once");
    }

    #[tokio::test]
    async fn a_drained_copy_takes_more_than_its_budget_over_time() {
        let counters = Arc::new(Counters::default());
        let (mut tx, mut rx) = copy("t2".into(), counters.clone(), 8);
        for _ in 0..100 {
            assert!(tx.push(b"abcdef"));
            assert_eq!(rx.next().await.as_deref(), Some(&b"abcdef"[..]));
        }
        drop(tx);
        assert_eq!(rx.next().await, None);
        assert!(counters.snapshot().is_empty());
    }

    #[tokio::test]
    async fn a_failed_delivery_is_counted_once_by_either_end() {
        let counters = Arc::new(Counters::default());
        let (mut tx, rx) = copy("t3".into(), counters.clone(), 1 << 20);
        assert!(tx.push(b"hello"));
        rx.dropped();
        drop(rx);
        assert!(!tx.push(b"again"));
        assert_eq!(counted(&counters, "t3"), 1);
    }

    #[tokio::test]
    async fn deliver_writes_the_copy_and_discards_answers() {
        let counters = Arc::new(Counters::default());
        let (mut tx, rx) = copy("t4".into(), counters.clone(), 1 << 20);
        let (ours, mut handler) = tokio::io::duplex(64);
        let task = tokio::spawn(deliver(ours, rx));
        assert!(tx.push(b"GET / HTTP/1.1\r\n\r\n"));
        let mut got = vec![0u8; 18];
        handler.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET / HTTP/1.1\r\n\r\n");
        handler.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        drop(tx);
        let mut rest = Vec::new();
        handler.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        drop(handler);
        task.await.unwrap();
        assert!(counters.snapshot().is_empty(), "delivered in full");
    }

    #[tokio::test]
    async fn a_handler_that_closed_early_drops_the_rest() {
        let counters = Arc::new(Counters::default());
        let (mut tx, rx) = copy("t5".into(), counters.clone(), 1 << 20);
        let (ours, handler) = tokio::io::duplex(64);
        drop(handler);
        let task = tokio::spawn(deliver(ours, rx));
        tokio::task::yield_now().await;
        tx.push(b"more");
        task.await.unwrap();
        assert_eq!(counted(&counters, "t5"), 1);
    }
}
