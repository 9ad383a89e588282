//! Entry points of the roles that run inside containers from the same binary: the daemon, the
//! traffic-manager (Docker engine or Kubernetes, by `TP_CLUSTER_TYPE`) and the traffic-agent.

use anyhow::{Context, Result};

pub async fn daemon() -> Result<()> {
    let cfg = daemon_image::DaemonConfig::from_env()?;
    daemon_image::run(cfg).await?;
    Ok(())
}

/// The traffic-manager of the platform named by `TP_CLUSTER_TYPE` (default docker); each
/// platform crate bootstraps its own from the environment (docker/src/startup.rs,
/// kubernetes/src/startup.rs).
pub async fn traffic_manager() -> Result<()> {
    let cluster =
        std::env::var(protocol::ports::env::CLUSTER_TYPE).unwrap_or_else(|_| "docker".into());
    match cluster.as_str() {
        "docker" => docker::startup::run(shutdown_signal()).await?,
        "kubernetes" => kubernetes::startup::run(shutdown_signal()).await?,
        _ => anyhow::bail!("TP_CLUSTER_TYPE={cluster:?} is not docker or kubernetes"),
    }
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The init container of a Kubernetes pod whose numeric target ports need a redirect to the
/// agent (`TP_REDIRECTS`); needs NET_ADMIN.
pub fn agent_init() -> Result<()> {
    let pairs = agent::portmap::init_redirects()?;
    for (app, agent) in pairs {
        eprintln!("redirecting port {app} to the traffic-agent on {agent}");
    }
    Ok(())
}

pub async fn agent() -> Result<()> {
    let cfg = agent::AgentConfig::from_env()?;
    agent::run(cfg).await?;
    Ok(())
}

/// Removes the agent's netfilter table; with `check`, only reports it (exit 3 when present).
pub fn agent_cleanup(check: bool) -> Result<()> {
    if check {
        if agent::nft::table_exists(agent::TABLE)? {
            std::process::exit(3);
        }
        return Ok(());
    }
    let removed = agent::cleanup()?;
    eprintln!(
        "{}",
        if removed {
            "removed the traffic-agent's netfilter table"
        } else {
            "no traffic-agent netfilter table present"
        }
    );
    Ok(())
}

/// The volume sync container: mirrors the intercept's remote mounts into its volumes, says
/// [`crate::mounts::READY_LINE`] once the initial copy is complete, then keeps them in sync
/// both ways until stopped.
pub async fn fs_sync() -> Result<()> {
    #[derive(serde::Deserialize)]
    struct Spec {
        remote: String,
        local: String,
        read_only: bool,
    }
    let tunnel = std::env::var("TP_TUNNEL_ADDR").context("TP_TUNNEL_ADDR is required")?;
    let intercept_id = std::env::var("TP_INTERCEPT_ID").context("TP_INTERCEPT_ID is required")?;
    let specs: Vec<Spec> =
        serde_json::from_str(&std::env::var("TP_MOUNTS").context("TP_MOUNTS is required")?)
            .context("TP_MOUNTS is not a JSON list of {remote, local, read_only}")?;
    let mounts = specs
        .into_iter()
        .map(|s| daemon_image::fs::LocalMount {
            remote_path: s.remote,
            local_dir: s.local.into(),
            read_only: s.read_only,
        })
        .collect();
    let mut stream = relay::dial(&tunnel)
        .await
        .with_context(|| format!("cannot reach the traffic-manager tunnel at {tunnel}"))?;
    let header = protocol::tunnel::TunnelHeader {
        conn_id: uuid::Uuid::new_v4().to_string(),
        intercept_id,
        kind: protocol::tunnel::TunnelKind::Fs,
        session_id: std::env::var(protocol::auth::SESSION_ID_ENV).unwrap_or_default(),
        proof: std::env::var(protocol::auth::TUNNEL_PROOF_ENV).unwrap_or_default(),
        ..Default::default()
    };
    protocol::tunnel::write_header(&mut stream, protocol::tunnel::Role::Client, &header).await?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let sync = tokio::spawn(daemon_image::fs::sync(
        stream,
        mounts,
        ready_tx,
        shutdown_signal(),
    ));
    if let Ok(st) = ready_rx.await {
        if !st.unavailable.is_empty() {
            eprintln!(
                "not mirrored (not a directory on the workload side): {}",
                st.unavailable.join(", ")
            );
        }
        println!(
            "{} {} files, {} bytes in {:.3}s",
            crate::mounts::READY_LINE,
            st.files,
            st.bytes,
            st.elapsed.as_secs_f64()
        );
    }
    sync.await
        .context("the sync task failed")?
        .context("volume sync")?;
    Ok(())
}
