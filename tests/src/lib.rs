//! The end-to-end harness shared by the tests, the demo and the benchmark: finding the built
//! binaries, building their images once, compose projects of our test app, driving the real
//! `telepresence` CLI (`harness.rs`), dev projects for `telepresence compose` (`devstack.rs`), making requests from inside a project network (`stack.rs`),
//! checking that nothing of ours is left behind (`leftovers.rs`), the fault suite and its steady
//! caller (`faults.rs`), file trees (`fs.rs`), the Kubernetes API stand-in (`kube/`), the fuzz
//! targets' properties (`fuzz.rs`) and a caller without the manager's credential (`stranger.rs`).
#![allow(clippy::too_many_lines)] // test tools and scenarios (the test app, the benchmark) read top to bottom

pub mod bench_chart;
pub mod bench_compose;
pub mod bench_outbound;
pub mod bench_paths;
pub mod devstack;
pub mod faults;
pub mod fs;
pub mod fuzz;
pub mod harness;
pub mod kube;
pub mod leftovers;
pub mod stack;
pub mod stranger;
pub mod testapp;
pub mod testapp_h2;
pub mod testapp_load;
pub mod testapp_paths;
pub mod testapp_steady;
pub mod testapp_udp;

pub use devstack::DevProject;
pub use fs::make_tree;
pub use harness::*;
pub use leftovers::{assert_clean, leftovers};
pub use stack::{compose_cmd, Project};
