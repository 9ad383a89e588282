//! The `telepresence` multi-call binary's library: CLI commands, output formats, image
//! building, `--docker-run` assembly, daemon discovery, and the entry points of the roles
//! (daemon, traffic-manager, traffic-agent) that run inside containers.

pub mod args;
pub mod commands;
pub mod completion;
pub mod compose;
pub mod config;
pub mod connect;
pub mod connect_kube;
pub mod curl;
pub mod dockerbuild;
pub mod dockerrun;
pub mod engage;
pub mod envfile;
pub mod gather_logs;
pub mod helm;
pub mod info;
pub mod intercept;
pub mod loglevel;
pub mod mounts;
pub mod outbound;
pub mod output;
pub mod roles;
pub mod rpc;
