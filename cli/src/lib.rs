//! The `telepresence` multi-call binary's library: CLI commands, output formats, image
//! building, `--docker-run` assembly, daemon discovery, and the entry points of the roles
//! (daemon, traffic-manager, traffic-agent) that run inside containers.

pub mod args;
pub mod commands;
pub mod connect;
pub mod connect_kube;
pub mod curl;
pub mod dockerrun;
pub mod engine;
pub mod envfile;
pub mod helm;
pub mod image;
pub mod info;
pub mod intercept;
pub mod kubeconfig;
pub mod mounts;
pub mod outbound;
pub mod output;
pub mod roles;
pub mod rpc;

/// The last lines of a container's log, formatted to append to an error (empty when none).
pub async fn engine_logs(docker: &bollard::Docker, container: &str) -> String {
    use futures::StreamExt;
    let opts = bollard::query_parameters::LogsOptions {
        stdout: true,
        stderr: true,
        tail: "10".into(),
        ..Default::default()
    };
    let mut s = docker.logs(container, Some(opts));
    let mut out = String::new();
    while let Some(Ok(chunk)) = s.next().await {
        out.push_str(&chunk.to_string());
    }
    if out.trim().is_empty() {
        String::new()
    } else {
        format!("; its last log lines:\n{}", out.trim_end())
    }
}
