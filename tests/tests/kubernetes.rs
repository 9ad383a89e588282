//! Kubernetes connections end to end.
//!
//! - `connect_through_the_api_port_forward` (Docker engine): the real CLI connects with a
//!   kubeconfig whose API server is our stand-in (`tests::kube::standin`), with an exec
//!   credential plugin; the daemon container gets the reduced, flattened kubeconfig and reaches
//!   the traffic-manager only through the stand-in's `pods/portforward` WebSockets, which lead
//!   to a real traffic-manager (the Docker-engine one, serving a compose project). `status`,
//!   `list` and an intercept with a handler container then work through that path.
//! - `real_cluster_*`: against a real cluster when `KUBECONFIG` is set (kind: see README);
//!   without it they print `SKIPPED: …` and return — never a pass of cluster behaviour.
//!   Run serially (`--test-threads=1`): `quit -s` is engine-wide.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom, one step after another

use std::process::Stdio;
use std::time::{Duration, Instant};
use tests::kube::behind::{standin_with_manager, write_kubeconfig, write_kubeconfig_ca};
use tests::kube::standin::{Req, StandIn};
use tests::*;

const T: Duration = Duration::from_secs(60);

/// The port-forward requests the stand-in `k` got whose URI also holds `also`; there must be
/// some, and every one must carry `Bearer <token>`.
fn portforwards_with_token(k: &StandIn, also: &str, token: &str) -> Vec<Req> {
    let forwards: Vec<_> = k
        .requests()
        .into_iter()
        .filter(|s| s.uri.contains("/portforward") && s.uri.contains(also))
        .collect();
    assert!(!forwards.is_empty());
    let bearer = format!("Bearer {token}");
    assert!(
        forwards.iter().all(|s| s.authorization == bearer),
        "{forwards:?}"
    );
    forwards
}

/// `telepresence connect --docker --kubeconfig <kubeconfig> <extra…>`, to completion.
fn connect_kubeconfig(user: &User, kubeconfig: &str, extra: &[&str]) -> Run {
    let mut args = vec!["connect", "--docker", "--kubeconfig", kubeconfig];
    args.extend_from_slice(extra);
    user.tp(&args)
}

#[test]
fn connect_through_the_api_port_forward() {
    let Some(p) = Project::up_if_engine(&[("web", 8080)]) else {
        return;
    };
    let user = User::new();
    p.wait_for("http://web:8080/", "web", T).unwrap();

    let (_rt, k, gateway, _) = standin_with_manager(&user, &p, false);
    let server = format!("http://{gateway}:{}", k.addr.port());
    let kubeconfig = write_kubeconfig(&user.home, &server, &p.name, "tok-from-plugin");

    let c = connect_kubeconfig(&user, &kubeconfig, &["--name", "kc"]).ok();
    assert!(
        c.stdout.contains(&format!(
            "Connected to context standin, namespace {} ({server})",
            p.name
        )),
        "{}\n{}",
        c.stdout,
        c.stderr
    );
    // The daemon used the plugin's token (run here on the host) for every API request.
    let forwards = portforwards_with_token(&k, "/portforward", "tok-from-plugin");
    assert!(forwards.iter().all(|s| s
        .uri
        .starts_with("/api/v1/namespaces/ambassador/pods/traffic-manager-5f7d9/portforward")));
    // The kubeconfig inside the daemon holds only the chosen context, with the token embedded.
    let inside = docker(&["cp", "tp-kc:/tp/kubeconfig", "-"]).unwrap();
    assert!(inside.contains("tok-from-plugin"), "{inside}");
    assert!(
        !inside.contains("must-not-leak") && !inside.contains("other.example"),
        "{inside}"
    );
    assert!(!inside.contains("get-token.sh"), "{inside}");

    let st = user.tp(&["status"]).ok();
    assert_eq!(
        kv(&st.stdout, "Kubernetes context"),
        "standin",
        "{}",
        st.stdout
    );
    assert_eq!(
        kv(&st.stdout, "Manager namespace"),
        "ambassador",
        "{}",
        st.stdout
    );
    assert_eq!(kv(&st.stdout, "Namespace"), p.name, "{}", st.stdout);
    assert!(
        st.stdout.contains(&format!("Kubernetes server : {server}")),
        "{}",
        st.stdout
    );

    let js = user.tp(&["status", "--output", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&js.stdout).unwrap();
    let d = &v["daemons"][0];
    assert_eq!(d["cluster_type"], "kubernetes", "{v}");
    assert_eq!(d["context"], "standin", "{v}");
    assert_eq!(d["manager_namespace"], "ambassador", "{v}");
    assert_eq!(d["server"], server.as_str(), "{v}");
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert_eq!(
        l.stdout.trim(),
        // `caller` declares no port and is a workload too.
        "caller: ready to intercept (traffic-agent not yet installed)\nweb: ready to intercept (traffic-agent not yet installed)"
    );

    // Connecting again refreshes the credentials: the plugin runs again, the daemon gets the
    // new kubeconfig and uses it for its next API request. (Tar mtimes have 1 s resolution:
    // wait for the next second so the daemon sees a newer file.)
    write_kubeconfig(&user.home, &server, &p.name, "tok-refreshed");
    std::thread::sleep(Duration::from_millis(1100));
    let again = connect_kubeconfig(&user, &kubeconfig, &["--name", "kc"]).ok();
    assert!(
        again
            .stdout
            .contains("Already connected to context standin"),
        "{}",
        again.stdout
    );
    let inside = docker(&["cp", "tp-kc:/tp/kubeconfig", "-"]).unwrap();
    assert!(inside.contains("tok-refreshed"), "{inside}");
    k.clear_requests();

    // An intercept: the manager reaches the daemon's handler through the forwarded tunnel port.
    let mut child = user
        .intercept_cmd(&p, "web", 9090, 8080, &[], &[], "handler")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    p.wait_for("http://web:8080/", "handler", T).unwrap();
    portforwards_with_token(&k, "ports=8082", "tok-refreshed");
    docker(&["stop", "-t", "1", "intercept-web-9090"]).unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < T, "intercept did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    p.wait_for("http://web:8080/", "web", T).unwrap();

    user.quit_clean("after quit -s");
}

/// kind and minikube publish their API server on 127.0.0.1 of the host, which the daemon
/// container cannot reach: `connect` finds the container publishing that port, points the
/// daemon's kubeconfig at that container's address and inner port (keeping the TLS server
/// name), and joins the daemon to its network. A relay container stands in for the control
/// plane, publishing the (HTTPS) stand-in on 127.0.0.1.
#[test]
fn connect_to_a_loopback_api_server_through_its_container() {
    let Some(p) = Project::up_if_engine(&[("web", 8080)]) else {
        return;
    };
    let user = User::new();
    let (_rt, k, gateway, ca) = standin_with_manager(&user, &p, true);
    let (app, _) = images();
    let cp = format!("kindish-control-plane-{}", &p.name[3..]);
    let to = format!("{gateway}:{}", k.addr.port());
    docker(&[
        "run",
        "-d",
        "--name",
        &cp,
        "--label",
        "telepresence.io/test-probe=1",
        "-p",
        "127.0.0.1::6443",
        app,
        "relay",
        "--listen",
        "6443",
        "--to",
        &to,
    ])
    .unwrap();
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = docker(&["rm", "-f", &self.0]);
        }
    }
    let _cp = Remove(cp.clone());
    let published = docker(&["port", &cp, "6443/tcp"]).unwrap();
    let port = published
        .lines()
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let cp_ip = bridge_ip(&cp).unwrap();
    // HTTPS with a certificate for 127.0.0.1 only: the daemon, which reaches the API server at
    // the relay's address, verifies it only thanks to tls-server-name.
    let server = format!("https://127.0.0.1:{port}");
    let kubeconfig = write_kubeconfig_ca(&user.home, &server, &p.name, "tok", ca.as_deref());

    let c = connect_kubeconfig(&user, &kubeconfig, &["--name", "kl"]).ok();
    assert!(c.stdout.contains(&format!("({server})")), "{}", c.stdout);
    let inside = docker(&["cp", "tp-kl:/tp/kubeconfig", "-"]).unwrap();
    assert!(
        inside.contains(&format!("server: https://{cp_ip}:6443")),
        "{inside}"
    );
    assert!(inside.contains("tls-server-name: 127.0.0.1"), "{inside}");
    let net = docker(&[
        "inspect",
        "tp-kl",
        "--format",
        "{{.HostConfig.NetworkMode}}",
    ])
    .unwrap();
    assert_eq!(net, "bridge");
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert_eq!(
        l.stdout.trim(),
        // `caller` declares no port and is a workload too.
        "caller: ready to intercept (traffic-agent not yet installed)\nweb: ready to intercept (traffic-agent not yet installed)"
    );
    let st = user.tp(&["status"]).ok();
    assert!(
        st.stdout.contains(&format!("Kubernetes server : {server}")),
        "{}",
        st.stdout
    );
    user.tp(&["quit", "-s"]).ok();
    drop(_cp);
    assert_clean("after quit -s");
}

#[test]
fn connect_refusals_create_nothing() {
    if !engine_available() {
        return;
    }
    let user = User::new();
    // Port 1 is never published by a container.
    let kubeconfig = write_kubeconfig(&user.home, "https://127.0.0.1:1", "default", "t");
    let r = connect_kubeconfig(&user, &kubeconfig, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("loopback address")
            && r.stderr
                .contains("no container on this Docker engine publishes port 1"),
        "{}",
        r.stderr
    );
    let r = connect_kubeconfig(&user, &kubeconfig, &["--context", "nope"]);
    assert!(
        r.stderr.contains("context \"nope\" not found") && r.stderr.contains("standin, other"),
        "{}",
        r.stderr
    );
    // An explicit --kubeconfig that cannot be read is an error, not a fall-back to Docker mode.
    let r = connect_kubeconfig(&user, "/nonexistent/kubeconfig", &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("cannot read the kubeconfig /nonexistent/kubeconfig"),
        "{}",
        r.stderr
    );

    // A reachable API server without a traffic-manager: refused before any container exists.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let k = rt.block_on(StandIn::start_on("0.0.0.0:0"));
    k.add_namespace("ambassador");
    let host_ip = {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect("192.0.2.1:9").unwrap();
        s.local_addr().unwrap().ip()
    };
    let kubeconfig = write_kubeconfig(
        &user.home,
        &format!("http://{host_ip}:{}", k.addr.port()),
        "default",
        "t",
    );
    let r = connect_kubeconfig(&user, &kubeconfig, &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("no ready traffic-manager in namespace ambassador of context standin")
            && r.stderr.contains("telepresence helm install"),
        "{}",
        r.stderr
    );
    assert_clean("after refused connects");
}

/// `KUBECONFIG` of a real cluster, or why the test is skipped.
fn real_cluster(test: &str) -> Option<String> {
    match std::env::var("KUBECONFIG") {
        Ok(k) if !k.is_empty() => Some(k),
        _ => {
            skip(&format!("{test}: KUBECONFIG is not set; this test needs a real Kubernetes cluster (e.g. kind, see README \"Kubernetes\")"));
            None
        }
    }
}

/// The whole user journey on a real cluster: helm install, connect, list, intercept, quit,
/// helm uninstall. The image must be pullable by the nodes (`images.registry`) or loaded
/// (kind: `kind load docker-image telepresence:<tag>`); the namespace `TP_TEST_NAMESPACE`
/// (default `default`) must hold a Deployment `TP_TEST_WORKLOAD` (default `echo`) with a
/// Service port 80 that answers HTTP.
#[test]
fn real_cluster_helm_connect_intercept_uninstall() {
    let Some(kubeconfig) = real_cluster("real_cluster_helm_connect_intercept_uninstall") else {
        return;
    };
    if !engine_available() {
        return;
    }
    let ns = std::env::var("TP_TEST_NAMESPACE").unwrap_or_else(|_| "default".into());
    let wl = std::env::var("TP_TEST_WORKLOAD").unwrap_or_else(|_| "echo".into());
    let mgr_ns = format!("tp-e2e-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let user = User::new();
    let run = |args: &[&str]| {
        let mut c = user.command(args);
        c.env("KUBECONFIG", &kubeconfig);
        Run::from_output(c.output().unwrap())
    };
    run(&[
        "helm",
        "install",
        "--create-namespace",
        "--manager-namespace",
        &mgr_ns,
    ])
    .ok();
    let c = run(&[
        "connect",
        "--docker",
        "-n",
        &ns,
        "--manager-namespace",
        &mgr_ns,
    ])
    .ok();
    assert!(
        c.stdout.contains(&format!("namespace {ns} (")),
        "{}",
        c.stdout
    );
    let l = run(&["list", "-n", &ns]).ok();
    assert!(
        l.stdout.contains(&format!("{wl}: ready to intercept")),
        "{}",
        l.stdout
    );
    let i = run(&[
        "intercept",
        &wl,
        "-n",
        &ns,
        "--port",
        "9090:80",
        "--mount",
        "false",
    ])
    .ok();
    assert!(
        i.stdout.contains("State                  : ACTIVE"),
        "{}",
        i.stdout
    );
    run(&["leave", &wl]).ok();
    run(&["quit", "-s"]).ok();
    run(&["helm", "uninstall", "--manager-namespace", &mgr_ns]).ok();
    assert_clean("after a real-cluster run");
}
