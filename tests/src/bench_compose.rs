//! The `telepresence compose` benchmark: `compose up -d` of a three-service dev file with one
//! intercept until the first request a cluster caller makes reaches the dev service, and
//! `compose down`, against the compose tool's own `up -d` and `down` of the same file without
//! `x-tele`, in the same run (images present, the cluster project running).

use crate::bench_outbound::Row;
use crate::harness::{images, User};
use crate::stack::{compose_cmd, Project};
use crate::DevProject;
use anyhow::{ensure, Result};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

/// Three services: the intercepted `web` and two plain helpers.
const DEV: &str = r#"services:
  web:
    image: @APP@
    command: ["serve", "--http", "9090", "--name", "dev-web"]
    x-tele: {type: intercept, ports: ["9090:8080"]}
  helper:
    image: @APP@
    command: ["serve", "--http", "8080", "--name", "helper"]
  cache:
    image: @APP@
    command: ["serve", "--http", "8080", "--name", "cache"]
"#;

/// Runs the compose benchmark; rows and the JSON section.
pub fn compose() -> Result<(Vec<Row>, Value)> {
    let cluster = Project::up(&[("web", 8080)])?;
    let t = Duration::from_secs(60);
    cluster.wait_for("http://web:8080/", "web", t)?;
    let header = format!(
        "x-tele:\n  connections: [{{name: bench-compose, namespace: {}, cluster-type: docker}}]\n",
        cluster.name
    );
    let dev = DevProject::new(&[("compose.yaml", &format!("{header}{DEV}"))]);
    let user = User::new();

    // The compose tool alone, on the same services without x-tele.
    let (app, _) = images();
    let plain_file = dev.dir.join("plain.yaml");
    let plain: String = DEV
        .lines()
        .filter(|l| !l.contains("x-tele"))
        .map(|l| format!("{}\n", l.replace("@APP@", app)))
        .collect();
    std::fs::write(&plain_file, plain)?;
    let tool = compose_cmd();
    let plain_run = |args: &[&str]| -> Result<f64> {
        let start = Instant::now();
        let out = Command::new(&tool[0])
            .args(&tool[1..])
            .args(["-p", &format!("{}plain", dev.name), "-f"])
            .arg(&plain_file)
            .args(args)
            .output()?;
        ensure!(
            out.status.success(),
            "plain compose {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(start.elapsed().as_secs_f64())
    };
    let plain_up = plain_run(&["up", "-d"])?;
    let plain_down = plain_run(&["down", "-t", "1"])?;

    let start = Instant::now();
    let up = dev.run(&user, &["up", "-d"]);
    ensure!(up.code == 0, "telepresence compose up -d: {}", up.stderr);
    let up_s = start.elapsed().as_secs_f64();
    cluster.wait_for("http://web:8080/", "dev-web", t)?;
    let first_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let down = dev.run(&user, &["down", "-t", "1"]);
    ensure!(down.code == 0, "telepresence compose down: {}", down.stderr);
    let down_s = start.elapsed().as_secs_f64();
    cluster.wait_for("http://web:8080/", "web", t)?;

    let rows = vec![
        (
            "compose up -d → first routed request (s)".to_string(),
            format!("{first_s:.2}"),
            format!("{plain_up:.2}"),
            "≤ 3 s",
            first_s <= 3.0,
        ),
        (
            "compose down (s)".to_string(),
            format!("{down_s:.2}"),
            format!("{plain_down:.2}"),
            "≤ 2 s",
            down_s <= 2.0,
        ),
    ];
    let doc = json!({
        "up_d_s": up_s,
        "up_to_first_routed_request_s": first_s,
        "down_s": down_s,
        "plain_up_d_s": plain_up,
        "plain_down_s": plain_down,
        "overhead_up_s": first_s - plain_up,
        "overhead_down_s": down_s - plain_down,
    });
    Ok((rows, doc))
}
