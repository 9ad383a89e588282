//! The `x-tele` extension, typed: the top-level connections and mount policies, and each
//! service's engagement (`connect`, `intercept`, `replace`, `wiretap`, `ingest`, `proxy`). Parsing
//! checks every key and value and says which file, service and key is wrong and what to write;
//! [`Tele::read`] also checks the project as a whole (connection names unique and known, one
//! of `volume` / `volumePattern` per mount).

use crate::model::{key_text, scalar_text};
use crate::project::Project;
use crate::ComposeError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use yaml_serde::{Mapping, Value};

/// Which cluster a connection reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterType {
    /// A Docker engine: compose projects are namespaces.
    Docker,
    /// A Kubernetes cluster.
    Kubernetes,
}

/// One entry of `x-tele.connections`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Connection {
    /// `name`; required when there are several.
    pub name: Option<String>,
    /// `namespace`.
    pub namespace: Option<String>,
    /// `also-proxy` (CIDRs).
    pub also_proxy: Vec<String>,
    /// `never-proxy` (CIDRs).
    pub never_proxy: Vec<String>,
    /// `manager-namespace`.
    pub manager_namespace: Option<String>,
    /// `mapped-namespaces`.
    pub mapped_namespaces: Vec<String>,
    /// `context` (Kubernetes).
    pub context: Option<String>,
    /// `kubeconfig` (Kubernetes).
    pub kubeconfig: Option<String>,
    /// `cluster-type`.
    pub cluster_type: Option<ClusterType>,
}

/// A mount's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountPolicy {
    /// `local`: the compose volume is left alone.
    Local,
    /// `remote`: the remote volume instead.
    Remote,
    /// `remoteReadOnly`: the remote volume, read-only.
    RemoteReadOnly,
}

impl MountPolicy {
    /// Every policy.
    pub const ALL: [MountPolicy; 3] = [
        MountPolicy::Local,
        MountPolicy::Remote,
        MountPolicy::RemoteReadOnly,
    ];

    /// The policy as written in `x-tele.mounts`.
    pub fn word(self) -> &'static str {
        match self {
            MountPolicy::Local => "local",
            MountPolicy::Remote => "remote",
            MountPolicy::RemoteReadOnly => "remoteReadOnly",
        }
    }
}

/// Which volumes a mount policy applies to.
#[derive(Debug, Clone)]
pub enum VolumeMatch {
    /// `volume`: one compose volume by name.
    Name(String),
    /// `volumePattern`: a regular expression over volume names.
    Pattern(regex::Regex),
}

/// One entry of `x-tele.mounts`.
#[derive(Debug, Clone)]
pub struct Mount {
    /// The volumes it applies to.
    pub volumes: VolumeMatch,
    /// Its policy (`None`: the agent decides).
    pub policy: Option<MountPolicy>,
}

/// A `local:remote` port of an engagement (`remote` empty: the workload's only port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMap {
    /// The local side (what the compose service listens on, or, for a proxy, what its siblings
    /// call).
    pub local: u16,
    /// The remote side: a port number or name.
    pub remote: String,
}

/// The HTTP conditions of a personal intercept or wiretap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpMatch {
    /// `httpFilters`: header → value, all must match.
    pub headers: BTreeMap<String, String>,
    /// `httpPaths`: exact paths.
    pub paths: Vec<String>,
    /// `httpPathPrefixes`.
    pub prefixes: Vec<String>,
    /// `httpPathRegexps`.
    pub regexps: Vec<String>,
}

/// What an engaged service gets from the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engagement {
    /// Routing and DNS to the cluster.
    Connect,
    /// The workload's traffic (all, or matching HTTP requests), env and volumes.
    Intercept {
        /// Engagement name.
        name: String,
        /// The workload.
        workload: String,
        /// The service whose ports are meant.
        service: Option<String>,
        /// Ports.
        ports: Vec<PortMap>,
        /// HTTP conditions.
        http: HttpMatch,
        /// Pod-local ports forwarded to the pod.
        to_pod: Vec<u16>,
    },
    /// All traffic of a remote container, which does not run meanwhile.
    Replace {
        /// Engagement name (and workload).
        name: String,
        /// The container.
        container: Option<String>,
        /// Ports (`local:containerPort`).
        ports: Vec<PortMap>,
        /// Pod-local ports forwarded to the pod.
        to_pod: Vec<u16>,
    },
    /// A copy of the workload's traffic.
    Wiretap {
        /// Engagement name (and workload).
        name: String,
        /// The service whose ports are meant.
        service: Option<String>,
        /// Ports.
        ports: Vec<PortMap>,
        /// HTTP conditions.
        http: HttpMatch,
        /// Pod-local ports forwarded to the pod.
        to_pod: Vec<u16>,
    },
    /// Env and volumes of a remote container, no traffic.
    Ingest {
        /// Engagement name (and workload).
        name: String,
        /// The container.
        container: Option<String>,
        /// Pod-local ports forwarded to the pod.
        to_pod: Vec<u16>,
    },
    /// Not run: siblings calling its name reach the remote service.
    Proxy {
        /// The remote service.
        name: String,
        /// `servicePort:remotePort` (empty: every port as it is).
        ports: Vec<PortMap>,
    },
}

impl Engagement {
    /// The type word of the file.
    pub fn type_word(&self) -> &'static str {
        match self {
            Engagement::Connect => "connect",
            Engagement::Intercept { .. } => "intercept",
            Engagement::Replace { .. } => "replace",
            Engagement::Wiretap { .. } => "wiretap",
            Engagement::Ingest { .. } => "ingest",
            Engagement::Proxy { .. } => "proxy",
        }
    }

    /// The engagement's name at the traffic-manager, for the kinds that create one.
    pub fn engagement_name(&self) -> Option<&str> {
        match self {
            Engagement::Intercept { name, .. }
            | Engagement::Replace { name, .. }
            | Engagement::Wiretap { name, .. }
            | Engagement::Ingest { name, .. } => Some(name),
            Engagement::Connect | Engagement::Proxy { .. } => None,
        }
    }
}

/// One service's `x-tele`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTele {
    /// The compose service.
    pub service: String,
    /// The file that declares it.
    pub file: PathBuf,
    /// Index into [`Tele::connections`].
    pub connection: usize,
    /// What it gets.
    pub engagement: Engagement,
}

/// A project's `x-tele`, checked.
#[derive(Debug, Clone)]
pub struct Tele {
    /// The connections (one with the defaults when the file declares none).
    pub connections: Vec<Connection>,
    /// The mount policies.
    pub mounts: Vec<Mount>,
    /// The services with an `x-tele`, in file order.
    pub services: Vec<ServiceTele>,
}

const TYPES: &str = "connect, intercept, replace, wiretap, ingest, proxy";

impl Tele {
    /// Reads and checks the `x-tele` of a loaded project.
    pub fn read(p: &Project) -> Result<Tele, ComposeError> {
        let top_file = p
            .tele_origin
            .get("")
            .cloned()
            .unwrap_or_else(|| p.files[0].clone());
        let (connections, mounts) = match p.tree.get("x-tele") {
            Some(v) => read_top(v, &top_file)?,
            None => (Vec::new(), Vec::new()),
        };
        check_volume_names(
            &p.tree,
            &mounts,
            &Fields::at(&top_file, "x-tele.mounts".into()),
        )?;
        let connections = if connections.is_empty() {
            vec![Connection::default()]
        } else {
            connections
        };
        let mut services = Vec::new();
        for (name, svc) in crate::model::services(&p.tree).into_iter().flatten() {
            let Some(v) = svc.get("x-tele") else { continue };
            let service = key_text(name);
            let file = p
                .tele_origin
                .get(&service)
                .cloned()
                .unwrap_or_else(|| top_file.clone());
            let at = Fields::at(&file, format!("services.{service}.x-tele"));
            services.push(read_service(v, &service, &connections, at)?);
        }
        Ok(Tele {
            connections,
            mounts,
            services,
        })
    }
}

/// Where a value is, for messages.
#[derive(Debug, Clone)]
struct Fields {
    file: PathBuf,
    path: String,
}

impl Fields {
    fn at(file: &Path, path: String) -> Fields {
        Fields {
            file: file.to_path_buf(),
            path,
        }
    }
    fn key(&self, key: &str) -> Fields {
        Fields::at(&self.file, format!("{}.{key}", self.path))
    }
    fn err(&self, message: impl Into<String>) -> ComposeError {
        ComposeError::Tele {
            file: self.file.clone(),
            path: self.path.clone(),
            message: message.into(),
        }
    }
    fn mapping<'a>(&self, v: &'a Value) -> Result<&'a Mapping, ComposeError> {
        v.as_mapping()
            .ok_or_else(|| self.err("expected a mapping of keys (key: value)"))
    }
    /// Refuses keys outside `allowed`.
    fn only(&self, m: &Mapping, allowed: &[&str], what: &str) -> Result<(), ComposeError> {
        for k in m.keys() {
            let k = key_text(k);
            if !allowed.contains(&k.as_str()) {
                return Err(self.key(&k).err(format!(
                    "unknown key for {what}; the keys it takes: {}",
                    allowed.join(", ")
                )));
            }
        }
        Ok(())
    }
    fn string(&self, m: &Mapping, key: &str) -> Result<Option<String>, ComposeError> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => scalar_text(v)
                .filter(|s| !s.is_empty())
                .map(Some)
                .ok_or_else(|| self.key(key).err("expected a non-empty string")),
        }
    }
    fn strings(&self, m: &Mapping, key: &str) -> Result<Vec<String>, ComposeError> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Sequence(s)) => s
                .iter()
                .map(|v| {
                    scalar_text(v).ok_or_else(|| self.key(key).err("expected a list of strings"))
                })
                .collect(),
            // A single value where a list is expected is taken as a list of one.
            Some(v) => scalar_text(v)
                .map(|s| vec![s])
                .ok_or_else(|| self.key(key).err("expected a list of strings")),
        }
    }
    fn ports(&self, m: &Mapping, key: &str) -> Result<Vec<PortMap>, ComposeError> {
        self.strings(m, key)?
            .iter()
            .map(|s| parse_port(s).map_err(|why| self.key(key).err(why)))
            .collect()
    }
    fn to_pod(&self, m: &Mapping) -> Result<Vec<u16>, ComposeError> {
        self.strings(m, "to-pod")?
            .iter()
            .map(|s| {
                s.trim_end_matches("/TCP")
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| {
                        self.key("to-pod")
                            .err(format!("{s:?} is not a port: write e.g. to-pod: [8081]"))
                    })
            })
            .collect()
    }
    fn http(&self, m: &Mapping) -> Result<HttpMatch, ComposeError> {
        let headers = match m.get("httpFilters") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Mapping(h)) => h
                .iter()
                .map(|(k, v)| {
                    let v = scalar_text(v).ok_or_else(|| {
                        self.key("httpFilters")
                            .err("expected header: value pairs, e.g. httpFilters: {x-dev: me}")
                    })?;
                    Ok((key_text(k), v))
                })
                .collect::<Result<_, ComposeError>>()?,
            Some(_) => {
                return Err(self
                    .key("httpFilters")
                    .err("expected header: value pairs, e.g. httpFilters: {x-dev: me}"))
            }
        };
        Ok(HttpMatch {
            headers,
            paths: self.strings(m, "httpPaths")?,
            prefixes: self.strings(m, "httpPathPrefixes")?,
            regexps: self.strings(m, "httpPathRegexps")?,
        })
    }
}

/// `local[:remote]`; the remote is a port number or name.
pub fn parse_port(s: &str) -> Result<PortMap, String> {
    let (local, remote) = s.split_once(':').unwrap_or((s, ""));
    let local = local
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            format!("{s:?} is not a port mapping: write \"<local>:<remote>\", e.g. \"8080:80\"")
        })?;
    let remote = remote.strip_suffix("/TCP").unwrap_or(remote);
    if remote.contains(['/', ':']) {
        return Err(format!(
            "{s:?} is not a port mapping: write \"<local>:<remote>\" (TCP only), e.g. \"8080:80\""
        ));
    }
    Ok(PortMap {
        local,
        remote: remote.to_string(),
    })
}

fn read_top(v: &Value, file: &Path) -> Result<(Vec<Connection>, Vec<Mount>), ComposeError> {
    let at = Fields::at(file, "x-tele".into());
    let m = at.mapping(v)?;
    at.only(m, &["connections", "mounts"], "the top-level x-tele")?;
    let mut connections = Vec::new();
    if let Some(list) = m.get("connections").filter(|v| !v.is_null()) {
        let at = at.key("connections");
        let seq = list
            .as_sequence()
            .ok_or_else(|| at.err("expected a list of connections (- name: …)"))?;
        for (i, c) in seq.iter().enumerate() {
            connections.push(read_connection(c, &at.key(&i.to_string()))?);
        }
    }
    check_connection_names(&connections, &at.key("connections"))?;
    let mut mounts = Vec::new();
    if let Some(list) = m.get("mounts").filter(|v| !v.is_null()) {
        let at = at.key("mounts");
        let seq = list
            .as_sequence()
            .ok_or_else(|| at.err("expected a list of mounts (- volume: …, policy: …)"))?;
        for (i, v) in seq.iter().enumerate() {
            mounts.push(read_mount(v, &at.key(&i.to_string()))?);
        }
    }
    Ok((connections, mounts))
}

/// A `volume:` must name a volume the project declares.
fn check_volume_names(tree: &Value, mounts: &[Mount], at: &Fields) -> Result<(), ComposeError> {
    let declared: Vec<String> = tree
        .get("volumes")
        .and_then(Value::as_mapping)
        .map(|m| m.keys().map(key_text).collect())
        .unwrap_or_default();
    for (i, m) in mounts.iter().enumerate() {
        if let VolumeMatch::Name(n) = &m.volumes {
            if !declared.contains(n) {
                return Err(at.key(&format!("{i}.volume")).err(format!(
                    "no volume {n:?} in the project's volumes ({}); name one of them, or use volumePattern",
                    if declared.is_empty() {
                        "it declares none".to_string()
                    } else {
                        declared.join(", ")
                    }
                )));
            }
        }
    }
    Ok(())
}

fn read_connection(v: &Value, at: &Fields) -> Result<Connection, ComposeError> {
    let m = at.mapping(v)?;
    at.only(
        m,
        &[
            "name",
            "namespace",
            "also-proxy",
            "never-proxy",
            "manager-namespace",
            "mapped-namespaces",
            "context",
            "kubeconfig",
            "cluster-type",
        ],
        "a connection",
    )?;
    let cluster_type = match at.string(m, "cluster-type")?.as_deref() {
        None => None,
        Some("docker") => Some(ClusterType::Docker),
        Some("kubernetes") => Some(ClusterType::Kubernetes),
        Some(other) => {
            return Err(at.key("cluster-type").err(format!(
                "unknown cluster type {other:?}; write docker or kubernetes"
            )))
        }
    };
    Ok(Connection {
        name: at.string(m, "name")?,
        namespace: at.string(m, "namespace")?,
        also_proxy: at.strings(m, "also-proxy")?,
        never_proxy: at.strings(m, "never-proxy")?,
        manager_namespace: at.string(m, "manager-namespace")?,
        mapped_namespaces: at.strings(m, "mapped-namespaces")?,
        context: at.string(m, "context")?,
        kubeconfig: at.string(m, "kubeconfig")?,
        cluster_type,
    })
}

fn check_connection_names(list: &[Connection], at: &Fields) -> Result<(), ComposeError> {
    if list.len() < 2 {
        return Ok(());
    }
    let mut seen = BTreeMap::new();
    for (i, c) in list.iter().enumerate() {
        let Some(name) = &c.name else {
            return Err(at
                .key(&i.to_string())
                .err("with several connections each needs a name: add `name: <connection name>`"));
        };
        if let Some(first) = seen.insert(name.clone(), i) {
            return Err(at.key(&format!("{i}.name")).err(format!(
                "connection name {name:?} is already used by connection {first}; give each connection its own name"
            )));
        }
    }
    Ok(())
}

fn read_mount(v: &Value, at: &Fields) -> Result<Mount, ComposeError> {
    let m = at.mapping(v)?;
    at.only(m, &["volume", "volumePattern", "policy"], "a mount")?;
    let volumes = match (at.string(m, "volume")?, at.string(m, "volumePattern")?) {
        (Some(_), Some(_)) => {
            return Err(at.err(
                "volume and volumePattern exclude each other: keep one (volume: <name> or volumePattern: <regex>)",
            ))
        }
        (Some(n), None) => VolumeMatch::Name(n),
        (None, Some(p)) => VolumeMatch::Pattern(
            regex::Regex::new(&format!("^(?:{p})$"))
                .map_err(|e| at.key("volumePattern").err(format!("not a regular expression: {e}")))?,
        ),
        (None, None) => {
            return Err(at.err("a mount needs volume: <name> or volumePattern: <regex>"))
        }
    };
    let policy = match at.string(m, "policy")? {
        None => None,
        Some(word) => match MountPolicy::ALL.into_iter().find(|p| p.word() == word) {
            Some(p) => Some(p),
            None => {
                return Err(at.key("policy").err(format!(
                    "unknown policy {word:?}; write local, remote or remoteReadOnly"
                )))
            }
        },
    };
    Ok(Mount { volumes, policy })
}

/// The keys each type takes (`type` and `connection` included).
fn allowed_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "connect" => &["type", "connection"],
        "intercept" => &[
            "type",
            "connection",
            "name",
            "workload",
            "service",
            "ports",
            "httpFilters",
            "httpPaths",
            "httpPathPrefixes",
            "httpPathRegexps",
            "to-pod",
        ],
        "replace" => &["type", "connection", "name", "container", "ports", "to-pod"],
        "wiretap" => &[
            "type",
            "connection",
            "name",
            "service",
            "ports",
            "httpFilters",
            "httpPaths",
            "httpPathPrefixes",
            "httpPathRegexps",
            "to-pod",
        ],
        "ingest" => &["type", "connection", "name", "container", "to-pod"],
        _ => &["type", "connection", "name", "ports"],
    }
}

fn read_service(
    v: &Value,
    service: &str,
    connections: &[Connection],
    at: Fields,
) -> Result<ServiceTele, ComposeError> {
    let m = at.mapping(v)?;
    let kind = at.string(m, "type")?.ok_or_else(|| {
        at.key("type")
            .err(format!("missing; write type: one of {TYPES}"))
    })?;
    if !TYPES.split(", ").any(|t| t == kind) {
        return Err(at
            .key("type")
            .err(format!("unknown type {kind:?}; write one of {TYPES}")));
    }
    at.only(m, allowed_keys(&kind), &format!("type {kind}"))?;
    let connection = pick_connection(at.string(m, "connection")?, connections, &at)?;
    let name = at.string(m, "name")?.unwrap_or_else(|| service.to_string());
    let engagement = match kind.as_str() {
        "connect" => Engagement::Connect,
        "intercept" => Engagement::Intercept {
            workload: at.string(m, "workload")?.unwrap_or_else(|| name.clone()),
            name,
            service: at.string(m, "service")?,
            ports: at.ports(m, "ports")?,
            http: at.http(m)?,
            to_pod: at.to_pod(m)?,
        },
        "replace" => Engagement::Replace {
            name,
            container: at.string(m, "container")?,
            ports: at.ports(m, "ports")?,
            to_pod: at.to_pod(m)?,
        },
        "wiretap" => Engagement::Wiretap {
            name,
            service: at.string(m, "service")?,
            ports: at.ports(m, "ports")?,
            http: at.http(m)?,
            to_pod: at.to_pod(m)?,
        },
        "ingest" => Engagement::Ingest {
            name,
            container: at.string(m, "container")?,
            to_pod: at.to_pod(m)?,
        },
        _ => Engagement::Proxy {
            name,
            ports: at.ports(m, "ports")?,
        },
    };
    Ok(ServiceTele {
        service: service.to_string(),
        file: at.file.clone(),
        connection,
        engagement,
    })
}

fn pick_connection(
    given: Option<String>,
    connections: &[Connection],
    at: &Fields,
) -> Result<usize, ComposeError> {
    let names = || {
        connections
            .iter()
            .filter_map(|c| c.name.clone())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match given {
        None if connections.len() == 1 => Ok(0),
        None => Err(at.key("connection").err(format!(
            "missing: this file has several connections; add connection: <one of {}>",
            names()
        ))),
        Some(n) => connections
            .iter()
            .position(|c| c.name.as_deref() == Some(n.as_str()))
            .ok_or_else(|| {
                at.key("connection").err(format!(
                    "no connection named {n:?} in x-tele.connections (they are: {})",
                    if names().is_empty() {
                        "none named".into()
                    } else {
                        names()
                    }
                ))
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(yaml: &str) -> Project {
        Project {
            name: "dev".into(),
            dir: "/d".into(),
            files: vec!["/d/compose.yaml".into()],
            tree: yaml_serde::from_str(yaml).unwrap(),
            tele_origin: BTreeMap::new(),
            unset: Default::default(),
        }
    }

    fn err(yaml: &str) -> String {
        Tele::read(&project(yaml)).unwrap_err().to_string()
    }

    #[test]
    fn the_issue_example_reads() {
        let t = Tele::read(&project(
            r"
x-tele:
  connections: [{name: shop, namespace: shop, cluster-type: docker}]
  mounts: [{volumePattern: 'data-.*', policy: remoteReadOnly}]
services:
  web:
    image: web
    x-tele: {type: intercept, ports: ['8080:8080'], httpFilters: {x-dev: me}}
  cache: {image: cache}
  orders:
    x-tele: {type: proxy}
",
        ))
        .unwrap();
        assert_eq!(t.connections[0].cluster_type, Some(ClusterType::Docker));
        assert_eq!(t.mounts[0].policy, Some(MountPolicy::RemoteReadOnly));
        assert_eq!(t.services.len(), 2);
        let Engagement::Intercept {
            name,
            workload,
            ports,
            http,
            ..
        } = &t.services[0].engagement
        else {
            panic!("{:?}", t.services[0])
        };
        assert_eq!((name.as_str(), workload.as_str()), ("web", "web"));
        assert_eq!(
            ports[0],
            PortMap {
                local: 8080,
                remote: "8080".into()
            }
        );
        assert_eq!(http.headers["x-dev"], "me");
        assert_eq!(
            t.services[1].engagement,
            Engagement::Proxy {
                name: "orders".into(),
                ports: vec![]
            }
        );
    }

    #[test]
    fn errors_name_file_service_and_key() {
        assert_eq!(
            err("services:\n  web:\n    x-tele: {type: intrecept}\n"),
            "/d/compose.yaml: services.web.x-tele.type: unknown type \"intrecept\"; write one of connect, intercept, replace, wiretap, ingest, proxy"
        );
        let e = err("services:\n  web:\n    x-tele: {type: proxy, prots: ['1:2']}\n");
        assert!(
            e.starts_with("/d/compose.yaml: services.web.x-tele.prots: unknown key for type proxy"),
            "{e}"
        );
        let e = err("services:\n  web:\n    x-tele: {type: intercept, ports: ['x:80']}\n");
        assert!(
            e.contains("services.web.x-tele.ports: \"x:80\" is not a port mapping"),
            "{e}"
        );
    }

    #[test]
    fn connections_are_checked() {
        let two = "x-tele:\n  connections: [{name: a, namespace: a}, {name: a, namespace: b}]\nservices: {}\n";
        assert!(
            err(two).contains("x-tele.connections.1.name: connection name \"a\" is already used")
        );
        let unknown = "x-tele:\n  connections: [{name: a}, {name: b}]\nservices:\n  web:\n    x-tele: {type: connect, connection: c}\n";
        assert!(err(unknown)
            .contains("services.web.x-tele.connection: no connection named \"c\" in x-tele.connections (they are: a, b)"));
        let missing = "x-tele:\n  connections: [{name: a}, {name: b}]\nservices:\n  web:\n    x-tele: {type: connect}\n";
        assert!(err(missing).contains("services.web.x-tele.connection: missing"));
        let t = Tele::read(&project("services:\n  web:\n    x-tele: {type: connect}\n")).unwrap();
        assert_eq!(t.connections, vec![Connection::default()]);
    }

    #[test]
    fn mounts_are_checked() {
        let both = "x-tele:\n  mounts: [{volume: a, volumePattern: 'a.*'}]\nservices: {}\n";
        assert!(err(both).contains("x-tele.mounts.0: volume and volumePattern exclude each other"));
        let policy = "x-tele:\n  mounts: [{volume: a, policy: rw}]\nservices: {}\n";
        assert!(err(policy).contains("x-tele.mounts.0.policy: unknown policy \"rw\""));
        let unknown = "x-tele:\n  mounts: [{volume: dta, policy: remote}]\nservices: {}\nvolumes: {data: {}}\n";
        assert_eq!(
            err(unknown),
            "/d/compose.yaml: x-tele.mounts.0.volume: no volume \"dta\" in the project's volumes (data); name one of them, or use volumePattern"
        );
    }
}
