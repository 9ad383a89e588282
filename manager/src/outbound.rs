//! Outbound streams: a client's TCP connection or UDP flow into the cluster arrives on
//! the tunnel listener with kind `out-tcp`/`out-udp` and a `target`; the manager dials the target
//! from where it runs (the project network on a Docker engine, the cluster network in
//! Kubernetes), answers with a header whose `error` says whether that worked — so a refused or
//! unreachable target fails fast at the client — and then relays. TCP is spliced (kernel flow
//! control both ways); UDP datagrams are framed on the stream, one flow per stream, ended after
//! an idle period.

use crate::tunnel::TunnelDropped;
use crate::Manager;
use protocol::tunnel::{write_header, HeaderError, Role, TunnelHeader};
use relay::{relay_udp, splice, tune};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpStream, UdpSocket};

/// How long dialing a cluster target may take before the client is told it is unreachable.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// A UDP flow with no datagram either way for this long is closed.
pub const UDP_IDLE: Duration = Duration::from_secs(60);

/// The target of `h` when its session is live and its cluster view includes the target
/// (crate::auth::OutboundScope).
async fn check(mgr: &Manager, h: &TunnelHeader) -> Result<SocketAddr, HeaderError> {
    let target: SocketAddr = h
        .target
        .parse()
        .map_err(|_| HeaderError::BadTarget(h.target.clone()))?;
    let st = mgr.inner.state.lock().await;
    let client = st
        .clients
        .get(&h.session_id)
        .ok_or(HeaderError::UnknownSession)?;
    if !client.scope.permits(target) {
        return Err(HeaderError::Forbidden(h.target.clone()));
    }
    Ok(target)
}

/// The checked target of `h`; a stream that cannot be carried is refused (`refuse`).
pub(crate) async fn admit(
    mgr: &Manager,
    client: &mut TcpStream,
    h: &TunnelHeader,
) -> Result<SocketAddr, TunnelDropped> {
    match check(mgr, h).await {
        Ok(t) => Ok(t),
        Err(e) => Err(refuse(client, h, e).await),
    }
}

/// The reply header: no `error` = connected.
fn reply(h: &TunnelHeader, error: Option<HeaderError>) -> TunnelHeader {
    h.answer(error)
}

/// Tells the client why its stream cannot be carried, and returns that as the drop reason.
pub(crate) async fn refuse(
    client: &mut TcpStream,
    h: &TunnelHeader,
    e: HeaderError,
) -> TunnelDropped {
    let _ = write_header(client, Role::Agent, &reply(h, Some(e.clone()))).await;
    TunnelDropped::Outbound(e)
}

fn unreachable(target: SocketAddr, reason: impl std::fmt::Display) -> HeaderError {
    HeaderError::Unreachable {
        target: target.to_string(),
        reason: reason.to_string(),
    }
}

/// Connects to `target` within `limit`, tuned for relaying; why not as the header error a
/// client is answered with.
pub(crate) async fn dial_tuned(
    target: SocketAddr,
    limit: Duration,
) -> Result<TcpStream, HeaderError> {
    match tokio::time::timeout(limit, TcpStream::connect(target)).await {
        Ok(Ok(s)) => {
            tune(&s);
            Ok(s)
        }
        Ok(Err(e)) => Err(unreachable(target, e)),
        Err(_) => Err(unreachable(
            target,
            format_args!("timed out after {limit:?}"),
        )),
    }
}

/// A client's TCP connection to `h.target`.
pub async fn tcp(
    mgr: &Manager,
    mut client: TcpStream,
    h: TunnelHeader,
) -> Result<(), TunnelDropped> {
    let target = admit(mgr, &mut client, &h).await?;
    match dial_tuned(target, DIAL_TIMEOUT).await {
        Ok(mut up) => {
            write_header(&mut client, Role::Agent, &reply(&h, None)).await?;
            splice(&mut client, &mut up).await?;
            Ok(())
        }
        Err(e) => {
            tracing::debug!("outbound dial failed: {e}");
            write_header(&mut client, Role::Agent, &reply(&h, Some(e))).await?;
            Ok(())
        }
    }
}

/// A client's UDP flow to `h.target`.
pub async fn udp(
    mgr: &Manager,
    mut client: TcpStream,
    h: TunnelHeader,
) -> Result<(), TunnelDropped> {
    let target = admit(mgr, &mut client, &h).await?;
    let bind: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = match UdpSocket::bind(bind).await {
        Ok(s) => match s.connect(target).await {
            Ok(()) => Ok(s),
            Err(e) => Err(unreachable(target, e)),
        },
        Err(e) => Err(HeaderError::Other(e.to_string())),
    };
    let sock = match sock {
        Ok(s) => s,
        Err(e) => return Err(refuse(&mut client, &h, e).await),
    };
    write_header(&mut client, Role::Agent, &reply(&h, None)).await?;
    relay_udp(client, sock, UDP_IDLE).await?;
    Ok(())
}
