//! Docker Compose conventions shared by the provider, the CLI and the tests: the labels compose
//! puts on what it creates, the default network name of a project, and which compose command
//! (`docker compose` v2 or `docker-compose` v1) this machine has; and the reading and rewriting
//! of compose projects for `telepresence compose`: files, `-f` merging, `.env` and `${VAR}`
//! interpolation, profiles (`project.rs`, `merge.rs`, `interpolate.rs`, `model.rs`), the typed
//! `x-tele` extension (`xtele.rs`), its mount policies applied to a service's volumes
//! (`volumes.rs`) and the rewritten project (`rewrite.rs`).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod interpolate;
pub mod merge;
pub mod model;
pub mod project;
pub mod rewrite;
pub mod volumes;
pub mod xtele;

use std::path::PathBuf;
use std::process::Command;

/// Why a compose project cannot be read or its `x-tele` is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// No `-f` and no default file.
    #[error("no compose file in {dir} or its parents (looked for {names}); give one with -f FILE")]
    NoFile {
        /// Where the search started.
        dir: PathBuf,
        /// The names looked for.
        names: String,
    },
    /// A file that cannot be read.
    #[error("{}: {error}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        error: String,
    },
    /// A file that is not YAML (or not a mapping).
    #[error("{}: not a compose file: {error}", file.display())]
    Yaml {
        /// The file.
        file: PathBuf,
        /// Why.
        error: String,
    },
    /// A `${VAR}` that cannot be interpolated.
    #[error("{}: {path}: {error}", file.display())]
    Interpolate {
        /// The file.
        file: PathBuf,
        /// Dotted path of the value.
        path: String,
        /// Why.
        error: interpolate::InterpolateError,
    },
    /// A wrong `x-tele` value.
    #[error("{}: {path}: {message}", file.display())]
    Tele {
        /// The file that declares it.
        file: PathBuf,
        /// Dotted path of the key (`services.web.x-tele.ports`).
        path: String,
        /// What is wrong and what to write instead.
        message: String,
    },
}

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
