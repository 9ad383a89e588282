//! The daemon containers on the dev project's networks. An engaged service runs in its
//! connection's daemon network namespace (`network_mode: container:tp-<connection>`), where it
//! cannot have compose aliases of its own; so before compose starts, each daemon is attached to
//! the networks its engaged services would have joined, with their service names (and
//! `aliases`) as its aliases there: siblings calling `web` reach the daemon's namespace, where
//! `web` listens, and the engine's DNS on those networks answers the engaged services' own
//! lookups of their siblings (names it does not know go on to the daemon's DNS, so cluster
//! names still resolve). A network compose would create is created here first, with compose's
//! labels, so compose adopts it and `down` removes it.

use super::state::{Attachment, State};
use anyhow::{anyhow, bail, Context, Result};
use bollard::models::{
    EndpointSettings, Ipam, IpamConfig, NetworkConnectRequest, NetworkCreateRequest,
    NetworkDisconnectRequest,
};
use bollard::Docker;
use compose::model::{attachments, network_definition, scalar_text};
use compose::project::Project;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use yaml_serde::Value;

/// Attaches each daemon container to the networks of the services that join it (`joins`:
/// service → daemon container), recording every attachment in `state` as it is made.
pub async fn attach(
    docker: &Docker,
    project: &Project,
    joins: &BTreeMap<String, String>,
    state: &mut State,
    save: &dyn Fn(&State) -> Result<()>,
) -> Result<()> {
    // (container, network) → (network key, external, aliases)
    let mut wanted: BTreeMap<(String, String), (String, bool, BTreeSet<String>)> = BTreeMap::new();
    for (service, container) in joins {
        for a in attachments(&project.tree, &project.name, service) {
            let e = wanted
                .entry((container.clone(), a.name.clone()))
                .or_insert_with(|| (a.key.clone(), a.external, BTreeSet::new()));
            e.2.extend(a.aliases);
        }
    }
    for ((container, network), (key, external, aliases)) in wanted {
        let created = ensure_network(docker, project, &network, &key, external).await?;
        state.attachments.push(Attachment {
            container: container.clone(),
            network: network.clone(),
            created,
        });
        save(state)?;
        connect(docker, &container, &network, aliases.into_iter().collect()).await?;
    }
    Ok(())
}

/// Makes sure `network` exists; returns whether it was created here.
async fn ensure_network(
    docker: &Docker,
    project: &Project,
    network: &str,
    key: &str,
    external: bool,
) -> Result<bool> {
    let exists = docker
        .inspect_network(
            network,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .is_ok();
    if exists {
        return Ok(false);
    }
    if external {
        bail!("network {network:?} is declared external but does not exist; create it first (docker network create {network})");
    }
    let def = network_definition(&project.tree, key);
    docker
        .create_network(create_request(&project.name, network, key, def))
        .await
        .with_context(|| format!("creating network {network}"))?;
    Ok(true)
}

/// The network compose would create for project network `key` (driver, internal, attachable,
/// options, subnets and labels of its definition), labelled as compose labels its own.
fn create_request(
    project: &str,
    network: &str,
    key: &str,
    def: Option<&Value>,
) -> NetworkCreateRequest {
    let text = |k: &str| def.and_then(|d| d.get(k)).and_then(scalar_text);
    let flag = |k: &str| def.and_then(|d| d.get(k)).and_then(Value::as_bool);
    let map = |k: &str| -> HashMap<String, String> {
        def.and_then(|d| d.get(k))
            .map(compose::merge::to_map)
            .unwrap_or_default()
            .iter()
            .filter_map(|(k, v)| Some((scalar_text(k)?, scalar_text(v).unwrap_or_default())))
            .collect()
    };
    let mut labels = map("labels");
    labels.insert(compose::PROJECT_LABEL.into(), project.into());
    labels.insert(compose::NETWORK_LABEL.into(), key.into());
    let subnets: Vec<IpamConfig> = def
        .and_then(|d| d.get("ipam"))
        .and_then(|i| i.get("config"))
        .and_then(Value::as_sequence)
        .map(|s| {
            s.iter()
                .filter_map(|c| c.get("subnet").and_then(scalar_text))
                .map(|subnet| IpamConfig {
                    subnet: Some(subnet),
                    ..Default::default()
                })
                .collect()
        })
        .unwrap_or_default();
    NetworkCreateRequest {
        name: network.to_string(),
        driver: text("driver"),
        internal: flag("internal"),
        attachable: flag("attachable"),
        options: Some(map("driver_opts")),
        ipam: (!subnets.is_empty()).then(|| Ipam {
            config: Some(subnets),
            ..Default::default()
        }),
        labels: Some(labels),
        ..Default::default()
    }
}

/// Connects `container` to `network` with `aliases` (already connected: left as it is).
async fn connect(
    docker: &Docker,
    container: &str,
    network: &str,
    aliases: Vec<String>,
) -> Result<()> {
    let on = docker
        .inspect_container(
            container,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await?
        .network_settings
        .and_then(|n| n.networks)
        .is_some_and(|n| n.contains_key(network));
    if on {
        return Ok(());
    }
    docker
        .connect_network(
            network,
            NetworkConnectRequest {
                container: container.to_string(),
                endpoint_config: Some(EndpointSettings {
                    aliases: Some(aliases),
                    ..Default::default()
                }),
            },
        )
        .await
        .map_err(|e| anyhow!(e))
        .with_context(|| format!("attaching {container} to network {network}"))
}

/// Detaches the daemons from the project networks; with `remove_created`, removes the networks
/// this project created (a failed `up`: compose may never have run). Best effort: returns the
/// first error after trying everything.
pub async fn detach(docker: &Docker, state: &State, remove_created: bool) -> Result<()> {
    let mut first = Ok(());
    for a in &state.attachments {
        let r = docker
            .disconnect_network(
                &a.network,
                NetworkDisconnectRequest {
                    container: a.container.clone(),
                    force: Some(true),
                },
            )
            .await;
        if let Err(e) = r {
            if !is_gone(&e) && first.is_ok() {
                first = Err(
                    anyhow!(e).context(format!("detaching {} from {}", a.container, a.network))
                );
            }
        }
    }
    if remove_created {
        for a in state.attachments.iter().filter(|a| a.created) {
            if let Err(e) = docker.remove_network(&a.network).await {
                if !is_gone(&e) && first.is_ok() {
                    first = Err(anyhow!(e).context(format!("removing network {}", a.network)));
                }
            }
        }
    }
    first
}

/// Whether an engine error says the object (or the attachment) is not there.
fn is_gone(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError { status_code, .. }
            if *status_code == 404 || *status_code == 409
    ) || e.to_string().contains("is not connected")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_networks_carry_compose_labels_and_definition() {
        let tree: Value = yaml_serde::from_str(
            "networks:\n  back:\n    driver: bridge\n    internal: true\n    labels: [team=x]\n    ipam: {config: [{subnet: 10.9.0.0/24}]}\n",
        )
        .unwrap();
        let r = create_request("dev", "dev_back", "back", network_definition(&tree, "back"));
        assert_eq!(r.name, "dev_back");
        assert_eq!(r.driver.as_deref(), Some("bridge"));
        assert_eq!(r.internal, Some(true));
        let labels = r.labels.unwrap();
        assert_eq!(labels[compose::PROJECT_LABEL], "dev");
        assert_eq!(labels[compose::NETWORK_LABEL], "back");
        assert_eq!(labels["team"], "x");
        assert_eq!(
            r.ipam.unwrap().config.unwrap()[0].subnet.as_deref(),
            Some("10.9.0.0/24")
        );
        let plain = create_request("dev", "dev_default", "default", None);
        assert!(plain.driver.is_none() && plain.ipam.is_none());
    }
}
