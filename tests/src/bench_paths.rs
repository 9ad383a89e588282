//! The path section of the benchmark (`tp-bench`, alone with `--only-paths`): what a request,
//! a new connection, a byte, a datagram and a lookup cost on our paths against the same client
//! on the direct path, measured from inside containers with the test app, in interleaved rounds
//! (direct, ours, direct, ours …); each figure is the median of its rounds, so a burst of load on
//! this shared machine hits both alike. It owns the measures and their rounds, the resident
//! memory of each role, the table rows with their targets, the JSON section and the chart data.
//!
//! - Intercept path: the project's `caller` → `web:8080` (captured by the agent) → manager →
//!   daemon → the handler; direct: `caller` → the same app's uncaptured port `web:8081`.
//! - Outbound path: a container started with `telepresence docker-run` on the connection →
//!   `web:8081` / UDP `web:9000` through the daemon; direct: `caller` → the same ports.
//! - DNS: `web` through the daemon's DNS (from the `docker-run` container) vs the engine's DNS
//!   (from `caller`).
//! - Also: `telepresence connect` with the image present (one per round), the size of the
//!   `telepresence` image and the resident memory of the daemon, manager and agent containers,
//!   idle and (peak) under the many-stream runs.
//!
//! Only what any container shows from outside is used (`docker exec`, the engine's API, `/proc`
//! of the containers' processes), so it measures any implementation of the paths.

use crate::bench_chart::{Line, Panel, DIRECT_COLOR, OURS_COLOR};
use crate::bench_outbound::{exec_json_in, f};
use crate::harness::{docker, images, User};
use crate::stack::Project;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The workload: HTTP on the captured service port 8080 and on the uncaptured 8081, UDP echo on
/// 9000 (not a service port either).
const WEB: &str = "  web:\n    image: @APP@\n    command: [\"serve\", \"--http\", \"8080\", \"--http\", \"8081\", \"--udp\", \"9000\", \"--name\", \"web\"]\n    expose: [\"8080\"]\n";
const INTERCEPTED: &str = "http://web:8080/";
const DIRECT: &str = "http://web:8081/";
const UDP_TARGET: &str = "web:9000";

/// What the section measures and how much.
#[derive(Debug, Clone)]
pub struct Options {
    /// Interleaved rounds (direct, ours) of every measure.
    pub rounds: usize,
    /// Keep-alive requests per latency run (new connections, datagrams and lookups: a fifth).
    pub requests: usize,
    /// MiB of the one-stream runs (the many-stream runs move twice that in all).
    pub stream_mib: u64,
    /// Streams of the many-stream runs (and keep-alive connections of the requests/s run).
    pub streams: usize,
}

/// One line of the section's table.
#[derive(Debug, Clone, PartialEq)]
pub struct PathRow {
    pub metric: String,
    pub direct: String,
    pub ours: String,
    /// Ours against direct: the added cost or the ratio.
    pub versus: String,
    pub target: String,
    /// `None` when there is no target.
    pub met: Option<bool>,
    /// Printed under the table (failed runs).
    pub note: Option<String>,
}

/// Who runs a measure's "ours" client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// `caller`, through the intercepted port.
    Intercept,
    /// The `docker-run` container on the connection.
    Outbound,
}

/// One measure: the test app's arguments on the direct path and on ours.
struct Measure {
    key: String,
    via: Via,
    direct: Vec<String>,
    ours: Vec<String>,
    /// Sample the roles' memory while ours runs.
    load: bool,
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_string()).collect()
}

/// Every measure of a round, in the order they run.
fn measures(o: &Options) -> Vec<Measure> {
    let fifth = (o.requests / 5).max(100).to_string();
    let reqs = o.requests.to_string();
    let rps_reqs = (o.requests * 4).to_string();
    let n = o.streams.to_string();
    let mib = 1024 * 1024;
    let one = (o.stream_mib * mib).to_string();
    let each = (o.stream_mib * 2 * mib / o.streams.max(1) as u64)
        .max(mib)
        .to_string();
    let mut v = Vec::new();
    let mut add = |key: String, via, make: &dyn Fn(&str) -> Vec<String>, load| {
        let ours = match via {
            Via::Intercept => make(INTERCEPTED),
            Via::Outbound => make(DIRECT),
        };
        let direct = make(DIRECT);
        v.push(Measure {
            key,
            via,
            direct,
            ours,
            load,
        });
    };
    let keep = |u: &str| args(&["bench-client", u, "--requests", &reqs, "--size", "1024"]);
    add("keepalive".into(), Via::Intercept, &keep, false);
    let new_conn = |u: &str| args(&["bench-client", u, "--new-conn", "--requests", &fifth]);
    add("new_conn".into(), Via::Intercept, &new_conn, false);
    let rps = |u: &str| {
        args(&[
            "bench-headers",
            u,
            "--requests",
            &rps_reqs,
            "--concurrency",
            &n,
        ])
    };
    add("rps".into(), Via::Intercept, &rps, false);
    for (via, path) in [(Via::Intercept, "icpt"), (Via::Outbound, "out")] {
        for (up, way) in [(false, "down"), (true, "up")] {
            for (many, count) in [(false, "1"), (true, "n")] {
                let make = |u: &str| {
                    let streams = if many { n.as_str() } else { "1" };
                    let bytes = if many { each.as_str() } else { one.as_str() };
                    let mut a = args(&["streams", u, "--streams", streams, "--bytes", bytes]);
                    if up {
                        a.push("--up".into());
                    }
                    a
                };
                add(format!("{path}_{way}_{count}"), via, &make, many);
            }
        }
    }
    let udp = |_: &str| args(&["udp-echo-bench", UDP_TARGET, "--count", &fifth]);
    add("udp".into(), Via::Outbound, &udp, false);
    let dns = |_: &str| args(&["lookup-bench", "web", "--count", &fifth]);
    add("dns".into(), Via::Outbound, &dns, false);
    v
}

/// The containers of each role (by our role label) and their resident memory.
pub struct Roles {
    pids: Vec<(&'static str, Vec<u32>)>,
}

/// The roles whose memory is reported, and their role label values.
const ROLES: [(&str, &str); 3] = [
    ("daemon", docker::logs::ROLE_DAEMON),
    ("manager", docker::logs::ROLE_TRAFFIC_MANAGER),
    ("agent", docker::provider::ROLE_AGENT),
];

impl Roles {
    /// The main processes of the running containers of each role.
    pub fn find() -> Result<Roles> {
        let mut pids = Vec::new();
        for (name, role) in ROLES {
            let ids = docker(&[
                "ps",
                "-q",
                "--filter",
                &format!("label={}={role}", docker::engine::ROLE_LABEL),
            ])?;
            let mut v = Vec::new();
            for id in ids.lines().filter(|l| !l.is_empty()) {
                v.push(container_pid(id)?);
            }
            pids.push((name, v));
        }
        Ok(Roles { pids })
    }

    /// MiB resident per role (every process of its containers).
    pub fn rss_mib(&self) -> BTreeMap<&'static str, f64> {
        self.pids
            .iter()
            .map(|(name, pids)| {
                let kib: u64 = pids.iter().map(|p| tree_rss_kib(*p)).sum();
                (*name, kib as f64 / 1024.0)
            })
            .collect()
    }
}

/// The host pid of a container's main process.
pub fn container_pid(container: &str) -> Result<u32> {
    docker(&["inspect", "-f", "{{.State.Pid}}", container])?
        .parse()
        .with_context(|| format!("no pid for {container}"))
}

/// VmRSS of `pid` and of its descendants, in KiB (0 when it is gone).
pub fn tree_rss_kib(pid: u32) -> u64 {
    let own = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    let children: u64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .map(tree_rss_kib)
        .sum();
    own + children
}

/// Peak memory per role while `work` runs (sampled every 50 ms).
fn peak_while<T>(roles: &Roles, work: impl FnOnce() -> T) -> (T, BTreeMap<&'static str, f64>) {
    let peak = Mutex::new(roles.rss_mib());
    let stop = AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let now = roles.rss_mib();
                if let Ok(mut p) = peak.lock() {
                    for (k, v) in now {
                        let e = p.entry(k).or_insert(0.0);
                        *e = e.max(v);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let out = work();
        stop.store(true, Ordering::Relaxed);
        out
    });
    (out, peak.into_inner().unwrap_or_default())
}

/// The median of the numbers that are not NaN (the mean of the middle two for an even count;
/// NaN for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 0 => (v[mid - 1] + v[mid]) / 2.0,
        _ => v[mid],
    }
}

/// Everything the rounds measured: per measure, the direct and our JSON answers of each round;
/// the roles' peak memory of each round under load.
#[derive(Default)]
struct Rounds {
    runs: BTreeMap<String, (Vec<Value>, Vec<Value>)>,
    load_rss: Vec<BTreeMap<&'static str, f64>>,
}

impl Rounds {
    /// The figure `field` of each round (NaN for a failed run), direct and ours.
    fn figures(&self, key: &str, field: &str) -> (Vec<f64>, Vec<f64>) {
        let (d, o) = self.runs.get(key).cloned().unwrap_or_default();
        let pick = |v: &[Value]| v.iter().map(|x| f(x, field)).collect();
        (pick(&d), pick(&o))
    }

    /// The errors of the failed runs of a measure, direct and ours.
    fn errors(&self, key: &str) -> (Vec<String>, Vec<String>) {
        let (d, o) = self.runs.get(key).cloned().unwrap_or_default();
        let pick = |v: &[Value]| {
            v.iter()
                .filter_map(|x| x["error"].as_str().map(str::to_string))
                .collect()
        };
        (pick(&d), pick(&o))
    }

    /// Per percentile, the median over the rounds (direct, ours).
    fn distribution(&self, key: &str) -> (Vec<[f64; 2]>, Vec<[f64; 2]>) {
        let line = |runs: &[Value]| {
            let lines: Vec<Vec<[f64; 2]>> = runs
                .iter()
                .filter_map(|r| serde_json::from_value(r["percentiles"].clone()).ok())
                .collect();
            let Some(first) = lines.first() else {
                return Vec::new();
            };
            (0..first.len())
                .map(|i| {
                    let vals = lines
                        .iter()
                        .filter_map(|l| l.get(i).map(|p| p[1]))
                        .collect();
                    [first[i][0], median(vals)]
                })
                .collect()
        };
        let (d, o) = self.runs.get(key).cloned().unwrap_or_default();
        (line(&d), line(&o))
    }
}

/// A run's answer, or `{"error": …}` when it failed (the round goes on; the row says so).
fn answer(key: &str, side: &str, r: Result<Value>) -> Value {
    r.unwrap_or_else(|e| {
        eprintln!("paths: {key} ({side}) failed: {e:#}");
        json!({ "error": format!("{e:#}") })
    })
}

/// One round: every measure, direct then ours.
fn round(o: &Options, caller: &str, outbound: &str, roles: &Roles, acc: &mut Rounds) {
    let mut peak: BTreeMap<&'static str, f64> = BTreeMap::new();
    for m in measures(o) {
        let d = answer(&m.key, "direct", exec_json_in(caller, &m.direct));
        let who = if m.via == Via::Intercept {
            caller
        } else {
            outbound
        };
        let run = || exec_json_in(who, &m.ours);
        let ours = if m.load {
            let (r, p) = peak_while(roles, run);
            for (k, v) in p {
                let e = peak.entry(k).or_insert(0.0);
                *e = e.max(v);
            }
            r
        } else {
            run()
        };
        let e = acc.runs.entry(m.key.clone()).or_default();
        e.0.push(d);
        e.1.push(answer(&m.key, "ours", ours));
    }
    acc.load_rss.push(peak);
}

/// What the section leaves running until it ends: the intercept's process and the outbound
/// client container; dropping it stops both and quits.
struct Running<'a> {
    user: &'a User,
    intercept: Option<Child>,
    outbound: String,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.outbound]);
        let _ = docker(&["stop", "-t", "1", "intercept-web-9090"]);
        if let Some(mut c) = self.intercept.take() {
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.user.tp(&["quit", "-s"]);
    }
}

/// `connect` timed once per round (quitting between rounds; connected after the last).
fn connect_rounds(p: &Project, user: &User, rounds: usize) -> Result<Vec<f64>> {
    let mut times = Vec::new();
    for r in 0..rounds {
        let start = Instant::now();
        let run = user.connect_with(p, &[]);
        times.push(start.elapsed().as_secs_f64());
        anyhow::ensure!(run.code == 0, "connect: {}", run.stderr);
        if r + 1 < rounds {
            user.tp(&["quit", "-s"]);
        }
    }
    Ok(times)
}

/// Starts the intercept of `web:8080` (handler on 9090) and the outbound client container.
fn start_paths<'a>(p: &Project, user: &'a User) -> Result<Running<'a>> {
    let (app, _) = images();
    let outbound = format!("{}-outbound", p.name);
    let mut running = Running {
        user,
        intercept: None,
        outbound: outbound.clone(),
    };
    let out = user
        .command(&["docker-run", "-d", "--name", &outbound, app.as_str()])
        .args([
            "serve",
            "--bind",
            "127.0.0.1",
            "--http",
            "0",
            "--name",
            "outbound",
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "docker-run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    running.intercept = Some(
        user.intercept_cmd(p, "web", 9090, 8080, &[], &[], "handler")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    p.wait_for(INTERCEPTED, "handler", Duration::from_secs(30))?;
    // Warm up the outbound path (first dial, first lookup of another name).
    exec_json_in(
        &outbound,
        &args(&["lookup-bench", "caller", "--count", "10"]),
    )?;
    Ok(running)
}

/// Size of the `telepresence` image in MB (10^6 bytes).
fn image_mb() -> Result<f64> {
    let (_, tp) = images();
    let bytes: f64 = docker(&["image", "inspect", "-f", "{{.Size}}", tp])?
        .parse()
        .context("image size")?;
    Ok(bytes / 1e6)
}

/// The section's raw results, before they become rows, JSON and a chart.
pub struct PathResults {
    options: Options,
    rounds: Rounds,
    connect_s: Vec<f64>,
    image_mb: f64,
    idle_rss: BTreeMap<&'static str, f64>,
}

/// Runs the section: sets up the project, connection, intercept and outbound client, then the
/// interleaved rounds; everything is removed at the end, also on failure.
pub fn run(o: &Options) -> Result<PathResults> {
    let p = Project::up_with(WEB, "")?;
    let user = User::new();
    let t = Duration::from_secs(30);
    p.wait_for(INTERCEPTED, "web", t)?;
    p.wait_for(DIRECT, "web", t)?;
    let image_mb = image_mb()?;
    let connect_s = connect_rounds(&p, &user, o.rounds.max(1))?;
    let running = start_paths(&p, &user)?;
    std::thread::sleep(Duration::from_secs(2));
    let roles = Roles::find()?;
    let idle_rss = roles.rss_mib();
    let caller = p.container("caller")?;
    let mut rounds = Rounds::default();
    for r in 0..o.rounds.max(1) {
        eprintln!("paths: round {}/{}", r + 1, o.rounds.max(1));
        round(o, &caller, &running.outbound, &roles, &mut rounds);
    }
    drop(running);
    Ok(PathResults {
        options: o.clone(),
        rounds,
        connect_s,
        image_mb,
        idle_rss,
    })
}

/// How a row compares ours with direct.
#[derive(Clone, Copy)]
enum Target {
    None,
    /// Latency: ours may add at most this many µs.
    AddedAtMost(f64),
    /// Rate: ours at least this fraction of direct.
    RatioAtLeast(f64),
}

/// A row of a direct-vs-ours measure: label, measure key, JSON field, unit, target.
type Spec = (String, String, &'static str, &'static str, Target);

fn specs(o: &Options) -> Vec<Spec> {
    let n = o.streams;
    let (us, g) = ("µs", "Gbit/s");
    let spec = |label: &str, key: &str, field, unit, target| {
        (label.to_string(), key.to_string(), field, unit, target)
    };
    let mut v: Vec<Spec> = vec![
        spec(
            "intercept: keep-alive 1 KiB p50",
            "keepalive",
            "p50_us",
            us,
            Target::AddedAtMost(50.0),
        ),
        spec(
            "intercept: keep-alive 1 KiB p99",
            "keepalive",
            "p99_us",
            us,
            Target::AddedAtMost(200.0),
        ),
        spec(
            "intercept: new connection p50",
            "new_conn",
            "p50_us",
            us,
            Target::AddedAtMost(300.0),
        ),
        spec(
            "intercept: new connection p99",
            "new_conn",
            "p99_us",
            us,
            Target::None,
        ),
        spec(
            &format!("intercept: req/s, {n} keep-alive conns"),
            "rps",
            "requests_per_s",
            "req/s",
            Target::RatioAtLeast(0.8),
        ),
    ];
    let rate = Target::RatioAtLeast(0.8);
    for (path, key, up_target) in [
        ("intercept", "icpt", Target::None),
        ("outbound", "out", rate),
    ] {
        for (way, key_way, target) in [("download", "down", rate), ("upload", "up", up_target)] {
            for (count, key_n) in [(1, "1"), (n, "n")] {
                let s = if count == 1 { "stream" } else { "streams" };
                let label = format!("{path}: {way}, {count} {s}");
                v.push(spec(
                    &label,
                    &format!("{key}_{key_way}_{key_n}"),
                    "gbit_per_s",
                    g,
                    target,
                ));
            }
        }
    }
    v.extend([
        spec("outbound: UDP echo p50", "udp", "p50_us", us, Target::None),
        spec("outbound: UDP echo p99", "udp", "p99_us", us, Target::None),
        spec(
            "DNS lookup, cluster name p50",
            "dns",
            "p50_us",
            us,
            Target::None,
        ),
        spec(
            "DNS lookup, cluster name p99",
            "dns",
            "p99_us",
            us,
            Target::None,
        ),
    ]);
    v
}

/// Most memory the daemon may hold under the many-stream load, in MiB.
const DAEMON_RSS_MIB: f64 = 25.0;
/// Largest image, in MB.
const IMAGE_MB: f64 = 20.0;

fn value(v: f64, unit: &str) -> String {
    match unit {
        "Gbit/s" => format!("{v:.2} {unit}"),
        "µs" | "req/s" => format!("{v:.0} {unit}"),
        _ => format!("{v:.1} {unit}"),
    }
}

/// The row of one direct-vs-ours spec, with its medians.
fn spec_row(r: &PathResults, (label, key, field, unit, target): &Spec) -> (PathRow, Value) {
    let (d_rounds, o_rounds) = r.rounds.figures(key, field);
    let (d, o) = (median(d_rounds.clone()), median(o_rounds.clone()));
    let (d_errors, o_errors) = r.rounds.errors(key);
    let (versus, target_text, met) = match *target {
        Target::AddedAtMost(limit) => (
            format!("{:+.0} {unit}", o - d),
            format!("≤ +{limit:.0} {unit}"),
            Some(o - d <= limit),
        ),
        Target::RatioAtLeast(min) => (
            format!("{:.0} %", 100.0 * o / d),
            format!("≥ {:.0} % of direct", 100.0 * min),
            Some(o / d >= min),
        ),
        Target::None if *unit == "µs" => (format!("{:+.0} {unit}", o - d), "-".into(), None),
        Target::None => (format!("{:.0} %", 100.0 * o / d), "-".into(), None),
    };
    // A failed run of ours misses the target whatever the others measured.
    let met = if o_errors.is_empty() {
        met
    } else {
        Some(false)
    };
    let failed = |side: &str, errors: &[String], of: usize| {
        errors
            .first()
            .map(|e| format!("{} of {of} {side} runs failed, e.g. {e}", errors.len()))
    };
    let notes: Vec<String> = [
        failed("direct", &d_errors, d_rounds.len()),
        failed("ours", &o_errors, o_rounds.len()),
    ]
    .into_iter()
    .flatten()
    .collect();
    let row = PathRow {
        metric: label.clone(),
        direct: value(d, unit),
        ours: value(o, unit),
        versus,
        target: target_text,
        met,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    };
    let doc = json!({
        "metric": label, "measure": key, "field": field, "unit": unit,
        "direct": d, "ours": o, "added": o - d, "ratio": o / d,
        "target": row.target, "met": met,
        "rounds": {"direct": d_rounds, "ours": o_rounds},
        "failed": {"direct": d_errors, "ours": o_errors},
    });
    (row, doc)
}

/// A row of ours alone (no direct counterpart).
fn own_row(metric: &str, ours: String, target: &str, met: Option<bool>) -> PathRow {
    PathRow {
        metric: metric.into(),
        direct: "-".into(),
        ours,
        versus: "-".into(),
        target: target.into(),
        met,
        note: None,
    }
}

impl PathResults {
    /// Median memory per role under load over the rounds.
    fn load_rss(&self, role: &str) -> (f64, Vec<f64>) {
        let v: Vec<f64> = self
            .rounds
            .load_rss
            .iter()
            .map(|m| m.get(role).copied().unwrap_or(f64::NAN))
            .collect();
        (median(v.clone()), v)
    }

    /// The table rows and the JSON section.
    pub fn report(&self) -> (Vec<PathRow>, Value) {
        let connect = median(self.connect_s.clone());
        let mut rows = vec![own_row(
            "connect (image present)",
            format!("{connect:.3} s"),
            "-",
            None,
        )];
        let mut metrics = Vec::new();
        for spec in specs(&self.options) {
            let (row, doc) = spec_row(self, &spec);
            rows.push(row);
            metrics.push(doc);
        }
        let (_, tp) = images();
        rows.push(own_row(
            &format!("image {tp}"),
            format!("{:.1} MB", self.image_mb),
            "≤ 20 MB",
            Some(self.image_mb <= IMAGE_MB),
        ));
        let mut rss = serde_json::Map::new();
        for (role, _) in ROLES {
            let idle = self.idle_rss.get(role).copied().unwrap_or(f64::NAN);
            let (load, load_rounds) = self.load_rss(role);
            rows.push(own_row(
                &format!("RSS {role}, idle"),
                format!("{idle:.1} MiB"),
                "-",
                None,
            ));
            let (target, met) = if role == "daemon" {
                ("≤ 25 MiB", Some(load <= DAEMON_RSS_MIB))
            } else {
                ("-", None)
            };
            let label = format!("RSS {role}, {} streams (peak)", self.options.streams);
            rows.push(own_row(&label, format!("{load:.1} MiB"), target, met));
            rss.insert(
                role.into(),
                json!({"idle": idle, "under_load": load, "under_load_rounds": load_rounds}),
            );
        }
        let doc = json!({
            "method": "interleaved rounds (direct, ours); each figure is the median of its rounds",
            "rounds": self.options.rounds,
            "metrics": metrics,
            "connect_s": {"median": connect, "rounds": self.connect_s},
            "image": {"tag": tp, "mb": self.image_mb},
            "rss_mib": rss,
            "distributions_us": self.distributions(),
            "runs": self.runs_without_percentiles(),
            "targets_met": rows.iter().all(|r| r.met != Some(false)),
        });
        (rows, doc)
    }

    /// Per latency measure, the median percentile lines (direct, ours) at [`SUMMARY`]'s
    /// percentiles (the chart draws every percentile of the lines).
    fn distributions(&self) -> Value {
        let summary = |line: Vec<[f64; 2]>| -> serde_json::Map<String, Value> {
            line.into_iter()
                .filter(|[p, _]| SUMMARY.contains(p))
                .map(|[p, us]| (format!("p{p}"), json!(us)))
                .collect()
        };
        let mut m = serde_json::Map::new();
        for (key, _) in CHARTED {
            let (d, o) = self.rounds.distribution(key);
            m.insert(
                key.into(),
                json!({"direct": summary(d), "ours": summary(o)}),
            );
        }
        Value::Object(m)
    }

    /// Every round's answers, without their percentile lines (those are in `distributions_us`).
    fn runs_without_percentiles(&self) -> Value {
        let strip = |v: &[Value]| -> Vec<Value> {
            v.iter()
                .cloned()
                .map(|mut x| {
                    if let Some(o) = x.as_object_mut() {
                        o.remove("percentiles");
                    }
                    x
                })
                .collect()
        };
        let m: serde_json::Map<String, Value> = self
            .rounds
            .runs
            .iter()
            .map(|(k, (d, o))| (k.clone(), json!({"direct": strip(d), "ours": strip(o)})))
            .collect();
        Value::Object(m)
    }

    /// The chart's panels: the latency distributions, direct against ours.
    pub fn chart(&self) -> String {
        let panels: Vec<Panel> = CHARTED
            .iter()
            .map(|(key, title)| {
                let (d, o) = self.rounds.distribution(key);
                Panel {
                    title: (*title).into(),
                    lines: vec![
                        Line {
                            label: "direct".into(),
                            color: DIRECT_COLOR,
                            points: d,
                        },
                        Line {
                            label: "ours".into(),
                            color: OURS_COLOR,
                            points: o,
                        },
                    ],
                }
            })
            .collect();
        let title = format!(
            "Latency distributions, direct vs ours (median of {} rounds per percentile)",
            self.options.rounds
        );
        crate::bench_chart::svg(&title, &panels)
    }
}

/// The percentiles of the distributions in the JSON section.
const SUMMARY: [f64; 11] = [
    1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9,
];

/// The latency measures the chart and `distributions_us` show, with their titles.
const CHARTED: [(&str, &str); 4] = [
    ("keepalive", "Intercepted keep-alive request, 1 KiB"),
    ("new_conn", "New connection + request (intercept)"),
    ("udp", "UDP echo (outbound path)"),
    ("dns", "DNS lookup of a cluster name"),
];

/// The section's table.
pub fn table(rows: &[PathRow]) -> String {
    let mut out = format!(
        "{:<38} {:>14} {:>14} {:>14}  {:<18} met\n",
        "metric", "direct", "ours", "ours vs direct", "target"
    );
    for r in rows {
        let met = match r.met {
            Some(true) => "✔",
            Some(false) => "✘",
            None => "",
        };
        out.push_str(&format!(
            "{:<38} {:>14} {:>14} {:>14}  {:<18} {met}\n",
            r.metric, r.direct, r.ours, r.versus, r.target
        ));
    }
    for r in rows {
        if let Some(note) = &r.note {
            out.push_str(&format!("✘ {}: {note}\n", r.metric));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            rounds: 3,
            requests: 1000,
            stream_mib: 64,
            streams: 100,
        }
    }

    #[test]
    fn every_spec_names_a_measure() {
        let keys: Vec<String> = measures(&options()).into_iter().map(|m| m.key).collect();
        for (label, key, ..) in specs(&options()) {
            assert!(keys.contains(&key), "{label}: no measure {key}");
        }
        for (key, _) in CHARTED {
            assert!(keys.iter().any(|k| k == key), "chart: no measure {key}");
        }
    }

    #[test]
    fn measures_compare_the_same_client() {
        for m in measures(&options()) {
            assert_eq!(m.direct.len(), m.ours.len(), "{}", m.key);
            assert_eq!(m.direct[0], m.ours[0], "{}", m.key);
            if m.via == Via::Intercept {
                assert!(m.direct.iter().any(|a| a == DIRECT), "{}", m.key);
                assert!(m.ours.iter().any(|a| a == INTERCEPTED), "{}", m.key);
            } else {
                assert_eq!(m.direct, m.ours, "{}: same target, other container", m.key);
            }
        }
        let n = measures(&options());
        let many = n.iter().find(|m| m.key == "out_up_n").unwrap();
        assert!(many.load && many.ours.contains(&"--up".to_string()));
        // 100 streams move twice the one-stream bytes in all: 128 MiB / 100, at least 1 MiB.
        assert!(many.ours.contains(&(128 * 1024 * 1024 / 100).to_string()));
    }

    fn results() -> PathResults {
        let mut rounds = Rounds::default();
        let lat = |p50: f64| json!({"p50_us": p50, "p99_us": p50 * 2.0, "percentiles": [[50.0, p50], [99.0, p50 * 2.0]]});
        for (d, o) in [(100.0, 140.0), (110.0, 300.0), (90.0, 130.0)] {
            let e = rounds.runs.entry("keepalive".into()).or_default();
            e.0.push(lat(d));
            e.1.push(lat(o));
            let e = rounds.runs.entry("out_down_1".into()).or_default();
            e.0.push(json!({"gbit_per_s": d / 10.0}));
            e.1.push(json!({"gbit_per_s": o / 40.0}));
            let e = rounds.runs.entry("out_up_n".into()).or_default();
            e.0.push(json!({"gbit_per_s": 10.0}));
            e.1.push(json!({"gbit_per_s": 9.0}));
        }
        rounds.runs.get_mut("out_up_n").unwrap().1[1] = json!({"error": "connect: timed out"});
        rounds.load_rss = vec![BTreeMap::from([("daemon", 20.0)]); 3];
        PathResults {
            options: options(),
            rounds,
            connect_s: vec![1.0, 0.8, 1.2],
            image_mb: 19.0,
            idle_rss: BTreeMap::from([("daemon", 8.0)]),
        }
    }

    #[test]
    fn medians_of_rounds_and_targets() {
        let r = results();
        let (row, doc) = spec_row(&r, &specs(&r.options)[0]);
        // Medians 100 and 140: +40 µs is within +50 µs.
        assert_eq!(
            (row.direct.as_str(), row.ours.as_str()),
            ("100 µs", "140 µs")
        );
        assert_eq!((row.versus.as_str(), row.met), ("+40 µs", Some(true)));
        assert_eq!(doc["rounds"]["ours"], json!([140.0, 300.0, 130.0]));
        let spec = specs(&r.options)
            .into_iter()
            .find(|s| s.1 == "out_down_1")
            .unwrap();
        let (row, _) = spec_row(&r, &spec);
        // 3.5 of 10 Gbit/s: 35 %, under 80 %.
        assert_eq!((row.versus.as_str(), row.met), ("35 %", Some(false)));
        // One failed run of three: the median of the other two, the target missed, a note.
        let spec = specs(&r.options)
            .into_iter()
            .find(|s| s.1 == "out_up_n")
            .unwrap();
        let (row, doc) = spec_row(&r, &spec);
        assert_eq!((row.ours.as_str(), row.met), ("9.00 Gbit/s", Some(false)));
        let note = row.note.unwrap();
        assert!(note.contains("1 of 3 ours runs failed") && note.contains("timed out"));
        assert_eq!(doc["failed"]["ours"], json!(["connect: timed out"]));
        let (d, o) = r.rounds.distribution("keepalive");
        assert_eq!(d, vec![[50.0, 100.0], [99.0, 200.0]]);
        assert_eq!(o, vec![[50.0, 140.0], [99.0, 280.0]]);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn table_marks_targets() {
        let rows = vec![
            own_row("a", "1".into(), "≤ 2", Some(true)),
            own_row("b", "3".into(), "≤ 2", Some(false)),
            own_row("c", "3".into(), "-", None),
        ];
        let t = table(&rows);
        assert_eq!(t.lines().count(), 4);
        assert!(t.lines().nth(1).unwrap().ends_with('✔'));
        assert!(t.lines().nth(2).unwrap().ends_with('✘'));
    }
}
