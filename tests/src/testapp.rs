//! The test application's HTTP/UDP server and its small HTTP client (used by the
//! `tp-testapp` binary, which runs as PID 1 in a `FROM scratch` container).
//!
//! Server routes: `GET /` → `<name>\n`; `GET /env/<VAR>` → the variable or 404;
//! `GET /header/<NAME>` → that request header or 404; `GET /peer` → the connection's peer IP; `GET /bytes/<N>` → N bytes streamed
//! from a static 64 KiB buffer; `POST /echo` → the request body; `POST /discard` → `discarded`
//! once the body is read; anything else → 404.
//! HTTP/1.1 with keep-alive and pipelining (requests are answered in order), `Content-Length`
//! and chunked request bodies, `Expect: 100-continue`, HEAD. UDP ports echo datagrams
//! prefixed with `<name>:`.
//!
//! Client: [`get`], [`bench_client`] (latency over keep-alive connections) and [`download`]
//! (throughput), with a name resolver that falls back to a minimal DNS A query to the
//! `/etc/resolv.conf` nameservers when the C library cannot resolve (static glibc in a
//! scratch image).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Size of the static buffer `/bytes/<N>` streams from.
const CHUNK: usize = 64 * 1024;
static BYTES: [u8; CHUNK] = [b'x'; CHUNK];
/// Largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest `/echo` body accepted.
const MAX_ECHO: usize = 64 * 1024 * 1024;
/// Read buffer size for large request bodies that are discarded.
const LARGE_READ: usize = 256 * 1024;
/// Most headers in one request or response.
const MAX_HEADERS: usize = 64;

// ---------------------------------------------------------------------------------------
// Buffered connection

/// A byte stream with a read buffer: requests/responses are parsed from the buffer and
/// whatever follows them (pipelined requests) stays there for the next round.
struct Conn<S> {
    io: S,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(io: S) -> Self {
        Conn {
            io,
            buf: vec![0; 16 * 1024],
            pos: 0,
            end: 0,
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        debug_assert!(self.pos <= self.end);
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        }
    }

    /// Read more bytes into the buffer; `Ok(0)` at end of stream.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.pos > 0 && self.end == self.buf.len() {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        if self.end == self.buf.len() {
            let len = self.buf.len() * 2;
            self.buf.resize(len, 0);
        }
        let n = self.io.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Wait until the buffer holds a complete head (up to and including the blank line) and
    /// return its length; `Ok(None)` on a clean end of stream before any byte of a head.
    async fn head(&mut self) -> io::Result<Option<usize>> {
        let mut searched: usize = 0;
        loop {
            let data = self.buffered();
            let from = searched.saturating_sub(3);
            if let Some(i) = find(&data[from..], b"\r\n\r\n") {
                return Ok(Some(from + i + 4));
            }
            searched = data.len();
            if searched > MAX_HEAD {
                return Err(invalid("head too large"));
            }
            if self.fill().await? == 0 {
                return if self.buffered().is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// Append exactly `n` bytes to `out`.
    async fn read_exact_into(&mut self, mut n: usize, out: &mut Vec<u8>) -> io::Result<()> {
        while n > 0 {
            if self.buffered().is_empty() && self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let take = n.min(self.buffered().len());
            out.extend_from_slice(&self.buffered()[..take]);
            self.consume(take);
            n -= take;
        }
        Ok(())
    }

    /// Skip exactly `n` bytes (reading large bodies in large pieces).
    async fn discard(&mut self, mut n: u64) -> io::Result<()> {
        if n > 1024 * 1024 && self.buf.len() < LARGE_READ {
            self.buf.resize(LARGE_READ, 0);
        }
        while n > 0 {
            if self.buffered().is_empty() && self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let take = n.min(self.buffered().len() as u64) as usize;
            self.consume(take);
            n -= take as u64;
        }
        Ok(())
    }

    /// One CRLF-terminated line (without the CRLF).
    async fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = find(self.buffered(), b"\r\n") {
                let line = self.buffered()[..i].to_vec();
                self.consume(i + 2);
                return Ok(line);
            }
            if self.buffered().len() > MAX_HEAD {
                return Err(invalid("line too long"));
            }
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Read a chunked body; `sink` gets each piece. Trailers are skipped.
    async fn chunked(
        &mut self,
        limit: u64,
        mut sink: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<u64> {
        let mut total: u64 = 0;
        loop {
            let line = self.line().await?;
            let line = std::str::from_utf8(&line).map_err(|_| invalid("bad chunk size"))?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
            if size == 0 {
                // Trailers end with an empty line.
                while !self.line().await?.is_empty() {}
                return Ok(total);
            }
            total = total.saturating_add(size);
            if total > limit {
                return Err(invalid("body too large"));
            }
            let mut left = size;
            while left > 0 {
                if self.buffered().is_empty() && self.fill().await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let take = left.min(self.buffered().len() as u64) as usize;
                sink(&self.buffered()[..take])?;
                self.consume(take);
                left -= take as u64;
            }
            if !self.line().await?.is_empty() {
                return Err(invalid("chunk not followed by CRLF"));
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Headers as owned (lower-case name, value) pairs.
type Headers = Vec<(String, String)>;

fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn has_token(headers: &Headers, name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn owned_headers(headers: &[httparse::Header<'_>]) -> Headers {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyLen {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

fn request_body_len(headers: &Headers) -> io::Result<BodyLen> {
    if has_token(headers, "transfer-encoding", "chunked") {
        return Ok(BodyLen::Chunked);
    }
    match header(headers, "content-length") {
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(|n| {
                if n == 0 {
                    BodyLen::None
                } else {
                    BodyLen::Length(n)
                }
            })
            .map_err(|_| invalid("bad content-length")),
        None => Ok(BodyLen::None),
    }
}

// ---------------------------------------------------------------------------------------
// Server

/// What the server answers with.
#[derive(Debug, Clone)]
pub struct App {
    /// Returned by `GET /` and prefixed to UDP echoes.
    pub name: Arc<str>,
    /// Print `<name> <METHOD> <path>` on stdout for every HTTP/1 request received (a wiretap's
    /// handler shows what it was sent).
    pub log_requests: bool,
    /// The address of the connection's peer (`GET /peer`), set per connection.
    pub peer: Option<SocketAddr>,
}

impl App {
    /// An app answering as `name`.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        App {
            name: name.into(),
            log_requests: false,
            peer: None,
        }
    }
}

/// Accept connections forever, each served on its own task.
pub async fn serve_http(listener: TcpListener, app: App) -> io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut app = app.clone();
        app.peer = Some(peer);
        tokio::spawn(crate::testapp_h2::serve_conn(stream, app));
    }
}

/// Echo datagrams prefixed with `<name>:` forever.
pub async fn serve_udp(socket: UdpSocket, app: App) -> io::Result<()> {
    let mut buf = vec![0u8; 65536];
    let prefix = format!("{}:", app.name);
    loop {
        let (n, from) = socket.recv_from(&mut buf).await?;
        let mut out = Vec::with_capacity(prefix.len() + n);
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(&buf[..n]);
        if let Err(e) = socket.send_to(&out, from).await {
            eprintln!("udp send to {from}: {e}");
        }
    }
}

struct Request {
    method: String,
    path: String,
    http10: bool,
    headers: Headers,
}

/// Serve requests on one connection until the peer closes it or asks to.
pub async fn handle_connection<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    app: &App,
) -> io::Result<()> {
    let mut conn = Conn::new(io);
    loop {
        let head_len = match conn.head().await {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return bad_request(&mut conn, "request head too large\n").await
            }
            Err(e) => return Err(e),
        };
        let req = {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Request::new(&mut headers);
            match parsed.parse(&conn.buffered()[..head_len]) {
                Ok(httparse::Status::Complete(_)) => Request {
                    method: parsed.method.unwrap_or("").to_string(),
                    path: parsed.path.unwrap_or("").to_string(),
                    http10: parsed.version == Some(0),
                    headers: owned_headers(parsed.headers),
                },
                _ => return bad_request(&mut conn, "malformed request\n").await,
            }
        };
        conn.consume(head_len);
        if app.log_requests {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{} {} {}", app.name, req.method, req.path);
            let _ = out.flush();
        }

        let keep_alive = if req.http10 {
            has_token(&req.headers, "connection", "keep-alive")
        } else {
            !has_token(&req.headers, "connection", "close")
        };
        let body_len = match request_body_len(&req.headers) {
            Ok(b) => b,
            Err(_) => return bad_request(&mut conn, "bad content-length\n").await,
        };

        let route = route(&req, app);
        // The body: kept for /echo, skipped otherwise.
        let keep_body = matches!(route, Route::Echo | Route::WriteFile(_));
        if keep_body && matches!(body_len, BodyLen::Length(n) if n > MAX_ECHO as u64) {
            return respond_close(&mut conn, "413 Payload Too Large", b"too large\n").await;
        }
        if body_len != BodyLen::None && has_token(&req.headers, "expect", "100-continue") {
            conn.io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let mut body = Vec::new();
        match body_len {
            BodyLen::None | BodyLen::UntilClose => {}
            BodyLen::Length(n) if keep_body => conn.read_exact_into(n as usize, &mut body).await?,
            BodyLen::Length(n) => conn.discard(n).await?,
            BodyLen::Chunked => {
                let limit = if keep_body { MAX_ECHO as u64 } else { u64::MAX };
                let result = conn
                    .chunked(limit, |piece| {
                        if keep_body {
                            body.extend_from_slice(piece);
                        }
                        Ok(())
                    })
                    .await;
                if let Err(e) = result {
                    if e.kind() == io::ErrorKind::InvalidData {
                        return bad_request(&mut conn, "bad chunked body\n").await;
                    }
                    return Err(e);
                }
            }
        }

        let head_only = req.method == "HEAD";
        let connection = match (keep_alive, req.http10) {
            (true, true) => "Connection: keep-alive\r\n",
            (true, false) => "",
            (false, _) => "Connection: close\r\n",
        };
        match route {
            Route::Small(status, text) => {
                let out = small_response(status, connection, &text, head_only);
                conn.io.write_all(&out).await?;
            }
            Route::Echo => {
                let out = small_response("200 OK", connection, &body, head_only);
                conn.io.write_all(&out).await?;
            }
            Route::WriteFile(path) => {
                let out = match std::fs::write(&path, &body) {
                    Ok(()) => small_response("200 OK", connection, b"written\n", head_only),
                    Err(e) => small_response(
                        "500 Internal Server Error",
                        connection,
                        format!("{e}\n").as_bytes(),
                        head_only,
                    ),
                };
                conn.io.write_all(&out).await?;
            }
            Route::Bytes(n) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                     Content-Length: {n}\r\n{connection}\r\n"
                );
                if head_only {
                    conn.io.write_all(head.as_bytes()).await?;
                } else if n <= CHUNK as u64 {
                    // One write for small answers: one segment, lowest latency.
                    let mut out = head.into_bytes();
                    out.extend_from_slice(&BYTES[..n as usize]);
                    conn.io.write_all(&out).await?;
                } else {
                    conn.io.write_all(head.as_bytes()).await?;
                    let mut left = n;
                    while left > 0 {
                        let take = left.min(CHUNK as u64) as usize;
                        conn.io.write_all(&BYTES[..take]).await?;
                        left -= take as u64;
                    }
                }
            }
        }
        if !keep_alive {
            conn.io.flush().await?;
            let _ = conn.io.shutdown().await;
            return Ok(());
        }
    }
}

enum Route {
    Small(&'static str, Vec<u8>),
    Bytes(u64),
    Echo,
    /// `PUT /file/<absolute path>`: write the body to that file.
    WriteFile(String),
}

fn route(req: &Request, app: &App) -> Route {
    let path = req.path.split(['?', '#']).next().unwrap_or("");
    let get = req.method == "GET" || req.method == "HEAD";
    let not_found = || Route::Small("404 Not Found", b"not found\n".to_vec());
    if get && path == "/" {
        return Route::Small("200 OK", format!("{}\n", app.name).into_bytes());
    }
    if get && path == "/peer" {
        let ip = app
            .peer
            .map(|p| p.ip().to_canonical().to_string())
            .unwrap_or_default();
        return Route::Small("200 OK", format!("{ip}\n").into_bytes());
    }
    if get {
        if let Some(var) = path.strip_prefix("/env/") {
            return match std::env::var_os(var).filter(|_| !var.is_empty()) {
                Some(v) => Route::Small("200 OK", v.into_encoded_bytes()),
                None => not_found(),
            };
        }
        if let Some(name) = path.strip_prefix("/header/") {
            return match header(&req.headers, name) {
                Some(v) => Route::Small("200 OK", v.as_bytes().to_vec()),
                None => not_found(),
            };
        }
        if let Some(d) = path.strip_prefix("/tree/") {
            return tree_route(d);
        }
        if let Some(f) = path.strip_prefix("/file/") {
            return match std::fs::read(format!("/{f}")) {
                Ok(b) => Route::Small("200 OK", b),
                Err(e) => Route::Small("404 Not Found", format!("{e}\n").into_bytes()),
            };
        }
        if let Some(n) = path.strip_prefix("/bytes/") {
            return match n.parse::<u64>() {
                Ok(n) => Route::Bytes(n),
                Err(_) => Route::Small("400 Bad Request", b"bad byte count\n".to_vec()),
            };
        }
    }
    if req.method == "POST" && path == "/echo" {
        return Route::Echo;
    }
    if req.method == "POST" && path == "/discard" {
        // The body is read and dropped before the answer (uploads of the benchmark).
        return Route::Small("200 OK", b"discarded\n".to_vec());
    }
    if req.method == "PUT" {
        if let Some(d) = path.strip_prefix("/tree/") {
            return tree_route(d);
        }
        if let Some(f) = path.strip_prefix("/file/") {
            return Route::WriteFile(format!("/{f}"));
        }
    }
    not_found()
}

/// `GET`/`PUT /tree/<d>`: "<files> <bytes>" under `/<d>` (`tree_size`), or 404 with the error.
fn tree_route(d: &str) -> Route {
    match tree_size(std::path::Path::new(&format!("/{d}"))) {
        Ok((files, bytes)) => Route::Small("200 OK", format!("{files} {bytes}").into_bytes()),
        Err(e) => Route::Small("404 Not Found", format!("{e}\n").into_bytes()),
    }
}

/// Regular files and their total size under `dir`, recursively (symlinks not followed).
fn tree_size(dir: &std::path::Path) -> io::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_dir() {
            let (f, b) = tree_size(&entry.path())?;
            files += f;
            bytes += b;
        } else if ft.is_file() {
            files += 1;
            bytes += entry.metadata()?.len();
        }
    }
    Ok((files, bytes))
}

fn small_response(status: &str, connection: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{connection}\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

async fn bad_request<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    msg: &str,
) -> io::Result<()> {
    respond_close(conn, "400 Bad Request", msg.as_bytes()).await
}

async fn respond_close<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    status: &str,
    body: &[u8],
) -> io::Result<()> {
    let out = small_response(status, "Connection: close\r\n", body, false);
    conn.io.write_all(&out).await?;
    let _ = conn.io.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Client

/// An `http://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port (default 80).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    /// Parse an `http://` URL (the scheme may be left out).
    pub fn parse(url: &str) -> Result<Url, String> {
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => return Err(format!("unsupported scheme {scheme:?} in {url}")),
            None => url,
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("bad IPv6 host in {url}"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("no host in {url}"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| format!("bad port in {url}"))?,
            None => 80,
        };
        Ok(Url {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Resolve `host`: IP literals directly, then the C library, then (when that fails, as it
/// may for static glibc in a scratch image) a DNS A query to the `/etc/resolv.conf`
/// nameservers.
pub async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let system = tokio::net::lookup_host((host, port)).await;
    match system {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            if !addrs.is_empty() {
                return Ok(addrs);
            }
        }
        Err(e) if std::env::var_os("TP_TESTAPP_DEBUG").is_some() => {
            eprintln!("system resolver failed for {host}: {e}; asking DNS directly");
        }
        Err(_) => {}
    }
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let conf = ResolvConf::parse(&conf);
    let ips = dns_lookup(host, &conf).await?;
    Ok(ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}

/// The parts of `/etc/resolv.conf` used here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// `nameserver` lines (port 53).
    pub nameservers: Vec<SocketAddr>,
    /// `search` (or `domain`) domains.
    pub search: Vec<String>,
    /// `options ndots:N` (default 1).
    pub ndots: usize,
}

impl ResolvConf {
    /// Parse resolv.conf text; with no nameserver, 127.0.0.1 (the glibc default).
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf {
            ndots: 1,
            ..Default::default()
        };
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
                        conf.nameservers.push(SocketAddr::new(ip, 53));
                    }
                }
                Some("search" | "domain") => {
                    conf.search = words.map(|w| w.trim_end_matches('.').to_string()).collect();
                }
                Some("options") => {
                    for opt in words {
                        if let Some(n) = opt.strip_prefix("ndots:").and_then(|n| n.parse().ok()) {
                            conf.ndots = n;
                        }
                    }
                }
                _ => {}
            }
        }
        if conf.nameservers.is_empty() {
            conf.nameservers
                .push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53));
        }
        conf
    }

    /// The names to try for `host`, in order.
    pub fn candidates(&self, host: &str) -> Vec<String> {
        let host = host.trim_end_matches('.');
        let dots = host.matches('.').count();
        let searched = self.search.iter().map(|d| format!("{host}.{d}"));
        if dots >= self.ndots {
            std::iter::once(host.to_string()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(host.to_string())).collect()
        }
    }
}

/// A DNS query for the A records of `name` (recursion desired).
pub fn dns_query(id: u16, name: &str) -> Result<Vec<u8>, String> {
    let mut q = Vec::with_capacity(name.len() + 18);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("bad DNS name {name:?}"));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 1, 0, 1]); // A, IN
    Ok(q)
}

/// The outcome of a DNS answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsAnswer {
    /// A records found (possibly after CNAMEs).
    Found(Vec<Ipv4Addr>),
    /// NXDOMAIN or no A record.
    NotFound,
    /// A server failure or a malformed answer.
    Failed(String),
}

/// Parse the answer to [`dns_query`] with the given id.
pub fn parse_dns_answer(id: u16, msg: &[u8]) -> DnsAnswer {
    fn skip_name(msg: &[u8], mut i: usize) -> Option<usize> {
        loop {
            let len = *msg.get(i)? as usize;
            if len == 0 {
                return Some(i + 1);
            }
            if len & 0xc0 == 0xc0 {
                return Some(i + 2);
            }
            i += 1 + len;
        }
    }
    let parse = || -> Option<DnsAnswer> {
        if msg.len() < 12 || u16::from_be_bytes([msg[0], msg[1]]) != id || msg[2] & 0x80 == 0 {
            return None;
        }
        let rcode = msg[3] & 0x0f;
        if rcode == 3 {
            return Some(DnsAnswer::NotFound);
        }
        if rcode != 0 {
            return Some(DnsAnswer::Failed(format!("DNS rcode {rcode}")));
        }
        let qd = u16::from_be_bytes([msg[4], msg[5]]) as usize;
        let an = u16::from_be_bytes([msg[6], msg[7]]) as usize;
        let mut i = 12;
        for _ in 0..qd {
            i = skip_name(msg, i)? + 4;
        }
        let mut ips = Vec::new();
        for _ in 0..an {
            i = skip_name(msg, i)?;
            let rtype = u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]);
            let rdlen = u16::from_be_bytes([*msg.get(i + 8)?, *msg.get(i + 9)?]) as usize;
            let data = msg.get(i + 10..i + 10 + rdlen)?;
            if rtype == 1 && rdlen == 4 {
                ips.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
            }
            i += 10 + rdlen;
        }
        Some(if ips.is_empty() {
            DnsAnswer::NotFound
        } else {
            DnsAnswer::Found(ips)
        })
    };
    parse().unwrap_or_else(|| DnsAnswer::Failed("malformed DNS answer".into()))
}

/// Resolve `host` to IPv4 addresses by asking the configured nameservers directly.
pub async fn dns_lookup(host: &str, conf: &ResolvConf) -> io::Result<Vec<IpAddr>> {
    let mut last_err = format!("{host}: name not found");
    for name in conf.candidates(host) {
        for server in &conf.nameservers {
            let id = query_id();
            let query = dns_query(id, &name).map_err(|e| invalid(&e))?;
            let bind: SocketAddr = if server.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let attempt = async {
                let sock = UdpSocket::bind(bind).await?;
                sock.connect(*server).await?;
                let mut buf = vec![0u8; 4096];
                for _ in 0..2 {
                    sock.send(&query).await?;
                    if let Ok(r) =
                        tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await
                    {
                        let n = r?;
                        return Ok::<_, io::Error>(parse_dns_answer(id, &buf[..n]));
                    }
                }
                Ok(DnsAnswer::Failed(format!("no answer from {server}")))
            };
            match attempt.await {
                Ok(DnsAnswer::Found(ips)) => return Ok(ips.into_iter().map(IpAddr::V4).collect()),
                // A definite "no" from this server: try the next candidate name.
                Ok(DnsAnswer::NotFound) => break,
                Ok(DnsAnswer::Failed(e)) => last_err = format!("{name}: {e}"),
                Err(e) => last_err = format!("{name}: {e}"),
            }
        }
    }
    Err(io::Error::new(io::ErrorKind::NotFound, last_err))
}

fn query_id() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ (nanos >> 16) ^ std::process::id()) as u16
}

/// Connect to the URL's host (every resolved address in turn), with `TCP_NODELAY`.
pub async fn connect(url: &Url) -> io::Result<TcpStream> {
    let addrs = resolve(&url.host, url.port).await?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{}: no address", url.host));
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = io::Error::new(e.kind(), format!("connect {addr}: {e}")),
        }
    }
    Err(last)
}

/// A response's status and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Whether the server keeps the connection open after this response.
    pub keep_alive: bool,
    body: BodyLen,
}

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// One client connection doing requests one after the other (keep-alive).
pub struct Client {
    conn: Conn<TcpStream>,
    url: Url,
    open: bool,
}

impl Client {
    /// Connect to the URL's host.
    pub async fn connect(url: &Url) -> io::Result<Client> {
        Ok(Client {
            conn: Conn::new(connect(url).await?),
            url: url.clone(),
            open: true,
        })
    }

    /// Send a request; `body` is sent with a `Content-Length`.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> io::Result<()> {
        if !self.open {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the server closed the connection",
            ));
        }
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tp-testapp\r\n",
            self.url.host_header()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut out = req.into_bytes();
        out.extend_from_slice(body);
        self.conn.io.write_all(&out).await
    }

    /// Read a response head (skipping `1xx` interim responses).
    pub async fn read_head(&mut self, request_method: &str) -> io::Result<ResponseHead> {
        loop {
            let n = self
                .conn
                .head()
                .await?
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&self.conn.buffered()[..n]) {
                Ok(httparse::Status::Complete(_)) => {}
                _ => return Err(invalid("malformed response")),
            }
            let status = parsed.code.unwrap_or(0);
            let http10 = parsed.version == Some(0);
            let headers = owned_headers(parsed.headers);
            self.conn.consume(n);
            if (100..200).contains(&status) {
                continue;
            }
            let mut keep_alive = if http10 {
                has_token(&headers, "connection", "keep-alive")
            } else {
                !has_token(&headers, "connection", "close")
            };
            let body = if request_method == "HEAD" || status == 204 || status == 304 {
                BodyLen::None
            } else if has_token(&headers, "transfer-encoding", "chunked") {
                BodyLen::Chunked
            } else if let Some(len) = header(&headers, "content-length") {
                match len.trim().parse::<u64>() {
                    Ok(0) => BodyLen::None,
                    Ok(n) => BodyLen::Length(n),
                    Err(_) => return Err(invalid("bad content-length")),
                }
            } else {
                keep_alive = false;
                BodyLen::UntilClose
            };
            if !keep_alive {
                self.open = false;
            }
            return Ok(ResponseHead {
                status,
                headers,
                keep_alive,
                body,
            });
        }
    }

    /// Read the body of the response whose head was just read, handing it to `sink` in
    /// pieces; returns its length.
    pub async fn read_body(
        &mut self,
        head: &ResponseHead,
        mut sink: impl FnMut(&[u8]),
    ) -> io::Result<u64> {
        match head.body {
            BodyLen::None => Ok(0),
            BodyLen::Length(mut left) => {
                let total = left;
                while left > 0 {
                    if self.conn.buffered().is_empty() && self.conn.fill().await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    let take = left.min(self.conn.buffered().len() as u64) as usize;
                    sink(&self.conn.buffered()[..take]);
                    self.conn.consume(take);
                    left -= take as u64;
                }
                Ok(total)
            }
            BodyLen::Chunked => {
                self.conn
                    .chunked(u64::MAX, |piece| {
                        sink(piece);
                        Ok(())
                    })
                    .await
            }
            BodyLen::UntilClose => {
                let mut total = 0u64;
                loop {
                    if self.conn.buffered().is_empty() && self.conn.fill().await? == 0 {
                        return Ok(total);
                    }
                    let n = self.conn.buffered().len();
                    sink(self.conn.buffered());
                    self.conn.consume(n);
                    total += n as u64;
                }
            }
        }
    }

    /// Send a request and read the whole response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> io::Result<Response> {
        self.send(method, path, headers, body).await?;
        let head = self.read_head(method).await?;
        let mut out = Vec::new();
        self.read_body(&head, |piece| out.extend_from_slice(piece))
            .await?;
        Ok(Response {
            status: head.status,
            headers: head.headers,
            body: out,
        })
    }
}

/// `GET url` with extra headers, on a fresh connection.
pub async fn get(url: &Url, headers: &[(String, String)]) -> io::Result<Response> {
    let mut client = Client::connect(url).await?;
    client.request("GET", &url.path, headers, b"").await
}

/// One PUT of `body` on a fresh connection.
pub async fn put(url: &Url, headers: &[(String, String)], body: &[u8]) -> io::Result<Response> {
    let mut client = Client::connect(url).await?;
    client.request("PUT", &url.path, headers, body).await
}

/// Latency figures of [`bench_client`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchResult {
    /// Median request latency in microseconds.
    pub p50_us: f64,
    /// 99th percentile in microseconds.
    pub p99_us: f64,
    /// Mean in microseconds.
    pub mean_us: f64,
    /// Largest latency in microseconds.
    pub max_us: f64,
    /// Requests measured (warm-up excluded).
    pub count: usize,
    /// Keep-alive connections used.
    pub connections: usize,
    /// Response body size in bytes.
    pub size: u64,
    /// `[percentile, µs]`, percentiles 1 … 99.9 (`testapp_paths::percentile_line`).
    pub percentiles: Vec<[f64; 2]>,
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // p * n first: (99.9 / 100) * 1000 is 999.0000000000001 in floating point, 99.9 * 1000 / 100 is 999.
    let rank = (p * sorted.len() as f64 / 100.0).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Request `path` (`/bytes/<size>` when None) `requests` times over `concurrency` keep-alive
/// connections (each sequential), after `warmup` unmeasured requests per connection, and
/// measure each request from its first byte sent to its last byte received.
pub async fn bench_client(
    url: &Url,
    path: Option<&str>,
    requests: usize,
    concurrency: usize,
    size: u64,
    warmup: usize,
) -> io::Result<BenchResult> {
    let concurrency = concurrency.max(1);
    let path = path
        .map(str::to_string)
        .unwrap_or_else(|| format!("/bytes/{size}"));
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let n = requests / concurrency + usize::from(c < requests % concurrency);
        let url = url.clone();
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&url).await?;
            let mut samples = Vec::with_capacity(n);
            for i in 0..warmup + n {
                let start = Instant::now();
                client.send("GET", &path, &[], b"").await?;
                let head = client.read_head("GET").await?;
                if head.status != 200 {
                    return Err(io::Error::other(format!("{path}: HTTP {}", head.status)));
                }
                client.read_body(&head, |_| {}).await?;
                if i >= warmup {
                    samples.push(start.elapsed());
                }
            }
            Ok::<_, io::Error>(samples)
        }));
    }
    let mut samples = Vec::with_capacity(requests);
    for t in tasks {
        samples.extend(t.await.map_err(io::Error::other)??);
    }
    let run = crate::testapp_paths::LatencyRun::of(samples, 0);
    Ok(BenchResult {
        p50_us: run.p50_us,
        p99_us: run.p99_us,
        mean_us: run.mean_us,
        max_us: run.max_us,
        count: run.count,
        connections: concurrency,
        size,
        percentiles: run.percentiles,
    })
}

/// Throughput figures of [`download`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DownloadResult {
    /// Body bytes received.
    pub bytes: u64,
    /// From connecting to the last byte.
    pub secs: f64,
    /// `bytes * 8 / secs / 1e9`.
    pub gbit_per_s: f64,
}

/// GET `url` and count the body bytes, discarding them.
pub async fn download(url: &Url) -> io::Result<DownloadResult> {
    let start = Instant::now();
    let mut client = Client::connect(url).await?;
    client.conn.buf.resize(256 * 1024, 0);
    client.send("GET", &url.path, &[], b"").await?;
    let head = client.read_head("GET").await?;
    if head.status != 200 {
        return Err(io::Error::other(format!(
            "{}: HTTP {}",
            url.path, head.status
        )));
    }
    let bytes = client.read_body(&head, |_| {}).await?;
    let secs = start.elapsed().as_secs_f64();
    Ok(DownloadResult {
        bytes,
        secs,
        gbit_per_s: bytes as f64 * 8.0 / secs / 1e9,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn server(name: &str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_http(listener, App::new(name)));
        addr
    }

    fn url(addr: SocketAddr, path: &str) -> Url {
        Url::parse(&format!("http://{addr}{path}")).unwrap()
    }

    /// Read from a raw socket until `n` complete responses have arrived (or EOF).
    async fn raw_responses(stream: &mut TcpStream, n: usize) -> Vec<(u16, Vec<u8>)> {
        let mut conn = Conn::new(stream);
        let mut out = Vec::new();
        while out.len() < n {
            let Some(len) = conn.head().await.unwrap() else {
                break;
            };
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            resp.parse(&conn.buffered()[..len]).unwrap();
            let status = resp.code.unwrap();
            let cl: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .unwrap_or(0);
            conn.consume(len);
            if status == 100 {
                continue;
            }
            let mut body = Vec::new();
            conn.read_exact_into(cl, &mut body).await.unwrap();
            out.push((status, body));
        }
        out
    }

    #[tokio::test]
    async fn keep_alive_several_requests_on_one_connection() {
        let addr = server("web").await;
        let mut client = Client::connect(&url(addr, "/")).await.unwrap();
        for _ in 0..5 {
            let r = client.request("GET", "/", &[], b"").await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.body, b"web\n");
        }
        let r = client
            .request("GET", "/bytes/100000", &[], b"")
            .await
            .unwrap();
        assert_eq!(r.body.len(), 100_000);
        let r = client
            .request("POST", "/echo", &[], b"hello there")
            .await
            .unwrap();
        assert_eq!(r.body, b"hello there");
        let r = client.request("GET", "/nope", &[], b"").await.unwrap();
        assert_eq!(r.status, 404);
        // Still the same connection, still answering.
        let r = client.request("GET", "/", &[], b"").await.unwrap();
        assert_eq!(r.body, b"web\n");
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order() {
        let addr = server("pipe").await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let reqs = "GET /bytes/3 HTTP/1.1\r\nHost: x\r\n\r\n\
                    POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcde\
                    GET / HTTP/1.1\r\nHost: x\r\n\r\n\
                    POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                    3\r\nfoo\r\n4;ext=1\r\nbar!\r\n0\r\n\r\n\
                    GET /bytes/0 HTTP/1.1\r\nHost: x\r\n\r\n";
        // Byte by byte for the first part, then the rest at once: parsing must not depend
        // on how the bytes arrive.
        let (a, b) = reqs.as_bytes().split_at(60);
        for byte in a {
            s.write_all(&[*byte]).await.unwrap();
        }
        s.write_all(b).await.unwrap();
        let got = raw_responses(&mut s, 5).await;
        assert_eq!(
            got,
            vec![
                (200, b"xxx".to_vec()),
                (200, b"abcde".to_vec()),
                (200, b"pipe\n".to_vec()),
                (200, b"foobar!".to_vec()),
                (200, vec![]),
            ]
        );
    }

    #[tokio::test]
    async fn bytes_length_is_exact_for_large_bodies() {
        let addr = server("big").await;
        for n in [0u64, 1, 65535, 65536, 65537, 10 * 1024 * 1024 + 7] {
            let u = url(addr, &format!("/bytes/{n}"));
            let r = get(&u, &[]).await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.body.len() as u64, n, "/bytes/{n}");
            assert!(r.body.iter().all(|b| *b == b'x'));
        }
        let d = download(&url(addr, "/bytes/33554432")).await.unwrap();
        assert_eq!(d.bytes, 33_554_432);
        assert!(d.gbit_per_s > 0.0);
        assert!(download(&url(addr, "/nope")).await.is_err());
    }

    #[tokio::test]
    async fn env_and_header_routes() {
        let addr = server("e").await;
        let r = get(&url(addr, "/env/PATH"), &[]).await.unwrap();
        match std::env::var("PATH") {
            Ok(path) => {
                assert_eq!(r.status, 200);
                assert_eq!(r.body, path.into_bytes());
            }
            Err(_) => assert_eq!(r.status, 404),
        }
        let r = get(&url(addr, "/env/TP_SURELY_NOT_SET_0xdead"), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 404);
        let h = vec![(
            "X-Telepresence-Intercept-Id".to_string(),
            "abc:web".to_string(),
        )];
        let r = get(&url(addr, "/header/x-telepresence-intercept-id"), &h)
            .await
            .unwrap();
        assert_eq!((r.status, r.body), (200, b"abc:web".to_vec()));
        let r = get(&url(addr, "/header/x-missing"), &h).await.unwrap();
        assert_eq!(r.status, 404);
        // Wrong method on a known path.
        let mut c = Client::connect(&url(addr, "/")).await.unwrap();
        assert_eq!(c.request("POST", "/", &[], b"x").await.unwrap().status, 404);
        assert_eq!(
            c.request("GET", "/echo", &[], b"").await.unwrap().status,
            404
        );
        let r = c.request("HEAD", "/bytes/1000", &[], b"").await.unwrap();
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty());
        assert_eq!(header(&r.headers, "content-length"), Some("1000"));
        // And the connection is still in sync after HEAD.
        assert_eq!(c.request("GET", "/", &[], b"").await.unwrap().body, b"e\n");
    }

    #[tokio::test]
    async fn connection_close_and_http10() {
        let addr = server("c").await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        )
        .await
        .unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap(); // the server closes
        let text = String::from_utf8(all).unwrap();
        assert_eq!(text.matches("HTTP/1.1 200").count(), 1, "{text}");
        assert!(text.contains("Connection: close"));

        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        assert!(all.ends_with(b"\r\n\r\nc\n"));

        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /bytes/2 HTTP/1.0\r\n\r\n",
        )
        .await
        .unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        let text = String::from_utf8(all).unwrap();
        assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
        assert!(text.ends_with("\r\n\r\nxx"));
    }

    #[tokio::test]
    async fn expect_continue_and_bad_requests() {
        let addr = server("x").await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
        )
        .await
        .unwrap();
        let mut first = [0u8; 25];
        s.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 100 Continue\r\n\r\n");
        s.write_all(b"ok").await.unwrap();
        let got = raw_responses(&mut s, 1).await;
        assert_eq!(got, vec![(200, b"ok".to_vec())]);

        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"THIS IS NOT HTTP\r\n\r\n").await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        assert!(
            all.starts_with(b"HTTP/1.1 400"),
            "{:?}",
            String::from_utf8_lossy(&all)
        );

        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n")
            .await
            .unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        assert!(all.starts_with(b"HTTP/1.1 413"));

        // A large echo body arriving in many pieces.
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut c = Client::connect(&url(addr, "/")).await.unwrap();
        let r = c.request("POST", "/echo", &[], &body).await.unwrap();
        assert_eq!(r.body, body);
    }

    #[tokio::test]
    async fn bench_client_counts_and_orders() {
        let addr = server("b").await;
        let r = bench_client(&url(addr, "/"), None, 200, 1, 1024, 10)
            .await
            .unwrap();
        assert_eq!(r.count, 200);
        assert_eq!(r.connections, 1);
        assert!(r.p50_us > 0.0 && r.p50_us <= r.p99_us && r.p99_us <= r.max_us);
        let r = bench_client(&url(addr, "/"), None, 101, 4, 16, 0)
            .await
            .unwrap();
        assert_eq!(r.count, 101);
        // A failing path is an error, not a figure.
        assert!(bench_client(&url(addr, "/"), Some("/nope"), 5, 1, 1, 0)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn udp_echo_is_prefixed() {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(serve_udp(sock, App::new("u")));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(b"ping", addr).await.unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, addr);
        assert_eq!(&buf[..n], b"u:ping");
    }

    #[test]
    fn url_parsing() {
        assert_eq!(
            Url::parse("http://web:8080/x?y=1").unwrap(),
            Url {
                host: "web".into(),
                port: 8080,
                path: "/x?y=1".into()
            }
        );
        assert_eq!(
            Url::parse("web").unwrap(),
            Url {
                host: "web".into(),
                port: 80,
                path: "/".into()
            }
        );
        let v6 = Url::parse("http://[::1]:81/").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 81));
        assert_eq!(v6.host_header(), "[::1]:81");
        assert!(Url::parse("https://x/").is_err());
        assert!(Url::parse("http://:80/").is_err());
        assert!(Url::parse("http://x:notaport/").is_err());
    }

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_micros(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_micros(99));
        assert_eq!(percentile(&v[..1], 99.0), Duration::from_micros(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn resolv_conf() {
        let c = ResolvConf::parse(
            "# generated\nsearch shop.local example.com.\nnameserver 127.0.0.11\noptions ndots:0 edns0\n",
        );
        assert_eq!(
            c.nameservers,
            vec!["127.0.0.11:53".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.search, vec!["shop.local", "example.com"]);
        assert_eq!(c.ndots, 0);
        assert_eq!(c.candidates("web")[0], "web");
        let d = ResolvConf::parse("search a.b\n");
        assert_eq!(
            d.nameservers,
            vec!["127.0.0.1:53".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(d.candidates("web"), vec!["web.a.b", "web"]);
        assert_eq!(d.candidates("web.x"), vec!["web.x", "web.x.a.b"]);
    }

    #[test]
    fn dns_messages() {
        let q = dns_query(0x1234, "web.shop").unwrap();
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(&q[12..], b"\x03web\x04shop\x00\x00\x01\x00\x01");
        assert!(dns_query(1, "a..b").is_err());

        // An answer: the question, a CNAME, then an A record, with name compression.
        let mut a = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
        a.extend_from_slice(b"\x03web\x04shop\x00\x00\x01\x00\x01");
        a.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 4]);
        a.extend_from_slice(b"\x01x\xc0\x0c");
        a.extend_from_slice(&[0xc0, 30, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 172, 18, 0, 5]);
        assert_eq!(
            parse_dns_answer(0x1234, &a),
            DnsAnswer::Found(vec![Ipv4Addr::new(172, 18, 0, 5)])
        );
        // Wrong id, NXDOMAIN, truncated.
        assert!(matches!(parse_dns_answer(0x9999, &a), DnsAnswer::Failed(_)));
        let mut nx = a[..12].to_vec();
        nx[3] = 0x83;
        assert_eq!(parse_dns_answer(0x1234, &nx), DnsAnswer::NotFound);
        assert!(matches!(
            parse_dns_answer(0x1234, &a[..a.len() - 3]),
            DnsAnswer::Failed(_)
        ));
    }

    /// The fallback resolver against a tiny DNS server of ours.
    #[tokio::test]
    async fn dns_lookup_against_a_stub_server() {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = sock.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let (n, from) = sock.recv_from(&mut buf).await.unwrap();
                let q = &buf[..n];
                let mut a = q.to_vec();
                a[2] = 0x81;
                a[3] = 0x80;
                if q[12..].starts_with(b"\x03web\x00") {
                    a[7] = 1;
                    a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 1, 2, 3]);
                } else {
                    a[3] = 0x83;
                }
                sock.send_to(&a, from).await.unwrap();
            }
        });
        let conf = ResolvConf {
            nameservers: vec![SocketAddr::from(([127, 0, 0, 1], port))],
            search: vec!["shop".into()],
            ndots: 1,
        };
        // "web.shop" is NXDOMAIN at the stub, then "web" is found.
        assert_eq!(conf.candidates("web"), vec!["web.shop", "web"]);
        let ips = dns_lookup("web", &conf).await.unwrap();
        assert_eq!(ips, vec![IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))]);
        let err = dns_lookup("other", &conf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
