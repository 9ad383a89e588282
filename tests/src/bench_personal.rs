//! Benchmark section of personal intercepts: on a port with a personal intercept, the
//! added p50 latency of a request that the filter sends to the app and of one that it sends to
//! the handler, and requests/s through the filtered port with 100 keep-alive clients.
//!
//! The workload serves the same app on a second port that is not a service port (so the agent
//! never captures it): the direct path stays measurable while the intercept runs, and the
//! three paths are measured in interleaved rounds; each figure is the median of its rounds'
//! p50s, so a burst of load on this shared machine hits all three alike. The agent's own hop
//! without any intercept (the zero-copy connection path) is measured too, after the intercept
//! ends, to show what the HTTP routing adds on top of it.

use super::{exec_json, f, Row};
use anyhow::Result;
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::Duration;
use tests::bench_paths::median;
use tests::*;

/// Requests of the 100-client throughput runs.
const RPS_REQUESTS: &str = "50000";
/// The app's uncaptured port.
const DIRECT: &str = "http://web:8081/";
const FILTERED: &str = "http://web:8080/";

fn bench(p: &Project, url: &str, header: &str, requests: &str, clients: &str) -> Result<Value> {
    exec_json(
        p,
        &[
            "bench-headers",
            url,
            "-H",
            header,
            "--requests",
            requests,
            "--concurrency",
            clients,
        ],
    )
}

/// Runs the personal-intercept benchmark: `rounds` interleaved rounds sharing `requests`.
pub fn personal(requests: u32, rounds: usize) -> Result<(Vec<Row>, Value)> {
    let rounds = rounds.max(1);
    let p = Project::up_with(
        "  web:\n    image: @APP@\n    command: [\"serve\", \"--http\", \"8080\", \"--http\", \"8081\", \"--name\", \"web\"]\n    expose: [\"8080\"]\n",
        "",
    )?;
    let user = User::new();
    let t = Duration::from_secs(30);
    p.wait_for(FILTERED, "web", t)?;
    p.wait_for(DIRECT, "web", t)?;
    let per_round = (requests as usize / rounds).max(100).to_string();
    let (other, mine) = ("x-dev=someone-else", "x-dev=me");

    user.connect_docker(&p, &[]).ok();
    let mut child = user
        .intercept_cmd(
            &p,
            "web",
            9090,
            8080,
            &["--http-header", mine],
            &[],
            "handler",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let caller = p.container("caller")?;
    let routed = || {
        std::process::Command::new("docker")
            .args(["exec", &caller, "/tp-testapp", "get", FILTERED, "-H", mine])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "handler")
    };
    let start = std::time::Instant::now();
    while !routed() {
        anyhow::ensure!(start.elapsed() < t, "the personal intercept did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (mut direct, mut to_app, mut to_handler) = (Vec::new(), Vec::new(), Vec::new());
    let mut runs = Vec::new();
    for _ in 0..rounds {
        let d = bench(&p, DIRECT, other, &per_round, "1")?;
        let a = bench(&p, FILTERED, other, &per_round, "1")?;
        let h = bench(&p, FILTERED, mine, &per_round, "1")?;
        direct.push(f(&d, "p50_us"));
        to_app.push(f(&a, "p50_us"));
        to_handler.push(f(&h, "p50_us"));
        runs.push(json!({"direct": d, "to_app": a, "to_handler": h}));
    }
    let direct_rps = bench(&p, DIRECT, other, RPS_REQUESTS, "100")?;
    let app_rps = bench(&p, FILTERED, other, RPS_REQUESTS, "100")?;
    let handler_rps = bench(&p, FILTERED, mine, RPS_REQUESTS, "100")?;

    docker(&["stop", "-t", "1", "intercept-web-9090"])?;
    child.wait()?;
    // The agent stays until quit: its connection-level path with no intercept.
    let start = std::time::Instant::now();
    while routed() {
        anyhow::ensure!(start.elapsed() < t, "the personal intercept did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut hop = Vec::new();
    let mut hop_direct = Vec::new();
    for _ in 0..rounds {
        hop_direct.push(f(&bench(&p, DIRECT, other, &per_round, "1")?, "p50_us"));
        hop.push(f(&bench(&p, FILTERED, other, &per_round, "1")?, "p50_us"));
    }
    user.tp(&["quit", "-s"]).ok();

    let (direct, to_app, to_handler) = (median(direct), median(to_app), median(to_handler));
    let (hop, hop_direct) = (median(hop), median(hop_direct));
    let added_app = to_app - direct;
    let rows = vec![
        (
            "personal: filtered -> app p50".into(),
            format!("{to_app:.0} us"),
            format!("{direct:.0} us"),
            "added <= 50 us",
            added_app <= 50.0,
        ),
        (
            "personal: filtered -> handler p50".into(),
            format!("{to_handler:.0} us"),
            format!("{direct:.0} us"),
            "(reported)",
            true,
        ),
        (
            "agent hop without intercept p50".into(),
            format!("{hop:.0} us"),
            format!("{hop_direct:.0} us"),
            "(reported)",
            true,
        ),
        (
            "personal: req/s, 100 clients -> app".into(),
            format!("{:.0}", f(&app_rps, "requests_per_s")),
            format!("{:.0}", f(&direct_rps, "requests_per_s")),
            "(reported)",
            true,
        ),
        (
            "personal: req/s, 100 clients -> handler".into(),
            format!("{:.0}", f(&handler_rps, "requests_per_s")),
            format!("{:.0}", f(&direct_rps, "requests_per_s")),
            "(reported)",
            true,
        ),
    ];
    let doc = json!({
        "p50_us": {"direct": direct, "to_app": to_app, "to_handler": to_handler},
        "added_p50_us": {"to_app": added_app, "to_handler": to_handler - direct, "agent_hop_without_intercept": hop - hop_direct},
        "rounds": runs,
        "requests_per_s_100_clients": {"direct": direct_rps, "to_app": app_rps, "to_handler": handler_rps},
    });
    Ok((rows, doc))
}
