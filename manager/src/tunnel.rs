//! The manager's tunnel listener: reads each connection's header, parks the originating side
//! (an agent's intercepted connection, or a client's file-sync or pod-local stream —
//! `manager/src/to_pod.rs`), asks the other side to
//! dial in with the same connection id over its `WatchDials` stream, answers an agent once its
//! client side is connected (or why it cannot be), then splices the two.

use crate::Manager;
use protocol::manager::DialRequest;
use protocol::tunnel::{
    read_header_timeout, write_header, HeaderError, Role, TunnelError, TunnelHeader, TunnelKind,
};
use relay::{splice, tune};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How long an agent-side connection waits for its client side.
const PAIR_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the manager dropped a tunnel connection (logged at debug level).
#[derive(Debug, thiserror::Error)]
pub enum TunnelDropped {
    /// The header could not be read.
    #[error("{0}")]
    Header(#[from] TunnelError),
    /// Splicing or answering failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A role opened a stream of a kind only the other role may open.
    #[error("a {role:?} may not open a {kind:?} stream")]
    BadKind {
        /// Who opened the connection.
        role: Role,
        /// The kind it asked for.
        kind: TunnelKind,
    },
    /// The answering side said it could not deliver.
    #[error("client could not deliver: {0}")]
    NotDelivered(HeaderError),
    /// An answering side named a connection nobody waits for.
    #[error("no agent connection {0} is waiting")]
    NotWaiting(String),
    /// The intercept a connection names no longer exists.
    #[error("intercept {0} is gone")]
    InterceptGone(String),
    /// The intercept's client session is gone.
    #[error("intercepting client is gone")]
    ClientGone,
    /// The intercept's client is not watching dial requests.
    #[error("client is not watching dials")]
    ClientNotWatching,
    /// No agent of the intercepted workload watches dial requests.
    #[error("no traffic-agent of the workload is watching dials")]
    NoAgentWatching,
    /// The other side's dial stream ended before the request was sent.
    #[error("the other side's dial stream closed")]
    DialStreamClosed,
    /// The other side's pending entry was dropped.
    #[error("the other side refused the connection")]
    Refused,
    /// The other side did not dial in within the pairing timeout.
    #[error("the other side did not answer in time")]
    NoAnswer,
    /// An outbound stream failed (the client was told why).
    #[error("{0}")]
    Outbound(HeaderError),
    /// The originating side went away before it could be told its stream is connected.
    #[error("answering the originating side: {0}")]
    Answer(#[source] std::io::Error),
    /// The connection has no valid session proof, or names what its session may not use.
    #[error("{role:?} {kind:?} stream refused: {reason}")]
    NotAuthorized {
        /// Who opened the connection.
        role: Role,
        /// The kind it asked for.
        kind: TunnelKind,
        /// Why.
        reason: HeaderError,
    },
}

/// Accepts tunnel connections forever.
pub async fn serve(mgr: Manager, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((sock, peer)) => {
                tune(&sock);
                let mgr = mgr.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(mgr, sock).await {
                        tracing::debug!(%peer, "tunnel connection dropped: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("tunnel accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(mgr: Manager, mut sock: TcpStream) -> Result<(), TunnelDropped> {
    let (role, header) = read_header_timeout(&mut sock, HEADER_TIMEOUT).await?;
    let admitted = {
        let st = mgr.inner.state.lock().await;
        crate::auth::admit_tunnel(&mgr.inner.auth, &st, role, &header)
    };
    if let Err(reason) = admitted {
        if role == Role::Client && header.kind.is_answered() {
            // Outbound and pod-local clients wait for an answer: tell them why.
            let _ = crate::outbound::refuse(&mut sock, &header, reason.clone()).await;
        }
        return Err(TunnelDropped::NotAuthorized {
            role,
            kind: header.kind,
            reason,
        });
    }
    match (role, header.kind) {
        // Originating sides.
        (Role::Agent, TunnelKind::Intercept) => from_agent(mgr, sock, header).await,
        (Role::Client, TunnelKind::Fs) => from_client(mgr, sock, header).await,
        (Role::Client, TunnelKind::OutTcp) => crate::outbound::tcp(&mgr, sock, header).await,
        (Role::Client, TunnelKind::OutUdp) => crate::outbound::udp(&mgr, sock, header).await,
        (Role::Client, TunnelKind::OutFwd) => crate::forward::serve(&mgr, sock, header).await,
        (Role::Client, TunnelKind::PodTcp | TunnelKind::PodUdp) => {
            crate::to_pod::from_client(mgr, sock, header).await
        }
        // The answering side of any stream: hand it to the originator waiting for it.
        (Role::Client, TunnelKind::Intercept)
        | (Role::Agent, TunnelKind::Fs | TunnelKind::PodTcp | TunnelKind::PodUdp) => {
            answer(&mgr, sock, header).await
        }
        // Outbound streams are only ever opened by clients.
        (Role::Agent, kind @ (TunnelKind::OutTcp | TunnelKind::OutUdp | TunnelKind::OutFwd)) => {
            Err(TunnelDropped::BadKind { role, kind })
        }
    }
}

/// What the answering side of a stream handed its originator.
pub(crate) enum Paired {
    /// Its own connection: the stream.
    Stream(TcpStream),
    /// The address of an intercept's handler (the answering client's own address, checked),
    /// for the manager to reach without the client's relay.
    Handler(SocketAddr),
}

impl Paired {
    /// The stream: the answering side's connection, or a new one to the handler it named.
    pub(crate) async fn connect(self) -> Result<TcpStream, TunnelDropped> {
        match self {
            Paired::Stream(s) => Ok(s),
            Paired::Handler(to) => crate::outbound::dial_tuned(to, DIRECT_TIMEOUT)
                .await
                .map_err(TunnelDropped::NotDelivered),
        }
    }
}

/// The answering side of a stream dialed in: hand it (or the error it reported) to the
/// originator parked under its id. A client that named a `target` (its own address) is not
/// the stream: the originator gets that address, to reach the handler without the client.
async fn answer(mgr: &Manager, sock: TcpStream, header: TunnelHeader) -> Result<(), TunnelDropped> {
    let waiting = mgr.inner.pending.lock().unwrap().remove(&header.conn_id);
    let Some(tx) = waiting else {
        return Err(TunnelDropped::NotWaiting(header.conn_id));
    };
    let paired = match header.error {
        Some(e) => Err(e),
        None if header.kind == TunnelKind::Intercept && !header.target.is_empty() => {
            direct_target(&sock, &header.target).map(Paired::Handler)
        }
        None => Ok(Paired::Stream(sock)),
    };
    let failed = paired.as_ref().err().cloned();
    let _ = tx.send(paired);
    match failed {
        None => Ok(()),
        Some(e) => Err(TunnelDropped::NotDelivered(e)),
    }
}

/// How long connecting to a client's handler directly may take.
const DIRECT_TIMEOUT: Duration = Duration::from_secs(2);

/// `target` as an address, when it is the one `client` connects from (a client names only
/// itself): the handler of an intercepted connection, reachable without the client's relay.
fn direct_target(client: &TcpStream, target: &str) -> Result<SocketAddr, HeaderError> {
    let to: SocketAddr = target
        .parse()
        .map_err(|_| HeaderError::BadTarget(target.to_string()))?;
    let from = client
        .peer_addr()
        .map_err(|e| HeaderError::Other(e.to_string()))?;
    if from.ip().to_canonical() != to.ip().to_canonical() {
        return Err(HeaderError::Forbidden(target.to_string()));
    }
    Ok(to)
}

/// The sender of dial requests to an agent of the workload `spec` engages.
pub(crate) fn agent_dials(
    st: &crate::state::State,
    spec: &protocol::manager::InterceptSpec,
) -> Result<mpsc::Sender<DialRequest>, TunnelDropped> {
    st.agents
        .values()
        .filter(|a| a.info.namespace == spec.namespace && a.info.name == spec.workload)
        .find_map(|a| a.dials.clone())
        .ok_or(TunnelDropped::NoAgentWatching)
}

/// An agent accepted an intercepted connection: ask the owning client to dial in. The agent
/// is answered before any payload moves (see `TunnelKind::Intercept`): when the client side
/// cannot be connected it sends the caller to the app instead.
async fn from_agent(
    mgr: Manager,
    mut agent: TcpStream,
    h: TunnelHeader,
) -> Result<(), TunnelDropped> {
    let result = match dial_request_for_agent(&mgr, &h).await {
        Ok((tx, req)) => match pair_peer(&mgr, tx, req).await {
            Ok(paired) => {
                let forward = match paired {
                    Paired::Handler(to) => {
                        crate::intercept_fwd::offer(&mgr, &agent, &h.intercept_id, to)
                    }
                    Paired::Stream(_) => None,
                };
                if let Some(at) = forward {
                    // The kernel carries it from here: the agent connects to the forward.
                    let mut answer = h.answer(None);
                    answer.target = at.to_string();
                    return write_header(&mut agent, Role::Client, &answer)
                        .await
                        .map_err(TunnelDropped::Answer);
                }
                paired.connect().await
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match result {
        Ok(mut other) => {
            write_header(&mut agent, Role::Client, &h.answer(None))
                .await
                .map_err(TunnelDropped::Answer)?;
            splice(&mut agent, &mut other).await?;
            Ok(())
        }
        Err(e) => {
            let answer = h.answer(Some(HeaderError::Other(e.to_string())));
            let _ = write_header(&mut agent, Role::Client, &answer).await;
            Err(e)
        }
    }
}

/// The client of the intercept an agent-side header names, and the dial request it gets.
async fn dial_request_for_agent(
    mgr: &Manager,
    h: &TunnelHeader,
) -> Result<(mpsc::Sender<DialRequest>, DialRequest), TunnelDropped> {
    let st = mgr.inner.state.lock().await;
    let ic = st
        .intercept_by_id(&h.intercept_id)
        .ok_or_else(|| TunnelDropped::InterceptGone(h.intercept_id.clone()))?;
    let client = st
        .clients
        .get(&ic.client_session)
        .ok_or(TunnelDropped::ClientGone)?;
    let spec = ic.spec.as_ref().expect("spec");
    let tx = client
        .dials
        .clone()
        .ok_or(TunnelDropped::ClientNotWatching)?;
    Ok((
        tx,
        DialRequest {
            conn_id: h.conn_id.clone(),
            intercept_id: h.intercept_id.clone(),
            target_host: spec.target_host.clone(),
            // Multi-port engagements: the agent names the service port in `target`.
            target_port: crate::engage::target_port_for(ic, h.target.parse().ok()),
            kind: protocol::manager::DialKind::Intercept as i32,
            ..Default::default()
        },
    ))
}

/// A client opens a file-sync stream for one of its intercepts: ask an agent of the
/// intercepted workload to dial in.
async fn from_client(
    mgr: Manager,
    client: TcpStream,
    h: TunnelHeader,
) -> Result<(), TunnelDropped> {
    let (tx, req) = {
        let st = mgr.inner.state.lock().await;
        let ic = st
            .intercept_by_id(&h.intercept_id)
            .ok_or_else(|| TunnelDropped::InterceptGone(h.intercept_id.clone()))?;
        let tx = agent_dials(&st, ic.spec.as_ref().expect("spec"))?;
        (
            tx,
            DialRequest {
                conn_id: h.conn_id.clone(),
                intercept_id: h.intercept_id.clone(),
                kind: protocol::manager::DialKind::Fs as i32,
                ..Default::default()
            },
        )
    };
    originate(mgr, client, tx, req).await
}

/// Parks `origin`, sends the dial request to the other side, and splices the two once the
/// other side dials in with the same connection id.
async fn originate(
    mgr: Manager,
    mut origin: TcpStream,
    tx: mpsc::Sender<DialRequest>,
    req: DialRequest,
) -> Result<(), TunnelDropped> {
    let mut other = pair(&mgr, tx, req).await?;
    splice(&mut origin, &mut other).await?;
    Ok(())
}

/// Sends the dial request to the other side and waits until it dials in with the same
/// connection id: its connection (or one to the handler it named), or why it could not
/// deliver.
pub(crate) async fn pair(
    mgr: &Manager,
    tx: mpsc::Sender<DialRequest>,
    req: DialRequest,
) -> Result<TcpStream, TunnelDropped> {
    pair_peer(mgr, tx, req).await?.connect().await
}

/// [`pair`], handing over what the other side answered as it is.
async fn pair_peer(
    mgr: &Manager,
    tx: mpsc::Sender<DialRequest>,
    req: DialRequest,
) -> Result<Paired, TunnelDropped> {
    let conn_id = req.conn_id.clone();
    let (ptx, rx) = tokio::sync::oneshot::channel();
    mgr.inner
        .pending
        .lock()
        .unwrap()
        .insert(conn_id.clone(), ptx);
    if tx.send(req).await.is_err() {
        mgr.inner.pending.lock().unwrap().remove(&conn_id);
        return Err(TunnelDropped::DialStreamClosed);
    }
    match tokio::time::timeout(PAIR_TIMEOUT, rx).await {
        Ok(Ok(Ok(c))) => Ok(c),
        Ok(Ok(Err(e))) => Err(TunnelDropped::NotDelivered(e)),
        Ok(Err(_)) => Err(TunnelDropped::Refused),
        Err(_) => {
            mgr.inner.pending.lock().unwrap().remove(&conn_id);
            Err(TunnelDropped::NoAnswer)
        }
    }
}
