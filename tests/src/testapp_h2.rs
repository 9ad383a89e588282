//! The test app's personal-intercept tools: its server also speaks HTTP/2 with prior
//! knowledge (gRPC-style: `POST` answered with the echoed body and a `grpc-status` trailer);
//! [`sequence`] sends several requests over ONE connection (HTTP/1.1 keep-alive or HTTP/2);
//! [`raw`] sends raw bytes (malformed, pipelined, oversized or slowloris requests); and
//! [`bench_headers`] measures latency and requests/s of requests carrying given headers.
//!
//! HTTP/2 routes: `GET /` → `<name>\n`; `GET /env/<VAR>` → the variable or 404;
//! `GET /header/<NAME>` → that header or 404; `POST` any
//! path → `<name>:<request body>` with trailer `grpc-status: 0`.

use crate::testapp::{self, App, Url};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use std::convert::Infallible;
use std::io;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type H2Body = http_body_util::Either<
    Full<Bytes>,
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>,
>;

/// Serves one accepted connection: HTTP/2 when it starts with the connection preface, else the
/// test app's HTTP/1.1 server.
pub async fn serve_conn(stream: TcpStream, app: App) {
    let mut first = [0u8; 3];
    let n = loop {
        match stream.peek(&mut first).await {
            Ok(n) if n >= 3 || n == 0 => break n,
            Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            Err(_) => return,
        }
    };
    if n == 3 && &first == b"PRI" {
        serve_h2(stream, app).await;
    } else {
        let _ = testapp::handle_connection(stream, &app).await;
    }
}

async fn serve_h2(stream: TcpStream, app: App) {
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let name = app.name.clone();
        async move { Ok::<_, Infallible>(h2_answer(&name, req).await) }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

async fn h2_answer(name: &str, req: hyper::Request<Incoming>) -> hyper::Response<H2Body> {
    let small = |status: u16, body: String| {
        let mut r = hyper::Response::new(H2Body::Left(Full::new(Bytes::from(body))));
        *r.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
        r
    };
    let path = req.uri().path().to_string();
    if req.method() == hyper::Method::POST {
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return small(400, format!("{e}\n")),
        };
        let mut out = format!("{name}:").into_bytes();
        out.extend_from_slice(&body);
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
        let frames = vec![
            Ok(Frame::data(Bytes::from(out))),
            Ok(Frame::trailers(trailers)),
        ];
        let mut r = hyper::Response::new(H2Body::Right(StreamBody::new(futures::stream::iter(
            frames,
        ))));
        r.headers_mut().insert(
            "content-type",
            hyper::header::HeaderValue::from_static("application/grpc"),
        );
        return r;
    }
    if path == "/" {
        return small(200, format!("{name}\n"));
    }
    if let Some(var) = path.strip_prefix("/env/") {
        return match std::env::var(var).ok().filter(|_| !var.is_empty()) {
            Some(v) => small(200, v),
            None => small(404, "not found\n".into()),
        };
    }
    if let Some(h) = path.strip_prefix("/header/") {
        return match req.headers().get(h).and_then(|v| v.to_str().ok()) {
            Some(v) => small(200, v.to_string()),
            None => small(404, "not found\n".into()),
        };
    }
    small(404, "not found\n".into())
}

/// One request of a [`sequence`]: `PATH [NAME=VALUE]...` (whitespace-separated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Step {
    pub fn parse(s: &str) -> Result<Step, String> {
        let mut it = s.split_whitespace();
        let path = it.next().unwrap_or("/").to_string();
        if !path.starts_with('/') {
            return Err(format!(
                "request {s:?}: the path comes first and starts with '/'"
            ));
        }
        let mut headers = Vec::new();
        for h in it {
            let (k, v) = h
                .split_once('=')
                .ok_or_else(|| format!("request {s:?}: header {h:?} is not NAME=VALUE"))?;
            headers.push((k.to_string(), v.to_string()));
        }
        Ok(Step { path, headers })
    }
}

/// Sends `steps` one after the other over one connection (HTTP/2 with prior knowledge when
/// `h2`; then each is a `POST` of `post` when given, gRPC-style). Returns one line per request:
/// `<status> <body, trimmed>` plus ` grpc-status=<v>` when a trailer came.
pub async fn sequence(
    url: &Url,
    steps: &[Step],
    h2: bool,
    post: Option<&str>,
) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    if !h2 {
        let mut c = testapp::Client::connect(url).await?;
        for s in steps {
            let (method, body) = match post {
                Some(b) => ("POST", b.as_bytes()),
                None => ("GET", &b""[..]),
            };
            let r = c.request(method, &s.path, &s.headers, body).await?;
            out.push(format!(
                "{} {}",
                r.status,
                String::from_utf8_lossy(&r.body).trim()
            ));
        }
        return Ok(out);
    }
    let stream = testapp::connect(url).await?;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
    tokio::spawn(conn);
    for s in steps {
        let mut b = hyper::Request::builder()
            .uri(format!("http://{}:{}{}", url.host, url.port, s.path))
            .method(if post.is_some() { "POST" } else { "GET" });
        if post.is_some() {
            b = b.header("content-type", "application/grpc");
        }
        for (k, v) in &s.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let req = b
            .body(Full::new(Bytes::from(post.unwrap_or("").to_string())))
            .map_err(io::Error::other)?;
        let resp = send.send_request(req).await.map_err(io::Error::other)?;
        let status = resp.status().as_u16();
        let collected = resp.into_body().collect().await.map_err(io::Error::other)?;
        let grpc = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .map(|v| format!(" grpc-status={v}"))
            .unwrap_or_default();
        let body = collected.to_bytes();
        out.push(format!(
            "{status} {}{grpc}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    Ok(out)
}

/// Unescapes `\r`, `\n`, `\t`, `\\`, `\xHH`, and expands `{pad:N}` to N `p` bytes.
pub fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'\\' => out.push(b'\\'),
                b'x' if i + 4 <= b.len() => {
                    let hex = std::str::from_utf8(&b[i + 2..i + 4]).map_err(|e| e.to_string())?;
                    out.push(u8::from_str_radix(hex, 16).map_err(|e| format!("\\x{hex}: {e}"))?);
                    i += 4;
                    continue;
                }
                other => return Err(format!("unknown escape \\{}", other as char)),
            }
            i += 2;
        } else if s[i..].starts_with("{pad:") {
            let end = s[i..].find('}').ok_or("unterminated {pad:N}")?;
            let n: usize = s[i + 5..i + end]
                .parse()
                .map_err(|e| format!("{{pad:N}}: {e}"))?;
            out.extend(std::iter::repeat_n(b'p', n));
            i += end + 1;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// What [`raw`] saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RawResult {
    /// Bytes written before the peer closed or everything was sent.
    pub sent: usize,
    pub total: usize,
    /// Everything received (lossy UTF-8).
    pub received: String,
    /// Whether the peer closed (EOF or reset) before `timeout`.
    pub closed: bool,
}

/// Connects, writes `data` (all at once, or `chunk` bytes every `delay` — a slow sender),
/// half-closes when all is sent, and reads until the peer closes or `timeout` passes.
pub async fn raw(
    url: &Url,
    data: &[u8],
    chunk: usize,
    delay: Duration,
    timeout: Duration,
) -> io::Result<RawResult> {
    let s = testapp::connect(url).await?;
    let (mut r, mut w) = s.into_split();
    let deadline = tokio::time::Instant::now() + timeout;
    let data = data.to_vec();
    let total = data.len();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    let writer = tokio::spawn(async move {
        let chunk = if chunk == 0 { total.max(1) } else { chunk };
        for piece in data.chunks(chunk) {
            if w.write_all(piece).await.is_err() {
                return;
            }
            let done =
                counter.fetch_add(piece.len(), std::sync::atomic::Ordering::SeqCst) + piece.len();
            if done < total && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        let _ = w.shutdown().await;
    });
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let closed = loop {
        match tokio::time::timeout_at(deadline, r.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    writer.abort();
    let sent = sent.load(std::sync::atomic::Ordering::SeqCst);
    Ok(RawResult {
        sent,
        total,
        received: String::from_utf8_lossy(&received).into_owned(),
        closed,
    })
}

/// Latency and throughput of [`bench_headers`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeaderBench {
    pub p50_us: f64,
    pub p99_us: f64,
    pub count: usize,
    pub connections: usize,
    pub secs: f64,
    pub requests_per_s: f64,
    /// `[percentile, µs]`, percentiles 1 … 99.9.
    pub percentiles: Vec<[f64; 2]>,
}

/// `GET path` with `headers` over `concurrency` keep-alive HTTP/1.1 connections, `requests` in
/// all after `warmup` unmeasured ones per connection.
pub async fn bench_headers(
    url: &Url,
    headers: &[(String, String)],
    requests: usize,
    concurrency: usize,
    warmup: usize,
) -> io::Result<HeaderBench> {
    let concurrency = concurrency.max(1);
    let mut clients = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let mut c = testapp::Client::connect(url).await?;
        for _ in 0..warmup {
            let r = c.request("GET", &url.path, headers, b"").await?;
            if r.status != 200 {
                return Err(io::Error::other(format!("HTTP {}", r.status)));
            }
        }
        clients.push(c);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let n = requests / concurrency + usize::from(i < requests % concurrency);
        let headers = headers.to_vec();
        let path = url.path.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                let r = c.request("GET", &path, &headers, b"").await?;
                if r.status != 200 {
                    return Err(io::Error::other(format!("HTTP {}", r.status)));
                }
                samples.push(t.elapsed());
            }
            Ok::<_, io::Error>(samples)
        }));
    }
    let mut samples = Vec::with_capacity(requests);
    for t in tasks {
        samples.extend(t.await.map_err(io::Error::other)??);
    }
    let secs = start.elapsed().as_secs_f64();
    samples.sort();
    let pct = |p: f64| {
        if samples.is_empty() {
            0.0
        } else {
            let i = ((samples.len() - 1) as f64 * p / 100.0).round() as usize;
            samples[i].as_secs_f64() * 1e6
        }
    };
    Ok(HeaderBench {
        p50_us: pct(50.0),
        p99_us: pct(99.0),
        count: samples.len(),
        connections: concurrency,
        secs,
        requests_per_s: samples.len() as f64 / secs.max(1e-9),
        percentiles: crate::testapp_paths::percentile_line(&samples),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_padding() {
        assert_eq!(unescape("a\\r\\n\\x16b").unwrap(), b"a\r\n\x16b");
        assert_eq!(unescape("x{pad:3}y").unwrap(), b"xpppy");
        assert!(unescape("\\q").is_err());
        assert!(unescape("{pad:x}").is_err());
    }

    #[test]
    fn steps() {
        assert_eq!(
            Step::parse("/api x-dev=a b=c=d").unwrap(),
            Step {
                path: "/api".into(),
                headers: vec![("x-dev".into(), "a".into()), ("b".into(), "c=d".into())]
            }
        );
        assert!(Step::parse("api").is_err());
        assert!(Step::parse("/ nope").is_err());
    }

    #[tokio::test]
    async fn h2_and_h1_on_one_port() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(testapp::serve_http(l, App::new("svc")));
        let url = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let steps = [
            Step::parse("/").unwrap(),
            Step::parse("/header/x-a x-a=1").unwrap(),
        ];
        assert_eq!(
            sequence(&url, &steps, false, None).await.unwrap(),
            ["200 svc", "200 1"]
        );
        assert_eq!(
            sequence(&url, &steps, true, None).await.unwrap(),
            ["200 svc", "200 1"]
        );
        assert_eq!(
            sequence(&url, &steps[..1], true, Some("ping"))
                .await
                .unwrap(),
            ["200 svc:ping grpc-status=0"]
        );
        let r = raw(
            &url,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            0,
            Duration::ZERO,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(
            r.received.starts_with("HTTP/1.1 200") && r.received.ends_with("svc\n"),
            "{r:?}"
        );
        assert_eq!(r.sent, r.total);
    }
}
