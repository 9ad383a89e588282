//! Tests of the nf_tables encoding (no privileges needed) and of real installs in fresh network
//! namespaces (root only; skipped with a message otherwise).
#![allow(clippy::too_many_lines)] // scenarios read top to bottom

use super::*;
use crate::netlink::{messages, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST};
use crate::testns;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// The `NFTA_RULE_EXPRESSIONS` attribute that `nft` 1.0.6 sends for
/// `tcp dport 18080 redirect to :18081` (captured with `nft --debug=mnl`).
const NFT_GOLDEN_EXPRS: &str = concat!(
    "0401048024000180090001006d6574610000000014000280080002000000001008000100000000012c00018008000100",
    "636d700020000280080001000000000108000200000000000c0003800500010006000000340001800c0001007061796c",
    "6f6164002400028008000100000000010800020000000002080003000000000208000400000000022c00018008000100",
    "636d700020000280080001000000000108000200000000000c0003800600010046a000002c0001800e000100696d6d65",
    "64696174650000001800028008000100000000010c0002800600010046a10000240001800a0001007265646972000000",
    "1400028008000100000000010800030000000002",
);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn rule_expressions_match_what_nft_sends() {
    let mut b = Builder::new();
    let e = b.begin_nest(NFTA_RULE_EXPRESSIONS);
    redirect_exprs(&mut b, 18080, 18081);
    b.end_nest(e);
    assert_eq!(hex(&b.finish()), NFT_GOLDEN_EXPRS);
}

#[test]
fn install_batch_layout() {
    let batch = encode_install("tp_t", &[(8080, 40001), (9090, 40002)], 500, false);
    let msgs: Vec<_> = messages(&batch.bytes)
        .collect::<Result<_, _>>()
        .expect("well-formed");
    let types: Vec<u16> = msgs.iter().map(|m| m.ty).collect();
    let nft = |t| (10u16 << 8) | t;
    assert_eq!(
        types,
        [
            0x10,
            nft(NFT_MSG_NEWTABLE),
            nft(NFT_MSG_DELTABLE),
            nft(NFT_MSG_NEWTABLE),
            nft(NFT_MSG_NEWCHAIN),
            nft(NFT_MSG_NEWRULE),
            nft(NFT_MSG_NEWRULE),
            0x11
        ]
    );
    // consecutive sequence numbers, batch markers address the nf_tables subsystem
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m.seq, 500 + i as u32);
    }
    for m in [&msgs[0], &msgs[7]] {
        assert_eq!(m.payload, [0, 0, 0, 10], "AF_UNSPEC, v0, res_id=htons(10)");
        assert_eq!(m.flags, NLM_F_REQUEST);
    }
    // every nf_tables message: family ip, acknowledged
    for m in &msgs[1..7] {
        assert_eq!(&m.payload[..4], &[2, 0, 0, 0]);
        assert_eq!(
            m.flags & (NLM_F_REQUEST | NLM_F_ACK),
            NLM_F_REQUEST | NLM_F_ACK
        );
    }
    assert_eq!(batch.ops.len(), 6);
    assert_eq!(batch.ops[0].seq, 501);
    assert_eq!(msgs[1].flags & NLM_F_CREATE, NLM_F_CREATE);
    assert_eq!(
        msgs[5].flags & (NLM_F_CREATE | NLM_F_APPEND),
        NLM_F_CREATE | NLM_F_APPEND
    );
    for m in &msgs[1..4] {
        let a = &m.payload[4..];
        assert_eq!(find_attr(a, NFTA_TABLE_NAME), Some(&b"tp_t\0"[..]));
    }

    // the chain: nat, prerouting, dstnat, policy accept
    let chain = &msgs[4].payload[4..];
    assert_eq!(
        find_attr(chain, NFTA_CHAIN_TABLE).map(attr_string),
        Some("tp_t".into())
    );
    assert_eq!(
        find_attr(chain, NFTA_CHAIN_NAME).map(attr_string),
        Some(CHAIN.into())
    );
    assert_eq!(
        find_attr(chain, NFTA_CHAIN_TYPE).map(attr_string),
        Some("nat".into())
    );
    assert_eq!(
        find_attr(chain, NFTA_CHAIN_POLICY).and_then(be32),
        Some(NF_ACCEPT)
    );
    let hook = find_attr(chain, NFTA_CHAIN_HOOK).expect("hook");
    assert_eq!(find_attr(hook, NFTA_HOOK_HOOKNUM).and_then(be32), Some(0));
    assert_eq!(
        find_attr(hook, NFTA_HOOK_PRIORITY).and_then(be32),
        Some((-100i32) as u32)
    );

    // rules decode back into what was asked, in order
    let rules: Vec<_> = msgs[5..7]
        .iter()
        .map(|m| decode_rule(&m.payload[4..]))
        .collect();
    assert_eq!(rules[0].chain, CHAIN);
    assert_eq!(
        rules[0].exprs,
        ["meta", "cmp", "payload", "cmp", "immediate", "redir"]
    );
    assert_eq!(rules[0].redirect, Some((8080, 40001)));
    assert_eq!(rules[1].redirect, Some((9090, 40002)));
    assert_eq!(
        rules[1].to_string(),
        "prerouting: tcp dport 9090 redirect to :40002"
    );
}

#[test]
fn delete_and_get_layout() {
    let batch = encode_delete("tp_t", 7);
    let msgs: Vec<_> = messages(&batch.bytes).collect::<Result<_, _>>().unwrap();
    assert_eq!(
        msgs.iter().map(|m| m.ty).collect::<Vec<_>>(),
        [0x10, (10 << 8) | NFT_MSG_DELTABLE, 0x11]
    );
    assert_eq!(batch.ops.len(), 1);
    assert_eq!(batch.ops[0].what, "delete table ip tp_t");

    let get = encode_get(NFT_MSG_GETRULE, NLM_F_DUMP, 9, NFTA_RULE_TABLE, "tp_t");
    let m = messages(&get).next().unwrap().unwrap();
    assert_eq!(m.ty, (10 << 8) | NFT_MSG_GETRULE);
    assert_eq!(m.flags, NLM_F_REQUEST | NLM_F_DUMP);
    assert_eq!(
        find_attr(&m.payload[4..], NFTA_RULE_TABLE).map(attr_string),
        Some("tp_t".into())
    );
}

#[test]
fn foreign_rules_are_not_mistaken_for_redirects() {
    // same shape but matching UDP
    let mut b = Builder::new();
    b.attr_str(NFTA_RULE_CHAIN, "c");
    let e = b.begin_nest(NFTA_RULE_EXPRESSIONS);
    expr(&mut b, "meta", |b| {
        b.attr_be32(NFTA_META_KEY, NFT_META_L4PROTO);
        b.attr_be32(NFTA_META_DREG, NFT_REG_1);
    });
    expr(&mut b, "cmp", |b| {
        b.attr_be32(NFTA_CMP_SREG, NFT_REG_1);
        b.attr_be32(NFTA_CMP_OP, NFT_CMP_EQ);
        data_value(b, NFTA_CMP_DATA, &[17]);
    });
    b.end_nest(e);
    let r = decode_rule(&b.finish());
    assert_eq!(r.exprs, ["meta", "cmp"]);
    assert_eq!(r.redirect, None);
    assert_eq!(r.to_string(), "c: meta cmp");
}

#[test]
fn bad_input_is_refused_before_any_syscall() {
    for bad in ["", "a\0b", &"x".repeat(256)] {
        assert!(matches!(
            install_redirects(bad, &[(1, 2)]),
            Err(NftError::Invalid(_))
        ));
        assert!(matches!(delete_table(bad), Err(NftError::Invalid(_))));
        assert!(matches!(table_exists(bad), Err(NftError::Invalid(_))));
    }
    let e = install_redirects("t", &[(0, 2)]).unwrap_err();
    assert!(e.to_string().contains("ports must be 1-65535"), "{e}");
}

#[test]
fn kernel_errors_are_explained() {
    let e = map_exchange(
        ExchangeError::Nack {
            seq: 3,
            errno: libc::EPERM,
        },
        |_| "create table ip x".into(),
    );
    assert_eq!(e.errno(), Some(libc::EPERM));
    let s = e.to_string();
    assert!(
        s.contains("needs the NET_ADMIN capability") && s.contains("create table ip x"),
        "{s}"
    );
    let e = map_exchange(
        ExchangeError::Nack {
            seq: 3,
            errno: libc::ENOENT,
        },
        |_| "add rule".into(),
    );
    assert_eq!(
        e.to_string(),
        "nf_tables: add rule: No such file or directory (os error 2)"
    );
}

fn unique_table(tag: &str) -> String {
    format!("tp_test_{tag}_{}", std::process::id())
}

/// `nft list table` as an independent cross-check, when the binary exists. Runs in the calling
/// thread's network namespace (a child process inherits it).
fn nft_list(table: &str) -> Option<String> {
    let out = std::process::Command::new("nft")
        .args(["list", "table", "ip", table])
        .output();
    match out {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => panic!(
            "nft list table failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            eprintln!("nft binary not usable ({e}); skipping the cross-check");
            None
        }
    }
}

#[test]
fn installs_lists_replaces_and_deletes_in_a_fresh_netns() {
    let table = unique_table("rules");
    let t = table.clone();
    let ran = testns::in_fresh_netns("installs_lists_replaces_and_deletes", move || {
        assert!(!table_exists(&t).unwrap());
        assert!(list_rules(&t).unwrap().is_empty());
        assert!(!delete_table(&t).unwrap(), "nothing to delete yet");

        install_redirects(&t, &[(18080, 18081), (18443, 18444)]).unwrap();
        assert!(table_exists(&t).unwrap());
        let rules = list_rules(&t).unwrap();
        assert_eq!(
            rules.iter().map(|r| r.redirect).collect::<Vec<_>>(),
            [Some((18080, 18081)), Some((18443, 18444))]
        );
        assert!(rules.iter().all(|r| r.chain == CHAIN && r.handle > 0));
        let chains = list_chains(&t).unwrap();
        assert_eq!(
            chains,
            [ChainInfo {
                name: CHAIN.into(),
                hook: Some(HOOK_PREROUTING),
                priority: Some(PRIORITY_DSTNAT),
                chain_type: Some("nat".into()),
            }]
        );
        assert!(chains.iter().all(|c| c.hook != Some(HOOK_OUTPUT)));

        // installing again replaces the old content atomically
        install_redirects(&t, &[(18080, 18082)]).unwrap();
        let rules = list_rules(&t).unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].redirect, Some((18080, 18082)));
        assert_eq!(list_chains(&t).unwrap().len(), 1);
        if let Some(listing) = nft_list(&t) {
            assert!(
                listing.contains("type nat hook prerouting priority dstnat; policy accept;"),
                "{listing}"
            );
            assert!(
                listing.contains("tcp dport 18080 redirect to :18082"),
                "{listing}"
            );
            assert!(!listing.contains("18081"), "{listing}");
        }

        assert!(delete_table(&t).unwrap());
        assert!(!table_exists(&t).unwrap());
        assert!(list_rules(&t).unwrap().is_empty());
        assert!(!delete_table(&t).unwrap());
    });
    if ran.is_some() {
        // the namespace was private: the host never saw the table
        assert!(!table_exists(&table).unwrap());
    }
}

#[test]
fn an_owned_table_goes_with_its_socket() {
    let table = unique_table("owned");
    testns::in_fresh_netns("an_owned_table_goes_with_its_socket", move || {
        let owned = install_owned_redirects(&table, &[(18080, 18081)]).unwrap();
        assert_eq!(owned.name(), table);
        assert!(table_exists(&table).unwrap());
        assert_eq!(
            list_rules(&table).unwrap()[0].redirect,
            Some((18080, 18081))
        );
        // Another socket (another process, after the owner died) may not change it.
        assert_eq!(
            install_redirects(&table, &[(18080, 18082)])
                .unwrap_err()
                .errno(),
            Some(libc::EPERM)
        );
        drop(owned); // as on exit or kill -9: the socket closes
        assert!(
            !table_exists(&table).unwrap(),
            "the kernel deletes an owned table"
        );

        let again = install_owned_redirects(&table, &[(18080, 18083)]).unwrap();
        again.delete().unwrap();
        assert!(!table_exists(&table).unwrap());
        // A stale table without the owner flag (an older agent's) is replaced.
        install_redirects(&table, &[(18080, 18084)]).unwrap();
        let owned = install_owned_redirects(&table, &[(18080, 18085)]).unwrap();
        assert_eq!(
            list_rules(&table).unwrap()[0].redirect,
            Some((18080, 18085))
        );
        drop(owned);
        assert!(!table_exists(&table).unwrap());
    });
}

#[test]
fn the_output_redirect_is_what_nft_reads_back() {
    let table = unique_table("out");
    testns::in_fresh_netns("the_output_redirect_is_what_nft_reads_back", move || {
        testns::link_up("lo").unwrap();
        let lo = crate::interface_index("lo").unwrap();
        assert_eq!(
            install_owned_output_redirect(&table, 0, 1)
                .unwrap_err()
                .errno(),
            None,
            "an index of 0 is refused before asking the kernel"
        );
        let owned = install_owned_output_redirect(&table, lo, 40123).unwrap();
        let rules = list_rules(&table).unwrap();
        assert_eq!(rules.len(), 1, "{rules:?}");
        assert_eq!(rules[0].chain, OUTPUT_CHAIN);
        assert_eq!(rules[0].out_redirect, Some((lo, 40123)));
        assert_eq!(rules[0].redirect, None);
        let chains = list_chains(&table).unwrap();
        assert_eq!(chains[0].hook, Some(HOOK_OUTPUT));
        assert_eq!(chains[0].priority, Some(PRIORITY_DSTNAT));
        // The real tool reads the same rule (when it is installed).
        if let Some(text) = nft_list(&table) {
            assert!(text.contains("hook output priority"), "{text}");
            // nft 1.0.6 prints the flags test as `syn / syn,ack`, older ones as an expression.
            assert!(
                text.contains("tcp flags syn / syn,ack")
                    || text.contains("tcp flags & (syn | ack) == syn"),
                "{text}"
            );
            assert!(text.contains("oif \"lo\""), "{text}");
            assert!(text.contains("redirect to :40123"), "{text}");
        }
        drop(owned);
        assert!(!table_exists(&table).unwrap());
    });
}

/// Waits until one of the listeners has a connection; returns its index and the stream.
fn accept_either(ls: &[&TcpListener]) -> (usize, TcpStream) {
    for l in ls {
        l.set_nonblocking(true).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for (i, l) in ls.iter().enumerate() {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    return (i, s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("accept: {e}"),
            }
        }
        assert!(Instant::now() < deadline, "no listener got the connection");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Connects to `to`, sends `msg`, and reports which listener received it.
fn deliver(to: SocketAddr, msg: &[u8], ls: &[&TcpListener]) -> usize {
    let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
    c.write_all(msg).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let (i, mut s) = accept_either(ls);
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, msg);
    i
}

#[test]
fn redirect_moves_remote_traffic_but_not_local_traffic() {
    let table = unique_table("veth");
    testns::in_fresh_netns("redirect_moves_remote_traffic", move || {
        const APP: usize = 0;
        const AGENT: usize = 1;
        // namespace A: the workload (app + agent); namespace B: another container
        let ns_a = testns::current_netns().unwrap();
        testns::unshare_net().unwrap();
        let ns_b = testns::current_netns().unwrap();
        testns::enter(&ns_a).unwrap();
        testns::link_up("lo").unwrap();
        testns::add_veth("tpa0", "tpb0", &ns_b).unwrap();
        let a_ip = Ipv4Addr::new(10, 213, 7, 1);
        testns::add_addr("tpa0", a_ip, 24).unwrap();
        testns::link_up("tpa0").unwrap();
        let app = TcpListener::bind("0.0.0.0:18080").unwrap();
        let agent = TcpListener::bind("0.0.0.0:18081").unwrap();
        let ls = [&app, &agent];

        testns::enter(&ns_b).unwrap();
        testns::add_addr("tpb0", Ipv4Addr::new(10, 213, 7, 2), 24).unwrap();
        testns::link_up("tpb0").unwrap();
        let remote = SocketAddr::from((a_ip, 18080));
        assert_eq!(deliver(remote, b"before", &ls), APP);

        testns::enter(&ns_a).unwrap();
        install_redirects(&table, &[(18080, 18081)]).unwrap();

        testns::enter(&ns_b).unwrap();
        assert_eq!(deliver(remote, b"captured", &ls), AGENT);
        assert_eq!(deliver(remote, b"captured again", &ls), AGENT);

        // inside the workload's namespace the app is still reachable directly
        testns::enter(&ns_a).unwrap();
        assert_eq!(
            deliver("127.0.0.1:18080".parse().unwrap(), b"local", &ls),
            APP
        );
        assert_eq!(deliver(remote, b"own address", &ls), APP);

        assert!(delete_table(&table).unwrap());
        testns::enter(&ns_b).unwrap();
        assert_eq!(deliver(remote, b"after", &ls), APP);
    });
}

/// Drops CAP_NET_ADMIN from the calling thread's effective set (capabilities are per thread).
fn drop_net_admin() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: header and a two-element data array, as the v3 ABI requires.
    assert_eq!(
        unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) },
        0
    );
    d[0].effective &= !(1 << 12); // CAP_NET_ADMIN
                                  // SAFETY: as above.
    assert_eq!(
        unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) },
        0
    );
}

#[test]
fn without_net_admin_the_error_says_so() {
    testns::in_fresh_netns("without_net_admin_the_error_says_so", || {
        drop_net_admin();
        let e = install_redirects("tp_test_caps", &[(18080, 18081)]).unwrap_err();
        assert!(matches!(e, NftError::PermissionDenied { .. }), "{e:?}");
        assert!(
            e.to_string().contains("needs the NET_ADMIN capability"),
            "{e}"
        );
        assert_eq!(
            delete_table("tp_test_caps").unwrap_err().errno(),
            Some(libc::EPERM)
        );
        assert!(matches!(
            table_exists("tp_test_caps"),
            Err(NftError::PermissionDenied { .. })
        ));
    });
}
