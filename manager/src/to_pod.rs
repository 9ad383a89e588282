//! Pod-local ports (`--to-pod PORT[/UDP]`): a client's connection (or UDP flow) to a port on the
//! engaged workload's localhost arrives on the tunnel listener with kind `pod-tcp`/`pod-udp` and
//! target `127.0.0.1:<port>`; the manager asks an agent of the workload to dial that port in
//! the workload's network namespace (`DIAL_KIND_TO_POD`), answers the client with a header
//! whose `error` says whether that worked (as for outbound streams, `manager/src/outbound.rs`),
//! then splices. When an engagement is created, [`Manager::check_to_pod`] asks the agent
//! whether something listens on each port (`DIAL_KIND_TO_POD_CHECK`), so a port nobody serves
//! is refused at once.

use crate::tunnel::{agent_dials, pair, TunnelDropped};
use crate::Manager;
use protocol::manager::{DialKind, DialRequest, InterceptSpec, PortProtocol, ToPodPort};
use protocol::tunnel::{write_header, HeaderError, Role, TunnelHeader, TunnelKind};
use relay::splice;
use tokio::net::TcpStream;
use tonic::Status;

/// The loopback address a pod-local port is dialed on, on both ends.
pub const POD_HOST: &str = "127.0.0.1";

/// Whether a `--to-pod` port is UDP.
pub fn is_udp(p: &ToPodPort) -> bool {
    p.protocol() == PortProtocol::Udp
}

/// `PORT/TCP` or `PORT/UDP`, as users give and see it.
pub fn to_pod_text(p: &ToPodPort) -> String {
    format!("{}/{}", p.port, if is_udp(p) { "UDP" } else { "TCP" })
}

/// The dial request for the `--to-pod` port `p` of intercept `intercept_id`.
fn request(conn_id: String, intercept_id: &str, p: &ToPodPort, kind: DialKind) -> DialRequest {
    DialRequest {
        conn_id,
        intercept_id: intercept_id.to_string(),
        target_host: POD_HOST.into(),
        target_port: p.port,
        kind: kind as i32,
        protocol: if is_udp(p) {
            PortProtocol::Udp
        } else {
            PortProtocol::Tcp
        } as i32,
    }
}

/// The `--to-pod` port a client's stream asks for, and where its agent's dial requests go.
async fn admit(
    mgr: &Manager,
    h: &TunnelHeader,
) -> Result<(tokio::sync::mpsc::Sender<DialRequest>, DialRequest), HeaderError> {
    let st = mgr.inner.state.lock().await;
    let ic = st
        .intercept_by_id(&h.intercept_id)
        .filter(|i| i.client_session == h.session_id)
        .ok_or_else(|| HeaderError::Other(format!("no engagement {} of yours", h.intercept_id)))?;
    let spec = ic.spec.as_ref().expect("spec");
    let udp = h.kind == TunnelKind::PodUdp;
    let port = h
        .target
        .strip_prefix(POD_HOST)
        .and_then(|p| p.strip_prefix(':'))
        .and_then(|p| p.parse::<u32>().ok())
        .ok_or_else(|| HeaderError::BadTarget(h.target.clone()))?;
    let p = spec
        .to_pod
        .iter()
        .find(|p| p.port == port && is_udp(p) == udp)
        .ok_or_else(|| {
            HeaderError::Other(format!(
                "port {port} is not a --to-pod port of {}",
                spec.name
            ))
        })?;
    let tx = agent_dials(&st, spec).map_err(|e| HeaderError::Other(e.to_string()))?;
    Ok((
        tx,
        request(h.conn_id.clone(), &h.intercept_id, p, DialKind::ToPod),
    ))
}

/// A client's stream to a pod-local port: paired with an agent's connection to it.
pub async fn from_client(
    mgr: Manager,
    mut client: TcpStream,
    h: TunnelHeader,
) -> Result<(), TunnelDropped> {
    let reply = |error| TunnelHeader {
        conn_id: h.conn_id.clone(),
        kind: h.kind,
        error,
        ..Default::default()
    };
    let paired = match admit(&mgr, &h).await {
        Ok((tx, req)) => pair(&mgr, tx, req).await.map_err(|e| match e {
            TunnelDropped::NotDelivered(e) => e,
            other => HeaderError::Other(other.to_string()),
        }),
        Err(e) => Err(e),
    };
    match paired {
        Ok(mut agent) => {
            write_header(&mut client, Role::Agent, &reply(None)).await?;
            splice(&mut client, &mut agent).await?;
            Ok(())
        }
        Err(e) => {
            write_header(&mut client, Role::Agent, &reply(Some(e.clone()))).await?;
            Err(TunnelDropped::NotDelivered(e))
        }
    }
}

impl Manager {
    /// Where dial requests to an agent of the workload go, once it watches them (an agent that
    /// just arrived may open its `WatchDials` stream a moment after its intercept watch).
    async fn wait_agent_dials(
        &self,
        spec: &InterceptSpec,
    ) -> Result<tokio::sync::mpsc::Sender<DialRequest>, Status> {
        let deadline = tokio::time::Instant::now() + self.inner.agent_timeout;
        loop {
            match agent_dials(&*self.inner.state.lock().await, spec) {
                Ok(tx) => return Ok(tx),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(Status::unavailable(format!(
                        "cannot check the --to-pod ports of {}: {e}",
                        spec.workload
                    )))
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    }

    /// Asks an agent of the engaged workload whether something listens on each `--to-pod`
    /// port of `spec` (engagement `id`); refuses the engagement when a port is not served.
    pub(crate) async fn check_to_pod(&self, spec: &InterceptSpec, id: &str) -> Result<(), Status> {
        for p in &spec.to_pod {
            let tx = self.wait_agent_dials(spec).await?;
            let req = request(
                uuid::Uuid::new_v4().to_string(),
                id,
                p,
                DialKind::ToPodCheck,
            );
            match pair(self, tx, req).await {
                Ok(_) => {}
                Err(TunnelDropped::NotDelivered(e)) => {
                    tracing::debug!(workload = %spec.workload, "--to-pod check failed: {e}");
                    return Err(Status::failed_precondition(format!(
                        "nothing listens on port {} on the localhost of {} (its network namespace); start it there or drop --to-pod {}",
                        to_pod_text(p),
                        spec.workload,
                        to_pod_text(p)
                    )));
                }
                Err(e) => {
                    return Err(Status::unavailable(format!(
                        "cannot check --to-pod {} on {}: {e}",
                        p.port, spec.workload
                    )))
                }
            }
        }
        Ok(())
    }
}

/// Refuses `--to-pod` ports given twice.
pub fn check_spec(spec: &InterceptSpec) -> Result<(), Status> {
    let mut seen = std::collections::BTreeSet::new();
    for p in &spec.to_pod {
        if p.port == 0 || p.port > u32::from(u16::MAX) {
            return Err(Status::invalid_argument(format!(
                "--to-pod {} is not a port (1-65535)",
                p.port
            )));
        }
        if !seen.insert((p.port, is_udp(p))) {
            return Err(Status::invalid_argument(format!(
                "--to-pod {} is given twice; give each port once",
                to_pod_text(p)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(port: u32, proto: PortProtocol) -> ToPodPort {
        ToPodPort {
            port,
            protocol: proto as i32,
        }
    }

    #[test]
    fn ports_are_checked_and_shown() {
        let mut spec = InterceptSpec {
            to_pod: vec![
                port(7070, PortProtocol::Unspecified),
                port(7070, PortProtocol::Udp),
            ],
            ..Default::default()
        };
        assert!(check_spec(&spec).is_ok());
        assert_eq!(to_pod_text(&spec.to_pod[0]), "7070/TCP");
        assert_eq!(to_pod_text(&spec.to_pod[1]), "7070/UDP");
        spec.to_pod.push(port(7070, PortProtocol::Tcp));
        let e = check_spec(&spec).unwrap_err();
        assert!(e.message().contains("given twice"), "{}", e.message());
        let r = request("c".into(), "i", &spec.to_pod[1], DialKind::ToPod);
        assert_eq!(
            (r.target_port, r.protocol(), r.kind()),
            (7070, PortProtocol::Udp, DialKind::ToPod)
        );
    }
}
