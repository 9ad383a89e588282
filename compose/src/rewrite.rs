//! The rewrite: from a project tree and what each extended service became ([`Plan`]), the tree
//! the compose tool runs. Engaged services join the network namespace of their connection's
//! daemon container (`network_mode: container:tp-<connection>`, so they route to the cluster
//! and use its DNS) and get the engagement's environment under their own, and the workload's
//! volumes in place of the compose volumes the mount policies gave up (`volumes.rs`, mounted
//! from the engine volumes our sync containers fill, declared `external`); a `proxy` service is
//! replaced by a forwarder in that namespace; `x-tele` and the top-level `name` go; every other
//! key, `x-*` included, stays.

use crate::merge::to_map;
use std::collections::BTreeMap;
use yaml_serde::{Mapping, Value};

/// What one extended service becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServicePlan {
    /// Runs as written, in the network namespace of `container`, with `environment` added
    /// (the service's own values win).
    Join {
        /// The daemon container.
        container: String,
        /// The engagement's environment.
        environment: BTreeMap<String, String>,
        /// Compose volumes replaced by remote ones.
        volumes: Vec<RemoteVolume>,
    },
    /// Replaced by a forwarder (`image` running `command`) in the network namespace of
    /// `container`.
    Proxy {
        /// The daemon container.
        container: String,
        /// The forwarder's image.
        image: String,
        /// Its command.
        command: Vec<String>,
    },
}

/// A remote volume mounted in place of a compose volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteVolume {
    /// The path in the service (every entry mounting there is replaced).
    pub target: String,
    /// The engine volume holding the remote content.
    pub volume: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Per service name.
pub type Plan = BTreeMap<String, ServicePlan>;

/// Keys a service in another container's network namespace may not have (the engine refuses
/// them with `network_mode: container:…`).
const NETWORK_KEYS: [&str; 12] = [
    "networks",
    "network_mode",
    "ports",
    "expose",
    "hostname",
    "domainname",
    "dns",
    "dns_search",
    "dns_opt",
    "extra_hosts",
    "mac_address",
    "links",
];

/// The tree the compose tool runs.
pub fn rewrite(tree: &Value, plan: &Plan) -> Value {
    let mut out = tree.clone();
    if let Some(m) = out.as_mapping_mut() {
        m.remove("x-tele");
        m.remove("name");
    }
    let mut external: Vec<String> = Vec::new();
    let Some(services) = out.get_mut("services").and_then(Value::as_mapping_mut) else {
        return out;
    };
    for (name, svc) in services.iter_mut() {
        let name = crate::model::key_text(name);
        if let Some(m) = svc.as_mapping_mut() {
            m.remove("x-tele");
        }
        match plan.get(&name) {
            Some(ServicePlan::Join {
                container,
                environment,
                volumes,
            }) => {
                join(svc, container, environment);
                swap_volumes(svc, volumes);
                external.extend(volumes.iter().map(|v| v.volume.clone()));
            }
            Some(ServicePlan::Proxy {
                container,
                image,
                command,
            }) => *svc = forwarder(container, image, command),
            None => {}
        }
    }
    declare_external(&mut out, &external);
    out
}

/// Replaces the service's `volumes:` entries mounting at a swapped target with the remote
/// volume (long syntax).
fn swap_volumes(svc: &mut Value, volumes: &[RemoteVolume]) {
    let Some(list) = svc.get_mut("volumes").and_then(Value::as_sequence_mut) else {
        return;
    };
    for item in list.iter_mut() {
        let Some(e) = crate::volumes::entry(item) else {
            continue;
        };
        if let Some(v) = volumes.iter().find(|v| v.target == e.target) {
            let mut m = Mapping::new();
            m.insert("type".into(), "volume".into());
            m.insert("source".into(), Value::String(v.volume.clone()));
            m.insert("target".into(), Value::String(v.target.clone()));
            m.insert("read_only".into(), Value::Bool(v.read_only));
            *item = Value::Mapping(m);
        }
    }
}

/// Declares the engine volumes ours as `external` top-level volumes (compose neither creates
/// nor removes them).
fn declare_external(out: &mut Value, names: &[String]) {
    if names.is_empty() {
        return;
    }
    let Some(root) = out.as_mapping_mut() else {
        return;
    };
    let volumes = root
        .entry("volumes".into())
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !volumes.is_mapping() {
        *volumes = Value::Mapping(Mapping::new());
    }
    if let Some(m) = volumes.as_mapping_mut() {
        for n in names {
            let mut def = Mapping::new();
            def.insert("external".into(), Value::Bool(true));
            m.insert(Value::String(n.clone()), Value::Mapping(def));
        }
    }
}

fn join(svc: &mut Value, container: &str, environment: &BTreeMap<String, String>) {
    let Some(m) = svc.as_mapping_mut() else {
        return;
    };
    for k in NETWORK_KEYS {
        m.remove(k);
    }
    m.insert(
        "network_mode".into(),
        Value::String(format!("container:{container}")),
    );
    if environment.is_empty() {
        return;
    }
    let mut env = m.get("environment").map(to_map).unwrap_or_default();
    for (k, v) in environment {
        if !env.contains_key(k.as_str()) {
            env.insert(k.as_str().into(), Value::String(v.clone()));
        }
    }
    m.insert("environment".into(), Value::Mapping(env));
}

fn forwarder(container: &str, image: &str, command: &[String]) -> Value {
    let mut m = Mapping::new();
    m.insert("image".into(), Value::String(image.to_string()));
    m.insert(
        "command".into(),
        Value::Sequence(command.iter().cloned().map(Value::String).collect()),
    );
    m.insert(
        "network_mode".into(),
        Value::String(format!("container:{container}")),
    );
    Value::Mapping(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engaged_proxied_and_untouched_services() {
        let tree: Value = yaml_serde::from_str(
            r"
name: dev
x-tele: {connections: [{name: shop}]}
x-custom: {kept: true}
services:
  web:
    build: .
    ports: ['8080:8080']
    networks: [default]
    environment: [MODE=dev, SHARED=mine]
    x-tele: {type: intercept}
    x-note: kept
  orders:
    build: ./orders
    environment: {A: b}
    x-tele: {type: proxy}
  cache:
    image: cache
    unknown-key: 1
",
        )
        .unwrap();
        let plan = Plan::from([
            (
                "web".to_string(),
                ServicePlan::Join {
                    container: "tp-shop".into(),
                    environment: BTreeMap::from([
                        ("SHARED".to_string(), "remote".to_string()),
                        ("DB".to_string(), "db:5432".to_string()),
                    ]),
                    volumes: vec![],
                },
            ),
            (
                "orders".to_string(),
                ServicePlan::Proxy {
                    container: "tp-shop".into(),
                    image: "telepresence:x".into(),
                    command: vec!["compose-proxy".into(), "8080=orders.shop:8080".into()],
                },
            ),
        ]);
        let want: Value = yaml_serde::from_str(
            r"
x-custom: {kept: true}
services:
  web:
    build: .
    environment: {MODE: dev, SHARED: mine, DB: 'db:5432'}
    x-note: kept
    network_mode: container:tp-shop
  orders:
    image: telepresence:x
    command: [compose-proxy, '8080=orders.shop:8080']
    network_mode: container:tp-shop
  cache:
    image: cache
    unknown-key: 1
",
        )
        .unwrap();
        assert_eq!(rewrite(&tree, &plan), want);
    }

    #[test]
    fn remote_volumes_replace_compose_volumes() {
        let tree: Value = yaml_serde::from_str(
            r"
services:
  web:
    image: web
    volumes: ['data:/data', './src:/src', {type: volume, source: cfg, target: /cfg}]
volumes: {data: {}, cfg: {}}
",
        )
        .unwrap();
        let remote = |target: &str, volume: &str, read_only| RemoteVolume {
            target: target.into(),
            volume: volume.into(),
            read_only,
        };
        let plan = Plan::from([(
            "web".to_string(),
            ServicePlan::Join {
                container: "tp-shop".into(),
                environment: BTreeMap::new(),
                volumes: vec![
                    remote("/data", "tp-shop-web-0", false),
                    remote("/cfg", "tp-shop-web-1", true),
                ],
            },
        )]);
        let want: Value = yaml_serde::from_str(
            r"
services:
  web:
    image: web
    volumes:
      - {type: volume, source: tp-shop-web-0, target: /data, read_only: false}
      - './src:/src'
      - {type: volume, source: tp-shop-web-1, target: /cfg, read_only: true}
    network_mode: container:tp-shop
volumes:
  data: {}
  cfg: {}
  tp-shop-web-0: {external: true}
  tp-shop-web-1: {external: true}
",
        )
        .unwrap();
        assert_eq!(rewrite(&tree, &plan), want);
    }
}
