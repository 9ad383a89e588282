//! The benchmark: our paths against the direct path in one run, on this Docker engine. Prints
//! the tables and one JSON document with the figures and the targets.
//!
//! Paths (`tests::bench_paths`, alone with `--only-paths`): interleaved rounds (`--rounds`,
//! medians) of keep-alive and new-connection latency through an intercept, requests/s with many
//! keep-alive connections, 1 and N streams each way through the intercept and the outbound path
//! (and through the intercept path's hops made of kernel rules alone, `bench_paths/floor.rs`),
//! UDP echo and DNS latency, connect time, the image's size and each role's memory; `--chart
//! FILE.svg` draws the latency distributions (`tests::bench_chart`).
//! Intercept path: `connect` time with the image present; intercept → first routed
//! request; latency of 1 KiB keep-alive requests (p50/p99) direct vs intercepted; throughput of
//! a 256 MiB download direct vs intercepted.
//! Volumes: time until the remote volumes are mounted for a 10,000-file tree and for
//! a 200 MiB file (and the rate), and change propagation workload → handler and back.
//! Personal intercepts: see `../bench_personal.rs`. Wiretaps: see `../bench_wiretap.rs`.
//! Outbound (`bench_outbound`): cluster DNS lookup, TCP connect, a large download and
//! 100 parallel downloads, direct vs through the daemon; the daemon's RSS idle and under load.
//! Compose (`bench_compose`): `telepresence compose up -d` of a three-service dev file with one
//! intercept to the first routed request, and `down`, vs the compose tool alone on the same file.
//! Faults (`tests::faults`): requests failed under a steady load while one thing dies at a time,
//! and how long each fault took to settle (the "intercepted" column: failed/requests, the
//! "direct" column: the settle time and who answers after it).
#![allow(clippy::too_many_lines)] // scenarios read top to bottom, one step after another

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tests::bench_outbound::{exec_caller, f, Row};
use tests::bench_paths::PathRow;
use tests::*;

#[path = "../bench_personal.rs"]
mod bench_personal;
#[path = "../bench_wiretap.rs"]
mod bench_wiretap;

#[derive(Parser)]
struct Args {
    /// Requests per latency run.
    #[arg(long, default_value_t = 5000)]
    requests: u32,
    /// Download size in MiB.
    #[arg(long, default_value_t = 256)]
    mib: u64,
    /// Skip the volume benchmark.
    #[arg(long)]
    no_volumes: bool,
    /// Skip the intercept-path and volume sections: only personal intercepts.
    #[arg(long)]
    only_personal: bool,
    /// Skip the personal-intercept benchmark.
    #[arg(long)]
    no_personal: bool,
    /// Skip the intercept-path benchmark.
    #[arg(long)]
    no_intercept: bool,
    /// Skip the outbound (daemon/DNS) benchmark.
    #[arg(long)]
    no_outbound: bool,
    /// Skip the `telepresence compose` benchmark.
    #[arg(long)]
    no_compose: bool,
    /// Only the `telepresence compose` benchmark.
    #[arg(long)]
    only_compose: bool,
    /// Skip the fault suite (requests lost and settle times when things die).
    #[arg(long)]
    no_faults: bool,
    /// Skip the wiretap benchmark.
    #[arg(long)]
    no_wiretap: bool,
    /// Only the wiretap benchmark.
    #[arg(long)]
    only_wiretap: bool,
    /// Parallel downloads in the outbound benchmark; streams of the many-stream runs and
    /// keep-alive connections of the requests/s run in the path benchmark.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Interleaved rounds (direct, ours) of the path, personal and wiretap benchmarks; each
    /// figure is the median of its rounds.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Only the path benchmark.
    #[arg(long)]
    only_paths: bool,
    /// Skip the path benchmark.
    #[arg(long)]
    no_paths: bool,
    /// MiB of each one-stream run of the path benchmark (the many-stream runs move twice that).
    #[arg(long, default_value_t = 1024)]
    stream_mib: u64,
    /// Write an SVG chart of the path benchmark's latency distributions to this file.
    #[arg(long, value_name = "FILE.svg")]
    chart: Option<std::path::PathBuf>,
}

/// The path benchmark: its table on stdout, the chart when asked; its rows and JSON section.
fn paths(a: &Args) -> Result<(Vec<PathRow>, Value)> {
    let results = tests::bench_paths::run(&tests::bench_paths::Options {
        rounds: a.rounds.max(1),
        requests: a.requests as usize,
        stream_mib: a.stream_mib,
        streams: a.connections,
    })?;
    let (rows, doc) = results.report();
    if let Some(file) = &a.chart {
        std::fs::write(file, results.chart())
            .with_context(|| format!("writing {}", file.display()))?;
        eprintln!("chart written to {}", file.display());
    }
    print!("{}", tests::bench_paths::table(&rows));
    println!();
    Ok((rows, doc))
}

fn exec_json(p: &Project, args: &[&str]) -> Result<Value> {
    let out = exec_caller(p, args)?;
    anyhow::ensure!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stdout).to_string())
}

fn intercept_path(a: &Args) -> Result<(Vec<Row>, Value)> {
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
    user.connect_docker(&p, &[]).ok();
    let connect_s = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut child = user
        .intercept_cmd(&p, "web", 9090, 8080, &[], &[], "handler")
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
    let rows = vec![
        (
            "connect (image present)".into(),
            format!("{connect_s:.3} s"),
            "-".into(),
            "<= 1.5 s",
            connect_s <= 1.5,
        ),
        (
            "intercept -> first routed request".into(),
            format!("{first_s:.3} s"),
            "-".into(),
            "<= 1 s",
            first_s <= 1.0,
        ),
        (
            "1 KiB keep-alive p50".into(),
            format!("{:.0} us", f(&icpt_lat, "p50_us")),
            format!("{:.0} us", f(&direct_lat, "p50_us")),
            "added <= 100 us",
            added_p50 <= 100.0,
        ),
        (
            "1 KiB keep-alive p99".into(),
            format!("{:.0} us", f(&icpt_lat, "p99_us")),
            format!("{:.0} us", f(&direct_lat, "p99_us")),
            "added <= 500 us",
            added_p99 <= 500.0,
        ),
        (
            format!("{} MiB download", a.mib),
            format!("{:.2} Gbit/s", f(&icpt_dl, "gbit_per_s")),
            format!("{:.2} Gbit/s", f(&direct_dl, "gbit_per_s")),
            ">= 50% of direct",
            ratio >= 0.5,
        ),
    ];
    let doc = json!({
        "connect_s": connect_s,
        "first_routed_request_s": first_s,
        "latency_us": {"direct": direct_lat, "intercepted": icpt_lat, "added_p50": added_p50, "added_p99": added_p99},
        "download": {"direct": direct_dl, "intercepted": icpt_dl, "ratio": ratio},
    });
    Ok((rows, doc))
}

/// Intercepts `web` of `p` with a handler and waits for the volumes; returns the sync
/// container's seconds and bytes (from the CLI's "Remote volumes ready" line), and the child.
fn mount(p: &Project, user: &User) -> Result<(f64, u64, std::process::Child)> {
    let mut child = user
        .intercept_cmd(
            p,
            "web",
            9090,
            8080,
            &["--docker-mount", "/remote"],
            &[],
            "handler",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    for line in lines.by_ref() {
        let line = line?;
        // "Remote volumes ready: N files, B bytes in S s"
        if let Some(rest) = line.strip_prefix("Remote volumes ready: ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let bytes: u64 = words.get(2).and_then(|w| w.parse().ok()).unwrap_or(0);
            let secs: f64 = words
                .get(5)
                .and_then(|w| w.trim_end_matches('s').parse().ok())
                .unwrap_or(f64::NAN);
            std::thread::spawn(move || lines.for_each(drop));
            p.wait_for("http://web:8080/", "handler", Duration::from_secs(60))?;
            return Ok((secs, bytes, child));
        }
    }
    anyhow::bail!("the intercept ended without mounting volumes")
}

fn end(p: &Project, user: &User, mut child: std::process::Child) -> Result<()> {
    docker(&["stop", "-t", "1", "intercept-web-9090"])?;
    child.wait()?;
    user.tp(&["quit", "-s"]).ok();
    p.wait_for("http://web:8080/", "web", Duration::from_secs(30))?;
    Ok(())
}

fn volume_project(files: usize, big: u64) -> Result<Project> {
    let p = Project::up_with(
        "  web:\n    image: @APP@\n    command: [\"serve\", \"--http\", \"8080\", \"--name\", \"web\"]\n    expose: [\"8080\"]\n    volumes:\n      - data:/data\n",
        "  data: {}\n",
    )?;
    let web = p.container("web")?;
    let dir = std::env::temp_dir().join(format!("{}-tree", p.name));
    std::fs::create_dir_all(dir.join("tree"))?;
    make_tree(&dir.join("tree"), files, big)?;
    docker(&[
        "cp",
        dir.join("tree").to_str().unwrap_or_default(),
        &format!("{web}:/data/"),
    ])?;
    let _ = std::fs::remove_dir_all(&dir);
    p.wait_for("http://web:8080/", "web", Duration::from_secs(30))?;
    Ok(p)
}

fn volumes() -> Result<(Vec<Row>, Value)> {
    // The 10,000-file tree.
    let p = volume_project(10_000, 0)?;
    let user = User::new();
    user.connect(&p);
    let (tree_s, _, child) = mount(&p, &user)?;
    // Change propagation, both ways (each includes a `docker cp`/`docker exec` round of ~0.1 s).
    let web = p.container("web")?;
    let tmp = std::env::temp_dir().join(format!("{}-chg", p.name));
    std::fs::create_dir_all(&tmp)?;
    std::fs::write(tmp.join("chg.txt"), "from the workload")?;
    let start = Instant::now();
    docker(&[
        "cp",
        tmp.join("chg.txt").to_str().unwrap_or_default(),
        &format!("{web}:/data/chg.txt"),
    ])?;
    while p
        .get("http://web:8080/file/remote/data/chg.txt")
        .ok()
        .as_deref()
        != Some("from the workload")
    {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(20),
            "no propagation to the handler"
        );
    }
    let to_handler = start.elapsed().as_secs_f64();
    let start = Instant::now();
    p.put(
        "http://web:8080/file/remote/data/back.txt",
        "from the handler",
    )?;
    loop {
        let ok = docker(&[
            "cp",
            &format!("{web}:/data/back.txt"),
            tmp.to_str().unwrap_or_default(),
        ])
        .is_ok()
            && std::fs::read_to_string(tmp.join("back.txt"))
                .ok()
                .as_deref()
                == Some("from the handler");
        if ok {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(20),
            "no propagation to the workload"
        );
    }
    let to_workload = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&tmp);
    end(&p, &user, child)?;
    drop(user);
    drop(p);

    // One 200 MiB file.
    let p = volume_project(0, 200 * 1024 * 1024)?;
    let user = User::new();
    user.connect(&p);
    let (big_s, big_bytes, child) = mount(&p, &user)?;
    end(&p, &user, child)?;
    let mbps = big_bytes as f64 / 1e6 / big_s;

    let rows = vec![
        (
            "volume ready: 10,000 files".into(),
            format!("{tree_s:.3} s"),
            "-".into(),
            "<= 2 s",
            tree_s <= 2.0,
        ),
        (
            "volume ready: 200 MiB file".into(),
            format!("{big_s:.3} s"),
            "-".into(),
            "<= 2 s",
            big_s <= 2.0,
        ),
        (
            "volume copy rate (200 MiB)".into(),
            format!("{mbps:.0} MB/s"),
            "-".into(),
            ">= 200 MB/s",
            mbps >= 200.0,
        ),
        (
            "change workload -> handler".into(),
            format!("{to_handler:.3} s"),
            "-".into(),
            "<= 2 s",
            to_handler <= 2.0,
        ),
        (
            "change handler -> workload".into(),
            format!("{to_workload:.3} s"),
            "-".into(),
            "<= 2 s",
            to_workload <= 2.0,
        ),
    ];
    let doc = json!({
        "tree_10k_files_s": tree_s,
        "file_200mib_s": big_s,
        "file_200mib_mb_per_s": mbps,
        "propagation_s": {"workload_to_handler": to_handler, "handler_to_workload": to_workload},
    });
    Ok((rows, doc))
}

/// The fault suite (`tests::faults`): requests failed under a steady load and the time each
/// fault took to settle, against the targets of the ones that have one.
fn faults() -> Result<(Vec<Row>, Value)> {
    let p = Project::up(&[("web", 8080)])?;
    let user = User::new();
    let outcomes = tests::faults::run_suite(&p, &user)?;
    user.tp(&["quit", "-s"]).ok();
    eprintln!("{}", tests::faults::table(&outcomes));
    let target = |fault: &str| match fault {
        "manager restarted" => Some((3.0, "0 failed, <= 3 s")),
        "daemon killed" => Some((2.0, "0 failed, <= 2 s")),
        _ => None,
    };
    let rows = outcomes
        .iter()
        .map(|o| {
            let settle = o.settle.as_secs_f64();
            let limit = target(o.fault);
            (
                format!("fault: {}", o.fault),
                format!("{}/{} failed", o.failed.len(), o.requests),
                format!("{settle:.2} s -> {}", o.settled_on),
                limit.map_or("0 failed", |(_, text)| text),
                o.failed.is_empty() && limit.is_none_or(|(l, _)| settle <= l),
            )
        })
        .collect();
    let doc = Value::Array(
        outcomes
            .iter()
            .map(|o| {
                json!({
                    "fault": o.fault,
                    "requests": o.requests,
                    "failed": o.failed.len(),
                    "failed_while_workload_down": o.workload_down,
                    "cut_in_flight_by_a_kill": o.cut_in_flight,
                    "settle_s": o.settle.as_secs_f64(),
                    "settled_on": o.settled_on,
                })
            })
            .collect(),
    );
    Ok((rows, doc))
}

fn print_rows(rows: &[Row]) {
    println!(
        "{:<36} {:>14} {:>14}  {:<18} met",
        "metric", "intercepted", "direct", "target"
    );
    for (m, i, d, tgt, ok) in rows {
        println!(
            "{m:<36} {i:>14} {d:>14}  {tgt:<18} {}",
            if *ok { "yes" } else { "NO" }
        );
    }
}

fn main() -> Result<()> {
    let a = Args::parse();
    anyhow::ensure!(
        engine_available(),
        "the benchmark needs a running Docker engine"
    );
    if a.only_compose {
        let (rows, doc) = tests::bench_compose::compose()?;
        print_rows(&rows);
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "compose": doc }))?
        );
        return Ok(());
    }
    let paths_skipped = a.no_paths || a.only_personal || a.only_compose || a.only_wiretap;
    anyhow::ensure!(
        a.chart.is_none() || a.only_paths || !paths_skipped,
        "--chart draws the path benchmark's latencies, which this run skips"
    );
    if a.only_paths {
        let (rows, doc) = paths(&a)?;
        let met = rows.iter().all(|r| r.met != Some(false));
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"paths": doc, "targets_met": met}))?
        );
        return Ok(());
    }
    if a.only_wiretap {
        let (rows, v) = bench_wiretap::wiretap(a.requests, a.rounds)?;
        print_rows(&rows);
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"wiretap": v, "targets_met": rows.iter().all(|r| r.4)})
            )?
        );
        return Ok(());
    }
    let (path_rows, paths_doc) = if a.no_paths || a.only_personal {
        (Vec::new(), Value::Null)
    } else {
        paths(&a)?
    };
    let (mut rows, path) = if a.only_personal || a.no_intercept {
        (Vec::new(), Value::Null)
    } else {
        intercept_path(&a)?
    };
    let personal = if a.no_personal {
        Value::Null
    } else {
        let (r, v) = bench_personal::personal(a.requests, a.rounds)?;
        rows.extend(r);
        v
    };
    let outbound = if a.no_outbound || a.only_personal {
        Value::Null
    } else {
        let (r, v) = tests::bench_outbound::outbound(a.mib, a.connections)?;
        rows.extend(r);
        v
    };
    let wiretap = if a.no_wiretap || a.only_personal {
        Value::Null
    } else {
        let (r, v) = bench_wiretap::wiretap(a.requests, a.rounds)?;
        rows.extend(r);
        v
    };
    let vols = if a.no_volumes || a.only_personal {
        Value::Null
    } else {
        let (r, v) = volumes()?;
        rows.extend(r);
        v
    };
    let compose = if a.no_compose || a.only_personal {
        Value::Null
    } else {
        let (r, v) = tests::bench_compose::compose()?;
        rows.extend(r);
        v
    };
    let fault_doc = if a.no_faults || a.only_personal {
        Value::Null
    } else {
        let (r, v) = faults()?;
        rows.extend(r);
        v
    };
    print_rows(&rows);
    let doc = json!({
        "paths": paths_doc,
        "compose": compose,
        "wiretap": wiretap,
        "intercept_path": path,
        "volumes": vols,
        "personal_intercepts": personal,
        "outbound": outbound,
        "faults": fault_doc,
        "targets_met": rows.iter().all(|r| r.4) && path_rows.iter().all(|r| r.met != Some(false)),
    });
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}
