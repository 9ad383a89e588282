//! HTTP-filtered wiretaps: the copy of one matching request, sent to the wiretapping client as an
//! HTTP/1.1 request of its own (whatever the caller spoke): the request head as received (plus
//! `Host` from an HTTP/2 authority, `Connection: close`), then the body as it streams through
//! [`TeeBody`], chunked. Each copy is queued with [`crate::wiretap::CopySender::push`] and
//! delivered by [`crate::wiretap::deliver`], so a slow handler never holds up the request.

use crate::routes::Tap;
use crate::wiretap::CopySender;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use hyper::Request;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The head of the copy of `req`: chunked when the request has a body.
fn head<B: Body>(req: &Request<B>) -> Vec<u8> {
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", hyper::http::uri::PathAndQuery::as_str);
    let mut out = format!("{} {pq} HTTP/1.1\r\n", req.method()).into_bytes();
    if !req.headers().contains_key(HOST) {
        if let Some(a) = req.uri().authority() {
            out.extend_from_slice(format!("host: {a}\r\n").as_bytes());
        }
    }
    for (k, v) in req.headers() {
        if k == CONNECTION || k == CONTENT_LENGTH || k == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !req.body().is_end_stream() {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out
}

/// Starts a copy of `req` for each of `taps` and queues its head; the body follows through
/// [`TeeBody`].
pub(crate) fn start<B: Body>(
    req: &Request<B>,
    taps: Vec<Tap>,
    shared: &crate::forward::Shared,
    service_port: u16,
) -> Vec<CopySender> {
    if taps.is_empty() {
        return Vec::new();
    }
    let head = head(req);
    let mut copies = crate::wiretap::start(taps, shared, service_port);
    for c in &mut copies {
        c.push(&head);
    }
    copies
}

/// A request body on its way upstream whose data is also queued, chunked, for the request's
/// copies (none: a plain pass-through).
pub(crate) struct TeeBody {
    inner: Incoming,
    copies: Vec<CopySender>,
}

impl TeeBody {
    /// `inner`, also copied to `copies` (which end with it).
    pub(crate) fn new(inner: Incoming, copies: Vec<CopySender>) -> Self {
        let mut b = TeeBody { inner, copies };
        if b.inner.is_end_stream() {
            b.copies.clear();
        }
        b
    }
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if self.copies.is_empty() {
            return r;
        }
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref().filter(|d| !d.is_empty()) {
                    let mut chunk = format!("{:x}\r\n", d.len()).into_bytes();
                    chunk.extend_from_slice(d);
                    chunk.extend_from_slice(b"\r\n");
                    for c in &mut self.copies {
                        c.push(&chunk);
                    }
                }
            }
            Poll::Ready(None) => {
                for c in &mut self.copies {
                    c.push(b"0\r\n\r\n");
                }
                self.copies.clear();
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_head_is_http1_and_closes() {
        let req = Request::builder()
            .method("POST")
            .uri("http://web:8080/api?x=1")
            .header("x-dev", "alice")
            .header("content-length", "5")
            .header("connection", "keep-alive")
            .body(http_body_util::Full::new(Bytes::from_static(b"hello")))
            .unwrap();
        let h = String::from_utf8(head(&req)).unwrap();
        assert_eq!(
            h,
            "POST /api?x=1 HTTP/1.1\r\nhost: web:8080\r\nx-dev: alice\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        let get = Request::builder()
            .uri("/")
            .header("host", "web")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        assert_eq!(
            String::from_utf8(head(&get)).unwrap(),
            "GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n"
        );
    }
}
