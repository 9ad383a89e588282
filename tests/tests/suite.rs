//! Every process- and container-level test, one module per file of this folder, in one test
//! binary: one link instead of one per file, and one process, so the images are built once.
//! `cargo test -p tests --test suite <module>::` runs one file's tests.

mod auth;
mod cli_commands;
mod compose;
mod e2e;
mod engage;
mod env_volumes;
mod faults;
mod fuzz_corpus;
mod helm_chart;
mod helm_template;
mod kube_admission;
mod kube_api;
mod kube_auth;
mod kube_cluster;
mod kube_engage;
mod kube_intercept;
mod kube_manager;
mod kube_pod;
mod kube_provider;
mod kubernetes;
mod outbound;
mod personal;
mod webhook;
mod wiretap;
