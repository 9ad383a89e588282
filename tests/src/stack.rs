//! Compose projects of our test app: bringing a stack up (`Project::up`, `Project::up_with`) and
//! down (on drop), finding its containers, and making requests from inside its network.

use crate::harness::{docker, engine_available, images};
use anyhow::{anyhow, bail, Result};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

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

    /// `up(services)` when this engine can run end-to-end tests (`engine_available`), else
    /// `None` (the test then does nothing).
    pub fn up_if_engine(services: &[(&str, u16)]) -> Option<Project> {
        if !engine_available() {
            return None;
        }
        Some(Self::up(services).unwrap())
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

    /// The running containers of a service (ids).
    pub fn containers(&self, service: &str) -> Result<Vec<String>> {
        service_containers(&self.name, service)
    }

    /// The container of a service (first replica).
    pub fn container(&self, service: &str) -> Result<String> {
        self.containers(service)?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("no container for {service}"))
    }

    /// The IP address of a service's container on the project network.
    pub fn ip(&self, service: &str) -> Result<String> {
        let c = self.container(service)?;
        docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &c,
        ])
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

/// The running containers (ids) of `service` in compose project `project`.
pub fn service_containers(project: &str, service: &str) -> Result<Vec<String>> {
    let ids = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--filter",
        &format!("label=com.docker.compose.service={service}"),
    ])?;
    Ok(ids.lines().map(str::to_string).collect())
}
