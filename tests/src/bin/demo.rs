//! The demo (README's main command): a compose project of our test app, a containerised daemon,
//! an intercept whose handler container answers the workload's callers, and the original path
//! restored afterwards — every step printed as the user would type it. Cleans up after itself.
#![allow(clippy::too_many_lines)] // scenarios read top to bottom, one step after another

use std::process::Stdio;
use std::time::Duration;
use tests::*;

fn step(s: &str) {
    println!("\n\x1b[1m$ {s}\x1b[0m");
}

fn show(r: Run) -> Run {
    eprint!("{}", r.stderr);
    print!("{}", r.stdout);
    r
}

fn main() -> anyhow::Result<()> {
    if !engine_available() {
        anyhow::bail!("the demo needs a running Docker engine (check with `docker info`)");
    }
    let (app, _) = images();
    println!("Images: test app {app}, telepresence {}", images().1);
    let p = Project::up(&[("web", 8080)])?;
    let user = User::new();
    let t = Duration::from_secs(30);
    step(&format!(
        "docker compose -p {} up -d   # service `web` (our test app) on :8080",
        p.name
    ));
    step("curl http://web:8080/   # from a container on the project network");
    println!(
        "{}",
        p.wait_for("http://web:8080/", "web", t).map(|_| "web")?
    );

    step(&format!(
        "telepresence connect --docker --cluster-type docker -n {}",
        p.name
    ));
    show(user.connect_docker(&p, &[])).ok();
    step(&format!("telepresence list -n {}", p.name));
    show(user.tp(&["list", "-n", &p.name])).ok();

    step(&format!(
        "telepresence intercept web -n {} --port 9090:8080 --docker-run -- {app} serve --http 9090 --name handler-on-laptop",
        p.name
    ));
    let mut child = user
        .intercept_cmd(&p, "web", 9090, 8080, &[], &[], "handler-on-laptop")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()?;
    let took = p.wait_for("http://web:8080/", "handler-on-laptop", t)?;
    step("curl http://web:8080/   # same caller, same URL");
    println!("handler-on-laptop      (routed to the handler container {took:.1?} after the intercept started)");
    step("telepresence status");
    show(user.tp(&["status"])).ok();

    step("docker stop intercept-web-9090   # the handler exits: the intercept ends");
    docker(&["stop", "-t", "1", "intercept-web-9090"])?;
    child.wait()?;
    step("curl http://web:8080/");
    println!(
        "{}",
        p.wait_for("http://web:8080/", "web", t).map(|_| "web")?
    );
    step("telepresence quit -s");
    show(user.tp(&["quit", "-s"])).ok();
    drop(user);
    drop(p);
    let left = leftovers();
    if left.is_empty() {
        println!("\nDemo complete; nothing of ours is left on the engine.");
        Ok(())
    } else {
        anyhow::bail!("left behind: {left:?}")
    }
}
