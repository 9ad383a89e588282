//! A self-signed certificate for `localhost` in a temp dir, and a one-request HTTPS client
//! trusting it (rustls + hyper), and the TLS client (`connector`) behind it.

use http_body_util::BodyExt;
use kubernetes::webhook::TlsFiles;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_rustls::rustls;

pub struct Cert {
    pub files: TlsFiles,
    pub der: rustls::pki_types::CertificateDer<'static>,
    _dir: tempfile::TempDir,
}

pub fn cert() -> Cert {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    std::fs::write(&files.cert, key.cert.pem()).unwrap();
    std::fs::write(&files.key, key.signing_key.serialize_pem()).unwrap();
    Cert {
        files,
        der: key.cert.der().clone(),
        _dir: dir,
    }
}

/// A TLS client trusting exactly these certificates.
pub fn connector(
    trusted: &[rustls::pki_types::CertificateDer<'static>],
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in trusted {
        roots.add(c.clone()).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(client))
}

/// Sends one request over TLS (server name `localhost`); returns (status, body).
pub async fn request(
    cert: &Cert,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    let connector = connector(std::slice::from_ref(&cert.der));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    (
        status,
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
}
