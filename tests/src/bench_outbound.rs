//! The outbound section of the benchmark: the same clients run directly on the project
//! network (the `caller` service) and through the outbound path (a handler started with
//! `telepresence docker-run` on a connection: the daemon (TCP through the kernel redirect, UDP
//! through the TUN device), tunnel, manager), in one run.
//! DNS lookup latency, TCP connect latency, a large download, 100 parallel downloads, and the
//! daemon's resident memory idle and under that load.

use crate::{images, Project, User};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One table row: metric, the measured path (through the daemon; intercepted in `bin/bench.rs`),
/// direct, target, met.
pub type Row = (String, String, String, &'static str, bool);

fn parse_json(out: std::process::Output, what: &str) -> Result<Value> {
    anyhow::ensure!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{what}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// `docker exec <caller> /tp-testapp <args…>` in project `p`, to completion.
pub fn exec_caller(p: &Project, args: &[&str]) -> Result<std::process::Output> {
    let caller = p.container("caller")?;
    Ok(Command::new("docker")
        .args(["exec", &caller, "/tp-testapp"])
        .args(args)
        .output()?)
}

/// `docker exec <container> /tp-testapp <args…>`, to completion: its JSON answer.
pub fn exec_json_in(container: &str, args: &[String]) -> Result<Value> {
    let out = Command::new("docker")
        .args(["exec", container, "/tp-testapp"])
        .args(args)
        .output()?;
    parse_json(out, &format!("{container} {args:?}"))
}

fn direct(p: &Project, args: &[&str]) -> Result<Value> {
    parse_json(exec_caller(p, args)?, &format!("direct {args:?}"))
}

fn through_tun(user: &User, args: &[&str]) -> Result<Value> {
    let (app, _) = images();
    let out = user
        .command(&["docker-run", "--rm", app.as_str()])
        .args(args)
        .output()?;
    parse_json(out, &format!("through the daemon {args:?}"))
}

/// Resident memory of a container's processes, in MiB (read from the host's /proc).
fn rss_mib(container: &str) -> Result<f64> {
    let pid = crate::bench_paths::container_pid(container)?;
    let kib = crate::bench_paths::tree_rss_kib(pid);
    anyhow::ensure!(kib > 0, "no VmRSS for {container}");
    Ok(kib as f64 / 1024.0)
}

/// The number `k` of a benchmark's JSON answer (NaN when missing).
pub fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

/// Runs the outbound benchmark with a `mib` MiB download and `conns` parallel downloads.
pub fn outbound(mib: u64, conns: usize) -> Result<(Vec<Row>, Value)> {
    let p = Project::up(&[("web", 8080)])?;
    let user = User::new();
    p.wait_for("http://web:8080/", "web", Duration::from_secs(30))?;
    user.connect(&p);
    let daemon = format!("tp-docker-{}-cn", p.name);
    // Warm up the path (image, first dial; another name, so the first lookup of `web` below is
    // not cached), then let the daemon settle.
    through_tun(&user, &["lookup-bench", "caller", "--count", "10"])?;
    std::thread::sleep(Duration::from_secs(2));
    let rss_idle = rss_mib(&daemon)?;

    let dns_direct = direct(&p, &["lookup-bench", "web", "--count", "2000"])?;
    let dns_tun = through_tun(&user, &["lookup-bench", "web", "--count", "2000"])?;
    let conn_direct = direct(&p, &["connect-bench", "web:8080", "--count", "1000"])?;
    let conn_tun = through_tun(&user, &["connect-bench", "web:8080", "--count", "1000"])?;
    let dl = format!("http://web:8080/bytes/{}", mib * 1024 * 1024);
    let dl_direct = direct(&p, &["download", &dl])?;
    let dl_tun = through_tun(&user, &["download", &dl])?;
    let each = format!("http://web:8080/bytes/{}", 8 * 1024 * 1024);
    let n = conns.to_string();
    let many_direct = direct(&p, &["download-many", &each, "--connections", &n])?;
    // Sample the daemon's memory while the parallel downloads run.
    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop, daemon) = (peak.clone(), stop.clone(), daemon.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(m) = rss_mib(&daemon) {
                    peak.fetch_max((m * 1024.0) as u64, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let many_tun = through_tun(&user, &["download-many", &each, "--connections", &n]);
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let many_tun = many_tun?;
    let rss_load = peak.load(Ordering::Relaxed) as f64 / 1024.0;
    user.tp(&["quit", "-s"]).ok();

    let added_connect = f(&conn_tun, "p50_us") - f(&conn_direct, "p50_us");
    let ratio = f(&dl_tun, "gbit_per_s") / f(&dl_direct, "gbit_per_s");
    let many_ratio = f(&many_tun, "gbit_per_s") / f(&many_direct, "gbit_per_s");
    let rows: Vec<Row> = vec![
        (
            "cluster DNS lookup p50".into(),
            format!("{:.0} us", f(&dns_tun, "p50_us")),
            format!("{:.0} us", f(&dns_direct, "p50_us")),
            "<= 2 ms",
            f(&dns_tun, "p50_us") <= 2000.0,
        ),
        (
            "cluster DNS lookup p99".into(),
            format!("{:.0} us", f(&dns_tun, "p99_us")),
            format!("{:.0} us", f(&dns_direct, "p99_us")),
            "-",
            true,
        ),
        (
            "cluster DNS lookup, uncached".into(),
            format!("{:.0} us", f(&dns_tun, "first_us")),
            format!("{:.0} us", f(&dns_direct, "first_us")),
            "-",
            true,
        ),
        (
            "TCP connect p50".into(),
            format!("{:.0} us", f(&conn_tun, "p50_us")),
            format!("{:.0} us", f(&conn_direct, "p50_us")),
            "added <= 1 ms",
            added_connect <= 1000.0,
        ),
        (
            "TCP connect p99".into(),
            format!("{:.0} us", f(&conn_tun, "p99_us")),
            format!("{:.0} us", f(&conn_direct, "p99_us")),
            "-",
            true,
        ),
        (
            format!("{mib} MiB download (outbound)"),
            format!("{:.2} Gbit/s", f(&dl_tun, "gbit_per_s")),
            format!("{:.2} Gbit/s", f(&dl_direct, "gbit_per_s")),
            ">= 50% of direct",
            ratio >= 0.5,
        ),
        (
            format!("{conns} parallel downloads, aggregate"),
            format!("{:.2} Gbit/s", f(&many_tun, "gbit_per_s")),
            format!("{:.2} Gbit/s", f(&many_direct, "gbit_per_s")),
            "-",
            true,
        ),
        (
            "daemon RSS idle".into(),
            format!("{rss_idle:.1} MiB"),
            "-".into(),
            "<= 25 MiB",
            rss_idle <= 25.0,
        ),
        (
            format!("daemon RSS, {conns} downloads"),
            format!("{rss_load:.1} MiB"),
            "-".into(),
            "-",
            true,
        ),
    ];
    let doc = json!({
        "dns_lookup_us": {"through_tun": dns_tun, "direct": dns_direct},
        "tcp_connect_us": {"through_tun": conn_tun, "direct": conn_direct, "added_p50": added_connect},
        "download": {"through_tun": dl_tun, "direct": dl_direct, "ratio": ratio},
        "parallel_downloads": {"through_tun": many_tun, "direct": many_direct, "ratio": many_ratio},
        "daemon_rss_mib": {"idle": rss_idle, "under_load": rss_load},
    });
    Ok((rows, doc))
}
