//! The packet → stream layer: IP packets from the TUN device go through a userspace TCP/UDP stack
//! (behind the small [`UserStack`] trait; netstack-smoltcp today) and come out as TCP streams and
//! UDP datagrams, which a [`Dialer`] carries into the cluster.
//!
//! A TCP SYN is held back until the cluster side has been dialed: only when the target accepted
//! does the SYN enter the stack (which then completes the handshake), and when it refused or was
//! unreachable the handler gets a RST at once — a real "connection refused", never a hang.
//! Retransmitted SYNs (same initial sequence number) are dropped while the dial is under way.
//! Malformed packets are dropped before they reach the stack. UDP: one flow per
//! (source, destination), a bounded queue each, closed after an idle period.

use crate::packet::{self, Flow, PROTO_TCP};
use futures::{Sink, SinkExt, Stream, StreamExt};
use protocol::tunnel::{read_datagram, write_datagram};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// A UDP datagram: (payload, source, destination).
pub type Datagram = (Vec<u8>, SocketAddr, SocketAddr);
type BoxSink<T> = Pin<Box<dyn Sink<T, Error = io::Error> + Send>>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = T> + Send>>;

/// The ends of a running userspace stack.
pub struct Parts<T> {
    /// IP packets into the stack.
    pub packets_in: BoxSink<Vec<u8>>,
    /// IP packets the stack emits.
    pub packets_out: BoxStream<io::Result<Vec<u8>>>,
    /// Accepted TCP connections: (stream, source, destination).
    pub tcp: BoxStream<(T, SocketAddr, SocketAddr)>,
    pub udp_in: BoxStream<Datagram>,
    /// Datagrams to send: (payload, source, destination).
    pub udp_out: BoxSink<Datagram>,
    /// Work the stack needs driven, if any.
    pub runner: Option<StackWork>,
}

/// A userspace TCP/UDP stack.
pub trait UserStack {
    type Tcp: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn build(self) -> io::Result<Parts<Self::Tcp>>;
}

/// netstack-smoltcp.
#[derive(Debug, Clone, Copy)]
pub struct Smoltcp {
    pub mtu: usize,
    /// Per-connection receive and send buffer (bytes): the TCP window, and the most a
    /// connection holds in memory each way.
    pub tcp_buffer: u32,
}

impl UserStack for Smoltcp {
    type Tcp = netstack_smoltcp::TcpStream;
    fn build(self) -> io::Result<Parts<Self::Tcp>> {
        let (stack, runner, udp, tcp) = netstack_smoltcp::StackBuilder::default()
            .stack_buffer_size(1024)
            .tcp_buffer_size(1024)
            .udp_buffer_size(1024)
            .tcp_recv_buffer_size(self.tcp_buffer)
            .tcp_send_buffer_size(self.tcp_buffer)
            .enable_tcp(true)
            .enable_udp(true)
            .enable_icmp(false)
            .mtu(self.mtu)
            .build()?;
        let (udp, tcp) = match (udp, tcp) {
            (Some(u), Some(t)) => (u, t),
            _ => return Err(io::Error::other("stack built without TCP or UDP")),
        };
        let (sink, stream) = stack.split();
        let (udp_in, udp_out) = udp.split();
        Ok(Parts {
            packets_in: Box::pin(sink),
            packets_out: Box::pin(stream),
            tcp: Box::pin(tcp),
            udp_in: Box::pin(udp_in),
            udp_out: Box::pin(udp_out),
            runner: runner.map(|r| Box::pin(r) as Pin<Box<dyn Future<Output = _> + Send>>),
        })
    }
}

/// Where IP packets come from and go to (the TUN device; channels in tests).
pub trait PacketDevice: Send + Sync + 'static {
    fn recv<'a>(&'a self, buf: &'a mut [u8])
        -> impl Future<Output = io::Result<usize>> + Send + 'a;
    fn send<'a>(&'a self, pkt: &'a [u8]) -> impl Future<Output = io::Result<usize>> + Send + 'a;
}

impl PacketDevice for tun_rs::AsyncDevice {
    fn recv<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        tun_rs::AsyncDevice::recv(self, buf)
    }
    fn send<'a>(&'a self, pkt: &'a [u8]) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        tun_rs::AsyncDevice::send(self, pkt)
    }
}

/// What kind of cluster-side connection to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// Why the cluster side of a connection or flow could not be opened, or a flow ended.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// Reaching the manager's tunnel listener or writing the header.
    #[error("tunnel: {0}")]
    Tunnel(io::Error),
    /// Reading the manager's answer.
    #[error("tunnel: {0}")]
    Answer(protocol::tunnel::TunnelError),
    /// The manager's answer: why the target cannot be reached.
    #[error("{0}")]
    Refused(String),
    /// Relaying a flow's bytes.
    #[error("{0}")]
    Io(io::Error),
}

/// Opens the cluster side of a connection or flow: a stream that, for TCP, carries the bytes,
/// and for UDP, framed datagrams. Fails (with the reason) when the target cannot be reached.
pub trait Dialer: Send + Sync + 'static {
    fn dial(
        &self,
        proto: Proto,
        dst: SocketAddr,
    ) -> impl Future<Output = Result<TcpStream, DialError>> + Send;

    /// Asks for an in-kernel forward to `dst` (crate::kernel_fwd): the address new connections
    /// to `dst` may be rewritten to, and the connection the forward lasts as long as. None by
    /// default.
    fn forward(
        &self,
        dst: std::net::SocketAddrV4,
    ) -> impl Future<Output = Result<crate::kernel_fwd::Held, DialError>> + Send {
        async move {
            Err(DialError::Refused(format!(
                "no in-kernel forward to {dst} here"
            )))
        }
    }
}

/// A UDP flow with nothing moving either way for this long is closed.
pub const UDP_IDLE: Duration = Duration::from_secs(60);
/// Datagrams queued per UDP flow while its cluster side is being opened or is slow; more are
/// dropped (as a congested network would).
const UDP_QUEUE: usize = 64;
/// Most SYNs remembered for retransmission detection.
const MAX_RECENT: usize = 8192;
/// Relay buffer per direction of a TCP connection.
const RELAY_BUF: usize = 64 * 1024;

type FlowKey = (SocketAddr, SocketAddr);

type StackWork = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;
/// Cluster sides dialed for SYNs, waiting for the stack to accept the connection.
type Ready = Arc<Mutex<HashMap<FlowKey, (TcpStream, Instant)>>>;

/// Runs the packet → stream layer until the device fails.
pub async fn run<S: UserStack, D: PacketDevice, X: Dialer>(
    stack: S,
    dev: Arc<D>,
    dialer: Arc<X>,
    mtu: usize,
) -> io::Result<()> {
    let Parts {
        packets_in,
        packets_out,
        tcp,
        udp_in,
        udp_out,
        runner,
    } = stack.build()?;
    let runner = drive_stack(runner)?;
    let ready: Ready = Default::default();
    let (inject_tx, inject_rx) = mpsc::channel::<Vec<u8>>(256);
    tokio::select! {
        r = runner => r,
        r = packets_to_device(packets_out, dev.clone()) => r,
        r = accept_tcp(tcp, ready.clone()) => r,
        r = packets_from_device(dev, packets_in, (inject_tx, inject_rx), dialer.clone(), ready, mtu) => r,
        r = udp_flows(udp_in, udp_out, dialer) => r,
    }
}

/// The stack's own work, inline or (`TP_STACK_THREAD=1`) on a thread of its own; resolves when
/// it ends.
fn drive_stack(runner: Option<StackWork>) -> io::Result<impl Future<Output = io::Result<()>>> {
    // `TP_STACK_THREAD=1` runs the stack's own work (TCP state machines, segmentation) on a
    // thread of its own, overlapping with the TUN I/O and relays of this (single-threaded)
    // runtime. Off by default: on this 2-core machine the measurements were inconclusive
    // (1.6-1.8 Gbit/s inline vs 0.6-3.2 Gbit/s on its own thread; the stack's poll loop yields
    // rather than sleeps under load, which a thread of its own turns into a busy core).
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<io::Result<()>>();
    let own_thread = std::env::var(protocol::ports::env::STACK_THREAD).as_deref() == Ok("1");
    let mut inline = None;
    match runner {
        Some(r) if own_thread => {
            std::thread::Builder::new()
                .name("tp-netstack".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    let res = match rt {
                        Ok(rt) => rt.block_on(r),
                        Err(e) => Err(e),
                    };
                    let _ = done_tx.send(res);
                })?;
        }
        r => inline = r,
    }
    Ok(async move {
        if let Some(r) = inline {
            return r.await;
        }
        match done_rx.await {
            Ok(r) => r,
            Err(_) => std::future::pending().await,
        }
    })
}

/// Writes the packets the stack emits to the device.
async fn packets_to_device<D: PacketDevice>(
    mut packets_out: BoxStream<io::Result<Vec<u8>>>,
    dev: Arc<D>,
) -> io::Result<()> {
    while let Some(p) = packets_out.next().await {
        match p {
            Ok(p) => {
                if let Err(e) = dev.send(&p).await {
                    tracing::debug!("TUN write: {e}");
                }
            }
            Err(e) => tracing::debug!("stack output: {e}"),
        }
    }
    Ok(())
}

/// Relays each connection the stack accepts to the cluster side dialed for its SYN.
async fn accept_tcp<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    mut tcp: BoxStream<(T, SocketAddr, SocketAddr)>,
    ready: Ready,
) -> io::Result<()> {
    while let Some((s, src, dst)) = tcp.next().await {
        let up = ready.lock().unwrap().remove(&(src, dst));
        match up {
            Some((up, _)) => {
                tokio::spawn(relay_tcp(s, up));
            }
            None => tracing::debug!(%src, %dst, "stack accepted a connection nobody dialed"),
        }
    }
    Ok(())
}

/// Reads packets from the device: a new TCP connection's SYN waits until its cluster side is
/// dialed ([`open_tcp`] injects it then), everything else goes straight into the stack.
async fn packets_from_device<D: PacketDevice, X: Dialer>(
    dev: Arc<D>,
    mut packets_in: BoxSink<Vec<u8>>,
    (inject_tx, mut inject_rx): (mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>),
    dialer: Arc<X>,
    ready: Ready,
    mtu: usize,
) -> io::Result<()> {
    let mut buf = vec![0u8; mtu.max(1500) + 64];
    let mut recent: HashMap<FlowKey, (u32, Instant)> = HashMap::new();
    loop {
        tokio::select! {
            n = dev.recv(&mut buf) => {
                let n = n?;
                let pkt = &buf[..n];
                match packet::parse(pkt) {
                    None => continue,
                    Some(f) if f.proto == PROTO_TCP && f.syn => {
                        let key = (f.src, f.dst);
                        if recent.get(&key).is_some_and(|(isn, _)| *isn == f.seq) {
                            continue; // a retransmitted SYN
                        }
                        if recent.len() >= MAX_RECENT {
                            recent.retain(|_, (_, t)| t.elapsed() < Duration::from_secs(30));
                            ready.lock().unwrap().retain(|_, (_, t)| t.elapsed() < Duration::from_secs(30));
                        }
                        recent.insert(key, (f.seq, Instant::now()));
                        tokio::spawn(open_tcp(f, pkt.to_vec(), dialer.clone(), ready.clone(), inject_tx.clone(), dev.clone()));
                    }
                    Some(_) => packets_in.send(pkt.to_vec()).await?,
                }
            }
            Some(p) = inject_rx.recv() => packets_in.send(p).await?,
        }
    }
}

/// Dials the cluster side of a new TCP connection, then lets its SYN into the stack — or
/// answers the SYN with a RST.
async fn open_tcp<D: PacketDevice, X: Dialer>(
    f: Flow,
    syn: Vec<u8>,
    dialer: Arc<X>,
    ready: Ready,
    inject: mpsc::Sender<Vec<u8>>,
    dev: Arc<D>,
) {
    match dialer.dial(Proto::Tcp, f.dst).await {
        Ok(up) => {
            ready
                .lock()
                .unwrap()
                .insert((f.src, f.dst), (up, Instant::now()));
            let _ = inject.send(syn).await;
        }
        Err(e) => {
            tracing::debug!(src = %f.src, dst = %f.dst, "refusing connection: {e}");
            if let Some(rst) = packet::rst_for_syn(&f) {
                let _ = dev.send(&rst).await;
            }
        }
    }
}

async fn relay_tcp<T: AsyncRead + AsyncWrite + Unpin>(mut s: T, mut up: TcpStream) {
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut s, &mut up, RELAY_BUF, RELAY_BUF).await;
}

async fn udp_flows<X: Dialer>(
    mut udp_in: BoxStream<Datagram>,
    mut udp_out: BoxSink<Datagram>,
    dialer: Arc<X>,
) -> io::Result<()> {
    let (out_tx, mut out_rx) = mpsc::channel::<Datagram>(1024);
    let writer = async move {
        while let Some(d) = out_rx.recv().await {
            if let Err(e) = udp_out.send(d).await {
                tracing::debug!("UDP to stack: {e}");
            }
        }
        Ok::<(), io::Error>(())
    };
    let flows: Arc<Mutex<HashMap<FlowKey, mpsc::Sender<Vec<u8>>>>> = Default::default();
    let reader = async move {
        while let Some((data, src, dst)) = udp_in.next().await {
            let key = (src, dst);
            let mut data = Some(data);
            if let Some(tx) = flows.lock().unwrap().get(&key) {
                match tx.try_send(data.take().unwrap_or_default()) {
                    Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => continue,
                    Err(mpsc::error::TrySendError::Closed(d)) => data = Some(d),
                }
            }
            let (tx, rx) = mpsc::channel(UDP_QUEUE);
            let _ = tx.try_send(data.unwrap_or_default());
            flows.lock().unwrap().insert(key, tx);
            let flows = flows.clone();
            let dialer = dialer.clone();
            let out = out_tx.clone();
            tokio::spawn(async move {
                if let Err(e) = udp_flow(dialer.as_ref(), src, dst, rx, out).await {
                    tracing::debug!(%src, %dst, "UDP flow ended: {e}");
                }
                flows.lock().unwrap().remove(&key);
            });
        }
        Ok::<(), io::Error>(())
    };
    tokio::select! {
        r = writer => r,
        r = reader => r,
    }
}

async fn udp_flow<X: Dialer>(
    dialer: &X,
    src: SocketAddr,
    dst: SocketAddr,
    mut rx: mpsc::Receiver<Vec<u8>>,
    out: mpsc::Sender<Datagram>,
) -> Result<(), DialError> {
    let up = dialer.dial(Proto::Udp, dst).await?;
    let (mut r, mut w) = up.into_split();
    let start = tokio::time::Instant::now();
    let last = std::sync::atomic::AtomicU64::new(0);
    let touch = || {
        last.store(
            start.elapsed().as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    };
    let send = async {
        while let Some(d) = rx.recv().await {
            touch();
            write_datagram(&mut w, &d).await?;
        }
        Ok::<(), io::Error>(())
    };
    let recv = async {
        let mut buf = Vec::with_capacity(2048);
        while read_datagram(&mut r, &mut buf).await?.is_some() {
            touch();
            if out.send((buf.clone(), dst, src)).await.is_err() {
                break;
            }
        }
        Ok::<(), io::Error>(())
    };
    let watchdog = async {
        loop {
            tokio::time::sleep(UDP_IDLE / 4).await;
            let now = start.elapsed().as_millis() as u64;
            if now - last.load(std::sync::atomic::Ordering::Relaxed) >= UDP_IDLE.as_millis() as u64
            {
                return;
            }
        }
    };
    tokio::select! {
        r = send => r.map_err(DialError::Io),
        r = recv => r.map_err(DialError::Io),
        _ = watchdog => Ok(()),
    }
}
