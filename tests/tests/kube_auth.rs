//! The traffic-manager's credentials on Kubernetes, in one process against the API stand-in:
//! the manager (Kubernetes provider, gRPC and tunnel listeners) keeps its credentials in Secret
//! `traffic-manager-auth`; a client that read the client token there (as `connect` does with
//! the user's credentials) works, a caller without it (tests/src/stranger.rs) is refused every
//! call and every tunnel kind and changes nothing; one credential cannot stand in for the
//! other; a rotation (a manager restart or `helm upgrade` writing the Secret) is picked up
//! while connected sessions and the previous token keep working.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom, one step after another

use kubernetes::{InjectPolicy, KubeConfig, KubeProvider};
use protocol::auth::Token;
use protocol::manager::*;
use std::sync::Arc;
use std::time::Duration;
use tests::kube::fixtures::*;
use tests::kube::standin::StandIn;
use tests::stranger::{try_everything, Target};

async fn free_port() -> u16 {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn list(client: &mut protocol::auth::ManagerClient, s: &Option<SessionInfo>) -> usize {
    client
        .list_workloads(ListWorkloadsRequest {
            session: s.clone(),
            namespace: "shop".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .workloads
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_holders_of_the_secret_use_the_manager_and_rotation_keeps_sessions() {
    let s = StandIn::start().await;
    s.put(&namespace("ambassador"));
    seed_web(&s);
    let (grpc, tunnel) = (free_port().await, free_port().await);
    let provider = Arc::new(
        KubeProvider::start(
            s.client(),
            KubeConfig {
                manager_host: "127.0.0.1".into(),
                grpc_port: grpc,
                tunnel_port: tunnel,
                server: s.url.clone(),
                ..kube_config(InjectPolicy::OnDemand, &[])
            },
        )
        .await
        .unwrap(),
    );
    let auth = Arc::new(
        kubernetes::auth::rotate_at_start(&s.client(), "ambassador")
            .await
            .unwrap(),
    );
    provider.use_auth(auth.clone());
    tokio::spawn(kubernetes::auth::watch(
        s.client(),
        "ambassador".into(),
        auth.clone(),
        Duration::from_millis(50),
    ));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let manager = tokio::spawn(manager::run(
        manager::ManagerConfig {
            grpc_addr: ([127, 0, 0, 1], grpc).into(),
            tunnel_addr: ([127, 0, 0, 1], tunnel).into(),
            agent_timeout: Duration::from_secs(5),
            auth: auth.clone(),
        },
        provider,
        async {
            let _ = stop_rx.await;
        },
    ));

    // The legitimate client: the token the Secret holds.
    let first = client_token(&s, "ambassador").await;
    let mut client = manager_client(grpc, Some(first.clone())).await;
    let session = arrive(&mut client).await.session;
    assert!(!session.as_ref().unwrap().tunnel_proof.is_empty());
    assert_eq!(list(&mut client, &session).await, 1);

    // A caller without the credential, naming the client's session: refused everything.
    let sid = session.as_ref().unwrap().session_id.clone();
    let stranger = Target {
        grpc: format!("127.0.0.1:{grpc}"),
        tunnel: format!("127.0.0.1:{tunnel}"),
        token: None,
        namespace: "shop".into(),
        workload: "web".into(),
        victim_intercept_id: format!("{}:web", sid.trim_start_matches("client-")),
        victim_intercept_name: "web".into(),
        victim_session: sid,
        outbound: "10.42.0.5:8080".into(),
    };
    for token in [None, Some(Token::generate())] {
        let attempts = try_everything(&Target {
            token: token.clone(),
            ..stranger.clone()
        })
        .await;
        let (version, rest) = attempts.split_first().unwrap();
        assert_eq!(version.refused, token.is_some(), "{version:?}");
        assert_eq!(rest.len(), 20);
        for a in rest {
            assert!(a.refused, "not refused: {a:?}");
        }
    }
    // Nothing changed: the client's session lives on, nothing was installed.
    client.remain(session.clone().unwrap()).await.unwrap();
    assert_eq!(list(&mut client, &session).await, 1);
    assert!(s
        .get::<k8s_openapi::api::core::v1::ConfigMap>(
            "v1",
            "ConfigMap",
            "shop",
            "telepresence-agents"
        )
        .is_none());

    // One credential does not stand in for the other.
    let secret: k8s_openapi::api::core::v1::Secret = s
        .get(
            "v1",
            "Secret",
            "ambassador",
            kubernetes::auth::MANAGER_SECRET,
        )
        .unwrap();
    let agent_token =
        Token::parse(std::str::from_utf8(&secret.data.unwrap()["agent-token"].0).unwrap()).unwrap();
    let e = client
        .arrive_as_agent(AgentInfo {
            name: "web".into(),
            namespace: "shop".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let mut as_agent = manager_client(grpc, Some(agent_token)).await;
    let e = as_agent
        .list_workloads(ListWorkloadsRequest {
            session: session.clone(),
            namespace: "shop".into(),
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("not authorized: "), "{e:?}");
    // An agent cannot renew a client's lease (nor a client an agent's).
    let e = as_agent.remain(session.clone().unwrap()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // Rotation: the Secret gets a new client token (a manager restart or `helm upgrade`).
    kubernetes::auth::rotate_at_start(&s.client(), "ambassador")
        .await
        .unwrap();
    let second = client_token(&s, "ambassador").await;
    assert_ne!(second, first);
    let mut new_client = manager_client(grpc, Some(second)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let new_session = loop {
        match new_client
            .arrive_as_client(ClientInfo {
                name: "new@laptop".into(),
                namespace: "shop".into(),
                ..Default::default()
            })
            .await
        {
            Ok(r) => break r.into_inner().session,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "the rotated token was never accepted: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(list(&mut new_client, &new_session).await, 1);
    // The connected client keeps working with the token it holds, and may arrive again.
    client.remain(session.clone().unwrap()).await.unwrap();
    assert_eq!(list(&mut client, &session).await, 1);
    let again = arrive(&mut client).await.session;
    assert_eq!(list(&mut client, &again).await, 1);

    drop((client, new_client, as_agent));
    stop_tx.send(()).unwrap();
    manager.await.unwrap().unwrap();
}
