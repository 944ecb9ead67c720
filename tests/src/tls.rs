//! TLS test support: a throwaway PKI minted with `rcgen` (CAs, server and client certificates,
//! expired ones), `curl` and `openssl` as real outside clients, a Rust client over
//! `tokio-rustls` that keeps its connection, and a TLS echo upstream.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType, date_time_ymd};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

/// A certificate authority whose files live in `dir`.
pub struct Pki {
    dir: PathBuf,
    params: CertificateParams,
    key: KeyPair,
    /// The CA certificate (PEM).
    pub ca_file: PathBuf,
}

/// A certificate and key written to PEM files.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate chain (PEM).
    pub cert_file: PathBuf,
    /// The private key (PEM, PKCS#8).
    pub key_file: PathBuf,
    /// The certificate (DER).
    pub der: CertificateDer<'static>,
}

impl Pki {
    /// A new CA named `name`, written to `dir/{name}-ca.pem`.
    ///
    /// # Panics
    /// When key generation or a file write fails.
    pub fn new(dir: &Path, name: &str) -> Pki {
        std::fs::create_dir_all(dir).expect("creating the PKI dir");
        let key = KeyPair::generate().expect("generating a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        let cert = params.self_signed(&key).expect("self-signing the CA");
        let ca_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, cert.pem()).expect("writing the CA");
        Pki { dir: dir.to_owned(), params, key, ca_file }
    }

    /// Issues a certificate for DNS `names` and URI SANs `uris`, common name `cn`, valid now
    /// (or expired in 2021 when `expired`), written to `dir/{stem}.pem` and `{stem}.key`.
    ///
    /// # Panics
    /// When signing or a file write fails.
    pub fn issue(&self, stem: &str, cn: &str, names: &[&str], uris: &[&str], expired: bool) -> Issued {
        let key = KeyPair::generate().expect("generating a key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(DnType::OrganizationName, "Portcullis Tests");
        params.distinguished_name.push(DnType::CommonName, cn);
        for uri in uris {
            params.subject_alt_names.push(SanType::URI((*uri).try_into().expect("an IA5 URI")));
        }
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("signing");
        let issued = Issued {
            cert_file: self.dir.join(format!("{stem}.pem")),
            key_file: self.dir.join(format!("{stem}.key")),
            der: cert.der().clone(),
        };
        crate::replace_file(&issued.cert_file, cert.pem().as_bytes());
        crate::replace_file(&issued.key_file, key.serialize_pem().as_bytes());
        issued
    }
}

/// What `curl` reported.
#[derive(Debug)]
pub struct CurlResult {
    /// curl's exit code (0 on success; 35 handshake failure, 56 receive failure, 60 bad
    /// server certificate, …).
    pub exit: i32,
    /// `%{http_code}`.
    pub status: u16,
    /// `%{http_version}`: `1.1` or `2`.
    pub version: String,
    /// The response body.
    pub body: String,
    /// curl's error text.
    pub stderr: String,
}

/// `curl https://{host}:{port}{path}` resolved to `addr`, trusting `ca`, with `extra`
/// arguments (`--http2`, `--cert`, …). Runs on a blocking thread.
///
/// # Panics
/// When curl cannot be run.
pub async fn curl(addr: SocketAddr, host: &str, path: &str, ca: &Path, extra: &[&str]) -> CurlResult {
    let port = addr.port();
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "--max-time".into(),
        "10".into(),
        "--cacert".into(),
        ca.display().to_string(),
        "--resolve".into(),
        format!("{host}:{port}:{}", addr.ip()),
        "-w".into(),
        "\n%{http_code} %{http_version}".into(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args.push(format!("https://{host}:{port}{path}"));
    let output = tokio::task::spawn_blocking(move || Command::new("curl").args(&args).output())
        .await
        .expect("the curl task")
        .expect("running curl (install it: apt-get install curl)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, trailer) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let mut trailer = trailer.split(' ');
    CurlResult {
        exit: output.status.code().unwrap_or(-1),
        status: trailer.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        version: trailer.next().unwrap_or("").to_owned(),
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `openssl s_client` to `addr` with `args` (e.g. `-servername x` or `-noservername`); returns
/// its whole output. Runs on a blocking thread.
///
/// # Panics
/// When openssl cannot be run.
pub async fn openssl_s_client(addr: SocketAddr, args: &[&str]) -> String {
    let mut all: Vec<String> = vec!["s_client".into(), "-connect".into(), addr.to_string()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    let output = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new("openssl")
            .args(&all)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        // Closing stdin makes s_client end the session after the handshake.
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(b"");
        }
        child.wait_with_output()
    })
    .await
    .expect("the openssl task")
    .expect("running openssl (install it: apt-get install openssl)");
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// A rustls client configuration trusting `ca`, offering `alpn`, with an optional client
/// certificate.
///
/// # Panics
/// When a file does not parse.
pub fn client_config(ca: &Path, alpn: &[&str], client: Option<&Issued>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("reading the CA") {
        roots.add(cert.expect("a CA certificate")).expect("adding the CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    let mut config = match client {
        Some(issued) => {
            let chain = vec![issued.der.clone()];
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&issued.key_file).expect("reading the key");
            builder.with_client_auth_cert(chain, key).expect("client certificate")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// One kept-open TLS connection to a listener, HTTP/1.1 or HTTP/2 by ALPN.
pub struct TlsConnection {
    /// The certificate the server presented (end entity).
    pub server_cert: CertificateDer<'static>,
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    sender: Sender,
    host: String,
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl TlsConnection {
    /// Connects to `addr` with SNI `host`.
    ///
    /// Errors: the TLS handshake's error, as text.
    pub async fn open(
        addr: SocketAddr,
        host: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<TlsConnection, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| e.to_string())?;
        let (_, session) = tls.get_ref();
        let server_cert =
            session.peer_certificates().and_then(|c| c.first()).cloned().ok_or("no server certificate")?;
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let io = TokioIo::new(tls);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Sender::Http2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Sender::Http1(sender)
        };
        Ok(TlsConnection { server_cert, alpn, sender, host: host.to_owned() })
    }

    /// `GET path` on this connection: (status, body).
    ///
    /// Errors: the connection's error, as text (e.g. it was closed).
    pub async fn get(&mut self, path: &str) -> Result<(u16, String), String> {
        let response = match &mut self.sender {
            Sender::Http1(sender) => {
                let request =
                    Request::get(path).header("host", &self.host).body(Empty::new()).map_err(|e| e.to_string())?;
                sender.send_request(request).await
            }
            Sender::Http2(sender) => {
                let request = Request::get(format!("https://{}{path}", self.host))
                    .body(Empty::new())
                    .map_err(|e| e.to_string())?;
                sender.send_request(request).await
            }
        }
        .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// A TLS echo upstream (the demo echo service) on an ephemeral loopback port, serving `cert`
/// with ALPN `h2` and `http/1.1`; with `client_ca`, it requires a client certificate signed by
/// it.
///
/// # Panics
/// When the files do not parse or binding fails.
pub async fn tls_echo_upstream(cert: &Issued, client_ca: Option<&Path>) -> SocketAddr {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("TLS versions");
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).expect("reading the CA") {
                roots.add(c.expect("a CA certificate")).expect("adding the CA");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let key = PrivateKeyDer::from_pem_file(&cert.key_file).expect("reading the key");
    let mut config = builder.with_single_cert(vec![cert.der.clone()], key).expect("server certificate");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the TLS upstream");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let service = hyper::service::service_fn(portcullis_demo::echo);
                let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if h2 {
                    builder = builder.http2_only();
                } else {
                    builder = builder.http1_only();
                }
                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    addr
}

/// A TLS alert the server sent (RFC 8446 §6): `level` 2 is fatal; `description` 70 is
/// `protocol_version`, 40 `handshake_failure`, 49 `access_denied`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alert {
    /// 1 warning, 2 fatal.
    pub level: u8,
    /// The alert description code.
    pub description: u8,
}

/// Sends a hand-built ClientHello that offers exactly TLS version `version` (`0x0302` for
/// 1.1, `0x0303` for 1.2: the legacy version field, with no `supported_versions` extension,
/// as pre-1.3 clients send it; RFC 5246 §7.4.1.2), SNI `host`, and TLS 1.2-era cipher suites,
/// then reads the server's first record: `Some(alert)` if it answered with an alert, `None` if
/// it went on with a handshake (a ServerHello) or closed without a word. No TLS library on
/// the client side, so no client policy decides what is sent.
///
/// # Panics
/// When the connection cannot be made.
pub async fn hello_with_version(addr: SocketAddr, version: u16, host: &str) -> Option<Alert> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let [major, minor] = version.to_be_bytes();
    let name = host.as_bytes();
    let len16 = |n: usize| u16::try_from(n).expect("a small hello").to_be_bytes();
    // server_name (RFC 6066 §3), then supported_groups and ec_point_formats for the ECDHE suites.
    let mut sni = vec![0u8];
    sni.extend(len16(name.len()));
    sni.extend(name);
    let mut sni_list = len16(sni.len()).to_vec();
    sni_list.extend(sni);
    let mut extensions = vec![0x00, 0x00];
    extensions.extend(len16(sni_list.len()));
    extensions.extend(sni_list);
    extensions.extend([0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17]);
    extensions.extend([0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    // signature_algorithms: rsa_pkcs1_sha256, ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256.
    extensions.extend([0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x01, 0x04, 0x03, 0x08, 0x04]);
    let mut body = vec![major, minor];
    body.extend([0x5a; 32]);
    body.push(0);
    // ECDHE-RSA/ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-SHA, AES128-SHA.
    body.extend([0x00, 0x08, 0xc0, 0x2f, 0xc0, 0x2b, 0xc0, 0x13, 0x00, 0x2f]);
    body.extend([0x01, 0x00]);
    body.extend(len16(extensions.len()));
    body.extend(extensions);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend(len16(body.len()));
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(len16(handshake.len()));
    record.extend(handshake);

    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connecting to the TLS listener");
    stream.write_all(&record).await.expect("sending the ClientHello");
    let mut head = [0u8; 7];
    match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_exact(&mut head)).await {
        Ok(Ok(_)) if head[0] == 0x15 => Some(Alert { level: head[5], description: head[6] }),
        _ => None,
    }
}
