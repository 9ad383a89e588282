//! Per-request routing on a port with personal intercepts. The connection's first bytes decide
//! its protocol ([`crate::http_sniff`]): anything that is not HTTP is spliced to the app as on
//! any other port; HTTP/1.x and HTTP/2 (prior knowledge) are terminated with hyper, and each
//! request is sent — headers and streaming body, no buffering of whole bodies — to the client
//! whose filter matches it or to the app, over upstream connections kept for the life of the
//! caller's connection (one per destination; HTTP/2 upstreams multiplex the caller's streams).
//!
//! Limits: a request head may be at most [`MAX_HEAD`] bytes (larger: `431`, connection closed)
//! and must arrive within [`HEAD_TIMEOUT`] (slow senders are cut). An `Upgrade: h2c` request is
//! served as HTTP/1.1 (the upgrade is declined, as RFC 9110 allows), so its later requests are
//! still routed one by one; other upgrades (WebSocket) are passed to the destination and then
//! spliced.
//!
//! Wiretaps: the port's unfiltered wiretaps get a copy of the caller's whole byte stream
//! ([`crate::wiretap::Tee`]), its HTTP-filtered ones a copy of each request they match
//! ([`crate::wiretap_http`]).

use crate::forward::{open_tunnel, Shared};
use crate::http_sniff::{sniff, sniff_stalled, Sniff};
use crate::routes::{Route, Routes, Tap};
use crate::wiretap::{CopySender, Tee};
use crate::wiretap_http::TeeBody;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::debug;

/// Largest request head (request line + headers) accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// How long a request head may take to arrive.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the first bytes may take to tell the protocol; a silent connection then goes to
/// the app (protocols where the server speaks first), a slow HTTP sender to the HTTP server.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(1);

type Body = Either<Returning, Full<Bytes>>;

/// Serves one accepted connection on a port with personal intercepts.
pub(crate) async fn serve(
    mut inbound: TcpStream,
    peer: SocketAddr,
    service_port: u16,
    app: SocketAddr,
    routes: watch::Receiver<Routes>,
    taps: Vec<Tap>,
    shared: Arc<Shared>,
) {
    let mut copies = crate::wiretap::start(taps, &shared, service_port);
    let mut first = Vec::with_capacity(4096);
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let kind = loop {
        match sniff(&first) {
            Sniff::NeedMore => {}
            decided => break decided,
        }
        match tokio::time::timeout_at(deadline, inbound.read_buf(&mut first)).await {
            Ok(Ok(0)) => break Sniff::Other,
            Err(_) => break sniff_stalled(&first),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                debug!("port {service_port}: {peer}: {e}");
                return;
            }
        }
    };
    for c in &mut copies {
        c.push(&first);
    }
    let h2 = match kind {
        Sniff::Http1 => false,
        Sniff::Http2 => true,
        _ => return splice_to_app(inbound, &first, peer, service_port, app, copies).await,
    };
    let ctx = Arc::new(Ctx {
        service_port,
        app,
        routes,
        shared,
        h2,
    });
    let io = TokioIo::new(Prefixed {
        prefix: Bytes::from(first),
        inner: Tee {
            inner: inbound,
            copies,
        },
    });
    let svc = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(ctx.handle(req).await) }
    });
    let r = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEAD as u32)
            .keep_alive_interval(Duration::from_secs(30))
            .serve_connection(io, svc)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT)
            .max_buf_size(MAX_HEAD)
            // A caller may shut its side down and still wait for the answers.
            .half_close(true)
            .serve_connection(io, svc)
            .with_upgrades()
            .await
    };
    if let Err(e) = r {
        debug!("port {service_port}: HTTP connection from {peer} ended: {e}");
    }
}

/// Not HTTP: the app gets the bytes read so far, then everything else (and the wiretaps their
/// copies).
async fn splice_to_app(
    mut inbound: TcpStream,
    first: &[u8],
    peer: SocketAddr,
    service_port: u16,
    app: SocketAddr,
    copies: Vec<CopySender>,
) {
    let mut out = match TcpStream::connect(app).await {
        Ok(s) => s,
        Err(e) => {
            debug!("port {service_port}: app at {app} refused {peer}: {e}");
            let _ = inbound.set_zero_linger();
            return;
        }
    };
    relay::tune(&out);
    if out.write_all(first).await.is_err() {
        return;
    }
    let r = if copies.is_empty() {
        relay::splice(&mut inbound, &mut out).await.map(|_| ())
    } else {
        crate::wiretap::relay(inbound, out, copies).await
    };
    if let Err(e) = r {
        debug!("port {service_port}: connection from {peer} ended: {e}");
    }
}

/// A connection to one destination (the app or one intercept's client).
enum Upstream {
    H1(hyper::client::conn::http1::SendRequest<TeeBody>),
    H2(hyper::client::conn::http2::SendRequest<TeeBody>),
}

impl Upstream {
    fn is_closed(&self) -> bool {
        match self {
            Upstream::H1(s) => s.is_closed(),
            Upstream::H2(s) => s.is_closed(),
        }
    }

    /// Sends a request; on failure before the request was written, hands it back.
    async fn send(
        &mut self,
        req: Request<TeeBody>,
    ) -> Result<Response<Incoming>, (hyper::Error, Option<Request<TeeBody>>)> {
        let r = match self {
            Upstream::H1(s) => {
                // Wait for the previous exchange to finish; if the connection closed instead,
                // the send below fails and hands the request back.
                let _ = s.ready().await;
                s.try_send_request(req).await
            }
            Upstream::H2(s) => s.try_send_request(req).await,
        };
        r.map_err(|mut e| {
            let req = e.take_message();
            (e.into_error(), req)
        })
    }
}

/// Which upstream a route uses: the service port, and `None` = its app, else the intercept id.
type Key = (u16, Option<Arc<str>>);

fn key_of(service_port: u16, route: &Route) -> Key {
    match route {
        Route::Intercept { intercept_id, .. } => (service_port, Some(intercept_id.clone())),
        _ => (service_port, None),
    }
}

/// What all requests of one caller connection share.
struct Ctx {
    service_port: u16,
    app: SocketAddr,
    routes: watch::Receiver<Routes>,
    shared: Arc<Shared>,
    h2: bool,
}

impl Ctx {
    /// Where a request goes, and the filtered wiretaps that want a copy of it.
    fn route(&self, req: &Request<Incoming>) -> (Route, Vec<Tap>) {
        let headers = req.headers();
        let has = |k: &str, v: &str| {
            headers
                .get_all(k)
                .iter()
                .any(|x| x.as_bytes() == v.as_bytes())
        };
        let routes = self.routes.borrow();
        let path = req.uri().path();
        (
            routes.route_request(self.service_port, path, has),
            routes.request_taps(self.service_port, path, has),
        )
    }

    fn pooled(&self, key: &Key) -> Option<Upstream> {
        self.shared.pool.take(key, self.h2)
    }

    /// Opens a new upstream for a route: the app, or a tunnel connection for the intercept
    /// (the manager pairs it with the client, which dials its handler).
    async fn connect(&self, route: &Route) -> Result<Upstream, ConnectError> {
        let stream = match route {
            Route::Intercept {
                intercept_id,
                session_id,
                tunnel,
            } => open_tunnel(
                &self.shared.offered,
                *tunnel,
                &self.shared.tunnel_addr,
                intercept_id,
                crate::session::TunnelAuth {
                    session_id: session_id.to_string(),
                    token: self.shared.token.clone(),
                },
                self.service_port,
            )
            .await
            .map_err(|cause| ConnectError::Tunnel {
                intercept_id: intercept_id.clone(),
                cause,
            })?,
            _ => {
                let s = TcpStream::connect(self.app)
                    .await
                    .map_err(|cause| ConnectError::App {
                        app: self.app,
                        cause,
                    })?;
                relay::tune(&s);
                s
            }
        };
        let io = TokioIo::new(stream);
        if self.h2 {
            let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(ConnectError::H2Handshake)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!("HTTP/2 upstream ended: {e}");
                }
            });
            Ok(Upstream::H2(send))
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(ConnectError::H1Handshake)?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    debug!("HTTP/1 upstream ended: {e}");
                }
            });
            Ok(Upstream::H1(send))
        }
    }

    /// [`Ctx::connect`]; when the client side of an intercept cannot be reached the request
    /// goes to the app instead (`route` and `key` then say so).
    async fn connect_or_app(
        &self,
        route: &mut Route,
        key: &mut Key,
    ) -> Result<Upstream, ConnectError> {
        match self.connect(route).await {
            Err(e @ ConnectError::Tunnel { .. }) => {
                tracing::warn!(
                    "port {}: {e}; sending the request to the app",
                    self.service_port
                );
                *route = Route::App;
                *key = key_of(self.service_port, route);
                self.connect(route).await
            }
            other => other,
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let (route, taps) = self.route(&req);
        let copies = crate::wiretap_http::start(&req, taps, &self.shared, self.service_port);
        let mut req = req.map(|b| TeeBody::new(b, copies));
        let key = key_of(self.service_port, &route);
        let mut upgrade = None;
        if !self.h2 && req.headers().contains_key(UPGRADE) {
            if is_h2c_upgrade(&req) {
                decline_h2c(&mut req);
            } else {
                upgrade = Some(hyper::upgrade::on(&mut req));
            }
        }
        let (mut route, mut key) = (route, key);
        let (mut up, mut fresh) = match self.pooled(&key) {
            Some(u) => (u, false),
            None => match self.connect_or_app(&mut route, &mut key).await {
                Ok(u) => (u, true),
                Err(e) => return bad_gateway(&e.to_string()),
            },
        };
        let mut resp = loop {
            match up.send(req).await {
                Ok(r) => break r,
                // A pooled connection the other side had closed, or a client side that closed
                // before taking the request: once more on a new one (the app's, if need be).
                Err((_, Some(r))) if !fresh || key.1.is_some() => {
                    req = r;
                    if fresh {
                        route = Route::App;
                        key = key_of(self.service_port, &route);
                    }
                    up = match self.connect_or_app(&mut route, &mut key).await {
                        Ok(u) => u,
                        Err(e) => return bad_gateway(&e.to_string()),
                    };
                    fresh = true;
                }
                Err((e, _)) => {
                    let to = key
                        .1
                        .as_deref()
                        .map_or("the app".to_string(), |id| format!("intercept {id}"));
                    return bad_gateway(&format!("{to}: {e}"));
                }
            }
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(inbound) = upgrade {
                let outbound = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    if let (Ok(a), Ok(b)) = (inbound.await, outbound.await) {
                        let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    }
                });
            }
            return resp.map(|b| Either::Left(Returning::new(b, None)));
        }
        match up {
            // HTTP/2 multiplexes: shared again at once.
            Upstream::H2(_) => {
                self.shared.pool.put(key, up);
                resp.map(|b| Either::Left(Returning::new(b, None)))
            }
            // HTTP/1: reusable once this response's body has been read to its end.
            Upstream::H1(_) => {
                let back = (self.shared.clone(), key, up);
                resp.map(|b| Either::Left(Returning::new(b, Some(back))))
            }
        }
    }
}

/// Most idle HTTP/1 upstream connections kept per destination (enough for a few hundred
/// concurrent keep-alive callers without reconnecting).
const MAX_IDLE: usize = 512;

/// An idle upstream connection is closed after this long unused (it may lead to an intercept
/// that has ended).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Upstream connections shared by all caller connections of the agent, by destination and
/// protocol: idle HTTP/1 ones (a caller takes one for one exchange) and one HTTP/2 connection
/// per destination (shared by everybody). Closed ones are dropped when met, unused ones after
/// [`IDLE_TIMEOUT`].
#[derive(Default)]
pub(crate) struct Pool {
    inner: Mutex<PoolInner>,
}

#[derive(Default)]
struct PoolInner {
    idle: HashMap<(Key, bool), Vec<(Upstream, Instant)>>,
    last_sweep: Option<Instant>,
}

impl PoolInner {
    /// At most once a second: drops closed and long-unused connections everywhere.
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_sweep = Some(now);
        self.idle.retain(|_, list| {
            list.retain(|(u, since)| !u.is_closed() && now.duration_since(*since) < IDLE_TIMEOUT);
            !list.is_empty()
        });
    }
}

impl Pool {
    fn take(&self, key: &Key, h2: bool) -> Option<Upstream> {
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("pool lock");
        inner.sweep(now);
        let list = inner.idle.get_mut(&(key.clone(), h2))?;
        if h2 {
            list.retain(|(u, _)| !u.is_closed());
            return match list.first_mut() {
                Some((Upstream::H2(s), since)) => {
                    *since = now;
                    Some(Upstream::H2(s.clone()))
                }
                _ => None,
            };
        }
        while let Some((u, _)) = list.pop() {
            if !u.is_closed() {
                return Some(u);
            }
        }
        None
    }

    fn put(&self, key: Key, up: Upstream) {
        if up.is_closed() {
            return;
        }
        let h2 = matches!(up, Upstream::H2(_));
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("pool lock");
        inner.sweep(now);
        let list = inner.idle.entry((key, h2)).or_default();
        if (h2 && list.is_empty()) || (!h2 && list.len() < MAX_IDLE) {
            list.push((up, now));
        }
    }
}

/// A response body on its way to the caller; when it was read to its end, the HTTP/1
/// connection it came on goes back to the pool (dropped midway, the connection is closed).
pub(crate) struct Returning {
    inner: Incoming,
    done: bool,
    back: Option<(Arc<Shared>, Key, Upstream)>,
}

impl Returning {
    fn new(inner: Incoming, back: Option<(Arc<Shared>, Key, Upstream)>) -> Self {
        Returning {
            inner,
            done: false,
            back,
        }
    }
}

impl hyper::body::Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) {
            self.done = true;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let Some((shared, key, up)) = self.back.take() {
            if self.done || hyper::body::Body::is_end_stream(&self.inner) {
                shared.pool.put(key, up);
            }
        }
    }
}

fn is_h2c_upgrade<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(UPGRADE)
        .iter()
        .any(|v| has_token(v, "h2c"))
}

fn has_token(v: &HeaderValue, token: &str) -> bool {
    v.to_str()
        .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        .unwrap_or(false)
}

/// Removes the h2c upgrade offer so the request continues as plain HTTP/1.1.
fn decline_h2c<B>(req: &mut Request<B>) {
    let h = req.headers_mut();
    h.remove(UPGRADE);
    h.remove("http2-settings");
    let kept: Vec<String> = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case("upgrade")
                && !t.eq_ignore_ascii_case("http2-settings")
        })
        .map(str::to_string)
        .collect();
    h.remove(CONNECTION);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
            h.insert(CONNECTION, v);
        }
    }
}

/// Why an upstream could not be opened; the caller answers 502 with its text.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    /// The tunnel to the intercept's client could not be opened.
    #[error("intercept {intercept_id}: tunnel unreachable: {cause}")]
    Tunnel {
        intercept_id: std::sync::Arc<str>,
        cause: std::io::Error,
    },
    /// The app did not accept the connection.
    #[error("app at {app}: {cause}")]
    App {
        app: std::net::SocketAddr,
        cause: std::io::Error,
    },
    /// The HTTP/2 handshake with the upstream failed.
    #[error("HTTP/2 handshake: {0}")]
    H2Handshake(hyper::Error),
    /// The HTTP/1 handshake with the upstream failed.
    #[error("HTTP/1 handshake: {0}")]
    H1Handshake(hyper::Error),
}

fn bad_gateway(why: &str) -> Response<Body> {
    debug!("502: {why}");
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(format!(
        "telepresence traffic-agent: {why}\n"
    )))));
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}

/// A stream whose first bytes were already read: they are replayed before the rest.
struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
