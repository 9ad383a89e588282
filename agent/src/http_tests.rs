//! In-process tests of per-request routing: a real listener served by [`crate::http_route`],
//! an HTTP app and a stub tunnel whose "clients" answer with their intercept id, all on
//! loopback. Covers HTTP/1.1 keep-alive and HTTP/2 connections whose requests alternate
//! between destinations, routing changes between requests, non-HTTP and TLS bytes, oversized
//! heads, pipelining, upgrades, pooling across callers and a request body streamed both ways.

use super::*;
use crate::routes::Routes;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use protocol::manager::{InterceptInfo, InterceptSnapshot, InterceptSpec};
use std::convert::Infallible;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP/1+2 server answering `<name> <path>` (or echoing a POST body prefixed by `<name>:`).
async fn http_server(
    name: String,
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
) {
    let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        let name = name.clone();
        async move {
            // `Upgrade: echo`: switch protocols, greet with `<name>:`, then echo
            if req.headers().get("upgrade").is_some_and(|v| v == "echo") {
                let on = hyper::upgrade::on(&mut req);
                let greeting = format!("{name}:");
                tokio::spawn(async move {
                    if let Ok(up) = on.await {
                        let mut io = TokioIo::new(up);
                        let _ = io.write_all(greeting.as_bytes()).await;
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = io.read(&mut buf).await {
                            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                });
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                r.headers_mut().insert(
                    "connection",
                    hyper::header::HeaderValue::from_static("upgrade"),
                );
                r.headers_mut()
                    .insert("upgrade", hyper::header::HeaderValue::from_static("echo"));
                return Ok::<_, Infallible>(r);
            }
            let path = req.uri().path().to_string();
            let body = if req.method() == hyper::Method::POST {
                let b = req
                    .into_body()
                    .collect()
                    .await
                    .map(http_body_util::Collected::to_bytes)
                    .unwrap_or_default();
                let mut v = format!("{name}:").into_bytes();
                v.extend_from_slice(&b);
                Bytes::from(v)
            } else {
                Bytes::from(format!("{name} {path}"))
            };
            Ok::<_, Infallible>(Response::new(Full::new(body)))
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
        .await;
}

struct Setup {
    listen: SocketAddr,
    routes: watch::Sender<Routes>,
    /// Intercept ids the stub tunnel saw, one per tunnel connection.
    tunnels: Arc<std::sync::Mutex<Vec<String>>>,
}

fn personal(id: &str, port: u16, header: &str) -> InterceptInfo {
    InterceptInfo {
        spec: Some(InterceptSpec {
            workload: "web".into(),
            namespace: "shop".into(),
            http_headers: vec![header.into()],
            ..Default::default()
        }),
        id: id.into(),
        state: protocol::manager::InterceptState::Active as i32,
        service_port: u32::from(port),
        ..Default::default()
    }
}

async fn setup() -> Setup {
    // the app
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = app.accept().await {
            tokio::spawn(http_server("app".into(), s));
        }
    });
    // the tunnel: each connection names its intercept; its "client" answers with that id
    let tunnel = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tunnel_addr = tunnel.local_addr().unwrap();
    let tunnels = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = tunnels.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tunnel.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let (_, h) = protocol::tunnel::read_header_timeout(&mut s, Duration::from_secs(5))
                    .await
                    .unwrap();
                seen.lock().unwrap().push(h.intercept_id.clone());
                // The manager's answer; "gone" stands for a client that cannot deliver.
                let error = (h.intercept_id == "gone")
                    .then(|| protocol::tunnel::HeaderError::Other("client gone".into()));
                let answer = h.answer(error.clone());
                let role = protocol::tunnel::Role::Client;
                if protocol::tunnel::write_header(&mut s, role, &answer)
                    .await
                    .is_err()
                    || error.is_some()
                {
                    return;
                }
                http_server(h.intercept_id, s).await;
            });
        }
    });
    let (routes, rx) = watch::channel(Routes::none());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = listener.local_addr().unwrap();
    let shared = Arc::new(forward::Shared {
        tunnel_addr: tunnel_addr.to_string(),
        active: AtomicUsize::new(0),
        pool: Default::default(),
        token: None,
        counters: Default::default(),
        offered: Default::default(),
    });
    tokio::spawn(forward::accept_loop(listener, 8080, app_addr, rx, shared));
    let s = Setup {
        listen,
        routes,
        tunnels,
    };
    s.set(&[("A", "x-dev=a"), ("B", "x-dev=b")]);
    s
}

impl Setup {
    fn set(&self, intercepts: &[(&str, &str)]) {
        let snap = InterceptSnapshot {
            intercepts: intercepts
                .iter()
                .map(|(id, h)| personal(id, 8080, h))
                .collect(),
            ..Default::default()
        };
        self.routes
            .send_replace(Routes::from_snapshot(&snap, "shop", "web", "s1"));
    }
}

async fn h1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn h2(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

fn req(uri: &str, dev: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::builder().uri(uri);
    if let Some(d) = dev {
        b = b.header("X-Dev", d);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

async fn text(r: Response<hyper::body::Incoming>) -> String {
    let b = r.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&b).into_owned()
}

#[tokio::test]
async fn http1_keep_alive_requests_alternate_between_clients_and_the_app() {
    let s = setup().await;
    let mut c = h1(s.listen).await;
    for (dev, want) in [
        (Some("a"), "A /"),
        (Some("b"), "B /"),
        (None, "app /"),
        (Some("a"), "A /"),
        (Some("c"), "app /"),
        (Some("b"), "B /"),
    ] {
        c.ready().await.unwrap();
        let r = c.send_request(req("/", dev)).await.unwrap();
        assert_eq!(text(r).await, want, "x-dev {dev:?}");
    }
    // one tunnel connection per intercept, reused
    let mut t = s.tunnels.lock().unwrap().clone();
    t.sort();
    assert_eq!(t, ["A", "B"]);
    // B leaves between two requests of the same connection: its traffic returns to the app
    s.set(&[("A", "x-dev=a")]);
    c.ready().await.unwrap();
    assert_eq!(
        text(c.send_request(req("/", Some("b"))).await.unwrap()).await,
        "app /"
    );
    c.ready().await.unwrap();
    assert_eq!(
        text(c.send_request(req("/", Some("a"))).await.unwrap()).await,
        "A /"
    );
}

#[tokio::test]
async fn http2_streams_are_routed_one_by_one() {
    let s = setup().await;
    let c = h2(s.listen).await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let (dev, want) = match i % 3 {
                0 => (Some("a"), "A"),
                1 => (Some("b"), "B"),
                _ => (None, "app"),
            };
            let r = c
                .send_request(req(&format!("http://web/{i}"), dev))
                .await
                .unwrap();
            assert_eq!(r.version(), hyper::Version::HTTP_2);
            assert_eq!(text(r).await, format!("{want} /{i}"));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn bodies_stream_through_to_the_client() {
    let s = setup().await;
    let mut c = h1(s.listen).await;
    let body = vec![b'z'; 3 * 1024 * 1024];
    let r = Request::builder()
        .method("POST")
        .uri("/echo")
        .header("x-dev", "a")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let got = c
        .send_request(r)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&got[..2], b"A:");
    assert!(got[2..] == body[..], "body changed in transit");
}

async fn raw(addr: SocketAddr, data: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(data).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_by_their_destinations() {
    let s = setup().await;
    let out = raw(
        s.listen,
        b"GET /1 HTTP/1.1\r\nHost: w\r\nX-Dev: b\r\n\r\nGET /2 HTTP/1.1\r\nHost: w\r\n\r\nGET /3 HTTP/1.1\r\nHost: w\r\nx-dev: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    let bodies: Vec<&str> = out
        .split("\r\n\r\n")
        .skip(1)
        .map(|b| b.split("HTTP/1.1").next().unwrap_or(""))
        .collect();
    assert_eq!(bodies, ["B /1", "app /2", "A /3"], "{out}");
}

#[tokio::test]
async fn non_http_and_tls_bytes_go_to_the_app_untouched() {
    let s = setup().await;
    // The app is an HTTP server: garbage gets its 400, proving the bytes reached it.
    let out = raw(s.listen, b"\x16\x03\x01\x00\x05hello").await;
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 400"), "{out:?}");
    assert!(s.tunnels.lock().unwrap().is_empty());
    // An oversized head: 431 from the agent, and the next connection works.
    let mut big = b"GET / HTTP/1.1\r\nHost: w\r\nX-Dev: a\r\nX-Pad: ".to_vec();
    big.extend(std::iter::repeat_n(b'p', 70 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let out = raw(s.listen, &big).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out:?}");
    let out = raw(
        s.listen,
        b"GET / HTTP/1.1\r\nHost: w\r\nx-dev: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.ends_with("A /"), "{out:?}");
    // h2c upgrade offers are declined: the request is answered over HTTP/1.1 by its destination
    let out = raw(
        s.listen,
        b"GET /u HTTP/1.1\r\nHost: w\r\nx-dev: b\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("B /u"),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_client_that_cannot_deliver_sends_the_request_to_the_app_and_others_continue() {
    let s = setup().await;
    // the stub tunnel refuses intercept "gone", as the manager does when a client cannot
    // reach its handler: the request is not lost, the app answers it
    s.set(&[("A", "x-dev=a"), ("gone", "x-dev=g")]);
    let mut c = h1(s.listen).await;
    let r = c.send_request(req("/", Some("g"))).await.unwrap();
    assert_eq!(text(r).await, "app /");
    c.ready().await.unwrap();
    let r = c.send_request(req("/", Some("a"))).await.unwrap();
    assert_eq!(text(r).await, "A /");
    c.ready().await.unwrap();
    let r = c.send_request(req("/", None)).await.unwrap();
    assert_eq!(text(r).await, "app /");
}

/// Fuzzing the whole router with arbitrary and HTTP-looking bytes (a bounded number of cases):
/// whatever a caller sends, the agent keeps serving everyone else.
#[test]
fn arbitrary_bytes_never_break_the_router() {
    use proptest::prelude::*;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(setup());
    let httpish = "(GET|POST|PRI|HEAD) [ -~]{0,30}( HTTP/1\\.[01]| HTTP/2\\.0)?(\r\n[ -~]{0,40}){0,6}(\r\n\r\n)?[ -~]{0,20}"
        .prop_map(String::into_bytes);
    let strategy = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        httpish,
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|tail| {
            let mut b = crate::http_sniff::H2_PREFACE.to_vec();
            b.extend(tail);
            b
        }),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    });
    runner
        .run(&strategy, |data| {
            rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(5), raw(s.listen, &data)).await;
            });
            Ok(())
        })
        .unwrap();
    rt.block_on(async {
        let mut c = h1(s.listen).await;
        let r = c.send_request(req("/", Some("a"))).await.unwrap();
        assert_eq!(text(r).await, "A /");
        let mut c = h2(s.listen).await;
        let r = c.send_request(req("http://web/", Some("b"))).await.unwrap();
        assert_eq!(text(r).await, "B /");
    });
}

#[tokio::test]
async fn callers_share_idle_tunnel_connections_but_never_a_busy_one() {
    let s = setup().await;
    // one request per caller connection, one after the other: one tunnel connection in all
    for _ in 0..3 {
        let mut c = h1(s.listen).await;
        assert_eq!(
            text(c.send_request(req("/", Some("a"))).await.unwrap()).await,
            "A /"
        );
    }
    assert_eq!(s.tunnels.lock().unwrap().clone(), ["A"]);
    // a caller that does not read its big response keeps that connection busy: another
    // caller gets a new one instead of waiting behind it
    let mut slow = h1(s.listen).await;
    let big = Request::builder()
        .method("POST")
        .uri("/echo")
        .header("x-dev", "a")
        .body(Full::new(Bytes::from(vec![b'z'; 8 * 1024 * 1024])))
        .unwrap();
    let unread = tokio::spawn(async move { slow.send_request(big).await.unwrap() });
    let stalled = tokio::time::timeout(Duration::from_secs(5), unread)
        .await
        .expect("response head")
        .unwrap();
    let mut c = h1(s.listen).await;
    let r = tokio::time::timeout(Duration::from_secs(5), c.send_request(req("/", Some("a"))))
        .await
        .expect("not blocked behind the unread body")
        .unwrap();
    assert_eq!(text(r).await, "A /");
    assert_eq!(s.tunnels.lock().unwrap().len(), 2);
    drop(stalled);
}

#[tokio::test]
async fn upgrades_are_spliced_to_the_routed_destination() {
    let s = setup().await;
    for (dev, want) in [("b", "B:"), ("nobody", "app:")] {
        let mut c = TcpStream::connect(s.listen).await.unwrap();
        let head = format!(
            "GET /ws HTTP/1.1\r\nHost: w\r\nx-dev: {dev}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
        );
        c.write_all(head.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&got).ends_with(want) {
            let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
                .await
                .expect("answer in time")
                .unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 101"), "{text}");
        c.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut back))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(&back, b"hello");
    }
}
