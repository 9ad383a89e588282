//! Protocol detection on a port with personal intercepts: from the first bytes a caller sends,
//! tell HTTP/1.x (a request line `METHOD SP target SP HTTP/1.`), HTTP/2 with prior knowledge
//! (the connection preface) and anything else (TLS, databases, garbage) apart, without
//! consuming more than the bytes looked at. The decision is final: more bytes never change it.

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest method token accepted.
const MAX_METHOD: usize = 32;
/// Bytes examined at most; a request line still undecided by then is treated as HTTP/1 (its
/// server answers 414/431/400).
pub const MAX_SNIFF: usize = 8 * 1024;

/// What a connection's first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 connection preface.
    Http2,
    /// Not HTTP: splice it to the app untouched.
    Other,
    /// Consistent with HTTP so far; read more.
    NeedMore,
}

/// Classifies the first bytes of a connection.
pub fn sniff(buf: &[u8]) -> Sniff {
    if buf.is_empty() {
        return Sniff::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Sniff::Http2
        } else {
            Sniff::NeedMore
        };
    }
    let decided = request_line(buf);
    if decided == Sniff::NeedMore && buf.len() >= MAX_SNIFF {
        return Sniff::Http1;
    }
    decided
}

/// The decision when no more bytes come in time: nothing at all is not HTTP (a protocol where
/// the server speaks first); the start of the HTTP/2 preface is HTTP/2; anything else still
/// consistent with a request line is a slow HTTP/1 sender, left to the HTTP server's head
/// timeout.
pub fn sniff_stalled(buf: &[u8]) -> Sniff {
    match sniff(buf) {
        Sniff::NeedMore if buf.is_empty() => Sniff::Other,
        Sniff::NeedMore if H2_PREFACE.starts_with(buf) => Sniff::Http2,
        Sniff::NeedMore => Sniff::Http1,
        decided => decided,
    }
}

/// `METHOD SP request-target SP HTTP/1.`
fn request_line(buf: &[u8]) -> Sniff {
    const VERSION: &[u8] = b"HTTP/1.";
    let mut i = 0;
    // method
    while i < buf.len() && protocol::filters::is_tchar(buf[i]) {
        i += 1;
        if i > MAX_METHOD {
            return Sniff::Other;
        }
    }
    if i == buf.len() {
        return Sniff::NeedMore;
    }
    if i == 0 || buf[i] != b' ' {
        return Sniff::Other;
    }
    i += 1;
    // request-target: visible characters
    let start = i;
    while i < buf.len() && buf[i] > b' ' && buf[i] != 0x7f {
        i += 1;
    }
    if i == buf.len() {
        return Sniff::NeedMore;
    }
    if i == start || buf[i] != b' ' {
        return Sniff::Other;
    }
    i += 1;
    let rest = &buf[i..];
    let n = rest.len().min(VERSION.len());
    if rest[..n] != VERSION[..n] {
        Sniff::Other
    } else if n == VERSION.len() {
        Sniff::Http1
    } else {
        Sniff::NeedMore
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_shapes() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniff::Http1);
        assert_eq!(sniff(b"POST /a?b=c HTTP/1.0\r\n"), Sniff::Http1);
        assert_eq!(sniff(b"M-SEARCH * HTTP/1.1\r\n"), Sniff::Http1);
        assert_eq!(sniff(H2_PREFACE), Sniff::Http2);
        assert_eq!(sniff(b"PRI * HTTP/2.0\r\n"), Sniff::NeedMore);
        assert_eq!(sniff(b"GET /"), Sniff::NeedMore);
        assert_eq!(sniff(b"GET / HTT"), Sniff::NeedMore);
        assert_eq!(sniff(b""), Sniff::NeedMore);
        // TLS ClientHello, SSH, Redis, a bare newline, HTTP/2.0 without the preface
        for other in [
            &b"\x16\x03\x01\x02\x00\x01"[..],
            b"SSH-2.0-OpenSSH_9.0\r\n",
            b"*1\r\n$4\r\nPING\r\n",
            b"\r\n",
            b"GET / HTTP/2.0\r\n",
            b"GET  / HTTP/1.1",
            b"GET /\x01 HTTP/1.1",
            b" GET / HTTP/1.1",
        ] {
            assert_eq!(sniff(other), Sniff::Other, "{other:?}");
        }
        let long_method = vec![b'A'; MAX_METHOD + 1];
        assert_eq!(sniff(&long_method), Sniff::Other);
        let mut long_target = b"GET /".to_vec();
        long_target.resize(MAX_SNIFF, b'a');
        assert_eq!(
            sniff(&long_target),
            Sniff::Http1,
            "huge targets go to HTTP (414)"
        );
    }

    fn method() -> impl Strategy<Value = String> {
        "[A-Z][A-Z-]{0,15}"
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Arbitrary bytes never panic, and a decision never changes when more bytes arrive.
        #[test]
        fn decisions_are_final(data in proptest::collection::vec(any::<u8>(), 0..200), cut in 0usize..200) {
            let cut = cut.min(data.len());
            let early = sniff(&data[..cut]);
            let late = sniff(&data);
            if early != Sniff::NeedMore {
                prop_assert_eq!(early, late);
            }
        }

        /// Any well-formed request line is HTTP/1 at every split point where it is decided,
        /// and undecided (never Other) before that.
        #[test]
        fn request_lines_are_http1(m in method(), path in "/[!-~]{0,40}", minor in 0u8..2, headers in "([a-z]{1,8}: [ -~]{0,20}\r\n){0,4}") {
            let req = format!("{m} {path} HTTP/1.{minor}\r\n{headers}\r\n");
            prop_assert_eq!(sniff(req.as_bytes()), Sniff::Http1);
            for i in 0..req.len() {
                prop_assert_ne!(sniff(&req.as_bytes()[..i]), Sniff::Other);
            }
        }

        /// The h2 preface followed by anything is HTTP/2; TLS records are never HTTP.
        #[test]
        fn preface_and_tls(tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut b = H2_PREFACE.to_vec();
            b.extend_from_slice(&tail);
            prop_assert_eq!(sniff(&b), Sniff::Http2);
            let mut tls = vec![0x16, 0x03];
            tls.extend_from_slice(&tail);
            prop_assert_eq!(sniff(&tls), Sniff::Other);
        }
    }
}
