//! The kernel path in a fresh network namespace (root only; skipped with a message otherwise):
//! connections routed out of a device are redirected to the daemon's listener and dialed with
//! their original destination, refused targets get a RST, connections made before the redirect
//! (and redirected ones after it is removed) keep working, and nothing stays after drop.

use super::*;
use crate::netstack::DialError;
use netfilter::testns;
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Dials what the manager would: port 7000 of any address is our "cluster" echo server at
/// `cluster`; every other port is refused. Remembers what it was asked to dial.
struct FakeManager {
    cluster: SocketAddr,
    asked: Mutex<Vec<SocketAddr>>,
}

impl Dialer for FakeManager {
    async fn dial(&self, proto: Proto, dst: SocketAddr) -> Result<TcpStream, DialError> {
        assert_eq!(proto, Proto::Tcp);
        self.asked.lock().unwrap().push(dst);
        if dst.port() != 7000 {
            return Err(DialError::Refused(format!("{dst}: connection refused")));
        }
        TcpStream::connect(self.cluster)
            .await
            .map_err(DialError::Tunnel)
    }
}

/// Answers every line with `<name>:<line>` until the peer closes.
async fn echo(listener: TcpListener, name: &'static str) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
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

async fn ask(s: &mut TcpStream, what: &str) -> std::io::Result<String> {
    s.write_all(what.as_bytes()).await?;
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn redirects_routed_tcp_resets_refused_and_keeps_established_connections() {
    testns::in_fresh_netns("kernel_tcp", || {
        // Namespace A: the daemon's (and handler's); namespace B: "the cluster network".
        let ns_a = testns::current_netns().unwrap();
        testns::unshare_net().unwrap();
        let ns_b = testns::current_netns().unwrap();
        testns::enter(&ns_a).unwrap();
        testns::link_up("lo").unwrap();
        testns::add_veth("tpk0", "tpk1", &ns_b).unwrap();
        testns::add_addr("tpk0", Ipv4Addr::new(10, 213, 9, 1), 24).unwrap();
        testns::link_up("tpk0").unwrap();
        testns::enter(&ns_b).unwrap();
        testns::add_addr("tpk1", Ipv4Addr::new(10, 213, 9, 2), 24).unwrap();
        testns::link_up("tpk1").unwrap();
        testns::link_up("lo").unwrap();
        let remote = std::net::TcpListener::bind("10.213.9.2:7000").unwrap();
        remote.set_nonblocking(true).unwrap();
        testns::enter(&ns_a).unwrap();

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::spawn(echo(TcpListener::from_std(remote).unwrap(), "direct"));
            let cluster = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let fake = Arc::new(FakeManager {
                cluster: cluster.local_addr().unwrap(),
                asked: Mutex::new(Vec::new()),
            });
            tokio::spawn(echo(cluster, "tunnel"));
            let target: SocketAddr = "10.213.9.2:7000".parse().unwrap();

            // Before the redirect: straight to namespace B.
            let mut before = TcpStream::connect(target).await.unwrap();
            assert_eq!(ask(&mut before, "a").await.unwrap(), "direct:a");

            let kernel = start("tpk0", fake.clone(), Default::default())
                .await
                .unwrap();
            assert!(netfilter::nft::table_exists(TABLE).unwrap());
            let rules = netfilter::nft::list_rules(TABLE).unwrap();
            assert_eq!(rules.len(), 1, "{rules:?}");
            let oif = netfilter::interface_index("tpk0").unwrap();
            assert_eq!(rules[0].out_redirect, Some((oif, kernel.port())));

            // A new connection is carried by the dialer, which saw the original destination.
            let mut redirected = TcpStream::connect(target).await.unwrap();
            assert_eq!(ask(&mut redirected, "b").await.unwrap(), "tunnel:b");
            assert_eq!(*fake.asked.lock().unwrap(), vec![target]);
            // The connection made before the redirect still goes where it went.
            assert_eq!(ask(&mut before, "c").await.unwrap(), "direct:c");

            // A refused target: the connection is reset, not left hanging.
            let mut refused = TcpStream::connect("10.213.9.2:7001").await.unwrap();
            let r = tokio::time::timeout(Duration::from_secs(5), ask(&mut refused, "d")).await;
            let e = r.expect("an answer within 5 s").expect_err("reset");
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ),
                "{e:?}"
            );

            // Loopback traffic is not redirected.
            let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let local_addr = local.local_addr().unwrap();
            tokio::spawn(echo(local, "local"));
            let mut l = TcpStream::connect(local_addr).await.unwrap();
            assert_eq!(ask(&mut l, "e").await.unwrap(), "local:e");

            assert_eq!(ask(&mut redirected, "f").await.unwrap(), "tunnel:f");
            assert_eq!(ask(&mut before, "g").await.unwrap(), "direct:g");

            // Without the daemon's path (it exits): its table is gone and new connections go
            // direct again. (The connections it carried end with it: the kernel stops
            // translating them once no nat chain is left in the namespace.)
            drop(kernel);
            assert!(!netfilter::nft::table_exists(TABLE).unwrap());
            let mut after = TcpStream::connect(target).await.unwrap();
            assert_eq!(ask(&mut after, "h").await.unwrap(), "direct:h");
            assert_eq!(ask(&mut before, "i").await.unwrap(), "direct:i");
            assert_eq!(fake.asked.lock().unwrap().len(), 2);
        });
    });
}
