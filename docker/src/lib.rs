//! Everything that talks to a Docker engine, used by the CLI and by the traffic-manager alike:
//! [`engine`] (connecting, labels, containers and networks of ours), [`image`] (the
//! `FROM scratch` image built from our own executable), [`logs`] (our containers by role and
//! their logs, for `gather-logs`), [`provider`] (the traffic-manager's
//! Docker-engine provider: compose project = namespace, compose service = workload) [`replace`] (pausing a replaced workload) and
//! [`startup`] (the Docker traffic-manager's entry point, from its environment) and [`watch`]
//! (engine events that re-attach agents to restarted or recreated workloads).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod engine;
pub mod image;
pub mod logs;
pub mod provider;
pub mod replace;
pub mod startup;
pub mod watch;
