//! Kubernetes test support: the API server stand-in (`standin.rs`), the stand-in in front of a
//! real traffic-manager with a kubeconfig naming it (`behind.rs`), typed objects to put into it
//! (`fixtures.rs`), a self-signed certificate with a one-request HTTPS client (`https.rs`), and
//! the independent schema / JSONPatch check of produced objects (`schemas.rs`).

pub mod behind;
pub mod fixtures;
pub mod https;
pub mod schemas;
pub mod standin;
