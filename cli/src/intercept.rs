//! `telepresence intercept`: creates the intercept through the daemon, prints its block and,
//! with `--docker-run`, runs the handler container in the daemon's network namespace in the
//! foreground, forwards Ctrl-C to it, and leaves when it exits.

use crate::args::{parse_port, InterceptArgs};
use crate::commands::{selected, stop_handlers};
use crate::dockerrun::{assemble, HandlerOpts};
use crate::engine::{self, CONNECTION_LABEL, INTERCEPT_LABEL, ROLE_LABEL};
use crate::output::{kv_block, CmdOutput};
use crate::rpc::{connector, status_err};
use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use std::time::Duration;
use tp_rpc::connector::LeaveRequest;
use tp_rpc::manager::{InterceptInfo, InterceptSpec};

/// The intercept block printed after creation (3-space indent, padded keys).
pub fn intercept_block(i: &InterceptInfo) -> String {
    let s = i.spec.clone().unwrap_or_default();
    let port_id = if i.service_port_name.is_empty() {
        i.service_port.to_string()
    } else {
        i.service_port_name.clone()
    };
    let state = if i.state == tp_rpc::state::ACTIVE {
        i.state.clone()
    } else {
        format!("error: {}: {}", i.state, i.message)
    };
    let mut out = format!("Using {} {}\n", i.workload_kind, s.workload);
    out.push_str(&kv_block(
        "   ",
        &[
            ("Intercept name", Some(s.name.clone())),
            ("State", Some(state)),
            ("Workload kind", Some(i.workload_kind.clone())),
            (
                "Destination",
                Some(format!("{}:{}", s.target_host, s.target_port)),
            ),
            ("Service Port Identifier", Some(port_id)),
            ("Intercepting", Some(i.disposition.clone())),
        ],
    ));
    out
}

/// Makes sure the handler image is on the engine, trying a pull when it is not.
async fn check_image(docker: &bollard::Docker, image: &str) -> Result<()> {
    if docker.inspect_image(image).await.is_ok() {
        return Ok(());
    }
    let opts = bollard::query_parameters::CreateImageOptions {
        from_image: Some(image.to_string()),
        ..Default::default()
    };
    let mut pull = docker.create_image(Some(opts), None, None);
    let mut last_err = None;
    while let Some(r) = pull.next().await {
        if let Err(e) = r {
            last_err = Some(e.to_string());
            break;
        }
    }
    if docker.inspect_image(image).await.is_ok() {
        return Ok(());
    }
    bail!(
        "handler image {image:?} is not on the Docker engine and could not be pulled{}; build it first (docker build -t {image} .)",
        last_err.map(|e| format!(" ({})", e.lines().next().unwrap_or_default())).unwrap_or_default()
    )
}

/// Runs the command. Returns the output and, for `--docker-run`, the handler's exit code.
pub async fn run(
    args: InterceptArgs,
    use_: Option<&str>,
    print_now: bool,
) -> Result<(CmdOutput, Option<i32>)> {
    let port = parse_port(&args.port).map_err(|e| anyhow!(e))?;
    if !args.command.is_empty() && !args.docker_run {
        bail!("with a containerised daemon the handler must be a container: add --docker-run and give `docker run` arguments after --");
    }
    if args.docker_run && args.command.is_empty() {
        bail!("--docker-run needs the handler's `docker run` arguments after --, e.g. -- my-image:dev");
    }
    let docker = engine::connect().await?;
    let d = selected(&docker, use_, args.namespace.as_deref()).await?;
    let workload = args.workload.clone().unwrap_or_else(|| args.name.clone());

    // Everything that can be checked is checked before the intercept exists.
    let run_args = if args.docker_run {
        let opts = HandlerOpts {
            connection: d.container.clone(),
            intercept: args.name.clone(),
            port: port.local,
            env_file: None,
            labels: vec![
                (
                    engine::MANAGED_BY_LABEL.into(),
                    engine::MANAGED_BY_VALUE.into(),
                ),
                (ROLE_LABEL.into(), "handler".into()),
                (CONNECTION_LABEL.into(), d.name.clone()),
                (INTERCEPT_LABEL.into(), args.name.clone()),
            ],
        };
        let ra = assemble(&args.command, &opts)?;
        check_image(&docker, &ra.image).await?;
        for w in &ra.warnings {
            eprintln!("warning: {w}");
        }
        Some(ra)
    } else {
        None
    };

    let mut c = connector(d.port).await?;
    let info = c
        .create_intercept(InterceptSpec {
            name: args.name.clone(),
            workload,
            namespace: args.namespace.clone().unwrap_or_default(),
            port_identifier: port.remote.clone(),
            protocol: "TCP".into(),
            target_host: args.address.clone(),
            target_port: port.local as u32,
            mechanism: "tcp".into(),
            client: String::new(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let block = intercept_block(&info);
    let data = serde_json::json!({"intercept": crate::commands::intercept_json(&info)});
    let Some(ra) = run_args else {
        return Ok((
            CmdOutput {
                text: block,
                data: Some(data),
            },
            None,
        ));
    };
    if print_now {
        print!("{block}");
    }
    let code = run_handler(&ra.args, &ra.name).await;
    // Leave whatever happened to the handler.
    let _ = c
        .remove_intercept(LeaveRequest {
            name: args.name.clone(),
        })
        .await;
    let _ = stop_handlers(&docker, &d.name, Some(&args.name)).await;
    let code = code?;
    Ok((
        CmdOutput {
            text: if print_now { String::new() } else { block },
            data: Some(data),
        },
        Some(code),
    ))
}

/// Runs `docker <args>` in the foreground; SIGINT/SIGTERM are forwarded to it, and if the
/// container does not stop within 10 s it is removed.
async fn run_handler(args: &[String], name: &str) -> Result<i32> {
    let mut child = tokio::process::Command::new("docker")
        .args(args)
        .kill_on_drop(true)
        .spawn()
        .context("running `docker run` (is the docker CLI installed?)")?;
    let pid = child.id().map(|p| p as i32);
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let grace = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = child.wait() => {
                let status = status?;
                return Ok(status.code().unwrap_or(128 + 2));
            }
            _ = int.recv() => forward(pid, libc::SIGINT, &mut deadline),
            _ = term.recv() => forward(pid, libc::SIGTERM, &mut deadline),
            _ = grace => {
                eprintln!("the handler did not stop; removing container {name}");
                let docker = engine::connect().await?;
                engine::remove_container(&docker, name, 0).await?;
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                return Ok(130);
            }
        }
    }
}

fn forward(pid: Option<i32>, sig: i32, deadline: &mut Option<tokio::time::Instant>) {
    if let Some(pid) = pid {
        // The docker CLI proxies the signal to the container.
        unsafe {
            libc::kill(pid, sig);
        }
    }
    deadline.get_or_insert_with(|| tokio::time::Instant::now() + Duration::from_secs(10));
}
