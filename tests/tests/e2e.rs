//! End-to-end tests on the real Docker engine: a compose project of our test app, the real
//! `telepresence` binary driven as a user would, real containers for daemon, manager, agent
//! and handler. Run serially (`--test-threads=1`): `quit -s` is engine-wide.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom, one step after another

use std::process::Child;
use std::time::Duration;
use tests::*;

const T: Duration = Duration::from_secs(30);

/// Starts `telepresence intercept ... --docker-run -- <app image> serve --http <port> --name <name>`.
fn intercept_with_handler(
    user: &User,
    p: &Project,
    workload: &str,
    local: u16,
    remote: u16,
    name: &str,
) -> Child {
    spawn_piped(user.intercept_cmd(p, workload, local, remote, &[], &[], name))
}

/// Intercepts `web` (port 8080) with a handler on 9090 that answers `handler`, and waits until
/// the project's requests reach it.
fn intercept_web(user: &User, p: &Project) -> Child {
    let child = intercept_with_handler(user, p, "web", 9090, 8080, "handler");
    p.wait_for("http://web:8080/", "handler", T).unwrap();
    child
}

#[test]
fn intercept_docker_run_routes_and_restores() {
    let Some(p) = Project::up_if_engine(&[("web", 8080)]) else {
        return;
    };
    let user = User::new();
    p.wait_for("http://web:8080/", "web", T).unwrap();

    let c = user.connect_docker(&p, &[]).ok();
    assert!(
        c.stdout.contains(&format!(
            "Connected to context docker, namespace {}",
            p.name
        )),
        "{}",
        c.stdout
    );
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert_eq!(
        l.stdout.trim(),
        "caller: ready to intercept (traffic-agent not yet installed)\nweb: ready to intercept (traffic-agent not yet installed)"
    );

    let mut child = intercept_web(&user, &p);
    // The handler listens on every address of the daemon's namespace: the manager connects to
    // it itself, so the daemon carries none of the connection's bytes.
    let manager = cli::connect::manager_container(&p.name);
    let manager_ip = bridge_ip(&manager).unwrap();
    assert_eq!(p.get("http://web:8080/peer").unwrap().trim(), manager_ip);
    // The manager answered the agent with an in-kernel forward to the handler: this connection
    // and every later one go through the kernels (the forward's rule counts each), still from
    // the manager's address.
    for _ in 0..3 {
        assert_eq!(p.get("http://web:8080/peer").unwrap().trim(), manager_ip);
    }
    let daemon_ip = bridge_ip(&daemon_container(&user).unwrap()).unwrap();
    let to_handler = format!("dnat to {daemon_ip}:9090");
    let table = nft_in(&manager, &["list", "table", "ip", "telepresence_fwd"]).unwrap();
    let rule = table.lines().find(|l| l.contains(&to_handler));
    let packets = rule.and_then(|r| r.split("counter packets ").nth(1));
    let packets: u64 = packets
        .and_then(|n| n.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no counted forward to the handler:\n{table}"));
    assert!(packets >= 4, "4 connections, {packets} forwarded:\n{table}");
    let st = user.tp(&["status"]).ok();
    assert_eq!(kv(&st.stdout, "Intercepts"), "1 total", "{}", st.stdout);
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert!(
        l.stdout.lines().any(|x| x == "web: intercepted"),
        "{}",
        l.stdout
    );
    assert!(l.stdout.contains("State         : ACTIVE"), "{}", l.stdout);
    assert!(
        l.stdout.contains("Destination   : 127.0.0.1:9090"),
        "{}",
        l.stdout
    );
    assert!(
        p.has_agent_table("web").unwrap(),
        "agent redirect should be installed"
    );

    // The handler exits: the intercept ends and the original answers again.
    docker(&["stop", "-t", "1", "intercept-web-9090"]).unwrap();
    let status = wait_exit(&mut child, T);
    let (out, err) = output_of(child);
    assert!(out.contains("Using ComposeService web"), "{out}\n{err}");
    assert!(out.contains("   Intercept name         : web"), "{out}");
    assert!(out.contains("   State                  : ACTIVE"), "{out}");
    assert!(
        out.contains("   Destination            : 127.0.0.1:9090"),
        "{out}"
    );
    // `docker stop` sends SIGTERM, on which the test app exits 0; intercept exits as its handler did.
    assert_eq!(status.code(), Some(0), "{out}\n{err}");
    p.wait_for("http://web:8080/", "web", T).unwrap();
    let forwarded = || {
        let t = nft_in(&manager, &["list", "table", "ip", "telepresence_fwd"]).unwrap();
        t.contains(&to_handler)
    };
    eventually("the forward goes with the intercept", T, || !forwarded());
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert_eq!(
        l.stdout.trim(),
        "caller: ready to intercept (traffic-agent not yet installed)\nweb: ready to intercept (traffic-agent already installed)"
    );

    // A handler listening on 127.0.0.1 only: only the daemon's namespace reaches it, so the
    // daemon dials it and relays.
    let (app, _) = images();
    let args = [
        "intercept",
        "web",
        "-n",
        &p.name,
        "--port",
        "9090:8080",
        "--docker-run",
        "--",
        app.as_str(),
        "serve",
        "--http",
        "9090",
        "--name",
        "local-only",
        "--bind",
        "127.0.0.1",
    ];
    let mut local_only = spawn_piped(user.command(&args));
    p.wait_for("http://web:8080/", "local-only", T).unwrap();
    assert_eq!(p.get("http://web:8080/peer").unwrap().trim(), "127.0.0.1");
    user.tp(&["leave", "web"]).ok();
    wait_exit(&mut local_only, T);
    p.wait_for("http://web:8080/", "web", T).unwrap();

    let q = user.tp(&["quit", "-s"]).ok();
    assert_eq!(q.stdout.trim(), "Disconnected");
    assert!(
        !p.has_agent_table("web").unwrap(),
        "quit -s must remove the agent's netfilter table"
    );
    p.wait_for("http://web:8080/", "web", T).unwrap();
    assert_clean("after quit -s");
    let st = user.tp(&["status"]).ok();
    assert_eq!(
        st.stdout,
        "Daemon: Not running\nTraffic Manager: Not connected\n"
    );
}

#[test]
fn two_workloads_intercepted_at_once_and_leave_one() {
    let Some(p) = Project::up_if_engine(&[("web", 8080), ("api", 8000)]) else {
        return;
    };
    let user = User::connected(&p);
    let mut web = intercept_with_handler(&user, &p, "web", 9090, 8080, "web-handler");
    let mut api = intercept_with_handler(&user, &p, "api", 9091, 8000, "api-handler");
    p.wait_for("http://web:8080/", "web-handler", T).unwrap();
    p.wait_for("http://api:8000/", "api-handler", T).unwrap();
    let st = user.tp(&["status"]).ok();
    assert_eq!(kv(&st.stdout, "Intercepts"), "2 total", "{}", st.stdout);

    // `leave` ends one intercept and stops its handler; the other keeps routing.
    let r = user.tp(&["leave", "api"]).ok();
    assert_eq!(r.stdout, "");
    wait_exit(&mut api, T);
    p.wait_for("http://api:8000/", "api", T).unwrap();
    assert_eq!(p.get("http://web:8080/").unwrap(), "web-handler");
    assert!(docker(&["ps", "-q", "--filter", "name=intercept-api-9091"])
        .unwrap()
        .is_empty());

    // `quit` (without -s) stops this connection's handlers too.
    let q = user.tp(&["quit"]).ok();
    assert_eq!(q.stdout.trim(), "Disconnected");
    wait_exit(&mut web, T);
    p.wait_for("http://web:8080/", "web", T).unwrap();
    user.quit_clean("after quit -s");
}

#[test]
fn ctrl_c_ends_the_intercept() {
    let Some(p) = Project::up_if_engine(&[("web", 8080)]) else {
        return;
    };
    let user = User::connected(&p);
    let mut child = intercept_web(&user, &p);
    // SAFETY: kill(2) takes plain integers; the pid is our own child.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    wait_exit(&mut child, T);
    p.wait_for("http://web:8080/", "web", T).unwrap();
    let l = user.tp(&["list", "-n", &p.name, "-i"]).ok();
    assert!(
        l.stdout.starts_with("No Workloads"),
        "intercept must be gone: {}",
        l.stdout
    );
    assert!(
        docker(&["ps", "-aq", "--filter", "name=intercept-web-9090"])
            .unwrap()
            .is_empty()
    );
    user.quit_clean("after quit -s");
}

#[test]
fn crashed_agent_leaves_no_netfilter_rules() {
    let Some(p) = Project::up_if_engine(&[("web", 8080)]) else {
        return;
    };
    let user = User::connected(&p);
    let mut child = intercept_web(&user, &p);
    let agent = docker(&["ps", "-q", "--filter", "label=telepresence.io/role=agent"]).unwrap();
    assert!(!agent.is_empty(), "an agent container runs");
    // The kernel drops the killed agent's owned table; the manager then re-creates the agent
    // (tests/tests/faults.rs), so only the end state is checked here.
    docker(&["kill", "-s", "KILL", &agent]).unwrap();
    docker(&["stop", "-t", "1", "intercept-web-9090"]).unwrap();
    wait_exit(&mut child, T);
    user.tp(&["quit", "-s"]).ok();
    assert!(
        !p.has_agent_table("web").unwrap(),
        "quit -s must clean up after a crashed agent"
    );
    p.wait_for("http://web:8080/", "web", T).unwrap();
    assert_clean("after quit -s");
}

/// Every bad input: one clear line, non-zero exit, nothing left behind.
#[test]
fn bad_input_fails_cleanly() {
    let Some(p) = Project::up_if_engine(&[("web", 8080)]) else {
        return;
    };
    let user = User::new();
    let err_line = |r: &Run| {
        assert_ne!(r.code, 0, "should fail: {r:?}");
        let line = r.stderr.trim().to_string();
        assert!(line.starts_with("telepresence "), "{line}");
        line
    };

    // Engine not running.
    let r = Run::from_output(
        user.command(&["connect", "--cluster-type", "docker", "-n", &p.name])
            .env("DOCKER_HOST", "unix:///tmp/tp-no-such-engine.sock")
            .output()
            .unwrap(),
    );
    assert!(err_line(&r).contains("is it running?"), "{r:?}");
    // Unknown namespace: nothing created.
    let r = user.tp(&[
        "connect",
        "--cluster-type",
        "docker",
        "-n",
        "no-such-project-xyz",
    ]);
    assert!(
        err_line(&r).contains("namespace \"no-such-project-xyz\" not found"),
        "{r:?}"
    );
    assert_clean("after connect to an unknown namespace");
    // Not connected.
    let r = user.tp(&["list"]);
    assert!(err_line(&r).contains("Not connected"), "{r:?}");

    user.connect(&p);
    let baseline = leftovers();
    // Already connected elsewhere under the same name.
    let r = user.tp(&[
        "connect",
        "--cluster-type",
        "docker",
        "-n",
        "default",
        "--name",
        &format!("docker-{}-cn", p.name),
    ]);
    assert!(
        err_line(&r).contains("already connected to namespace"),
        "{r:?}"
    );
    // Unknown workload.
    let r = user.intercept(&p, "nope", &["--port", "9090:8080"]);
    assert!(
        err_line(&r).contains("workload \"nope\" not found"),
        "{r:?}"
    );
    // A port the workload doesn't expose.
    let r = user.intercept(&p, "web", &["--port", "9090:9999"]);
    assert!(err_line(&r).contains("does not expose port 9999"), "{r:?}");
    // Handler image missing.
    let r = user.intercept(
        &p,
        "web",
        &[
            "--port",
            "9090:8080",
            "--docker-run",
            "--",
            "tp-no-such-image:dev",
        ],
    );
    assert!(err_line(&r).contains("tp-no-such-image:dev"), "{r:?}");
    assert!(r.stderr.contains("docker build"), "{r:?}");
    // Leave of an unknown intercept.
    let r = user.tp(&["leave", "ghost"]);
    assert!(
        err_line(&r).contains("Intercept named \"ghost\" not found"),
        "{r:?}"
    );
    // Bad --port syntax.
    let r = user.intercept(&p, "web", &["--port", "x:8080"]);
    assert!(err_line(&r).contains("invalid local port"), "{r:?}");
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert_eq!(
        l.stdout.trim(),
        "caller: ready to intercept (traffic-agent not yet installed)\nweb: ready to intercept (traffic-agent not yet installed)",
        "failed commands installed nothing"
    );
    assert_eq!(leftovers(), baseline, "failed commands created nothing");

    // Already intercepted: a second intercept of the same port fails and leaves the first alone.
    let ok = user.intercept(&p, "web", &["--port", "9090:8080"]).ok();
    assert!(
        ok.stdout.contains("State                  : ACTIVE"),
        "{}",
        ok.stdout
    );
    let r = user.intercept(&p, "web2", &["-w", "web", "--port", "9091:8080"]);
    assert!(err_line(&r).contains("already intercepted"), "{r:?}");
    // The local port is this client's too: a second intercept can't deliver to it.
    let r = user.intercept(&p, "web3", &["-w", "web", "--port", "9090:8080"]);
    assert!(
        err_line(&r).contains("local port 9090 is already used by intercept \"web\""),
        "{r:?}"
    );
    let r = user.intercept(&p, "web", &["--port", "9092:8080"]);
    assert!(err_line(&r).contains("already exists"), "{r:?}");
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert!(l.stdout.contains("Intercept name: web\n"), "{}", l.stdout);
    user.tp(&["leave", "web"]).ok();
    user.quit_clean("after quit -s");
}

#[test]
fn json_output() {
    let Some(p) = Project::up_if_engine(&[("web", 8080)]) else {
        return;
    };
    let user = User::new();
    let c = user.connect_with(&p, &["--output", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&c.stdout).unwrap();
    assert_eq!(v["cmd"], "connect");
    assert!(v["stdout"]
        .as_str()
        .unwrap()
        .contains("Connected to context docker"));
    let l = user.tp(&["list", "-n", &p.name, "--output", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&l.stdout).unwrap();
    // `caller` declares no port and is a workload too; `web` comes second (sorted by name).
    assert_eq!(v[0]["name"], "caller");
    assert_eq!(v[1]["name"], "web");
    assert_eq!(v[1]["ports"][0]["port"], 8080);
    let r = user.tp(&["leave", "ghost", "--output", "json"]);
    assert_ne!(r.code, 0);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["err"], "Intercept named \"ghost\" not found");
    user.quit_clean("after quit -s");
}

#[test]
fn connect_builds_its_image_when_missing() {
    if !engine_available() {
        return;
    }
    let (_, tp) = images();
    let p = Project::up(&[("web", 8080)]).unwrap();
    docker(&["rmi", tp]).unwrap();
    let user = User::new();
    let c = user.connect(&p);
    assert!(
        c.stderr.contains(&format!("Building image {tp}")),
        "{}",
        c.stderr
    );
    assert!(
        c.stderr.contains(&format!("Built image {tp}")),
        "{}",
        c.stderr
    );
    let labels = docker(&[
        "image",
        "inspect",
        tp,
        "--format",
        "{{json .Config.Labels}}",
    ])
    .unwrap();
    assert!(
        labels.contains("\"telepresence.io/managed-by\":\"telepresence\""),
        "{labels}"
    );
    // Present now: the next connect does not build.
    user.tp(&["quit"]).ok();
    let c = user.connect(&p);
    assert!(!c.stderr.contains("Building image"), "{}", c.stderr);
    user.quit_clean("after quit -s");
}

#[test]
fn dead_client_lease_expires_and_restores_the_path() {
    let Some(p) = Project::up_if_engine(&[("web", 8080)]) else {
        return;
    };
    let user = User::connected(&p);
    let name = format!("docker-{}-cn", p.name);
    let mut child = intercept_web(&user, &p);
    // The daemon dies without a word: its session ends with its connection (or at the latest
    // when its lease runs out) and the intercept with it.
    docker(&["kill", &format!("tp-{name}")]).unwrap();
    p.wait_for("http://web:8080/", "web", Duration::from_secs(45))
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    user.quit_clean("after quit -s");
}

/// Garbage on every socket we publish (daemon gRPC, manager gRPC and tunnel) is refused
/// without harm: the connection keeps working and an intercept still routes.
#[test]
fn garbage_on_sockets_is_harmless() {
    if !engine_available() {
        return;
    }
    use std::io::{Read, Write};
    let p = Project::up(&[("web", 8080)]).unwrap();
    let user = User::connected(&p);
    let name = format!("docker-{}-cn", p.name);
    let port_of = |c: &str, port: &str| {
        let s = docker(&["port", c, port]).unwrap();
        s.lines().next().unwrap().to_string()
    };
    // The manager is reached on the bridge network, as daemons reach it.
    let manager_ip = bridge_ip(&cli::connect::manager_container(&p.name)).unwrap();
    let targets = [
        port_of(&format!("tp-{name}"), "7777/tcp"),
        format!("{manager_ip}:8081"),
        format!("{manager_ip}:8082"),
    ];
    let junk: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"TPT1\x01\xff\xff".to_vec(),
        b"TPT1\x09\x00\x02{}".to_vec(),
        b"TPT1\x02\x00\x05{bad".to_vec(),
        (0..4096u32).map(|i| (i * 31 % 256) as u8).collect(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x08\x00\x00\x00\x00\x00garbage".to_vec(),
    ];
    for addr in &targets {
        for j in &junk {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.write_all(j);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink); // the peer closes (or answers an error) in time
        }
    }
    let st = user.tp(&["status"]).ok();
    assert!(
        st.stdout.contains("Traffic Manager: Connected"),
        "{}",
        st.stdout
    );
    let mut child = intercept_web(&user, &p);
    docker(&["stop", "-t", "1", "intercept-web-9090"]).unwrap();
    wait_exit(&mut child, T);
    user.quit_clean("after quit -s");
}

#[test]
fn uninstall_removes_the_agent_and_its_redirect() {
    let Some(p) = Project::up_if_engine(&[("web", 8080)]) else {
        return;
    };
    let user = User::connected(&p);
    user.intercept(&p, "web", &["--port", "9090:8080"]).ok();
    user.tp(&["leave", "web"]).ok();
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert_eq!(
        l.stdout.trim(),
        "caller: ready to intercept (traffic-agent not yet installed)\nweb: ready to intercept (traffic-agent already installed)"
    );
    assert!(p.has_agent_table("web").unwrap());
    let r = user.tp(&["uninstall", "--agent", "nope"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("workload \"nope\" not found"), "{r:?}");
    user.tp(&["uninstall", "--agent", "web"]).ok();
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert_eq!(
        l.stdout.trim(),
        "caller: ready to intercept (traffic-agent not yet installed)\nweb: ready to intercept (traffic-agent not yet installed)"
    );
    assert!(
        !p.has_agent_table("web").unwrap(),
        "the redirect goes with the agent"
    );
    p.wait_for("http://web:8080/", "web", T).unwrap();
    user.quit_clean("after quit -s");
}

/// A keep-alive HTTP/1.1 connection from this process, for in-flight checks.
struct KeepAlive(std::net::TcpStream);

impl KeepAlive {
    fn open(addr: &str) -> KeepAlive {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        KeepAlive(s)
    }

    /// `GET /` on this connection; the body.
    fn get(&mut self) -> String {
        use std::io::{Read, Write};
        self.0
            .write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            assert_eq!(self.0.read(&mut byte).unwrap(), 1, "connection closed");
            buf.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&buf).to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body).unwrap();
        String::from_utf8_lossy(&body).trim().to_string()
    }
}

/// Connections in flight when an intercept starts keep reaching the app; connections made
/// during the intercept keep reaching the handler after it ends; only new ones switch.
#[test]
fn in_flight_connections_are_not_cut() {
    let Some(p) = Project::up_if_engine(&[("web", 8080)]) else {
        return;
    };
    let user = User::new();
    let ip = p.ip("web").unwrap();
    let addr = format!("{ip}:8080");
    user.connect(&p);
    // The agent is installed by a first intercept; the redirect only affects new connections.
    user.intercept(&p, "web", &["--port", "9090:8080"]).ok();
    user.tp(&["leave", "web"]).ok();
    let mut before = KeepAlive::open(&addr);
    assert_eq!(before.get(), "web");

    // Intercept with a handler of our own in the daemon's network namespace.
    user.intercept(&p, "web", &["--port", "9090:8080"]).ok();
    let (app, _) = images();
    let handler = format!("{}-handler", p.name);
    docker(&[
        "run",
        "-d",
        "--rm",
        "--name",
        &handler,
        "--label",
        "telepresence.io/role=test-handler",
        "--network",
        &format!("container:tp-docker-{}-cn", p.name),
        app,
        "serve",
        "--http",
        "9090",
        "--name",
        "handler",
    ])
    .unwrap();
    p.wait_for("http://web:8080/", "handler", T).unwrap();
    assert_eq!(
        before.get(),
        "web",
        "a connection from before the intercept still reaches the app"
    );
    let mut during = KeepAlive::open(&addr);
    assert_eq!(during.get(), "handler");

    user.tp(&["leave", "web"]).ok();
    p.wait_for("http://web:8080/", "web", T).unwrap();
    assert_eq!(
        during.get(),
        "handler",
        "a connection from during the intercept is not cut by leave"
    );
    assert_eq!(before.get(), "web");
    assert_eq!(KeepAlive::open(&addr).get(), "web");
    drop((before, during));
    docker(&["rm", "-f", &handler]).unwrap();
    user.quit_clean("after quit -s");
}
