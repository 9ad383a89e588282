//! The Kubernetes client side against the API stand-in (`tests::kube::standin`): the real
//! `kube` client, real Kubernetes JSON, the real port-forward channel protocol.
//! - `telepresence helm install|upgrade|uninstall`: server-side apply requests, the release
//!   record, the rollout wait, refusals that change nothing.
//! - The daemon's port-forward (`kubernetes::portforward`): bytes both ways through the
//!   WebSocket to a real TCP server, the choice of a ready pod, and moving to another
//!   pod when the remembered one is gone.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom, one step after another

use cli::helm::{self, InstallArgs, TargetArgs};
use serde_json::Value;
use std::time::Duration;
use tests::kube::standin::StandIn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn install_args(ns: &str, create: bool) -> InstallArgs {
    InstallArgs {
        target: TargetArgs {
            manager_namespace: ns.into(),
            ..Default::default()
        },
        create_namespace: create,
        set: vec!["logLevel=debug".into()],
        timeout: Duration::from_secs(30),
        ..Default::default()
    }
}

/// The error of `helm install` into namespace `tm` without `--create-namespace`, which must fail.
async fn refused_install(client: &kube::Client) -> String {
    helm::install(
        client,
        "test",
        install_args("tm", false),
        false,
        &mut |_| {},
    )
    .await
    .unwrap_err()
    .to_string()
}

fn applies(k: &StandIn) -> Vec<tests::kube::standin::Req> {
    k.requests()
        .into_iter()
        .filter(|s| s.method == "PATCH")
        .collect()
}

#[tokio::test]
async fn helm_install_upgrade_uninstall_against_the_api() {
    let k = StandIn::start().await;
    let client = k.client();

    // No namespace and no --create-namespace: refused before anything is applied.
    let e = refused_install(&client).await;
    assert!(
        e.contains("namespace tm does not exist") && e.contains("--create-namespace"),
        "{e}"
    );
    assert!(applies(&k).is_empty());
    assert!(k.keys().is_empty(), "{:?}", k.keys());

    // A manager pod that cannot pull its image: the wait says so.
    k.put(
        &serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "traffic-manager-x1", "namespace": "tm", "labels": {"app": "traffic-manager"}},
            "status": {"phase": "Pending", "containerStatuses": [{"name": "traffic-manager", "image": "telepresence:t",
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}]}}),
    );

    // Install: every object server-side applied by field manager telepresence, forced.
    let mut progress = Vec::new();
    let out = helm::install(&client, "test", install_args("tm", true), false, &mut |l| {
        progress.push(l.to_string());
    })
    .await
    .unwrap();
    assert!(
        out.text.starts_with(
            "Traffic Manager installed successfully (context test, namespace tm, revision 1"
        ),
        "{}",
        out.text
    );
    assert!(
        progress.contains(&"Created namespace tm".to_string()),
        "{progress:?}"
    );
    // The rollout was observed incomplete, then complete.
    assert!(
        progress.contains(
            &"Waiting for deployment traffic-manager: 0 of 1 updated replicas are available (pod traffic-manager-x1: ErrImagePull: not found)"
                .to_string()
        ),
        "{progress:?}"
    );
    assert_eq!(
        progress.last().unwrap(),
        "Waiting for deployment traffic-manager: 1 of 1 replicas available"
    );
    let patches = applies(&k);
    for p in &patches {
        assert_eq!(p.content_type, "application/apply-patch+yaml", "{p:?}");
        assert!(p.uri.contains("fieldManager=telepresence"), "{p:?}");
        assert!(p.uri.contains("force=true"), "{p:?}");
    }
    let paths: Vec<String> = patches
        .iter()
        .map(|p| p.uri.split('?').next().unwrap().to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "/api/v1/namespaces/tm/serviceaccounts/traffic-manager",
            "/api/v1/namespaces/tm/secrets/traffic-manager-tls",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/traffic-manager-tm",
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/traffic-manager-tm",
            "/api/v1/namespaces/tm/services/traffic-manager",
            "/apis/apps/v1/namespaces/tm/deployments/traffic-manager",
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/agent-injector-webhook-tm",
            "/api/v1/namespaces/tm/configmaps/telepresence-release",
        ]
    );
    // What was applied is the typed object the API server stores.
    let d: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(
        k.get::<Value>("apps/v1", "Deployment", "tm", "traffic-manager")
            .unwrap(),
    )
    .unwrap();
    let c = &d.spec.template.spec.unwrap().containers[0];
    assert!(
        c.image.as_deref().unwrap().starts_with("telepresence:")
            || c.image.as_deref().unwrap().contains("/telepresence:")
    );
    assert!(c
        .env
        .iter()
        .flatten()
        .any(|e| e.name == "RUST_LOG" && e.value.as_deref() == Some("debug")));
    // The release record: visible by label, holds the user's values but never the TLS key.
    let rec = k
        .get::<Value>("v1", "ConfigMap", "tm", "telepresence-release")
        .unwrap();
    assert_eq!(rec["metadata"]["labels"]["owner"], "telepresence");
    assert_eq!(rec["data"]["revision"], "1");
    assert!(rec["data"]["values"]
        .as_str()
        .unwrap()
        .contains("logLevel: debug"));
    assert!(!rec.to_string().contains("PRIVATE KEY"));
    let objects: Vec<Value> =
        serde_json::from_str(rec["data"]["objects"].as_str().unwrap()).unwrap();
    assert_eq!(objects.len(), 7);
    let ca1 = k
        .get::<Value>("v1", "Secret", "tm", "traffic-manager-tls")
        .unwrap()["data"]["ca.crt"]
        .clone();

    // A second install is refused; upgrade re-applies, keeps the CA, bumps the revision and
    // prunes what the new values no longer render.
    let e = refused_install(&client).await;
    assert!(
        e.contains("already installed") && e.contains("helm upgrade"),
        "{e}"
    );
    k.add_namespace("shop");
    let mut up = install_args("tm", false);
    up.set = vec!["rbac.clusterWide=false,managedNamespaces={shop}".into()];
    up.team_mode = true;
    let out = helm::install(&client, "test", up, true, &mut |_| {})
        .await
        .unwrap();
    assert!(
        out.text.contains("upgraded successfully") && out.text.contains("revision 2"),
        "{}",
        out.text
    );
    assert_eq!(
        k.get::<Value>("v1", "Secret", "tm", "traffic-manager-tls")
            .unwrap()["data"]["ca.crt"],
        ca1
    );
    assert!(k
        .get::<Value>(
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            "",
            "traffic-manager-tm"
        )
        .is_none());
    assert!(k
        .get::<Value>(
            "rbac.authorization.k8s.io/v1",
            "Role",
            "shop",
            "traffic-manager-tm"
        )
        .is_some());
    let d = k
        .get::<Value>("apps/v1", "Deployment", "tm", "traffic-manager")
        .unwrap();
    assert!(
        d.to_string()
            .contains(r#"{"name":"TP_TEAM_MODE","value":"true"}"#),
        "{d}"
    );

    // Uninstall deletes what the release applied, and the record.
    let out = helm::uninstall(&client, "test", "tm").await.unwrap();
    assert!(
        out.text.contains("uninstalled successfully"),
        "{}",
        out.text
    );
    let left: Vec<String> = k
        .keys()
        .into_iter()
        .filter(|k| !k.starts_with("/api/v1/namespaces/"))
        .chain(
            k.keys()
                .into_iter()
                .filter(|k| k.starts_with("/api/v1/namespaces/tm/")),
        )
        .collect();
    // Only the namespaces themselves (Helm never deletes the release namespace) and the pod we
    // made remain.
    let left: Vec<String> = left
        .into_iter()
        .filter(|k| k != "/api/v1/namespaces/tm/pods/traffic-manager-x1")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let e = helm::uninstall(&client, "test", "tm")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not installed in namespace tm"), "{e}");
}

/// A TCP server that reads a 4-byte big-endian length and that many bytes, answers them
/// reversed, then closes (a request/response exchange that needs no half-close: the
/// `v4.channel.k8s.io` protocol has none, a client's half-close ends the forward as with
/// `kubectl port-forward`).
async fn reverse_server() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut c, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut len = [0u8; 4];
                if c.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
                if c.read_exact(&mut buf).await.is_err() {
                    return;
                }
                buf.reverse();
                let _ = c.write_all(&buf).await;
                let _ = c.shutdown().await;
            });
        }
    });
    addr
}

async fn roundtrip(addr: std::net::SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = c.split();
    let write = async {
        w.write_all(&(payload.len() as u32).to_be_bytes())
            .await
            .unwrap();
        w.write_all(payload).await.unwrap();
    };
    let mut got = Vec::new();
    let read = r.read_to_end(&mut got);
    let (_, n) = tokio::join!(write, read);
    n.unwrap();
    got
}

#[tokio::test]
async fn port_forward_reaches_a_ready_manager_pod_and_moves_on_when_it_is_gone() {
    let k = StandIn::start().await;
    k.add_namespace("ambassador");
    // An older not-ready pod, and a ready one.
    k.add_manager_pod(
        "ambassador",
        "traffic-manager-old",
        false,
        "2026-01-01T00:00:00Z",
    );
    k.add_manager_pod(
        "ambassador",
        "traffic-manager-a",
        true,
        "2026-01-02T00:00:00Z",
    );
    let server = reverse_server().await;
    k.forward_port(8081, server);

    let f = std::sync::Arc::new(kubernetes::portforward::Forwarder::new(
        k.client(),
        "ambassador",
    ));
    assert_eq!(f.pod().await.unwrap(), "traffic-manager-a");
    let local = f.clone().listen("", 8081).await.unwrap();

    // 1 MiB each way through the WebSocket channel protocol.
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let got = tokio::time::timeout(Duration::from_secs(30), roundtrip(local, &payload))
        .await
        .expect("the forwarded connection finished");
    assert_eq!(got.len(), payload.len());
    assert!(got.iter().eq(payload.iter().rev()));
    let forwards: Vec<String> = k
        .requests()
        .into_iter()
        .filter(|s| s.uri.contains("/portforward"))
        .map(|s| s.uri)
        .collect();
    assert_eq!(forwards.len(), 1, "{forwards:?}");
    let (path, query) = forwards[0].split_once('?').unwrap();
    assert_eq!(
        path,
        "/api/v1/namespaces/ambassador/pods/traffic-manager-a/portforward"
    );
    assert!(query.split('&').any(|kv| kv == "ports=8081"), "{query}");

    // The pod goes away (rollout): the next connection fails over to the new ready pod.
    k.delete("v1", "Pod", "ambassador", "traffic-manager-a");
    k.add_manager_pod(
        "ambassador",
        "traffic-manager-b",
        true,
        "2026-01-03T00:00:00Z",
    );
    k.clear_requests();
    let got = tokio::time::timeout(Duration::from_secs(30), roundtrip(local, b"hello again"))
        .await
        .unwrap();
    assert_eq!(got, b"niaga olleh");
    let forwards: Vec<String> = k
        .requests()
        .into_iter()
        .filter(|s| s.uri.contains("/portforward"))
        .map(|s| s.uri.split('?').next().unwrap().to_string())
        .collect();
    assert_eq!(
        forwards,
        [
            "/api/v1/namespaces/ambassador/pods/traffic-manager-a/portforward",
            "/api/v1/namespaces/ambassador/pods/traffic-manager-b/portforward",
        ]
    );

    // No ready pod at all: a clear error that says what to do.
    k.delete("v1", "Pod", "ambassador", "traffic-manager-b");
    let f2 = kubernetes::portforward::Forwarder::new(k.client(), "ambassador");
    let e = f2.pod().await.unwrap_err().to_string();
    assert!(
        e.contains("no ready traffic-manager pod in namespace ambassador")
            && e.contains("helm install"),
        "{e}"
    );
}

#[tokio::test]
async fn port_forward_error_channel_is_reported_and_the_pod_forgotten() {
    let k = StandIn::start().await;
    k.add_namespace("ambassador");
    k.add_manager_pod(
        "ambassador",
        "traffic-manager-a",
        true,
        "2026-01-02T00:00:00Z",
    );
    // Nothing listens behind port 8082 in the "pod": the API server reports it on the error
    // channel, and the connection is closed.
    let f = std::sync::Arc::new(kubernetes::portforward::Forwarder::new(
        k.client(),
        "ambassador",
    ));
    let local = f.clone().listen("", 8082).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(30), roundtrip(local, b"x"))
        .await
        .unwrap();
    assert!(got.is_empty());
    // The failed pod is forgotten: the next forward lists pods again.
    k.clear_requests();
    let _ = tokio::time::timeout(Duration::from_secs(30), roundtrip(local, b"x")).await;
    assert!(
        k.requests()
            .iter()
            .any(|s| s.method == "GET" && s.uri.contains("/pods?")),
        "{:?}",
        k.requests()
    );
}

#[tokio::test]
async fn a_changed_kubeconfig_file_is_used_for_the_next_forward() {
    let k = StandIn::start().await;
    k.add_namespace("ambassador");
    k.add_manager_pod(
        "ambassador",
        "traffic-manager-a",
        true,
        "2026-01-02T00:00:00Z",
    );
    k.forward_port(8081, reverse_server().await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    let write = |token: &str, mtime: u64| {
        std::fs::write(
            &path,
            format!("apiVersion: v1\nkind: Config\ncurrent-context: s\nclusters:\n- name: s\n  cluster:\n    server: http://{}\ncontexts:\n- name: s\n  context:\n    cluster: s\n    user: u\nusers:\n- name: u\n  user:\n    token: {token}\n", k.addr),
        )
        .unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(mtime))
            .unwrap();
    };
    write("first", 1_000_000);
    let f = std::sync::Arc::new(
        kubernetes::portforward::Forwarder::from_kubeconfig(path.to_str().unwrap(), "ambassador")
            .await
            .unwrap(),
    );
    let local = f.clone().listen("", 8081).await.unwrap();
    assert_eq!(roundtrip(local, b"ab").await, b"ba");
    write("second", 2_000_000);
    k.clear_requests();
    assert_eq!(roundtrip(local, b"cd").await, b"dc");
    let auth: Vec<String> = k
        .requests()
        .into_iter()
        .filter(|s| s.uri.contains("/portforward"))
        .map(|s| s.authorization)
        .collect();
    assert_eq!(auth, ["Bearer second"]);
}

#[tokio::test]
async fn tls_server_name_keeps_verification_valid_at_another_address() {
    // Like kind: a certificate for 127.0.0.1 only, reached under another name.
    let (k, ca) = StandIn::start_tls_on("127.0.0.1:0", &["127.0.0.1"]).await;
    k.add_namespace("ambassador");
    k.add_manager_pod(
        "ambassador",
        "traffic-manager-a",
        true,
        "2026-01-02T00:00:00Z",
    );
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    let pod = |server_name: &str| {
        std::fs::write(
            &path,
            format!("apiVersion: v1\nkind: Config\ncurrent-context: s\nclusters:\n- name: s\n  cluster:\n    server: https://localhost:{}\n    certificate-authority-data: {ca}\n{server_name}contexts:\n- name: s\n  context:\n    cluster: s\n    user: u\nusers:\n- name: u\n  user:\n    token: t\n", k.addr.port()),
        )
        .unwrap();
        let path = path.clone();
        async move {
            kubernetes::portforward::Forwarder::from_kubeconfig(
                path.to_str().unwrap(),
                "ambassador",
            )
            .await
            .unwrap()
            .pod()
            .await
        }
    };
    let e = pod("").await.unwrap_err().to_string();
    assert!(e.contains("certificate") && e.contains("localhost"), "{e}");
    assert_eq!(
        pod("    tls-server-name: 127.0.0.1\n").await.unwrap(),
        "traffic-manager-a"
    );
}
