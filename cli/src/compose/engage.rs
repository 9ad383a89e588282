//! `up` and `create`: the connections the extended services name (`crate::connect::run`, reused
//! when already running), their engagements (`crate::intercept::spec` and the daemon's
//! `CreateIntercept`, the same path as `telepresence intercept`), the remote volumes the mount
//! policies ask for (`compose::volumes`, filled as for `--docker-run` by `crate::mounts`), the
//! daemons on the project's networks (`network.rs`), the rewritten file, then the compose tool.
//! Every step is recorded before the next, and any failure undoes what was recorded
//! (`teardown::undo`), so a failing `up` leaves nothing.

use super::state::{rewritten_path, ConnectionState, EngagementState, State, VolumeState};
use super::{network, state_dir, teardown, tool, Invocation};
use crate::args::{ConnectArgs, InterceptArgs};
use crate::engage::Kind;
use crate::info::DaemonInfo;
use crate::mounts::HandlerMount;
use crate::rpc::{connector, status_err};
use anyhow::{anyhow, bail, Context, Result};
use compose::project::Project;
use compose::rewrite::{Plan, RemoteVolume, ServicePlan};
use compose::volumes::RemoteMount;
use compose::xtele::{ClusterType, Connection, Engagement, HttpMatch, PortMap, ServiceTele, Tele};
use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;

/// A progress line on stderr (`✔ …` on a terminal).
pub fn progress(line: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!(" \u{2714} {line}");
    } else {
        eprintln!("{line}");
    }
}

/// `up` / `create`.
pub async fn up(inv: &Invocation, project: &Project, tele: &Tele) -> Result<i32> {
    if tele.services.is_empty() {
        return tool::pass_through(inv, project).await;
    }
    let docker = docker::engine::connect().await?;
    let dir = state_dir();
    let file = rewritten_path(&dir, &project.name);
    if State::load(&dir, &project.name).is_none() {
        let mut state = State::new(&project.name, &project.dir);
        state.save(&dir)?;
        if let Err(e) = prepare(&docker, project, tele, &mut state).await {
            let _ = teardown::undo(&docker, &state, None).await;
            return Err(e);
        }
    }
    let cmd = tool::command(
        &project.name,
        &project.dir,
        &file,
        &inv.subcommand,
        &inv.args,
    )?;
    let detached = inv.subcommand == "create"
        || inv
            .args
            .iter()
            .any(|a| a == "-d" || a == "--detach" || a == "--no-start");
    let code = if detached {
        tool::run(cmd).await?
    } else {
        tool::run_foreground(cmd).await?
    };
    let Some(mut state) = State::load(&dir, &project.name) else {
        return Ok(code);
    };
    if code != 0 && detached {
        // Nothing half-done: what compose created goes too.
        teardown::undo(&docker, &state, Some(&project.dir)).await?;
        progress("compose up failed: engagements ended, connections and networks removed");
    } else if !detached || inv.subcommand == "create" {
        // Foreground `up` ended (Ctrl-C or every container exited), or `create` is done:
        // the engagements end, the connections stay for `down`.
        teardown::end_engagements(&mut state).await?;
    }
    Ok(code)
}

/// Connections, engagements, networks and the rewritten file, recorded in `state` step by step.
async fn prepare(
    docker: &bollard::Docker,
    project: &Project,
    tele: &Tele,
    state: &mut State,
) -> Result<()> {
    let dir = state_dir();
    let top_file = project.tele_origin.get("").unwrap_or(&project.files[0]);
    let used: BTreeSet<usize> = tele.services.iter().map(|s| s.connection).collect();
    let mut daemons: BTreeMap<usize, DaemonInfo> = BTreeMap::new();
    for i in used {
        let at = format!("{}: x-tele.connections.{i}", top_file.display());
        let (d, started) = establish(&tele.connections[i]).await.context(at)?;
        state.connections.push(ConnectionState {
            name: d.name.clone(),
            started,
        });
        state.save(&dir)?;
        progress(&format!(
            "connection {} (namespace {})",
            d.name, d.namespace
        ));
        daemons.insert(i, d);
    }
    let mut plan = Plan::new();
    for st in &tele.services {
        let d = &daemons[&st.connection];
        let at = format!("{}: services.{}.x-tele", st.file.display(), st.service);
        let p = engage_service(docker, d, st, project, tele, state)
            .await
            .context(at)?;
        progress(&format!("{} {}", st.engagement.type_word(), st.service));
        plan.insert(st.service.clone(), p);
    }
    let joins: BTreeMap<String, String> = tele
        .services
        .iter()
        .map(|s| (s.service.clone(), daemons[&s.connection].container.clone()))
        .collect();
    let save = |s: &State| s.save(&dir);
    network::attach(docker, project, &joins, state, &save).await?;
    let tree = compose::rewrite::rewrite(&project.tree, &plan);
    std::fs::write(
        rewritten_path(&dir, &project.name),
        compose::model::to_compose_yaml(&tree),
    )
    .context("writing the rewritten compose file")?;
    Ok(())
}

/// Starts (or finds) the connection a config describes; returns it and whether it was started
/// here.
async fn establish(c: &Connection) -> Result<(DaemonInfo, bool)> {
    if !c.mapped_namespaces.is_empty() {
        bail!("mapped-namespaces is not supported by this telepresence: remove it (a connection resolves the names of its own namespace)");
    }
    let cluster_type = c.cluster_type.map(|t| match t {
        ClusterType::Docker => crate::args::ClusterType::Docker,
        ClusterType::Kubernetes => crate::args::ClusterType::Kubernetes,
    });
    let docker_cluster = cluster_type == Some(crate::args::ClusterType::Docker);
    let name = c.name.clone().or_else(|| {
        docker_cluster.then(|| {
            format!(
                "docker-{}-cn",
                c.namespace
                    .as_deref()
                    .unwrap_or(docker::provider::DEFAULT_NAMESPACE)
            )
        })
    });
    let args = ConnectArgs {
        docker: true,
        name: name.clone(),
        cluster_type,
        namespace: c.namespace.clone(),
        context: c.context.clone(),
        kubeconfig: c.kubeconfig.clone(),
        manager_namespace: c
            .manager_namespace
            .clone()
            .unwrap_or_else(|| "ambassador".into()),
        also_proxy: c.also_proxy.clone(),
        never_proxy: c.never_proxy.clone(),
        ..Default::default()
    };
    let docker = docker::engine::connect().await?;
    let before: BTreeSet<String> = crate::commands::live_daemons(&docker)
        .await
        .into_iter()
        .map(|d| d.name)
        .collect();
    let out = crate::connect::run(args).await?;
    let info: DaemonInfo = match out.data {
        Some(v) => serde_json::from_value(v)?,
        None => crate::commands::live_daemons(&docker)
            .await
            .into_iter()
            .find(|d| name.as_deref().is_none_or(|n| d.name == n))
            .ok_or_else(|| anyhow!("the connection did not come up"))?,
    };
    let started = !before.contains(&info.name);
    Ok((info, started))
}

/// Creates one service's engagement (recorded in `state`); what the service becomes.
async fn engage_service(
    docker: &bollard::Docker,
    d: &DaemonInfo,
    st: &ServiceTele,
    project: &Project,
    tele: &Tele,
    state: &mut State,
) -> Result<ServicePlan> {
    let join = |environment, volumes| ServicePlan::Join {
        container: d.container.clone(),
        environment,
        volumes,
    };
    let Some(args) = intercept_args(&st.engagement, &d.namespace)? else {
        return match &st.engagement {
            Engagement::Proxy { name, ports } => proxy_plan(docker, d, name, ports).await,
            _ => Ok(join(BTreeMap::new(), Vec::new())),
        };
    };
    let spec = crate::intercept::spec(&args)?;
    let mut c = connector(d.port).await?;
    let info = c
        .create_intercept(spec)
        .await
        .map_err(status_err)?
        .into_inner();
    state.engagements.push(EngagementState {
        connection: d.name.clone(),
        name: args.name.clone(),
        service: st.service.clone(),
    });
    state.save(&state_dir())?;
    if info.state() != protocol::manager::InterceptState::Active {
        bail!(
            "{} {}: {}: {}",
            st.engagement.type_word(),
            args.name,
            info.state(),
            info.message
        );
    }
    let volumes = remote_volumes(docker, d, st, project, tele, &args.name, &info, state).await?;
    Ok(join(crate::intercept::handler_env(&info, None), volumes))
}

/// Applies the mount policies to the service's compose volumes (`compose::volumes`); the
/// remote ones are filled and kept in sync as for `--docker-run` (`crate::mounts`), recorded
/// in `state` so `down` removes them.
#[allow(clippy::too_many_arguments)]
async fn remote_volumes(
    docker: &bollard::Docker,
    d: &DaemonInfo,
    st: &ServiceTele,
    project: &Project,
    tele: &Tele,
    name: &str,
    info: &protocol::manager::InterceptInfo,
    state: &mut State,
) -> Result<Vec<RemoteVolume>> {
    let remote: Vec<RemoteMount> = info
        .mounts
        .iter()
        .map(|m| RemoteMount {
            path: m.path.clone(),
            read_only: m.read_only,
        })
        .collect();
    let uses = compose::volumes::named_volumes(&project.tree, &st.service);
    let watch_only = matches!(st.engagement, Engagement::Wiretap { .. });
    let swaps = compose::volumes::decide(&uses, &tele.mounts, &remote, watch_only)?;
    if swaps.is_empty() {
        return Ok(Vec::new());
    }
    let planned = crate::mounts::plan(&d.name, name, "", &info.mounts, false);
    let mounts: Vec<HandlerMount> = swaps
        .iter()
        .map(|s| HandlerMount {
            read_only: s.read_only,
            ..planned[s.remote].clone()
        })
        .collect();
    state.volumes.push(VolumeState {
        connection: d.name.clone(),
        engagement: name.to_string(),
    });
    state.save(&state_dir())?;
    let summary = crate::intercept::start_volumes(docker, d, name, info, &mounts).await?;
    for s in &swaps {
        progress(&format!(
            "{}: volume {} at {} is the workload's{} ({summary})",
            st.service,
            s.volume,
            s.target,
            if s.read_only { " (read-only)" } else { "" }
        ));
    }
    Ok(swaps
        .iter()
        .zip(&mounts)
        .map(|(s, m)| RemoteVolume {
            target: s.target.clone(),
            volume: m.volume.clone(),
            read_only: s.read_only,
        })
        .collect())
}

/// What an engagement asks for, field by field: kind, name, workload, service, ports, HTTP
/// conditions, container, pod-local ports (`None` for `connect` and `proxy`).
type Parts<'a> = (
    Kind,
    &'a String,
    Option<String>,
    Option<String>,
    Vec<PortMap>,
    HttpMatch,
    Option<String>,
    &'a Vec<u16>,
);

fn parts(e: &Engagement) -> Option<Parts<'_>> {
    Some(match e {
        Engagement::Connect | Engagement::Proxy { .. } => return None,
        Engagement::Intercept {
            name,
            workload,
            service,
            ports,
            http,
            to_pod,
        } => (
            Kind::Intercept,
            name,
            Some(workload.clone()),
            service.clone(),
            ports.clone(),
            http.clone(),
            None,
            to_pod,
        ),
        Engagement::Replace {
            name,
            container,
            ports,
            to_pod,
        } => (
            Kind::Replace,
            name,
            None,
            None,
            ports.clone(),
            HttpMatch::default(),
            container.clone(),
            to_pod,
        ),
        Engagement::Ingest {
            name,
            container,
            to_pod,
        } => (
            Kind::Ingest,
            name,
            None,
            None,
            Vec::new(),
            HttpMatch::default(),
            container.clone(),
            to_pod,
        ),
        Engagement::Wiretap {
            name,
            service,
            ports,
            http,
            to_pod,
        } => (
            Kind::Wiretap,
            name,
            None,
            service.clone(),
            ports.clone(),
            http.clone(),
            None,
            to_pod,
        ),
    })
}

/// The `telepresence intercept` arguments of an engagement (`None` for `connect` and `proxy`).
fn intercept_args(e: &Engagement, namespace: &str) -> Result<Option<InterceptArgs>> {
    let Some((kind, name, workload, service, ports, http, container, to_pod)) = parts(e) else {
        return Ok(None);
    };
    let to_pod = to_pod
        .iter()
        .map(|p| crate::engage::parse_to_pod(&p.to_string()).map_err(|e| anyhow!(e)))
        .collect::<Result<Vec<_>>>()?;
    let paths = http.paths.len() + http.prefixes.len() + http.regexps.len();
    if paths > 1 {
        bail!("httpPaths, httpPathPrefixes and httpPathRegexps: give at most one path condition per engagement");
    }
    Ok(Some(InterceptArgs {
        name: name.clone(),
        port: ports.iter().map(port_arg).collect(),
        service,
        replace: kind == Kind::Replace,
        kind,
        namespace: Some(namespace.to_string()),
        workload,
        docker_run: false,
        address: "127.0.0.1".into(),
        container,
        env_file: None,
        env_syntax: crate::envfile::EnvSyntax::Docker,
        env_json: None,
        mount: "false".into(),
        docker_mount: None,
        http_header: http
            .headers
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        http_path_equal: http.paths.first().cloned(),
        http_path_prefix: http.prefixes.first().cloned(),
        http_path_regex: http.regexps.first().cloned(),
        command: Vec::new(),
        extras: crate::engage::HandlerExtras {
            to_pod,
            ..Default::default()
        },
    }))
}

fn port_arg(p: &PortMap) -> String {
    if p.remote.is_empty() {
        p.local.to_string()
    } else {
        format!("{}:{}", p.local, p.remote)
    }
}

/// A proxy: a forwarder in the daemon's network namespace listening on each service port and
/// dialing the remote service by its cluster name.
async fn proxy_plan(
    docker: &bollard::Docker,
    d: &DaemonInfo,
    name: &str,
    ports: &[PortMap],
) -> Result<ServicePlan> {
    let mut c = connector(d.port).await?;
    let pairs: Vec<(u16, String)> = if ports.is_empty() {
        let list = c
            .list(protocol::connector::ListRequest {
                namespace: d.namespace.clone(),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        let w = list
            .workloads
            .iter()
            .find(|w| w.name == name)
            .ok_or_else(|| anyhow!("name: no workload {name:?} in namespace {}", d.namespace))?;
        let tcp: Vec<(u16, String)> = w
            .ports
            .iter()
            .filter(|p| p.protocol() == protocol::manager::PortProtocol::Tcp)
            .filter_map(|p| u16::try_from(p.port).ok())
            .map(|p| (p, p.to_string()))
            .collect();
        if tcp.is_empty() {
            bail!("ports: {name} declares no ports; say which: ports: [\"<port siblings call>:<remote port>\"]");
        }
        tcp
    } else {
        ports
            .iter()
            .map(|p| {
                let remote = if p.remote.is_empty() {
                    p.local.to_string()
                } else {
                    p.remote.clone()
                };
                (p.local, remote)
            })
            .collect()
    };
    let domain = c
        .status(protocol::manager::Empty {})
        .await
        .map_err(status_err)?
        .into_inner()
        .dns
        .map(|d| d.cluster_domain)
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "cluster.local".into());
    let host = format!("{name}.{}.svc.{domain}", d.namespace);
    let mut command = vec![super::forward::ROLE.to_string()];
    command.extend(pairs.iter().map(|(l, r)| format!("{l}={host}:{r}")));
    let image = docker
        .inspect_container(
            &d.container,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await?
        .config
        .and_then(|c| c.image)
        .ok_or_else(|| anyhow!("cannot tell the image of {}", d.container))?;
    Ok(ServicePlan::Proxy {
        container: d.container.clone(),
        image,
        command,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engagements_become_intercept_arguments() {
        let e = Engagement::Intercept {
            name: "web".into(),
            workload: "web-v2".into(),
            service: None,
            ports: vec![PortMap {
                local: 9090,
                remote: "8080".into(),
            }],
            http: HttpMatch {
                headers: BTreeMap::from([("x-dev".to_string(), "me".to_string())]),
                prefixes: vec!["/api".into()],
                ..Default::default()
            },
            to_pod: vec![],
        };
        let a = intercept_args(&e, "shop").unwrap().unwrap();
        assert_eq!(a.port, vec!["9090:8080"]);
        assert_eq!(a.workload.as_deref(), Some("web-v2"));
        assert_eq!(a.http_header, vec!["x-dev=me"]);
        assert_eq!(a.http_path_prefix.as_deref(), Some("/api"));
        assert_eq!(a.namespace.as_deref(), Some("shop"));
        let spec = crate::intercept::spec(&a).unwrap();
        assert_eq!(spec.target_port, 9090);
        let r = Engagement::Replace {
            name: "web".into(),
            container: None,
            ports: vec![],
            to_pod: vec![],
        };
        assert_eq!(
            crate::engage::kind_of(&intercept_args(&r, "shop").unwrap().unwrap()),
            Kind::Replace
        );
        assert!(intercept_args(&Engagement::Connect, "shop")
            .unwrap()
            .is_none());
        let w = Engagement::Wiretap {
            name: "w".into(),
            service: None,
            ports: vec![],
            http: HttpMatch::default(),
            to_pod: vec![7070],
        };
        let a = intercept_args(&w, "shop").unwrap().unwrap();
        assert_eq!(crate::engage::kind_of(&a), Kind::Wiretap);
        assert_eq!(a.workload, None);
        assert_eq!(a.extras.to_pod.len(), 1);
        assert_eq!(crate::intercept::spec(&a).unwrap().to_pod.len(), 1);
    }
}
