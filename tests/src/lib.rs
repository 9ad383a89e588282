//! The end-to-end harness shared by the tests, the demo and the benchmark: finding the built
//! binaries, building their images once, compose projects of our test app, driving the real
//! `telepresence` CLI, making requests from inside a project network, and checking that nothing
//! of ours is left behind.

pub mod bench_outbound;
pub mod kube;
pub mod testapp;
pub mod testapp_h2;
pub mod testapp_load;
pub mod testapp_udp;

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
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
    for profile in ["release", "debug"] {
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

/// The compose command of this machine.
pub fn compose_cmd() -> Vec<String> {
    compose::compose_command().expect("neither `docker compose` nor `docker-compose` is installed")
}

/// A compose project of our test app: every service given runs `serve --http <port> --name
/// <service>`, plus a `caller` service to make requests from inside the network.
pub struct Project {
    pub name: String,
    dir: PathBuf,
}

impl Project {
    /// Starts a project whose services are `(name, port)`.
    pub fn up(services: &[(&str, u16)]) -> Result<Project> {
        let mut yaml = String::new();
        for (svc, port) in services {
            yaml.push_str(&format!(
                "  {svc}:\n    image: @APP@\n    command: [\"serve\", \"--http\", \"{port}\", \"--name\", \"{svc}\"]\n    expose: [\"{port}\"]\n    environment:\n      TP_APP_NAME: {svc}\n"
            ));
        }
        Self::up_with(&yaml, "")
    }

    /// Starts a project from the YAML of its services (indented under `services:`, `@APP@`
    /// standing for the test app image) and of its top-level volumes; a `caller` service is
    /// added to make requests from.
    pub fn up_with(services_yaml: &str, volumes_yaml: &str) -> Result<Project> {
        let (app, _) = images();
        let name = format!("tpt{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir)?;
        let mut yaml = String::from("version: \"3.7\"\nservices:\n");
        yaml.push_str(&services_yaml.replace("@APP@", app));
        yaml.push_str(&format!(
            "  caller:\n    image: {app}\n    command: [\"serve\", \"--name\", \"caller\"]\n"
        ));
        if !volumes_yaml.is_empty() {
            yaml.push_str("volumes:\n");
            yaml.push_str(volumes_yaml);
        }
        std::fs::write(dir.join("docker-compose.yml"), yaml)?;
        let p = Project { name, dir };
        p.compose(&["up", "-d"])?;
        Ok(p)
    }

    /// Runs a compose subcommand in the project.
    pub fn compose(&self, args: &[&str]) -> Result<()> {
        let cmd = compose_cmd();
        let out = Command::new(&cmd[0])
            .args(&cmd[1..])
            .args(["-p", &self.name, "-f"])
            .arg(self.dir.join("docker-compose.yml"))
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("compose {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// The container of a service (first replica).
    pub fn container(&self, service: &str) -> Result<String> {
        let id = docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.name),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ])?;
        id.lines()
            .next()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no container for {service}"))
    }

    /// `GET url` from inside the project network (via the caller container); the body or the error.
    pub fn get(&self, url: &str) -> Result<String> {
        self.request(url, None)
    }

    /// `PUT body` to url from inside the project network; the response body or the error.
    pub fn put(&self, url: &str, body: &str) -> Result<String> {
        self.request(url, Some(body))
    }

    fn request(&self, url: &str, put: Option<&str>) -> Result<String> {
        let caller = self.container("caller")?;
        let mut args = vec!["exec", &caller, "/tp-testapp", "get", url];
        if let Some(b) = put {
            args.extend(["--put", b]);
        }
        let out = Command::new("docker").args(&args).output()?;
        if !out.status.success() {
            bail!("get {url}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Polls `GET url` until the body equals `want`; returns how long it took.
    pub fn wait_for(&self, url: &str, want: &str, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < timeout {
            match self.get(url) {
                Ok(b) if b == want => return Ok(start.elapsed()),
                Ok(b) => last = format!("body {b:?}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{url} did not answer {want:?} within {timeout:?}; last: {last}")
    }

    /// Whether the traffic-agent's netfilter table exists in a service's network namespace
    /// (checked by our own binary in a one-shot container joined to it).
    pub fn has_agent_table(&self, service: &str) -> Result<bool> {
        let (_, tp) = images();
        let c = self.container(service)?;
        let out = Command::new("docker")
            .args([
                "run",
                "--rm",
                "--network",
                &format!("container:{c}"),
                "--cap-add",
                "NET_ADMIN",
                "--label",
                "telepresence.io/test-probe=1",
                tp,
                "agent-cleanup",
                "--check",
            ])
            .output()?;
        match out.status.code() {
            Some(0) => Ok(false),
            Some(3) => Ok(true),
            _ => bail!(
                "agent-cleanup --check: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "--remove-orphans", "-t", "1"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes a tree of `files` small files (in 100 directories) plus one file of `big` bytes into
/// `dir`; returns (regular files, total bytes).
pub fn make_tree(dir: &Path, files: usize, big: u64) -> Result<(u64, u64)> {
    use std::io::Write;
    let mut bytes = 0u64;
    for i in 0..files {
        let sub = dir.join(format!("d{:02}", i % 100));
        std::fs::create_dir_all(&sub)?;
        let body = format!("file number {i}\n");
        std::fs::write(sub.join(format!("f{i}.txt")), &body)?;
        bytes += body.len() as u64;
    }
    let mut n = 0;
    if big > 0 {
        let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("big.bin"))?);
        let chunk: Vec<u8> = (0..1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        let mut left = big;
        while left > 0 {
            let take = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..take])?;
            left -= take as u64;
        }
        f.flush()?;
        n = 1;
        bytes += big;
    }
    Ok((files as u64 + n, bytes))
}

/// Containers, networks and volumes carrying our label (names), for leak checks.
pub fn leftovers() -> Vec<String> {
    let mut v = Vec::new();
    for (what, args) in [
        // Containers we create carry a role label; the managed-by label alone would also match
        // the test project's containers, which inherit it from the test app's image.
        (
            "container",
            vec![
                "ps",
                "-a",
                "--filter",
                "label=telepresence.io/role",
                "--format",
                "{{.Names}}",
            ],
        ),
        (
            "container",
            vec![
                "ps",
                "-a",
                "--filter",
                "name=^tp-",
                "--format",
                "{{.Names}}",
            ],
        ),
        (
            "network",
            vec![
                "network",
                "ls",
                "--filter",
                "label=telepresence.io/managed-by",
                "--format",
                "{{.Name}}",
            ],
        ),
        (
            "volume",
            vec![
                "volume",
                "ls",
                "--filter",
                "label=telepresence.io/managed-by",
                "--format",
                "{{.Name}}",
            ],
        ),
    ] {
        if let Ok(out) = docker(&args) {
            v.extend(
                out.lines()
                    .filter(|l| !l.is_empty())
                    .map(|l| format!("{what} {l}")),
            );
        }
    }
    v.sort();
    v.dedup();
    v
}
