//! `telepresence connect`: picks the cluster, makes sure the image exists, starts the
//! Docker-engine traffic-manager when needed, starts the daemon container `tp-<name>`, waits
//! until it holds a session, and records it for discovery.

use crate::args::{ClusterType, ConnectArgs};
use crate::info::{self, DaemonInfo};
use crate::output::CmdOutput;
use crate::rpc;
use anyhow::{anyhow, bail, Context, Result};
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::CreateContainerOptions;
use bollard::Docker;
use docker::engine::{self, CONNECTION_LABEL, NAMESPACE_LABEL, ROLE_LABEL};
use std::collections::HashMap;
use std::time::Duration;

/// The image repository of the telepresence binary.
pub const IMAGE_REPO: &str = "telepresence";
/// Container-side ports.
pub use protocol::ports::{MANAGER_GRPC_PORT, MANAGER_TUNNEL_PORT};
pub const DAEMON_PORT: u16 = 7777;

/// The Docker-engine manager container of a namespace.
pub fn manager_container(namespace: &str) -> String {
    format!("tp-traffic-manager-{namespace}")
}

/// Labels every resource we create carries, plus the role.
pub fn labels(role: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut l = HashMap::from([
        (
            engine::MANAGED_BY_LABEL.to_string(),
            engine::MANAGED_BY_VALUE.to_string(),
        ),
        (ROLE_LABEL.to_string(), role.to_string()),
    ]);
    for (k, v) in extra {
        l.insert(k.to_string(), v.to_string());
    }
    l
}

/// Whether a kubeconfig with a current context exists (then Kubernetes is the default):
/// `--kubeconfig`, else every file of `KUBECONFIG`, else `~/.kube/config`.
fn kube_context_exists(kubeconfig: Option<&str>) -> bool {
    kubernetes::kubeconfig::load(kubeconfig)
        .ok()
        .and_then(|k| k.current_context)
        .is_some_and(|c| !c.is_empty())
}

/// The cluster type asked for, else Kubernetes when a context exists, else this Docker engine
/// (said in `text`).
fn pick_cluster(args: &ConnectArgs, text: &mut String) -> ClusterType {
    match args.cluster_type {
        Some(t) => t,
        // An explicit --kubeconfig or --context means Kubernetes (their errors are reported).
        None if args.kubeconfig.is_some()
            || args.context.is_some()
            || kube_context_exists(None) =>
        {
            ClusterType::Kubernetes
        }
        None => {
            text.push_str("No Kubernetes context found: using this Docker engine as the cluster (--cluster-type docker)\n");
            ClusterType::Docker
        }
    }
}

pub async fn run(args: ConnectArgs) -> Result<CmdOutput> {
    let mut text = String::new();
    if pick_cluster(&args, &mut text) == ClusterType::Kubernetes {
        return crate::connect_kube::run(args, text).await;
    }
    let subnet_env = crate::outbound::subnet_env(&args)?;
    let namespace = args.namespace.clone().unwrap_or_else(|| "default".into());
    let context = "docker".to_string();
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{context}-{namespace}-cn"));
    validate_name(&name)?;
    let container = format!("tp-{name}");
    let docker = engine::connect().await?;
    if let Some(existing) = already_connected(&docker, &name, &namespace, &container).await? {
        text.push_str(&already_message(&existing));
        return Ok(CmdOutput {
            text,
            data: Some(serde_json::to_value(&existing)?),
        });
    }
    // Validate the namespace before anything is created.
    let network = namespace_network(&docker, &namespace).await?;

    let exe = std::env::current_exe().context("locating the telepresence executable")?;
    let image = docker::image::ensure_image(&docker, IMAGE_REPO, &exe, &mut |line: &str| {
        eprintln!("{line}");
    })
    .await?;
    eprintln!("Launching Telepresence Daemon");
    let (grpc, tunnel, started_manager, secret) =
        ensure_manager(&docker, &namespace, &network, &image, args.team_mode).await?;
    let client_token = secret.derive(protocol::auth::Purpose::Client);
    let mut daemon_env = subnet_env;
    daemon_env.push(format!(
        "{}={}",
        protocol::auth::CLIENT_TOKEN_ENV,
        client_token.as_str()
    ));

    let result = start_daemon(
        &docker, &name, &container, &namespace, &args, &image, &grpc, &tunnel, daemon_env,
    )
    .await;
    let (id, port) = match result {
        Ok(v) => v,
        Err(e) => {
            return Err(daemon_failed(&docker, &container, &namespace, started_manager, e).await)
        }
    };
    let info = DaemonInfo {
        name,
        namespace,
        context,
        cluster_type: "docker".into(),
        server: docker::provider::engine_address(),
        manager_namespace: args.manager_namespace,
        container,
        container_id: id,
        port,
    };
    record(text, &info)
}

/// Records the started connection `info` for discovery and says so after `text`.
pub(crate) fn record(mut text: String, info: &DaemonInfo) -> Result<CmdOutput> {
    info::save(info)?;
    text.push_str(&format!(
        "Connected to context {}, namespace {} ({})\n",
        info.context, info.namespace, info.server
    ));
    Ok(CmdOutput {
        text,
        data: Some(serde_json::to_value(info)?),
    })
}

/// The running connection `name` when it already serves `namespace`; an error when it serves
/// another one, or when its container name is taken by something else. A recorded connection
/// whose daemon is gone is forgotten.
async fn already_connected(
    docker: &Docker,
    name: &str,
    namespace: &str,
    container: &str,
) -> Result<Option<DaemonInfo>> {
    let Some(existing) = live_connection(docker, name, container).await? else {
        return Ok(None);
    };
    if existing.namespace == namespace {
        return Ok(Some(existing));
    }
    bail!(
        "connection {name} is already connected to namespace {}; run `telepresence quit` first, or connect with another --name",
        existing.namespace
    );
}

/// The recorded connection `name` when its daemon still runs. A recorded connection whose
/// daemon is gone is forgotten; an error when `container` runs without being a known connection.
pub(crate) async fn live_connection(
    docker: &Docker,
    name: &str,
    container: &str,
) -> Result<Option<DaemonInfo>> {
    if let Some(existing) = info::load_all().into_iter().find(|d| d.name == name) {
        if engine::is_running(docker, &existing.container).await {
            return Ok(Some(existing));
        }
        info::remove(name);
    }
    if engine::is_running(docker, container).await {
        bail!("container {container} already runs but is not a known connection; remove it with `telepresence quit -s` or `docker rm -f {container}`");
    }
    Ok(None)
}

/// What `connect` says when the connection it was asked for already runs.
pub(crate) fn already_message(existing: &DaemonInfo) -> String {
    format!(
        "Already connected to context {}, namespace {} ({})\n",
        existing.context, existing.namespace, existing.server
    )
}

/// The network of the compose project `namespace` (`default`: standalone containers).
async fn namespace_network(docker: &Docker, namespace: &str) -> Result<String> {
    docker::provider::network_of_namespace(docker, namespace)
        .await
        .map_err(|e| match e {
            manager::provider::ProviderError::NamespaceNotFound(_) => anyhow!(
                "namespace \"{namespace}\" not found: no compose project of that name runs on this Docker engine (see `docker compose ls`), and `default` means standalone containers"
            ),
            other => anyhow!(other),
        })
}

/// Cleans up after a daemon that did not start (its container, and a manager this connect
/// started); the error to show: the daemon's own one-line reason when it gave one.
async fn daemon_failed(
    docker: &Docker,
    container: &str,
    namespace: &str,
    started_manager: bool,
    e: anyhow::Error,
) -> anyhow::Error {
    let logs = docker::engine::engine_logs(docker, container).await;
    let _ = engine::remove_container(docker, container, 1).await;
    // A failed connect leaves nothing behind: a manager this call started goes too.
    if started_manager {
        let _ = engine::remove_container(docker, &manager_container(namespace), 2).await;
    }
    // A daemon that refused to start says why in one line: show that.
    if let Some(reason) = logs
        .lines()
        .find_map(|l| l.split_once("daemon-foreground: error: ").map(|(_, r)| r))
    {
        return anyhow!("{reason}");
    }
    e.context(format!("the daemon did not start{logs}"))
}

pub(crate) fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok {
        bail!("invalid connection name {name:?}: use letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

/// Starts (or reuses) the namespace's traffic-manager container; returns the gRPC and tunnel
/// addresses as the daemon reaches them, whether this call started it, and the manager's secret
/// (protocol/src/auth.rs). The secret lives in the manager container's environment, which only
/// the engine API shows (`docker inspect`), not the containers that reach the manager; a
/// replaced manager container keeps it, so daemons and agents connected to the old one are
/// accepted by the new one.
///
/// The manager joins the project network (where agents reach it) and the default bridge
/// network, where daemons reach it — like a cluster's API endpoint, and never the project
/// network itself, so every byte a daemon exchanges with the namespace goes through the
/// manager. (Ports published on the host would work too, but on engines without hairpin NAT
/// they go through `docker-proxy`, one more user-space relay per connection: measured
/// +60–80 µs p50 per request and lower throughput.)
async fn ensure_manager(
    docker: &Docker,
    namespace: &str,
    network: &str,
    image: &str,
    team_mode: bool,
) -> Result<(String, String, bool, protocol::auth::Token)> {
    let name = manager_container(namespace);
    let current_image = docker
        .inspect_container(
            &name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .ok();
    let running_same = current_image.as_ref().is_some_and(|c| {
        c.state.as_ref().and_then(|s| s.running).unwrap_or(false)
            && c.config.as_ref().and_then(|c| c.image.as_deref()) == Some(image)
    });
    let secret =
        manager_secret(current_image.as_ref()).unwrap_or_else(protocol::auth::Token::generate);
    if running_same && team_mode && !has_team_mode(current_image.as_ref()) {
        bail!(
            "the traffic-manager {name} already runs without team mode, so --team-mode cannot take effect; stop it with `telepresence quit -s` (this ends every connection to it), then connect again with --team-mode"
        );
    }
    if !running_same {
        // A manager replaced (e.g. by a newer build) keeps the namespace's team mode.
        let team_mode = team_mode || has_team_mode(current_image.as_ref());
        if current_image.is_some() {
            engine::remove_container(docker, &name, 5).await?;
        }
        let body = manager_body(namespace, network, image, team_mode, &secret);
        start_manager(docker, &name, network, body).await?;
    }
    let ip = bridge_ip(docker, &name).await?;
    Ok((
        format!("{ip}:{MANAGER_GRPC_PORT}"),
        format!("{ip}:{MANAGER_TUNNEL_PORT}"),
        !running_same,
        secret,
    ))
}

/// The manager container of `namespace`: our image running `traffic-manager` (its settings in
/// docker/src/startup.rs) on the project network, with the engine's socket; `NET_ADMIN` and
/// IPv4 forwarding in its own network namespace for the in-kernel forwards it gives daemons
/// (manager/src/forward.rs).
fn manager_body(
    namespace: &str,
    network: &str,
    image: &str,
    team_mode: bool,
    secret: &protocol::auth::Token,
) -> ContainerCreateBody {
    let socket = docker_socket_path();
    ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["traffic-manager".into()]),
        env: Some(vec![
            "TP_CLUSTER_TYPE=docker".into(),
            format!("TP_NAMESPACE={namespace}"),
            format!("TP_NETWORK={network}"),
            format!("TP_AGENT_IMAGE={image}"),
            format!("TP_GRPC_PORT={MANAGER_GRPC_PORT}"),
            format!("TP_TUNNEL_PORT={MANAGER_TUNNEL_PORT}"),
            "DOCKER_HOST=unix:///var/run/docker.sock".into(),
            format!("{}={team_mode}", manager::personal::ENV_TEAM_MODE),
            format!("{}={}", protocol::auth::MANAGER_SECRET_ENV, secret.as_str()),
            format!(
                "RUST_LOG={}",
                std::env::var("TP_MANAGER_LOG").unwrap_or_else(|_| "info".into())
            ),
        ]),
        labels: Some(labels("traffic-manager", &[(NAMESPACE_LABEL, namespace)])),
        host_config: Some(HostConfig {
            network_mode: Some(network.to_string()),
            binds: Some(vec![format!("{socket}:/var/run/docker.sock")]),
            cap_add: Some(vec!["NET_ADMIN".into()]),
            sysctls: Some(HashMap::from([(
                "net.ipv4.ip_forward".to_string(),
                "1".to_string(),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates the manager container `name`, joins it to the default bridge network too (where
/// daemons reach it) and starts it; a container that does not start is removed.
async fn start_manager(
    docker: &Docker,
    name: &str,
    network: &str,
    body: ContainerCreateBody,
) -> Result<()> {
    create_named_container(docker, name, body, "traffic-manager").await?;
    let bridge = if network == "bridge" {
        Ok(())
    } else {
        docker
            .connect_network(
                "bridge",
                bollard::models::NetworkConnectRequest {
                    container: name.to_string(),
                    endpoint_config: None,
                },
            )
            .await
    };
    if let Err(e) = match bridge {
        Ok(()) => {
            docker
                .start_container(
                    name,
                    None::<bollard::query_parameters::StartContainerOptions>,
                )
                .await
        }
        Err(e) => Err(e),
    } {
        let _ = engine::remove_container(docker, name, 0).await;
        return Err(anyhow!(e).context(format!("starting the traffic-manager container {name}")));
    }
    Ok(())
}

/// The secret of an existing manager container, read from its environment.
fn manager_secret(
    c: Option<&bollard::models::ContainerInspectResponse>,
) -> Option<protocol::auth::Token> {
    let prefix = format!("{}=", protocol::auth::MANAGER_SECRET_ENV);
    c.and_then(|c| c.config.as_ref())
        .and_then(|c| c.env.as_ref())?
        .iter()
        .find_map(|e| e.strip_prefix(&prefix))
        .and_then(|v| protocol::auth::Token::parse(v).ok())
}

/// Whether a manager container was started in team mode.
fn has_team_mode(c: Option<&bollard::models::ContainerInspectResponse>) -> bool {
    let want = format!("{}=true", manager::personal::ENV_TEAM_MODE);
    c.and_then(|c| c.config.as_ref())
        .and_then(|c| c.env.as_ref())
        .is_some_and(|env| env.contains(&want))
}

/// A container's address on the default bridge network.
async fn bridge_ip(docker: &Docker, container: &str) -> Result<String> {
    docker
        .inspect_container(
            container,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await?
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|mut n| n.remove("bridge"))
        .and_then(|e| e.ip_address)
        .filter(|ip| !ip.is_empty())
        .ok_or_else(|| {
            anyhow!(
                "the traffic-manager container {container} has no address on the bridge network"
            )
        })
}

/// Path of the engine's unix socket on the host, for bind-mounting into the manager.
fn docker_socket_path() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".into())
}

#[allow(clippy::too_many_arguments)]
async fn start_daemon(
    docker: &Docker,
    name: &str,
    container: &str,
    namespace: &str,
    args: &ConnectArgs,
    image: &str,
    grpc: &str,
    tunnel: &str,
    extra_env: Vec<String>,
) -> Result<(String, u16)> {
    let (dns_env, dns, dns_search) = crate::outbound::dns_settings(namespace);
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let env = [
        format!("TP_CONNECTION={name}"),
        format!("TP_NAMESPACE={namespace}"),
        format!("TP_MANAGER_NAMESPACE={}", args.manager_namespace),
        "TP_CONTEXT=docker".into(),
        format!("TP_MANAGER_ADDR={grpc}"),
        format!("TP_TUNNEL_ADDR={tunnel}"),
        format!("TP_LISTEN=0.0.0.0:{DAEMON_PORT}"),
        format!("TP_CLIENT_NAME={user}@{host}"),
        format!(
            "RUST_LOG={}",
            std::env::var("TP_DAEMON_LOG").unwrap_or_else(|_| "info".into())
        ),
    ]
    .into_iter()
    .chain(extra_env)
    .chain(dns_env)
    .collect();
    let body = daemon_container_body(image, env, name, namespace, None, dns, dns_search);
    let id = create_named_container(docker, container, body, "daemon").await?;
    let port = start_daemon_container(docker, container).await?;
    // Ready = its gRPC answers, which it only does once it holds a manager session.
    wait_daemon_ready(
        docker,
        container,
        port,
        Duration::from_secs(30),
        Duration::from_millis(20),
        || "the daemon did not become ready within 30s".to_string(),
    )
    .await?;
    Ok((id, port))
}

/// The daemon container (Docker and Kubernetes connections alike): the multi-call image run
/// as `daemon-foreground` with `env`, its gRPC port published on 127.0.0.1, and the outbound
/// path: the TUN device and its routes, and the DNS server every container joined to this
/// one inherits through its resolv.conf. `network`: the network it joins, if not the default.
pub(crate) fn daemon_container_body(
    image: &str,
    env: Vec<String>,
    name: &str,
    namespace: &str,
    network: Option<&str>,
    dns: Vec<String>,
    dns_search: Vec<String>,
) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["daemon-foreground".into()]),
        env: Some(env),
        labels: Some(labels(
            "daemon",
            &[(CONNECTION_LABEL, name), (NAMESPACE_LABEL, namespace)],
        )),
        exposed_ports: Some(vec![format!("{DAEMON_PORT}/tcp")]),
        host_config: Some(HostConfig {
            network_mode: network.map(str::to_string),
            port_bindings: Some(HashMap::from([(
                format!("{DAEMON_PORT}/tcp"),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(String::new()),
                }]),
            )])),
            dns: Some(dns),
            dns_search: Some(dns_search),
            cap_add: Some(vec!["NET_ADMIN".into()]),
            devices: Some(vec![bollard::models::DeviceMapping {
                path_on_host: Some("/dev/net/tun".into()),
                path_in_container: Some("/dev/net/tun".into()),
                cgroup_permissions: Some("rwm".into()),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates the container `container` from `body`; returns its id. `what` names it in the error
/// ("creating the {what} container {container}").
pub(crate) async fn create_named_container(
    docker: &Docker,
    container: &str,
    body: ContainerCreateBody,
    what: &str,
) -> Result<String> {
    let created = docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(container.to_string()),
                ..Default::default()
            }),
            body,
        )
        .await
        .with_context(|| format!("creating the {what} container {container}"))?;
    Ok(created.id)
}

/// Starts the created daemon container; returns the host port its gRPC is published on.
pub(crate) async fn start_daemon_container(docker: &Docker, container: &str) -> Result<u16> {
    docker
        .start_container(
            container,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .with_context(|| format!("starting the daemon container {container}"))?;
    let (_, port) =
        engine::published_port(docker, container, &format!("{DAEMON_PORT}/tcp")).await?;
    Ok(port)
}

/// Waits, polling every `poll`, until the daemon's gRPC on `port` answers (it only does once
/// it holds a manager session). Fails if the container exits, or with `timed_out()` after
/// `timeout`.
pub(crate) async fn wait_daemon_ready(
    docker: &Docker,
    container: &str,
    port: u16,
    timeout: Duration,
    poll: Duration,
    timed_out: impl Fn() -> String,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(mut c) = rpc::connector(port).await {
            if c.status(protocol::manager::Empty {}).await.is_ok() {
                return Ok(());
            }
        }
        if !engine::is_running(docker, container).await {
            bail!("the daemon container exited");
        }
        if tokio::time::Instant::now() > deadline {
            bail!(timed_out());
        }
        tokio::time::sleep(poll).await;
    }
}
