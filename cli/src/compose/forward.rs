//! The forwarder a `proxy` service becomes (hidden role `compose-proxy LOCAL=HOST:PORT…`): it
//! runs in the connection's daemon network namespace, where the service's name is the daemon's
//! alias on the dev network, listens on each LOCAL port and splices every connection to
//! HOST:PORT, the remote service's cluster name, resolved per connection through the daemon's
//! DNS and reached through its routes. Ends on SIGTERM or SIGINT.

use anyhow::{anyhow, Context, Result};
use tokio::net::{TcpListener, TcpStream};

/// The hidden subcommand.
pub const ROLE: &str = "compose-proxy";

/// One `LOCAL=HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The port listened on.
    pub local: u16,
    /// The host dialed.
    pub host: String,
    /// The port dialed.
    pub port: u16,
}

/// Parses `LOCAL=HOST:PORT`.
pub fn parse(s: &str) -> Result<Route> {
    let bad = || anyhow!("{s:?}: expected LOCAL=HOST:PORT");
    let (local, target) = s.split_once('=').ok_or_else(bad)?;
    let (host, port) = target.rsplit_once(':').ok_or_else(bad)?;
    Ok(Route {
        local: local.parse().map_err(|_| bad())?,
        host: host.to_string(),
        port: port.parse().map_err(|_| bad())?,
    })
}

/// Runs the forwarder until SIGTERM or SIGINT.
pub async fn run(args: &[String]) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let routes = args.iter().map(|a| parse(a)).collect::<Result<Vec<_>>>()?;
    if routes.is_empty() {
        return Err(anyhow!("give at least one LOCAL=HOST:PORT"));
    }
    let mut tasks = Vec::new();
    for r in routes {
        let l = TcpListener::bind(("0.0.0.0", r.local))
            .await
            .with_context(|| format!("listening on port {}", r.local))?;
        tracing::info!(local = r.local, host = %r.host, port = r.port, "forwarding");
        tasks.push(tokio::spawn(serve(l, r)));
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tasks.iter().for_each(tokio::task::JoinHandle::abort);
    Ok(())
}

async fn serve(l: TcpListener, r: Route) {
    loop {
        let Ok((mut inbound, _)) = l.accept().await else {
            continue;
        };
        relay::tune(&inbound);
        let r = r.clone();
        tokio::spawn(async move {
            match dial(&r).await {
                Ok(mut out) => {
                    let _ = relay::splice(&mut inbound, &mut out).await;
                }
                Err(e) => {
                    tracing::warn!(host = %r.host, error = %e, "cannot reach the remote service");
                }
            }
        });
    }
}

async fn dial(r: &Route) -> Result<TcpStream> {
    let ips = crate::curl::resolve(&r.host)
        .await
        .ok_or_else(|| anyhow!("cannot resolve {}", r.host))?;
    let mut last = None;
    for ip in ips {
        match TcpStream::connect((ip, r.port)).await {
            Ok(s) => {
                relay::tune(&s);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow!("connecting to {}:{}: {:?}", r.host, r.port, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse() {
        assert_eq!(
            parse("8080=orders.shop.svc.cluster.local:80").unwrap(),
            Route {
                local: 8080,
                host: "orders.shop.svc.cluster.local".into(),
                port: 80
            }
        );
        assert!(parse("8080").is_err());
        assert!(parse("x=h:1").is_err());
    }
}
