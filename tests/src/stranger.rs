//! A caller that can reach a traffic-manager but holds none of its credentials (a container on
//! the engine's default bridge, a pod beside the manager's Service): it tries every door —
//! arriving as client and as agent, listing, creating and removing intercepts with a victim's
//! session id, hijacking the victim's dials, renewing and ending its lease, and opening every
//! tunnel kind — and reports each [`Attempt`]. `tp-testapp stranger` runs it from a container;
//! tests/tests/kube_auth.rs runs it in process.

use protocol::auth::{Bearer, Token, NOT_AUTHORIZED};
use protocol::manager::*;
use protocol::tunnel::{
    read_header_timeout, write_header, HeaderError, Role, TunnelHeader, TunnelKind,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Endpoint;

/// What the stranger knows (all of it is visible to anyone on the network or guessable).
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// The manager's gRPC `host:port`.
    pub grpc: String,
    /// The manager's tunnel `host:port`.
    pub tunnel: String,
    /// A token to present (a made-up one); `None`: none.
    pub token: Option<Token>,
    /// The namespace and workload to intercept.
    pub namespace: String,
    pub workload: String,
    /// A legitimate client's session id and one of its intercepts (id and name).
    pub victim_session: String,
    pub victim_intercept_id: String,
    pub victim_intercept_name: String,
    /// A `host:port` inside the cluster for the outbound streams.
    pub outbound: String,
}

/// One try and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// What was tried (`ArriveAsClient`, `tunnel out-tcp`, …).
    pub op: String,
    /// Whether the manager refused it as unauthorized.
    pub refused: bool,
    /// The error, or what was received.
    pub detail: String,
}

fn grpc(op: &str, r: Result<String, tonic::Status>) -> Attempt {
    match r {
        Ok(detail) => Attempt {
            op: op.into(),
            refused: false,
            detail,
        },
        Err(s) => Attempt {
            op: op.into(),
            refused: s.code() == tonic::Code::Unauthenticated
                && s.message().starts_with(NOT_AUTHORIZED),
            detail: format!("{:?}: {}", s.code(), s.message()),
        },
    }
}

/// Every try, in order; the first one (`Version`, which is open) shows the manager was reachable.
pub async fn try_everything(t: &Target) -> Vec<Attempt> {
    let mut out = Vec::new();
    let channel = match Endpoint::from_shared(format!("http://{}", t.grpc)) {
        Ok(e) => e.connect_timeout(Duration::from_secs(5)).connect_lazy(),
        Err(e) => {
            out.push(Attempt {
                op: "connect".into(),
                refused: false,
                detail: e.to_string(),
            });
            return out;
        }
    };
    let mut c = protocol::auth::manager_client(channel, Bearer::new(t.token.clone()));
    let session = || {
        Some(SessionInfo {
            session_id: t.victim_session.clone(),
            ..Default::default()
        })
    };
    let victim = || SessionInfo {
        session_id: t.victim_session.clone(),
        ..Default::default()
    };
    out.push(grpc(
        "Version",
        c.version(Empty {}).await.map(|r| r.into_inner().version),
    ));
    let client = ClientInfo {
        name: "stranger@elsewhere".into(),
        namespace: t.namespace.clone(),
        ..Default::default()
    };
    let arrived = c.arrive_as_client(client).await;
    out.push(grpc(
        "ArriveAsClient",
        arrived.map(|r| format!("{:?}", r.into_inner().session)),
    ));
    let agent = AgentInfo {
        name: t.workload.clone(),
        namespace: t.namespace.clone(),
        ..Default::default()
    };
    let arrived = c.arrive_as_agent(agent).await;
    out.push(grpc(
        "ArriveAsAgent",
        arrived.map(|r| format!("{:?}", r.into_inner().session)),
    ));
    let listed = c
        .list_workloads(ListWorkloadsRequest {
            session: session(),
            namespace: t.namespace.clone(),
        })
        .await;
    out.push(grpc(
        "ListWorkloads",
        listed.map(|r| format!("{} workloads", r.into_inner().workloads.len())),
    ));
    let created = c
        .create_intercept(CreateInterceptRequest {
            session: session(),
            spec: Some(InterceptSpec {
                name: "stranger".into(),
                workload: t.workload.clone(),
                namespace: t.namespace.clone(),
                target_host: "127.0.0.1".into(),
                target_port: 9,
                ..Default::default()
            }),
        })
        .await;
    out.push(grpc("CreateIntercept", created.map(|r| r.into_inner().id)));
    let removed = c
        .remove_intercept(RemoveInterceptRequest {
            session: session(),
            name: t.victim_intercept_name.clone(),
        })
        .await;
    out.push(grpc("RemoveIntercept", removed.map(|_| "removed".into())));
    let dials = c.watch_dials(victim()).await;
    out.push(grpc(
        "WatchDials",
        dials.map(|_| "watching the victim's dials".into()),
    ));
    let remain = c.remain(victim()).await;
    out.push(grpc("Remain", remain.map(|_| "renewed".into())));
    let uninstall = c
        .uninstall(UninstallRequest {
            session: session(),
            namespace: t.namespace.clone(),
            all_agents: true,
            ..Default::default()
        })
        .await;
    out.push(grpc("Uninstall", uninstall.map(|_| "uninstalled".into())));
    let level = c
        .set_log_level(LogLevelRequest {
            session: session(),
            ..Default::default()
        })
        .await;
    out.push(grpc("SetLogLevel", level.map(|_| "set".into())));
    let report = c
        .report_wiretaps(WiretapReport {
            session: session(),
            ..Default::default()
        })
        .await;
    out.push(grpc("ReportWiretaps", report.map(|_| "reported".into())));
    let depart = c.depart(victim()).await;
    out.push(grpc("Depart", depart.map(|_| "departed".into())));
    for (role, kind) in [
        (Role::Agent, TunnelKind::Intercept),
        (Role::Client, TunnelKind::Intercept),
        (Role::Client, TunnelKind::Fs),
        (Role::Agent, TunnelKind::Fs),
        (Role::Client, TunnelKind::OutTcp),
        (Role::Client, TunnelKind::OutUdp),
        (Role::Client, TunnelKind::PodTcp),
        (Role::Client, TunnelKind::PodUdp),
        (Role::Agent, TunnelKind::PodTcp),
    ] {
        out.push(tunnel(t, role, kind).await);
    }
    out
}

/// Opens one tunnel connection naming the victim's session (with a made-up proof). Outbound
/// kinds read the manager's answer; the others send an HTTP request and count what comes back
/// before the manager closes the connection (a paired stream would answer).
async fn tunnel(t: &Target, role: Role, kind: TunnelKind) -> Attempt {
    let op = format!(
        "tunnel {role:?} {}",
        if kind.as_str().is_empty() {
            "intercept"
        } else {
            kind.as_str()
        }
    );
    let fail = |detail: String| Attempt {
        op: op.clone(),
        refused: false,
        detail,
    };
    let mut s = match TcpStream::connect(&t.tunnel).await {
        Ok(s) => s,
        Err(e) => return fail(format!("connect: {e}")),
    };
    let h = TunnelHeader {
        conn_id: uuid::Uuid::new_v4().to_string(),
        intercept_id: t.victim_intercept_id.clone(),
        session_id: t.victim_session.clone(),
        proof: Token::generate().as_str().to_string(),
        kind,
        target: match kind {
            TunnelKind::OutTcp | TunnelKind::OutUdp => t.outbound.clone(),
            TunnelKind::PodTcp | TunnelKind::PodUdp => "127.0.0.1:8080".into(),
            _ => String::new(),
        },
        ..Default::default()
    };
    if let Err(e) = write_header(&mut s, role, &h).await {
        return fail(format!("write: {e}"));
    }
    if role == Role::Client && kind.is_answered() {
        return match read_header_timeout(&mut s, Duration::from_secs(15)).await {
            Ok((_, answer)) => Attempt {
                op: op.clone(),
                refused: answer.error == Some(HeaderError::NotAuthorized),
                detail: format!("{:?}", answer.error),
            },
            Err(e) => fail(format!("no answer: {e}")),
        };
    }
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut got)).await;
    match read {
        Ok(Ok(_) | Err(_)) if got.is_empty() => Attempt {
            op,
            refused: true,
            detail: "closed without pairing".into(),
        },
        Ok(_) => fail(format!("received {:?}", String::from_utf8_lossy(&got))),
        Err(_) => fail("held open".into()),
    }
}
