//! gRPC clients of the CLI: the daemon's connector service on its published localhost port.

use anyhow::{anyhow, Result};
use protocol::connector::connector_client::ConnectorClient;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Connects to a daemon's connector service on 127.0.0.1:`port`.
pub async fn connector(port: u16) -> Result<ConnectorClient<Channel>> {
    let ch = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    Ok(ConnectorClient::new(ch))
}

/// Turns a gRPC status into the user-facing error: its message alone.
pub fn status_err(s: tonic::Status) -> anyhow::Error {
    if s.code() == tonic::Code::Unavailable && s.message().contains("transport") {
        return anyhow!(
            "the daemon is not answering ({}); run `telepresence quit` and connect again",
            s.message()
        );
    }
    anyhow!("{}", s.message())
}
