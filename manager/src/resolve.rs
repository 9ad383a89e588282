//! Cluster DNS for clients: the `Resolve` rpc answers a client's DNS question with the
//! manager's own resolver (the first `nameserver` of its `/etc/resolv.conf`: on a Docker engine
//! the engine's embedded DNS of the project network, which knows the compose service names,
//! aliases and container names; in Kubernetes the pod's resolver, which knows services and pods).
//! It also owns how a client's name maps to what that resolver understands, and the subnet list
//! clients route.

use crate::provider::Provider;
use crate::Manager;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use protocol::manager::{ResolveRequest, ResolveResponse};
use protocol::ClusterType;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::net::UdpSocket;
use tonic::Status;

/// How long one question to the resolver may take (two tries).
const TRY_TIMEOUT: Duration = Duration::from_millis(1500);

/// The subnets of a namespace, logged and left empty when the provider cannot tell (a client
/// without routes still works for intercepts).
pub async fn subnets_of(p: &dyn Provider, namespace: &str) -> Vec<String> {
    match p.cluster_subnets(namespace).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%namespace, "cannot list the cluster's subnets: {e}");
            Vec::new()
        }
    }
}

/// The name to ask the manager's resolver for a client's `(name, namespace)`; `None` when it
/// cannot exist in the cluster.
pub fn lookup_name(
    cluster_type: ClusterType,
    domain: &str,
    name: &str,
    namespace: &str,
) -> Option<String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    if name.ends_with(".in-addr.arpa") || name.ends_with(".ip6.arpa") || namespace.is_empty() {
        return Some(name);
    }
    match cluster_type {
        // The engine's DNS knows service names, aliases and container names of the network.
        ClusterType::Docker => Some(name),
        ClusterType::Kubernetes => Some(format!("{name}.{namespace}.svc.{domain}")),
    }
}

/// The manager's upstream resolver.
fn nameserver() -> SocketAddr {
    static NS: OnceLock<SocketAddr> = OnceLock::new();
    *NS.get_or_init(|| {
        first_nameserver(&protocol::resolv::ResolvConf::read())
            .unwrap_or_else(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53))
    })
}

/// The first `nameserver` of a parsed resolv.conf, on port 53.
pub fn first_nameserver(conf: &protocol::resolv::ResolvConf) -> Option<SocketAddr> {
    conf.nameservers.first().map(|ip| SocketAddr::new(*ip, 53))
}

/// Answers `Resolve`.
pub async fn resolve(mgr: &Manager, req: &ResolveRequest) -> Result<ResolveResponse, Status> {
    let p = &mgr.inner.provider;
    let qtype = RecordType::from(u16::try_from(req.qtype).unwrap_or(0));
    let Some(name) = lookup_name(
        p.cluster_type(),
        &p.cluster_domain(),
        &req.name,
        &req.namespace,
    ) else {
        return Ok(ResolveResponse {
            message: nxdomain(&req.name, qtype)?,
        });
    };
    let message = query(nameserver(), &name, qtype)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    Ok(ResolveResponse { message })
}

fn nxdomain(name: &str, qtype: RecordType) -> Result<Vec<u8>, Status> {
    let mut m = Message::error_msg(0, OpCode::Query, ResponseCode::NXDomain);
    if let Ok(n) = Name::from_ascii(name) {
        m.add_query(Query::query(n, qtype));
    }
    m.to_vec().map_err(|e| Status::internal(e.to_string()))
}

/// Why [`query`] got no answer; the `Resolve` rpc returns its text as `UNAVAILABLE`.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The name is not a DNS name.
    #[error("bad name {name:?}: {cause}")]
    BadName {
        /// The name as the client sent it.
        name: String,
        /// What the DNS library said about it.
        cause: hickory_proto::ProtoError,
    },
    /// The question could not be encoded.
    #[error("{0}")]
    Encode(hickory_proto::ProtoError),
    /// The UDP socket could not be opened, connected or written.
    #[error("{0}")]
    Socket(std::io::Error),
    /// Reading the answer from `server` failed.
    #[error("{server}: {cause}")]
    Recv {
        /// The resolver asked.
        server: SocketAddr,
        /// The socket error.
        cause: std::io::Error,
    },
    /// Neither try got an answer in time.
    #[error("the cluster's resolver {0} did not answer")]
    NoAnswer(SocketAddr),
}

/// Asks `server` one question over UDP (retrying once); returns the response message.
pub async fn query(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
) -> Result<Vec<u8>, QueryError> {
    let mut fqdn = Name::from_ascii(name).map_err(|cause| QueryError::BadName {
        name: name.to_string(),
        cause,
    })?;
    fqdn.set_fqdn(true);
    let id: u16 = rand_id();
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(fqdn, qtype));
    let bytes = m.to_vec().map_err(QueryError::Encode)?;
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await.map_err(QueryError::Socket)?;
    sock.connect(server).await.map_err(QueryError::Socket)?;
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        sock.send(&bytes).await.map_err(QueryError::Socket)?;
        let deadline = tokio::time::Instant::now() + TRY_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Err(cause)) => return Err(QueryError::Recv { server, cause }),
                Ok(Ok(n)) if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id => {
                    return Ok(buf[..n].to_vec())
                }
                Ok(Ok(_)) => continue, // a stale or foreign answer
            }
        }
    }
    Err(QueryError::NoAnswer(server))
}

fn rand_id() -> u16 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u16::from_be_bytes([b[0], b[1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_the_cluster_resolver() {
        assert_eq!(
            lookup_name(ClusterType::Docker, "cluster.local", "Web.", "shop").as_deref(),
            Some("web")
        );
        assert_eq!(
            lookup_name(ClusterType::Kubernetes, "cluster.local", "web", "shop").as_deref(),
            Some("web.shop.svc.cluster.local")
        );
        assert_eq!(
            lookup_name(
                ClusterType::Kubernetes,
                "cluster.local",
                "web-0.web",
                "shop"
            )
            .as_deref(),
            Some("web-0.web.shop.svc.cluster.local")
        );
        assert_eq!(
            lookup_name(
                ClusterType::Kubernetes,
                "cluster.local",
                "5.0.17.172.in-addr.arpa",
                ""
            )
            .as_deref(),
            Some("5.0.17.172.in-addr.arpa")
        );
        assert_eq!(
            lookup_name(ClusterType::Docker, "cluster.local", "", "shop"),
            None
        );
    }

    #[test]
    fn nameserver_from_resolv_conf() {
        let conf = "# x\nsearch a.b\nnameserver 127.0.0.11\nnameserver 8.8.8.8\noptions ndots:0\n";
        assert_eq!(
            first_nameserver(&protocol::resolv::ResolvConf::parse(conf)),
            Some("127.0.0.11:53".parse().unwrap())
        );
        assert_eq!(
            first_nameserver(&protocol::resolv::ResolvConf::parse("search x\n")),
            None
        );
    }

    #[tokio::test]
    async fn query_round_trips_with_a_udp_server() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            let (n, from) = server.recv_from(&mut buf).await.unwrap();
            let q = Message::from_vec(&buf[..n]).unwrap();
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.metadata.response_code = ResponseCode::NXDomain;
            r.add_queries(q.queries.clone());
            server.send_to(&r.to_vec().unwrap(), from).await.unwrap();
        });
        let bytes = query(addr, "nope", RecordType::A).await.unwrap();
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.queries[0].name().to_ascii(), "nope.");
    }
}
