//! A dev project for `telepresence compose`: compose files (with `x-tele`) written to a
//! temporary directory, run through the real CLI as a user would, its containers found by
//! their compose labels, and requests made from inside them; dropping it runs
//! `telepresence compose down` and removes the directory.

use crate::harness::{docker, Run, User};
use anyhow::{anyhow, bail, Result};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A dev project directory and the name compose gives it.
pub struct DevProject {
    /// The project name (`-p`).
    pub name: String,
    /// Its directory.
    pub dir: PathBuf,
    files: Vec<String>,
}

impl DevProject {
    /// Writes `files` (name, text; `@APP@` standing for the test app image) into a new
    /// directory; the first names are passed with `-f` in order, unless `files` holds a
    /// default file name only.
    pub fn new(files: &[(&str, &str)]) -> DevProject {
        let (app, _) = crate::harness::images();
        let name = format!("tpdev{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).expect("dev dir");
        for (f, text) in files {
            std::fs::write(dir.join(f), text.replace("@APP@", app)).expect("dev file");
        }
        let files = files
            .iter()
            .map(|(f, _)| f.to_string())
            .filter(|f| f.ends_with(".yaml") || f.ends_with(".yml"))
            .collect();
        DevProject { name, dir, files }
    }

    /// `telepresence compose -p <name> -f <file>… <args…>` run by `user` in the project
    /// directory (so `.env` is read), not yet started.
    pub fn command(&self, user: &User, args: &[&str]) -> Command {
        let mut all = vec!["compose".to_string(), "-p".into(), self.name.clone()];
        for f in &self.files {
            all.extend(["-f".to_string(), f.clone()]);
        }
        all.extend(args.iter().map(std::string::ToString::to_string));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut c = user.command(&refs);
        c.current_dir(&self.dir);
        c
    }

    /// Runs `telepresence compose … <args…>` to completion.
    pub fn run(&self, user: &User, args: &[&str]) -> Run {
        Run::from_output(
            self.command(user, args)
                .output()
                .expect("telepresence compose"),
        )
    }

    /// The ids of the project's containers (any state).
    pub fn containers(&self) -> Vec<String> {
        docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.name),
        ])
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default()
    }

    /// The running container of `service`.
    pub fn container(&self, service: &str) -> Result<String> {
        crate::stack::service_containers(&self.name, service)?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("no running container of {service} in {}", self.name))
    }

    /// `GET url` from inside `service`'s container (the test app's client); the body.
    pub fn get_from(&self, service: &str, url: &str) -> Result<String> {
        let c = self.container(service)?;
        let out = Command::new("docker")
            .args(["exec", &c, "/tp-testapp", "get", url, "--timeout", "5"])
            .output()?;
        if !out.status.success() {
            bail!(
                "get {url} from {service}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Polls `GET url` from `service` until the body is `want`.
    pub fn wait_from(&self, service: &str, url: &str, want: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < timeout {
            match self.get_from(service, url) {
                Ok(b) if b == want => return Ok(()),
                Ok(b) => last = format!("body {b:?}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("{url} from {service} did not answer {want:?} within {timeout:?}; last: {last}")
    }

    /// Whether a network of this project exists.
    pub fn has_networks(&self) -> bool {
        docker(&[
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("name={}_", self.name),
        ])
        .is_ok_and(|s| !s.is_empty())
    }
}

impl Drop for DevProject {
    fn drop(&mut self) {
        let user = User::new();
        let _ = self.run(&user, &["down", "-t", "1"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
