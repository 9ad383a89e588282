//! The little packet parsing the daemon does itself before packets reach the userspace stack:
//! which flow an IP packet belongs to, whether it opens a TCP connection (a SYN without ACK),
//! and the RST that refuses such a connection when the cluster target cannot be reached. Every
//! function here takes untrusted bytes from the TUN device and must never panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// What the daemon needs to know about one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub proto: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// TCP: SYN set and ACK clear (a connection attempt).
    pub syn: bool,
    /// TCP: the sequence number.
    pub seq: u32,
}

/// Parses an IPv4 or IPv6 packet carrying TCP or UDP; `None` for anything else or anything
/// malformed (short, bad lengths, fragments after the first, bad header checksum).
pub fn parse(pkt: &[u8]) -> Option<Flow> {
    let version = pkt.first()? >> 4;
    let (src, dst, proto, l4) = match version {
        4 => {
            let ihl = ((pkt[0] & 0x0f) as usize) * 4;
            if ihl < 20 || pkt.len() < ihl {
                return None;
            }
            let total = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
            if total < ihl || total > pkt.len() {
                return None;
            }
            // A fragment other than the first has no transport header.
            let frag = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff;
            if frag != 0 || checksum(&pkt[..ihl]) != 0 {
                return None;
            }
            let src = IpAddr::V4(Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]));
            (src, dst, pkt[9], &pkt[ihl..total])
        }
        6 => {
            if pkt.len() < 40 {
                return None;
            }
            let payload = u16::from_be_bytes([pkt[4], pkt[5]]) as usize;
            if 40 + payload > pkt.len() {
                return None;
            }
            let a: [u8; 16] = pkt[8..24].try_into().ok()?;
            let b: [u8; 16] = pkt[24..40].try_into().ok()?;
            // Extension headers are not followed: such packets are not ours to gate.
            (
                IpAddr::V6(Ipv6Addr::from(a)),
                IpAddr::V6(Ipv6Addr::from(b)),
                pkt[6],
                &pkt[40..40 + payload],
            )
        }
        _ => return None,
    };
    match proto {
        PROTO_TCP => {
            if l4.len() < 20 {
                return None;
            }
            let off = ((l4[12] >> 4) as usize) * 4;
            if off < 20 || off > l4.len() {
                return None;
            }
            let flags = l4[13];
            Some(Flow {
                proto,
                src: SocketAddr::new(src, u16::from_be_bytes([l4[0], l4[1]])),
                dst: SocketAddr::new(dst, u16::from_be_bytes([l4[2], l4[3]])),
                syn: flags & 0x02 != 0 && flags & 0x10 == 0 && flags & 0x04 == 0,
                seq: u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]),
            })
        }
        PROTO_UDP => {
            if l4.len() < 8 {
                return None;
            }
            let len = u16::from_be_bytes([l4[4], l4[5]]) as usize;
            if len < 8 || len > l4.len() {
                return None;
            }
            Some(Flow {
                proto,
                src: SocketAddr::new(src, u16::from_be_bytes([l4[0], l4[1]])),
                dst: SocketAddr::new(dst, u16::from_be_bytes([l4[2], l4[3]])),
                syn: false,
                seq: 0,
            })
        }
        _ => None,
    }
}

/// The internet checksum (RFC 1071) of `data`; 0 when `data` includes a correct checksum.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(0, data))
}

fn sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Fills in the checksum of the TCP segment `tcp` (header + payload) sent from address `src`
/// to `dst` (both IPv4 or both IPv6 octets), over the pseudo header and the segment.
fn set_tcp_checksum(tcp: &mut [u8], src: &[u8], dst: &[u8]) {
    let mut pseudo = sum(sum(0, src), dst);
    pseudo += u32::from(PROTO_TCP) + tcp.len() as u32;
    let c = !fold(sum(pseudo, tcp));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
}

/// The RST+ACK that refuses the connection a SYN (`flow`) asked for, as the target itself would
/// answer: from the SYN's destination to its source, acknowledging the SYN.
pub fn rst_for_syn(flow: &Flow) -> Option<Vec<u8>> {
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&flow.dst.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&flow.src.port().to_be_bytes());
    // seq 0, ack = ISN + 1
    tcp[8..12].copy_from_slice(&flow.seq.wrapping_add(1).to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x14; // RST | ACK
    match (flow.dst.ip(), flow.src.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&40u16.to_be_bytes());
            ip[6] = 0x40; // don't fragment
            ip[8] = 64;
            ip[9] = PROTO_TCP;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let c = checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            set_tcp_checksum(&mut tcp, &s.octets(), &d.octets());
            Some([&ip[..], &tcp[..]].concat())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&20u16.to_be_bytes());
            ip[6] = PROTO_TCP;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            set_tcp_checksum(&mut tcp, &s.octets(), &d.octets());
            Some([&ip[..], &tcp[..]].concat())
        }
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid IPv4 TCP SYN from `src` to `dst` with `options` bytes of TCP options.
    pub fn syn_v4(src: SocketAddr, dst: SocketAddr, seq: u32, options: &[u8]) -> Vec<u8> {
        let f = Flow {
            proto: PROTO_TCP,
            src: dst,
            dst: src,
            syn: true,
            seq: seq.wrapping_sub(1),
        };
        // Reuse the RST builder for the layout, then turn it into a SYN from src to dst.
        let mut p = rst_for_syn(&f).unwrap();
        let opt_len = options.len().div_ceil(4) * 4;
        p[33] = 0x02;
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&[0; 4]);
        p[32] = (((20 + opt_len) / 4) << 4) as u8;
        p.extend_from_slice(options);
        p.resize(40 + opt_len, 0);
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        // TCP checksum over the pseudo header.
        p[36..38].copy_from_slice(&[0, 0]);
        let mut pseudo = sum(0, &p[12..20]);
        pseudo += u32::from(PROTO_TCP) + (p.len() - 20) as u32;
        let c = !fold(sum(pseudo, &p[20..]));
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn syn_is_recognised_and_refused_with_a_valid_rst() {
        let src: SocketAddr = "172.17.0.3:40000".parse().unwrap();
        let dst: SocketAddr = "172.20.0.5:8080".parse().unwrap();
        let syn = syn_v4(src, dst, 1000, &[2, 4, 5, 0xb4]);
        let f = parse(&syn).unwrap();
        assert_eq!((f.src, f.dst, f.syn, f.seq), (src, dst, true, 1000));
        let rst = rst_for_syn(&f).unwrap();
        let r = parse(&rst).unwrap();
        assert_eq!((r.src, r.dst, r.syn), (dst, src, false));
        assert_eq!(rst[33], 0x14);
        assert_eq!(u32::from_be_bytes(rst[28..32].try_into().unwrap()), 1001);
        // TCP checksum over the pseudo header verifies.
        let mut pseudo = sum(0, &rst[12..20]);
        pseudo += u32::from(PROTO_TCP) + 20;
        assert_eq!(!fold(sum(pseudo, &rst[20..])), 0);
    }

    #[test]
    fn malformed_packets_are_rejected() {
        let src: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let dst: SocketAddr = "10.0.0.2:2".parse().unwrap();
        let good = syn_v4(src, dst, 7, &[]);
        for n in 0..good.len() {
            assert!(parse(&good[..n]).is_none(), "truncated to {n}");
        }
        let mut bad_sum = good.clone();
        bad_sum[10] ^= 0xff;
        assert!(parse(&bad_sum).is_none());
        let mut bad_off = good.clone();
        bad_off[32] = 0xf0; // data offset 60 > segment
        assert!(parse(&bad_off).is_none());
        assert!(parse(&[0x60; 39]).is_none());
        assert!(parse(&[]).is_none());
    }
}
