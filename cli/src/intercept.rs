//! `telepresence intercept`: creates the intercept through the daemon, prints its block and,
//! with `--docker-run` (or a handler image built by `--docker-build`, `cli/src/dockerbuild.rs`),
//! runs the handler container in the daemon's network namespace in the
//! foreground, forwards Ctrl-C to it, and leaves when it exits.

use crate::args::InterceptArgs;
use crate::commands::{selected, stop_handlers};
use crate::dockerrun::{assemble, HandlerOpts};
use crate::envfile::{self, EnvSyntax};
use crate::mounts::{self, HandlerMount};
use crate::output::{kv_block, CmdOutput};
use crate::rpc::{connector, status_err};
use anyhow::{anyhow, bail, Context, Result};
use docker::engine::{self, CONNECTION_LABEL, INTERCEPT_LABEL, ROLE_LABEL};
use futures::StreamExt;
use protocol::connector::LeaveRequest;
use protocol::manager::{InterceptInfo, InterceptMechanism, InterceptSpec, PortProtocol};
use std::collections::BTreeMap;
use std::time::Duration;

/// The intercept block printed after creation (3-space indent, padded keys), with the volume
/// mount point and env file when there are.
pub fn intercept_block(i: &InterceptInfo, root: Option<&str>, env_file: Option<&str>) -> String {
    if !crate::engage::is_plain(i) {
        return engagement_block(i, root, env_file);
    }
    let s = i.spec.clone().unwrap_or_default();
    let port_id = if i.service_port_name.is_empty() {
        i.service_port.to_string()
    } else {
        i.service_port_name.clone()
    };
    let state = if i.state() == protocol::manager::InterceptState::Active {
        i.state().to_string()
    } else {
        format!("error: {}: {}", i.state(), i.message)
    };
    let mut out = format!("Using {} {}\n", i.workload_kind, s.workload);
    let mut rows = vec![
        ("Intercept name", Some(s.name.clone())),
        ("State", Some(state)),
        ("Workload kind", Some(i.workload_kind.clone())),
        (
            "Destination",
            Some(format!("{}:{}", s.target_host, s.target_port)),
        ),
        ("Service Port Identifier", Some(port_id)),
    ];
    if let Some(r) = root {
        rows.push(("Volume Mount Point", Some(r.to_string())));
    }
    if let Some(e) = env_file {
        rows.push(("Env file", Some(e.to_string())));
    }
    rows.extend(crate::engage::to_pod_row(i));
    rows.push(("Intercepting", Some(i.disposition.clone())));
    out.push_str(&kv_block("   ", &rows));
    out
}

/// The block of a multi-port, replace or ingest engagement (`cli/src/engage.rs` `rows`).
fn engagement_block(i: &InterceptInfo, root: Option<&str>, env_file: Option<&str>) -> String {
    let s = i.spec.clone().unwrap_or_default();
    let state = if i.state() == protocol::manager::InterceptState::Active {
        i.state().to_string()
    } else {
        format!("error: {}: {}", i.state(), i.message)
    };
    let mut extra = Vec::new();
    if let Some(r) = root {
        extra.push(("Volume Mount Point", Some(r.to_string())));
    }
    if let Some(e) = env_file {
        extra.push(("Env file", Some(e.to_string())));
    }
    let rows = crate::engage::rows(i, state, extra);
    format!(
        "Using {} {}\n{}{}",
        i.workload_kind,
        s.workload,
        kv_block("   ", &rows),
        crate::engage::pair_lines(i, "   ")
    )
}

/// The environment the handler gets: the intercepted container's, plus the `TELEPRESENCE_*`
/// variables (`TELEPRESENCE_ROOT`/`_MOUNTS` only when volumes are mounted).
pub fn handler_env(i: &InterceptInfo, root: Option<&str>) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = i.environment.clone().into_iter().collect();
    env.insert("TELEPRESENCE_CONTAINER".into(), i.container.clone());
    env.insert("TELEPRESENCE_INTERCEPT_ID".into(), i.id.clone());
    if let Some(r) = root {
        env.insert("TELEPRESENCE_ROOT".into(), r.to_string());
        let paths: Vec<&str> = i.mounts.iter().map(|m| m.path.as_str()).collect();
        env.insert("TELEPRESENCE_MOUNTS".into(), paths.join(":"));
    }
    env
}

/// Where the handler's env file goes (mode 0600, removed when the handler exits).
fn handler_env_path(connection: &str, intercept: &str) -> std::path::PathBuf {
    crate::info::cache_dir()
        .join("env")
        .join(format!("{connection}-{intercept}.env"))
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

/// The engagement the arguments ask for, checked (ports, HTTP filters) before anything is
/// created; `telepresence compose` creates its engagements from it too.
pub fn spec(args: &InterceptArgs) -> Result<InterceptSpec> {
    let kind = crate::engage::kind_of(args);
    let (first, extra_ports) = crate::engage::pairs(args)?;
    let spec = InterceptSpec {
        name: args.name.clone(),
        workload: args.workload.clone().unwrap_or_else(|| args.name.clone()),
        namespace: args.namespace.clone().unwrap_or_default(),
        port_identifier: first.as_ref().map(|p| p.remote.clone()).unwrap_or_default(),
        protocol: PortProtocol::Tcp as i32,
        target_host: args.address.clone(),
        target_port: first.as_ref().map_or(0, |p| u32::from(p.local)),
        mechanism: InterceptMechanism::Tcp as i32,
        client: String::new(),
        http_headers: args.http_header.clone(),
        http_path_equal: args.http_path_equal.clone().unwrap_or_default(),
        http_path_prefix: args.http_path_prefix.clone().unwrap_or_default(),
        http_path_regex: args.http_path_regex.clone().unwrap_or_default(),
        extra_ports,
        kind: kind.wire() as i32,
        service: args.service.clone().unwrap_or_default(),
        to_pod: args.extras.to_pod.clone(),
    };
    // Filters are checked before anything is created (the manager resolves `auto`).
    protocol::filters::resolve(&mut spec.clone(), "id:check", false).map_err(|e| anyhow!(e))?;
    Ok(spec)
}

/// Runs the command. Returns the output and, for `--docker-run`, the handler's exit code.
pub async fn run(
    mut args: InterceptArgs,
    use_: Option<&str>,
    print_now: bool,
) -> Result<(CmdOutput, Option<i32>)> {
    let kind = crate::engage::kind_of(&args);
    let (first, _) = crate::engage::pairs(&args)?;
    let build = crate::dockerbuild::prepare(&mut args)?;
    if !args.command.is_empty() && !args.docker_run {
        bail!("with a containerised daemon the handler must be a container: add --docker-run and give `docker run` arguments after --");
    }
    if args.docker_run && args.command.is_empty() {
        bail!("--docker-run needs the handler's `docker run` arguments after --, e.g. -- my-image:dev");
    }
    let docker = engine::connect().await?;
    let d = selected(&docker, use_, args.namespace.as_deref()).await?;
    // Everything that can be checked is checked before the intercept exists.
    let run_args = if args.docker_run {
        let opts = HandlerOpts {
            connection: d.container.clone(),
            intercept: args.name.clone(),
            port: first.as_ref().map_or(0, |p| p.local),
            env_file: Some(handler_env_path(&d.name, &args.name)),
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
        let mut ra = assemble(&args.command, &opts)?;
        match &build {
            Some(b) => crate::dockerbuild::build_into(b, &mut ra).await?,
            None => check_image(&docker, &ra.image).await?,
        }
        for w in &ra.warnings {
            eprintln!("warning: {w}");
        }
        Some(ra)
    } else {
        None
    };

    let mut mount = mounts::parse_mount(&args.mount)?;
    // A wiretap's handler only watches: the workload's volumes are read-only to it.
    mount.read_only |= kind == crate::engage::Kind::Wiretap;
    let spec = spec(&args)?;
    let mut c = connector(d.port).await?;
    let info = c
        .create_intercept(spec)
        .await
        .map_err(status_err)?
        .into_inner();
    // From here on, a failure leaves the intercept again.
    let r = after_create(&docker, &d, &args, &info, &mount, run_args, print_now).await;
    if r.is_err() {
        let _ = c
            .remove_intercept(LeaveRequest {
                name: args.name.clone(),
            })
            .await;
        let _ = stop_handlers(&docker, &d.name, Some(&args.name)).await;
    }
    r
}

async fn after_create(
    docker: &bollard::Docker,
    d: &crate::info::DaemonInfo,
    args: &InterceptArgs,
    info: &InterceptInfo,
    mount: &mounts::MountChoice,
    run_args: Option<crate::dockerrun::RunArgs>,
    print_now: bool,
) -> Result<(CmdOutput, Option<i32>)> {
    check_container(args, info)?;
    // Volumes exist only in the handler container (there is no host mount in this build).
    let root = (run_args.is_some() && mount.enabled).then(|| {
        args.docker_mount
            .clone()
            .or_else(|| mount.root.clone())
            .unwrap_or_else(|| {
                format!(
                    "/tmp/telfs-{}",
                    &uuid::Uuid::new_v4().simple().to_string()[..10]
                )
            })
    });
    let env = handler_env(info, root.as_deref());
    write_env_files(args, &env)?;
    let block = intercept_block(
        info,
        root.as_deref(),
        args.env_file
            .as_ref()
            .map(|f| f.to_string_lossy())
            .as_deref(),
    );
    let handler_mounts: Vec<HandlerMount> = match &root {
        Some(r) => mounts::plan(&d.name, &args.name, r, &info.mounts, mount.read_only),
        None => Vec::new(),
    };
    let data = serde_json::json!({
        "intercept": crate::commands::intercept_json(info),
        "environment": env,
        "volume_mount_point": root,
        "mounts": handler_mounts,
        "env_file": args.env_file,
    });
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
    let code = run_with_handler(docker, d, args, info, &env, &handler_mounts, ra).await;
    // Leave whatever happened to the handler.
    if let Ok(mut c) = connector(d.port).await {
        let _ = c
            .remove_intercept(LeaveRequest {
                name: args.name.clone(),
            })
            .await;
    }
    let _ = stop_handlers(docker, &d.name, Some(&args.name)).await;
    let code = code?;
    Ok((
        CmdOutput {
            text: if print_now { String::new() } else { block },
            data: Some(data),
        },
        Some(code),
    ))
}

/// `--container` must name the intercepted container (or the workload).
fn check_container(args: &InterceptArgs, info: &InterceptInfo) -> Result<()> {
    if let Some(want) = &args.container {
        let spec = info.spec.clone().unwrap_or_default();
        if *want != info.container && *want != spec.workload {
            bail!(
                "{} has no container named {want:?} (its container is {:?}); drop --container or name that one",
                spec.workload, info.container
            );
        }
    }
    Ok(())
}

/// Writes the intercepted environment to `--env-file` and `--env-json`, when asked.
fn write_env_files(args: &InterceptArgs, env: &BTreeMap<String, String>) -> Result<()> {
    if let Some(f) = &args.env_file {
        envfile::write_file(f, env, args.env_syntax)
            .with_context(|| format!("writing --env-file {}", f.display()))?;
    }
    if let Some(f) = &args.env_json {
        envfile::write_file(f, env, EnvSyntax::Json)
            .with_context(|| format!("writing --env-json {}", f.display()))?;
    }
    Ok(())
}

/// Starts the volumes (when any), then runs the handler with the intercepted environment and
/// the volumes under the root; removes its env file afterwards.
async fn run_with_handler(
    docker: &bollard::Docker,
    d: &crate::info::DaemonInfo,
    args: &InterceptArgs,
    info: &InterceptInfo,
    env: &BTreeMap<String, String>,
    handler_mounts: &[HandlerMount],
    ra: crate::dockerrun::RunArgs,
) -> Result<i32> {
    if !handler_mounts.is_empty() {
        let summary = start_volumes(docker, d, &args.name, info, handler_mounts).await?;
        eprintln!("Remote volumes ready: {summary}");
    }
    // Values a docker env file can hold go through one; the others (multi-line, very long) as
    // `-e KEY` with the value in the docker CLI's environment.
    let (multi, single): (BTreeMap<_, _>, BTreeMap<_, _>) = env
        .clone()
        .into_iter()
        .partition(|(k, v)| envfile::check(k, v, EnvSyntax::Docker).is_err());
    let env_path = handler_env_path(&d.name, &args.name);
    if let Some(dir) = env_path.parent() {
        std::fs::create_dir_all(dir).context("creating the env file directory")?;
    }
    envfile::write_file(&env_path, &single, EnvSyntax::Docker)?;
    let mut extra: Vec<String> = Vec::new();
    for k in multi.keys() {
        extra.extend(["-e".to_string(), k.clone()]);
    }
    for m in handler_mounts {
        extra.push("-v".into());
        extra.push(format!(
            "{}:{}{}",
            m.volume,
            m.target,
            if m.read_only { ":ro" } else { "" }
        ));
    }
    // Ours go right after `run`, before the user's arguments, which win.
    let mut argv = ra.args.clone();
    argv.splice(1..1, extra);
    let code = run_handler(&argv, &ra.name, &multi).await;
    let _ = std::fs::remove_file(&env_path);
    code
}

/// Fills `handler_mounts` (engine volumes) with the remote volumes of engagement `name` and
/// keeps them in sync: the sync container runs the daemon's image and opens its tunnel as the
/// daemon's session. Waits for the initial copy; returns its summary. `telepresence compose`
/// mounts the same volumes into an engaged service.
pub(crate) async fn start_volumes(
    docker: &bollard::Docker,
    d: &crate::info::DaemonInfo,
    name: &str,
    info: &InterceptInfo,
    handler_mounts: &[HandlerMount],
) -> Result<String> {
    let image = docker_image_of(docker, &d.container).await?;
    let session = crate::rpc::connector(d.port)
        .await?
        .status(protocol::manager::Empty {})
        .await?
        .into_inner()
        .session
        .unwrap_or_default();
    let target = mounts::SyncTarget {
        intercept_id: &info.id,
        session: &session,
    };
    mounts::start(
        docker,
        &d.container,
        &d.name,
        name,
        &target,
        &image,
        handler_mounts,
    )
    .await
}

/// The image a container runs (the sync container uses the daemon's own image).
async fn docker_image_of(docker: &bollard::Docker, container: &str) -> Result<String> {
    docker
        .inspect_container(
            container,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await?
        .config
        .and_then(|c| c.image)
        .ok_or_else(|| anyhow!("cannot tell the image of {container}"))
}

/// Runs `docker <args>` in the foreground; SIGINT/SIGTERM are forwarded to it, and if the
/// container does not stop within 10 s it is removed.
async fn run_handler(args: &[String], name: &str, env: &BTreeMap<String, String>) -> Result<i32> {
    let mut child = tokio::process::Command::new("docker")
        .args(args)
        .envs(env)
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

#[allow(unsafe_code)]
fn forward(pid: Option<i32>, sig: i32, deadline: &mut Option<tokio::time::Instant>) {
    if let Some(pid) = pid {
        // The docker CLI proxies the signal to the container.
        // SAFETY: kill(2) takes plain integers; `pid` is our own child, the docker CLI.
        unsafe {
            libc::kill(pid, sig);
        }
    }
    deadline.get_or_insert_with(|| tokio::time::Instant::now() + Duration::from_secs(10));
}
