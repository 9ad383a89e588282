//! End-to-end tests of the engagement kinds beside a single-port intercept, on the real Docker
//! engine and observed from outside as a caller in the project sees them: `replace` (the original
//! stops answering and its background counter stops moving, both resume after `leave` and after
//! `quit -s`), `ingest` (env and a volume file for the handler, no traffic), a multi-port
//! intercept (two ports of one workload to two handler ports), `--to-pod`, `--docker-build`,
//! `loglevel`, machine output, and bad input that leaves nothing behind. Run serially (`--test-threads=1`), like every end-to-end test.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom, one step after another

use std::io::{BufRead, BufReader};
use std::process::{Child, Command};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tests::*;

const T: Duration = Duration::from_secs(30);

/// `web` serves HTTP on 8080 and 8081, has env, a volume with a file, and writes a counter
/// into the `ticks` volume every 100 ms; `watcher` shares that volume so the counter can be read
/// while `web` is paused.
const SERVICES: &str = r#"  web:
    image: @APP@
    command: ["serve", "--http", "8080", "--http", "8081", "--name", "web", "--tick", "/ticks/n"]
    expose: ["8080", "8081"]
    environment:
      GREETING: "hello from web"
    volumes:
      - data:/data
      - ticks:/ticks
  watcher:
    image: @APP@
    command: ["serve", "--http", "8080", "--name", "watcher"]
    volumes:
      - ticks:/ticks
"#;
const VOLUMES: &str = "  data: {}\n  ticks: {}\n";

fn project() -> Project {
    let p = Project::up_with(SERVICES, VOLUMES).unwrap();
    let web = p.container("web").unwrap();
    let f = std::env::temp_dir().join(format!("{}-hello.txt", p.name));
    std::fs::write(&f, "hello from the workload volume").unwrap();
    docker(&["cp", f.to_str().unwrap(), &format!("{web}:/data/hello.txt")]).unwrap();
    let _ = std::fs::remove_file(f);
    p.wait_for("http://web:8080/", "web", T).unwrap();
    p
}

/// The counter `web` writes (read through `watcher`).
fn ticks(p: &Project) -> u64 {
    p.get("http://watcher:8080/file/ticks/n")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether the counter moves within a second.
fn ticking(p: &Project) -> bool {
    let a = ticks(p);
    std::thread::sleep(Duration::from_millis(1000));
    ticks(p) > a
}

fn paused(p: &Project) -> bool {
    let web = p.container("web").unwrap();
    docker(&["inspect", "-f", "{{.State.Paused}}", &web]).unwrap() == "true"
}

/// `telepresence <kind> web -n <project> <flags…> --docker-run -- <app> serve <serve…>`.
fn handler_cmd(user: &User, p: &Project, kind: &str, flags: &[&str], serve: &[&str]) -> Command {
    let (app, _) = images();
    let mut args = vec![kind, "web", "-n", &p.name];
    args.extend_from_slice(flags);
    args.extend(["--docker-run", "--", app.as_str(), "serve"]);
    args.extend_from_slice(serve);
    user.command(&args)
}

/// The lines a child prints on stdout and stderr, each with when it came (since `start`);
/// join the handles once the child exited.
type Lines = JoinHandle<Vec<(Duration, String)>>;
fn timed_lines(child: &mut Child, start: Instant) -> (Lines, Lines) {
    fn read(r: impl std::io::Read + Send + 'static, start: Instant) -> Lines {
        std::thread::spawn(move || {
            BufReader::new(r)
                .lines()
                .map_while(Result::ok)
                .map(|l| (start.elapsed(), l))
                .collect()
        })
    }
    (
        read(child.stdout.take().unwrap(), start),
        read(child.stderr.take().unwrap(), start),
    )
}

/// Joins the lines and reports when the first line containing `what` came.
fn report(lines: Lines, what: &str) -> String {
    let lines = lines.join().unwrap();
    if let Some((t, l)) = lines.iter().find(|(_, l)| l.contains(what)) {
        eprintln!("  after {t:?}: {l}");
    }
    lines.into_iter().map(|(_, l)| l + "\n").collect()
}

/// Our containers of this test, by name (handlers and daemons).
fn handlers() -> String {
    docker(&[
        "ps",
        "-a",
        "--format",
        "{{.Names}}",
        "--filter",
        "label=telepresence.io/role=handler",
    ])
    .unwrap()
}

#[test]
fn replace_stops_the_original_and_restores_it() {
    if !engine_available() {
        return;
    }
    let p = project();
    assert!(ticking(&p), "the workload's background work runs");
    let user = User::new();
    user.connect(&p);

    let start = Instant::now();
    let mut child = spawn_piped(handler_cmd(
        &user,
        &p,
        "replace",
        &[],
        &["--http", "8080", "--http", "8081", "--name", "handler"],
    ));
    let (out, err) = timed_lines(&mut child, start);
    p.wait_for("http://web:8080/", "handler", T).unwrap();
    let first_answer = start.elapsed();
    eprintln!("replace: first request answered by the handler after {first_answer:?}");
    // Every port of the container goes to the handler.
    p.wait_for("http://web:8081/", "handler", T).unwrap();
    assert!(paused(&p), "the original container is paused");
    assert!(!ticking(&p), "the original's background work stops");
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert!(
        l.stdout.lines().any(|x| x == "web: replaced"),
        "{}",
        l.stdout
    );
    assert!(l.stdout.contains("       8080 -> 8080 TCP"), "{}", l.stdout);
    assert!(l.stdout.contains("       8081 -> 8081 TCP"), "{}", l.stdout);

    // Leave: the handler stops, the original runs and answers again.
    let r = user.tp(&["leave", "web"]).ok();
    assert_eq!(r.stdout, "");
    wait_exit(&mut child, T);
    let out = report(out, "Using");
    let err = report(err, "Remote volumes ready");
    assert!(out.contains("Using ComposeService web"), "{out}\n{err}");
    assert!(out.contains("\n       8080 -> 8080 TCP\n"), "{out}");
    assert!(out.contains("\n       8081 -> 8081 TCP\n"), "{out}");
    p.wait_for("http://web:8080/", "web", T).unwrap();
    assert!(!paused(&p));
    assert!(ticking(&p), "the background work resumes after leave");

    // Again without remote volumes (their sync is not part of replacing), ended by `quit -s`:
    // the original is restored too.
    let start = Instant::now();
    let mut child = spawn_piped(handler_cmd(
        &user,
        &p,
        "replace",
        &["--mount", "false"],
        &["--http", "8080", "--http", "8081", "--name", "handler2"],
    ));
    let (out, err) = timed_lines(&mut child, start);
    p.wait_for("http://web:8080/", "handler2", T).unwrap();
    eprintln!(
        "replace --mount false: first request answered by the handler after {:?}",
        start.elapsed()
    );
    assert!(paused(&p));
    user.tp(&["quit", "-s"]).ok();
    wait_exit(&mut child, T);
    report(out, "Using");
    report(err, "~");
    assert!(!paused(&p), "quit -s unpauses a replaced workload");
    p.wait_for("http://web:8080/", "web", T).unwrap();
    assert!(ticking(&p));
    assert_clean("after quit -s");
}

#[test]
fn ingest_gives_env_and_volumes_but_no_traffic() {
    if !engine_available() {
        return;
    }
    let p = project();
    let user = User::new();
    user.connect(&p);
    let env_file = user.home.join("web.env");
    let mut child = spawn_piped(handler_cmd(
        &user,
        &p,
        "ingest",
        &[
            "-e",
            env_file.to_str().unwrap(),
            "--docker-mount",
            "/remote",
        ],
        &["--http", "9099", "--name", "ingester"],
    ));
    // The handler reads the workload's env and a file of its volume.
    let get = |path: &str| {
        docker(&[
            "exec",
            "intercept-web-0",
            "/tp-testapp",
            "get",
            &format!("http://127.0.0.1:9099{path}"),
        ])
    };
    eventually("the ingest handler answers", T, || get("/").is_ok());
    assert_eq!(get("/env/GREETING").unwrap(), "hello from web");
    eventually("the volume is synced", T, || {
        get("/file/remote/data/hello.txt").is_ok_and(|b| b == "hello from the workload volume")
    });
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(env.contains("GREETING=hello from web"), "{env}");
    // No traffic: the original answers, runs and is not paused.
    assert_eq!(p.get("http://web:8080/").unwrap(), "web");
    assert!(ticking(&p) && !paused(&p));
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert!(
        l.stdout.lines().any(|x| x == "web: ingested"),
        "{}",
        l.stdout
    );
    assert!(l.stdout.contains("Container     : "), "{}", l.stdout);

    user.tp(&["leave", "web"]).ok();
    wait_exit(&mut child, T);
    assert!(handlers().is_empty(), "{}", handlers());
    user.tp(&["quit", "-s"]).ok();
    assert_clean("after quit -s");
}

#[test]
fn multi_port_intercept_routes_each_pair() {
    if !engine_available() {
        return;
    }
    let p = project();
    let user = User::new();
    user.connect(&p);
    let mut child = spawn_piped(handler_cmd(
        &user,
        &p,
        "intercept",
        &["--port", "9090:8080", "--port", "9091:8081"],
        &["--http", "9090", "--name", "first"],
    ));
    p.wait_for("http://web:8080/", "first", T).unwrap();
    // A second server in the handler's network namespace on the second local port.
    docker(&[
        "exec",
        "-d",
        "intercept-web-9090",
        "/tp-testapp",
        "serve",
        "--http",
        "9091",
        "--name",
        "second",
    ])
    .unwrap();
    p.wait_for("http://web:8081/", "second", T).unwrap();
    assert_eq!(p.get("http://web:8080/").unwrap(), "first");
    assert!(ticking(&p), "an intercept leaves the original running");
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert!(
        l.stdout.lines().any(|x| x == "web: intercepted"),
        "{}",
        l.stdout
    );
    assert!(l.stdout.contains("       8080 -> 9090 TCP"), "{}", l.stdout);
    assert!(l.stdout.contains("       8081 -> 9091 TCP"), "{}", l.stdout);

    user.tp(&["leave", "web"]).ok();
    wait_exit(&mut child, T);
    p.wait_for("http://web:8080/", "web", T).unwrap();
    p.wait_for("http://web:8081/", "web", T).unwrap();
    user.tp(&["quit", "-s"]).ok();
    assert_clean("after quit -s");
}

#[test]
fn bad_engagements_leave_nothing_behind() {
    if !engine_available() {
        return;
    }
    let p = project();
    let user = User::new();
    user.connect(&p);
    let one_line = |r: &Run| {
        assert_ne!(r.code, 0, "{r:?}");
        assert_eq!(r.stderr.trim().lines().count(), 1, "{r:?}");
        r.stderr.clone()
    };

    // A port the workload does not expose.
    let r = user.tp(&["intercept", "web", "-n", &p.name, "-p", "9090:7777"]);
    let e = one_line(&r);
    assert!(e.contains("does not expose port 7777"), "{e}");
    let r = user.tp(&["replace", "web", "-n", &p.name, "-p", "9090:7777"]);
    let e = one_line(&r);
    assert!(e.contains("does not expose port 7777"), "{e}");
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert!(!l.stdout.contains("intercepted"), "{}", l.stdout);

    // A replace of a workload someone else intercepts, and the other way round.
    let other = User::new();
    other.connect_docker(&p, &["--name", "other"]).ok();
    let mut child = spawn_piped(handler_cmd(
        &other,
        &p,
        "intercept",
        &["--port", "9090:8080"],
        &["--http", "9090", "--name", "theirs"],
    ));
    p.wait_for("http://web:8080/", "theirs", T).unwrap();
    let r = user.tp(&["replace", "web", "-n", &p.name]);
    let e = one_line(&r);
    assert!(e.contains("already intercepted by"), "{e}");
    assert!(e.contains("leave that one first"), "{e}");
    assert!(!paused(&p));
    assert_eq!(p.get("http://web:8080/").unwrap(), "theirs");
    let r = user.tp(&["intercept", "web", "-n", &p.name, "--replace"]);
    one_line(&r);
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert!(!l.stdout.contains("web: replaced"), "{}", l.stdout);
    other.tp(&["leave", "web"]).ok();
    wait_exit(&mut child, T);

    // A conflicting engagement of one's own: a replace blocks a second intercept.
    user.tp(&["replace", "web", "-n", &p.name]).ok();
    let r = user.tp(&[
        "intercept",
        "mine",
        "-w",
        "web",
        "-n",
        &p.name,
        "-p",
        "9092:8081",
    ]);
    let e = one_line(&r);
    assert!(e.contains("already replaced"), "{e}");
    let st = user.tp(&["status"]).ok();
    assert_eq!(kv(&st.stdout, "Intercepts"), "1 total", "{}", st.stdout);
    user.tp(&["leave", "web"]).ok();
    p.wait_for("http://web:8080/", "web", T).unwrap();
    assert!(!paused(&p));
    assert!(handlers().is_empty(), "{}", handlers());
    drop(other);
    user.tp(&["quit", "-s"]).ok();
    assert_clean("after quit -s");
}

/// A `FROM scratch` build context holding our test app, with `dockerfile` as its Dockerfile.
fn build_context(dir: &std::path::Path, dockerfile: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(testapp_bin(), dir.join("tp-testapp")).unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    dir.to_str().unwrap().to_string()
}

/// The logs of our one container with role `role` (daemon, traffic-manager, agent).
fn role_logs(role: &str) -> String {
    let name = docker(&[
        "ps",
        "--format",
        "{{.Names}}",
        "--filter",
        &format!("label=telepresence.io/role={role}"),
    ])
    .unwrap();
    assert_eq!(name.lines().count(), 1, "one {role} container: {name:?}");
    let out = Command::new("docker")
        .args(["logs", name.trim()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// `--to-pod` (TCP and UDP to a sidecar that listens only on the workload's localhost, refused
/// cleanly on a port nobody serves), `--docker-build` of a `FROM scratch` context whose
/// container answers the intercepted traffic (and a failing build that leaves nothing),
/// `loglevel debug -d 2s` in the daemon's, manager's and agent's logs, and the kind, ports and
/// to-pod ports in `list`/`status --output json`.
#[test]
fn to_pod_docker_build_loglevel_and_json() {
    if !engine_available() {
        return;
    }
    let p = project();
    let web = p.container("web").unwrap();
    sidecar_on_localhost(&web, &["--http", "7070", "--udp", "7071"]).unwrap();
    eventually("the sidecar listens on web's localhost", T, || {
        docker(&["exec", &web, "/tp-testapp", "get", "http://127.0.0.1:7070/"])
            .is_ok_and(|b| b == "sidecar")
    });
    assert!(
        p.get("http://web:7070/").is_err(),
        "the sidecar is reachable on web's localhost only"
    );
    let user = User::new();
    user.connect(&p);

    // A --to-pod port nothing listens on: refused before anything runs, nothing left.
    let r = user.tp(&[
        "intercept",
        "web",
        "-n",
        &p.name,
        "-p",
        "9090:8080",
        "--to-pod",
        "7070",
        "--to-pod",
        "7079/UDP",
    ]);
    assert_ne!(r.code, 0, "{r:?}");
    assert_eq!(r.stderr.trim().lines().count(), 1, "{r:?}");
    assert!(
        r.stderr.contains("nothing listens on port 7079/UDP"),
        "{}",
        r.stderr
    );
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert!(
        l.stdout
            .contains("web: ready to intercept (traffic-agent not yet installed)"),
        "{}",
        l.stdout
    );
    assert!(!p.has_agent_table("web").unwrap());

    // A build that fails: the build's error, one line of ours, nothing engaged or left.
    let ctx = user.home.join("ctx");
    let bad = build_context(
        &user.home.join("bad"),
        "FROM scratch\nCOPY no-such-file /x\n",
    );
    let r = user.tp(&[
        "intercept",
        "web",
        "-n",
        &p.name,
        "-p",
        "9090:8080",
        "--docker-build",
        &bad,
        "--",
        "IMAGE",
    ]);
    assert_ne!(r.code, 0, "{r:?}");
    let last = r
        .stderr
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(
        last.contains("the handler image did not build"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("no-such-file"),
        "the build's error: {}",
        r.stderr
    );
    assert!(!user
        .tp(&["list", "-n", &p.name])
        .ok()
        .stdout
        .contains("intercepted"));
    assert!(handlers().is_empty(), "{}", handlers());

    // Build the handler, with pod-local ports.
    let ctx = build_context(
        &ctx,
        "FROM scratch\nCOPY tp-testapp /tp-testapp\nENTRYPOINT [\"/tp-testapp\"]\n",
    );
    let mut child = spawn_piped(user.command(&[
        "intercept",
        "web",
        "-n",
        &p.name,
        "-p",
        "9090:8080",
        "--to-pod",
        "7070",
        "--to-pod",
        "7071/UDP",
        "--docker-build",
        &ctx,
        "--",
        "IMAGE",
        "serve",
        "--http",
        "9090",
        "--name",
        "built",
    ]));
    p.wait_for("http://web:8080/", "built", T).unwrap();
    let in_handler = |args: &[&str]| {
        let mut a = vec!["exec", "intercept-web-9090", "/tp-testapp"];
        a.extend_from_slice(args);
        docker(&a)
    };
    assert_eq!(
        in_handler(&["get", "http://127.0.0.1:7070/"]).unwrap(),
        "sidecar"
    );
    assert_eq!(
        in_handler(&["udp-send", "127.0.0.1:7071", "hi"]).unwrap(),
        "sidecar:hi"
    );
    let l = user.tp(&["list", "-n", &p.name]).ok();
    assert!(l.stdout.contains("7070/TCP, 7071/UDP"), "{}", l.stdout);

    // Machine output: kind, port pairs and to-pod ports.
    let j = user.tp(&["list", "-n", &p.name, "--output", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    let w = v
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "web")
        .unwrap();
    let i = &w["intercepts"][0];
    assert_eq!(i["kind"], "intercepted", "{i}");
    assert_eq!(i["ports"][0]["local"], 9090, "{i}");
    assert_eq!(i["ports"][0]["remote"], 8080, "{i}");
    assert_eq!(i["ports"][0]["protocol"], "TCP", "{i}");
    assert_eq!(
        i["to_pod"],
        serde_json::json!([{"port": 7070, "protocol": "TCP"}, {"port": 7071, "protocol": "UDP"}])
    );
    let y = user.tp(&["status", "--output", "yaml"]).ok();
    assert!(y.stdout.contains("kind: intercepted"), "{}", y.stdout);
    let s = user.tp(&["status", "--output", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&s.stdout).unwrap();
    assert_eq!(v["daemons"][0]["intercepts"][0]["ports"][0]["local"], 9090);

    // loglevel: debug for 2 s in the daemon, the manager and the agent, then back.
    use protocol::loglevel::{DEBUG_AFTER_REVERT_LINE, DEBUG_ON_LINE, REVERTED_LINE};
    let roles = ["daemon", "traffic-manager", "agent"];
    for role in roles {
        assert!(!role_logs(role).contains(DEBUG_ON_LINE), "{role}");
    }
    user.tp(&["loglevel", "debug", "-d", "2s"]).ok();
    for role in roles {
        eventually(&format!("the {role} logs at debug level"), T, || {
            role_logs(role).contains(DEBUG_ON_LINE)
        });
    }
    for role in roles {
        eventually(&format!("the {role} goes back to info"), T, || {
            role_logs(role).contains(REVERTED_LINE)
        });
        assert!(!role_logs(role).contains(DEBUG_AFTER_REVERT_LINE), "{role}");
    }

    user.tp(&["leave", "web"]).ok();
    wait_exit(&mut child, T);
    p.wait_for("http://web:8080/", "web", T).unwrap();
    // The --to-pod ports closed with the engagement.
    let daemon = docker(&[
        "ps",
        "--format",
        "{{.Names}}",
        "--filter",
        "label=telepresence.io/role=daemon",
    ])
    .unwrap();
    let (app, _) = images();
    let r = docker(&[
        "run",
        "--rm",
        "--network",
        &format!("container:{daemon}"),
        app,
        "get",
        "http://127.0.0.1:7070/",
        "--timeout",
        "3",
    ]);
    assert!(r.is_err(), "{r:?}");
    user.tp(&["quit", "-s"]).ok();
    assert_clean("after quit -s");
}
