//! An intercept end to end over the Kubernetes provider, in one process: the API stand-in, the
//! manager (gRPC + tunnel) with the Kubernetes provider, a client that serves dials like the
//! daemon, and a real traffic-agent started from exactly the environment the webhook gives the
//! injected container (port takeover: it listens on its own port and forwards to the app).
//! Intercepting triggers the ConfigMap entry and the rollout; the "kubelet" (this test) starts
//! the agent from the entry; the intercept becomes active; a caller's connection reaches the
//! client; the pod is replaced and the new pod's agent carries the intercept on by itself;
//! leaving restores the app. Every party presents what the manager's Secrets hold: the
//! client the token the CLI reads, the agent the token its injected container references.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom, one step after another

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kubernetes::configmap::AgentConfig;
use kubernetes::patch::{inject, InjectSettings};
use kubernetes::webhook::ConfigSource;
use kubernetes::{InjectPolicy, KubeConfig, KubeProvider, AGENTS_CONFIGMAP};
use protocol::auth::ManagerClient;
use protocol::manager::*;
use protocol::tunnel::{write_header, Role, TunnelHeader};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tests::kube::fixtures::*;
use tests::kube::standin::StandIn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Answers every connection with `hello` then echoes.
async fn greeter(listener: TcpListener, hello: &'static [u8]) {
    loop {
        let (mut s, _) = listener.accept().await.unwrap();
        tokio::spawn(async move {
            s.write_all(hello).await.unwrap();
            let mut buf = [0u8; 1024];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn greeting(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut hello = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut hello))
        .await
        .expect("greeting in time")
        .unwrap();
    String::from_utf8_lossy(&hello).into_owned()
}

async fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intercept_through_an_injected_agent() {
    // The app of the pod, and the client's local handler.
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_port = app.local_addr().unwrap().port();
    tokio::spawn(greeter(app, b"app:"));
    let handler = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handler_port = handler.local_addr().unwrap().port();
    tokio::spawn(greeter(handler, b"dev:"));

    let s = StandIn::start().await;
    s.put(&namespace("shop"));
    s.put(&namespace("ambassador"));
    let c = container("app", &[(Some("http"), i32::from(app_port))]);
    s.put(&deployment("shop", "web", vec![c.clone()]));
    s.put(&service(
        "shop",
        "web",
        "web",
        &[("http", 80, named("http"))],
        false,
    ));

    let (grpc, tunnel) = (free_port().await, free_port().await);
    let provider = Arc::new(
        KubeProvider::start(
            s.client(),
            KubeConfig {
                manager_host: "127.0.0.1".into(),
                grpc_port: grpc,
                tunnel_port: tunnel,
                agent_image: "registry.example/telepresence:0.1.0".into(),
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
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let manager = tokio::spawn(manager::run(
        manager::ManagerConfig {
            grpc_addr: ([127, 0, 0, 1], grpc).into(),
            tunnel_addr: ([127, 0, 0, 1], tunnel).into(),
            agent_timeout: Duration::from_secs(30),
            auth,
        },
        provider.clone(),
        async {
            let _ = stop_rx.await;
        },
    ));

    // The client: arrive, serve dials like the daemon (dial the tunnel, then the handler).
    let token = client_token(&s, "ambassador").await;
    let mut client = manager_client(grpc, Some(token)).await;
    let session = arrive(&mut client).await.session;
    let proof = session.clone().unwrap();
    let mut dials = client
        .watch_dials(session.clone().unwrap())
        .await
        .unwrap()
        .into_inner();
    let dial_task = tokio::spawn(async move {
        while let Some(Ok(d)) = dials.message().await.transpose() {
            let proof = proof.clone();
            tokio::spawn(async move {
                let mut t = TcpStream::connect(("127.0.0.1", tunnel)).await.unwrap();
                let mut local = TcpStream::connect((d.target_host.as_str(), d.target_port as u16))
                    .await
                    .unwrap();
                let h = TunnelHeader {
                    conn_id: d.conn_id,
                    intercept_id: d.intercept_id,
                    session_id: proof.session_id,
                    proof: proof.tunnel_proof,
                    ..Default::default()
                };
                write_header(&mut t, Role::Client, &h).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut t, &mut local).await;
            });
        }
    });

    // Intercept: the manager writes the agent's entry, rolls out, and waits for the agent.
    let mut c2 = client.clone();
    let owner = session.clone();
    let spec = InterceptSpec {
        name: "web".into(),
        workload: "web".into(),
        target_host: "127.0.0.1".into(),
        target_port: u32::from(handler_port),
        ..Default::default()
    };
    let create = tokio::spawn(async move {
        c2.create_intercept(CreateInterceptRequest {
            session,
            spec: Some(spec),
        })
        .await
    });

    // The kubelet's part: once the rollout's new pod is admitted, start its agent container.
    // The rollout (the workload's restart PATCH) comes after the entry is written and seen.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let entry = loop {
        let cm: Option<ConfigMap> = s.get("v1", "ConfigMap", "shop", AGENTS_CONFIGMAP);
        let rolled = !s
            .requests_matching("PATCH", "/apis/apps/v1/namespaces/shop/deployments/web")
            .is_empty();
        if let Some(y) = cm
            .and_then(|c| c.data?.get("web").cloned())
            .filter(|_| rolled)
        {
            break AgentConfig::from_yaml(&y).unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "no agent entry");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let pod = deployment_pod("shop", "web", "77aa1", "n1", vec![c.clone()], "10.42.0.9");
    let (agent, agent_port) =
        kubelet_starts_agent(&provider, &s, &entry, &pod, grpc, app_port).await;

    let info = create
        .await
        .unwrap()
        .expect("intercept created")
        .into_inner();
    assert_eq!(info.service_port, 80);
    assert_eq!(info.workload_kind, "Deployment");
    // A caller reaching the Service (endpoint: the agent's port) lands at the client.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while greeting(agent_port).await != "dev:" {
        assert!(tokio::time::Instant::now() < deadline, "never intercepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The pod is replaced (evicted, rescheduled, a node drained): its agent dies with it, and
    // the ReplicaSet's new pod is admitted with the entry that is still there. Nobody touches
    // the intercept: it routes through the new pod's agent. (Deleting a pod sends its
    // containers SIGTERM: the agent departs.)
    agent.shutdown().await.unwrap();
    let pod2 = deployment_pod("shop", "web", "77aa1", "n2", vec![c], "10.42.0.10");
    let (agent, agent_port) =
        kubelet_starts_agent(&provider, &s, &entry, &pod2, grpc, app_port).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while greeting(agent_port).await != "dev:" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the intercept did not resume on the new pod"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listed = client
        .list_workloads(ListWorkloadsRequest {
            session: owner.clone(),
            namespace: "shop".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let web = listed.workloads.iter().find(|w| w.name == "web").unwrap();
    assert_eq!(web.intercepts.len(), 1, "{web:?}");
    assert_eq!(web.intercepts[0].state(), InterceptState::Active, "{web:?}");

    // Only the session that made it can remove it; leaving restores the app.
    let other = arrived_session(&mut client).await;
    let e = client
        .remove_intercept(RemoveInterceptRequest {
            session: other,
            name: "web".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    client
        .remove_intercept(RemoveInterceptRequest {
            session: owner,
            name: "web".into(),
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while greeting(agent_port).await != "app:" {
        assert!(tokio::time::Instant::now() < deadline, "never restored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.shutdown().await.unwrap();
    // The manager's graceful stop waits for open streams: end the client's.
    dial_task.abort();
    drop(client);
    stop_tx.send(()).unwrap();
    manager.await.unwrap().unwrap();
}

/// The kubelet's part for one admitted pod: admission (the webhook asks the provider for the
/// pod's agent config, which writes the agents' Secret), then the injected agent container
/// started from exactly its environment, with the Secret reference resolved. Returns the
/// agent and its port.
async fn kubelet_starts_agent(
    provider: &KubeProvider,
    s: &StandIn,
    entry: &AgentConfig,
    pod: &k8s_openapi::api::core::v1::Pod,
    grpc: u16,
    app_port: u16,
) -> (agent::Agent, u16) {
    let pod_ip = pod
        .status
        .as_ref()
        .and_then(|st| st.pod_ip.clone())
        .unwrap_or_default();
    // Admission (the webhook's source of configs) writes the agents' Secret in the namespace.
    let admitted = provider
        .agent_config("shop", "Deployment", "web", pod, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&admitted, entry);
    let agent_secret: Secret = s
        .get("v1", "Secret", "shop", kubernetes::auth::AGENT_SECRET)
        .expect("agent Secret written at admission");
    let injected = inject(
        pod,
        entry,
        &InjectSettings {
            agent_image: "registry.example/telepresence:0.1.0".into(),
            image_pull_policy: None,
            ..Default::default()
        },
    )
    .unwrap();
    let agent_container = injected
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .find(|c| c.name == "traffic-agent")
        .unwrap()
        .clone();
    let mut env: HashMap<String, String> = agent_container
        .env
        .unwrap()
        .into_iter()
        .map(|e| {
            let from = e.value_from.as_ref();
            let v = match from.and_then(|f| f.secret_key_ref.as_ref()) {
                // The kubelet resolves the reference from the pod's namespace.
                Some(r) => {
                    assert_eq!(r.name, kubernetes::auth::AGENT_SECRET);
                    let bytes = &agent_secret.data.as_ref().unwrap()[&r.key];
                    String::from_utf8(bytes.0.clone()).unwrap()
                }
                None => e.value.unwrap_or_else(|| pod_ip.clone()), // downward API: pod IP
            };
            (e.name, v)
        })
        .collect();
    assert!(env["TP_MANAGER_ADDR"].ends_with(&format!(":{grpc}")));
    // The agent port is fixed by the plan (9900); on this shared host take a free one instead.
    let agent_port = free_port().await;
    env.insert(
        "TP_PORT_MAP".into(),
        env["TP_PORT_MAP"].replace("\"agentPort\":9900", &format!("\"agentPort\":{agent_port}")),
    );
    let cfg = agent::AgentConfig::from_lookup(|k| env.get(k).cloned()).unwrap();
    assert_eq!(cfg.ports, [80], "routed by the service port");
    assert_eq!(cfg.listen_and_app(80), (agent_port, app_port));
    let agent = agent::Agent::start(cfg).await.unwrap();
    (agent, agent_port)
}

/// A fresh client session (to show intercepts belong to the session that made them).
async fn arrived_session(client: &mut ManagerClient) -> Option<SessionInfo> {
    client
        .arrive_as_client(ClientInfo {
            name: "other@laptop".into(),
            namespace: "shop".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
}
