//! The path section of the benchmark (`tp-bench`, alone with `--only-paths`): what a request,
//! a new connection, a byte, a datagram and a lookup cost on our paths against the same client
//! on the direct path, measured from inside containers with the test app, in interleaved rounds
//! (direct, ours, direct, ours …); each figure is the median of its rounds, so a burst of load on
//! this shared machine hits both alike. It owns the measures and their rounds, the resident
//! memory of each role (`rss.rs`), the table rows with their targets, the JSON section and the
//! chart data (`report.rs`).
//!
//! - Intercept path: the project's `caller` → `web:8080` (captured by the agent) → the
//!   manager's in-kernel forward (or its relay, where it cannot forward) → the handler; direct:
//!   `caller` → the same app's uncaptured port `web:8081`. After the intercept ends, the agent's
//!   hop alone (`web:8080` captured and relayed to the app) is measured the same way, so the
//!   cost of each hop can be told apart.
//! - Kernel floor of the intercept path (`floor.rs`): `caller` → `web:8082`, which nf_tables
//!   rules alone carry through the manager's address to the handler, the same hops with no
//!   process of ours: what the topology costs whatever runs on it (root, `nsenter` and `nft`
//!   needed; without them the rows are left out with a printed reason).
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

use crate::bench_outbound::{exec_json_in, f};
use crate::harness::{docker, images, User};
use crate::stack::Project;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

mod floor;
mod report;
mod rss;

pub use report::{table, PathRow};
pub use rss::{container_pid, tree_rss_kib};
use rss::{peak_while, Roles};

/// The workload: HTTP on the captured service port 8080 and on the uncaptured 8081, UDP echo on
/// 9000 (not a service port either).
const WEB: &str = "  web:\n    image: @APP@\n    command: [\"serve\", \"--http\", \"8080\", \"--http\", \"8081\", \"--udp\", \"9000\", \"--name\", \"web\"]\n    expose: [\"8080\"]\n";
const INTERCEPTED: &str = "http://web:8080/";
const DIRECT: &str = "http://web:8081/";
/// The handler's port in the daemon's namespace (the intercept's local port).
const HANDLER_PORT: u16 = 9090;
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

/// Who runs a measure's "ours" client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// `caller`, through the intercepted port.
    Intercept,
    /// The `docker-run` container on the connection.
    Outbound,
    /// `caller`, through the kernel floor of the intercept path (`floor.rs`).
    Floor,
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

/// Every measure of a round, in the order they run; those of the kernel floor when `floor`.
fn measures(o: &Options, floor: bool) -> Vec<Measure> {
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
            Via::Floor => make(&floor::url()),
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
    let new_conn = |u: &str| args(&["bench-client", u, "--new-conn", "--requests", &fifth]);
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
    let mut paths = vec![(Via::Intercept, "icpt"), (Via::Outbound, "out")];
    if floor {
        paths.insert(1, (Via::Floor, "floor"));
    }
    for (via, prefix) in [(Via::Intercept, ""), (Via::Floor, "floor_")] {
        if via == Via::Floor && !floor {
            continue;
        }
        add(format!("{prefix}keepalive"), via, &keep, false);
        add(format!("{prefix}new_conn"), via, &new_conn, false);
        add(format!("{prefix}rps"), via, &rps, false);
    }
    for (via, path) in paths {
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
                let load = many && via != Via::Floor;
                add(format!("{path}_{way}_{count}"), via, &make, load);
            }
        }
    }
    let udp = |_: &str| args(&["udp-echo-bench", UDP_TARGET, "--count", &fifth]);
    add("udp".into(), Via::Outbound, &udp, false);
    let dns = |_: &str| args(&["lookup-bench", "web", "--count", &fifth]);
    add("dns".into(), Via::Outbound, &dns, false);
    v
}

/// The measures of the agent's hop alone, run after the intercept ended: the agent still
/// captures `web:8080` and splices each connection to the app, so against direct this is what
/// the agent's redirect and relay cost, and the intercept's figures minus these are what the
/// manager's and the daemon's hops (and the handler's container) add.
fn agent_measures(o: &Options) -> Vec<Measure> {
    let fifth = (o.requests / 5).max(100).to_string();
    let reqs = o.requests.to_string();
    let keep = |u: &str| args(&["bench-client", u, "--requests", &reqs, "--size", "1024"]);
    let new_conn = |u: &str| args(&["bench-client", u, "--new-conn", "--requests", &fifth]);
    [
        ("agent_keepalive", &keep as &dyn Fn(&str) -> Vec<String>),
        ("agent_new_conn", &new_conn),
    ]
    .into_iter()
    .map(|(key, make)| Measure {
        key: key.into(),
        via: Via::Intercept,
        direct: make(DIRECT),
        ours: make(INTERCEPTED),
        load: false,
    })
    .collect()
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
fn round(measures: Vec<Measure>, caller: &str, outbound: &str, roles: &Roles, acc: &mut Rounds) {
    let mut peak: BTreeMap<&'static str, f64> = BTreeMap::new();
    for m in measures {
        let d = answer(&m.key, "direct", exec_json_in(caller, &m.direct));
        let who = if m.via == Via::Outbound {
            outbound
        } else {
            caller
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

impl Running<'_> {
    /// Ends the intercept (its handler stops, the intercept command exits); the agent stays.
    fn end_intercept(&mut self) {
        let handler = format!("intercept-web-{HANDLER_PORT}");
        let _ = docker(&["stop", "-t", "1", &handler]);
        if let Some(mut c) = self.intercept.take() {
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.outbound]);
        self.end_intercept();
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

/// Starts the intercept of `web:8080` (handler on [`HANDLER_PORT`]) and the outbound client
/// container.
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
        user.intercept_cmd(p, "web", HANDLER_PORT, 8080, &[], &[], "handler")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    p.wait_for(INTERCEPTED, "handler", Duration::from_secs(30))?;
    // Warm up the outbound path (first dial, first lookup of another name) and give the
    // measured destination the in-kernel forward its first answered connection earns
    // (daemon-image/src/kernel_fwd.rs), as any developer's second request to it has.
    exec_json_in(
        &outbound,
        &args(&["lookup-bench", "caller", "--count", "10"]),
    )?;
    exec_json_in(
        &outbound,
        &args(&["bench-client", DIRECT, "--requests", "10", "--size", "1024"]),
    )?;
    std::thread::sleep(Duration::from_millis(500));
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
    let floor = floor::Floor::install(&p.container("web")?, HANDLER_PORT)
        .map_err(|e| eprintln!("paths: no kernel floor of the intercept path: {e:#}"))
        .ok();
    let mut rounds = Rounds::default();
    for r in 0..o.rounds.max(1) {
        eprintln!("paths: round {}/{}", r + 1, o.rounds.max(1));
        let m = measures(o, floor.is_some());
        round(m, &caller, &running.outbound, &roles, &mut rounds);
    }
    drop(floor);
    let mut running = running;
    running.end_intercept();
    p.wait_for(INTERCEPTED, "web", t)?;
    for r in 0..o.rounds.max(1) {
        eprintln!(
            "paths: agent hop alone, round {}/{}",
            r + 1,
            o.rounds.max(1)
        );
        round(
            agent_measures(o),
            &caller,
            &running.outbound,
            &roles,
            &mut rounds,
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What the report's tests start from.
    pub fn options() -> Options {
        Options {
            rounds: 3,
            requests: 1000,
            stream_mib: 64,
            streams: 100,
        }
    }

    /// The keys of every measure.
    pub fn measure_keys() -> Vec<String> {
        measures(&options(), true)
            .into_iter()
            .chain(agent_measures(&options()))
            .map(|m| m.key)
            .collect()
    }

    #[test]
    fn measures_compare_the_same_client() {
        for m in measures(&options(), true) {
            assert_eq!(m.direct.len(), m.ours.len(), "{}", m.key);
            assert_eq!(m.direct[0], m.ours[0], "{}", m.key);
            let floor_url = floor::url();
            let ours = match m.via {
                Via::Intercept => INTERCEPTED,
                Via::Floor => floor_url.as_str(),
                Via::Outbound => {
                    assert_eq!(m.direct, m.ours, "{}: same target, other container", m.key);
                    continue;
                }
            };
            assert!(m.direct.iter().any(|a| a == DIRECT), "{}", m.key);
            assert!(m.ours.iter().any(|a| a == ours), "{}", m.key);
        }
        let keys = |floor| measures(&options(), floor).into_iter().map(|m| m.key);
        let floor_keys: Vec<String> = keys(true)
            .filter(|k| !keys(false).any(|x| &x == k))
            .collect();
        assert_eq!(floor_keys.len(), 7, "{floor_keys:?}");
        assert!(
            floor_keys.iter().all(|k| k.starts_with("floor_")),
            "{floor_keys:?}"
        );
        let n = measures(&options(), false);
        let many = n.iter().find(|m| m.key == "out_up_n").unwrap();
        assert!(many.load && many.ours.contains(&"--up".to_string()));
        // 100 streams move twice the one-stream bytes in all: 128 MiB / 100, at least 1 MiB.
        assert!(many.ours.contains(&(128 * 1024 * 1024 / 100).to_string()));
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }
}
