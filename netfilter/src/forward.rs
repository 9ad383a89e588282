//! In-kernel forwards: TCP connections to one address rewritten (`dnat`) to another, and their
//! source masqueraded on the way out, so the kernel carries the bytes with no process in the
//! path. Two tables use them:
//!
//! - the daemon's outbound table ([`crate::nft::install_owned_output_redirect`]):
//!   [`OwnedTable::set_output_forwards`] puts one `dnat` rule per forwarded cluster destination
//!   in its `output` chain, before the catch-all redirect to the daemon's listener, and the
//!   matching `masquerade` in its `postrouting` chain (the handler's socket took the TUN
//!   device's address, which only the daemon's namespace knows);
//! - the traffic-manager's forward table ([`install_owned_forwards`]): its `prerouting` chain
//!   rewrites a daemon's connections to one of the manager's forward ports to the cluster
//!   destination, and its `postrouting` chain masquerades them, so the destination answers the
//!   manager — every byte still goes through the manager's address.
//!
//! Every change replaces the chains' rules in one atomic batch. Connections already rewritten
//! keep their rewrite (conntrack holds it), whatever the rules become.

use crate::netlink::{be32, find_attr, Builder};
use crate::nft::{
    add_rule, cmp_eq, data_value, data_value_of, expr, l4proto_tcp, new_nat_chain, next_seqs, open,
    port_of, run_batch_on, syn_only, transport_load, validate_table, BatchBuilder, NftError,
    OwnedTable, CHAIN, HOOK_POSTROUTING, HOOK_PREROUTING, NFTA_CMP_DATA, NFTA_IMMEDIATE_DATA,
    NFTA_IMMEDIATE_DREG, NFTA_PAYLOAD_BASE, NFTA_PAYLOAD_DREG, NFTA_PAYLOAD_LEN,
    NFTA_PAYLOAD_OFFSET, NFTA_RULE_CHAIN, NFTA_RULE_TABLE, NFT_REG_1, OUTPUT_CHAIN,
    POSTROUTING_CHAIN, PRIORITY_DSTNAT, PRIORITY_SRCNAT,
};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

const NFT_MSG_DELRULE: u16 = 8;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const IPV4_SADDR_OFFSET: u32 = 12;
const IPV4_DADDR_OFFSET: u32 = 16;
const NFT_REG_2: u32 = 2;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFTA_NAT_FLAGS: u16 = 7;
const NFT_NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_MAP_IPS: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const NFPROTO_IPV4: u32 = 2;
/// Most forwards one table takes (two rules each); more are refused before the kernel is asked.
pub const MAX_FORWARDS: usize = 1024;

/// One in-kernel forward: new TCP connections to `dst` (from `from` only, when set) go to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dnat {
    /// Only connections from this address (the manager's table: the daemon's); any when `None`.
    pub from: Option<Ipv4Addr>,
    /// The destination rewritten.
    pub dst: SocketAddrV4,
    /// Where those connections go instead.
    pub to: SocketAddrV4,
}

impl fmt::Display for Dnat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(from) = self.from {
            write!(f, "ip saddr {from} ")?;
        }
        write!(
            f,
            "ip daddr {} tcp dport {} dnat to {}",
            self.dst.ip(),
            self.dst.port(),
            self.to
        )
    }
}

/// Appends `ip saddr|daddr == ip` (`offset`: [`IPV4_SADDR_OFFSET`] or [`IPV4_DADDR_OFFSET`]).
fn ip_eq(b: &mut Builder, offset: u32, ip: Ipv4Addr) {
    expr(b, "payload", |b| {
        b.attr_be32(NFTA_PAYLOAD_DREG, NFT_REG_1);
        b.attr_be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER);
        b.attr_be32(NFTA_PAYLOAD_OFFSET, offset);
        b.attr_be32(NFTA_PAYLOAD_LEN, 4);
    });
    cmp_eq(b, &ip.octets());
}

/// Appends `[ip saddr <from>] ip daddr <dst.ip> tcp dport <dst.port>`.
fn match_tcp(b: &mut Builder, from: Option<Ipv4Addr>, dst: SocketAddrV4) {
    if let Some(from) = from {
        ip_eq(b, IPV4_SADDR_OFFSET, from);
    }
    ip_eq(b, IPV4_DADDR_OFFSET, *dst.ip());
    l4proto_tcp(b);
    transport_load(b, 2, 2);
    cmp_eq(b, &dst.port().to_be_bytes());
}

fn immediate(b: &mut Builder, reg: u32, value: &[u8]) {
    expr(b, "immediate", |b| {
        b.attr_be32(NFTA_IMMEDIATE_DREG, reg);
        data_value(b, NFTA_IMMEDIATE_DATA, value);
    });
}

/// Appends `<match> tcp flags & (syn|ack) == syn counter dnat to <to>`.
fn dnat_exprs(b: &mut Builder, d: &Dnat) {
    match_tcp(b, d.from, d.dst);
    syn_only(b);
    expr(b, "counter", |_| {});
    immediate(b, NFT_REG_1, &d.to.ip().octets());
    immediate(b, NFT_REG_2, &d.to.port().to_be_bytes());
    expr(b, "nat", |b| {
        b.attr_be32(NFTA_NAT_TYPE, NFT_NAT_DNAT);
        b.attr_be32(NFTA_NAT_FAMILY, NFPROTO_IPV4);
        b.attr_be32(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1);
        b.attr_be32(NFTA_NAT_REG_PROTO_MIN, NFT_REG_2);
        b.attr_be32(
            NFTA_NAT_FLAGS,
            NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED,
        );
    });
}

/// Appends `[ip saddr <from>] ip daddr <to.ip> tcp dport <to.port> masquerade`: the rewritten
/// connection leaves with the address of the interface it leaves by.
fn masq_exprs(b: &mut Builder, from: Option<Ipv4Addr>, to: SocketAddrV4) {
    match_tcp(b, from, to);
    expr(b, "masq", |_| {});
}

/// Deletes every rule of chain `t/chain`.
fn flush_chain(bb: &mut BatchBuilder, t: &str, chain: &str) {
    bb.msg(
        NFT_MSG_DELRULE,
        0,
        format!("flush chain {t}/{chain}"),
        |b| {
            b.attr_str(NFTA_RULE_TABLE, t);
            b.attr_str(NFTA_RULE_CHAIN, chain);
        },
    );
}

/// A rule after the forwards of a chain: its description and its expressions.
type LastRule<'a> = (String, &'a dyn Fn(&mut Builder));

/// Replaces the rules of `dnat_chain` with one `dnat` rule per forward followed by `last` (the
/// daemon's redirect), and those of `postrouting` with the matching `masquerade`s.
fn encode_rules(
    t: &str,
    dnat_chain: &str,
    fwds: &[Dnat],
    last: Option<LastRule<'_>>,
    first_seq: u32,
) -> crate::nft::Batch {
    let mut bb = BatchBuilder::new(first_seq);
    flush_chain(&mut bb, t, dnat_chain);
    for d in fwds {
        let what = format!("add rule {t}/{dnat_chain} {d}");
        add_rule(&mut bb, t, dnat_chain, what, |b| dnat_exprs(b, d));
    }
    if let Some((what, exprs)) = last {
        add_rule(&mut bb, t, dnat_chain, what, exprs);
    }
    flush_chain(&mut bb, t, POSTROUTING_CHAIN);
    for d in fwds {
        let from = d.from.map(|f| format!("ip saddr {f} ")).unwrap_or_default();
        let what = format!(
            "add rule {t}/{POSTROUTING_CHAIN} {from}ip daddr {} masquerade",
            d.to
        );
        add_rule(&mut bb, t, POSTROUTING_CHAIN, what, |b| {
            masq_exprs(b, d.from, d.to);
        });
    }
    bb.finish()
}

/// The batch of [`install_owned_forwards`]: table (owned) and its two empty nat chains.
fn encode_forward_table(t: &str, first_seq: u32) -> crate::nft::Batch {
    let mut bb = BatchBuilder::new(first_seq);
    crate::nft::fresh_table(&mut bb, t, true);
    new_nat_chain(
        &mut bb,
        t,
        CHAIN,
        (HOOK_PREROUTING, "prerouting"),
        (PRIORITY_DSTNAT, "dstnat"),
    );
    new_nat_chain(
        &mut bb,
        t,
        POSTROUTING_CHAIN,
        (HOOK_POSTROUTING, "postrouting"),
        (PRIORITY_SRCNAT, "srcnat"),
    );
    bb.finish()
}

fn check_count(fwds: &[Dnat]) -> Result<(), NftError> {
    if fwds.len() > MAX_FORWARDS {
        return Err(NftError::Invalid(format!(
            "{} forwards: at most {MAX_FORWARDS}",
            fwds.len()
        )));
    }
    if let Some(d) = fwds.iter().find(|d| d.dst.port() == 0 || d.to.port() == 0) {
        return Err(NftError::Invalid(format!(
            "forward {d}: ports must be 1-65535"
        )));
    }
    Ok(())
}

/// Creates `table ip <table>` owned by the returned handle (gone with it, or with the process)
/// with an empty `prerouting` nat chain at `dstnat` and an empty `postrouting` nat chain at
/// `srcnat`, for [`OwnedTable::set_forwards`]. The network namespace must forward IPv4
/// (`net.ipv4.ip_forward=1`) for the forwards to carry anything.
pub fn install_owned_forwards(table: &str) -> Result<OwnedTable, NftError> {
    validate_table(table)?;
    let sock = open()?;
    run_batch_on(
        &sock,
        &encode_forward_table(table, next_seqs(7)),
        &format!("install the forward table ip {table}"),
    )?;
    Ok(OwnedTable {
        sock,
        name: table.to_string(),
    })
}

impl OwnedTable {
    /// Replaces the rules of a table made by [`install_owned_forwards`]: per forward,
    /// `ip saddr <from> ip daddr <dst> tcp dport <port> tcp syn counter dnat to <to>` in
    /// `prerouting` and `ip saddr <from> ip daddr <to> tcp dport <port> masquerade` in
    /// `postrouting`, atomically.
    pub fn set_forwards(&self, fwds: &[Dnat]) -> Result<(), NftError> {
        check_count(fwds)?;
        let n = 2 * fwds.len() as u32 + 4;
        run_batch_on(
            &self.sock,
            &encode_rules(&self.name, CHAIN, fwds, None, next_seqs(n)),
            &format!("set the forwards of table ip {}", self.name),
        )
    }

    /// Replaces the rules of a table made by [`crate::nft::install_owned_output_redirect`]
    /// (`oif`, `to`: as given there): per forward a `dnat` rule in `output` before the redirect
    /// and a `masquerade` of the rewritten connections in `postrouting`, atomically.
    pub fn set_output_forwards(&self, oif: u32, to: u16, fwds: &[Dnat]) -> Result<(), NftError> {
        check_count(fwds)?;
        let n = 2 * fwds.len() as u32 + 5;
        run_batch_on(
            &self.sock,
            &encode_rules(
                &self.name,
                OUTPUT_CHAIN,
                fwds,
                Some((
                    format!(
                        "add rule {}/{OUTPUT_CHAIN} oif {oif} tcp syn counter redirect to :{to}",
                        self.name
                    ),
                    &|b: &mut Builder| crate::nft::out_redirect_exprs(b, oif, to),
                )),
                next_seqs(n),
            ),
            &format!("set the outbound forwards of table ip {}", self.name),
        )
    }
}

/// The address of an `ip saddr|daddr` match at `datas[i]`/`datas[i+1]` with `offset`.
fn decode_ip(datas: &[&[u8]], i: usize, offset: u32) -> Option<Ipv4Addr> {
    let load = datas.get(i)?;
    let ok = find_attr(load, NFTA_PAYLOAD_BASE).and_then(be32) == Some(NFT_PAYLOAD_NETWORK_HEADER)
        && find_attr(load, NFTA_PAYLOAD_OFFSET).and_then(be32) == Some(offset)
        && find_attr(load, NFTA_PAYLOAD_LEN).and_then(be32) == Some(4);
    let v = data_value_of(datas.get(i + 1)?, NFTA_CMP_DATA)?;
    ok.then(|| <[u8; 4]>::try_from(v).ok().map(Ipv4Addr::from))
        .flatten()
}

/// The forward when `names`/`datas` are exactly the expressions [`dnat_exprs`] writes.
pub(crate) fn decode_dnat(names: &[&str], datas: &[&[u8]]) -> Option<Dnat> {
    const TAIL: [&str; 13] = [
        "payload",
        "cmp",
        "meta",
        "cmp",
        "payload",
        "cmp",
        "payload",
        "bitwise",
        "cmp",
        "counter",
        "immediate",
        "immediate",
        "nat",
    ];
    let (from, skip) = match names.len() {
        15 if names[..2] == ["payload", "cmp"] && names[2..] == TAIL => {
            (Some(decode_ip(datas, 0, IPV4_SADDR_OFFSET)?), 2)
        }
        13 if names == TAIL => (None, 0),
        _ => return None,
    };
    let d = &datas[skip..];
    let dst_ip = decode_ip(d, 0, IPV4_DADDR_OFFSET)?;
    let dport = port_of(data_value_of(d[5], NFTA_CMP_DATA))?;
    let to_ip = data_value_of(d[10], NFTA_IMMEDIATE_DATA)
        .and_then(|v| <[u8; 4]>::try_from(v).ok())
        .map(Ipv4Addr::from)?;
    let to_port = port_of(data_value_of(d[11], NFTA_IMMEDIATE_DATA))?;
    Some(Dnat {
        from,
        dst: SocketAddrV4::new(dst_ip, dport),
        to: SocketAddrV4::new(to_ip, to_port),
    })
}

/// Whether `names` are the expressions [`masq_exprs`] writes.
pub(crate) fn is_masquerade(names: &[&str]) -> bool {
    names.last() == Some(&"masq")
}

#[cfg(test)]
#[path = "forward_tests.rs"]
mod tests;
