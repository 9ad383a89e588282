//! Docker Compose conventions shared by the provider, the CLI and the tests: the labels compose
//! puts on what it creates, the default network name of a project, and which compose command
//! (`docker compose` v2 or `docker-compose` v1) this machine has.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::process::Command;

/// Label holding a container's compose project (our namespace on a Docker engine).
pub const PROJECT_LABEL: &str = "com.docker.compose.project";
/// Label holding a container's compose service (our workload on a Docker engine).
pub const SERVICE_LABEL: &str = "com.docker.compose.service";
/// Label holding the replica number of a service's container.
pub const NUMBER_LABEL: &str = "com.docker.compose.container-number";
/// Label compose v2 puts on networks it creates, naming the project.
pub const NETWORK_LABEL: &str = "com.docker.compose.network";

/// The network compose creates for a project that declares none.
pub fn default_network(project: &str) -> String {
    format!("{project}_default")
}

/// Which compose command to run: `["docker", "compose"]` when the v2 plugin answers, else
/// `["docker-compose"]` when that exists.
pub fn compose_command() -> Option<Vec<String>> {
    let ok = |prog: &str, args: &[&str]| {
        Command::new(prog)
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if ok("docker", &["compose", "version"]) {
        Some(vec!["docker".into(), "compose".into()])
    } else if ok("docker-compose", &["version"]) {
        Some(vec!["docker-compose".into()])
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn default_network_name() {
        assert_eq!(default_network("shop"), "shop_default");
    }
}
