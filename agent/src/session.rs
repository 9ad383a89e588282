//! The agent's link to the traffic-manager: arrival (with retries while the manager starts),
//! lease renewal (arriving again when the manager forgot the session), the intercept watch
//! that keeps the routing snapshot (and the log level the manager asks for) current, and the
//! dial requests (file sync, pod-local ports). While the watch is broken everything goes to
//! the app, and a session the manager no longer knows (it restarted, or saw the agent's
//! connection end) is replaced at once rather than at the next renewal.

use crate::routes::Routes;
use crate::AgentError;
use protocol::auth::{Bearer, Token};
use protocol::manager::{AgentInfo, SessionInfo};
use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tonic::transport::Endpoint;
use tonic::Code;
use tracing::{debug, info, warn};

pub(crate) type Client = protocol::auth::ManagerClient;

/// Pause between attempts while the manager does not answer.
const RETRY: Duration = Duration::from_millis(100);
/// Longest pause between reconnection attempts once running (a restarted manager is found
/// again within this).
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// Deadline for one unary call.
pub(crate) const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Lease assumed when the manager grants none.
const DEFAULT_LEASE_SECS: u32 = 15;

/// An error and its causes on one line (tonic's transport errors hide the useful part in
/// their sources).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

fn status_line(s: &tonic::Status) -> String {
    match s.source() {
        Some(src) if s.message().is_empty() => format!("{:?}: {}", s.code(), error_chain(src)),
        _ => format!("{:?}: {}", s.code(), s.message()),
    }
}

fn endpoint(addr: &str) -> Result<Endpoint, AgentError> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| AgentError::Config(format!("manager address {addr:?}: {e}")))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true))
}

/// Statuses that retrying cannot fix.
fn is_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented
    )
}

/// Connects to the manager and arrives as an agent, retrying every ~100 ms until `deadline`.
pub(crate) async fn connect(
    addr: &str,
    info: &AgentInfo,
    token: Option<Token>,
    deadline: Duration,
) -> Result<(Client, SessionInfo), AgentError> {
    let ep = endpoint(addr)?;
    let start = Instant::now();
    let mut last;
    loop {
        match ep.connect().await {
            Ok(ch) => {
                let mut client = protocol::auth::manager_client(ch, Bearer::new(token.clone()));
                match arrive_once(&mut client, info).await {
                    Ok(s) => return Ok((client, s)),
                    Err(Some(status)) if is_refusal(status.code()) => {
                        return Err(AgentError::Manager(format!(
                            "the traffic-manager at {addr} refused this agent: {}",
                            status_line(&status)
                        )));
                    }
                    Err(Some(status)) => last = status_line(&status),
                    Err(None) => last = "ArriveAsAgent timed out or returned no session".into(),
                }
            }
            Err(e) => last = error_chain(&e),
        }
        if start.elapsed() >= deadline {
            return Err(AgentError::Manager(format!(
                "the traffic-manager at {addr} did not answer within {:.1}s (last error: {last})",
                deadline.as_secs_f64()
            )));
        }
        debug!("manager at {addr} not ready: {last}");
        tokio::time::sleep(RETRY).await;
    }
}

/// One ArriveAsAgent call: `Err(None)` on timeout or a reply without session.
async fn arrive_once(
    client: &mut Client,
    info: &AgentInfo,
) -> Result<SessionInfo, Option<tonic::Status>> {
    match tokio::time::timeout(RPC_TIMEOUT, client.arrive_as_agent(info.clone())).await {
        Ok(Ok(resp)) => resp.into_inner().session.ok_or(None),
        Ok(Err(status)) => Err(Some(status)),
        Err(_) => Err(None),
    }
}

fn remain_interval(lease_seconds: u32) -> Duration {
    let lease = if lease_seconds == 0 {
        DEFAULT_LEASE_SECS
    } else {
        lease_seconds
    };
    Duration::from_millis(u64::from(lease) * 1000 / 3).max(Duration::from_millis(100))
}

/// Arrives again on the existing channel until the manager accepts (the agent keeps serving the
/// app meanwhile, so there is no deadline).
async fn rearrive(client: &mut Client, info: &AgentInfo) -> SessionInfo {
    let mut backoff = RETRY;
    loop {
        match arrive_once(client, info).await {
            Ok(s) => return s,
            Err(e) => {
                let why = e
                    .as_ref()
                    .map(status_line)
                    .unwrap_or_else(|| "timed out".into());
                warn!("arriving at the traffic-manager again failed: {why}");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Renews the lease every lease/3, or at once when `poke` says the session may be gone (the
/// intercept watch found it unknown); when the manager answers NotFound (it restarted or
/// ended the session) arrives again and publishes the new session.
pub(crate) async fn remain_loop(
    mut client: Client,
    info: AgentInfo,
    session_tx: watch::Sender<SessionInfo>,
    poke: Arc<Notify>,
) {
    loop {
        let session = session_tx.borrow().clone();
        tokio::select! {
            () = tokio::time::sleep(remain_interval(session.lease_seconds)) => {}
            () = poke.notified() => {}
        }
        match tokio::time::timeout(RPC_TIMEOUT, client.remain(session.clone())).await {
            Ok(Ok(_)) => {}
            Ok(Err(s)) if s.code() == Code::NotFound => {
                warn!(
                    "the traffic-manager does not know session {} any more; arriving again",
                    session.session_id
                );
                let new = rearrive(&mut client, &info).await;
                info!("arrived again as session {}", new.session_id);
                session_tx.send_replace(new);
            }
            Ok(Err(s)) => warn!("renewing the agent session failed: {}", status_line(&s)),
            Err(_) => warn!("renewing the agent session timed out"),
        }
    }
}

/// What the intercept watch needs to build routing snapshots.
pub(crate) struct WatchCtx {
    pub namespace: String,
    pub workload: String,
    pub tunnel_addr: String,
    /// Wakes the remain loop when the session turns out to be unknown.
    pub poke: Arc<Notify>,
    /// The manager's in-kernel forwards, forgotten with the stream that told of them (a
    /// restarted manager numbers its forwards anew).
    pub offered: Arc<crate::forward::Offered>,
}

enum StreamEnd {
    NewSession,
    Ended,
    Failed(tonic::Status),
}

async fn build_routes(
    ctx: &WatchCtx,
    snap: &protocol::manager::InterceptSnapshot,
    session: &str,
) -> Routes {
    let routes = Routes::from_snapshot(snap, &ctx.namespace, &ctx.workload, session);
    if routes.is_empty() {
        return routes;
    }
    // Resolve the tunnel once per snapshot, not once per connection.
    let tunnel = match tokio::net::lookup_host(ctx.tunnel_addr.as_str()).await {
        Ok(mut addrs) => addrs.next(),
        Err(e) => {
            warn!("cannot resolve the tunnel address {}: {e}", ctx.tunnel_addr);
            None
        }
    };
    routes.with_tunnel(tunnel)
}

fn log_change(old: &Routes, new: &Routes) {
    for (port, id) in new.active() {
        if !old.active().any(|(p, i)| p == port && i == id) {
            info!("port {port}: intercept {id} is active; its traffic goes to the client");
        }
    }
    for (port, id) in old.active() {
        if !new.active().any(|(p, i)| p == port && i == id) {
            info!("port {port}: intercept {id} ended; its traffic goes to the app again");
        }
    }
}

/// Runs at the log level the manager asks for (`telepresence loglevel`), when it changed.
fn apply_log_level(current: &mut protocol::manager::LogLevel, want: protocol::manager::LogLevel) {
    if *current != want {
        *current = want;
        if let Err(e) = protocol::loglevel::set(want, None) {
            warn!("{e}");
        }
    }
}

/// Keeps a `WatchIntercepts` stream open for the current session and publishes each snapshot.
/// While no stream is open, everything is routed to the app.
pub(crate) async fn watch_loop(
    mut client: Client,
    ctx: WatchCtx,
    mut session_rx: watch::Receiver<SessionInfo>,
    routes_tx: watch::Sender<Routes>,
) {
    let mut backoff = RETRY;
    let mut log_level = protocol::manager::LogLevel::Unspecified;
    loop {
        let session = session_rx.borrow_and_update().clone();
        let end = match client.watch_intercepts(session.clone()).await {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    tokio::select! {
                        msg = stream.message() => match msg {
                            Ok(Some(snap)) => {
                                backoff = RETRY;
                                apply_log_level(&mut log_level, snap.agent_log_level());
                                let routes = build_routes(&ctx, &snap, &session.session_id).await;
                                log_change(&routes_tx.borrow(), &routes);
                                routes_tx.send_replace(routes);
                            }
                            Ok(None) => break StreamEnd::Ended,
                            Err(s) => break StreamEnd::Failed(s),
                        },
                        changed = session_rx.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            break StreamEnd::NewSession;
                        }
                    }
                }
            }
            Err(s) => StreamEnd::Failed(s),
        };
        let old = routes_tx.send_replace(Routes::none());
        ctx.offered.clear();
        log_change(&old, &Routes::none());
        match end {
            StreamEnd::NewSession => continue,
            StreamEnd::Ended => debug!("the intercept watch ended; reopening"),
            StreamEnd::Failed(s) if s.code() == Code::NotFound => {
                // The session is gone: the remain loop arrives again; wait for its new session.
                debug!("intercept watch: session unknown; waiting for a new session");
                ctx.poke.notify_one();
                let _ = tokio::time::timeout(MAX_BACKOFF, session_rx.changed()).await;
                continue;
            }
            StreamEnd::Failed(s) => warn!("intercept watch failed: {}", status_line(&s)),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Keeps a `WatchDials` stream open and answers each request: file sync (dial the manager's
/// tunnel with the request's connection id and serve the workload's mounts over it) and
/// pod-local ports (`agent/src/to_pod.rs`).
pub(crate) async fn dials_loop(
    mut client: Client,
    tunnel_addr: String,
    mounts: Vec<fssync::Mount>,
    token: Option<Token>,
    mut session_rx: watch::Receiver<SessionInfo>,
) {
    let mut backoff = RETRY;
    loop {
        let session = session_rx.borrow_and_update().clone();
        if let Ok(resp) = client.watch_dials(session).await {
            let mut stream = resp.into_inner();
            loop {
                tokio::select! {
                    msg = stream.message() => match msg {
                        Ok(Some(req)) if req.kind() == protocol::manager::DialKind::Fs => {
                            backoff = RETRY;
                            let (tunnel, mounts) = (tunnel_addr.clone(), mounts.clone());
                            let who = TunnelAuth {
                                session_id: session_rx.borrow().session_id.clone(),
                                token: token.clone(),
                            };
                            tokio::spawn(async move {
                                if let Err(e) = serve_fs(&tunnel, req, who, mounts).await {
                                    warn!("file sync stream ended: {e}");
                                }
                            });
                        }
                        Ok(Some(req)) if matches!(
                            req.kind(),
                            protocol::manager::DialKind::ToPod | protocol::manager::DialKind::ToPodCheck
                        ) => {
                            backoff = RETRY;
                            let tunnel = tunnel_addr.clone();
                            let who = TunnelAuth {
                                session_id: session_rx.borrow().session_id.clone(),
                                token: token.clone(),
                            };
                            tokio::spawn(async move {
                                if let Err(e) = crate::to_pod::serve(&tunnel, req, who).await {
                                    debug!("pod-local stream ended: {e}");
                                }
                            });
                        }
                        Ok(Some(req)) => debug!("ignoring dial request of kind {:?}", req.kind()),
                        Ok(None) | Err(_) => break,
                    },
                    changed = session_rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The session a tunnel connection names, and the token that proves it.
pub(crate) struct TunnelAuth {
    pub session_id: String,
    pub token: Option<Token>,
}

impl TunnelAuth {
    /// The header fields that prove this session (protocol/src/auth.rs `agent_proof`).
    pub(crate) fn fill(&self, h: &mut protocol::tunnel::TunnelHeader) {
        h.session_id.clone_from(&self.session_id);
        h.proof = self
            .token
            .as_ref()
            .map(|t| protocol::auth::agent_proof(t, &self.session_id))
            .unwrap_or_default();
    }
}

async fn serve_fs(
    tunnel: &str,
    req: protocol::manager::DialRequest,
    who: TunnelAuth,
    mounts: Vec<fssync::Mount>,
) -> std::io::Result<()> {
    let mut s = relay::dial(tunnel).await?;
    let mut header = protocol::tunnel::TunnelHeader {
        conn_id: req.conn_id,
        intercept_id: req.intercept_id,
        kind: protocol::tunnel::TunnelKind::Fs,
        ..Default::default()
    };
    who.fill(&mut header);
    protocol::tunnel::write_header(&mut s, protocol::tunnel::Role::Agent, &header).await?;
    crate::fs::serve(s, mounts).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remain_every_third_of_the_lease() {
        assert_eq!(remain_interval(30), Duration::from_secs(10));
        assert_eq!(remain_interval(0), Duration::from_secs(5));
        assert_eq!(remain_interval(1), Duration::from_millis(333));
    }

    #[test]
    fn refusals_are_not_retried() {
        assert!(is_refusal(Code::InvalidArgument));
        assert!(!is_refusal(Code::Unavailable));
        assert!(!is_refusal(Code::NotFound));
    }
}
