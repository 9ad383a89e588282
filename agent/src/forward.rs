//! The data path: one accept loop per captured port. Each accepted connection is routed once, at
//! accept time, from the current snapshot — to the manager's tunnel when an ACTIVE intercept
//! covers its port, otherwise to the application — and then spliced until both sides close.
//! Where the manager offers an in-kernel forward to the intercept's handler
//! (manager/src/intercept_fwd.rs), the client side is a connection to that forward ([`Offered`]),
//! and the intercept's later connections go there without asking the manager.
//! A snapshot change only affects later connections; nothing in flight is ever cut. An
//! intercepted connection whose client side cannot be reached, or closes before answering,
//! goes to the app with every byte the caller sent ([`crate::failopen`]). Ports with
//! personal intercepts are handed to [`crate::http_route`], which routes each HTTP request.
//! A connection with wiretaps on its port is relayed by [`crate::wiretap::relay`] instead of
//! spliced, so its wiretaps get a copy.

use crate::failopen::{self, FirstExchange};
use crate::routes::{Route, Routes};
use protocol::tunnel::{self, Role, TunnelHeader};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// How long dialing the tunnel may take before the connection falls back to the app.
const TUNNEL_DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the manager may take to connect the client side before the connection falls back
/// to the app (the client normally answers within milliseconds; a frozen one never does).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting to an in-kernel forward may take before the tunnel is asked instead
/// (it crosses two network namespaces of one host: well under a millisecond when it works).
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// The manager's in-kernel forwards to intercepts' handlers (manager/src/intercept_fwd.rs), by
/// intercept id and service port (each port of a multi-port engagement has its own handler
/// port): learnt from the manager's answer to a tunnel connection, used for the intercept's
/// later connections on that port until one fails to connect (the handler is gone, the forward
/// removed, the network cut), which sends that connection and the next through the tunnel again.
#[derive(Default)]
pub(crate) struct Offered(std::sync::Mutex<std::collections::HashMap<(String, u16), SocketAddr>>);

impl Offered {
    fn get(&self, intercept_id: &str, service_port: u16) -> Option<SocketAddr> {
        let key = (intercept_id.to_string(), service_port);
        self.0.lock().unwrap().get(&key).copied()
    }

    fn set(&self, intercept_id: &str, service_port: u16, at: SocketAddr) {
        let key = (intercept_id.to_string(), service_port);
        self.0.lock().unwrap().insert(key, at);
    }

    /// Forgets the forward of `intercept_id` on `service_port`.
    pub(crate) fn forget(&self, intercept_id: &str, service_port: u16) {
        let key = (intercept_id.to_string(), service_port);
        self.0.lock().unwrap().remove(&key);
    }

    /// Forgets every forward.
    pub(crate) fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

/// State shared by all accept loops and connections.
pub(crate) struct Shared {
    /// `host:port` of the manager's tunnel listener (used when the snapshot has no resolved
    /// address, or the resolved one stopped answering).
    pub tunnel_addr: String,
    /// Connections in flight.
    pub active: AtomicUsize,
    /// Upstream HTTP connections (to the app and through the tunnel) reused across callers on
    /// ports with personal intercepts.
    pub pool: crate::http_route::Pool,
    /// The agent token that proves the agent's tunnel connections.
    pub token: Option<protocol::auth::Token>,
    /// Copies the wiretaps dropped.
    pub counters: Arc<crate::wiretap::Counters>,
    /// The in-kernel forwards the manager offered.
    pub offered: Arc<Offered>,
}

/// Decrements the in-flight count when a connection ends.
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts connections captured for `service_port` forever.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    service_port: u16,
    app: SocketAddr,
    routes: watch::Receiver<Routes>,
    shared: Arc<Shared>,
) {
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // e.g. EMFILE: back off instead of spinning
                warn!("port {service_port}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        relay::tune(&conn);
        let (route, taps) = {
            let r = routes.borrow();
            (r.route(service_port), r.taps(service_port))
        };
        shared.active.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(shared.clone());
        if matches!(route, Route::Http) {
            let routes = routes.clone();
            tokio::spawn(async move {
                let shared = guard.0.clone();
                crate::http_route::serve(conn, peer, service_port, app, routes, taps, shared).await;
                drop(guard);
            });
            continue;
        }
        tokio::spawn(async move {
            let shared = &guard.0;
            serve(conn, peer, service_port, app, route, taps, shared).await;
            drop(guard);
        });
    }
}

async fn serve(
    mut inbound: TcpStream,
    peer: SocketAddr,
    service_port: u16,
    app: SocketAddr,
    route: Route,
    taps: Vec<crate::routes::Tap>,
    shared: &Shared,
) {
    // The copies start with the connection, so that they get every byte of the caller, also
    // those of the first exchange with an intercept's client side.
    let mut copies = if taps.is_empty() {
        Vec::new()
    } else {
        crate::wiretap::start(taps, shared, service_port)
    };
    if let Route::Intercept {
        intercept_id,
        session_id,
        tunnel,
    } = route
    {
        match open_tunnel(
            &shared.offered,
            tunnel,
            &shared.tunnel_addr,
            &intercept_id,
            crate::session::TunnelAuth {
                session_id: session_id.to_string(),
                token: shared.token.clone(),
            },
            service_port,
        )
        .await
        {
            Ok(mut t) => match failopen::first_exchange(&mut inbound, &mut t, &mut copies).await {
                FirstExchange::Committed => {
                    return relay_with_copies(inbound, t, copies, service_port, peer).await;
                }
                FirstExchange::CallerGone => return,
                FirstExchange::Unanswered { sent, caller_done } => {
                    shared.offered.forget(&intercept_id, service_port);
                    info!(
                        "port {service_port}: intercept {intercept_id}: the client side closed \
                         without answering; replaying {} bytes of {peer} to the app",
                        sent.len()
                    );
                    let replay = (sent.as_slice(), caller_done);
                    return to_app(inbound, peer, service_port, app, replay, copies).await;
                }
            },
            Err(e) => warn!(
                "port {service_port}: intercept {intercept_id}: client side unreachable ({e}); \
                 sending {peer} to the app"
            ),
        }
    }
    to_app(inbound, peer, service_port, app, (&[], false), copies).await;
}

/// Splices a caller to the app, after replaying what it already sent (`replay`: the bytes,
/// and whether it half-closed after them; the `copies` have them already).
async fn to_app(
    inbound: TcpStream,
    peer: SocketAddr,
    service_port: u16,
    app: SocketAddr,
    (sent, caller_done): (&[u8], bool),
    copies: Vec<crate::wiretap::CopySender>,
) {
    let mut outbound = match TcpStream::connect(app).await {
        Ok(s) => {
            relay::tune(&s);
            s
        }
        Err(e) => {
            debug!("port {service_port}: app at {app} refused {peer}: {e}");
            // Reset rather than close, as the app itself would have refused.
            let _ = inbound.set_zero_linger();
            return;
        }
    };
    if let Err(e) = failopen::replay(&mut outbound, sent, caller_done).await {
        debug!("port {service_port}: replaying {peer} to the app: {e}");
        return;
    }
    relay_with_copies(inbound, outbound, copies, service_port, peer).await;
}

/// Splices the caller and its destination, copying the caller's bytes to `copies` if any.
async fn relay_with_copies(
    mut inbound: TcpStream,
    mut outbound: TcpStream,
    copies: Vec<crate::wiretap::CopySender>,
    service_port: u16,
    peer: SocketAddr,
) {
    let r = if copies.is_empty() {
        relay::splice(&mut inbound, &mut outbound).await.map(|_| ())
    } else {
        crate::wiretap::relay(inbound, outbound, copies).await
    };
    if let Err(e) = r {
        debug!("port {service_port}: connection from {peer} ended: {e}");
    }
}

/// The client side of an intercepted connection: a connection to the manager's in-kernel
/// forward to the handler when one is known and answers, otherwise a tunnel connection (see
/// [`tunnel_or_forward`]).
pub(crate) async fn open_tunnel(
    offered: &Offered,
    resolved: Option<SocketAddr>,
    addr: &str,
    intercept_id: &str,
    who: crate::session::TunnelAuth,
    service_port: u16,
) -> std::io::Result<TcpStream> {
    if let Some(at) = offered.get(intercept_id, service_port) {
        match connect_forward(at).await {
            Ok(s) => return Ok(s),
            Err(e) => {
                debug!("intercept {intercept_id}: forward {at} failed ({e}); asking the manager");
                offered.forget(intercept_id, service_port);
            }
        }
    }
    let tunnel = tunnel_or_forward(resolved, addr, intercept_id, who, service_port).await?;
    match tunnel {
        Delivery::Tunnel(s) => Ok(s),
        Delivery::Forward(at) => {
            let s = connect_forward(at).await?;
            offered.set(intercept_id, service_port, at);
            Ok(s)
        }
    }
}

/// Connects to an in-kernel forward of the manager.
async fn connect_forward(at: SocketAddr) -> std::io::Result<TcpStream> {
    let s = tokio::time::timeout(FORWARD_CONNECT_TIMEOUT, TcpStream::connect(at))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    relay::tune(&s);
    Ok(s)
}

/// Where the manager delivers an intercepted connection.
enum Delivery {
    /// Over this tunnel connection.
    Tunnel(TcpStream),
    /// Through its in-kernel forward at this address.
    Forward(SocketAddr),
}

/// Dials the manager's tunnel, sends the agent-side header naming the service port the
/// connection was captured on, and waits for the manager's answer that the client side is
/// connected (an error when it is not, or does not say so within [`ANSWER_TIMEOUT`]), or that
/// an in-kernel forward leads to it.
async fn tunnel_or_forward(
    resolved: Option<SocketAddr>,
    addr: &str,
    intercept_id: &str,
    who: crate::session::TunnelAuth,
    service_port: u16,
) -> std::io::Result<Delivery> {
    let dial = async {
        if let Some(sa) = resolved {
            match TcpStream::connect(sa).await {
                Ok(s) => return Ok(s),
                Err(e) => debug!("tunnel at {sa} failed ({e}); resolving {addr} again"),
            }
        }
        TcpStream::connect(addr).await
    };
    let mut s = tokio::time::timeout(TUNNEL_DIAL_TIMEOUT, dial)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    relay::tune(&s);
    let mut header = TunnelHeader {
        conn_id: uuid::Uuid::new_v4().to_string(),
        intercept_id: intercept_id.to_string(),
        // Which pair of a multi-port engagement (the manager picks the local port by it).
        target: service_port.to_string(),
        ..Default::default()
    };
    who.fill(&mut header);
    tunnel::write_header(&mut s, Role::Agent, &header).await?;
    // Not a byte of the caller before the manager says the client side is connected.
    let (_, answer) = tunnel::read_header_timeout(&mut s, ANSWER_TIMEOUT)
        .await
        .map_err(|e| std::io::Error::other(format!("no answer from the manager: {e}")))?;
    match answer.error {
        None if answer.target.is_empty() => Ok(Delivery::Tunnel(s)),
        None => answer.target.parse().map(Delivery::Forward).map_err(|_| {
            std::io::Error::other(format!(
                "the manager offered a bad forward {:?}",
                answer.target
            ))
        }),
        Some(e) => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            e.to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A manager's tunnel listener that answers every agent header with `target`, counting the
    /// tunnel connections it got.
    async fn offering_manager(target: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let asked = Arc::new(AtomicUsize::new(0));
        let count = asked.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let (_, h) = tunnel::read_header(&mut s).await.unwrap();
                let mut answer = h.answer(None);
                answer.target = target.to_string();
                tunnel::write_header(&mut s, Role::Client, &answer)
                    .await
                    .unwrap();
            }
        });
        (addr, asked)
    }

    async fn open(offered: &Offered, manager: SocketAddr, port: u16) -> std::io::Result<TcpStream> {
        let who = crate::session::TunnelAuth {
            session_id: "agent".into(),
            token: None,
        };
        open_tunnel(offered, Some(manager), "", "s1:web", who, port).await
    }

    #[tokio::test]
    async fn an_offered_forward_serves_later_connections_of_its_port_until_it_refuses() {
        let forward = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = forward.local_addr().unwrap();
        let (manager, asked) = offering_manager(at).await;
        let offered = Offered::default();

        // The first connection asks the manager, then connects to the forward it names.
        let _a = open(&offered, manager, 8080).await.unwrap();
        forward.accept().await.unwrap();
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        // The next one on that port goes to the forward without asking.
        let _b = open(&offered, manager, 8080).await.unwrap();
        forward.accept().await.unwrap();
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        // Another port of the same intercept has a handler of its own: it asks.
        let _c = open(&offered, manager, 8081).await.unwrap();
        forward.accept().await.unwrap();
        assert_eq!(asked.load(Ordering::SeqCst), 2);

        // The forward refuses: the connection asks the manager again (which here names the
        // same dead forward, so the caller goes to the app), and nothing is remembered.
        drop(forward);
        assert!(open(&offered, manager, 8080).await.is_err());
        assert_eq!(asked.load(Ordering::SeqCst), 3);
        assert_eq!(
            offered.get("s1:web", 8080),
            None,
            "a refused forward is forgotten"
        );
    }
}
