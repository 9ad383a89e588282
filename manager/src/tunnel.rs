//! The manager's tunnel listener: reads each connection's header, parks the originating side
//! (an agent's intercepted connection, or a client's file-sync stream), asks the other side to
//! dial in with the same connection id over its `WatchDials` stream, then splices the two.

use crate::Manager;
use protocol::manager::DialRequest;
use protocol::tunnel::{
    read_header_timeout, splice, tune, Role, TunnelHeader, KIND_FS, KIND_OUT_TCP, KIND_OUT_UDP,
};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How long an agent-side connection waits for its client side.
const PAIR_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts tunnel connections forever.
pub async fn serve(mgr: Manager, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((sock, peer)) => {
                tune(&sock);
                let mgr = mgr.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(mgr, sock).await {
                        tracing::debug!(%peer, "tunnel connection dropped: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("tunnel accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(mgr: Manager, mut sock: TcpStream) -> Result<(), String> {
    let (role, header) = read_header_timeout(&mut sock, HEADER_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    match role {
        Role::Client if header.kind == KIND_FS => from_client(mgr, sock, header).await,
        Role::Client if header.kind == KIND_OUT_TCP => {
            crate::outbound::tcp(&mgr, sock, header).await
        }
        Role::Client if header.kind == KIND_OUT_UDP => {
            crate::outbound::udp(&mgr, sock, header).await
        }
        Role::Agent if header.kind.is_empty() => from_agent(mgr, sock, header).await,
        // The answering side of any stream: hand it to the originator waiting for it.
        Role::Agent | Role::Client => {
            let waiting = mgr.inner.pending.lock().unwrap().remove(&header.conn_id);
            match waiting {
                Some(tx) if header.error.is_empty() => {
                    let _ = tx.send(sock);
                    Ok(())
                }
                // Dropping the sender closes the agent side.
                Some(_) => Err(format!("client could not deliver: {}", header.error)),
                None => Err(format!("no agent connection {} is waiting", header.conn_id)),
            }
        }
    }
}

/// An agent accepted an intercepted connection: ask the owning client to dial in.
async fn from_agent(mgr: Manager, agent: TcpStream, h: TunnelHeader) -> Result<(), String> {
    let (tx, req) = {
        let st = mgr.inner.state.lock().await;
        let ic = st
            .intercept_by_id(&h.intercept_id)
            .ok_or_else(|| format!("intercept {} is gone", h.intercept_id))?;
        let client = st
            .clients
            .get(&ic.client_session)
            .ok_or("intercepting client is gone")?;
        let spec = ic.spec.as_ref().expect("spec");
        let tx = client.dials.clone().ok_or("client is not watching dials")?;
        (
            tx,
            DialRequest {
                conn_id: h.conn_id.clone(),
                intercept_id: h.intercept_id.clone(),
                target_host: spec.target_host.clone(),
                target_port: spec.target_port,
                kind: String::new(),
            },
        )
    };
    originate(mgr, agent, tx, req).await
}

/// A client opens a file-sync stream for one of its intercepts: ask an agent of the
/// intercepted workload to dial in.
async fn from_client(mgr: Manager, client: TcpStream, h: TunnelHeader) -> Result<(), String> {
    let (tx, req) = {
        let st = mgr.inner.state.lock().await;
        let ic = st
            .intercept_by_id(&h.intercept_id)
            .ok_or_else(|| format!("intercept {} is gone", h.intercept_id))?;
        let spec = ic.spec.as_ref().expect("spec");
        let tx = st
            .agents
            .values()
            .filter(|a| a.info.namespace == spec.namespace && a.info.name == spec.workload)
            .find_map(|a| a.dials.clone())
            .ok_or("no traffic-agent of the workload is watching dials")?;
        (
            tx,
            DialRequest {
                conn_id: h.conn_id.clone(),
                intercept_id: h.intercept_id.clone(),
                kind: KIND_FS.into(),
                ..Default::default()
            },
        )
    };
    originate(mgr, client, tx, req).await
}

/// Parks `origin`, sends the dial request to the other side, and splices the two once the
/// other side dials in with the same connection id.
async fn originate(
    mgr: Manager,
    mut origin: TcpStream,
    tx: mpsc::Sender<DialRequest>,
    req: DialRequest,
) -> Result<(), String> {
    let conn_id = req.conn_id.clone();
    let (ptx, rx) = tokio::sync::oneshot::channel();
    mgr.inner
        .pending
        .lock()
        .unwrap()
        .insert(conn_id.clone(), ptx);
    if tx.send(req).await.is_err() {
        mgr.inner.pending.lock().unwrap().remove(&conn_id);
        return Err("the other side's dial stream closed".into());
    }
    let mut other = match tokio::time::timeout(PAIR_TIMEOUT, rx).await {
        Ok(Ok(c)) => c,
        Ok(Err(_)) => return Err("the other side refused the connection".into()),
        Err(_) => {
            mgr.inner.pending.lock().unwrap().remove(&conn_id);
            return Err("the other side did not answer in time".into());
        }
    };
    splice(&mut origin, &mut other)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
