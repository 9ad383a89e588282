//! Property test of the packet → stream layer: whatever arrives from the TUN device —
//! random bytes, truncated headers, bad checksums, huge or garbage TCP options, bad lengths —
//! the layer keeps running, and after each batch a real connection attempt still gets its
//! answer (a RST for a refused target, a SYN-ACK for an accepted one).

use crate::netstack::{run, DialError, Dialer, PacketDevice, Proto, Smoltcp};
use crate::packet::{self, tests::syn_v4};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex};

struct ChannelDevice {
    rx: Mutex<mpsc::Receiver<Vec<u8>>>,
    tx: mpsc::Sender<Vec<u8>>,
}

impl PacketDevice for ChannelDevice {
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let p = self
            .rx
            .lock()
            .await
            .recv()
            .await
            .ok_or(io::ErrorKind::BrokenPipe)?;
        let n = p.len().min(buf.len());
        buf[..n].copy_from_slice(&p[..n]);
        Ok(n)
    }
    async fn send(&self, pkt: &[u8]) -> io::Result<usize> {
        let _ = self.tx.try_send(pkt.to_vec());
        Ok(pkt.len())
    }
}

/// Port 1 is refused; anything else is connected to a local listener.
struct LocalDialer(SocketAddr);

impl Dialer for LocalDialer {
    async fn dial(&self, proto: Proto, dst: SocketAddr) -> Result<TcpStream, DialError> {
        if proto == Proto::Udp || dst.port() == 1 {
            return Err(DialError::Refused("connection refused".into()));
        }
        TcpStream::connect(self.0).await.map_err(DialError::Io)
    }
}

fn malformed() -> impl Strategy<Value = Vec<u8>> {
    let src: SocketAddr = "172.17.0.2:40000".parse().unwrap();
    let dst: SocketAddr = "172.20.0.9:8080".parse().unwrap();
    prop_oneof![
        // Random bytes, sometimes looking like IPv4 or IPv6.
        proptest::collection::vec(any::<u8>(), 0..120),
        (
            proptest::collection::vec(any::<u8>(), 1..80),
            prop_oneof![Just(0x45u8), Just(0x60u8), Just(0x4fu8)]
        )
            .prop_map(|(mut v, first)| {
                v[0] = first;
                v
            }),
        // A valid SYN, truncated.
        (0usize..60).prop_map(move |n| {
            let mut p = syn_v4(src, dst, 1, &[]);
            p.truncate(n);
            p
        }),
        // A valid SYN with one byte changed (bad checksums, lengths, flags, offsets).
        (0usize..40, any::<u8>()).prop_map(move |(i, b)| {
            let mut p = syn_v4(src, dst, 1, &[]);
            p[i] = b;
            p
        }),
        // Huge and garbage TCP options (up to the 40-byte maximum; zero-length options).
        proptest::collection::vec(any::<u8>(), 0..=40).prop_map(move |o| syn_v4(src, dst, 2, &o)),
        // Lengths that lie: total length beyond the packet, UDP length beyond the payload.
        (any::<u16>()).prop_map(move |len| {
            let mut p = syn_v4(src, dst, 3, &[]);
            p[2..4].copy_from_slice(&len.to_be_bytes());
            p
        }),
    ]
}

/// Waits for a packet from the layer that answers `flow` with the given TCP flags.
async fn answer(out: &mut mpsc::Receiver<Vec<u8>>, to: SocketAddr, flags: u8) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Some(p)) = tokio::time::timeout_at(deadline, out.recv()).await {
        if let Some(f) = packet::parse(&p) {
            if f.dst == to && p.get(33).is_some_and(|b| b & flags == flags) {
                return true;
            }
        }
    }
    false
}

#[test]
fn the_packet_layer_survives_malformed_packets() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (in_tx, in_rx) = mpsc::channel(4096);
    let (out_tx, out_rx) = mpsc::channel(4096);
    let out_rx = Mutex::new(out_rx);
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let local = listener.local_addr().unwrap();
    rt.spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            drop(s);
        }
    });
    let dev = Arc::new(ChannelDevice {
        rx: Mutex::new(in_rx),
        tx: out_tx,
    });
    let stack = Smoltcp {
        mtu: 1500,
        tcp_buffer: 16 * 1024,
    };
    let layer = rt.spawn(run(stack, dev, Arc::new(LocalDialer(local)), 1500));
    let port = std::cell::Cell::new(10000u16);
    let mut runner = TestRunner::new(Config {
        cases: std::env::var("TP_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(128),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(malformed(), 1..16), |batch| {
            rt.block_on(async {
                for p in batch {
                    in_tx.send(p).await.unwrap();
                }
                // Still alive: a refused target gets a RST, an accepted one a SYN-ACK.
                let p = port.get();
                port.set(p + 2);
                let refused_src: SocketAddr = format!("172.17.0.2:{p}").parse().unwrap();
                let ok_src: SocketAddr = format!("172.17.0.2:{}", p + 1).parse().unwrap();
                let mut out = out_rx.lock().await;
                in_tx
                    .send(syn_v4(
                        refused_src,
                        "172.20.0.9:1".parse().unwrap(),
                        77,
                        &[],
                    ))
                    .await
                    .unwrap();
                prop_assert!(answer(&mut out, refused_src, 0x04).await, "no RST");
                in_tx
                    .send(syn_v4(
                        ok_src,
                        "172.20.0.9:80".parse().unwrap(),
                        99,
                        &[2, 4, 5, 0xb4],
                    ))
                    .await
                    .unwrap();
                prop_assert!(answer(&mut out, ok_src, 0x12).await, "no SYN-ACK");
                Ok(())
            })
        })
        .unwrap();
    assert!(!layer.is_finished(), "the packet layer stopped");
}
