//! The fault suite, shared by `tests/tests/faults.rs` (which asserts that no request failed)
//! and the benchmark's "faults" section (which prints how long each fault took to settle): a
//! steady caller ([`Load`], the test app's `steady` command inside the project network) sends a
//! request every 25 ms to an intercepted service while one thing fails at a time
//! ([`run_suite`]); every request is counted and attributed to the fault during which it
//! completed.

use crate::harness::{bridge_ip, daemon_container, docker, spawn_piped, wait_exit, User};
use crate::stack::Project;
use anyhow::{anyhow, bail, Result};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long any fault may take to settle before the suite gives up.
const SETTLE_LIMIT: Duration = Duration::from_secs(40);
/// Consecutive answers from one side that count as settled on it.
const STEADY: usize = 8;

/// One completed request, as the caller reported it.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When its line arrived, since the load started.
    pub at: Duration,
    /// `Some(body)` for a 2xx answer, `None` for a failure.
    pub body: Option<String>,
    /// The caller's line.
    pub line: String,
    /// For a failure: when the request began (ms since the Unix epoch).
    pub started: Option<u128>,
}

/// Failed requests a fault's outcome counts apart, because nothing of ours could have saved
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apart {
    /// None: every failure counts.
    Nothing,
    /// Failures while the workload itself was down (its own restart).
    WorkloadDown,
    /// Requests already under way through a process that was SIGKILLed: their connection was a
    /// socket of that process and died with it. Requests begun after the kill must all succeed.
    CutInFlight,
}

/// When the workload itself was down (its own restart): a failed request is its own, not ours,
/// if it completed within `completed` (it was under way when the workload went) or began within
/// `started` (it met the workload down, and may have hung until its timeout, long after).
#[derive(Debug, Clone, Copy)]
struct Down {
    /// On the load's clock ([`Load::now`]).
    completed: (Duration, Duration),
    /// In ms since the Unix epoch (the clock of [`Sample::started`]).
    started: (u128, u128),
}

impl Down {
    fn covers(&self, s: &Sample) -> bool {
        let (a, b) = self.completed;
        (s.at >= a && s.at <= b) || self.began_in(s)
    }

    /// Whether the failed request `s` began while the workload was down.
    fn began_in(&self, s: &Sample) -> bool {
        let (sa, sb) = self.started;
        s.started.is_some_and(|t| t >= sa && t <= sb)
    }
}

/// A steady caller inside the project network.
pub struct Load {
    child: Child,
    stdin: Option<ChildStdin>,
    samples: Arc<Mutex<Vec<Sample>>>,
    sent: Arc<Mutex<Option<usize>>>,
    start: Instant,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Starts `tp-testapp steady <url>` in the project's caller container.
    pub fn start(p: &Project, url: &str) -> Result<Load> {
        let caller = p.container("caller")?;
        let mut child = Command::new("docker")
            .args(["exec", "-i", &caller, "/tp-testapp", "steady", url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let sent: Arc<Mutex<Option<usize>>> = Arc::default();
        let start = Instant::now();
        let (s2, d2) = (samples.clone(), sent.clone());
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("done ") {
                    *d2.lock().unwrap() = n.trim().parse().ok();
                    continue;
                }
                let body = line.strip_prefix("ok ").map(str::to_string);
                let started = line
                    .strip_prefix(crate::testapp_steady::ERR_START)
                    .and_then(|rest| rest.split(' ').next())
                    .and_then(|ms| ms.parse().ok());
                s2.lock().unwrap().push(Sample {
                    at: start.elapsed(),
                    body,
                    line,
                    started,
                });
            }
        });
        Ok(Load {
            stdin: child.stdin.take(),
            child,
            samples,
            sent,
            start,
            reader: Some(reader),
        })
    }

    /// Time since the load started (the clock of [`Sample::at`]).
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// How many requests have completed.
    pub fn count(&self) -> usize {
        self.samples.lock().unwrap().len()
    }

    /// Waits until [`STEADY`] consecutive answers that completed after `since` are `want`;
    /// returns when the first of them arrived.
    pub fn wait_steady(&self, since: Duration, want: &str) -> Result<Duration> {
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            {
                let s = self.samples.lock().unwrap();
                let after: Vec<&Sample> = s.iter().filter(|x| x.at >= since).collect();
                let run = after
                    .iter()
                    .rev()
                    .take_while(|x| x.body.as_deref() == Some(want))
                    .count();
                if run >= STEADY {
                    return Ok(after[after.len() - run].at);
                }
            }
            if Instant::now() > deadline {
                let s = self.samples.lock().unwrap();
                let tail: Vec<&str> = s.iter().rev().take(5).map(|x| x.line.as_str()).collect();
                bail!("the load did not settle on {want:?} within {SETTLE_LIMIT:?}; last answers (newest first): {tail:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until an answer other than `not` (a failure or another body) completed after
    /// `since`: the fault took effect.
    pub fn wait_change(&self, since: Duration, not: &str) -> Result<()> {
        let deadline = Instant::now() + SETTLE_LIMIT;
        while Instant::now() < deadline {
            if self
                .samples
                .lock()
                .unwrap()
                .iter()
                .any(|x| x.at >= since && x.body.as_deref() != Some(not))
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the answers never stopped being {not:?}")
    }

    /// The samples with index in `range` (completion order).
    pub fn samples(&self, range: std::ops::Range<usize>) -> Vec<Sample> {
        self.samples.lock().unwrap()[range].to_vec()
    }

    /// Stops sending, waits for the requests in flight and returns (all samples, requests
    /// the caller says it sent).
    pub fn stop(mut self) -> Result<(Vec<Sample>, usize)> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        anyhow::ensure!(status.success(), "the steady caller failed: {status}");
        let sent = self.sent.lock().unwrap().unwrap_or(0);
        Ok((self.samples.lock().unwrap().clone(), sent))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one fault did to the callers.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The fault.
    pub fault: &'static str,
    /// Requests that completed while it was measured.
    pub requests: usize,
    /// Those that failed (connection refused or reset, empty answer, timeout, non-2xx).
    pub failed: Vec<String>,
    /// Requests that failed while the workload itself was down (a restart), not counted above.
    pub workload_down: usize,
    /// Requests under way through a SIGKILLed process, which died with it; not counted above.
    pub cut_in_flight: usize,
    /// Failed requests the fault may cost, in percent of `requests` (0 but for a network cut,
    /// during which a dial the agent already started can time out).
    pub tolerance_pct: usize,
    /// From the fault (or, for a restart, the workload being back) until the answers settled.
    pub settle: Duration,
    /// Who answers once settled: `handler` or the original `web`.
    pub settled_on: &'static str,
}

/// The shared stack of the suite: project, connected user, the caller's load.
pub struct Suite<'a> {
    pub p: &'a Project,
    pub user: &'a User,
    pub load: Load,
    /// Index of the first sample not yet attributed to a fault.
    mark: usize,
    /// Every workload downtime so far: a request that began in one and failed only after its
    /// fault was measured (a 5 s timeout) is still the workload's own.
    downs: Vec<Down>,
    handler: Option<Child>,
}

/// The service the suite intercepts and how.
const WORKLOAD: &str = "web";
const URL: &str = "http://web:8080/";
const HANDLER_PORT: u16 = 9090;
const HANDLER: &str = "handler";
const ORIGINAL: &str = "web";

impl<'a> Suite<'a> {
    /// Connects `user` to `p` and starts the load (which must be answered by the original).
    pub fn start(p: &'a Project, user: &'a User) -> Result<Suite<'a>> {
        p.wait_for(URL, ORIGINAL, SETTLE_LIMIT)?;
        user.connect(p);
        let load = Load::start(p, URL)?;
        let t0 = load.now();
        load.wait_steady(t0, ORIGINAL)?;
        let mark = load.count();
        Ok(Suite {
            p,
            user,
            load,
            mark,
            handler: None,
            downs: Vec::new(),
        })
    }

    /// Attributes the samples completed since the last call (after waiting `grace` for the
    /// requests still in flight) to `fault`; `down` is the part of the window during which the
    /// workload itself was down, `killed_at` when a process was SIGKILLed (ms since the Unix
    /// epoch, taken once the kill returned).
    fn outcome(
        &mut self,
        fault: &'static str,
        down: Option<Down>,
        killed_at: Option<u128>,
        settle: Duration,
        settled_on: &'static str,
    ) -> Outcome {
        std::thread::sleep(Duration::from_millis(200));
        let end = self.load.count();
        let samples = self.load.samples(self.mark..end);
        self.mark = end;
        if let Some(d) = down {
            self.downs.push(d);
        }
        let downs = &self.downs;
        let in_down =
            |s: &Sample| down.is_some_and(|d| d.covers(s)) || downs.iter().any(|d| d.began_in(s));
        let cut = |s: &Sample| {
            killed_at.is_some_and(|k| s.started.is_some_and(|b| b <= k)) && !in_down(s)
        };
        let cut_in_flight = samples
            .iter()
            .filter(|s| s.body.is_none() && cut(s))
            .count();
        let failed: Vec<String> = samples
            .iter()
            .filter(|s| s.body.is_none() && !in_down(s) && !cut(s))
            .map(|s| format!("{:.3}s {}", s.at.as_secs_f64(), s.line))
            .collect();
        let workload_down = samples
            .iter()
            .filter(|s| s.body.is_none() && in_down(s))
            .count();
        Outcome {
            fault,
            requests: samples.len() - workload_down - cut_in_flight,
            failed,
            workload_down,
            cut_in_flight,
            tolerance_pct: 0,
            settle,
            settled_on,
        }
    }

    /// Starts the intercept with its handler; the measured fault "intercept start".
    pub fn intercept(&mut self, fault: &'static str) -> Result<Outcome> {
        let t0 = self.load.now();
        let child = spawn_piped(self.user.intercept_cmd(
            self.p,
            WORKLOAD,
            HANDLER_PORT,
            8080,
            &[],
            &[],
            HANDLER,
        ));
        self.handler = Some(child);
        let at = self.load.wait_steady(t0, HANDLER)?;
        Ok(self.outcome(fault, None, None, at.saturating_sub(t0), HANDLER))
    }

    /// Waits for the intercept command to end (its handler is gone).
    fn reap_handler(&mut self) {
        if let Some(mut c) = self.handler.take() {
            if c.try_wait().ok().flatten().is_none() {
                let exited = wait_or_kill(&mut c, Duration::from_secs(10));
                if !exited {
                    eprintln!("the intercept command did not end by itself; killed it");
                }
            }
        }
    }

    /// Something happens (`act`) that should send the callers back to the original.
    pub fn to_original(
        &mut self,
        fault: &'static str,
        act: impl FnOnce(&Self) -> Result<()>,
    ) -> Result<Outcome> {
        let t0 = self.load.now();
        act(self)?;
        let at = self.load.wait_steady(t0, ORIGINAL)?;
        self.reap_handler();
        Ok(self.outcome(fault, None, None, at.saturating_sub(t0), ORIGINAL))
    }

    /// Something breaks (`act`) after which the intercept must resume by itself; the settle
    /// time runs from `act`'s return (for a workload restart: once the workload listens again,
    /// and failures until then are its own).
    /// `apart`: which failures are not ours to prevent.
    pub fn resumes(
        &mut self,
        fault: &'static str,
        apart: Apart,
        act: impl FnOnce(&Self) -> Result<()>,
    ) -> Result<Outcome> {
        let t0 = self.load.now();
        let t0_unix = crate::testapp_steady::unix_ms(std::time::SystemTime::now());
        act(self)?;
        if apart == Apart::WorkloadDown {
            // The engine says "started" before the app listens: the workload is down until
            // its port accepts connections again (refused until then, with or without us).
            self.wait_workload_listens()?;
        }
        let t1 = self.load.now();
        let killed_at = (apart == Apart::CutInFlight)
            .then(|| crate::testapp_steady::unix_ms(std::time::SystemTime::now()));
        // The fault took effect (the original answered, or the workload was down)…
        self.load.wait_change(t0, HANDLER)?;
        // …and the intercept routes again without anyone doing anything.
        let at = self.load.wait_steady(t1, HANDLER)?;
        let down = (apart == Apart::WorkloadDown).then(|| Down {
            completed: (t0, t1),
            started: (
                t0_unix,
                crate::testapp_steady::unix_ms(std::time::SystemTime::now()),
            ),
        });
        // `list` says what routes: the intercept is active again.
        let l = self.user.tp(&["list", "-n", &self.p.name]);
        anyhow::ensure!(
            l.stdout.contains("State         : ACTIVE"),
            "{fault}: routing again, but list says: {}{}",
            l.stdout,
            l.stderr
        );
        Ok(self.outcome(fault, down, killed_at, at.saturating_sub(t1), HANDLER))
    }

    /// Waits until the workload's service port accepts a connection (from the host, on the
    /// project network), as after its own restart.
    fn wait_workload_listens(&self) -> Result<()> {
        let id = self.p.container(WORKLOAD)?;
        let start = Instant::now();
        loop {
            let ip = docker(&[
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                &id,
            ])
            .unwrap_or_default();
            let listening = ip.split_whitespace().any(|ip| {
                ip.parse::<std::net::IpAddr>().is_ok_and(|ip| {
                    let to = std::net::SocketAddr::from((ip, 8080));
                    std::net::TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_ok()
                })
            });
            if listening {
                return Ok(());
            }
            if start.elapsed() > SETTLE_LIMIT {
                anyhow::bail!("{WORKLOAD} does not listen on 8080 again after its restart");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the load, checks that every request sent was counted, and returns the stragglers
    /// (requests that completed after the last fault) as an outcome of their own.
    pub fn finish(mut self) -> Result<Outcome> {
        let last = self.outcome("after the last fault", None, None, Duration::ZERO, ORIGINAL);
        self.reap_handler();
        let Suite { load, mark, .. } = self;
        let (samples, sent) = load.stop()?;
        anyhow::ensure!(
            samples.len() == sent,
            "the caller sent {sent} requests but reported {}",
            samples.len()
        );
        let late: Vec<String> = samples[mark..]
            .iter()
            .filter(|s| s.body.is_none())
            .map(|s| s.line.clone())
            .collect();
        let mut last = last;
        last.requests += samples.len() - mark;
        last.failed.extend(late);
        Ok(last)
    }
}

/// How long the network between the daemon and the manager is cut.
const CUT: Duration = Duration::from_secs(20);
/// How long the daemon container is frozen (a laptop asleep, in miniature).
const PAUSE: Duration = Duration::from_secs(10);

/// A cut network between a container and one address: every packet between them is dropped
/// (no reset, as when a laptop's network goes away) by an nftables table in the container's
/// network namespace, entered from the host with `nsenter`; the table goes when this is
/// dropped (or with the namespace).
struct NetworkCut {
    pid: String,
}

/// The nftables table of a [`NetworkCut`].
const CUT_TABLE: &str = "tp_fault_cut";

impl NetworkCut {
    fn start(container: &str, peer: &str) -> Result<NetworkCut> {
        let pid = docker(&["inspect", container, "--format", "{{.State.Pid}}"])?;
        let rules = format!(
            "table ip {CUT_TABLE} {{\n chain out {{ type filter hook output priority 0; ip daddr {peer} drop; }}\n chain in {{ type filter hook input priority 0; ip saddr {peer} drop; }}\n}}\n"
        );
        let mut c = Command::new("nsenter")
            .args(["-t", &pid, "-n", "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        c.stdin
            .take()
            .ok_or_else(|| anyhow!("no stdin"))?
            .write_all(rules.as_bytes())?;
        let out = c.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "cutting the network with nsenter + nft (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(NetworkCut { pid })
    }
}

impl Drop for NetworkCut {
    fn drop(&mut self) {
        let _ = Command::new("nsenter")
            .args([
                "-t", &self.pid, "-n", "nft", "delete", "table", "ip", CUT_TABLE,
            ])
            .status();
    }
}

/// Waits up to `limit` for `c` to exit, else kills it; whether it exited by itself.
fn wait_or_kill(c: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if c.try_wait().ok().flatten().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = wait_exit(c, Duration::from_secs(5));
    false
}

/// Every fault, one after the other, on one stack; the outcomes in order.
pub fn run_suite(p: &Project, user: &User) -> Result<Vec<Outcome>> {
    let mut s = Suite::start(p, user)?;
    let mut out = vec![s.intercept("intercept start")?];
    out.push(s.to_original("handler exits", |_| {
        docker(&["kill", &format!("intercept-{WORKLOAD}-{HANDLER_PORT}")]).map(drop)
    })?);
    s.intercept("(intercept again)")?;
    out.push(s.to_original("leave", |s| {
        s.user.tp(&["leave", WORKLOAD]).ok();
        Ok(())
    })?);
    s.intercept("(intercept again)")?;
    let agent = docker::provider::agent_name(&p.name, WORKLOAD, 1);
    out.push(s.resumes("agent killed", Apart::CutInFlight, |_| {
        docker(&["kill", &agent]).map(drop)
    })?);
    out.push(s.resumes("workload restarted", Apart::WorkloadDown, |s| {
        docker(&["restart", "-t", "1", &s.p.container(WORKLOAD)?]).map(drop)
    })?);
    out.push(s.resumes("workload recreated", Apart::WorkloadDown, |s| {
        s.p.compose(&["up", "-d", "--no-deps", "--force-recreate", WORKLOAD])
    })?);
    let manager = cli::connect::manager_container(&p.name);
    out.push(s.resumes("manager restarted", Apart::Nothing, |_| {
        docker(&["restart", "-t", "1", &manager]).map(drop)
    })?);
    let daemon = daemon_container(user)?;
    let mut cut = s.resumes("network cut 20 s", Apart::Nothing, |_| {
        let manager_ip = bridge_ip(&manager)?;
        let _cut = NetworkCut::start(&daemon, &manager_ip)?;
        // Long enough that the manager and the daemon both see each other gone.
        std::thread::sleep(CUT);
        Ok(())
    })?;
    cut.tolerance_pct = 1;
    out.push(cut);
    out.push(s.resumes("daemon paused 10 s", Apart::Nothing, |_| {
        docker(&["pause", &daemon])?;
        std::thread::sleep(PAUSE);
        docker(&["unpause", &daemon]).map(drop)
    })?);
    // The intercept command only waits for its handler, which outlives a killed daemon (in
    // the daemon's dead network namespace) until `quit -s`: stop waiting for it.
    if let Some(mut c) = s.handler.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    out.push(s.to_original("daemon killed", |_| docker(&["kill", &daemon]).map(drop))?);
    out.push(s.finish()?);
    Ok(out)
}

/// The outcomes as a table (fault, requests, failed, settle, settled on).
pub fn table(outcomes: &[Outcome]) -> String {
    let mut t = format!(
        "{:<22} {:>8} {:>7} {:>13} {:>13} {:>9}  settled on\n",
        "fault", "requests", "failed", "workload down", "cut in flight", "settle"
    );
    for o in outcomes {
        t.push_str(&format!(
            "{:<22} {:>8} {:>7} {:>13} {:>13} {:>8.2}s  {}\n",
            o.fault,
            o.requests,
            o.failed.len(),
            o.workload_down,
            o.cut_in_flight,
            o.settle.as_secs_f64(),
            o.settled_on
        ));
    }
    t
}
