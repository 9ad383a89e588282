//! The commands that talk to running daemons: `status`, `list`, `leave`, `uninstall`, `quit`
//! and `version`.

use crate::args::{ListArgs, QuitArgs, UninstallArgs};
use crate::info::{self, DaemonInfo};
use crate::output::{kv_block, CmdOutput};
use crate::rpc::{connector, status_err};
use anyhow::{bail, Result};
use docker::engine::{self, CONNECTION_LABEL, INTERCEPT_LABEL, ROLE_LABEL};
use protocol::connector::{DaemonStatus, LeaveRequest, ListRequest};
use protocol::manager::{ClusterType, Empty, InterceptInfo, UninstallRequest, Workload};
use serde_json::json;

/// The daemons whose containers still run; info files of dead ones are removed.
pub async fn live_daemons(docker: &bollard::Docker) -> Vec<DaemonInfo> {
    let mut live = Vec::new();
    for d in info::load_all() {
        if engine::is_running(docker, &d.container).await {
            live.push(d);
        } else {
            info::remove(&d.name);
        }
    }
    live
}

/// The daemon a command talks to.
pub async fn selected(
    docker: &bollard::Docker,
    use_: Option<&str>,
    namespace: Option<&str>,
) -> Result<DaemonInfo> {
    let all = live_daemons(docker).await;
    Ok(info::select(&all, use_, namespace)?.clone())
}

pub async fn status(use_: Option<&str>) -> Result<CmdOutput> {
    let docker = engine::connect().await?;
    let mut all = live_daemons(&docker).await;
    if let Some(u) = use_ {
        all = vec![info::select(&all, Some(u), None)?.clone()];
    }
    if all.is_empty() {
        return Ok(CmdOutput {
            text: "Daemon: Not running\nTraffic Manager: Not connected\n".into(),
            data: Some(json!({"daemons": [], "traffic_manager": {"connected": false}})),
        });
    }
    let mut text = String::new();
    let mut data = Vec::new();
    for d in &all {
        let st = match connector(d.port).await {
            Ok(mut c) => c
                .status(Empty {})
                .await
                .map(tonic::Response::into_inner)
                .ok(),
            Err(_) => None,
        };
        let Some(st) = st else {
            text.push_str(&format!(
                "Daemon in container {}: Not responding\n",
                d.container
            ));
            data.push(json!({"name": d.name, "running": false}));
            continue;
        };
        text.push_str(&status_text(d, &st));
        data.push(status_json(d, &st));
    }
    Ok(CmdOutput {
        text,
        data: Some(json!({ "daemons": data })),
    })
}

/// The `status` block of one responding daemon.
fn status_text(d: &DaemonInfo, st: &DaemonStatus) -> String {
    let mut text = format!("Daemon in container {}: Running\n", d.name);
    let mut rows = vec![
        ("Version", Some(format!("v{}", st.version))),
        ("Status", Some(st.status.clone())),
        (
            if st.cluster_type() == ClusterType::Docker {
                "Docker engine"
            } else {
                "Kubernetes server"
            },
            Some(st.server.clone()),
        ),
        ("Kubernetes context", Some(st.context.clone())),
        ("Namespace", Some(st.namespace.clone())),
        ("Manager namespace", Some(st.manager_namespace.clone())),
        ("Container network", Some(st.container_network.clone())),
        ("Intercepts", Some(format!("{} total", st.intercepts.len()))),
    ];
    if st.cluster_type() == ClusterType::Docker {
        rows.retain(|(k, _)| *k != "Kubernetes context" && *k != "Manager namespace");
    }
    let outbound = crate::outbound::status_rows(st);
    rows.extend(outbound.iter().map(|(k, v, _)| (*k, v.clone())));
    let mut block = kv_block("  ", &rows);
    let intercepts: String = st
        .intercepts
        .iter()
        .map(|i| {
            let s = i.spec.clone().unwrap_or_default();
            if crate::engage::kind_of_info(i) == protocol::manager::EngagementKind::Wiretap {
                format!(
                    "    {}: {} (wiretap, {} copies dropped)\n",
                    s.name, s.client, i.wiretap_dropped
                )
            } else {
                format!("    {}: {}\n", s.name, s.client)
            }
        })
        .collect();
    block = crate::outbound::insert_after(&block, "  Intercepts ", &intercepts);
    for (k, _, lines) in &outbound {
        block = crate::outbound::insert_after(&block, &format!("  {k} "), lines);
    }
    text.push_str(&block);
    text.push_str(&format!(
        "Traffic Manager: {}\n",
        if st.manager_connected {
            "Connected"
        } else {
            "Not connected"
        }
    ));
    text.push_str(&kv_block(
        "  ",
        &[
            ("Version", Some(format!("v{}", st.manager_version))),
            ("Authenticated", Some(authenticated_text(st).to_string())),
            ("Traffic Agent", Some(st.agent_image.clone())),
        ],
    ));
    text
}

/// Whether the manager accepted the daemon's credential, as `status` says it.
fn authenticated_text(st: &DaemonStatus) -> &'static str {
    if st.authenticated {
        "yes"
    } else {
        "no (the daemon holds no credential; run telepresence connect again)"
    }
}

/// The `status` data of one responding daemon.
fn status_json(d: &DaemonInfo, st: &DaemonStatus) -> serde_json::Value {
    json!({
        "name": d.name,
        "container": d.container,
        "running": true,
        "version": st.version,
        "status": st.status,
        "cluster_type": st.cluster_type().as_str(),
        "server": st.server,
        "context": st.context,
        "namespace": st.namespace,
        "manager_namespace": st.manager_namespace,
        "container_network": st.container_network,
        "subnets": st.subnets,
        "outbound_tcp": st.outbound_tcp().as_str(),
        "kernel_forwards": st.kernel_forwards,
        "dns": st.dns.as_ref().map(|d| json!({"local_ip": d.local_ip, "remote_ip": d.remote_ip, "exclude_suffixes": d.exclude_suffixes, "include_suffixes": d.include_suffixes, "timeout_seconds": d.timeout_seconds, "cluster_domain": d.cluster_domain})),
        "intercepts": st.intercepts.iter().map(intercept_json).collect::<Vec<_>>(),
        "traffic_manager": {"connected": st.manager_connected, "version": st.manager_version, "agent_image": st.agent_image, "authenticated": st.authenticated},
    })
}

pub fn intercept_json(i: &InterceptInfo) -> serde_json::Value {
    let s = i.spec.clone().unwrap_or_default();
    json!({
        "name": s.name,
        "id": i.id,
        "workload": s.workload,
        "namespace": s.namespace,
        "kind": crate::engage::kind_word(crate::engage::kind_of_info(i)),
        "wiretap_dropped": i.wiretap_dropped,
        "state": i.state().as_str(),
        "message": i.message,
        "client": s.client,
        "destination": format!("{}:{}", s.target_host, s.target_port),
        "service_port": i.service_port,
        "service_port_name": i.service_port_name,
        "workload_kind": i.workload_kind,
        "intercepting": i.disposition,
        "http_headers": s.http_headers,
        "http_path_equal": s.http_path_equal,
        "http_path_prefix": s.http_path_prefix,
        "http_path_regex": s.http_path_regex,
        "kind": crate::engage::kind_word(crate::engage::kind_of_info(i)),
        "ports": crate::engage::port_pairs(i).iter().map(|(remote, name, local)| json!({
            "local": local,
            "remote": remote,
            "remote_name": name,
            "protocol": "TCP",
        })).collect::<Vec<_>>(),
        "to_pod": s.to_pod.iter().map(|p| json!({
            "port": p.port,
            "protocol": crate::engage::to_pod_protocol(p),
        })).collect::<Vec<_>>(),
    })
}

/// The one-line state of a workload in `list`.
pub fn workload_line(w: &Workload) -> String {
    if !w.intercepts.is_empty() {
        let mut s = format!("{}: {}\n", w.name, crate::engage::workload_word(w));
        for i in &w.intercepts {
            let spec = i.spec.clone().unwrap_or_default();
            let state = if i.state() == protocol::manager::InterceptState::Active {
                i.state().to_string()
            } else {
                format!("error: {}: {}", i.state(), i.message)
            };
            if !crate::engage::is_plain(i) {
                s.push_str(&crate::engage::list_block(i, state));
                continue;
            }
            s.push_str(&kv_block(
                "   ",
                &[
                    ("Intercept name", Some(spec.name.clone())),
                    ("State", Some(state)),
                    ("Workload kind", Some(i.workload_kind.clone())),
                    (
                        "Destination",
                        Some(format!("{}:{}", spec.target_host, spec.target_port)),
                    ),
                ]
                .into_iter()
                .chain(crate::engage::to_pod_row(i))
                .chain([("Intercepting", Some(i.disposition.clone()))])
                .collect::<Vec<_>>(),
            ));
        }
        return s;
    }
    if !w.not_interceptable_reason.is_empty() {
        return format!(
            "{}: not interceptable (traffic-agent not installed): {}\n",
            w.name, w.not_interceptable_reason
        );
    }
    if w.agent_installed {
        format!(
            "{}: ready to intercept (traffic-agent already installed)\n",
            w.name
        )
    } else {
        format!(
            "{}: ready to intercept (traffic-agent not yet installed)\n",
            w.name
        )
    }
}

pub async fn list(args: ListArgs, use_: Option<&str>) -> Result<CmdOutput> {
    let docker = engine::connect().await?;
    let d = selected(&docker, use_, args.namespace.as_deref()).await?;
    let mut c = connector(d.port).await?;
    let ws = c
        .list(ListRequest {
            namespace: args.namespace.clone().unwrap_or_default(),
        })
        .await
        .map_err(status_err)?
        .into_inner()
        .workloads;
    let shown: Vec<&Workload> = ws
        .iter()
        .filter(|w| !args.intercepts || !w.intercepts.is_empty())
        .filter(|w| !args.agents || w.agent_installed)
        .filter(|w| !args.only_interceptable || w.not_interceptable_reason.is_empty())
        .collect();
    let text = if shown.is_empty() {
        "No Workloads (Deployments, StatefulSets, ReplicaSets, or Rollouts)\n".to_string()
    } else {
        shown.iter().map(|w| workload_line(w)).collect()
    };
    let data = shown
        .iter()
        .map(|w| {
            json!({
                "name": w.name,
                "namespace": w.namespace,
                "kind": w.kind,
                "ports": w.ports.iter().map(|p| json!({"name": p.name, "port": p.port, "protocol": p.protocol().as_str()})).collect::<Vec<_>>(),
                "agent_installed": w.agent_installed,
                "not_interceptable_reason": w.not_interceptable_reason,
                "intercepts": w.intercepts.iter().map(intercept_json).collect::<Vec<_>>(),
            })
        })
        .collect::<Vec<_>>();
    Ok(CmdOutput {
        text,
        data: Some(json!(data)),
    })
}

/// Removes the handler containers of one intercept (or, with `None`, of the whole connection),
/// then their volume sync containers and volumes.
pub async fn stop_handlers(
    docker: &bollard::Docker,
    connection: &str,
    intercept: Option<&str>,
) -> Result<usize> {
    let mut labels = vec![(ROLE_LABEL, "handler"), (CONNECTION_LABEL, connection)];
    if let Some(i) = intercept {
        labels.push((INTERCEPT_LABEL, i));
    }
    let n = engine::remove_labelled(docker, &labels, 2).await?;
    crate::mounts::remove(docker, connection, intercept).await?;
    Ok(n)
}

pub async fn leave(name: &str, use_: Option<&str>) -> Result<CmdOutput> {
    let docker = engine::connect().await?;
    let d = selected(&docker, use_, None).await?;
    let mut c = connector(d.port).await?;
    c.remove_intercept(LeaveRequest { name: name.into() })
        .await
        .map_err(status_err)?;
    stop_handlers(&docker, &d.name, Some(name)).await?;
    Ok(CmdOutput::text(""))
}

pub async fn uninstall(args: UninstallArgs, use_: Option<&str>) -> Result<CmdOutput> {
    if args.agents.is_empty() && !args.all_agents {
        bail!("say which agents to remove: --agent NAME… or --all-agents");
    }
    let docker = engine::connect().await?;
    let d = selected(&docker, use_, args.namespace.as_deref()).await?;
    let mut c = connector(d.port).await?;
    c.uninstall(UninstallRequest {
        session: None,
        namespace: args.namespace.unwrap_or_default(),
        agents: args.agents,
        all_agents: args.all_agents,
    })
    .await
    .map_err(status_err)?;
    Ok(CmdOutput::text(""))
}

/// Ends one connection: its handlers, then the daemon (which departs from the manager), then
/// its container and info file. (`quit` first brings down the compose projects using it.)
pub(crate) async fn disconnect(docker: &bollard::Docker, d: &DaemonInfo) -> Result<()> {
    stop_handlers(docker, &d.name, None).await?;
    if let Ok(mut c) = connector(d.port).await {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), c.quit(Empty {})).await;
    }
    engine::remove_container(docker, &d.container, 2).await?;
    info::remove(&d.name);
    Ok(())
}

pub async fn quit(args: QuitArgs, use_: Option<&str>) -> Result<CmdOutput> {
    let docker = engine::connect().await?;
    let all = live_daemons(&docker).await;
    if args.stop_daemons {
        crate::compose::teardown::down_projects_using(&docker, None).await?;
        let all = live_daemons(&docker).await;
        let jobs = all.iter().map(|d| disconnect(&docker, d));
        for r in futures::future::join_all(jobs).await {
            r?;
        }
        // Whatever else we started on this engine: handlers and daemons without an info file,
        // agents (restoring the direct path), Docker-engine traffic-managers.
        engine::remove_labelled(&docker, &[(ROLE_LABEL, "handler")], 2).await?;
        engine::remove_labelled(&docker, &[(ROLE_LABEL, crate::mounts::ROLE_FS_SYNC)], 2).await?;
        crate::mounts::remove_volumes(
            &docker,
            vec![format!(
                "{}={}",
                engine::MANAGED_BY_LABEL,
                engine::MANAGED_BY_VALUE
            )],
        )
        .await?;
        engine::remove_labelled(&docker, &[(ROLE_LABEL, "daemon")], 2).await?;
        // Managers before agents: a manager re-attaches the agents of intercepted workloads.
        engine::remove_labelled(&docker, &[(ROLE_LABEL, "traffic-manager")], 2).await?;
        docker::provider::sweep_agents(&docker, None).await?;
        // Images of earlier builds of this binary are never used again.
        if let Ok(exe) = std::env::current_exe() {
            if let Ok(current) = docker::image::image_tag(crate::connect::IMAGE_REPO, &exe) {
                let _ = docker::image::remove_images(
                    &docker,
                    crate::connect::IMAGE_REPO,
                    Some(&current),
                )
                .await;
            }
        }
        return Ok(CmdOutput::text(if all.is_empty() {
            "Not connected\n"
        } else {
            "Disconnected\n"
        }));
    }
    if all.is_empty() {
        return Ok(CmdOutput::text("Not connected\n"));
    }
    let d = info::select(&all, use_, None)?;
    crate::compose::teardown::down_projects_using(&docker, Some(&d.name)).await?;
    if engine::is_running(&docker, &d.container).await {
        disconnect(&docker, d).await?;
    }
    Ok(CmdOutput::text("Disconnected\n"))
}

pub async fn version(use_: Option<&str>) -> Result<CmdOutput> {
    let mut rows = vec![("Client".to_string(), format!("v{}", protocol::VERSION))];
    if let Ok(docker) = engine::connect().await {
        let all = live_daemons(&docker).await;
        if let Ok(d) = info::select(&all, use_, None) {
            if let Ok(mut c) = connector(d.port).await {
                if let Ok(st) = c.status(Empty {}).await {
                    let st = st.into_inner();
                    rows.push((
                        format!("Daemon in container {}", d.container),
                        format!("v{}", st.version),
                    ));
                    if st.manager_connected {
                        rows.push(("Traffic Manager".into(), format!("v{}", st.manager_version)));
                        rows.push(("Traffic Agent".into(), st.agent_image));
                    }
                }
            }
        }
    }
    let data = json!(rows
        .iter()
        .cloned()
        .collect::<std::collections::BTreeMap<_, _>>());
    let refs: Vec<(&str, Option<String>)> = rows
        .iter()
        .map(|(k, v)| (k.as_str(), Some(v.clone())))
        .collect();
    Ok(CmdOutput {
        text: kv_block("", &refs),
        data: Some(data),
    })
}
