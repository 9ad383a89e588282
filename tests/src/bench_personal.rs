//! Benchmark section of personal intercepts (issue 6): on a port with a personal intercept, the
//! added p50 latency of a request that the filter sends to the app and of one that it sends to
//! the handler (both against the direct path, measured in the same run before and after; the
//! better direct figure is the baseline), and requests/s through the filtered port with 100
//! keep-alive clients.

use super::{exec_json, f, Row};
use anyhow::Result;
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::Duration;
use tp_tests::*;

/// Requests of the 100-client throughput runs.
const RPS_REQUESTS: &str = "50000";

fn bench(p: &Project, header: &str, requests: &str, concurrency: &str) -> Result<Value> {
    exec_json(
        p,
        &[
            "bench-headers",
            "http://web:8080/",
            "-H",
            header,
            "--requests",
            requests,
            "--concurrency",
            concurrency,
        ],
    )
}

pub fn personal(requests: u32) -> Result<(Vec<Row>, Value)> {
    let p = Project::up(&[("web", 8080)])?;
    let user = User::new();
    let t = Duration::from_secs(30);
    p.wait_for("http://web:8080/", "web", t)?;
    let reqs = requests.to_string();
    let (other, mine) = ("x-dev=someone-else", "x-dev=me");

    let direct = bench(&p, other, &reqs, "1")?;
    let direct_rps = bench(&p, other, RPS_REQUESTS, "100")?;

    user.tp(&[
        "connect",
        "--docker",
        "--cluster-type",
        "docker",
        "-n",
        &p.name,
    ])
    .ok();
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
    let start = std::time::Instant::now();
    let caller = p.container("caller")?;
    let routed = || {
        std::process::Command::new("docker")
            .args([
                "exec",
                &caller,
                "/tp-testapp",
                "get",
                "http://web:8080/",
                "-H",
                mine,
            ])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "handler")
    };
    while !routed() {
        anyhow::ensure!(start.elapsed() < t, "the personal intercept did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let to_app = bench(&p, other, &reqs, "1")?;
    let to_handler = bench(&p, mine, &reqs, "1")?;
    let app_rps = bench(&p, other, RPS_REQUESTS, "100")?;
    let handler_rps = bench(&p, mine, RPS_REQUESTS, "100")?;

    docker(&["stop", "-t", "1", "intercept-web-9090"])?;
    child.wait()?;
    // The agent stays until quit: its connection-level (zero-copy) path with no intercept is
    // the share of the agent hop itself in the figures above.
    let start = std::time::Instant::now();
    while routed() {
        anyhow::ensure!(start.elapsed() < t, "the personal intercept did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
    let agent_hop = bench(&p, other, &reqs, "1")?;
    user.tp(&["quit", "-s"]).ok();
    // The direct path again (the agent is gone): the better of the two runs is the baseline,
    // so noise never flatters the filtered path.
    p.wait_for("http://web:8080/", "web", t)?;
    let direct_after = bench(&p, other, &reqs, "1")?;
    let direct_rps_after = bench(&p, other, RPS_REQUESTS, "100")?;
    let direct = if f(&direct_after, "p50_us") < f(&direct, "p50_us") {
        direct_after
    } else {
        direct
    };
    let direct_rps = if f(&direct_rps_after, "requests_per_s") > f(&direct_rps, "requests_per_s") {
        direct_rps_after
    } else {
        direct_rps
    };

    let added_app = f(&to_app, "p50_us") - f(&direct, "p50_us");
    let added_handler = f(&to_handler, "p50_us") - f(&direct, "p50_us");
    let rows = vec![
        (
            "personal: filtered -> app p50".into(),
            format!("{:.0} us", f(&to_app, "p50_us")),
            format!("{:.0} us", f(&direct, "p50_us")),
            "added <= 50 us",
            added_app <= 50.0,
        ),
        (
            "agent hop, no intercept (splice) p50".into(),
            format!("{:.0} us", f(&agent_hop, "p50_us")),
            format!("{:.0} us", f(&direct, "p50_us")),
            "(reported)",
            true,
        ),
        (
            "personal: filtered -> handler p50".into(),
            format!("{:.0} us", f(&to_handler, "p50_us")),
            format!("{:.0} us", f(&direct, "p50_us")),
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
        "direct": direct,
        "filtered_to_app": to_app,
        "filtered_to_handler": to_handler,
        "agent_hop_no_intercept": agent_hop,
        "added_p50_us": {"to_app": added_app, "to_handler": added_handler, "agent_hop": f(&agent_hop, "p50_us") - f(&direct, "p50_us")},
        "requests_per_s_100_clients": {"direct": direct_rps, "to_app": app_rps, "to_handler": handler_rps},
    });
    Ok((rows, doc))
}
