//! Minimal netlink plumbing shared by the nf_tables code (and the test helpers that build network
//! namespaces): a raw `AF_NETLINK` socket opened through libc, a message/attribute builder with
//! netlink alignment, a reply parser, and one request/acknowledge exchange loop. No binaries are
//! spawned and no GPL code is involved, so it works inside a `FROM scratch` image.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

pub(crate) const NLMSG_HDRLEN: usize = 16;
pub(crate) const NLA_HDRLEN: usize = 4;

pub(crate) const NLMSG_NOOP: u16 = 1;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLMSG_OVERRUN: u16 = 4;

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_ROOT: u16 = 0x100;
pub(crate) const NLM_F_MATCH: u16 = 0x200;
pub(crate) const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
/// Used by the test helpers that create links and addresses.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_APPEND: u16 = 0x800;

/// Marks an attribute whose payload is itself a list of attributes.
pub(crate) const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// How long a request may wait for the kernel's answer. The kernel answers netlink requests
/// synchronously, so this only guards against a broken kernel or a lost dump.
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// An open netlink socket bound to a kernel-assigned port id.
pub(crate) struct Socket {
    fd: OwnedFd,
}

impl Socket {
    /// Opens and binds a netlink socket of `protocol` (e.g. `NETLINK_NETFILTER`).
    pub(crate) fn open(protocol: libc::c_int) -> io::Result<Socket> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value (pid 0 = kernel assigns).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: addr is a valid sockaddr_nl and the length matches it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref::<libc::sockaddr_nl>(&addr).cast::<libc::sockaddr>(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: REPLY_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: tv is a valid timeval and the length matches it.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref::<libc::timeval>(&tv).cast::<libc::c_void>(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Socket { fd })
    }

    /// Sends one buffer (one or more messages) to the kernel.
    pub(crate) fn send(&self, buf: &[u8]) -> io::Result<()> {
        // SAFETY: see `open`.
        let mut dst: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        dst.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let n = retry_interrupted(|| {
            // SAFETY: buf and dst are valid for the given lengths.
            unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    buf.as_ptr().cast::<libc::c_void>(),
                    buf.len(),
                    0,
                    std::ptr::from_ref::<libc::sockaddr_nl>(&dst).cast::<libc::sockaddr>(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            }
        })?;
        if n != buf.len() {
            return Err(io::Error::other("short netlink send"));
        }
        Ok(())
    }

    /// Receives one datagram. `nonblocking` returns `WouldBlock` at once when nothing is queued;
    /// otherwise the socket's receive timeout applies.
    pub(crate) fn recv(&self, buf: &mut [u8], nonblocking: bool) -> io::Result<usize> {
        let flags = if nonblocking { libc::MSG_DONTWAIT } else { 0 } | libc::MSG_TRUNC;
        let n = retry_interrupted(|| {
            // SAFETY: buf is valid for writes of buf.len() bytes.
            unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast::<libc::c_void>(),
                    buf.len(),
                    flags,
                )
            }
        })?;
        if n > buf.len() {
            return Err(io::Error::other(format!(
                "netlink reply of {n} bytes truncated to {}",
                buf.len()
            )));
        }
        Ok(n)
    }
}

/// Runs a system call that returns a byte count (negative: failed, reason in `errno`) again
/// while it is interrupted by a signal (`EINTR`).
fn retry_interrupted(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Appends netlink messages and their attributes to one buffer.
#[derive(Default)]
pub(crate) struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    pub(crate) fn new() -> Builder {
        Builder {
            buf: Vec::with_capacity(1024),
        }
    }

    /// Starts a message; returns its offset for [`Builder::end_msg`].
    pub(crate) fn begin_msg(&mut self, ty: u16, flags: u16, seq: u32) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in end_msg
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        start
    }

    /// Appends a fixed family header (nfgenmsg, ifinfomsg, ...), padded to 4 bytes.
    pub(crate) fn put_header(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.pad();
    }

    pub(crate) fn end_msg(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    pub(crate) fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = (NLA_HDRLEN + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// A NUL-terminated string attribute.
    pub(crate) fn attr_str(&mut self, ty: u16, s: &str) {
        let len = (NLA_HDRLEN + s.len() + 1) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    /// A big-endian u32 (nf_tables' convention for numbers).
    pub(crate) fn attr_be32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    /// A host-endian u32 (rtnetlink's convention).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn attr_u32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_ne_bytes());
    }

    /// Starts a nested attribute; returns its offset for [`Builder::end_nest`].
    pub(crate) fn begin_nest(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        start
    }

    pub(crate) fn end_nest(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }

    fn pad(&mut self) {
        let n = align4(self.buf.len()) - self.buf.len();
        self.buf.extend(std::iter::repeat_n(0u8, n));
    }
}

/// One received netlink message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Msg<'a> {
    pub ty: u16,
    #[cfg_attr(not(test), allow(dead_code))]
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

fn ne_u16(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}

fn ne_u32(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

/// Splits a datagram into messages.
pub(crate) fn messages(mut buf: &[u8]) -> impl Iterator<Item = Result<Msg<'_>, Malformed>> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = ne_u32(&buf[0..4]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            buf = &[];
            return Some(Err(Malformed::Length(len)));
        }
        let msg = Msg {
            ty: ne_u16(&buf[4..6]),
            flags: ne_u16(&buf[6..8]),
            seq: ne_u32(&buf[8..12]),
            payload: &buf[NLMSG_HDRLEN..len],
        };
        buf = &buf[align4(len).min(buf.len())..];
        Some(Ok(msg))
    })
}

/// Iterates the attributes in `buf` as (type without flag bits, payload). Stops at the first
/// malformed attribute.
pub(crate) fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < NLA_HDRLEN {
            return None;
        }
        let len = ne_u16(&buf[0..2]) as usize;
        if len < NLA_HDRLEN || len > buf.len() {
            buf = &[];
            return None;
        }
        let item = (ne_u16(&buf[2..4]) & NLA_TYPE_MASK, &buf[NLA_HDRLEN..len]);
        buf = &buf[align4(len).min(buf.len())..];
        Some(item)
    })
}

/// Finds the first attribute of type `ty`.
pub(crate) fn find_attr(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _)| *t == ty).map(|(_, d)| d)
}

/// Reads a NUL-terminated string attribute payload.
pub(crate) fn attr_string(data: &[u8]) -> String {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

pub(crate) fn be32(data: &[u8]) -> Option<u32> {
    data.get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Decodes an `NLMSG_ERROR` payload into (errno as a positive number or 0, sequence number of the
/// request it answers).
pub(crate) fn parse_error(payload: &[u8]) -> Option<(i32, u32)> {
    if payload.len() < 4 + NLMSG_HDRLEN {
        return None;
    }
    let code = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
    let seq = ne_u32(&payload[4 + 8..4 + 12]);
    Some((-code, seq))
}

/// Why a netlink reply could not be understood (the text is what `nf_tables` errors show).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// A message header names a length outside the datagram.
    #[error("bad netlink message length {0}")]
    Length(usize),
    /// An `NLMSG_ERROR` too short to hold an errno and the request's header.
    #[error("short NLMSG_ERROR")]
    ShortError,
    /// An nf_tables message without its `nfgenmsg` header.
    #[error("nf_tables message without nfgenmsg")]
    NoNfgenmsg,
    /// A `sock_diag` answer shorter than `struct inet_diag_msg`'s socket id.
    #[error("short inet_diag_msg")]
    ShortDiag,
}

/// How an exchange failed.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    Io(io::Error),
    /// The kernel rejected the request with sequence number `seq`.
    Nack {
        seq: u32,
        errno: i32,
    },
    Timeout,
    Malformed(Malformed),
}

/// Sends `buf` and reads the replies until every sequence number in `expect` has been answered
/// (by an acknowledgement, an error or the end of a dump). Data messages are handed to
/// `on_data`. The first error reported by the kernel wins; the remaining queued replies are
/// drained so the socket is left clean.
pub(crate) fn exchange(
    sock: &Socket,
    buf: &[u8],
    expect: &[u32],
    mut on_data: impl FnMut(&Msg<'_>) -> Result<(), Malformed>,
) -> Result<(), ExchangeError> {
    sock.send(buf).map_err(ExchangeError::Io)?;
    let mut pending: Vec<u32> = expect.to_vec();
    let mut first_err: Option<ExchangeError> = None;
    let mut rbuf = vec![0u8; 64 * 1024];
    loop {
        // Once everything is answered (or something failed), only read what is already queued:
        // the kernel answers synchronously, so a late error cannot hide behind the last ack.
        let draining = first_err.is_some() || pending.is_empty();
        let n = match sock.recv(&mut rbuf, draining) {
            Ok(n) => n,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                return match first_err {
                    Some(err) => Err(err),
                    None if pending.is_empty() => Ok(()),
                    None => Err(ExchangeError::Timeout),
                };
            }
            Err(e) => return Err(first_err.unwrap_or(ExchangeError::Io(e))),
        };
        for msg in messages(&rbuf[..n]) {
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    first_err.get_or_insert(ExchangeError::Malformed(e));
                    continue;
                }
            };
            match msg.ty {
                NLMSG_NOOP | NLMSG_OVERRUN => {}
                NLMSG_ERROR => {
                    let Some((errno, seq)) = parse_error(msg.payload) else {
                        first_err.get_or_insert(ExchangeError::Malformed(Malformed::ShortError));
                        continue;
                    };
                    pending.retain(|s| *s != seq);
                    if errno != 0 {
                        first_err.get_or_insert(ExchangeError::Nack { seq, errno });
                    }
                }
                NLMSG_DONE => {
                    pending.retain(|s| *s != msg.seq);
                }
                _ => {
                    if first_err.is_none() {
                        if let Err(e) = on_data(&msg) {
                            first_err = Some(ExchangeError::Malformed(e));
                        }
                    }
                }
            }
        }
    }
}

/// The index of network interface `name` in the calling thread's network namespace
/// (`if_nametoindex(3)`), the number nf_tables' `oif`/`iif` compare.
pub fn interface_index(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name with NUL"))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_aligns_and_nests() {
        let mut b = Builder::new();
        let m = b.begin_msg(0x0a00, NLM_F_REQUEST, 7);
        b.put_header(&[2, 0, 0, 0]);
        b.attr_str(1, "abc"); // 4 + 4 = 8, no padding
        let n = b.begin_nest(2);
        b.attr(1, &[9]); // 5 -> padded to 8
        b.end_nest(n);
        b.end_msg(m);
        let buf = b.finish();
        assert_eq!(buf.len(), 16 + 4 + 8 + 4 + 8);
        assert_eq!(ne_u32(&buf[0..4]) as usize, buf.len());
        let msgs: Vec<_> = messages(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!((msgs[0].ty, msgs[0].seq), (0x0a00, 7));
        let a: Vec<_> = attrs(&msgs[0].payload[4..]).collect();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0], (1, &b"abc\0"[..]));
        assert_eq!(a[1].0, 2, "nested flag is masked off");
        // the nest header says 4 + 5 (inner attr without trailing pad) + 3 pad = 12
        assert_eq!(ne_u16(&buf[16 + 4 + 8..]) as usize, 12);
        assert_eq!(
            ne_u16(&buf[16 + 4 + 8 + 2..]),
            2 | NLA_F_NESTED,
            "nested flag is set on the wire"
        );
        assert_eq!(find_attr(a[1].1, 1), Some(&[9u8][..]));
    }

    #[test]
    fn parses_errors_and_rejects_bad_lengths() {
        let mut b = Builder::new();
        let m = b.begin_msg(NLMSG_ERROR, 0, 0);
        b.put_header(&(-1i32).to_ne_bytes());
        // the echoed request header: len, type, flags, seq=42, pid
        b.put_header(&16u32.to_ne_bytes());
        b.put_header(&[0, 0, 0, 0]);
        b.put_header(&42u32.to_ne_bytes());
        b.put_header(&0u32.to_ne_bytes());
        b.end_msg(m);
        let buf = b.finish();
        let msg = messages(&buf).next().unwrap().unwrap();
        assert_eq!(parse_error(msg.payload), Some((1, 42)));

        let mut bad = buf.clone();
        bad[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(messages(&bad).next().unwrap().is_err());
        // an attribute claiming more bytes than exist ends the iteration
        assert_eq!(attrs(&[200, 0, 1, 0, 1, 2]).count(), 0);
    }
}
