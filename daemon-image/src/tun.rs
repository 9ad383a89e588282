//! The daemon's TUN device and its routes: creates `tp0` (needs only NET_ADMIN and
//! `/dev/net/tun`), and installs the routes a [`crate::subnets::Plan`] decided with the
//! `SIOCADDRT` ioctl — no `ip` binary exists in the scratch image.

use crate::subnets::{Cidr, Existing};
use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;

/// The device name.
pub const DEVICE: &str = "tp0";
/// The device's own address (link-local range, never a cluster address).
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 1);

/// Creates and brings up the TUN device.
pub fn create(mtu: u16) -> io::Result<tun_rs::AsyncDevice> {
    tun_rs::DeviceBuilder::new()
        .name(DEVICE)
        .ipv4(ADDRESS, 32u8, None)
        .mtu(mtu)
        .build_async()
}

/// The container's current IPv4 routes.
pub fn existing_routes() -> Vec<Existing> {
    crate::subnets::parse_proc_route(
        &std::fs::read_to_string("/proc/net/route").unwrap_or_default(),
    )
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; sockaddr is plain bytes.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Adds a route to `net` through `dev` (via `gateway` when given).
pub fn add_route(net: Cidr, dev: &str, gateway: Option<Ipv4Addr>) -> io::Result<()> {
    let dev_c = CString::new(dev).map_err(|_| io::Error::other("bad device name"))?;
    // SAFETY: rtentry is plain data; all-zero is a valid starting value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(net.addr);
    rt.rt_genmask = sockaddr(net.netmask());
    rt.rt_flags = libc::RTF_UP;
    if net.prefix == 32 {
        rt.rt_flags |= libc::RTF_HOST;
    }
    if let Some(g) = gateway {
        rt.rt_gateway = sockaddr(g);
        rt.rt_flags |= libc::RTF_GATEWAY;
    }
    rt.rt_dev = dev_c.as_ptr() as *mut libc::c_char;
    // SAFETY: a plain datagram socket for the ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: rt is a valid rtentry whose rt_dev outlives the call.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCADDRT as _, &rt) };
    let err = io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc < 0 {
        if err.raw_os_error() == Some(libc::EEXIST) {
            return Ok(());
        }
        return Err(io::Error::new(
            err.kind(),
            format!("adding route {net} dev {dev}: {err}"),
        ));
    }
    Ok(())
}
