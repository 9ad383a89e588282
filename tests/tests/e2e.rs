//! End-to-end tests on the real Docker engine: a compose project of our test app, the real
//! `telepresence` binary driven as a user would, real containers for daemon, manager, agent
//! and handler. Run serially (`--test-threads=1`): `quit -s` is engine-wide.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use tp_tests::*;

const T: Duration = Duration::from_secs(30);

/// Asserts that nothing of ours is left on the engine (containers, networks, volumes).
fn assert_clean(context: &str) {
    let left = leftovers();
    assert!(left.is_empty(), "{context}: left behind: {left:?}");
}

/// Starts `telepresence intercept ... --docker-run -- <app image> serve --http <port> --name <name>`.
fn intercept_with_handler(user: &User, p: &Project, workload: &str, local: u16, remote: u16, name: &str) -> Child {
    let (app, _) = images();
    user.command(&[
        "intercept", workload, "-n", &p.name, "--port", &format!("{local}:{remote}"), "--docker-run", "--",
        app, "serve", "--http", &local.to_string(), "--name", name,
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn intercept")
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        assert!(start.elapsed() < timeout, "intercept process did not exit within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn output_of(child: Child) -> (String, String) {
    let o = child.wait_with_output().expect("output");
    (String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

#[test]
fn intercept_docker_run_routes_and_restores() {
    if !engine_available() {
        return;
    }
    let p = Project::up(&[("web", 8080)]).unwrap();
    let user = User::new();
    p.wait_for("http://web:8080/", "web", T).unwrap();

    let c = user.tp(&["connect", "--docker", "--cluster-type", "docker", "-n", &p.name]).ok();
    assert!(c.stdout.contains(&format!("Connected to context docker, namespace {}", p.name)), "{}", c.stdout);
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert_eq!(l.stdout.trim(), "web: ready to intercept (traffic-agent not yet installed)");

    let mut child = intercept_with_handler(&user, &p, "web", 9090, 8080, "handler");
    p.wait_for("http://web:8080/", "handler", T).unwrap();
    let st = user.tp(&["status"]).ok();
    assert!(st.stdout.contains("Intercepts        : 1 total"), "{}", st.stdout);
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert!(l.stdout.starts_with("web: intercepted\n"), "{}", l.stdout);
    assert!(l.stdout.contains("State         : ACTIVE"), "{}", l.stdout);
    assert!(l.stdout.contains("Destination   : 127.0.0.1:9090"), "{}", l.stdout);
    assert!(p.has_agent_table("web").unwrap(), "agent redirect should be installed");

    // The handler exits: the intercept ends and the original answers again.
    docker(&["stop", "-t", "1", "intercept-web-9090"]).unwrap();
    let status = wait_exit(&mut child, T);
    let (out, err) = output_of(child);
    assert!(out.contains("Using ComposeService web"), "{out}\n{err}");
    assert!(out.contains("   Intercept name         : web"), "{out}");
    assert!(out.contains("   State                  : ACTIVE"), "{out}");
    assert!(out.contains("   Destination            : 127.0.0.1:9090"), "{out}");
    // `docker stop` sends SIGTERM, on which the test app exits 0; intercept exits as its handler did.
    assert_eq!(status.code(), Some(0), "{out}\n{err}");
    p.wait_for("http://web:8080/", "web", T).unwrap();
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert_eq!(l.stdout.trim(), "web: ready to intercept (traffic-agent already installed)");

    let q = user.tp(&["quit", "-s"]).ok();
    assert_eq!(q.stdout.trim(), "Disconnected");
    assert!(!p.has_agent_table("web").unwrap(), "quit -s must remove the agent's netfilter table");
    p.wait_for("http://web:8080/", "web", T).unwrap();
    assert_clean("after quit -s");
    let st = user.tp(&["status"]).ok();
    assert_eq!(st.stdout, "Daemon: Not running\nTraffic Manager: Not connected\n");
}
