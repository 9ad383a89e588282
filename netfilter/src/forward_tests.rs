//! The forward rules as the kernel and `nft` read them back, and the kernel carrying a
//! connection through both tables across three fresh network namespaces (root only; skipped
//! with a message otherwise, like crate::nft's tests).
#![allow(clippy::too_many_lines)] // scenarios read top to bottom

use super::*;
use crate::nft::{install_owned_output_redirect, list_chains, list_rules, table_exists};
use crate::testns;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

fn unique_table(tag: &str) -> String {
    format!("tp_fwd_{tag}_{}", std::process::id())
}

/// `nft list table ip <table>` in the calling thread's namespace, when the binary exists.
fn nft_list(table: &str) -> Option<String> {
    match std::process::Command::new("nft")
        .args(["list", "table", "ip", table])
        .output()
    {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => panic!("nft list failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            eprintln!("nft binary not usable ({e}); skipping the cross-check");
            None
        }
    }
}

fn v4(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

#[test]
fn encoding_refuses_bad_forwards_before_the_kernel() {
    let bad = Dnat {
        from: None,
        dst: v4("10.0.0.1:0"),
        to: v4("10.0.0.2:80"),
    };
    assert!(matches!(check_count(&[bad]), Err(NftError::Invalid(_))));
    let ok = Dnat {
        dst: v4("10.0.0.1:80"),
        ..bad
    };
    assert!(check_count(&vec![ok; MAX_FORWARDS]).is_ok());
    assert!(check_count(&vec![ok; MAX_FORWARDS + 1]).is_err());
}

#[test]
fn the_manager_table_is_what_nft_reads_back() {
    let table = unique_table("mgr");
    testns::in_fresh_netns("the_manager_table_is_what_nft_reads_back", move || {
        let owned = install_owned_forwards(&table).unwrap();
        let chains = list_chains(&table).unwrap();
        let hooks: Vec<_> = chains
            .iter()
            .map(|c| (c.name.as_str(), c.hook, c.priority))
            .collect();
        assert_eq!(
            hooks,
            [
                (CHAIN, Some(HOOK_PREROUTING), Some(PRIORITY_DSTNAT)),
                (
                    POSTROUTING_CHAIN,
                    Some(HOOK_POSTROUTING),
                    Some(PRIORITY_SRCNAT)
                ),
            ]
        );
        let fwds = [
            Dnat {
                from: Some("172.17.0.3".parse().unwrap()),
                dst: v4("172.17.0.2:20001"),
                to: v4("10.9.0.5:8080"),
            },
            Dnat {
                from: Some("172.17.0.4".parse().unwrap()),
                dst: v4("172.17.0.2:20002"),
                to: v4("10.9.0.6:5432"),
            },
        ];
        owned.set_forwards(&fwds).unwrap();
        let rules = list_rules(&table).unwrap();
        let pre: Vec<_> = rules.iter().filter(|r| r.chain == CHAIN).collect();
        let post: Vec<_> = rules
            .iter()
            .filter(|r| r.chain == POSTROUTING_CHAIN)
            .collect();
        assert_eq!(
            pre.iter().map(|r| r.dnat).collect::<Vec<_>>(),
            fwds.map(Some)
        );
        assert_eq!(post.len(), 2);
        assert!(
            post.iter().all(|r| r.masquerade && r.dnat.is_none()),
            "{post:?}"
        );
        if let Some(text) = nft_list(&table) {
            assert!(
                text.contains("ip saddr 172.17.0.3 ip daddr 172.17.0.2 tcp dport 20001"),
                "{text}"
            );
            assert!(text.contains("dnat to 10.9.0.5:8080"), "{text}");
            assert!(
                text.contains("ip saddr 172.17.0.4 ip daddr 10.9.0.6 tcp dport 5432 masquerade"),
                "{text}"
            );
        }
        // Replacing drops what is not named again.
        owned.set_forwards(&fwds[1..]).unwrap();
        let rules = list_rules(&table).unwrap();
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert_eq!(rules[0].dnat, Some(fwds[1]));
        owned.set_forwards(&[]).unwrap();
        assert!(list_rules(&table).unwrap().is_empty());
        drop(owned);
        assert!(!table_exists(&table).unwrap());
    });
}

#[test]
fn output_forwards_come_before_the_redirect() {
    let table = unique_table("out");
    testns::in_fresh_netns("output_forwards_come_before_the_redirect", move || {
        testns::link_up("lo").unwrap();
        let lo = crate::interface_index("lo").unwrap();
        let owned = install_owned_output_redirect(&table, lo, 40123).unwrap();
        let fwd = Dnat {
            from: None,
            dst: v4("10.96.0.10:80"),
            to: v4("172.17.0.2:20001"),
        };
        owned.set_output_forwards(lo, 40123, &[fwd]).unwrap();
        let rules = list_rules(&table).unwrap();
        let out: Vec<_> = rules.iter().filter(|r| r.chain == OUTPUT_CHAIN).collect();
        assert_eq!(out.len(), 2, "{rules:?}");
        assert_eq!(out[0].dnat, Some(fwd));
        assert_eq!(out[1].out_redirect, Some((lo, 40123)));
        let post: Vec<_> = rules
            .iter()
            .filter(|r| r.chain == POSTROUTING_CHAIN)
            .collect();
        assert_eq!(post.len(), 1);
        assert!(post[0].masquerade);
        if let Some(text) = nft_list(&table) {
            assert!(text.contains("ip daddr 10.96.0.10 tcp dport 80"), "{text}");
            assert!(text.contains("dnat to 172.17.0.2:20001"), "{text}");
            assert!(
                text.contains("ip daddr 172.17.0.2 tcp dport 20001 masquerade"),
                "{text}"
            );
        }
        owned.set_output_forwards(lo, 40123, &[]).unwrap();
        let rules = list_rules(&table).unwrap();
        assert_eq!(rules.len(), 1, "{rules:?}");
        assert_eq!(rules[0].out_redirect, Some((lo, 40123)));
    });
}

/// Accepts one connection on `l`, answers with the peer's address; returns what it read, the
/// peer and the connection.
fn serve_once(l: &TcpListener) -> (Vec<u8>, SocketAddr, TcpStream) {
    let (mut s, peer) = l.accept().unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    s.write_all(format!("seen {peer}").as_bytes()).unwrap();
    (buf[..n].to_vec(), peer, s)
}

fn ask(to: SocketAddr, msg: &[u8]) -> std::io::Result<(TcpStream, String)> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(msg)?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    Ok((s, String::from_utf8_lossy(&buf[..n]).into_owned()))
}

#[test]
fn the_kernel_carries_a_forwarded_connection_through_both_tables() {
    let daemon_table = unique_table("d");
    let manager_table = unique_table("m");
    testns::in_fresh_netns("the_kernel_carries_a_forwarded_connection", move || {
        // A: the daemon's namespace; B: the manager's; C: the cluster's.
        let ns_a = testns::current_netns().unwrap();
        testns::unshare_net().unwrap();
        let ns_b = testns::current_netns().unwrap();
        testns::unshare_net().unwrap();
        let ns_c = testns::current_netns().unwrap();
        let (a_ip, b_ip, b2_ip, c_ip) = (
            Ipv4Addr::new(10, 214, 1, 1),
            Ipv4Addr::new(10, 214, 1, 2),
            Ipv4Addr::new(10, 214, 2, 1),
            Ipv4Addr::new(10, 214, 2, 2),
        );
        testns::enter(&ns_a).unwrap();
        testns::link_up("lo").unwrap();
        testns::add_veth("tpa0", "tpb0", &ns_b).unwrap();
        testns::add_addr("tpa0", a_ip, 24).unwrap();
        testns::link_up("tpa0").unwrap();
        testns::enter(&ns_b).unwrap();
        testns::link_up("lo").unwrap();
        testns::add_veth("tpb1", "tpc0", &ns_c).unwrap();
        testns::add_addr("tpb0", b_ip, 24).unwrap();
        testns::add_addr("tpb1", b2_ip, 24).unwrap();
        testns::link_up("tpb0").unwrap();
        testns::link_up("tpb1").unwrap();
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
        testns::enter(&ns_c).unwrap();
        testns::link_up("lo").unwrap();
        testns::add_addr("tpc0", c_ip, 24).unwrap();
        testns::link_up("tpc0").unwrap();
        let service = TcpListener::bind((c_ip, 18090)).unwrap();

        // The manager's forward port 24000 goes to the service, for A only.
        testns::enter(&ns_b).unwrap();
        let mgr = install_owned_forwards(&manager_table).unwrap();
        let port = SocketAddrV4::new(b_ip, 24000);
        mgr.set_forwards(&[Dnat {
            from: Some(a_ip),
            dst: port,
            to: SocketAddrV4::new(c_ip, 18090),
        }])
        .unwrap();

        // The daemon: a "cluster address" on its device goes to the manager's forward port;
        // anything else on the device to its own listener.
        testns::enter(&ns_a).unwrap();
        let listener = TcpListener::bind("127.0.0.1:40124").unwrap();
        let dev = crate::interface_index("tpa0").unwrap();
        let out = install_owned_output_redirect(&daemon_table, dev, 40124).unwrap();
        let cluster = SocketAddrV4::new(Ipv4Addr::new(10, 214, 1, 77), 80);
        out.set_output_forwards(
            dev,
            40124,
            &[Dnat {
                from: None,
                dst: cluster,
                to: port,
            }],
        )
        .unwrap();

        let ((read, peer, mut served), (mut first, answer)) = std::thread::scope(|s| {
            let served = s.spawn(|| serve_once(&service));
            let asked = ask(cluster.into(), b"hello").unwrap();
            (served.join().unwrap(), asked)
        });
        assert_eq!(read, b"hello");
        // The service saw the manager's address: the bytes went through it, both ways.
        assert_eq!(peer.ip(), std::net::IpAddr::V4(b2_ip), "{answer}");
        assert!(answer.starts_with(&format!("seen {b2_ip}:")), "{answer}");

        // Another address on the device still reaches the daemon's listener.
        let other = SocketAddr::from((Ipv4Addr::new(10, 214, 1, 78), 80));
        let t = std::thread::spawn(move || ask(other, b"x").map(|(_, a)| a));
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"daemon").unwrap();
        assert_eq!(t.join().unwrap().unwrap(), "daemon");

        // The manager drops the forward: the connection already carried keeps working (its
        // rewrite is in conntrack), a new one is refused at the manager's address.
        testns::enter(&ns_b).unwrap();
        mgr.set_forwards(&[]).unwrap();
        testns::enter(&ns_a).unwrap();
        first.write_all(b"still there").unwrap();
        let mut buf = [0u8; 11];
        served
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        served.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"still there");
        let refused = TcpStream::connect_timeout(&cluster.into(), Duration::from_secs(3))
            .expect_err("a new connection after the forward went");
        assert_eq!(
            refused.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{refused}"
        );
        // Gone with their owners.
        drop(out);
        assert!(!table_exists(&daemon_table).unwrap());
        testns::enter(&ns_b).unwrap();
        drop(mgr);
        assert!(!table_exists(&manager_table).unwrap());
    });
}
