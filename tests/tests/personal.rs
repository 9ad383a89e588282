//! End-to-end tests of personal intercepts on the real Docker engine: two developers
//! (two CLI users, two daemon containers) intercept one workload with different HTTP filters;
//! a caller in the project network sends requests over one keep-alive connection (HTTP/1.1 and
//! HTTP/2, gRPC-style) and each reaches the right place; path filters; one developer leaves
//! and only their traffic returns to the app; malformed, oversized, pipelined and slow
//! requests don't break the others; team mode. Run serially (`--test-threads=1`).
#![allow(clippy::too_many_lines)] // scenarios read top to bottom, one step after another

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use tests::*;

const T: Duration = Duration::from_secs(30);
const ID_HEADER: &str = "x-telepresence-intercept-id";

fn err_line(r: &Run) -> String {
    assert_ne!(r.code, 0, "should fail: {r:?}");
    r.stderr.trim().to_string()
}

/// Runs the test app in the project's caller container; its stdout, or the error.
fn caller(p: &Project, args: &[&str]) -> Result<String, String> {
    let c = p.container("caller").map_err(|e| e.to_string())?;
    let mut argv = vec!["exec", c.as_str(), "/tp-testapp"];
    argv.extend_from_slice(args);
    let out = std::process::Command::new("docker")
        .args(&argv)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Requests over ONE connection to web:8080; `<status> <body>` per request.
fn seq(p: &Project, h2: bool, post: Option<&str>, reqs: &[String]) -> Vec<String> {
    let mut args = vec!["seq", "http://web:8080/"];
    if h2 {
        args.push("--h2");
    }
    if let Some(b) = post {
        args.extend(["--post", b]);
    }
    for r in reqs {
        args.extend(["--req", r.as_str()]);
    }
    caller(p, &args)
        .unwrap_or_else(|e| panic!("seq {reqs:?}: {e}"))
        .lines()
        .map(str::to_string)
        .collect()
}

/// Polls one request until it answers `want`.
fn wait_req(p: &Project, req: &str, want: &str) {
    wait_until(p, req, |b| b == want);
}

/// Polls one request until its answer satisfies `ok`.
fn wait_until(p: &Project, req: &str, ok: impl Fn(&str) -> bool) {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < T {
        match caller(p, &["seq", "http://web:8080/", "--req", req]) {
            Ok(b) if ok(&b) => return,
            Ok(b) => last = b,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{req:?} did not answer as expected within {T:?}; last: {last}");
}

/// This user's own intercept id (from `status --output json`), once it exists.
fn own_intercept_id(user: &User) -> String {
    let start = Instant::now();
    loop {
        let st = user.tp(&["status", "--output", "json"]).ok();
        let v: serde_json::Value = serde_json::from_str(&st.stdout).expect("status json");
        if let Some(id) = v["daemons"][0]["intercepts"][0]["id"].as_str() {
            return id.to_string();
        }
        assert!(start.elapsed() < T, "no intercept in {}", st.stdout);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn connect(user: &User, p: &Project, name: &str, extra: &[&str]) -> Run {
    let mut args = vec!["--name", name];
    args.extend_from_slice(extra);
    user.connect_docker(p, &args)
}

/// Stops a handler container and returns the intercept command's stdout.
fn stop_handler(container: &str, child: Child) -> String {
    docker(&["stop", "-t", "1", container]).unwrap();
    let o = child.wait_with_output().expect("intercept output");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.code().is_some(),
        "intercept was killed: {out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[test]
fn two_developers_share_one_workload_by_http_filters() {
    let Some(p) = Project::up_if_engine(&[("web", 8080)]) else {
        return;
    };
    let (alice, bob) = (User::new(), User::new());
    p.wait_for("http://web:8080/", "web", T).unwrap();
    connect(&alice, &p, "alice", &[]).ok();
    // The manager runs without team mode: asking for it now is refused, nothing changes.
    let r = connect(&bob, &p, "bob", &["--team-mode"]);
    assert!(
        err_line(&r).contains("already runs without team mode"),
        "{r:?}"
    );
    connect(&bob, &p, "bob", &[]).ok();

    // Alice: the generated header. Bob: his own header. Both call their intercept "web".
    let a_child = spawn_piped(alice.intercept_cmd(
        &p,
        "web",
        9090,
        8080,
        &["--http-header", "auto"],
        &[],
        "alice",
    ));
    let a_id = own_intercept_id(&alice);
    assert!(a_id.ends_with(":web"), "{a_id}");
    let a = format!("{ID_HEADER}={a_id}");
    wait_req(&p, &format!("/ {a}"), "200 alice");
    let b_child = spawn_piped(bob.intercept_cmd(
        &p,
        "web",
        9091,
        8080,
        &["--http-header", "X-Dev=bob"],
        &[],
        "bob",
    ));
    wait_req(&p, "/ x-dev=bob", "200 bob");

    // One keep-alive connection alternating A / B / none, over HTTP/1.1 and HTTP/2.
    let reqs = [
        format!("/ {a}"),
        "/ x-dev=bob".to_string(),
        "/".to_string(),
        "/ X-DEV=bob".to_string(),
        "/ x-dev=carol".to_string(),
        format!("/ {a}"),
    ];
    let want = [
        "200 alice",
        "200 bob",
        "200 web",
        "200 bob",
        "200 web",
        "200 alice",
    ];
    assert_eq!(seq(&p, false, None, &reqs), want, "HTTP/1.1");
    assert_eq!(seq(&p, true, None, &reqs), want, "HTTP/2");
    // gRPC-style: POSTs over HTTP/2 with a body and a grpc-status trailer, to the handlers
    let grpc = seq(&p, true, Some("ping"), &reqs[..2]);
    assert_eq!(
        grpc,
        ["200 alice:ping grpc-status=0", "200 bob:ping grpc-status=0"]
    );
    // The handler's TELEPRESENCE_INTERCEPT_ID is the header value.
    assert_eq!(
        seq(
            &p,
            false,
            None,
            &[format!("/env/TELEPRESENCE_INTERCEPT_ID {a}")]
        ),
        [format!("200 {a_id}")]
    );

    // Conflicts: a global intercept cannot join; identical filters cannot either.
    let r = alice.intercept(&p, "g", &["-w", "web", "--port", "9092:8080"]);
    assert!(
        err_line(&r).contains("a global intercept cannot share the port"),
        "{r:?}"
    );
    let r = alice.intercept(
        &p,
        "dup",
        &[
            "-w",
            "web",
            "--port",
            "9093:8080",
            "--http-header",
            "x-dev=bob",
        ],
    );
    assert!(err_line(&r).contains("with the same filters"), "{r:?}");
    let r = alice.intercept(&p, "bad", &["-w", "web", "--http-path-regex", "("]);
    assert!(err_line(&r).contains("invalid --http-path-regex"), "{r:?}");

    // Abuse on the filtered port: each gets its answer and nobody else notices.
    let raw = |data: &str, extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["raw", "http://web:8080/", "--data", data];
        args.extend_from_slice(extra);
        serde_json::from_str(&caller(&p, &args).unwrap()).unwrap()
    };
    let slow = {
        let c = p.container("caller").unwrap();
        std::process::Command::new("docker")
            .args([
                "exec", &c, "/tp-testapp", "raw", "http://web:8080/", "--data",
                "GET / HTTP/1.1\\r\\nHost: web\\r\\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\\r\\n\\r\\n",
                "--chunk", "1", "--delay-ms", "400", "--timeout", "60",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let r = raw("GET / HTTP/1.1\\r\\nBad Header Line\\r\\n\\r\\n", &[]);
    assert!(
        r["received"].as_str().unwrap().starts_with("HTTP/1.1 400"),
        "malformed: {r}"
    );
    let r = raw(
        &format!(
            "GET / HTTP/1.1\\r\\nHost: web\\r\\n{ID_HEADER}: {a_id}\\r\\nX-Pad: {{pad:70000}}\\r\\n\\r\\n"
        ),
        &[],
    );
    assert!(
        r["received"].as_str().unwrap().starts_with("HTTP/1.1 431"),
        "oversized: {r}"
    );
    // Not HTTP (TLS bytes; a request line of another version): spliced to the app untouched,
    // whose own parser answers (the agent's HTTP server would send an empty 400).
    for other in [
        "\\x16\\x03\\x01\\x00\\x05hello\\r\\n\\r\\n",
        "GET / HTTP/2.0\\r\\nHost: web\\r\\n\\r\\n",
    ] {
        let r = raw(other, &[]);
        assert!(
            r["received"]
                .as_str()
                .unwrap()
                .ends_with("malformed request\n"),
            "{other}: {r}"
        );
    }
    let pipelined = format!(
        "GET / HTTP/1.1\\r\\nHost: web\\r\\nx-dev: bob\\r\\n\\r\\nGET / HTTP/1.1\\r\\nHost: web\\r\\n\\r\\nGET / HTTP/1.1\\r\\nHost: web\\r\\n{ID_HEADER}: {a_id}\\r\\nConnection: close\\r\\n\\r\\n"
    );
    let r = raw(&pipelined, &[]);
    let got = r["received"].as_str().unwrap();
    let bodies: Vec<&str> = ["bob\n", "web\n", "alice\n"]
        .into_iter()
        .filter(|b| got.contains(&format!("\r\n\r\n{b}")))
        .collect();
    assert_eq!(bodies.len(), 3, "pipelined: {got}");
    assert!(
        got.find("bob\n") < got.find("web\n") && got.find("web\n") < got.find("alice\n"),
        "answered in order: {got}"
    );
    // While the slow sender dribbles its head, everyone else is served.
    assert_eq!(seq(&p, false, None, &reqs), want, "during slowloris");
    assert_eq!(
        seq(&p, true, None, &reqs),
        want,
        "during slowloris (HTTP/2)"
    );
    let slow = slow.wait_with_output().unwrap();
    let r: serde_json::Value = serde_json::from_slice(&slow.stdout).unwrap();
    assert_eq!(r["closed"], true, "the agent cuts a slow sender: {r}");
    assert!(
        r["sent"].as_u64() < r["total"].as_u64(),
        "cut before the head was complete: {r}"
    );

    // Bob leaves: his traffic returns to the app, Alice's continues.
    let b_out = stop_handler("intercept-web-9091", b_child);
    assert!(
        b_out.contains("Intercepting           : HTTP requests with headers\n"),
        "{b_out}"
    );
    assert!(
        b_out.contains(&format!("\n{}'x-dev: bob'\n", " ".repeat(30))),
        "{b_out}"
    );
    wait_req(&p, "/ x-dev=bob", "200 web");
    assert_eq!(
        seq(
            &p,
            false,
            None,
            &[format!("/ {a}"), "/ x-dev=bob".into(), "/".into()]
        ),
        ["200 alice", "200 web", "200 web"]
    );

    // Bob again, by path: only requests for /env/TELEPRESENCE_* reach his handler.
    let b_child = spawn_piped(bob.intercept_cmd(
        &p,
        "web",
        9091,
        8080,
        &["--http-path-regex", "/env/TELEPRESENCE_.*"],
        &[],
        "bob",
    ));
    wait_until(&p, "/env/TELEPRESENCE_INTERCEPT_ID", |b| {
        b.starts_with("200 ")
    });
    let got = seq(
        &p,
        true,
        None,
        &[
            "/env/TELEPRESENCE_INTERCEPT_ID".into(),
            "/".into(),
            format!("/ {a}"),
            "/x/env/TELEPRESENCE_A".into(),
        ],
    );
    assert!(
        got[0].starts_with("200 ") && got[0].ends_with(":web") && got[0] != format!("200 {a_id}"),
        "{got:?}"
    );
    assert_eq!(&got[1..], ["200 web", "200 alice", "404 not found"]);
    stop_handler("intercept-web-9091", b_child);

    let a_out = stop_handler("intercept-web-9090", a_child);
    assert!(
        a_out.contains(&format!(
            "   Intercepting           : HTTP requests with headers\n{}'{ID_HEADER}: {a_id}'\n",
            " ".repeat(30)
        )),
        "{a_out}"
    );
    wait_req(&p, &format!("/ {a}"), "200 web");
    alice.quit_clean("after quit -s");
}

#[test]
fn team_mode_makes_intercepts_personal_by_default() {
    let Some(p) = Project::up_if_engine(&[("web", 8080)]) else {
        return;
    };
    let user = User::new();
    p.wait_for("http://web:8080/", "web", T).unwrap();
    connect(&user, &p, "team", &["--team-mode"]).ok();
    let child = spawn_piped(user.intercept_cmd(&p, "web", 9090, 8080, &[], &[], "handler"));
    let id = own_intercept_id(&user);
    wait_req(&p, &format!("/ {ID_HEADER}={id}"), "200 handler");
    // everyone else still reaches the app
    assert_eq!(seq(&p, false, None, &["/".into()]), ["200 web"]);
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert!(
        l.stdout.contains(&format!(
            "   Intercepting  : HTTP requests with headers\n{}'{ID_HEADER}: {id}'\n",
            " ".repeat(21)
        )),
        "{}",
        l.stdout
    );
    stop_handler("intercept-web-9090", child);
    // --http-header all: a global intercept even in team mode
    let g = user
        .intercept(&p, "web", &["--port", "9090:8080", "--http-header", "all"])
        .ok();
    assert!(
        g.stdout
            .contains("Intercepting           : all TCP connections"),
        "{}",
        g.stdout
    );
    user.tp(&["leave", "web"]).ok();
    user.quit_clean("after quit -s");
}
