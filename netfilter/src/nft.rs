//! nf_tables over netlink in pure Rust: installs, inspects and removes our redirects, each
//! `table ip <name>` holding one `nat` chain at priority `dstnat` (-100):
//!
//! - the agent's port redirects ([`install_redirects`], [`install_owned_redirects`]): chain
//!   `prerouting` with one `tcp dport <svc> redirect to :<agent>` rule per captured port.
//!   Connections that arrive from other containers/pods are redirected to the agent; locally
//!   generated traffic (the `output` hook) is deliberately left alone, so the agent still reaches
//!   the application at `127.0.0.1:<svc>`;
//! - the daemon's outbound redirect ([`install_owned_output_redirect`]): chain `output` with one
//!   `oif <device> tcp flags & (syn|ack) == syn counter redirect to :<port>` rule, so every TCP connection the
//!   daemon's network namespace routes into its TUN device is terminated by the kernel and
//!   handed to the daemon's listener instead.
//!
//! Only the `ip` family (IPv4) is handled. Owned tables carry the `owner` flag: the kernel
//! deletes them when the netlink socket that made them closes, so a killed process leaves no
//! redirect to nowhere.
//!
//! Every change is one atomic nfnetlink batch (`NFNL_MSG_BATCH_BEGIN` … `END`); every message
//! asks for an acknowledgement and kernel errors come back as [`NftError`].

use crate::netlink::{
    self, attr_string, attrs, be32, find_attr, Builder, ExchangeError, Malformed, Msg, Socket,
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST,
};
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

/// `NFPROTO_IPV4`: the `ip` family.
const FAMILY_IP: u8 = libc::NFPROTO_IPV4 as u8;
const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
/// `NFT_TABLE_F_OWNER`: the table belongs to the netlink socket that created it and is deleted
/// by the kernel when that socket closes (Linux ≥ 5.12).
const NFT_TABLE_F_OWNER: u32 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
pub(crate) const NFTA_RULE_TABLE: u16 = 1;
pub(crate) const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_META_DREG: u16 = 1;
pub(crate) const NFTA_META_KEY: u16 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
pub(crate) const NFTA_CMP_DATA: u16 = 3;
pub(crate) const NFTA_PAYLOAD_DREG: u16 = 1;
pub(crate) const NFTA_PAYLOAD_BASE: u16 = 2;
pub(crate) const NFTA_PAYLOAD_OFFSET: u16 = 3;
pub(crate) const NFTA_PAYLOAD_LEN: u16 = 4;
pub(crate) const NFTA_IMMEDIATE_DREG: u16 = 1;
pub(crate) const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_REDIR_REG_PROTO_MIN: u16 = 1;
const NFTA_REDIR_REG_PROTO_MAX: u16 = 2;
const NFTA_REDIR_FLAGS: u16 = 3;

pub(crate) const NFT_REG_1: u32 = 1;
pub(crate) const NFT_META_L4PROTO: u32 = 16;
const NFT_META_OIF: u32 = 5;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
pub(crate) const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
/// Offset of the flags byte in the TCP header, and two of its flags.
const TCP_FLAGS_OFFSET: u32 = 13;
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_ACK: u8 = 0x10;
const NFT_CMP_EQ: u32 = 0;
pub(crate) const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const NF_ACCEPT: u32 = 1;
pub(crate) const IPPROTO_TCP: u8 = 6;

/// Netfilter hook numbers (`NF_INET_*`).
pub const HOOK_PREROUTING: u32 = 0;
/// `NF_INET_LOCAL_OUT`.
pub const HOOK_OUTPUT: u32 = 3;
/// `NF_INET_POST_ROUTING`.
pub const HOOK_POSTROUTING: u32 = 4;
/// The `dstnat` priority.
pub const PRIORITY_DSTNAT: i32 = -100;
/// The `srcnat` priority.
pub const PRIORITY_SRCNAT: i32 = 100;
/// Name of the `postrouting` nat chain of the daemon's outbound table and of the manager's
/// forward table (crate::forward).
pub const POSTROUTING_CHAIN: &str = "postrouting";
/// Name of the redirect chain inside the agent's table.
pub const CHAIN: &str = "prerouting";
/// Name of the redirect chain inside the daemon's outbound table.
pub const OUTPUT_CHAIN: &str = "output";
/// Longest table name the kernel accepts (`NFT_NAME_MAXLEN` minus the NUL).
const MAX_NAME: usize = 255;

/// nf_tables failures, worded for whoever reads the agent's log.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// A bad table name or redirect port, caught before asking the kernel.
    #[error("invalid nf_tables request: {0}")]
    Invalid(String),
    /// The netlink socket could not be opened.
    #[error("cannot open a netfilter netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("nf_tables: {op}: operation not permitted (the traffic-agent needs the NET_ADMIN capability in the workload's network namespace)")]
    /// The kernel answered EPERM: NET_ADMIN is missing.
    PermissionDenied {
        /// The operation attempted.
        op: String,
    },
    #[error("nf_tables: {op}: {}", std::io::Error::from_raw_os_error(*errno))]
    /// The kernel refused the request.
    Kernel {
        /// The operation attempted.
        op: String,
        /// The kernel's errno.
        errno: i32,
    },
    /// The kernel did not answer within `netlink::REPLY_TIMEOUT` (5 s).
    #[error(
        "nf_tables: no answer from the kernel within {:?}",
        netlink::REPLY_TIMEOUT
    )]
    Timeout,
    /// The kernel's reply could not be parsed.
    #[error("nf_tables: malformed netlink reply: {0}")]
    Protocol(Malformed),
}

impl NftError {
    /// The kernel's errno, when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::PermissionDenied { .. } => Some(libc::EPERM),
            NftError::Kernel { errno, .. } => Some(*errno),
            NftError::Socket(e) => e.raw_os_error(),
            _ => None,
        }
    }
}

/// One rule of a table, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    /// Name of the chain holding the rule.
    pub chain: String,
    /// The kernel's handle of the rule, unique within its table.
    pub handle: u64,
    /// Expression names in order, e.g. `["meta", "cmp", "payload", "cmp", "immediate", "redir"]`.
    pub exprs: Vec<String>,
    /// `(service port, agent port)` when the rule is a `tcp dport X redirect to :Y`.
    pub redirect: Option<(u16, u16)>,
    /// `(output interface index, port)` when the rule is an
    /// `oif X tcp flags & (syn|ack) == syn redirect to :Y`.
    pub out_redirect: Option<(u32, u16)>,
    /// The forward when the rule is one of [`crate::forward`]'s `dnat` rules.
    pub dnat: Option<crate::forward::Dnat>,
    /// Whether the rule is one of [`crate::forward`]'s `masquerade` rules.
    pub masquerade: bool,
}

/// One chain of a table, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainInfo {
    /// Chain name.
    pub name: String,
    /// Netfilter hook number (base chains only), see [`HOOK_PREROUTING`].
    pub hook: Option<u32>,
    /// Hook priority (base chains only); lower runs first.
    pub priority: Option<i32>,
    /// `filter`, `nat` or `route` (base chains only).
    pub chain_type: Option<String>,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Reserves `n` consecutive sequence numbers.
pub(crate) fn next_seqs(n: u32) -> u32 {
    let base = SEQ.fetch_add(n, Ordering::Relaxed);
    // Start away from 0 so a reply to "seq 0" is never mistaken for ours.
    base.wrapping_add(0x1000)
}

pub(crate) fn validate_table(table: &str) -> Result<(), NftError> {
    if table.is_empty() || table.len() > MAX_NAME || table.contains('\0') {
        return Err(NftError::Invalid(format!(
            "table name {table:?} must be 1-{MAX_NAME} bytes without NUL"
        )));
    }
    Ok(())
}

/// A request in a batch, with what to call it in an error.
#[derive(Debug, Clone)]
struct Op {
    seq: u32,
    what: String,
}

/// An encoded batch: the bytes and the messages that expect an acknowledgement.
pub(crate) struct Batch {
    bytes: Vec<u8>,
    ops: Vec<Op>,
}

pub(crate) fn nfgen(b: &mut Builder, family: u8, res_id: u16) {
    let r = res_id.to_be_bytes();
    b.put_header(&[family, 0 /* NFNETLINK_V0 */, r[0], r[1]]);
}

pub(crate) fn msg_type(nft_msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | nft_msg
}

pub(crate) struct BatchBuilder {
    b: Builder,
    seq: u32,
    ops: Vec<Op>,
}

impl BatchBuilder {
    pub(crate) fn new(first_seq: u32) -> BatchBuilder {
        let mut b = Builder::new();
        let m = b.begin_msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first_seq);
        nfgen(&mut b, libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES);
        b.end_msg(m);
        BatchBuilder {
            b,
            seq: first_seq.wrapping_add(1),
            ops: Vec::new(),
        }
    }

    /// Starts one nf_tables message; the closure writes its attributes.
    pub(crate) fn msg(
        &mut self,
        nft_msg: u16,
        flags: u16,
        what: String,
        body: impl FnOnce(&mut Builder),
    ) {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let m = self
            .b
            .begin_msg(msg_type(nft_msg), NLM_F_REQUEST | NLM_F_ACK | flags, seq);
        nfgen(&mut self.b, FAMILY_IP, 0);
        body(&mut self.b);
        self.b.end_msg(m);
        self.ops.push(Op { seq, what });
    }

    pub(crate) fn finish(mut self) -> Batch {
        let m = self
            .b
            .begin_msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, self.seq);
        nfgen(&mut self.b, libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES);
        self.b.end_msg(m);
        Batch {
            bytes: self.b.finish(),
            ops: self.ops,
        }
    }
}

pub(crate) fn expr(b: &mut Builder, name: &str, data: impl FnOnce(&mut Builder)) {
    let elem = b.begin_nest(NFTA_LIST_ELEM);
    b.attr_str(NFTA_EXPR_NAME, name);
    let d = b.begin_nest(NFTA_EXPR_DATA);
    data(b);
    b.end_nest(d);
    b.end_nest(elem);
}

pub(crate) fn data_value(b: &mut Builder, ty: u16, value: &[u8]) {
    let n = b.begin_nest(ty);
    b.attr(NFTA_DATA_VALUE, value);
    b.end_nest(n);
}

/// Appends a load of meta `key` into register 1.
pub(crate) fn meta_load(b: &mut Builder, key: u32) {
    expr(b, "meta", |b| {
        b.attr_be32(NFTA_META_KEY, key);
        b.attr_be32(NFTA_META_DREG, NFT_REG_1);
    });
}

/// Appends a load of `len` bytes at `offset` of the transport header into register 1.
pub(crate) fn transport_load(b: &mut Builder, offset: u32, len: u32) {
    expr(b, "payload", |b| {
        b.attr_be32(NFTA_PAYLOAD_DREG, NFT_REG_1);
        b.attr_be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_TRANSPORT_HEADER);
        b.attr_be32(NFTA_PAYLOAD_OFFSET, offset);
        b.attr_be32(NFTA_PAYLOAD_LEN, len);
    });
}

/// Appends "register 1 equals `data`" (the rule stops here otherwise).
pub(crate) fn cmp_eq(b: &mut Builder, data: &[u8]) {
    expr(b, "cmp", |b| {
        b.attr_be32(NFTA_CMP_SREG, NFT_REG_1);
        b.attr_be32(NFTA_CMP_OP, NFT_CMP_EQ);
        data_value(b, NFTA_CMP_DATA, data);
    });
}

/// Appends `meta l4proto tcp`.
pub(crate) fn l4proto_tcp(b: &mut Builder) {
    meta_load(b, NFT_META_L4PROTO);
    cmp_eq(b, &[IPPROTO_TCP]);
}

/// Appends `redirect to :<to>` (the port through register 1).
fn redirect_to(b: &mut Builder, to: u16) {
    expr(b, "immediate", |b| {
        b.attr_be32(NFTA_IMMEDIATE_DREG, NFT_REG_1);
        data_value(b, NFTA_IMMEDIATE_DATA, &to.to_be_bytes());
    });
    expr(b, "redir", |b| {
        b.attr_be32(NFTA_REDIR_REG_PROTO_MIN, NFT_REG_1);
        b.attr_be32(NFTA_REDIR_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
    });
}

/// Appends the expressions of `tcp dport <svc> redirect to :<to>`.
fn redirect_exprs(b: &mut Builder, svc: u16, to: u16) {
    l4proto_tcp(b);
    transport_load(b, 2, 2);
    cmp_eq(b, &svc.to_be_bytes());
    redirect_to(b, to);
}

/// Where a table's nat chain hangs, and what it redirects.
enum Capture<'a> {
    /// Chain [`CHAIN`] on `prerouting`: `tcp dport <svc> redirect to :<to>` per pair.
    Ports(&'a [(u16, u16)]),
    /// Chain [`OUTPUT_CHAIN`] on `output`:
    /// `oif <oif> tcp flags & (syn|ack) == syn redirect to :<to>`.
    Out { oif: u32, to: u16 },
}

/// Appends `tcp flags & (syn|ack) == syn`: only a connection's first SYN.
pub(crate) fn syn_only(b: &mut Builder) {
    transport_load(b, TCP_FLAGS_OFFSET, 1);
    expr(b, "bitwise", |b| {
        b.attr_be32(NFTA_BITWISE_SREG, NFT_REG_1);
        b.attr_be32(NFTA_BITWISE_DREG, NFT_REG_1);
        b.attr_be32(NFTA_BITWISE_LEN, 1);
        data_value(b, NFTA_BITWISE_MASK, &[TCP_SYN | TCP_ACK]);
        data_value(b, NFTA_BITWISE_XOR, &[0]);
    });
    cmp_eq(b, &[TCP_SYN]);
}

/// Appends the expressions of `oif <oif> tcp flags & (syn|ack) == syn counter redirect to :<to>`.
pub(crate) fn out_redirect_exprs(b: &mut Builder, oif: u32, to: u16) {
    meta_load(b, NFT_META_OIF);
    // An interface index is compared in host byte order, as the kernel stores it.
    cmp_eq(b, &oif.to_ne_bytes());
    l4proto_tcp(b);
    // Only a connection's first SYN: when conntrack starts in a namespace (our nat chain is
    // what starts it) it picks up connections already established from their next packet, and
    // the nat chain would redirect those too — to a listener that never saw their handshake.
    syn_only(b);
    // Counts the connections redirected (shown by `nft list table ip <table>`).
    expr(b, "counter", |_| {});
    redirect_to(b, to);
}

/// Encodes the install batch: add the table (a no-op when it exists) and delete it, which
/// removes any stale content atomically, then create table (`owned`: with the owner flag),
/// chain and rules.
fn encode_install(table: &str, redirects: &[(u16, u16)], first_seq: u32, owned: bool) -> Batch {
    encode_capture(table, &Capture::Ports(redirects), first_seq, owned)
}

/// Appends the start of an install batch: add table `t` (a no-op when it exists) and delete
/// it, which removes any stale content atomically, then create it (`owned`: with the owner
/// flag).
pub(crate) fn fresh_table(bb: &mut BatchBuilder, t: &str, owned: bool) {
    bb.msg(
        NFT_MSG_NEWTABLE,
        NLM_F_CREATE,
        format!("add table ip {t}"),
        |b| b.attr_str(NFTA_TABLE_NAME, t),
    );
    bb.msg(
        NFT_MSG_DELTABLE,
        0,
        format!("flush old table ip {t}"),
        |b| b.attr_str(NFTA_TABLE_NAME, t),
    );
    bb.msg(
        NFT_MSG_NEWTABLE,
        NLM_F_CREATE,
        format!("create table ip {t}"),
        |b| {
            b.attr_str(NFTA_TABLE_NAME, t);
            if owned {
                b.attr_be32(NFTA_TABLE_FLAGS, NFT_TABLE_F_OWNER);
            }
        },
    );
}

/// Adds base chain `name` of type `nat` on `hook` at `priority` (each with the name errors
/// call it by); a no-op when it exists.
pub(crate) fn new_nat_chain(
    bb: &mut BatchBuilder,
    t: &str,
    name: &str,
    (hook, hook_name): (u32, &str),
    (priority, priority_name): (i32, &str),
) {
    bb.msg(
        NFT_MSG_NEWCHAIN,
        NLM_F_CREATE,
        format!("create nat chain {t}/{name} (hook {hook_name}, priority {priority_name})"),
        |b| {
            b.attr_str(NFTA_CHAIN_TABLE, t);
            b.attr_str(NFTA_CHAIN_NAME, name);
            let h = b.begin_nest(NFTA_CHAIN_HOOK);
            b.attr_be32(NFTA_HOOK_HOOKNUM, hook);
            b.attr_be32(NFTA_HOOK_PRIORITY, priority as u32);
            b.end_nest(h);
            b.attr_be32(NFTA_CHAIN_POLICY, NF_ACCEPT);
            b.attr_str(NFTA_CHAIN_TYPE, "nat");
        },
    );
}

/// Appends a rule to `t/chain`, its expressions written by `exprs`.
pub(crate) fn add_rule(
    bb: &mut BatchBuilder,
    t: &str,
    chain: &str,
    what: String,
    exprs: impl FnOnce(&mut Builder),
) {
    bb.msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, what, |b| {
        b.attr_str(NFTA_RULE_TABLE, t);
        b.attr_str(NFTA_RULE_CHAIN, chain);
        let e = b.begin_nest(NFTA_RULE_EXPRESSIONS);
        exprs(b);
        b.end_nest(e);
    });
}

fn encode_capture(table: &str, capture: &Capture<'_>, first_seq: u32, owned: bool) -> Batch {
    let mut bb = BatchBuilder::new(first_seq);
    let t = table;
    fresh_table(&mut bb, t, owned);
    let (chain, hook, hook_name) = match capture {
        Capture::Ports(_) => (CHAIN, HOOK_PREROUTING, "prerouting"),
        Capture::Out { .. } => (OUTPUT_CHAIN, HOOK_OUTPUT, "output"),
    };
    new_nat_chain(
        &mut bb,
        t,
        chain,
        (hook, hook_name),
        (PRIORITY_DSTNAT, "dstnat"),
    );
    if let Capture::Out { .. } = capture {
        // Where the daemon's in-kernel forwards are masqueraded (crate::forward); empty until then.
        new_nat_chain(
            &mut bb,
            t,
            POSTROUTING_CHAIN,
            (HOOK_POSTROUTING, "postrouting"),
            (PRIORITY_SRCNAT, "srcnat"),
        );
    }
    let rule = |bb: &mut BatchBuilder, what: String, exprs: &dyn Fn(&mut Builder)| {
        add_rule(bb, t, chain, what, exprs);
    };
    match *capture {
        Capture::Ports(redirects) => {
            for &(svc, to) in redirects {
                rule(
                    &mut bb,
                    format!("add rule {t}/{chain} tcp dport {svc} redirect to :{to}"),
                    &|b| redirect_exprs(b, svc, to),
                );
            }
        }
        Capture::Out { oif, to } => rule(
            &mut bb,
            format!("add rule {t}/{chain} oif {oif} tcp flags & (syn|ack) == syn counter redirect to :{to}"),
            &|b| out_redirect_exprs(b, oif, to),
        ),
    }
    bb.finish()
}

fn encode_delete(table: &str, first_seq: u32) -> Batch {
    let mut bb = BatchBuilder::new(first_seq);
    bb.msg(
        NFT_MSG_DELTABLE,
        0,
        format!("delete table ip {table}"),
        |b| b.attr_str(NFTA_TABLE_NAME, table),
    );
    bb.finish()
}

/// Encodes a single (non-batch) request: a GET of one object or a dump filtered by table.
fn encode_get(nft_msg: u16, flags: u16, seq: u32, table_attr: u16, table: &str) -> Vec<u8> {
    let mut b = Builder::new();
    let m = b.begin_msg(msg_type(nft_msg), NLM_F_REQUEST | flags, seq);
    nfgen(&mut b, FAMILY_IP, 0);
    b.attr_str(table_attr, table);
    b.end_msg(m);
    b.finish()
}

pub(crate) fn open() -> Result<Socket, NftError> {
    Socket::open(NETLINK_NETFILTER).map_err(NftError::Socket)
}

fn map_exchange(e: ExchangeError, what: impl Fn(u32) -> String) -> NftError {
    match e {
        ExchangeError::Io(e) => NftError::Socket(e),
        ExchangeError::Timeout => NftError::Timeout,
        ExchangeError::Malformed(m) => NftError::Protocol(m),
        ExchangeError::Nack { seq, errno } => {
            let op = what(seq);
            if errno == libc::EPERM {
                NftError::PermissionDenied { op }
            } else {
                NftError::Kernel { op, errno }
            }
        }
    }
}

/// Runs a batch on a socket of its own; `summary` names errors the kernel reports for the
/// transaction as a whole (permission checks, commit failures) rather than for one message.
fn run_batch(batch: &Batch, summary: &str) -> Result<(), NftError> {
    run_batch_on(&open()?, batch, summary)
}

/// [`run_batch`] on `sock` (an owned table can only be changed through the socket that made it).
pub(crate) fn run_batch_on(sock: &Socket, batch: &Batch, summary: &str) -> Result<(), NftError> {
    let expect: Vec<u32> = batch.ops.iter().map(|o| o.seq).collect();
    netlink::exchange(sock, &batch.bytes, &expect, |_| Ok(())).map_err(|e| {
        map_exchange(e, |seq| {
            batch
                .ops
                .iter()
                .find(|o| o.seq == seq)
                .map(|o| o.what.clone())
                .unwrap_or_else(|| summary.to_string())
        })
    })
}

/// Atomically replaces `table ip <table>` with a nat chain on the `prerouting` hook (priority
/// -100) holding one `tcp dport <svc> redirect to :<agent>` rule per `(svc, agent)` pair. A
/// table of that name that existed before is removed in the same transaction. The table stays
/// until deleted (an init container's redirect, for the life of its pod); see
/// [`install_owned_redirects`] for one that cannot outlive its process.
pub fn install_redirects(table: &str, redirects: &[(u16, u16)]) -> Result<(), NftError> {
    install_on(&open()?, table, redirects, false)
}

/// [`install_redirects`] with the table owned by the returned [`OwnedTable`]: the kernel deletes
/// it the moment that handle's netlink socket closes — on drop, on exit and on `kill -9` alike —
/// so the redirect never outlives the process that serves it.
pub fn install_owned_redirects(
    table: &str,
    redirects: &[(u16, u16)],
) -> Result<OwnedTable, NftError> {
    let sock = open()?;
    install_on(&sock, table, redirects, true)?;
    Ok(OwnedTable {
        sock,
        name: table.to_string(),
    })
}

fn install_on(
    sock: &Socket,
    table: &str,
    redirects: &[(u16, u16)],
    owned: bool,
) -> Result<(), NftError> {
    validate_table(table)?;
    if let Some(&(s, a)) = redirects.iter().find(|(s, a)| *s == 0 || *a == 0) {
        return Err(NftError::Invalid(format!(
            "redirect {s} -> {a}: ports must be 1-65535"
        )));
    }
    let n = redirects.len() as u32 + 6;
    run_batch_on(
        sock,
        &encode_install(table, redirects, next_seqs(n), owned),
        &format!("install redirects in table ip {table}"),
    )
}

/// Atomically replaces `table ip <table>` with a nat chain on the `output` hook (priority -100)
/// holding `oif <oif> tcp flags & (syn|ack) == syn counter redirect to :<to>`: every TCP connection this network
/// namespace routes out of interface `oif` reaches `127.0.0.1:<to>` instead, its original
/// destination readable with `SO_ORIGINAL_DST`. Connections already established keep the path
/// they had (NAT is decided once per connection). The table is owned like
/// [`install_owned_redirects`]'s: it goes when the returned handle (or its process) goes.
pub fn install_owned_output_redirect(
    table: &str,
    oif: u32,
    to: u16,
) -> Result<OwnedTable, NftError> {
    validate_table(table)?;
    if oif == 0 || to == 0 {
        return Err(NftError::Invalid(format!(
            "output redirect oif {oif} -> :{to}: both must be non-zero"
        )));
    }
    let sock = open()?;
    run_batch_on(
        &sock,
        &encode_capture(table, &Capture::Out { oif, to }, next_seqs(8), true),
        &format!("install the output redirect in table ip {table}"),
    )?;
    Ok(OwnedTable {
        sock,
        name: table.to_string(),
    })
}

/// A table created by [`install_owned_redirects`] or [`install_owned_output_redirect`]; dropping it deletes the table (the kernel
/// does, when the netlink socket closes).
pub struct OwnedTable {
    pub(crate) sock: Socket,
    pub(crate) name: String,
}

impl OwnedTable {
    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deletes the table now, reporting a failure (dropping would delete it silently).
    pub fn delete(self) -> Result<(), NftError> {
        run_batch_on(
            &self.sock,
            &encode_delete(&self.name, next_seqs(3)),
            &format!("delete table ip {}", self.name),
        )
    }
}

impl fmt::Debug for OwnedTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnedTable(ip {})", self.name)
    }
}

/// Deletes `table ip <table>` and everything in it. Returns whether it existed.
pub fn delete_table(table: &str) -> Result<bool, NftError> {
    validate_table(table)?;
    match run_batch(
        &encode_delete(table, next_seqs(3)),
        &format!("delete table ip {table}"),
    ) {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `table ip <table>` exists (`NFT_MSG_GETTABLE`).
pub fn table_exists(table: &str) -> Result<bool, NftError> {
    validate_table(table)?;
    let sock = open()?;
    let seq = next_seqs(1);
    let req = encode_get(NFT_MSG_GETTABLE, NLM_F_ACK, seq, NFTA_TABLE_NAME, table);
    let mut found = false;
    let res = netlink::exchange(&sock, &req, &[seq], |m| {
        if m.ty == msg_type(NFT_MSG_NEWTABLE) {
            let name = find_attr(nft_attrs(m)?, NFTA_TABLE_NAME).map(attr_string);
            found |= name.as_deref() == Some(table);
        }
        Ok(())
    });
    match res {
        Ok(()) => Ok(found),
        Err(ExchangeError::Nack { errno, .. }) if errno == libc::ENOENT => Ok(false),
        Err(e) => Err(map_exchange(e, |_| format!("get table ip {table}"))),
    }
}

/// The attributes of an nf_tables message (after its `nfgenmsg`).
fn nft_attrs<'a>(m: &Msg<'a>) -> Result<&'a [u8], Malformed> {
    m.payload.get(4..).ok_or(Malformed::NoNfgenmsg)
}

fn dump(
    nft_msg: u16,
    table_attr: u16,
    table: &str,
    what: &str,
    mut each: impl FnMut(&[u8]) -> Result<(), Malformed>,
) -> Result<(), NftError> {
    validate_table(table)?;
    let sock = open()?;
    let seq = next_seqs(1);
    let req = encode_get(nft_msg, NLM_F_DUMP, seq, table_attr, table);
    let reply_ty = msg_type(nft_msg - 1); // GETx is answered with NEWx
    let res = netlink::exchange(&sock, &req, &[seq], |m| {
        if m.ty != reply_ty {
            return Ok(());
        }
        let a = nft_attrs(m)?;
        // The kernel filters by table; check anyway in case an old kernel ignores the filter.
        if find_attr(a, table_attr).map(attr_string).as_deref() != Some(table) {
            return Ok(());
        }
        each(a)
    });
    match res {
        Ok(()) => Ok(()),
        Err(ExchangeError::Nack { errno, .. }) if errno == libc::ENOENT => Ok(()),
        Err(e) => Err(map_exchange(e, |_| format!("{what} of table ip {table}"))),
    }
}

/// Lists the rules of `table ip <table>` (`NFT_MSG_GETRULE` dump), decoding redirects.
/// A missing table has no rules.
pub fn list_rules(table: &str) -> Result<Vec<RuleInfo>, NftError> {
    let mut out = Vec::new();
    dump(NFT_MSG_GETRULE, NFTA_RULE_TABLE, table, "list rules", |a| {
        out.push(decode_rule(a));
        Ok(())
    })?;
    Ok(out)
}

/// Lists the chains of `table ip <table>` (`NFT_MSG_GETCHAIN` dump).
pub fn list_chains(table: &str) -> Result<Vec<ChainInfo>, NftError> {
    let mut out = Vec::new();
    dump(
        NFT_MSG_GETCHAIN,
        NFTA_CHAIN_TABLE,
        table,
        "list chains",
        |a| {
            let hook = find_attr(a, NFTA_CHAIN_HOOK);
            out.push(ChainInfo {
                name: find_attr(a, NFTA_CHAIN_NAME)
                    .map(attr_string)
                    .unwrap_or_default(),
                hook: hook
                    .and_then(|h| find_attr(h, NFTA_HOOK_HOOKNUM))
                    .and_then(be32),
                priority: hook
                    .and_then(|h| find_attr(h, NFTA_HOOK_PRIORITY))
                    .and_then(be32)
                    .map(|p| p as i32),
                chain_type: find_attr(a, NFTA_CHAIN_TYPE).map(attr_string),
            });
            Ok(())
        },
    )?;
    Ok(out)
}

pub(crate) fn data_value_of(expr_data: &[u8], ty: u16) -> Option<&[u8]> {
    find_attr(expr_data, ty).and_then(|d| find_attr(d, NFTA_DATA_VALUE))
}

pub(crate) fn port_of(v: Option<&[u8]>) -> Option<u16> {
    match v {
        Some([a, b]) => Some(u16::from_be_bytes([*a, *b])),
        _ => None,
    }
}

/// Decodes a rule's attributes; recognises exactly the expression sequence that
/// [`install_redirects`] writes.
fn decode_rule(a: &[u8]) -> RuleInfo {
    let chain = find_attr(a, NFTA_RULE_CHAIN)
        .map(attr_string)
        .unwrap_or_default();
    let handle = find_attr(a, NFTA_RULE_HANDLE)
        .and_then(|h| h.get(..8))
        .map(|h| u64::from_be_bytes(h.try_into().expect("8 bytes")))
        .unwrap_or(0);
    let mut exprs = Vec::new();
    let mut datas = Vec::new();
    if let Some(list) = find_attr(a, NFTA_RULE_EXPRESSIONS) {
        for (ty, elem) in attrs(list) {
            if ty != NFTA_LIST_ELEM {
                continue;
            }
            exprs.push(
                find_attr(elem, NFTA_EXPR_NAME)
                    .map(attr_string)
                    .unwrap_or_default(),
            );
            datas.push(find_attr(elem, NFTA_EXPR_DATA).unwrap_or(&[]));
        }
    }
    let names: Vec<&str> = exprs.iter().map(String::as_str).collect();
    let redirect = if names == ["meta", "cmp", "payload", "cmp", "immediate", "redir"] {
        let l4 = find_attr(datas[0], NFTA_META_KEY).and_then(be32) == Some(NFT_META_L4PROTO)
            && data_value_of(datas[1], NFTA_CMP_DATA) == Some(&[IPPROTO_TCP][..]);
        let dport = find_attr(datas[2], NFTA_PAYLOAD_BASE).and_then(be32)
            == Some(NFT_PAYLOAD_TRANSPORT_HEADER)
            && find_attr(datas[2], NFTA_PAYLOAD_OFFSET).and_then(be32) == Some(2)
            && find_attr(datas[2], NFTA_PAYLOAD_LEN).and_then(be32) == Some(2);
        let redir_reg = find_attr(datas[5], NFTA_REDIR_REG_PROTO_MIN).and_then(be32);
        let redir_max = find_attr(datas[5], NFTA_REDIR_REG_PROTO_MAX).and_then(be32);
        let imm_reg = find_attr(datas[4], NFTA_IMMEDIATE_DREG).and_then(be32);
        let svc = port_of(data_value_of(datas[3], NFTA_CMP_DATA));
        let to = port_of(data_value_of(datas[4], NFTA_IMMEDIATE_DATA));
        let regs_ok = redir_reg.is_some()
            && redir_reg == imm_reg
            && (redir_max.is_none() || redir_max == redir_reg);
        match (l4 && dport && regs_ok, svc, to) {
            (true, Some(s), Some(t)) => Some((s, t)),
            _ => None,
        }
    } else {
        None
    };
    let out_redirect = decode_out_redirect(&names, &datas);
    let dnat = crate::forward::decode_dnat(&names, &datas);
    let masquerade = crate::forward::is_masquerade(&names);
    RuleInfo {
        chain,
        handle,
        exprs,
        redirect,
        out_redirect,
        dnat,
        masquerade,
    }
}

/// `(oif, port)` when `names`/`datas` are exactly the expressions [`out_redirect_exprs`] writes.
fn decode_out_redirect(names: &[&str], datas: &[&[u8]]) -> Option<(u32, u16)> {
    let expected = [
        "meta",
        "cmp",
        "meta",
        "cmp",
        "payload",
        "bitwise",
        "cmp",
        "counter",
        "immediate",
        "redir",
    ];
    if names != expected {
        return None;
    }
    let oif = (find_attr(datas[0], NFTA_META_KEY).and_then(be32) == Some(NFT_META_OIF))
        .then(|| data_value_of(datas[1], NFTA_CMP_DATA))
        .flatten()
        .and_then(|v| <[u8; 4]>::try_from(v).ok())
        .map(u32::from_ne_bytes);
    let tcp = find_attr(datas[2], NFTA_META_KEY).and_then(be32) == Some(NFT_META_L4PROTO)
        && data_value_of(datas[3], NFTA_CMP_DATA) == Some(&[IPPROTO_TCP][..]);
    let syn = data_value_of(datas[5], NFTA_BITWISE_MASK) == Some(&[TCP_SYN | TCP_ACK][..])
        && data_value_of(datas[6], NFTA_CMP_DATA) == Some(&[TCP_SYN][..]);
    let to = port_of(data_value_of(datas[8], NFTA_IMMEDIATE_DATA));
    match (oif, tcp && syn, to) {
        (Some(o), true, Some(t)) => Some((o, t)),
        _ => None,
    }
}

impl fmt::Display for RuleInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.redirect, self.out_redirect, self.dnat) {
            (Some((s, t)), _, _) => write!(f, "{}: tcp dport {s} redirect to :{t}", self.chain),
            (None, Some((o, t)), _) => {
                write!(f, "{}: oif {o} tcp syn redirect to :{t}", self.chain)
            }
            (None, None, Some(d)) => write!(f, "{}: {d}", self.chain),
            (None, None, None) => write!(f, "{}: {}", self.chain, self.exprs.join(" ")),
        }
    }
}

#[cfg(test)]
#[path = "nft_tests.rs"]
#[allow(unsafe_code)] // capget/capset syscalls to drop capabilities in a test
mod tests;
