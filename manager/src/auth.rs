//! Who may use this manager (the credentials themselves are in protocol/src/auth.rs): the
//! tokens it accepts — the current ones, and after a rotation the previous ones for a grace
//! period — who a gRPC caller is ([`interceptor`] marks each request with its [`Caller`],
//! handlers [`require`] one), the per-session tunnel proofs, whether a tunnel connection may be
//! carried ([`admit_tunnel`]), and where a client's outbound streams may go ([`OutboundScope`]).

use crate::state::State;
use protocol::auth::{agent_proof, Token, METADATA_KEY, NOT_AUTHORIZED};
use protocol::tunnel::{HeaderError, Role, TunnelHeader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tonic::{Request, Status};

/// How long the tokens replaced by a rotation stay accepted, so clients and agents that hold
/// them keep working until they re-read the new ones (or are restarted with them).
pub const ROTATION_GRACE: Duration = Duration::from_secs(600);

/// The tokens a manager accepts from daemons and agents.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// What daemons present.
    pub client: Token,
    /// What traffic-agents present.
    pub agent: Token,
}

impl Credentials {
    /// The credentials a Docker-engine manager derives from its secret.
    pub fn from_secret(secret: &Token) -> Credentials {
        Credentials {
            client: secret.derive(protocol::auth::Purpose::Client),
            agent: secret.derive(protocol::auth::Purpose::Agent),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(…)")
    }
}

/// Who a gRPC caller proved to be (a request extension set by [`interceptor`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// Presented the client token.
    Client,
    /// Presented the agent token.
    Agent,
}

impl Caller {
    /// Marks `req` as coming from this caller (what [`interceptor`] does for network calls;
    /// for in-process callers such as tests).
    pub fn attach<T>(self, mut req: Request<T>) -> Request<T> {
        req.extensions_mut().insert(self);
        req
    }
}

struct Accepted {
    current: Credentials,
    /// Replaced credentials and until when they are still accepted.
    previous: Vec<(Credentials, Instant)>,
}

/// The manager's accepted tokens; shared by the gRPC interceptor and the tunnel listener.
pub struct Auth {
    accepted: RwLock<Accepted>,
    /// Signs the per-session tunnel proofs of clients; never leaves this process.
    tunnel_key: Token,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth(…)")
    }
}

impl Auth {
    /// Accepts `current`.
    pub fn new(current: Credentials) -> Auth {
        Auth {
            accepted: RwLock::new(Accepted {
                current,
                previous: Vec::new(),
            }),
            tunnel_key: Token::generate(),
        }
    }

    /// Accepts `next` from now on, and the credentials it replaces for `grace` more. Returns
    /// whether anything changed.
    pub fn rotate(&self, next: Credentials, grace: Duration) -> bool {
        let mut a = self
            .accepted
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if a.current == next {
            return false;
        }
        let now = Instant::now();
        let old = std::mem::replace(&mut a.current, next);
        a.previous.retain(|(_, until)| *until > now);
        a.previous.push((old, now + grace));
        true
    }

    /// The credentials accepted from now on (what agents injected now are given).
    pub fn current(&self) -> Credentials {
        self.accepted
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .current
            .clone()
    }

    /// Every credential accepted right now.
    fn accepted(&self) -> Vec<Credentials> {
        let a = self
            .accepted
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        std::iter::once(a.current.clone())
            .chain(
                a.previous
                    .iter()
                    .filter(|(_, until)| *until > now)
                    .map(|(c, _)| c.clone()),
            )
            .collect()
    }

    /// Who presents `token`, if anyone.
    pub fn caller(&self, token: &str) -> Option<Caller> {
        self.accepted().iter().find_map(|c| {
            if c.client.matches(token) {
                Some(Caller::Client)
            } else if c.agent.matches(token) {
                Some(Caller::Agent)
            } else {
                None
            }
        })
    }

    /// The tunnel proof handed to client session `session_id` at arrival.
    pub fn session_proof(&self, session_id: &str) -> String {
        self.tunnel_key.sign(session_id)
    }

    /// Whether `proof` is the tunnel proof of client session `session_id`.
    pub fn client_proof_ok(&self, session_id: &str, proof: &str) -> bool {
        protocol::auth::ct_eq(self.session_proof(session_id).as_bytes(), proof.as_bytes())
    }

    /// Whether `proof` is an agent proof of `session_id` under an accepted agent token.
    pub fn agent_proof_ok(&self, session_id: &str, proof: &str) -> bool {
        self.accepted().iter().any(|c| {
            protocol::auth::ct_eq(
                agent_proof(&c.agent, session_id).as_bytes(),
                proof.as_bytes(),
            )
        })
    }
}

/// The refusal every caller without a valid credential gets: `not authorized: <why>, run
/// telepresence connect again`.
pub fn refused(why: &str) -> Status {
    Status::unauthenticated(format!(
        "{NOT_AUTHORIZED}: {why}, run telepresence connect again"
    ))
}

/// The gRPC interceptor: marks each request with the [`Caller`] its token proves, refuses a
/// token this manager does not accept, and lets calls without a token through unmarked
/// (`Version` answers them; every other method [`require`]s a caller).
pub fn interceptor(
    auth: Arc<Auth>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        let Some(v) = req.metadata().get(METADATA_KEY) else {
            return Ok(req);
        };
        match v.to_str().ok().and_then(|t| auth.caller(t)) {
            Some(c) => Ok(c.attach(req)),
            None => Err(refused(
                "this traffic-manager does not accept the credential presented (it was replaced)",
            )),
        }
    }
}

/// The caller of `req`; refused when it presented no credential.
pub fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions().get::<Caller>().copied().ok_or_else(|| {
        refused("this traffic-manager requires its credential and none was presented")
    })
}

/// Refuses `req` unless it comes from `want`.
pub fn require<T>(req: &Request<T>, want: Caller) -> Result<(), Status> {
    match caller(req)? {
        c if c == want => Ok(()),
        Caller::Agent => Err(refused("an agent credential cannot make client calls")),
        Caller::Client => Err(refused("only traffic-agents may make this call")),
    }
}

/// Where a client's outbound streams may go: its cluster view (the cluster's subnets and its
/// `--also-proxy`), never loopback, unspecified or multicast addresses, nor the cluster host's
/// own addresses (e.g. a Docker network's gateway, which is the engine's host).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundScope {
    allowed: Vec<(Ipv4Addr, u8)>,
    forbidden: Vec<IpAddr>,
}

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = s.trim().split_once('/').unwrap_or((s.trim(), "32"));
    let prefix: u8 = p.parse().ok().filter(|p| *p <= 32)?;
    Some((a.parse().ok()?, prefix))
}

fn in_cidr(ip: Ipv4Addr, (net, prefix): (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

impl OutboundScope {
    /// The scope of `subnets` (the cluster's) and `also_proxy`, minus `forbidden`; CIDRs that do
    /// not parse are left out.
    pub fn new<'a>(
        subnets: impl IntoIterator<Item = &'a String>,
        forbidden: Vec<IpAddr>,
    ) -> OutboundScope {
        OutboundScope {
            allowed: subnets.into_iter().filter_map(|s| parse_cidr(s)).collect(),
            forbidden,
        }
    }

    /// Whether an outbound stream may dial `target`.
    pub fn permits(&self, target: SocketAddr) -> bool {
        let v4 = match target.ip() {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4,
                None => return false,
            },
            IpAddr::V4(v4) => v4,
        };
        let ip = IpAddr::V4(v4);
        let special =
            v4.is_loopback() || v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast();
        !special && !self.forbidden.contains(&ip) && self.allowed.iter().any(|c| in_cidr(v4, *c))
    }
}

/// Whether the tunnel connection `h`, opened as `role`, may be carried: it names a live session
/// of that role with a valid proof, and an intercept or file-sync stream names an intercept of
/// that session (clients) or of the agent's workload (agents).
pub fn admit_tunnel(
    auth: &Auth,
    st: &State,
    role: Role,
    h: &TunnelHeader,
) -> Result<(), HeaderError> {
    let bad = || HeaderError::NotAuthorized;
    match role {
        Role::Client => {
            if !st.clients.contains_key(&h.session_id)
                || !auth.client_proof_ok(&h.session_id, &h.proof)
            {
                return Err(bad());
            }
            if h.kind.names_an_intercept() {
                let ic = st.intercept_by_id(&h.intercept_id).ok_or_else(bad)?;
                if ic.client_session != h.session_id {
                    return Err(bad());
                }
            }
        }
        Role::Agent => {
            let agent = st.agents.get(&h.session_id).ok_or_else(bad)?;
            if !auth.agent_proof_ok(&h.session_id, &h.proof) {
                return Err(bad());
            }
            if h.kind.names_an_intercept() {
                let ic = st.intercept_by_id(&h.intercept_id).ok_or_else(bad)?;
                let spec = ic.spec.as_ref().ok_or_else(bad)?;
                if spec.namespace != agent.info.namespace || spec.workload != agent.info.name {
                    return Err(bad());
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::tunnel::TunnelKind;

    fn creds() -> Credentials {
        Credentials::from_secret(&Token::generate())
    }

    #[test]
    fn rotation_keeps_the_previous_tokens_for_the_grace_period() {
        let (one, two) = (creds(), creds());
        let auth = Auth::new(one.clone());
        assert_eq!(auth.caller(one.client.as_str()), Some(Caller::Client));
        assert_eq!(auth.caller(one.agent.as_str()), Some(Caller::Agent));
        assert_eq!(auth.caller(two.client.as_str()), None);
        assert_eq!(auth.caller(""), None);
        assert!(!auth.rotate(one.clone(), ROTATION_GRACE));
        assert!(auth.rotate(two.clone(), ROTATION_GRACE));
        assert_eq!(auth.caller(two.client.as_str()), Some(Caller::Client));
        assert_eq!(auth.caller(one.client.as_str()), Some(Caller::Client));
        assert!(auth.agent_proof_ok("agent-1", &agent_proof(&one.agent, "agent-1")));
        // Without grace the old ones are refused at once.
        assert!(auth.rotate(creds(), Duration::ZERO));
        assert_eq!(auth.caller(two.client.as_str()), None);
        assert_eq!(auth.caller(one.client.as_str()), Some(Caller::Client));
    }

    #[test]
    fn session_proofs_bind_the_session() {
        let auth = Auth::new(creds());
        let p = auth.session_proof("client-1");
        assert!(auth.client_proof_ok("client-1", &p));
        assert!(!auth.client_proof_ok("client-2", &p));
        assert!(!auth.client_proof_ok("client-1", ""));
        // Another manager's key gives other proofs.
        assert_ne!(Auth::new(creds()).session_proof("client-1"), p);
    }

    fn state_with_an_intercept() -> State {
        use crate::state::{AgentSession, ClientSession};
        use protocol::manager::{AgentInfo, InterceptInfo, InterceptSpec};
        let mut st = State::default();
        for id in ["client-a", "client-b"] {
            st.clients.insert(
                id.into(),
                ClientSession {
                    info: Default::default(),
                    expires: Instant::now() + Duration::from_secs(60),
                    dials: None,
                    scope: Default::default(),
                },
            );
        }
        for (id, workload) in [("agent-web", "web"), ("agent-db", "db")] {
            st.agents.insert(
                id.into(),
                AgentSession {
                    info: AgentInfo {
                        name: workload.into(),
                        namespace: "shop".into(),
                        ..Default::default()
                    },
                    expires: Instant::now() + Duration::from_secs(60),
                    sent_generation: 0,
                    dials: None,
                },
            );
        }
        st.intercepts.insert(
            "a:web".into(),
            InterceptInfo {
                id: "a:web".into(),
                client_session: "client-a".into(),
                spec: Some(InterceptSpec {
                    workload: "web".into(),
                    namespace: "shop".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        st
    }

    #[test]
    fn tunnels_need_a_proven_session_that_owns_the_intercept() {
        let c = creds();
        let auth = Auth::new(c.clone());
        let st = state_with_an_intercept();
        let header = |session: &str, proof: String, kind: TunnelKind| TunnelHeader {
            conn_id: "c1".into(),
            intercept_id: "a:web".into(),
            session_id: session.into(),
            proof,
            kind,
            ..Default::default()
        };
        let client = |s: &str| auth.session_proof(s);
        let agent = |s: &str| agent_proof(&c.agent, s);
        let ok = |role, h: TunnelHeader| admit_tunnel(&auth, &st, role, &h).is_ok();
        // The owner's file sync and answers, the workload's agent: carried.
        assert!(ok(
            Role::Client,
            header("client-a", client("client-a"), TunnelKind::Fs)
        ));
        assert!(ok(
            Role::Client,
            header("client-a", client("client-a"), TunnelKind::Intercept)
        ));
        assert!(ok(
            Role::Agent,
            header("agent-web", agent("agent-web"), TunnelKind::Intercept)
        ));
        assert!(ok(
            Role::Client,
            header("client-b", client("client-b"), TunnelKind::OutTcp)
        ));
        // Another client's intercept, another workload's agent: refused.
        assert!(!ok(
            Role::Client,
            header("client-b", client("client-b"), TunnelKind::Fs)
        ));
        assert!(!ok(
            Role::Agent,
            header("agent-db", agent("agent-db"), TunnelKind::Intercept)
        ));
        // No proof, a proof of another session or role, an unknown session: refused.
        assert!(!ok(
            Role::Client,
            header("client-a", String::new(), TunnelKind::Fs)
        ));
        assert!(!ok(
            Role::Client,
            header("client-a", client("client-b"), TunnelKind::Fs)
        ));
        assert!(!ok(
            Role::Client,
            header("client-a", agent("client-a"), TunnelKind::OutTcp)
        ));
        assert!(!ok(
            Role::Agent,
            header("agent-web", client("agent-web"), TunnelKind::Intercept)
        ));
        assert!(!ok(
            Role::Client,
            header("client-z", client("client-z"), TunnelKind::OutUdp)
        ));
        // Whatever kind is added later: the session and proof are checked before its kind.
        assert!(!ok(
            Role::Agent,
            header("client-a", client("client-a"), TunnelKind::OutTcp)
        ));
    }

    #[test]
    fn outbound_scope_is_the_cluster_view_minus_the_host() {
        let subnets = ["172.18.0.0/16".to_string(), "10.1.2.3".to_string()];
        let gw: IpAddr = "172.18.0.1".parse().unwrap();
        let scope = OutboundScope::new(&subnets, vec![gw]);
        let ok = |s: &str| scope.permits(s.parse().unwrap());
        assert!(ok("172.18.0.5:80") && ok("10.1.2.3:53"));
        assert!(ok("[::ffff:172.18.3.4]:80"));
        assert!(!ok("172.18.0.1:22"), "the engine host's gateway");
        assert!(!ok("10.1.2.4:53") && !ok("8.8.8.8:53"));
        assert!(!ok("127.0.0.1:8081") && !ok("[::1]:8081") && !ok("0.0.0.0:80"));
        let everything = OutboundScope::new(&["0.0.0.0/0".to_string()], vec![]);
        assert!(everything.permits("8.8.8.8:53".parse().unwrap()));
        assert!(!everything.permits("127.0.0.53:53".parse().unwrap()));
    }
}
