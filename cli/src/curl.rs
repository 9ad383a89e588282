//! `curl-client`: the small HTTP/1.1 client `telepresence curl` runs in a container on the
//! connection's network when no curl image exists locally. It resolves names itself through the
//! container's resolv.conf (nameservers, search domains, ndots) because the C library's resolver
//! does not work in a static binary in a scratch image. Understands the curl flags people use
//! for a quick check: `-s -S -f -i -I -v -m/--max-time --connect-timeout -H -X -d`, http only.
//! Exit codes follow curl: 6 cannot resolve, 7 cannot connect, 22 HTTP error with `-f`,
//! 28 timeout, 1 unsupported protocol, 2 bad usage.

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

#[derive(Debug, Default, PartialEq)]
struct Opts {
    url: String,
    method: Option<String>,
    headers: Vec<String>,
    data: Option<String>,
    include: bool,
    head: bool,
    fail: bool,
    silent: bool,
    show_error: bool,
    max_time: Option<f64>,
    connect_timeout: Option<f64>,
}

/// Command-line usage errors (curl's wording; exit code 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum UsageError {
    #[error("option {0}: requires parameter")]
    MissingValue(String),
    /// The option whose value is not a number.
    #[error("bad {0}")]
    NotANumber(&'static str),
    #[error("option {0}: is unknown")]
    Unknown(String),
    #[error("no URL specified")]
    NoUrl,
}

/// Why a DNS query got no usable answer.
#[derive(Debug, thiserror::Error)]
enum QueryError {
    #[error(transparent)]
    Dns(#[from] hickory_proto::ProtoError),
    #[error(transparent)]
    Decode(#[from] hickory_proto::serialize::binary::DecodeError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("no answer")]
    NoAnswer,
}

fn parse(args: &[String]) -> Result<Opts, UsageError> {
    let mut o = Opts::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| UsageError::MissingValue(name.to_string()))
        };
        match a.as_str() {
            "-s" | "--silent" => o.silent = true,
            "-S" | "--show-error" => o.show_error = true,
            "-sS" | "-Ss" => (o.silent, o.show_error) = (true, true),
            "-f" | "--fail" => o.fail = true,
            "-i" | "--include" => o.include = true,
            "-I" | "--head" => o.head = true,
            "-v" | "--verbose" | "-L" | "--location" => {}
            "-m" | "--max-time" => {
                o.max_time = Some(
                    val(a)?
                        .parse()
                        .map_err(|_| UsageError::NotANumber("--max-time"))?,
                );
            }
            "--connect-timeout" => {
                o.connect_timeout = Some(
                    val(a)?
                        .parse()
                        .map_err(|_| UsageError::NotANumber("--connect-timeout"))?,
                );
            }
            "-H" | "--header" => o.headers.push(val(a)?),
            "-X" | "--request" => o.method = Some(val(a)?),
            "-d" | "--data" | "--data-raw" => o.data = Some(val(a)?),
            s if s.starts_with('-') => return Err(UsageError::Unknown(s.to_string())),
            s => o.url = s.to_string(),
        }
    }
    if o.url.is_empty() {
        return Err(UsageError::NoUrl);
    }
    Ok(o)
}

/// (host, port, path) of an http URL.
fn split_url(url: &str) -> Result<(String, u16, String), (i32, String)> {
    let rest = match url.split_once("://") {
        Some(("http", r)) => r,
        Some((p, _)) => return Err((1, format!("Protocol \"{p}\" not supported"))),
        None => url,
    };
    let (auth, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match auth.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || auth.starts_with('[') => {
            let port = p.parse().map_err(|_| {
                (
                    3,
                    "URL rejected: Port number was not a decimal number between 0 and 65535"
                        .to_string(),
                )
            })?;
            (h, port)
        }
        _ => (auth, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err((3, "URL rejected: No host part in the URL".into()));
    }
    Ok((host.to_string(), port, path.to_string()))
}

/// Resolves `host` with the nameservers and search domains of resolv.conf; `None`: curl's
/// "Could not resolve host".
pub(crate) async fn resolve(host: &str) -> Option<Vec<IpAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(vec![ip]);
    }
    let conf = protocol::resolv::ResolvConf::read();
    let servers: Vec<SocketAddr> = conf
        .nameservers
        .iter()
        .map(|ip| SocketAddr::new(*ip, 53))
        .collect();
    let search = conf.search;
    let ndots = conf.ndots.unwrap_or(1);
    let host = host.trim_end_matches('.');
    let searched = search.iter().map(|d| format!("{host}.{d}"));
    let names: Vec<String> = if host.matches('.').count() >= ndots {
        std::iter::once(host.to_string()).chain(searched).collect()
    } else {
        searched.chain(std::iter::once(host.to_string())).collect()
    };
    for name in names {
        for s in &servers {
            if let Ok(ips) = query_a(*s, &name).await {
                if !ips.is_empty() {
                    return Some(ips);
                }
                break; // a definite "no" from this server
            }
        }
    }
    None
}

async fn query_a(server: SocketAddr, name: &str) -> Result<Vec<IpAddr>, QueryError> {
    let mut n = Name::from_ascii(name)?;
    n.set_fqdn(true);
    let id = (std::process::id() as u16) ^ 0x5a5a;
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(n, RecordType::A));
    let bytes = m.to_vec()?;
    let sock = UdpSocket::bind(if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .await?;
    sock.connect(server).await?;
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        sock.send(&bytes).await?;
        if let Ok(Ok(len)) = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await
        {
            let r = Message::from_vec(&buf[..len])?;
            return Ok(r
                .answers
                .iter()
                .filter_map(|rec| match &rec.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    _ => None,
                })
                .collect());
        }
    }
    Err(QueryError::NoAnswer)
}

/// A failure as curl reports it: (exit code, message).
type Failure = (i32, String);

async fn fetch(o: &Opts) -> Result<i32, Failure> {
    let (host, port, path) = split_url(&o.url)?;
    let mut s = connect(o, &host, port).await?;
    let req = request(o, &host, port, &path);
    let io_err = |e: std::io::Error| (56, format!("Recv failure: {e}"));
    s.write_all(req.as_bytes()).await.map_err(io_err)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.map_err(io_err)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or((52, "Empty reply from server".to_string()))?;
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let mut body = &resp[split + 4..];
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let decoded;
    if chunked {
        decoded = dechunk(body);
        body = &decoded;
    }
    if o.fail && status >= 400 {
        return Err((22, format!("The requested URL returned error: {status}")));
    }
    let mut out = std::io::stdout().lock();
    if o.include || o.head {
        let _ = out.write_all(head.as_bytes());
        let _ = out.write_all(b"\r\n\r\n");
    }
    if !o.head {
        let _ = out.write_all(body);
    }
    let _ = out.flush();
    Ok(0)
}

/// Resolves `host` and connects to the first address that answers.
async fn connect(o: &Opts, host: &str, port: u16) -> Result<TcpStream, Failure> {
    let ips = resolve(host).await.ok_or_else(|| {
        (
            6,
            format!("Could not resolve host: {}", host.trim_end_matches('.')),
        )
    })?;
    let ct = Duration::from_secs_f64(o.connect_timeout.unwrap_or(10.0).max(0.001));
    let mut last = String::new();
    let mut stream = None;
    for ip in ips {
        let addr = SocketAddr::new(ip, port);
        match tokio::time::timeout(ct, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                stream = Some(s);
                break;
            }
            Ok(Err(e)) => last = format!("Failed to connect to {host} port {port}: {e}"),
            Err(_) => {
                return Err((
                    28,
                    format!("Connection timed out after {} ms", ct.as_millis()),
                ))
            }
        }
    }
    stream.ok_or((7, last))
}

/// The HTTP/1.1 request, headers and body.
fn request(o: &Opts, host: &str, port: u16, path: &str) -> String {
    let method = o.method.clone().unwrap_or_else(|| {
        if o.head {
            "HEAD".into()
        } else if o.data.is_some() {
            "POST".into()
        } else {
            "GET".into()
        }
    });
    let host_hdr = if port == 80 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host_hdr}\r\nUser-Agent: telepresence-curl\r\nAccept: */*\r\nConnection: close\r\n");
    for h in &o.headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if let Some(d) = &o.data {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            d.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(d) = &o.data {
        req.push_str(d);
    }
    req
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..i])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || b.len() < i + 2 + size {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + size]);
        b = &b[(i + 4 + size).min(b.len())..];
    }
    out
}

/// Runs the client; returns the exit code.
pub async fn main(args: &[String]) -> i32 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("curl: {e}");
            return 2;
        }
    };
    let run = fetch(&o);
    let r = match o.max_time {
        Some(t) => match tokio::time::timeout(Duration::from_secs_f64(t.max(0.001)), run).await {
            Ok(r) => r,
            Err(_) => Err((
                28,
                format!(
                    "Operation timed out after {} milliseconds",
                    (t * 1000.0) as u64
                ),
            )),
        },
        None => run.await,
    };
    match r {
        Ok(c) => c,
        Err((code, msg)) => {
            if !o.silent || o.show_error {
                eprintln!("curl: ({code}) {msg}");
            }
            code
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(v: &[&str]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn flags_and_urls() {
        let o = parse(&a(&["-sS", "-m", "2", "-H", "X-A: 1", "http://web:8080/x"])).unwrap();
        assert!(o.silent && o.show_error);
        assert_eq!(o.max_time, Some(2.0));
        assert_eq!(o.headers, vec!["X-A: 1"]);
        assert!(parse(&a(&["--bogus", "x"]))
            .unwrap_err()
            .to_string()
            .contains("unknown"));
        assert!(parse(&a(&["-s"]))
            .unwrap_err()
            .to_string()
            .contains("no URL"));
        assert_eq!(
            split_url("http://web:8080/a?b").unwrap(),
            ("web".into(), 8080, "/a?b".into())
        );
        assert_eq!(split_url("web").unwrap(), ("web".into(), 80, "/".into()));
        assert_eq!(split_url("https://x").unwrap_err().0, 1);
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
    }
}
