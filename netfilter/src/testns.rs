//! Test helpers: fresh network namespaces on dedicated threads, and the little rtnetlink needed
//! to wire two of them with a veth pair (links up, IPv4 addresses) without any external tool.

use crate::netlink::{self, Builder, Socket, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `f` on a new thread that first moves into a fresh network namespace. Returns `None`
/// (after printing why) when not running as root; as root, failing to create the namespace
/// fails the test.
pub fn in_fresh_netns<R: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> Option<R> {
    if !is_root() {
        eprintln!("skipping {name}: needs root to create a network namespace");
        return None;
    }
    let h = std::thread::spawn(move || {
        unshare_net().expect("unshare(CLONE_NEWNET) as root");
        f()
    });
    match h.join() {
        Ok(r) => Some(r),
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Moves the calling thread into a new network namespace.
pub fn unshare_net() -> io::Result<()> {
    // SAFETY: unshare has no memory preconditions; CLONE_NEWNET affects only this thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A handle on the calling thread's current network namespace.
pub fn current_netns() -> io::Result<OwnedFd> {
    let p = CString::new("/proc/thread-self/ns/net").unwrap();
    // SAFETY: p is a valid C string.
    let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Moves the calling thread into the namespace `ns`.
pub fn enter(ns: &OwnedFd) -> io::Result<()> {
    // SAFETY: ns is an open namespace descriptor.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn ifindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name).unwrap();
    // SAFETY: c is a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i)
}

fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

fn rtnl(buf: Vec<u8>, seq: u32) -> io::Result<()> {
    let sock = Socket::open(libc::NETLINK_ROUTE)?;
    netlink::exchange(&sock, &buf, &[seq], |_| Ok(())).map_err(|e| match e {
        netlink::ExchangeError::Nack { errno, .. } => io::Error::from_raw_os_error(errno),
        netlink::ExchangeError::Io(e) => e,
        other => io::Error::other(format!("{other:?}")),
    })
}

/// Creates veth `name` here with its peer `peer` in namespace `peer_ns`.
pub fn add_veth(name: &str, peer: &str, peer_ns: &OwnedFd) -> io::Result<()> {
    let mut b = Builder::new();
    let m = b.begin_msg(
        RTM_NEWLINK,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        1,
    );
    b.put_header(&ifinfomsg(0, 0, 0));
    b.attr_str(IFLA_IFNAME, name);
    let li = b.begin_nest(IFLA_LINKINFO);
    b.attr_str(IFLA_INFO_KIND, "veth");
    let data = b.begin_nest(IFLA_INFO_DATA);
    let p = b.begin_nest(VETH_INFO_PEER);
    b.put_header(&ifinfomsg(0, 0, 0));
    b.attr_str(IFLA_IFNAME, peer);
    b.attr_u32(IFLA_NET_NS_FD, peer_ns.as_raw_fd() as u32);
    b.end_nest(p);
    b.end_nest(data);
    b.end_nest(li);
    b.end_msg(m);
    rtnl(b.finish(), 1)
}

/// Sets link `name` (in the current namespace) up.
pub fn link_up(name: &str) -> io::Result<()> {
    let idx = ifindex(name)?;
    let mut b = Builder::new();
    let m = b.begin_msg(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, 2);
    let up = libc::IFF_UP as u32;
    b.put_header(&ifinfomsg(idx, up, up));
    b.end_msg(m);
    rtnl(b.finish(), 2)
}

/// Adds `addr/prefix` to link `name` (in the current namespace).
pub fn add_addr(name: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let idx = ifindex(name)?;
    let mut b = Builder::new();
    let m = b.begin_msg(
        RTM_NEWADDR,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        3,
    );
    let mut ifa = [0u8; 8];
    ifa[0] = libc::AF_INET as u8;
    ifa[1] = prefix;
    ifa[4..8].copy_from_slice(&idx.to_ne_bytes());
    b.put_header(&ifa);
    b.attr(IFA_LOCAL, &addr.octets());
    b.attr(IFA_ADDRESS, &addr.octets());
    b.end_msg(m);
    rtnl(b.finish(), 3)
}
