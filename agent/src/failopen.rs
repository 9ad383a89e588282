//! Fail open: an intercepted connection whose client side goes away before answering is
//! replayed to the application, so a handler that exits, a daemon that dies or a tunnel that
//! breaks costs the caller no request. The tunnel is only used once the manager has answered
//! that the client side is connected (`crate::forward::open_tunnel`); this module covers the
//! moments after that: until the client side sends its first byte back, every byte of the
//! caller is kept (up to [`MAX_REPLAY`]) and sent to the app when the tunnel ends unanswered.
//! After the first byte back, or once more than [`MAX_REPLAY`] bytes went out, the connection
//! is committed to the client and spliced as any other.

use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most bytes of a caller kept for a replay; a caller that sends more before any answer is
/// committed to the client side.
pub const MAX_REPLAY: usize = 64 * 1024;

/// How long an unanswered tunnel may go without its peer's kernel acknowledging anything (a
/// manager that vanished without FIN or RST) before the caller is replayed to the app.
const VANISHED_PEER: std::time::Duration = std::time::Duration::from_secs(2);

/// How the first exchange over the tunnel ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FirstExchange {
    /// The client side answered (or the caller sent more than can be replayed): keep splicing.
    Committed,
    /// The tunnel ended before any byte came back: `sent` is everything the caller sent so far
    /// (`caller_done`: and then it half-closed), for the app.
    Unanswered { sent: Vec<u8>, caller_done: bool },
    /// The caller went away: nothing more to do.
    CallerGone,
}

/// Relays between `inbound` (the caller) and `tunnel` until the client side answers, the
/// tunnel ends unanswered, or the caller goes away; every byte of the caller is also queued
/// for the wiretaps' `copies` (once, whichever side it ends up at).
pub(crate) async fn first_exchange(
    inbound: &mut TcpStream,
    tunnel: &mut TcpStream,
    copies: &mut [crate::wiretap::CopySender],
) -> FirstExchange {
    let mut sent = Vec::new();
    let mut caller_done = false;
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    let unanswered = |sent: Vec<u8>, caller_done| FirstExchange::Unanswered { sent, caller_done };
    // Only while a replay is still possible; committed connections are patient again.
    relay::impatient(tunnel, VANISHED_PEER);
    loop {
        tokio::select! {
            r = inbound.read(&mut up), if !caller_done => match r {
                Ok(0) => {
                    caller_done = true;
                    if tunnel.shutdown().await.is_err() {
                        return unanswered(sent, caller_done);
                    }
                }
                Ok(n) => {
                    crate::wiretap::push_all(copies, &up[..n]);
                    if tunnel.write_all(&up[..n]).await.is_err() {
                        sent.extend_from_slice(&up[..n]);
                        return unanswered(sent, caller_done);
                    }
                    if sent.len() + n > MAX_REPLAY {
                        relay::patient(tunnel);
                        return FirstExchange::Committed;
                    }
                    sent.extend_from_slice(&up[..n]);
                }
                Err(_) => return FirstExchange::CallerGone,
            },
            r = tunnel.read(&mut down) => match r {
                Ok(0) | Err(_) => return unanswered(sent, caller_done),
                Ok(n) => {
                    // Committed: the tunnel is an ordinary long-lived connection from now on.
                    relay::patient(tunnel);
                    return match inbound.write_all(&down[..n]).await {
                        Ok(()) => FirstExchange::Committed,
                        Err(_) => FirstExchange::CallerGone,
                    };
                }
            },
        }
    }
}

/// Sends a caller's bytes (`sent`, then its half-close when `caller_done`) to `app`.
pub(crate) async fn replay(app: &mut TcpStream, sent: &[u8], caller_done: bool) -> io::Result<()> {
    app.write_all(sent).await?;
    if caller_done {
        app.shutdown().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A connected pair of sockets (client end, accepted end).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn a_tunnel_closed_before_answering_hands_back_every_byte() {
        let (mut caller, mut inbound) = pair().await;
        let (mut tunnel, mut client_side) = pair().await;
        caller.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let client = tokio::spawn(async move {
            let mut got = vec![0u8; 18];
            client_side.read_exact(&mut got).await.unwrap();
            drop(client_side); // the handler died mid-request
            got
        });
        let end = first_exchange(&mut inbound, &mut tunnel, &mut []).await;
        assert_eq!(client.await.unwrap(), b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(
            end,
            FirstExchange::Unanswered {
                sent: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
                caller_done: false
            }
        );
    }

    #[tokio::test]
    async fn an_answer_commits_and_reaches_the_caller() {
        let (mut caller, mut inbound) = pair().await;
        let (mut tunnel, mut client_side) = pair().await;
        caller.write_all(b"ping").await.unwrap();
        caller.shutdown().await.unwrap();
        let client = tokio::spawn(async move {
            let mut got = Vec::new();
            client_side.read_to_end(&mut got).await.unwrap(); // the caller's FIN crossed
            client_side.write_all(b"pong").await.unwrap();
            got
        });
        assert_eq!(
            first_exchange(&mut inbound, &mut tunnel, &mut []).await,
            FirstExchange::Committed
        );
        assert_eq!(client.await.unwrap(), b"ping");
        let mut back = [0u8; 4];
        caller.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"pong");
    }

    #[tokio::test]
    async fn a_caller_that_sends_more_than_can_be_replayed_is_committed() {
        let (mut caller, mut inbound) = pair().await;
        let (mut tunnel, mut client_side) = pair().await;
        let big = vec![7u8; MAX_REPLAY + 1];
        let writer = tokio::spawn(async move {
            caller.write_all(&big).await.unwrap();
            caller
        });
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; MAX_REPLAY + 1];
            client_side.read_exact(&mut got).await.unwrap();
        });
        assert_eq!(
            first_exchange(&mut inbound, &mut tunnel, &mut []).await,
            FirstExchange::Committed
        );
        let _caller = writer.await.unwrap();
        reader.await.unwrap();
    }

    #[tokio::test]
    async fn the_wiretaps_get_the_bytes_of_the_first_exchange() {
        use crate::wiretap::{copy, deliver, Counters};
        let (mut caller, mut inbound) = pair().await;
        let (mut tunnel, mut client_side) = pair().await;
        let (tx, rx) = copy(
            "tap".into(),
            std::sync::Arc::new(Counters::default()),
            1 << 20,
        );
        let (ours, mut handler) = tokio::io::duplex(1024);
        tokio::spawn(deliver(ours, rx));
        caller.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
        let client = tokio::spawn(async move {
            let mut got = vec![0u8; 19];
            client_side.read_exact(&mut got).await.unwrap();
            client_side
                .write_all(b"HTTP/1.1 200 OK\r\n\r\n")
                .await
                .unwrap();
            got
        });
        let mut copies = vec![tx];
        let end = first_exchange(&mut inbound, &mut tunnel, &mut copies).await;
        assert_eq!(end, FirstExchange::Committed);
        assert_eq!(client.await.unwrap(), b"GET /a HTTP/1.1\r\n\r\n");
        drop(copies);
        let mut copied = Vec::new();
        handler.read_to_end(&mut copied).await.unwrap();
        assert_eq!(copied, b"GET /a HTTP/1.1\r\n\r\n");
    }
}
