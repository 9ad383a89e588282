//! Driving the binaries under test: where they are, whether an engine can run end-to-end tests
//! (`engine_available`, `skip` and its `TP_SKIP_LOG`), `docker` one-liners, the images built once
//! per process, a sandboxed CLI user (`User`) and its runs (`Run`), and waiting on processes and
//! conditions.

use crate::leftovers::assert_clean;
use crate::stack::Project;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where cargo put the statically linked binaries: `TP_BIN_DIR`, else the release directory of
/// this workspace's target, else the debug one.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("TP_BIN_DIR") {
        return PathBuf::from(d);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"))
        .join("x86_64-unknown-linux-gnu");
    for profile in ["ci", "release", "debug"] {
        let d = target.join(profile);
        if d.join("telepresence").exists() && d.join("tp-testapp").exists() {
            return d;
        }
    }
    target.join("release")
}

/// The `telepresence` binary under test.
pub fn tp_bin() -> PathBuf {
    bin_dir().join("telepresence")
}

/// The test app binary.
pub fn testapp_bin() -> PathBuf {
    bin_dir().join("tp-testapp")
}

/// Whether end-to-end tests can run. Without an engine: under `CI=true` this panics with a clear
/// message; otherwise it prints why the test is skipped and returns false.
pub fn engine_available() -> bool {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        for b in [tp_bin(), testapp_bin()] {
            assert!(
                b.exists(),
                "{} is missing: build the binaries first (`cargo build --release --bins`, as scripts/test.sh does)",
                b.display()
            );
        }
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but no Docker engine answers `docker info`: end-to-end tests need a running engine");
    }
    skip("no Docker engine answers `docker info`; end-to-end tests need one");
    false
}

/// Reports a test that returns without checking anything: `SKIPPED: <reason>` on stderr, and a
/// line in the file `TP_SKIP_LOG` names (scripts/test.sh lists those after the run, because a
/// returning test shows as "ok" in cargo's summary).
pub fn skip(reason: &str) {
    eprintln!("SKIPPED: {reason}");
    if let Ok(path) = std::env::var("TP_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{reason}");
        }
    }
}

/// Runs `docker <args>` and returns its output; fails with its stderr when it fails.
pub fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .context("running docker")?;
    if !out.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Starts the test app as a `sidecar` inside `container` (in its network namespace), listening
/// on that namespace's localhost only, with `listeners` (e.g. `["--http", "7070"]`).
pub fn sidecar_on_localhost(container: &str, listeners: &[&str]) -> Result<String> {
    let mut args = vec![
        "exec",
        "-d",
        container,
        "/tp-testapp",
        "serve",
        "--bind",
        "127.0.0.1",
    ];
    args.extend_from_slice(listeners);
    args.extend_from_slice(&["--name", "sidecar"]);
    docker(&args)
}

/// A container's address on the engine's default bridge.
pub fn bridge_ip(container: &str) -> Result<String> {
    docker(&[
        "inspect",
        "--format",
        "{{.NetworkSettings.Networks.bridge.IPAddress}}",
        container,
    ])
}

/// The daemon container of `user`'s connection, as `status --output json` names it.
pub fn daemon_container(user: &User) -> Result<String> {
    let st = user.tp(&["status", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&st.stdout)
        .map_err(|e| anyhow::anyhow!("status --output json: {e}: {}", st.stdout))?;
    find_key(&v, "container")
        .ok_or_else(|| anyhow::anyhow!("no daemon container in status: {}", st.stdout))
}

fn find_key(v: &serde_json::Value, key: &str) -> Option<String> {
    match v {
        serde_json::Value::Object(m) => m
            .get(key)
            .and_then(|x| x.as_str().map(str::to_string))
            .or_else(|| m.values().find_map(|x| find_key(x, key))),
        serde_json::Value::Array(a) => a.iter().find_map(|x| find_key(x, key)),
        _ => None,
    }
}

/// `nft <args>` in a container's network namespace, run from the host with `nsenter` (needs
/// root and Debian's `nftables`, which `.ci/run` installs): what the kernel holds there,
/// whatever wrote it.
pub fn nft_in(container: &str, args: &[&str]) -> Result<String> {
    netns_run(container, "nft", args)
}

/// A host program run in a container's network namespace with `nsenter` (needs root); its
/// standard output, or an error with its standard error.
pub fn netns_run(container: &str, program: &str, args: &[&str]) -> Result<String> {
    let pid = docker(&["inspect", container, "--format", "{{.State.Pid}}"])?;
    let out = Command::new("nsenter")
        .args(["-t", &pid, "-n", program])
        .args(args)
        .output()
        .context("nsenter")?;
    anyhow::ensure!(
        out.status.success(),
        "nsenter -t {pid} -n {program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds (once per process) the images of the test app and of telepresence, returning their
/// tags (testapp, telepresence).
pub fn images() -> &'static (String, String) {
    static IMAGES: OnceLock<(String, String)> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let d = docker::engine::connect().await.expect("engine");
            let mut quiet = |_: &str| {};
            let app = docker::image::ensure_image(&d, "tp-testapp", &testapp_bin(), &mut quiet)
                .await
                .expect("test app image");
            let tp =
                docker::image::ensure_image(&d, cli::connect::IMAGE_REPO, &tp_bin(), &mut quiet)
                    .await
                    .expect("telepresence image");
            (app, tp)
        })
    })
}

/// The result of one CLI run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The outcome of a finished process.
    pub fn from_output(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).to_string(),
            stderr: String::from_utf8_lossy(&o.stderr).to_string(),
        }
    }
    /// Panics with the whole output unless the command succeeded.
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "command failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// A sandboxed user of the CLI: its own cache dir so connections of parallel runs don't mix.
pub struct User {
    pub home: PathBuf,
}

impl User {
    pub fn new() -> User {
        let home = std::env::temp_dir().join(format!("tp-user-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&home).expect("user home");
        User { home }
    }

    /// A new user connected to project `p` (`connect`).
    pub fn connected(p: &Project) -> User {
        let user = User::new();
        user.connect(p);
        user
    }

    /// The command, with this user's environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(tp_bin());
        c.args(args)
            .env("HOME", &self.home)
            .env("XDG_CACHE_HOME", self.home.join(".cache"))
            .env("KUBECONFIG", self.home.join("no-kubeconfig"))
            .env_remove("RUST_LOG");
        c
    }

    /// `telepresence intercept <workload> -n <ns> --port <local>:<remote> <flags…> --docker-run --
    /// <run…> <test app> serve --http <local> --name <name>`: a handler of our test app that
    /// answers `GET /` with `name`.
    #[allow(clippy::too_many_arguments)]
    pub fn intercept_cmd(
        &self,
        p: &Project,
        workload: &str,
        local: u16,
        remote: u16,
        flags: &[&str],
        run: &[&str],
        name: &str,
    ) -> Command {
        let (app, _) = images();
        let (port, local) = (format!("{local}:{remote}"), local.to_string());
        let mut args = vec!["intercept", workload, "-n", &p.name, "--port", &port];
        args.extend_from_slice(flags);
        args.extend(["--docker-run", "--"]);
        args.extend_from_slice(run);
        args.extend([app.as_str(), "serve", "--http", &local, "--name", name]);
        self.command(&args)
    }

    /// `telepresence connect --cluster-type docker -n <project>`, to completion, which must succeed.
    pub fn connect(&self, p: &Project) -> Run {
        self.connect_with(p, &[]).ok()
    }

    /// `telepresence connect --cluster-type docker -n <project> <extra…>`, to completion.
    pub fn connect_with(&self, p: &Project, extra: &[&str]) -> Run {
        let mut args = vec!["connect", "--cluster-type", "docker", "-n", &p.name];
        args.extend_from_slice(extra);
        self.tp(&args)
    }

    /// `telepresence connect --docker --cluster-type docker -n <project> <extra…>`, to completion.
    pub fn connect_docker(&self, p: &Project, extra: &[&str]) -> Run {
        let mut args = vec![
            "connect",
            "--docker",
            "--cluster-type",
            "docker",
            "-n",
            &p.name,
        ];
        args.extend_from_slice(extra);
        self.tp(&args)
    }

    /// `telepresence intercept <name> -n <project> <flags…>`, to completion.
    pub fn intercept(&self, p: &Project, name: &str, flags: &[&str]) -> Run {
        let mut args = vec!["intercept", name, "-n", &p.name];
        args.extend_from_slice(flags);
        self.tp(&args)
    }

    /// `telepresence quit -s`, which must succeed, then nothing of ours may be left
    /// (`assert_clean`, saying `after`).
    pub fn quit_clean(&self, after: &str) {
        self.tp(&["quit", "-s"]).ok();
        assert_clean(after);
    }

    /// Runs `telepresence <args>` to completion.
    pub fn tp(&self, args: &[&str]) -> Run {
        Run::from_output(self.command(args).output().expect("run telepresence"))
    }
}

impl Default for User {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = self.tp(&["quit", "-s"]);
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// The value of `key` in a padded `key : value` block (the CLI's status output).
pub fn kv(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// Starts `c` with its stdout and stderr piped (read them with [`output_of`]).
pub fn spawn_piped(mut c: Command) -> Child {
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn intercept")
}

/// Waits for `child` to exit; panics after `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        assert!(
            start.elapsed() < timeout,
            "intercept process did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The (stdout, stderr) of a child started by [`spawn_piped`], once it has exited.
pub fn output_of(child: Child) -> (String, String) {
    let o = child.wait_with_output().expect("output");
    (
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// Polls `f` every 50 ms until it holds; panics with `what` after `timeout`. Returns how long it
/// took.
pub fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}
