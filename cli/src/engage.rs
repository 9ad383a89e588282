//! `telepresence replace`, `telepresence ingest` and `telepresence wiretap`, and what every
//! engagement kind shares with `intercept` (`cli/src/intercept.rs` runs them all): their
//! arguments, the `local:remote` pairs of a multi-port engagement, the kind word `list` shows
//! (`intercepted`, `replaced`, `ingested`, `wiretapped`) and the block rows of multi-port,
//! replace, ingest and wiretap engagements (a wiretap's with its dropped copies).

use crate::args::{parse_port, InterceptArgs, PortSpec};
use crate::output::kv_block;
use anyhow::{anyhow, Result};
use clap::Args;
use protocol::manager::{
    EngagementKind, InterceptInfo, PortPair, PortProtocol, ToPodPort, Workload,
};

/// Which engagement a command creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// `intercept`.
    #[default]
    Intercept,
    /// `replace`, or `intercept --replace`.
    Replace,
    /// `ingest`.
    Ingest,
    /// `wiretap`.
    Wiretap,
}

impl Kind {
    /// The wire form.
    pub fn wire(self) -> EngagementKind {
        match self {
            Kind::Intercept => EngagementKind::Intercept,
            Kind::Replace => EngagementKind::Replace,
            Kind::Ingest => EngagementKind::Ingest,
            Kind::Wiretap => EngagementKind::Wiretap,
        }
    }
}

/// `telepresence replace WORKLOAD`.
#[derive(Debug, Args)]
pub struct ReplaceArgs {
    /// The workload to replace; also the engagement's name (for `leave`).
    pub workload: String,
    /// <local port>:<container port number or name>, repeatable; default: every port of the
    /// container, each to the same local port number.
    #[arg(short = 'p', long)]
    pub port: Vec<String>,
    /// The container to replace (default: the workload's container).
    #[arg(long)]
    pub container: Option<String>,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub handler: HandlerArgs,
}

/// `telepresence ingest WORKLOAD`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// The workload to ingest; also the engagement's name (for `leave`).
    pub workload: String,
    /// The container whose environment and volumes the handler gets.
    #[arg(long)]
    pub container: Option<String>,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub handler: HandlerArgs,
}

/// `telepresence wiretap WORKLOAD`: the intercept flags except `--workload`.
#[derive(Debug, Args)]
pub struct WiretapArgs {
    /// The workload to wiretap.
    pub workload: String,
    /// The wiretap's name, for `leave` (default: the workload's name); give several wiretaps
    /// of one workload their own names.
    #[arg(long)]
    pub name: Option<String>,
    /// <local port>[:<service port number or name>] (default 8080); repeat for several ports.
    #[arg(short = 'p', long)]
    pub port: Vec<String>,
    /// The service whose ports are meant, when several services select the workload.
    #[arg(long)]
    pub service: Option<String>,
    /// Container of the workload whose environment and mounts (read-only) the handler gets.
    #[arg(long)]
    pub container: Option<String>,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Copy only HTTP requests carrying this header (NAME=VALUE, repeatable, all must match).
    #[arg(long = "http-header", value_name = "NAME=VALUE")]
    pub http_header: Vec<String>,
    /// Copy only HTTP requests whose path is exactly this.
    #[arg(long, value_name = "PATH")]
    pub http_path_equal: Option<String>,
    /// Copy only HTTP requests whose path starts with this.
    #[arg(long, value_name = "PREFIX")]
    pub http_path_prefix: Option<String>,
    /// Copy only HTTP requests whose whole path matches this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub http_path_regex: Option<String>,
    #[command(flatten)]
    pub handler: HandlerArgs,
}

/// The handler flags `replace` and `ingest` share with `intercept`.
#[derive(Debug, Args)]
pub struct HandlerArgs {
    /// Run the handler with `docker run` and the arguments after `--`; leave when it exits.
    #[arg(long)]
    pub docker_run: bool,
    /// Where the handler listens inside the daemon's network namespace.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,
    /// Also write the workload's environment to this file.
    #[arg(short = 'e', long)]
    pub env_file: Option<std::path::PathBuf>,
    /// Syntax of --env-file: docker, compose, sh, sh:export, csh, csh:export, cmd, ps, ps:export, json.
    #[arg(long, default_value = "docker")]
    pub env_syntax: crate::envfile::EnvSyntax,
    /// Also write the workload's environment to this file as JSON.
    #[arg(short = 'j', long)]
    pub env_json: Option<std::path::PathBuf>,
    /// Remote volumes: true (default), false, or PATH[:ro] (the root inside the handler).
    #[arg(long, default_value = "true")]
    pub mount: String,
    /// Where the remote volumes appear inside the handler container (TELEPRESENCE_ROOT).
    #[arg(long)]
    pub docker_mount: Option<String>,
    #[command(flatten)]
    pub extras: HandlerExtras,
    /// The handler command (with --docker-run: `docker run` arguments, IMAGE first after flags).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// The flags every engagement kind shares (`intercept` and the kinds built on [`HandlerArgs`]):
/// pod-local ports and building the handler image.
#[derive(Debug, Args, Default, Clone)]
pub struct HandlerExtras {
    /// PORT[/UDP]: the handler reaches the workload's own localhost PORT (a sidecar, a local
    /// proxy) on its own localhost PORT; repeatable. Refused when nothing listens there.
    #[arg(long = "to-pod", value_name = "PORT[/UDP]", value_parser = parse_to_pod)]
    pub to_pod: Vec<ToPodPort>,
    /// Build the handler image from this context with `docker build`, then run it as with
    /// --docker-run: the literal IMAGE after -- is replaced by the built image (default: -- IMAGE).
    #[arg(long, value_name = "CONTEXT", conflicts_with = "docker_debug")]
    pub docker_build: Option<std::path::PathBuf>,
    /// Like --docker-build, and the handler may be debugged: ptrace allowed (SYS_PTRACE),
    /// unconfined seccomp and AppArmor profiles.
    #[arg(long, value_name = "CONTEXT")]
    pub docker_debug: Option<std::path::PathBuf>,
    /// A `docker build` option KEY=VALUE for --docker-build/--docker-debug, repeatable: file,
    /// target, build-arg (NAME=VALUE), tag, label, network, platform, no-cache, pull, add-host.
    #[arg(long = "docker-build-opt", value_name = "KEY=VALUE")]
    pub docker_build_opt: Vec<String>,
}

/// Parses `--to-pod PORT[/TCP|/UDP]`.
pub fn parse_to_pod(s: &str) -> Result<ToPodPort, String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
        format!("invalid port in --to-pod {s:?}: expected PORT[/UDP] with PORT 1-65535")
    })?;
    let protocol = match proto.to_ascii_uppercase().as_str() {
        "TCP" => PortProtocol::Tcp,
        "UDP" => PortProtocol::Udp,
        _ => {
            return Err(format!(
                "protocol {proto:?} in --to-pod {s:?}: use TCP or UDP"
            ))
        }
    };
    Ok(ToPodPort {
        port: u32::from(port),
        protocol: protocol as i32,
    })
}

fn intercept_args(
    workload: String,
    port: Vec<String>,
    container: Option<String>,
    namespace: Option<String>,
    h: HandlerArgs,
    kind: Kind,
) -> InterceptArgs {
    InterceptArgs {
        name: workload,
        port,
        service: None,
        replace: kind == Kind::Replace,
        kind,
        namespace,
        workload: None,
        docker_run: h.docker_run,
        address: h.address,
        container,
        env_file: h.env_file,
        env_syntax: h.env_syntax,
        env_json: h.env_json,
        mount: h.mount,
        docker_mount: h.docker_mount,
        http_header: Vec::new(),
        http_path_equal: None,
        http_path_prefix: None,
        http_path_regex: None,
        extras: h.extras,
        command: h.command,
    }
}

impl From<ReplaceArgs> for InterceptArgs {
    fn from(a: ReplaceArgs) -> Self {
        intercept_args(
            a.workload,
            a.port,
            a.container,
            a.namespace,
            a.handler,
            Kind::Replace,
        )
    }
}

impl From<WiretapArgs> for InterceptArgs {
    fn from(a: WiretapArgs) -> Self {
        let mut i = intercept_args(
            a.name.unwrap_or_else(|| a.workload.clone()),
            a.port,
            a.container,
            a.namespace,
            a.handler,
            Kind::Wiretap,
        );
        i.workload = Some(a.workload);
        i.service = a.service;
        i.http_header = a.http_header;
        i.http_path_equal = a.http_path_equal;
        i.http_path_prefix = a.http_path_prefix;
        i.http_path_regex = a.http_path_regex;
        i
    }
}

impl From<IngestArgs> for InterceptArgs {
    fn from(a: IngestArgs) -> Self {
        intercept_args(
            a.workload,
            Vec::new(),
            a.container,
            a.namespace,
            a.handler,
            Kind::Ingest,
        )
    }
}

/// The engagement kind the arguments ask for (`--replace` makes an intercept a replace).
pub fn kind_of(args: &InterceptArgs) -> Kind {
    if args.replace && args.kind == Kind::Intercept {
        Kind::Replace
    } else {
        args.kind
    }
}

/// The `--port` pairs: the first (`None` for a replace without `-p`, and for an ingest) and
/// the others. An intercept without `--port` gets `8080`.
pub fn pairs(args: &InterceptArgs) -> Result<(Option<PortSpec>, Vec<PortPair>)> {
    let kind = kind_of(args);
    if kind == Kind::Ingest {
        if args.port.is_empty() {
            return Ok((None, Vec::new()));
        }
        return Err(anyhow!(
            "ingest routes no traffic: drop --port (use intercept or replace for traffic)"
        ));
    }
    let given: Vec<String> =
        if args.port.is_empty() && matches!(kind, Kind::Intercept | Kind::Wiretap) {
            vec!["8080".to_string()]
        } else {
            args.port.clone()
        };
    let mut parsed = given
        .iter()
        .map(|p| parse_port(p).map_err(|e| anyhow!(e)))
        .collect::<Result<Vec<_>>>()?
        .into_iter();
    let first = parsed.next();
    let extra = parsed
        .map(|p| PortPair {
            port_identifier: p.remote,
            target_port: u32::from(p.local),
        })
        .collect();
    Ok((first, extra))
}

/// Whether an engagement is shown with one `<remote> -> <local>` line per port instead of the
/// single-port rows.
fn shows_pairs(i: &InterceptInfo) -> bool {
    let kind = kind_of_info(i);
    kind == EngagementKind::Replace || (kind != EngagementKind::Ingest && !i.extra_ports.is_empty())
}

/// The kind of an engagement as the manager reports it.
pub fn kind_of_info(i: &InterceptInfo) -> EngagementKind {
    i.spec
        .as_ref()
        .and_then(|s| EngagementKind::try_from(s.kind).ok())
        .unwrap_or(EngagementKind::Intercept)
}

/// The word `list` shows for an engagement kind.
pub fn kind_word(kind: EngagementKind) -> &'static str {
    match kind {
        EngagementKind::Intercept => "intercepted",
        EngagementKind::Replace => "replaced",
        EngagementKind::Ingest => "ingested",
        EngagementKind::Wiretap => "wiretapped",
    }
}

/// The state word of a workload in `list`: `replaced` wins over `intercepted`, which wins over
/// `wiretapped`, which wins over `ingested`.
pub fn workload_word(w: &Workload) -> &'static str {
    let kinds: Vec<EngagementKind> = w.intercepts.iter().map(kind_of_info).collect();
    let kind = [
        EngagementKind::Replace,
        EngagementKind::Intercept,
        EngagementKind::Wiretap,
        EngagementKind::Ingest,
    ]
    .into_iter()
    .find(|k| kinds.contains(k))
    .unwrap_or(EngagementKind::Intercept);
    kind_word(kind)
}

/// Whether the single-port rows (today's layout, unchanged) describe this engagement.
pub fn is_plain(i: &InterceptInfo) -> bool {
    kind_of_info(i) == EngagementKind::Intercept && i.extra_ports.is_empty()
}

/// `<pod ip> -> <address>`: the traffic row of an engagement shown pair by pair.
fn pairs_head(i: &InterceptInfo) -> String {
    let s = i.spec.clone().unwrap_or_default();
    let from = if i.pod_ip.is_empty() {
        s.workload.clone()
    } else {
        i.pod_ip.clone()
    };
    format!("{from} -> {}", s.target_host)
}

/// Every `(remote port, its name, local port)` pair of an engagement, the first one first.
pub fn port_pairs(i: &InterceptInfo) -> Vec<(u32, String, u32)> {
    let s = i.spec.clone().unwrap_or_default();
    let first =
        (i.service_port != 0).then(|| (i.service_port, i.service_port_name.clone(), s.target_port));
    first
        .into_iter()
        .chain(
            i.extra_ports
                .iter()
                .map(|r| (r.service_port, r.service_port_name.clone(), r.target_port)),
        )
        .collect()
}

/// One `<remote> -> <local> TCP` line per pair, under a block indented by `indent`; empty
/// unless the engagement is shown pair by pair.
pub fn pair_lines(i: &InterceptInfo, indent: &str) -> String {
    if !shows_pairs(i) {
        return String::new();
    }
    port_pairs(i)
        .into_iter()
        .map(|(remote, _, local)| format!("{indent}    {remote} -> {local} TCP\n"))
        .collect()
}

/// `TCP` or `UDP`: the transport of a `--to-pod` port.
pub fn to_pod_protocol(p: &ToPodPort) -> &'static str {
    if p.protocol() == PortProtocol::Udp {
        "UDP"
    } else {
        "TCP"
    }
}

/// The `To pod` row of an engagement with `--to-pod` ports (`7070/TCP, 7071/UDP`).
pub fn to_pod_row(i: &InterceptInfo) -> Option<(&'static str, Option<String>)> {
    let s = i.spec.as_ref()?;
    (!s.to_pod.is_empty()).then(|| {
        let ports: Vec<String> = s
            .to_pod
            .iter()
            .map(|p| format!("{}/{}", p.port, to_pod_protocol(p)))
            .collect();
        ("To pod", Some(ports.join(", ")))
    })
}

/// The rows of a multi-port, replace or ingest engagement's block (created block and `list`);
/// `extra` rows (volume mount point, env file) go before the traffic row, and
/// [`pair_lines`] after the block.
pub fn rows(
    i: &InterceptInfo,
    state: String,
    extra: Vec<(&'static str, Option<String>)>,
) -> Vec<(&'static str, Option<String>)> {
    let s = i.spec.clone().unwrap_or_default();
    let mut rows = vec![
        ("Intercept name", Some(s.name.clone())),
        ("State", Some(state)),
        ("Workload kind", Some(i.workload_kind.clone())),
    ];
    let kind = kind_of_info(i);
    if kind == EngagementKind::Ingest {
        rows.push(("Container", Some(i.container.clone())));
    }
    if kind == EngagementKind::Wiretap {
        if !shows_pairs(i) {
            rows.push((
                "Destination",
                Some(format!("{}:{}", s.target_host, s.target_port)),
            ));
        }
        rows.push(("Copies dropped", Some(i.wiretap_dropped.to_string())));
    }
    rows.extend(extra);
    rows.extend(to_pod_row(i));
    let traffic = if shows_pairs(i) {
        pairs_head(i)
    } else {
        i.disposition.clone()
    };
    rows.push(("Intercepting", Some(traffic)));
    rows
}

/// The block of one engagement in `list` when it is not a plain single-port intercept.
pub fn list_block(i: &InterceptInfo, state: String) -> String {
    kv_block("   ", &rows(i, state, Vec::new())) + &pair_lines(i, "   ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use protocol::manager::{InterceptSpec, ResolvedPort};

    fn parse(argv: &[&str]) -> InterceptArgs {
        let cli = crate::args::Cli::try_parse_from(argv).unwrap();
        match cli.command {
            crate::args::Command::Intercept(a) => a,
            crate::args::Command::Replace(a) => a.into(),
            crate::args::Command::Ingest(a) => a.into(),
            crate::args::Command::Wiretap(a) => a.into(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn replace_and_ingest_become_engagements() {
        let a = parse(&[
            "telepresence",
            "replace",
            "web",
            "-p",
            "9000:80",
            "--container",
            "app",
        ]);
        assert_eq!(kind_of(&a), Kind::Replace);
        assert_eq!(a.name, "web");
        assert_eq!(a.container.as_deref(), Some("app"));
        let (first, extra) = pairs(&a).unwrap();
        assert_eq!(first.unwrap().local, 9000);
        assert!(extra.is_empty());
        let a = parse(&["telepresence", "replace", "web"]);
        assert_eq!(pairs(&a).unwrap(), (None, Vec::new()));
        let a = parse(&["telepresence", "intercept", "web", "--replace"]);
        assert_eq!(kind_of(&a), Kind::Replace);
        assert_eq!(pairs(&a).unwrap(), (None, Vec::new()));
        let a = parse(&[
            "telepresence",
            "ingest",
            "web",
            "-e",
            "/tmp/x.env",
            "--docker-run",
            "--",
            "img",
        ]);
        assert_eq!(kind_of(&a), Kind::Ingest);
        assert_eq!(a.command, vec!["img"]);
        assert_eq!(pairs(&a).unwrap(), (None, Vec::new()));
    }

    #[test]
    fn intercept_pairs_default_to_8080_and_repeat() {
        let a = parse(&["telepresence", "intercept", "web"]);
        assert_eq!(pairs(&a).unwrap().0.unwrap().local, 8080);
        let a = parse(&[
            "telepresence",
            "intercept",
            "web",
            "-p",
            "1:80",
            "-p",
            "2:admin",
        ]);
        let (first, extra) = pairs(&a).unwrap();
        assert_eq!(first.unwrap().remote, "80");
        assert_eq!(
            extra,
            vec![PortPair {
                port_identifier: "admin".into(),
                target_port: 2
            }]
        );
        let a = parse(&[
            "telepresence",
            "intercept",
            "web",
            "-p",
            "1:80",
            "-p",
            "x:admin",
        ]);
        assert!(pairs(&a).is_err());
    }

    fn info(kind: EngagementKind, extra: &[(u32, u32)]) -> InterceptInfo {
        InterceptInfo {
            spec: Some(InterceptSpec {
                name: "web".into(),
                workload: "web".into(),
                target_host: "127.0.0.1".into(),
                target_port: 8080,
                kind: kind as i32,
                ..Default::default()
            }),
            service_port: 80,
            workload_kind: "Deployment".into(),
            pod_ip: "10.1.2.3".into(),
            container: "web".into(),
            disposition: "all TCP connections".into(),
            extra_ports: extra
                .iter()
                .map(|(s, t)| ResolvedPort {
                    service_port: *s,
                    target_port: *t,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn multi_port_block_lists_each_pair() {
        let i = info(EngagementKind::Intercept, &[(9000, 8081)]);
        assert!(!is_plain(&i));
        assert_eq!(
            list_block(&i, "ACTIVE".into()),
            "   Intercept name: web\n   State         : ACTIVE\n   Workload kind : Deployment\n   Intercepting  : 10.1.2.3 -> 127.0.0.1\n       80 -> 8080 TCP\n       9000 -> 8081 TCP\n"
        );
        assert!(is_plain(&info(EngagementKind::Intercept, &[])));
    }

    #[test]
    fn kinds_in_list() {
        let w = |kinds: &[EngagementKind]| Workload {
            intercepts: kinds.iter().map(|k| info(*k, &[])).collect(),
            ..Default::default()
        };
        assert_eq!(workload_word(&w(&[EngagementKind::Ingest])), "ingested");
        assert_eq!(
            workload_word(&w(&[EngagementKind::Ingest, EngagementKind::Intercept])),
            "intercepted"
        );
        assert_eq!(workload_word(&w(&[EngagementKind::Replace])), "replaced");
        let ing = info(EngagementKind::Ingest, &[]);
        let block = list_block(&ing, "ACTIVE".into());
        assert!(block.contains("Container     : web"), "{block}");
        assert!(!block.contains("->"), "{block}");
    }

    #[test]
    fn wiretap_takes_the_intercept_flags() {
        let a = parse(&[
            "telepresence",
            "wiretap",
            "web",
            "--name",
            "tap",
            "-p",
            "9095:8080",
            "--http-header",
            "x-dev=a",
            "--docker-run",
            "--",
            "img",
        ]);
        assert_eq!(kind_of(&a), Kind::Wiretap);
        assert_eq!(
            (a.name.as_str(), a.workload.as_deref()),
            ("tap", Some("web"))
        );
        assert_eq!(a.http_header, ["x-dev=a"]);
        assert_eq!(pairs(&a).unwrap().0.unwrap().local, 9095);
        let a = parse(&["telepresence", "wiretap", "web"]);
        assert_eq!(a.name, "web");
        assert_eq!(pairs(&a).unwrap().0.unwrap().local, 8080, "like intercept");
        assert!(
            crate::args::Cli::try_parse_from(["telepresence", "wiretap", "web", "-w", "x"])
                .is_err()
        );
    }

    #[test]
    fn a_wiretap_block_shows_its_dropped_copies() {
        let mut i = info(EngagementKind::Wiretap, &[]);
        i.wiretap_dropped = 7;
        i.disposition = "a copy of all TCP connections".into();
        assert!(!is_plain(&i));
        assert_eq!(
            list_block(&i, "ACTIVE".into()),
            "   Intercept name: web\n   State         : ACTIVE\n   Workload kind : Deployment\n   Destination   : 127.0.0.1:8080\n   Copies dropped: 7\n   Intercepting  : a copy of all TCP connections\n"
        );
        let w = Workload {
            intercepts: vec![i.clone(), info(EngagementKind::Ingest, &[])],
            ..Default::default()
        };
        assert_eq!(workload_word(&w), "wiretapped");
    }
}
