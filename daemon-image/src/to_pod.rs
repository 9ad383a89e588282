//! The daemon end of pod-local ports (`--to-pod PORT[/UDP]`): for the lifetime of an
//! engagement the daemon listens on `127.0.0.1:<port>` in its own network namespace — the one
//! the handler container shares — and carries each accepted connection (or each UDP flow, by
//! source address) through the manager's tunnel with kind `pod-tcp`/`pod-udp`; the manager
//! pairs it with the engaged workload's agent (manager/src/to_pod.rs), which dials the same
//! port on the workload's localhost (agent/src/to_pod.rs).

use crate::session::Session;
use protocol::manager::{PortProtocol, ToPodPort};
use protocol::tunnel::{
    read_datagram, read_header_timeout, write_datagram, write_header, Role, TunnelHeader,
    TunnelKind, MAX_DATAGRAM,
};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long the manager and agent may take to dial the pod-local port and answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(12);
/// A UDP flow with no datagram either way for this long is closed.
const UDP_IDLE: Duration = Duration::from_secs(60);

/// Why a `--to-pod` port cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ToPodError {
    /// Binding `127.0.0.1:<port>` in the daemon's network namespace failed.
    #[error("cannot listen on 127.0.0.1:{port}/{proto} for --to-pod in the daemon's network namespace ({source}); choose a port nothing there uses")]
    Bind {
        port: u32,
        proto: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A bound `--to-pod` port, not served yet.
pub enum Bound {
    Tcp(u16, TcpListener),
    Udp(u16, UdpSocket),
}

/// Binds every `--to-pod` port of an engagement (all or none).
pub async fn bind(ports: &[ToPodPort]) -> Result<Vec<Bound>, ToPodError> {
    let mut out = Vec::new();
    for p in ports {
        let port = u16::try_from(p.port).unwrap_or(0);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let udp = p.protocol() == PortProtocol::Udp;
        let err = |source| ToPodError::Bind {
            port: p.port,
            proto: if udp { "UDP" } else { "TCP" },
            source,
        };
        out.push(if udp {
            Bound::Udp(port, UdpSocket::bind(addr).await.map_err(err)?)
        } else {
            Bound::Tcp(port, TcpListener::bind(addr).await.map_err(err)?)
        });
    }
    Ok(out)
}

/// The served `--to-pod` ports of this daemon's engagements, by engagement name.
#[derive(Default)]
pub struct Listeners(Mutex<HashMap<String, Vec<JoinHandle<()>>>>);

impl Listeners {
    /// Serves the bound ports of engagement `name` until [`Listeners::stop`].
    pub fn start(&self, session: &Arc<Session>, name: &str, bound: Vec<Bound>) {
        let tasks = bound
            .into_iter()
            .map(|b| {
                let link = Link {
                    session: session.clone(),
                    name: name.to_string(),
                };
                match b {
                    Bound::Tcp(port, l) => tokio::spawn(serve_tcp(link, port, l)),
                    Bound::Udp(port, s) => tokio::spawn(serve_udp(link, port, s)),
                }
            })
            .collect();
        if let Some(old) = self.0.lock().unwrap().insert(name.to_string(), tasks) {
            old.iter().for_each(JoinHandle::abort);
        }
    }

    /// Closes the ports of engagement `name` (and the connections they carry).
    pub fn stop(&self, name: &str) {
        if let Some(tasks) = self.0.lock().unwrap().remove(name) {
            tasks.iter().for_each(JoinHandle::abort);
        }
    }
}

/// What a pod-local stream needs to open its tunnel connection.
#[derive(Clone)]
struct Link {
    session: Arc<Session>,
    name: String,
}

impl Link {
    /// Opens a tunnel connection to `127.0.0.1:<port>` of the engaged workload; returns it once
    /// the manager said the agent reached the port.
    async fn open(&self, port: u16, udp: bool) -> std::io::Result<TcpStream> {
        let intercept_id = self
            .session
            .intercepts
            .borrow()
            .iter()
            .find(|i| i.spec.as_ref().is_some_and(|s| s.name == self.name))
            .map(|i| i.id.clone())
            .unwrap_or_default();
        let mut t = relay::dial(&self.session.cfg.tunnel_addr).await?;
        let mut header = TunnelHeader {
            conn_id: uuid::Uuid::new_v4().to_string(),
            intercept_id,
            kind: TunnelKind::to_pod(udp),
            target: format!("{}:{port}", Ipv4Addr::LOCALHOST),
            ..Default::default()
        };
        crate::session::prove(&mut header, &self.session.session());
        write_header(&mut t, Role::Client, &header).await?;
        let (_, answer) = read_header_timeout(&mut t, ANSWER_TIMEOUT)
            .await
            .map_err(std::io::Error::other)?;
        match answer.error {
            None => Ok(t),
            Some(e) => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                e.to_string(),
            )),
        }
    }
}

async fn serve_tcp(link: Link, port: u16, l: TcpListener) {
    loop {
        let Ok((mut local, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        relay::tune(&local);
        let link = link.clone();
        tokio::spawn(async move {
            match link.open(port, false).await {
                Ok(mut t) => {
                    let _ = relay::splice(&mut local, &mut t).await;
                }
                // Dropping the local connection closes it: the handler sees the refusal.
                Err(e) => tracing::info!(port, "--to-pod connection not carried: {e}"),
            }
        });
    }
}

type Flows = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

async fn serve_udp(link: Link, port: u16, sock: UdpSocket) {
    let sock = Arc::new(sock);
    let flows: Flows = Arc::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((n, src)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let d = buf[..n].to_vec();
        let tx = flows.lock().unwrap().get(&src).cloned();
        let tx = match tx {
            Some(tx) if !tx.is_closed() => tx,
            _ => {
                let (tx, rx) = mpsc::channel(64);
                flows.lock().unwrap().insert(src, tx.clone());
                let (link, sock, flows) = (link.clone(), sock.clone(), flows.clone());
                tokio::spawn(async move {
                    if let Err(e) = udp_flow(&link, port, &sock, src, rx).await {
                        tracing::info!(port, %src, "--to-pod UDP flow ended: {e}");
                    }
                    flows.lock().unwrap().remove(&src);
                });
                tx
            }
        };
        // A full queue drops the datagram, as UDP may.
        let _ = tx.try_send(d);
    }
}

/// One UDP flow (one source address of the handler): datagrams framed on a tunnel stream,
/// replies sent back to the source, closed after [`UDP_IDLE`] without traffic.
async fn udp_flow(
    link: &Link,
    port: u16,
    sock: &UdpSocket,
    src: SocketAddr,
    mut rx: mpsc::Receiver<Vec<u8>>,
) -> std::io::Result<()> {
    let t = link.open(port, true).await?;
    let (mut r, mut w) = t.into_split();
    let up = async {
        loop {
            match tokio::time::timeout(UDP_IDLE, rx.recv()).await {
                Ok(Some(d)) => write_datagram(&mut w, &d).await?,
                Ok(None) | Err(_) => return Ok::<_, std::io::Error>(()),
            }
        }
    };
    let down = async {
        let mut buf = Vec::new();
        while read_datagram(&mut r, &mut buf).await?.is_some() {
            sock.send_to(&buf, src).await?;
        }
        Ok(())
    };
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}
