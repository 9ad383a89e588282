//! The daemon's in-kernel forwards in a fresh network namespace (root only; skipped with a
//! message otherwise): after a destination carried a connection through the dialer, new
//! connections to it go where the forward says, without the listener; when the forward's
//! connection ends the rule goes and new connections take the listener again, while the ones
//! already forwarded keep their path.

use crate::kernel_tcp::start;
use crate::netstack::{DialError, Dialer, Proto};
use netfilter::testns;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Dials every TCP target to `tunnel`; grants one forward, to `forward_to`, whose connection the
/// test ends by dropping the manager's side from `held`.
struct FakeManager {
    tunnel: SocketAddr,
    control: SocketAddr,
    forward_to: SocketAddrV4,
    dialed: Mutex<Vec<SocketAddr>>,
    asked: Mutex<Vec<SocketAddrV4>>,
    held: tokio::sync::Mutex<Option<TcpListener>>,
    manager_side: Mutex<Vec<TcpStream>>,
}

impl Dialer for FakeManager {
    async fn dial(&self, proto: Proto, dst: SocketAddr) -> Result<TcpStream, DialError> {
        assert_eq!(proto, Proto::Tcp);
        self.dialed.lock().unwrap().push(dst);
        TcpStream::connect(self.tunnel)
            .await
            .map_err(DialError::Tunnel)
    }

    async fn forward(&self, dst: SocketAddrV4) -> Result<crate::kernel_fwd::Held, DialError> {
        self.asked.lock().unwrap().push(dst);
        let Some(l) = self.held.lock().await.take() else {
            return Err(DialError::Refused("one forward only".into()));
        };
        let conn = TcpStream::connect(self.control)
            .await
            .map_err(DialError::Tunnel)?;
        let (manager_side, _) = l.accept().await.map_err(DialError::Tunnel)?;
        self.manager_side.lock().unwrap().push(manager_side);
        Ok((self.forward_to, conn))
    }
}

/// Answers every read with `<name>:<what was read>`.
async fn echo(listener: TcpListener, name: &'static str) {
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = [0u8; 256];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let reply = format!("{name}:{}", String::from_utf8_lossy(&buf[..n]));
                if s.write_all(reply.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn ask(s: &mut TcpStream, what: &str) -> String {
    s.write_all(what.as_bytes()).await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Waits until the table holds `n` forwards (and `active` says so).
async fn wait_forwards(n: usize, active: &AtomicU32) {
    for _ in 0..200 {
        let rules = netfilter::nft::list_rules(crate::kernel_tcp::TABLE).unwrap();
        let fwds = rules.iter().filter(|r| r.dnat.is_some()).count();
        if fwds == n && active.load(Ordering::Relaxed) as usize == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the table never held {n} forwards: {:?}",
        netfilter::nft::list_rules(crate::kernel_tcp::TABLE)
    );
}

#[test]
fn a_forwarded_destination_skips_the_listener_until_the_forward_ends() {
    testns::in_fresh_netns("kernel_fwd", || {
        let ns_a = testns::current_netns().unwrap();
        testns::unshare_net().unwrap();
        let ns_b = testns::current_netns().unwrap();
        testns::enter(&ns_a).unwrap();
        testns::link_up("lo").unwrap();
        testns::add_veth("tpf0", "tpf1", &ns_b).unwrap();
        testns::add_addr("tpf0", Ipv4Addr::new(10, 213, 8, 1), 24).unwrap();
        testns::link_up("tpf0").unwrap();
        testns::enter(&ns_b).unwrap();
        testns::link_up("lo").unwrap();
        testns::add_addr("tpf1", Ipv4Addr::new(10, 213, 8, 2), 24).unwrap();
        testns::link_up("tpf1").unwrap();
        // The manager's forward port, on the other side of the device.
        let forwarded = std::net::TcpListener::bind("10.213.8.2:24000").unwrap();
        forwarded.set_nonblocking(true).unwrap();
        testns::enter(&ns_a).unwrap();

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::spawn(echo(TcpListener::from_std(forwarded).unwrap(), "kernel"));
            let tunnel = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let control = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let fake = Arc::new(FakeManager {
                tunnel: tunnel.local_addr().unwrap(),
                control: control.local_addr().unwrap(),
                forward_to: "10.213.8.2:24000".parse().unwrap(),
                dialed: Mutex::default(),
                asked: Mutex::default(),
                held: tokio::sync::Mutex::new(Some(control)),
                manager_side: Mutex::default(),
            });
            tokio::spawn(echo(tunnel, "tunnel"));
            let active = Arc::new(AtomicU32::new(0));
            let _kernel = start("tpf0", fake.clone(), active.clone()).await.unwrap();
            let target: SocketAddr = "10.213.8.77:7000".parse().unwrap();

            // The first connection goes through the dialer, which then asks for a forward.
            let mut first = TcpStream::connect(target).await.unwrap();
            assert_eq!(ask(&mut first, "a").await, "tunnel:a");
            wait_forwards(1, &active).await;
            assert_eq!(*fake.asked.lock().unwrap(), vec![target_v4(target)]);

            // The next one is the kernel's: the dialer never sees it.
            let mut second = TcpStream::connect(target).await.unwrap();
            assert_eq!(ask(&mut second, "b").await, "kernel:b");
            assert_eq!(fake.dialed.lock().unwrap().len(), 1);
            assert_eq!(ask(&mut first, "c").await, "tunnel:c");

            // The manager ends the forward: the rule goes, new connections take the listener,
            // the forwarded one keeps its path.
            fake.manager_side.lock().unwrap().clear();
            wait_forwards(0, &active).await;
            let mut third = TcpStream::connect(target).await.unwrap();
            assert_eq!(ask(&mut third, "d").await, "tunnel:d");
            assert_eq!(fake.dialed.lock().unwrap().len(), 2);
            assert_eq!(ask(&mut second, "e").await, "kernel:e");

            // Asked again after the third connection, refused, and never asked a third time.
            for _ in 0..100 {
                if fake.asked.lock().unwrap().len() == 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut fourth = TcpStream::connect(target).await.unwrap();
            assert_eq!(ask(&mut fourth, "f").await, "tunnel:f");
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(fake.asked.lock().unwrap().len(), 2);
            assert_eq!(active.load(Ordering::Relaxed), 0);
        });
    });
}

fn target_v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => unreachable!("an IPv4 target"),
    }
}
