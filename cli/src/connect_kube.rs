//! `telepresence connect` to a Kubernetes cluster: the kubeconfig is reduced to the chosen
//! context, flattened and its exec plugins run here (`kubeconfig.rs`); a loopback API server
//! (kind, minikube) is reached through the control-plane container that publishes it; the
//! result is uploaded into the daemon container (`/tp/kubeconfig`, mode 0600) before it starts,
//! and the daemon reaches the traffic-manager through the API port-forward.

use crate::args::ConnectArgs;
use crate::connect::{self, DAEMON_PORT, IMAGE_REPO};
use crate::info::DaemonInfo;
use crate::output::CmdOutput;
use anyhow::{anyhow, bail, Context, Result};
use bollard::query_parameters::ListContainersOptions;
use bollard::Docker;
use docker::engine;
use kubernetes::kubeconfig;
use std::time::Duration;

/// Where the daemon finds its kubeconfig inside its container.
pub const KUBECONFIG_PATH: &str = "/tp/kubeconfig";
/// The daemon's local stand-ins for the manager's gRPC and tunnel ports (inside its network
/// namespace; the volume sync container dials the tunnel one too).
pub const LOCAL_GRPC: &str = "127.0.0.1:18081";
pub const LOCAL_TUNNEL: &str = "127.0.0.1:18082";

/// How long the daemon may take to find the manager and arrive.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection name made from a context name: context names may hold `:` `/` `@` (EKS ARNs,
/// OpenShift users), which container names may not.
pub fn safe_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    while out.starts_with(['-', '_', '.']) {
        out.remove(0);
    }
    if out.is_empty() {
        out.push_str("kube");
    }
    out
}

/// The container that publishes `port` on the host (a kind/minikube control plane), as
/// (container name, its IP on its first non-default network, the container-side port, that
/// network).
pub async fn publisher_of(
    docker: &Docker,
    port: u16,
) -> Result<Option<(String, String, u16, String)>> {
    let list = docker
        .list_containers(Some(ListContainersOptions {
            all: false,
            ..Default::default()
        }))
        .await?;
    for c in list {
        let Some(p) = c
            .ports
            .iter()
            .flatten()
            .find(|p| p.public_port == Some(port))
        else {
            continue;
        };
        let name = c
            .names
            .iter()
            .flatten()
            .next()
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default();
        let mut nets: Vec<(String, String)> = c
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(net, e)| e.ip_address.filter(|ip| !ip.is_empty()).map(|ip| (net, ip)))
            .collect();
        // kind and minikube put their nodes on their own network; prefer it over the default
        // bridge.
        nets.sort_by_key(|(n, _)| (n == "bridge", n.clone()));
        if let Some((net, ip)) = nets.into_iter().next() {
            return Ok(Some((name, ip, p.private_port, net)));
        }
    }
    Ok(None)
}

/// A tar archive holding `tp/kubeconfig` (mode 0600) for `upload_to_container` at `/`.
pub fn kubeconfig_tar(yaml: &str) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o700);
    dir.set_size(0);
    dir.set_cksum();
    b.append_data(&mut dir, "tp/", std::io::empty())?;
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o600);
    // A new modification time on every upload: the daemon reloads the file when it changes.
    h.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    h.set_size(yaml.len() as u64);
    h.set_cksum();
    b.append_data(&mut h, "tp/kubeconfig", yaml.as_bytes())?;
    Ok(b.into_inner()?)
}

pub async fn run(args: ConnectArgs, mut text: String) -> Result<CmdOutput> {
    let kc = kubeconfig::load(args.kubeconfig.as_deref())?;
    let mut reduced = kubeconfig::reduce(&kc, args.context.as_deref())?;
    let context = reduced.context.clone();
    let server = reduced.server.clone();
    let namespace = args.namespace.clone().unwrap_or(reduced.namespace.clone());
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{namespace}-cn", safe_name(&context)));
    crate::connect::validate_name(&name)?;
    let container = format!("tp-{name}");
    // The outbound flags are checked before anything is created.
    let subnet_env = crate::outbound::subnet_env(&args)?;
    let docker = engine::connect().await?;
    if let Some(already) =
        already_connected(&docker, &mut reduced, &name, &namespace, &container).await?
    {
        text.push_str(&already);
        return Ok(CmdOutput::text(text));
    }

    let user_config = reduced.config.clone();
    let (yaml, network, expiry) = prepare(&docker, &mut reduced, &context, &server).await?;
    if let Some(note) = expiry {
        text.push_str(&note);
    }
    // Is there a manager to connect to? Asked from here (where the API server is reachable
    // as the kubeconfig says), before any container is created.
    let token = manager_present(user_config, &context, &server, &args.manager_namespace).await?;
    let mut subnet_env = subnet_env;
    if let Some(t) = token {
        subnet_env.push(format!(
            "{}={}",
            protocol::auth::CLIENT_TOKEN_ENV,
            t.as_str()
        ));
    }

    let exe = std::env::current_exe().context("locating the telepresence executable")?;
    let image = docker::image::ensure_image(&docker, IMAGE_REPO, &exe, &mut |line: &str| {
        eprintln!("{line}");
    })
    .await?;
    eprintln!("Launching Telepresence Daemon");
    let spec = DaemonSpec {
        name: &name,
        container: &container,
        namespace: &namespace,
        manager_namespace: &args.manager_namespace,
        context: &context,
        server: &server,
        image: &image,
        network: network.as_deref(),
        kubeconfig: &yaml,
        subnet_env,
    };
    let (id, port) = match start_daemon(&docker, &spec).await {
        Ok(v) => v,
        Err(e) => {
            let logs = docker::engine::engine_logs(&docker, &container).await;
            let _ = engine::remove_container(&docker, &container, 1).await;
            return Err(e.context(format!("the daemon did not start{logs}")));
        }
    };
    let info = DaemonInfo {
        name,
        namespace,
        context,
        cluster_type: "kubernetes".into(),
        server,
        manager_namespace: args.manager_namespace,
        container,
        container_id: id,
        port,
    };
    connect::record(text, &info)
}

/// `Some(message)` when connection `name` already serves this context and `namespace` (its
/// credentials are refreshed: exec plugins run again, and the daemon picks the new file up for
/// its next API request); an error when it serves another one, or when its container name is
/// taken by something else. A recorded connection whose daemon is gone is forgotten.
async fn already_connected(
    docker: &Docker,
    reduced: &mut kubeconfig::Reduced,
    name: &str,
    namespace: &str,
    container: &str,
) -> Result<Option<String>> {
    let (context, server) = (reduced.context.clone(), reduced.server.clone());
    let Some(existing) = connect::live_connection(docker, name, container).await? else {
        return Ok(None);
    };
    if existing.namespace == namespace && existing.context == context {
        let (yaml, _, expiry) = prepare(docker, reduced, &context, &server).await?;
        upload_kubeconfig(docker, &existing.container, &yaml).await?;
        let mut text = connect::already_message(&existing);
        if let Some(note) = expiry {
            text.push_str(&note);
        }
        return Ok(Some(text));
    }
    bail!(
        "connection {name} is already connected to context {}, namespace {}; run `telepresence quit` first, or connect with another --name",
        existing.context, existing.namespace
    );
}

/// The kubeconfig the daemon gets, as YAML: flattened, host CA roots for clusters naming no
/// CA, exec plugins run here, a loopback server pointed at the container publishing it.
/// Returns it, the network the daemon must join (loopback servers), and a note on when the
/// credentials expire.
async fn prepare(
    docker: &Docker,
    reduced: &mut kubeconfig::Reduced,
    context: &str,
    server: &str,
) -> Result<(String, Option<String>, Option<String>)> {
    kubeconfig::flatten(&mut reduced.config)?;
    kubeconfig::embed_host_roots(&mut reduced.config);
    let note = kubeconfig::resolve_exec(&mut reduced.config)?.map(|expiry| {
        format!(
            "The credentials of context {context} expire at {expiry}; run `telepresence connect` again before then to refresh them\n"
        )
    });
    let mut network = None;
    if let Some((_, port)) = kubeconfig::loopback_server(server) {
        let Some((node, ip, inner, net)) = publisher_of(docker, port).await? else {
            bail!(
                "the API server {server} of context {context} is a loopback address, and no container on this Docker engine publishes port {port}; the daemon container cannot reach it (is the kind/minikube cluster running on this engine?)"
            );
        };
        tracing::info!(%node, %ip, inner, %net, "API server reached through its container");
        kubeconfig::rewrite_server(&mut reduced.config, &format!("{ip}:{inner}"));
        network = Some(net);
    }
    Ok((kubeconfig::to_yaml(&reduced.config)?, network, note))
}

/// Fails with what to do when no ready traffic-manager pod runs in `manager_namespace`;
/// returns the manager's client token, read with the user's own credentials (so only users the
/// chart's RBAC lets read Secret `traffic-manager-auth` can connect).
async fn manager_present(
    config: kube::config::Kubeconfig,
    context: &str,
    server: &str,
    manager_namespace: &str,
) -> Result<Option<protocol::auth::Token>> {
    let cfg =
        kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default())
            .await
            .with_context(|| format!("cannot use context {context}"))?;
    let client = kube::Client::try_from(cfg)?;
    let f = kubernetes::portforward::Forwarder::new(client.clone(), manager_namespace);
    match f.pod().await {
        Ok(_) => client_token(&client, context, manager_namespace).await,
        Err(kubernetes::portforward::ForwardError::NoPod(_)) => bail!(
            "no ready traffic-manager in namespace {manager_namespace} of context {context}; install it with `telepresence helm install --manager-namespace {manager_namespace} --create-namespace`, or pass --manager-namespace"
        ),
        Err(e) => Err(anyhow!(e).context(format!("cannot reach the API server {server} of context {context}"))),
    }
}

/// The manager's client token as the user may read it; a user without read access is told
/// what to ask for.
async fn client_token(
    client: &kube::Client,
    context: &str,
    manager_namespace: &str,
) -> Result<Option<protocol::auth::Token>> {
    use kubernetes::auth::{AuthError, MANAGER_SECRET};
    match kubernetes::auth::client_token(client, manager_namespace).await {
        Ok(t) => Ok(t),
        Err(AuthError::Api {
            source: kube::Error::Api(e),
            ..
        }) if e.code == 403 => bail!(
            "not authorized: the user of context {context} may not read Secret {MANAGER_SECRET} in namespace {manager_namespace}; ask an admin for access to it (chart value clientRbac.subjects)"
        ),
        Err(e) => Err(anyhow!(e)),
    }
}

/// Writes the kubeconfig into a (created or running) daemon container.
async fn upload_kubeconfig(docker: &Docker, container: &str, yaml: &str) -> Result<()> {
    docker
        .upload_to_container(
            container,
            Some(bollard::query_parameters::UploadToContainerOptions {
                path: "/".into(),
                ..Default::default()
            }),
            bollard::body_full(kubeconfig_tar(yaml)?.into()),
        )
        .await
        .context("handing the kubeconfig to the daemon container")
}

/// What the Kubernetes daemon container is made of.
pub struct DaemonSpec<'a> {
    pub name: &'a str,
    pub container: &'a str,
    pub namespace: &'a str,
    pub manager_namespace: &'a str,
    pub context: &'a str,
    pub server: &'a str,
    pub image: &'a str,
    /// The network of a local cluster's control-plane container, joined by the daemon.
    pub network: Option<&'a str>,
    pub kubeconfig: &'a str,
    /// `--also-proxy`/`--never-proxy`/`--allow-conflicting-subnets` for the daemon's routes,
    /// and the manager's client token.
    pub subnet_env: Vec<String>,
}

/// The daemon's environment (the kubeconfig goes in as a file; the manager's client token, in
/// `subnet_env`, is as private as the container's own environment: only the engine shows it).
pub fn daemon_env(s: &DaemonSpec) -> Vec<String> {
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let (dns_env, _, _) = crate::outbound::dns_settings(s.namespace);
    let mut env = vec![
        format!("TP_CONNECTION={}", s.name),
        format!("TP_NAMESPACE={}", s.namespace),
        format!("TP_MANAGER_NAMESPACE={}", s.manager_namespace),
        format!("TP_CONTEXT={}", s.context),
        format!("TP_SERVER={}", s.server),
        format!("TP_KUBECONFIG={KUBECONFIG_PATH}"),
        format!("TP_MANAGER_ADDR={LOCAL_GRPC}"),
        format!("TP_TUNNEL_ADDR={LOCAL_TUNNEL}"),
        format!("TP_LISTEN=0.0.0.0:{DAEMON_PORT}"),
        format!("TP_CLIENT_NAME={user}@{host}"),
        format!(
            "RUST_LOG={}",
            std::env::var("TP_DAEMON_LOG").unwrap_or_else(|_| "info".into())
        ),
    ];
    env.extend(dns_env);
    env.extend(s.subnet_env.iter().cloned());
    env
}

async fn start_daemon(docker: &Docker, s: &DaemonSpec<'_>) -> Result<(String, u16)> {
    // The daemon's resolver answers cluster names (through the manager) for every container
    // that joins its network namespace.
    let (_, dns, dns_search) = crate::outbound::dns_settings(s.namespace);
    let body = connect::daemon_container_body(
        s.image,
        daemon_env(s),
        s.name,
        s.namespace,
        s.network,
        dns,
        dns_search,
    );
    let id = connect::create_named_container(docker, s.container, body, "daemon").await?;
    upload_kubeconfig(docker, s.container, s.kubeconfig).await?;
    let port = connect::start_daemon_container(docker, s.container).await?;
    connect::wait_daemon_ready(
        docker,
        s.container,
        port,
        READY_TIMEOUT,
        Duration::from_millis(50),
        || {
            format!(
                "the daemon did not reach the traffic-manager in namespace {} within {}s",
                s.manager_namespace,
                READY_TIMEOUT.as_secs()
            )
        },
    )
    .await?;
    Ok((id, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_contexts() {
        assert_eq!(safe_name("kind-kind"), "kind-kind");
        assert_eq!(
            safe_name("arn:aws:eks:eu-west-1:123:cluster/prod"),
            "arn-aws-eks-eu-west-1-123-cluster-prod"
        );
        assert_eq!(safe_name("@@"), "kube");
    }

    #[test]
    fn kubeconfig_archive_is_private() {
        let tar = kubeconfig_tar("apiVersion: v1\n").unwrap();
        let mut a = tar::Archive::new(tar.as_slice());
        let entries: Vec<(String, u32, u64)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                    e.size(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                ("tp/".to_string(), 0o700, 0),
                ("tp/kubeconfig".to_string(), 0o600, 15)
            ]
        );
    }
}
