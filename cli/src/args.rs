//! The command line: every command, its flags and the hidden role subcommands of the
//! multi-call binary (daemon, traffic-manager, traffic-agent).

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "telepresence",
    version,
    about = "Run one service in a container on your laptop as if it ran in the cluster"
)]
pub struct Cli {
    /// Output format for machine consumption.
    #[arg(long, global = true, value_enum, default_value = "default")]
    pub output: OutputFormat,
    /// Select the connection whose name matches this regular expression.
    #[arg(long = "use", global = true, value_name = "REGEX")]
    pub use_: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Default,
    Json,
    Yaml,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClusterType {
    Docker,
    Kubernetes,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a daemon (in a container) and connect it to the cluster.
    Connect(ConnectArgs),
    /// Show the connectivity of every running daemon.
    Status,
    /// End the session; -s also stops every daemon, agent and Docker-engine traffic-manager.
    Quit(QuitArgs),
    /// List workloads and their intercept state.
    List(ListArgs),
    /// Intercept a workload's traffic.
    Intercept(InterceptArgs),
    /// Replace a workload's container by a local handler: the container stops running and every
    /// port's traffic, its environment and volumes go to the handler until you leave.
    Replace(crate::engage::ReplaceArgs),
    /// Give a handler a workload container's environment and volumes (read-only), no traffic.
    Ingest(crate::engage::IngestArgs),
    /// Give a handler a copy of a workload's (matching) traffic while the workload still answers
    /// every caller; the handler's answers are discarded, its environment and volumes read-only.
    Wiretap(crate::engage::WiretapArgs),
    /// Remove an intercept, replace, ingest or wiretap.
    Leave(LeaveArgs),
    /// Remove traffic-agents.
    Uninstall(UninstallArgs),
    /// Show client, daemon and traffic-manager versions.
    Version,
    /// Install, upgrade or uninstall the traffic-manager in a Kubernetes cluster.
    Helm(crate::helm::HelmArgs),
    /// Print a shell completion script (`source <(telepresence completion bash)`).
    Completion(CompletionArgs),
    /// Show the client configuration.
    Config(ConfigArgs),
    /// Write the logs of the CLI, the daemons, the traffic-managers and the agents into a zip
    /// file to attach to a bug report.
    #[command(name = "gather-logs")]
    GatherLogs(GatherLogsArgs),
    /// Change the log level of the daemon, the traffic-manager and its traffic-agents (trace,
    /// debug, info, warning, error), optionally for a while only.
    Loglevel(crate::loglevel::LoglevelArgs),
    /// Run the client daemon (inside its container).
    #[command(name = "daemon-foreground", hide = true)]
    DaemonForeground,
    /// Run the traffic-manager.
    #[command(name = "traffic-manager", hide = true)]
    TrafficManager,
    /// Run the traffic-agent.
    #[command(hide = true)]
    Agent,
    /// Mirror an intercept's remote volumes into local directories (inside the sync container).
    #[command(name = "fs-sync", hide = true)]
    FsSync,
    /// Run a container on a connection's network: `docker run --network container:tp-<connection> ARGS`.
    #[command(name = "docker-run")]
    DockerRun(PassArgs),
    /// curl from inside the connection's network (a small client of ours when no curl image exists locally).
    Curl(PassArgs),
    /// Run a compose project with its `x-tele` extensions applied: `compose [-f FILE…] [-p NAME]
    /// [--project-directory DIR] [--env-file FILE] [--profile P] up|down|config|ps|… [args]`.
    Compose(PassArgs),
    /// The forwarder a compose `proxy` service becomes (`LOCAL=HOST:PORT`…).
    #[command(name = "compose-proxy", hide = true)]
    ComposeProxy(PassArgs),
    /// The small HTTP client `telepresence curl` runs inside the connection's network.
    #[command(name = "curl-client", hide = true)]
    CurlClient(PassArgs),
    /// Remove a crashed agent's netfilter rules from the workload's network namespace.
    #[command(name = "agent-cleanup", hide = true)]
    AgentCleanup(AgentCleanupArgs),
    /// Install the redirects of a Kubernetes pod's numeric target ports to its agent (init container).
    #[command(name = "agent-init", hide = true)]
    AgentInit,
}

#[derive(Debug, Args, Default)]
pub struct ConnectArgs {
    /// Run the daemon in a container (the only mode of this implementation; accepted for
    /// compatibility).
    #[arg(long)]
    pub docker: bool,
    /// Connection name (default `<context>-<namespace>-cn`).
    #[arg(long)]
    pub name: Option<String>,
    /// What the cluster is: a Kubernetes cluster or this Docker engine (compose projects are
    /// namespaces). Default: kubernetes when a kubeconfig context exists, else docker.
    #[arg(long, value_enum)]
    pub cluster_type: Option<ClusterType>,
    /// Namespace (on a Docker engine: the compose project; standalone containers: `default`).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Kubernetes context.
    #[arg(long)]
    pub context: Option<String>,
    /// Kubeconfig file.
    #[arg(long)]
    pub kubeconfig: Option<String>,
    /// Namespace of the traffic-manager.
    #[arg(long, default_value = "ambassador")]
    pub manager_namespace: String,
    /// Docker engine: start the traffic-manager in team mode, where intercepts without filters
    /// are personal (`--http-header=auto`).
    #[arg(long)]
    pub team_mode: bool,
    /// Also route these subnets (CIDR, comma-separated) to the cluster.
    #[arg(long, value_delimiter = ',', value_name = "CIDR")]
    pub also_proxy: Vec<String>,
    /// Never route these subnets (CIDR, comma-separated) to the cluster.
    #[arg(long, value_delimiter = ',', value_name = "CIDR")]
    pub never_proxy: Vec<String>,
    /// Route these subnets to the cluster even where they overlap a route the daemon container
    /// already has.
    #[arg(long, value_delimiter = ',', value_name = "CIDR")]
    pub allow_conflicting_subnets: Vec<String>,
}

/// The shells `completion` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
    Powershell,
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective client configuration (`config.yml` over the defaults) as YAML.
    View,
}

#[derive(Debug, Args)]
pub struct GatherLogsArgs {
    /// The zip file to write (default: telepresence_logs.zip in the current directory).
    #[arg(short = 'o', long = "output-file", value_name = "FILE.zip")]
    pub output_file: Option<std::path::PathBuf>,
    /// The daemons whose logs to gather: all, none, or connection names (comma-separated or
    /// repeated).
    #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "all", value_name = "all|none|NAME")]
    pub daemons: Vec<String>,
    /// Whether to gather the traffic-managers' logs.
    #[arg(long = "traffic-manager", default_value = "true", num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new(), value_name = "true|false")]
    pub traffic_manager: bool,
    /// The traffic-agents whose logs to gather: all, none, or workload, container or pod names
    /// (a name matches when it is part of one; comma-separated or repeated).
    #[arg(long = "traffic-agents", value_delimiter = ',', num_args = 1.., default_value = "all", value_name = "all|none|NAME")]
    pub traffic_agents: Vec<String>,
    /// Replace namespace, workload, pod and connection names and IP addresses with stable
    /// placeholders (`namespace-1`, `ip-1`, …).
    #[arg(short = 'a', long)]
    pub anonymize: bool,
}

/// Arguments passed through as they are.
#[derive(Debug, Args)]
pub struct PassArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct AgentCleanupArgs {
    /// Only report: exit 0 when no agent table exists, 3 when one does.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Args)]
pub struct QuitArgs {
    /// Also stop every daemon, and on a Docker engine the traffic-managers and agents.
    #[arg(short = 's', long = "stop-daemons")]
    pub stop_daemons: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Only workloads with intercepts.
    #[arg(short = 'i', long)]
    pub intercepts: bool,
    /// Only workloads with a traffic-agent.
    #[arg(short = 'a', long)]
    pub agents: bool,
    /// Only interceptable workloads.
    #[arg(short = 'o', long = "only-interceptable", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub only_interceptable: bool,
}

#[derive(Debug, Args)]
pub struct InterceptArgs {
    /// Intercept name; also the workload name unless --workload is given.
    pub name: String,
    /// <local port>[:<service port number or name>[/TCP]] (default 8080); repeat for several
    /// ports of the workload in one intercept.
    #[arg(short = 'p', long)]
    pub port: Vec<String>,
    /// The service whose ports are meant, when several services select the workload.
    #[arg(long)]
    pub service: Option<String>,
    /// Replace the workload's container instead (same as `telepresence replace`).
    #[arg(long)]
    pub replace: bool,
    /// What this engagement is (set by `replace`/`ingest`, or `--replace`).
    #[arg(skip)]
    pub kind: crate::engage::Kind,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The workload to intercept (default: the intercept name).
    #[arg(short = 'w', long)]
    pub workload: Option<String>,
    /// Run the handler with `docker run` and the arguments after `--`; leave when it exits.
    #[arg(long)]
    pub docker_run: bool,
    /// Where the handler listens inside the daemon's network namespace.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,
    /// Container of the workload whose environment and mounts the handler gets.
    #[arg(long)]
    pub container: Option<String>,
    /// Also write the intercepted environment to this file.
    #[arg(short = 'e', long)]
    pub env_file: Option<std::path::PathBuf>,
    /// Syntax of --env-file: docker, compose, sh, sh:export, csh, csh:export, cmd, ps, ps:export, json.
    #[arg(long, default_value = "docker")]
    pub env_syntax: crate::envfile::EnvSyntax,
    /// Also write the intercepted environment to this file as JSON.
    #[arg(short = 'j', long)]
    pub env_json: Option<std::path::PathBuf>,
    /// Remote volumes: true (default), false, or PATH[:ro] (the root inside the handler).
    #[arg(long, default_value = "true")]
    pub mount: String,
    /// Where the remote volumes appear inside the handler container (TELEPRESENCE_ROOT).
    #[arg(long)]
    pub docker_mount: Option<String>,
    /// Personal intercept: only HTTP requests carrying this header (NAME=VALUE, repeatable, all
    /// must match); `auto` = `x-telepresence-intercept-id: <intercept id>`; `all` = every
    /// connection (a global intercept, also in team mode).
    #[arg(long = "http-header", value_name = "NAME=VALUE|auto|all")]
    pub http_header: Vec<String>,
    /// Personal intercept: only HTTP requests whose path is exactly this.
    #[arg(long, value_name = "PATH")]
    pub http_path_equal: Option<String>,
    /// Personal intercept: only HTTP requests whose path starts with this.
    #[arg(long, value_name = "PREFIX")]
    pub http_path_prefix: Option<String>,
    /// Personal intercept: only HTTP requests whose whole path matches this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub http_path_regex: Option<String>,
    #[command(flatten)]
    pub extras: crate::engage::HandlerExtras,
    /// The handler command (with --docker-run: `docker run` arguments, IMAGE first after flags).
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LeaveArgs {
    pub name: String,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Remove the agents of these workloads.
    #[arg(long = "agent", num_args = 1..)]
    pub agents: Vec<String>,
    /// Remove every agent of the namespace.
    #[arg(long)]
    pub all_agents: bool,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// `-p/--port` parsed: the local port and the service port identifier (may be empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub local: u16,
    pub remote: String,
}

/// A `--port` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortSpecError {
    /// The local port and the whole value.
    #[error("invalid local port {0:?} in --port {1:?}: expected 1-65535")]
    LocalPort(String, String),
    /// The protocol and the whole value.
    #[error("protocol {0:?} in --port {1:?} is not supported; only TCP can be intercepted")]
    Protocol(String, String),
}

/// Parses `<local>[:<svcPortName|number>[/TCP|UDP]]`.
pub fn parse_port(s: &str) -> Result<PortSpec, PortSpecError> {
    let (local, rest) = match s.split_once(':') {
        Some((l, r)) => (l, r),
        None => (s, ""),
    };
    let local: u16 = local
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| PortSpecError::LocalPort(local.into(), s.into()))?;
    let remote = match rest.split_once('/') {
        Some((r, proto)) if proto.eq_ignore_ascii_case("tcp") => r,
        Some((_, proto)) => return Err(PortSpecError::Protocol(proto.into(), s.into())),
        None => rest,
    };
    Ok(PortSpec {
        local,
        remote: remote.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(
            parse_port("8080").unwrap(),
            PortSpec {
                local: 8080,
                remote: String::new()
            }
        );
        assert_eq!(parse_port("9090:8080").unwrap().remote, "8080");
        assert_eq!(parse_port("9090:http/TCP").unwrap().remote, "http");
        assert!(parse_port("0").is_err());
        assert!(parse_port("x:80").is_err());
        assert!(parse_port("70000").is_err());
        assert!(parse_port("90:53/UDP")
            .unwrap_err()
            .to_string()
            .contains("only TCP"));
    }

    #[test]
    fn intercept_args_after_double_dash() {
        let cli = Cli::try_parse_from([
            "telepresence",
            "intercept",
            "web",
            "-n",
            "shop",
            "--port",
            "9090:8080",
            "--docker-run",
            "--",
            "--rm",
            "img:dev",
            "serve",
        ])
        .unwrap();
        let Command::Intercept(a) = cli.command else {
            panic!("not intercept")
        };
        assert_eq!(a.namespace.as_deref(), Some("shop"));
        assert!(a.docker_run);
        assert_eq!(a.command, vec!["--rm", "img:dev", "serve"]);
        assert_eq!(a.port, vec!["9090:8080"]);
    }

    #[test]
    fn port_repeats_and_defaults_to_8080() {
        let cli = Cli::try_parse_from([
            "telepresence",
            "intercept",
            "web",
            "-p",
            "1:80",
            "--port",
            "2:90",
        ])
        .unwrap();
        let Command::Intercept(a) = cli.command else {
            panic!("not intercept")
        };
        assert_eq!(a.port, vec!["1:80", "2:90"]);
        let cli = Cli::try_parse_from(["telepresence", "intercept", "web"]).unwrap();
        let Command::Intercept(a) = cli.command else {
            panic!("not intercept")
        };
        assert!(
            a.port.is_empty(),
            "8080 is applied by cli/src/engage.rs `pairs`"
        );
    }
}
