//! Benchmark section of wiretaps: the callers' p50/p99 latency of 1 KiB keep-alive requests on a
//! wiretapped port, with the handler running and with it stopped, against the same port without
//! wiretap (the agent's spliced path, measured after `leave`) and against the app's uncaptured
//! second port (direct). Each phase runs interleaved rounds (direct, then the captured port);
//! each figure is the median of its rounds, so a burst of load on this shared machine hits both
//! alike.

use super::{exec_json, f, Row};
use anyhow::Result;
use serde_json::{json, Value};
use std::time::Duration;
use tests::bench_paths::median;
use tests::*;

/// The app's uncaptured port.
const DIRECT: &str = "http://web:8081/";
const TAPPED: &str = "http://web:8080/";

/// `rounds` rounds of (direct, captured port): the medians of their p50s and p99s.
fn phase(p: &Project, requests: &str, rounds: usize) -> Result<Value> {
    let (mut d50, mut d99, mut c50, mut c99) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let args = |url| {
            [
                "bench-client",
                url,
                "--requests",
                requests,
                "--size",
                "1024",
            ]
        };
        let d = exec_json(p, &args(DIRECT))?;
        let c = exec_json(p, &args(TAPPED))?;
        d50.push(f(&d, "p50_us"));
        d99.push(f(&d, "p99_us"));
        c50.push(f(&c, "p50_us"));
        c99.push(f(&c, "p99_us"));
    }
    Ok(json!({
        "direct": {"p50_us": median(d50), "p99_us": median(d99)},
        "port": {"p50_us": median(c50), "p99_us": median(c99)},
    }))
}

fn us(v: &Value, path: &str, k: &str) -> f64 {
    f(&v[path], k)
}

/// Runs the wiretap benchmark with `requests` requests per phase in `rounds` rounds.
pub fn wiretap(requests: u32, rounds: usize) -> Result<(Vec<Row>, Value)> {
    let rounds = rounds.max(1);
    let p = Project::up_with(
        "  web:\n    image: @APP@\n    command: [\"serve\", \"--http\", \"8080\", \"--http\", \"8081\", \"--name\", \"web\"]\n    expose: [\"8080\"]\n",
        "",
    )?;
    let user = User::new();
    let t = Duration::from_secs(30);
    p.wait_for(TAPPED, "web", t)?;
    let per_round = (requests as usize / rounds).max(100).to_string();
    user.connect_docker(&p, &[]).ok();
    user.tp(&["wiretap", "web", "-n", &p.name, "-p", "9095:8080"])
        .ok();
    let network = kv(&user.tp(&["status"]).ok().stdout, "Container network");
    let (app, _) = images();
    let handler = format!("{}-tap", p.name);
    docker(&[
        "run",
        "-d",
        "--name",
        &handler,
        "--network",
        &network,
        app.as_str(),
        "serve",
        "--http",
        "9095",
        "--name",
        "tap",
    ])?;
    let tapped = phase(&p, &per_round, rounds);
    let _ = docker(&["rm", "-f", &handler]);
    let tapped = tapped?;
    let stopped = phase(&p, &per_round, rounds)?;
    user.tp(&["leave", "web"]).ok();
    let plain = phase(&p, &per_round, rounds)?;
    let l = user.tp(&["list", "-n", &p.name, "--output", "json"]).ok();
    user.tp(&["quit", "-s"]).ok();
    drop(l);

    let base50 = us(&plain, "port", "p50_us");
    let base99 = us(&plain, "port", "p99_us");
    let added50 = us(&tapped, "port", "p50_us") - base50;
    let added99 = us(&tapped, "port", "p99_us") - base99;
    let stopped50 = us(&stopped, "port", "p50_us") - base50;
    let rows = vec![
        (
            "wiretap: 1 KiB keep-alive p50".into(),
            format!("{:.0} us", us(&tapped, "port", "p50_us")),
            format!("{base50:.0} us"),
            "added <= 10 us",
            added50 <= 10.0,
        ),
        (
            "wiretap: 1 KiB keep-alive p99".into(),
            format!("{:.0} us", us(&tapped, "port", "p99_us")),
            format!("{base99:.0} us"),
            "(reported)",
            true,
        ),
        (
            "wiretap, handler stopped: p50".into(),
            format!("{:.0} us", us(&stopped, "port", "p50_us")),
            format!("{base50:.0} us"),
            "added <= 10 us",
            stopped50 <= 10.0,
        ),
        (
            "wiretap, handler stopped: p99".into(),
            format!("{:.0} us", us(&stopped, "port", "p99_us")),
            format!("{base99:.0} us"),
            "(reported)",
            true,
        ),
    ];
    let doc = json!({
        "note": "the 'direct' column is the same port without wiretap (agent present, spliced)",
        "with_wiretap": tapped,
        "handler_stopped": stopped,
        "without_wiretap": plain,
        "added_us": {"p50": added50, "p99": added99, "handler_stopped_p50": stopped50,
            "handler_stopped_p99": us(&stopped, "port", "p99_us") - base99},
    });
    Ok((rows, doc))
}
