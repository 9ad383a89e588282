//! End-to-end test of the traffic-manager's authentication on the real Docker engine: while a
//! user is connected with an intercept (handler running), an unrelated container on the
//! engine's default bridge — our test app's `stranger` mode (tests/src/stranger.rs) in its
//! FROM-scratch image — can reach the manager (`Version` answers) but every call and every
//! tunnel kind is refused as not authorized, with no token and with a made-up one; nothing
//! changes: the intercept still routes to the handler, the user's session lives on, and
//! `status` says the user's session is authenticated. Run serially (`--test-threads=1`).
#![allow(clippy::too_many_lines)] // scenarios read top to bottom, one step after another

use std::time::Duration;
use tests::stranger::Attempt;
use tests::*;

const T: Duration = Duration::from_secs(30);

/// Runs the stranger from a container on the default bridge; its attempts.
fn stranger(args: &[&str]) -> Vec<Attempt> {
    let (app, _) = images();
    let mut a = vec![
        "run",
        "--rm",
        "--network",
        "bridge",
        app.as_str(),
        "stranger",
    ];
    a.extend_from_slice(args);
    docker(&a)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[test]
fn a_container_on_the_bridge_without_the_credential_is_refused_everything() {
    let Some(p) = Project::up_if_engine(&[("web", 8080)]) else {
        return;
    };
    p.wait_for("http://web:8080/", "web", T).unwrap();
    let user = User::connected(&p);
    let st = user.tp(&["status"]).ok();
    assert_eq!(kv(&st.stdout, "Authenticated"), "yes", "{}", st.stdout);

    // The victim: an intercept of web with a running handler.
    let mut handler = spawn_piped(user.intercept_cmd(&p, "web", 9090, 8080, &[], &[], "handler"));
    p.wait_for("http://web:8080/", "handler", T).unwrap();
    let js: serde_json::Value =
        serde_json::from_str(&user.tp(&["status", "--output", "json"]).ok().stdout).unwrap();
    let ic = &js["daemons"][0]["intercepts"][0];
    let (id, name) = (ic["id"].as_str().unwrap(), ic["name"].as_str().unwrap());
    let session = format!("client-{}", id.split_once(':').unwrap().0);

    let mgr = cli::connect::manager_container(&p.name);
    let mgr_ip = bridge_ip(&mgr).unwrap();
    let (grpc, tunnel) = (format!("{mgr_ip}:8081"), format!("{mgr_ip}:8082"));
    let outbound = format!("{}:8080", p.ip("web").unwrap());
    let made_up = protocol::auth::Token::generate();
    for token in [None, Some(made_up.as_str())] {
        let mut args = vec![
            "--grpc",
            &grpc,
            "--tunnel",
            &tunnel,
            "--namespace",
            &p.name,
            "--workload",
            "web",
            "--victim-session",
            &session,
            "--victim-intercept-id",
            id,
            "--victim-intercept-name",
            name,
            "--outbound",
            &outbound,
        ];
        if let Some(t) = token {
            args.extend(["--token", t]);
        }
        let attempts = stranger(&args);
        let (version, rest) = attempts.split_first().unwrap();
        assert_eq!(version.op, "Version");
        if token.is_none() {
            // Reachable: the refusals below are the manager's, not the network's.
            assert!(!version.refused, "{version:?}");
        }
        assert_eq!(rest.len(), 20, "{attempts:#?}");
        for a in rest {
            assert!(a.refused, "not refused: {a:?}");
        }
        if let Some(a) = rest.iter().find(|a| a.op == "ArriveAsClient") {
            assert!(a.detail.contains("run telepresence connect again"), "{a:?}");
        }
    }

    // Nothing changed: the intercept still routes to the handler, the user's session lives.
    assert_eq!(p.get("http://web:8080/").unwrap(), "handler");
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert!(!l.stdout.contains("stranger"), "{}", l.stdout);
    let after: serde_json::Value =
        serde_json::from_str(&user.tp(&["status", "--output", "json"]).ok().stdout).unwrap();
    let d = &after["daemons"][0];
    assert_eq!(d["intercepts"][0]["id"].as_str(), Some(id));
    assert_eq!(d["traffic_manager"]["authenticated"], true);

    user.tp(&["leave", name]).ok();
    let _ = wait_exit(&mut handler, T);
    p.wait_for("http://web:8080/", "web", T).unwrap();
    user.quit_clean("the stranger test");
}
