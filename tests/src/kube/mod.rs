//! Kubernetes test support: the API server stand-in (`standin.rs`), typed objects to put into it
//! (`fixtures.rs`), and a self-signed certificate with a one-request HTTPS client (`https.rs`).

pub mod fixtures;
pub mod https;
pub mod standin;
