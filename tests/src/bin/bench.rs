//! The benchmark: the intercept path against the direct path in one run, on this Docker
//! engine. Prints a table and a JSON document with the figures and the targets.
//!
//! Measured: `connect` time with the image present; intercept → first routed request; latency
//! of 1 KiB keep-alive requests (p50/p99) direct vs intercepted; throughput of a 256 MiB
//! download direct vs intercepted.

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tp_tests::*;

#[derive(Parser)]
struct Args {
    /// Requests per latency run.
    #[arg(long, default_value_t = 5000)]
    requests: u32,
    /// Download size in MiB.
    #[arg(long, default_value_t = 256)]
    mib: u64,
}

fn exec_json(p: &Project, args: &[&str]) -> Result<Value> {
    let caller = p.container("caller")?;
    let out = Command::new("docker")
        .args(["exec", &caller, "/tp-testapp"])
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stdout).to_string())
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

fn main() -> Result<()> {
    let a = Args::parse();
    anyhow::ensure!(
        engine_available(),
        "the benchmark needs a running Docker engine"
    );
    let (app, _) = images();
    let p = Project::up(&[("web", 8080)])?;
    let user = User::new();
    let t = Duration::from_secs(30);
    p.wait_for("http://web:8080/", "web", t)?;
    let url = "http://web:8080/";
    let reqs = a.requests.to_string();
    let dl = format!("http://web:8080/bytes/{}", a.mib * 1024 * 1024);

    let direct_lat = exec_json(
        &p,
        &["bench-client", url, "--requests", &reqs, "--size", "1024"],
    )?;
    let direct_dl = exec_json(&p, &["download", &dl])?;

    let start = Instant::now();
    user.tp(&[
        "connect",
        "--docker",
        "--cluster-type",
        "docker",
        "-n",
        &p.name,
    ])
    .ok();
    let connect_s = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut child = user
        .command(&[
            "intercept",
            "web",
            "-n",
            &p.name,
            "--port",
            "9090:8080",
            "--docker-run",
            "--",
            app,
            "serve",
            "--http",
            "9090",
            "--name",
            "handler",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    p.wait_for(url, "handler", t)?;
    let first_s = start.elapsed().as_secs_f64();

    let icpt_lat = exec_json(
        &p,
        &["bench-client", url, "--requests", &reqs, "--size", "1024"],
    )?;
    let icpt_dl = exec_json(&p, &["download", &dl])?;

    docker(&["stop", "-t", "1", "intercept-web-9090"])?;
    child.wait()?;
    user.tp(&["quit", "-s"]).ok();

    let added_p50 = f(&icpt_lat, "p50_us") - f(&direct_lat, "p50_us");
    let added_p99 = f(&icpt_lat, "p99_us") - f(&direct_lat, "p99_us");
    let ratio = f(&icpt_dl, "gbit_per_s") / f(&direct_dl, "gbit_per_s");
    let rows = [
        (
            "connect (image present)",
            format!("{connect_s:.3} s"),
            "-".to_string(),
            "<= 1.5 s",
            connect_s <= 1.5,
        ),
        (
            "intercept -> first routed request",
            format!("{first_s:.3} s"),
            "-".into(),
            "<= 1 s",
            first_s <= 1.0,
        ),
        (
            "1 KiB keep-alive p50",
            format!("{:.0} us", f(&icpt_lat, "p50_us")),
            format!("{:.0} us", f(&direct_lat, "p50_us")),
            "added <= 100 us",
            added_p50 <= 100.0,
        ),
        (
            "1 KiB keep-alive p99",
            format!("{:.0} us", f(&icpt_lat, "p99_us")),
            format!("{:.0} us", f(&direct_lat, "p99_us")),
            "added <= 500 us",
            added_p99 <= 500.0,
        ),
        (
            &*format!("{} MiB download", a.mib),
            format!("{:.2} Gbit/s", f(&icpt_dl, "gbit_per_s")),
            format!("{:.2} Gbit/s", f(&direct_dl, "gbit_per_s")),
            ">= 50% of direct",
            ratio >= 0.5,
        ),
    ];
    println!(
        "{:<36} {:>14} {:>14}  {:<18} met",
        "metric", "intercepted", "direct", "target"
    );
    for (m, i, d, tgt, ok) in &rows {
        println!(
            "{m:<36} {i:>14} {d:>14}  {tgt:<18} {}",
            if *ok { "yes" } else { "NO" }
        );
    }
    let doc = json!({
        "connect_s": connect_s,
        "first_routed_request_s": first_s,
        "latency_us": {"direct": direct_lat, "intercepted": icpt_lat, "added_p50": added_p50, "added_p99": added_p99},
        "download": {"direct": direct_dl, "intercepted": icpt_dl, "ratio": ratio},
        "targets_met": rows.iter().all(|r| r.4),
    });
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}
