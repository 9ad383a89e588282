//! Remote volumes for a `--docker-run` handler: one Docker volume per mount of the intercepted
//! container, filled and kept in sync by a sync container of ours (`fs-sync` role) that joins
//! the daemon's network namespace and talks to the workload's agent through the manager; the
//! handler mounts the same volumes under `TELEPRESENCE_ROOT`. Everything is labelled with the
//! connection and intercept, and removed when the handler exits (or on `leave`/`quit`).

use anyhow::{anyhow, bail, Context, Result};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{LogsOptions, StartContainerOptions};
use bollard::Docker;
use docker::engine::{self, CONNECTION_LABEL, INTERCEPT_LABEL, ROLE_LABEL};
use futures::StreamExt;
use protocol::manager::MountInfo;
use std::collections::HashMap;
use std::time::Duration;

/// Role label of sync containers.
pub const ROLE_FS_SYNC: &str = "fs-sync";
/// The line a sync container logs once every mount's initial content is on disk.
pub const READY_LINE: &str = "telepresence-fs-ready";
/// How long the initial copy may take.
const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// `--mount` parsed: off, or on with an optional root path and read-only flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountChoice {
    pub enabled: bool,
    pub root: Option<String>,
    pub read_only: bool,
}

/// Parses `--mount true|false|PATH[:ro]`.
pub fn parse_mount(s: &str) -> Result<MountChoice> {
    let (v, ro) = match s.strip_suffix(":ro") {
        Some(v) => (v, true),
        None => (s, false),
    };
    Ok(match v {
        "true" | "" => MountChoice {
            enabled: true,
            root: None,
            read_only: ro,
        },
        "false" if !ro => MountChoice {
            enabled: false,
            root: None,
            read_only: false,
        },
        p if p.starts_with('/') => MountChoice {
            enabled: true,
            root: Some(p.trim_end_matches('/').to_string()).filter(|p| !p.is_empty()),
            read_only: ro,
        },
        other => bail!(
            "invalid --mount {other:?}: use true, false, or an absolute path (optionally with :ro)"
        ),
    })
}

/// One remote mount as the handler gets it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HandlerMount {
    pub volume: String,
    /// The path in the intercepted container.
    pub remote: String,
    /// Where it appears in the handler (`<root><remote>`).
    pub target: String,
    pub read_only: bool,
}

/// The volume name of mount `i` of an intercept.
fn volume_name(connection: &str, intercept: &str, i: usize) -> String {
    format!("tp-{connection}-{intercept}-{i}")
}

/// Plans the handler's mounts under `root`.
pub fn plan(
    connection: &str,
    intercept: &str,
    root: &str,
    mounts: &[MountInfo],
    force_ro: bool,
) -> Vec<HandlerMount> {
    mounts
        .iter()
        .enumerate()
        .map(|(i, m)| HandlerMount {
            volume: volume_name(connection, intercept, i),
            remote: m.path.clone(),
            target: format!("{root}{}", m.path),
            read_only: m.read_only || force_ro,
        })
        .collect()
}

fn labels(connection: &str, intercept: &str, role: &str) -> HashMap<String, String> {
    crate::connect::labels(
        role,
        &[(CONNECTION_LABEL, connection), (INTERCEPT_LABEL, intercept)],
    )
}

/// The intercept a sync container mirrors, and the client session (with its tunnel proof) its
/// tunnel connection names.
pub struct SyncTarget<'a> {
    pub intercept_id: &'a str,
    pub session: &'a protocol::manager::SessionInfo,
}

/// Creates the volumes and the sync container, and waits until the initial copy is complete;
/// returns the sync container's summary ("N files, B bytes in S s").
/// On failure everything created is removed again.
pub async fn start(
    docker: &Docker,
    daemon_container: &str,
    connection: &str,
    intercept: &str,
    target: &SyncTarget<'_>,
    image: &str,
    mounts: &[HandlerMount],
) -> Result<String> {
    let name = format!("tp-fs-{connection}-{intercept}");
    let name = name.as_str();
    let r: Result<String> = async {
        let tunnel = daemon_env(docker, daemon_container, "TP_TUNNEL_ADDR").await?;
        for m in mounts {
            docker
                .create_volume(bollard::models::VolumeCreateRequest {
                    name: Some(m.volume.clone()),
                    labels: Some(labels(connection, intercept, "volume")),
                    ..Default::default()
                })
                .await
                .with_context(|| format!("creating volume {}", m.volume))?;
        }
        let spec: Vec<serde_json::Value> = mounts
            .iter()
            .enumerate()
            .map(|(i, m)| serde_json::json!({"remote": m.remote, "local": format!("/telfs/{i}"), "read_only": m.read_only}))
            .collect();
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(vec!["fs-sync".into()]),
            env: Some(vec![
                format!("TP_TUNNEL_ADDR={tunnel}"),
                format!("TP_INTERCEPT_ID={}", target.intercept_id),
                format!(
                    "{}={}",
                    protocol::auth::SESSION_ID_ENV,
                    target.session.session_id
                ),
                format!(
                    "{}={}",
                    protocol::auth::TUNNEL_PROOF_ENV,
                    target.session.tunnel_proof
                ),
                format!("TP_MOUNTS={}", serde_json::Value::Array(spec)),
            ]),
            labels: Some(labels(connection, intercept, ROLE_FS_SYNC)),
            host_config: Some(HostConfig {
                network_mode: Some(format!("container:{daemon_container}")),
                binds: Some(
                    mounts
                        .iter()
                        .enumerate()
                        .map(|(i, m)| format!("{}:/telfs/{i}", m.volume))
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        crate::connect::create_named_container(docker, name, body, "volume sync").await?;
        docker
            .start_container(name, None::<StartContainerOptions>)
            .await
            .with_context(|| format!("starting the volume sync container {name}"))?;
        wait_ready(docker, name).await
    }
    .await;
    if r.is_err() {
        let _ = remove(docker, connection, Some(intercept)).await;
    }
    r
}

/// Follows the sync container's log until it says the copy is complete; returns the rest of
/// that line.
async fn wait_ready(docker: &Docker, name: &str) -> Result<String> {
    let opts = LogsOptions {
        follow: true,
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let mut logs = docker.logs(name, Some(opts));
    let mut seen = String::new();
    let wait = async {
        while let Some(chunk) = logs.next().await {
            let chunk = chunk?.to_string();
            if let Some(rest) = chunk.split_once(READY_LINE).map(|(_, r)| r) {
                return Ok(rest.lines().next().unwrap_or_default().trim().to_string());
            }
            seen.push_str(&chunk);
        }
        Err(anyhow!("it exited"))
    };
    match tokio::time::timeout(READY_TIMEOUT, wait).await {
        Ok(Ok(summary)) => Ok(summary),
        Ok(Err(e)) => Err(anyhow!(
            "the volume sync container {name} failed before the volumes were ready ({e}): {}",
            seen.trim()
        )),
        Err(_) => bail!("the volumes were not ready within {READY_TIMEOUT:?}"),
    }
}

/// A variable from the daemon container's environment.
async fn daemon_env(docker: &Docker, container: &str, key: &str) -> Result<String> {
    let c = docker
        .inspect_container(
            container,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await?;
    c.config
        .and_then(|c| c.env)
        .into_iter()
        .flatten()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
        .ok_or_else(|| anyhow!("the daemon container {container} has no {key}"))
}

/// Removes the sync containers and volumes of one intercept (or of the whole connection).
pub async fn remove(docker: &Docker, connection: &str, intercept: Option<&str>) -> Result<()> {
    stop_sync(docker, connection, intercept).await?;
    let mut filter = vec![format!("{CONNECTION_LABEL}={connection}")];
    if let Some(i) = intercept {
        filter.push(format!("{INTERCEPT_LABEL}={i}"));
    }
    remove_volumes(docker, filter).await
}

/// Removes the file-sync containers of `connection` (of one engagement with `intercept`); their
/// volumes stay (containers that mounted them may still exist, e.g. stopped compose services).
pub async fn stop_sync(docker: &Docker, connection: &str, intercept: Option<&str>) -> Result<()> {
    let mut sel = vec![(ROLE_LABEL, ROLE_FS_SYNC), (CONNECTION_LABEL, connection)];
    if let Some(i) = intercept {
        sel.push((INTERCEPT_LABEL, i));
    }
    engine::remove_labelled(docker, &sel, 2).await?;
    Ok(())
}

/// Removes every volume carrying all the `key=value` labels.
pub async fn remove_volumes(docker: &Docker, labels: Vec<String>) -> Result<()> {
    let vols = docker
        .list_volumes(Some(bollard::query_parameters::ListVolumesOptions {
            filters: Some(HashMap::from([("label".to_string(), labels)])),
        }))
        .await?;
    for v in vols.volumes.into_iter().flatten() {
        // A handler started with `docker run --rm` may still be on its way out (the engine
        // removes it after it stopped): a volume it holds is "in use" (409) for a moment.
        let mut tries = 0;
        loop {
            match docker
                .remove_volume(
                    &v.name,
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await
            {
                Ok(())
                | Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => break,
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 409, ..
                }) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(anyhow!("removing volume {}: {e}", v.name)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_flag() {
        assert_eq!(
            parse_mount("true").unwrap(),
            MountChoice {
                enabled: true,
                root: None,
                read_only: false
            }
        );
        assert!(!parse_mount("false").unwrap().enabled);
        let p = parse_mount("/mnt/remote/:ro").unwrap();
        assert_eq!(p.root.as_deref(), Some("/mnt/remote"));
        assert!(p.read_only);
        assert!(parse_mount("true:ro").unwrap().read_only);
        assert!(parse_mount("relative/dir").is_err());
        assert!(parse_mount("false:ro").is_err());
    }

    #[test]
    fn handler_mounts_under_root() {
        let m = plan(
            "c",
            "web",
            "/tmp/telfs-1",
            &[
                MountInfo {
                    path: "/data".into(),
                    read_only: false,
                },
                MountInfo {
                    path: "/etc/cfg".into(),
                    read_only: true,
                },
            ],
            false,
        );
        assert_eq!(m[0].target, "/tmp/telfs-1/data");
        assert_eq!(m[0].volume, "tp-c-web-0");
        assert!(!m[0].read_only && m[1].read_only);
        assert!(
            plan(
                "c",
                "w",
                "/r",
                &[MountInfo {
                    path: "/d".into(),
                    read_only: false
                }],
                true
            )[0]
            .read_only
        );
    }
}
