//! The daemon's DNS server. It listens where the daemon container's resolv.conf points
//! (`--dns`, so every container joined to the daemon's network inherits it). Cluster names —
//! `svc`, `svc.ns`, `svc.ns.svc.<domain>`, `pod.svc.ns.svc.<domain>`, reverse lookups of cluster
//! addresses — are answered by the manager's resolver through the `Resolve` rpc; everything else
//! goes to the upstream resolver the container would otherwise have had. Answers are cached for
//! their TTL (capped), negative ones briefly, so search-path misses are fast.

use crate::session::Session;
use crate::subnets::Cidr;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use protocol::manager::ResolveRequest;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// Names with these suffixes are never looked up in the cluster.
pub const EXCLUDE_SUFFIXES: [&str; 5] = [".com", ".io", ".net", ".org", ".ru"];
/// How long upstream may take.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(4);
/// Longest time a positive answer is cached (shorter when its TTL is).
const MAX_TTL: u32 = 30;
/// How long a negative cluster answer is cached.
const NEGATIVE_TTL: u32 = 5;
const MAX_CACHE: usize = 4096;
/// A DNS-over-TCP connection with no query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Where a question goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Ask the cluster for `name` in `namespace` (empty for reverse lookups).
    Cluster {
        name: String,
        namespace: String,
    },
    /// A name under the cluster domain that cannot exist.
    NxDomain,
    Upstream,
}

/// What the server does with one raw query, decided from its bytes alone (the parsing that
/// faces the network; fuzzed by `tests::fuzz::dns`).
#[derive(Debug)]
pub enum Decision {
    /// Not a query (or not a DNS message at all): no answer.
    Drop,
    /// Answered at once (format error, not implemented).
    Reply(Vec<u8>),
    /// One question, to be answered as `route` says.
    Route {
        query: Box<Message>,
        question: hickory_proto::op::Query,
        route: Route,
    },
}

/// Parses `raw` and decides where its question goes (see [`classify`]).
pub fn decide(raw: &[u8], namespace: &str, domain: &str, subnets: &[Cidr]) -> Decision {
    let Ok(q) = Message::from_vec(raw) else {
        return Decision::Drop;
    };
    if q.metadata.message_type != MessageType::Query {
        return Decision::Drop;
    }
    let Some(question) = q.queries.first().cloned() else {
        return error(&q, ResponseCode::FormErr).map_or(Decision::Drop, Decision::Reply);
    };
    if q.metadata.op_code != OpCode::Query || q.queries.len() != 1 {
        return error(&q, ResponseCode::NotImp).map_or(Decision::Drop, Decision::Reply);
    }
    let qname = question.name().to_ascii().to_ascii_lowercase();
    let route = classify(&qname, namespace, domain, subnets);
    Decision::Route {
        query: Box::new(q),
        question,
        route,
    }
}

/// Decides where the question for `qname` goes.
pub fn classify(qname: &str, namespace: &str, domain: &str, subnets: &[Cidr]) -> Route {
    let q = qname.trim_end_matches('.').to_ascii_lowercase();
    if q.is_empty() {
        return Route::Upstream;
    }
    if let Some(rev) = q.strip_suffix(".in-addr.arpa") {
        let octets: Vec<u8> = rev
            .split('.')
            .rev()
            .filter_map(|o| o.parse().ok())
            .collect();
        if let [a, b, c, d] = octets[..] {
            if subnets
                .iter()
                .any(|s| s.contains_ip(Ipv4Addr::new(a, b, c, d)))
            {
                return Route::Cluster {
                    name: q,
                    namespace: String::new(),
                };
            }
        }
        return Route::Upstream;
    }
    let domain = domain.trim_matches('.').to_ascii_lowercase();
    if q == domain {
        return Route::NxDomain;
    }
    if let Some(rest) = q.strip_suffix(&format!(".{domain}")) {
        // <name...>.<ns>.svc
        let labels: Vec<&str> = rest.split('.').collect();
        return match labels.as_slice() {
            [name @ .., ns, "svc"] if !name.is_empty() && *ns == namespace => Route::Cluster {
                name: name.join("."),
                namespace: namespace.to_string(),
            },
            _ => Route::NxDomain,
        };
    }
    if EXCLUDE_SUFFIXES.iter().any(|s| q.ends_with(s)) {
        return Route::Upstream;
    }
    let labels: Vec<&str> = q.split('.').collect();
    match labels.as_slice() {
        [single] => Route::Cluster {
            name: single.to_string(),
            namespace: namespace.to_string(),
        },
        [name @ .., ns, "svc"] if *ns == namespace => Route::Cluster {
            name: name.join("."),
            namespace: namespace.to_string(),
        },
        [name @ .., ns] if *ns == namespace => Route::Cluster {
            name: name.join("."),
            namespace: namespace.to_string(),
        },
        _ => Route::Upstream,
    }
}

/// DNS settings from the environment the CLI gives the daemon container.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// `TP_DNS_LISTEN` (default 127.0.0.1:53).
    pub listen: SocketAddr,
    /// `TP_DNS_UPSTREAM`: comma-separated resolver IPs.
    pub upstream: Vec<SocketAddr>,
}

/// A DNS setting that is not an address (the value given).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsConfigError {
    #[error("TP_DNS_LISTEN={0:?} is not an address")]
    Listen(String),
    #[error("TP_DNS_UPSTREAM: {0:?} is not an address")]
    Upstream(String),
}

impl DnsConfig {
    pub fn from_env() -> Result<Self, DnsConfigError> {
        let listen = std::env::var("TP_DNS_LISTEN").unwrap_or_else(|_| "127.0.0.1:53".into());
        let listen = listen.parse().map_err(|_| DnsConfigError::Listen(listen))?;
        let upstream = std::env::var("TP_DNS_UPSTREAM").unwrap_or_default();
        let mut up = Vec::new();
        for s in upstream.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let addr = s
                .parse::<SocketAddr>()
                .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| DnsConfigError::Upstream(s.to_string()))?;
            up.push(addr);
        }
        Ok(DnsConfig {
            listen,
            upstream: up,
        })
    }
}

struct Cached {
    msg: Message,
    expires: Instant,
}

/// The server's shared state.
pub struct Dns {
    session: Arc<Session>,
    cfg: DnsConfig,
    domain: String,
    subnets: Vec<Cidr>,
    cache: Mutex<HashMap<(String, u16), Cached>>,
}

impl Dns {
    pub fn new(session: Arc<Session>, cfg: DnsConfig, routed: &[String]) -> Dns {
        let domain = if session.cluster.cluster_domain.is_empty() {
            "cluster.local".to_string()
        } else {
            session.cluster.cluster_domain.clone()
        };
        Dns {
            session,
            cfg,
            domain,
            subnets: routed.iter().filter_map(|s| s.parse().ok()).collect(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Binds the listening sockets (UDP and TCP).
    pub async fn bind(&self) -> std::io::Result<(UdpSocket, TcpListener)> {
        Ok((
            UdpSocket::bind(self.cfg.listen).await?,
            TcpListener::bind(self.cfg.listen).await?,
        ))
    }

    /// Serves DNS over TCP (length-prefixed messages, several per connection).
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let mut len = [0u8; 2];
                let mut buf = Vec::new();
                while tokio::time::timeout(TCP_IDLE, s.read_exact(&mut len))
                    .await
                    .is_ok_and(|r| r.is_ok())
                {
                    buf.resize(u16::from_be_bytes(len) as usize, 0);
                    if s.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    let Some(answer) = me.answer(&buf).await else {
                        return;
                    };
                    let mut out = (answer.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&answer);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    }

    /// Serves DNS over UDP on `sock`.
    pub async fn serve(self: Arc<Self>, sock: UdpSocket) -> std::io::Result<()> {
        let sock = Arc::new(sock);
        tracing::info!(listen = %self.cfg.listen, upstream = ?self.cfg.upstream, "DNS ready");
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, from) = match sock.recv_from(&mut buf).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!("DNS recv: {e}");
                    continue;
                }
            };
            let query = buf[..n].to_vec();
            let me = self.clone();
            let sock = sock.clone();
            tokio::spawn(async move {
                if let Some(answer) = me.answer(&query).await {
                    let _ = sock.send_to(&answer, from).await;
                }
            });
        }
    }

    /// The response to one raw query (`None`: drop it).
    pub async fn answer(&self, raw: &[u8]) -> Option<Vec<u8>> {
        let (q, question, route) = match decide(
            raw,
            &self.session.cfg.namespace,
            &self.domain,
            &self.subnets,
        ) {
            Decision::Drop => return None,
            Decision::Reply(r) => return Some(r),
            Decision::Route {
                query,
                question,
                route,
            } => (*query, question, route),
        };
        let qname = question.name().to_ascii().to_ascii_lowercase();
        let qtype = question.query_type();
        if route == Route::Upstream {
            return self
                .upstream(raw)
                .await
                .or_else(|| error(&q, ResponseCode::ServFail));
        }
        let key = (qname.clone(), u16::from(qtype));
        if let Some(c) = self.cache.lock().unwrap().get(&key) {
            if c.expires > Instant::now() {
                return respond(&q, &c.msg);
            }
        }
        let msg = match route {
            Route::Cluster { name, namespace } => {
                match self
                    .ask_cluster(&name, &namespace, qtype, question.name())
                    .await
                {
                    Some(m) => m,
                    None => return error(&q, ResponseCode::ServFail),
                }
            }
            _ => Message::error_msg(0, OpCode::Query, ResponseCode::NXDomain),
        };
        let ttl = if msg.answers.is_empty() {
            NEGATIVE_TTL
        } else {
            msg.answers
                .iter()
                .map(|r| r.ttl)
                .min()
                .unwrap_or(0)
                .min(MAX_TTL)
        };
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= MAX_CACHE {
            let now = Instant::now();
            cache.retain(|_, c| c.expires > now);
            if cache.len() >= MAX_CACHE {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Cached {
                msg: msg.clone(),
                expires: Instant::now() + Duration::from_secs(u64::from(ttl)),
            },
        );
        drop(cache);
        respond(&q, &msg)
    }

    /// Asks the manager; the answer's records for the looked-up name are renamed to `qname`.
    async fn ask_cluster(
        &self,
        name: &str,
        namespace: &str,
        qtype: RecordType,
        qname: &Name,
    ) -> Option<Message> {
        let r = self
            .session
            .client
            .clone()
            .resolve(ResolveRequest {
                session: Some(self.session.session()),
                name: name.to_string(),
                namespace: namespace.to_string(),
                qtype: u32::from(u16::from(qtype)),
            })
            .await;
        let bytes = match r {
            Ok(r) => r.into_inner().message,
            Err(e) => {
                tracing::debug!(%name, "cluster DNS: {}", e.message());
                return None;
            }
        };
        let mut m = Message::from_vec(&bytes).ok()?;
        let asked = m.queries.first().map(|q| q.name().clone());
        for r in &mut m.answers {
            if Some(&r.name) == asked.as_ref() {
                r.name = qname.clone();
            }
        }
        // Only what answers the question (the engine may add unrelated sections).
        m.authorities.clear();
        m.additionals.clear();
        Some(m)
    }

    async fn upstream(&self, raw: &[u8]) -> Option<Vec<u8>> {
        for server in &self.cfg.upstream {
            let bind: SocketAddr = if server.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let Ok(sock) = UdpSocket::bind(bind).await else {
                continue;
            };
            if sock.connect(server).await.is_err() || sock.send(raw).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; 4096];
            if let Ok(Ok(n)) = tokio::time::timeout(UPSTREAM_TIMEOUT, sock.recv(&mut buf)).await {
                buf.truncate(n);
                return Some(buf);
            }
        }
        None
    }
}

fn error(q: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut m = Message::error_msg(q.metadata.id, q.metadata.op_code, code);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_queries(q.queries.clone());
    m.to_vec().ok()
}

/// The response to `q` with the records and code of `from`.
fn respond(q: &Message, from: &Message) -> Option<Vec<u8>> {
    let mut m = Message::response(q.metadata.id, q.metadata.op_code);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.authoritative = true;
    m.metadata.response_code = from.metadata.response_code;
    m.add_queries(q.queries.clone());
    m.add_answers(from.answers.clone());
    m.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cl(name: &str, ns: &str) -> Route {
        Route::Cluster {
            name: name.into(),
            namespace: ns.into(),
        }
    }

    fn dns(upstream: Vec<SocketAddr>) -> Arc<Dns> {
        let cfg = crate::session::DaemonConfig {
            connection: "c".into(),
            namespace: "shop".into(),
            manager_namespace: String::new(),
            context: String::new(),
            // Nothing listens there: cluster questions fail at once.
            manager_addr: "127.0.0.1:1".into(),
            tunnel_addr: "127.0.0.1:1".into(),
            listen: String::new(),
            client_name: String::new(),
            kubeconfig: None,
            server: String::new(),
            token: None,
            also_proxy: Vec::new(),
        };
        let session = Arc::new(Session::for_test(cfg, Default::default()));
        let dcfg = DnsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream,
        };
        Arc::new(Dns::new(session, dcfg, &["172.20.0.0/16".to_string()]))
    }

    fn query(id: u16, name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(hickory_proto::op::Query::query(
            Name::from_ascii(name).unwrap(),
            t,
        ));
        m.to_vec().unwrap()
    }

    #[tokio::test]
    async fn answers_locally_forwards_upstream_and_fails_fast() {
        // A fake upstream answering every A question with 1.2.3.4.
        let up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            while let Ok((n, from)) = up.recv_from(&mut buf).await {
                let q = Message::from_vec(&buf[..n]).unwrap();
                let mut r = Message::response(q.metadata.id, OpCode::Query);
                r.add_queries(q.queries.clone());
                r.add_answer(hickory_proto::rr::Record::from_rdata(
                    q.queries[0].name().clone(),
                    60,
                    hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A::new(1, 2, 3, 4)),
                ));
                up.send_to(&r.to_vec().unwrap(), from).await.unwrap();
            }
        });
        let d = dns(vec![up_addr]);
        let r = Message::from_vec(
            &d.answer(&query(7, "example.com.", RecordType::A))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(r.metadata.id, 7);
        assert_eq!(
            r.answers[0].data.ip_addr(),
            Some("1.2.3.4".parse().unwrap())
        );
        // Another namespace under the cluster domain: NXDOMAIN without asking anyone.
        let r = Message::from_vec(
            &d.answer(&query(8, "web.other.svc.cluster.local.", RecordType::A))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            (r.metadata.id, r.metadata.response_code),
            (8, ResponseCode::NXDomain)
        );
        // The cluster cannot be asked (no manager): SERVFAIL, not silence.
        let r =
            Message::from_vec(&d.answer(&query(9, "web.", RecordType::A)).await.unwrap()).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
        // Garbage is dropped.
        assert!(d.answer(b"\x01\x02garbage").await.is_none());

        // The same over TCP.
        let (_, tcp) = d.bind().await.unwrap();
        let addr = tcp.local_addr().unwrap();
        tokio::spawn(d.clone().serve_tcp(tcp));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let q = query(10, "web.other.svc.cluster.local.", RecordType::AAAA);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        s.write_all(&framed).await.unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut body).await.unwrap();
        let r = Message::from_vec(&body).unwrap();
        assert_eq!(
            (r.metadata.id, r.metadata.response_code),
            (10, ResponseCode::NXDomain)
        );
    }

    #[test]
    fn names_are_routed() {
        let subnets = ["172.20.0.0/16".parse().unwrap()];
        let c = |q: &str| classify(q, "shop", "cluster.local", &subnets);
        assert_eq!(c("web"), cl("web", "shop"));
        assert_eq!(c("Web."), cl("web", "shop"));
        assert_eq!(c("web.shop"), cl("web", "shop"));
        assert_eq!(c("web.shop.svc"), cl("web", "shop"));
        assert_eq!(c("web.shop.svc.cluster.local."), cl("web", "shop"));
        assert_eq!(
            c("web-1.web.shop.svc.cluster.local"),
            cl("web-1.web", "shop")
        );
        assert_eq!(c("web.other.svc.cluster.local"), Route::NxDomain);
        assert_eq!(c("shop.svc.cluster.local"), Route::NxDomain);
        assert_eq!(c("cluster.local"), Route::NxDomain);
        assert_eq!(c("web.other"), Route::Upstream);
        assert_eq!(c("example.com"), Route::Upstream);
        assert_eq!(c("shop.com"), Route::Upstream);
        assert_eq!(
            c("5.0.20.172.in-addr.arpa"),
            cl("5.0.20.172.in-addr.arpa", "")
        );
        assert_eq!(c("1.1.168.192.in-addr.arpa"), Route::Upstream);
        assert_eq!(c(""), Route::Upstream);
    }
}
