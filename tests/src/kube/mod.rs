//! Kubernetes test support: the API server stand-in (`standin.rs`), typed objects to put into it
//! (`fixtures.rs`), a self-signed certificate with a one-request HTTPS client (`https.rs`), and
//! the independent schema / JSONPatch check of produced objects (`schemas.rs`).

pub mod fixtures;
pub mod https;
pub mod schemas;
pub mod standin;
