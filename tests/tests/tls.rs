//! TLS end to end, with real clients: curl and openssl against TLS listeners (ALPN h2 and
//! http/1.1, SNI, mutual TLS, expired and foreign certificates), a Rust client that keeps its
//! connection across a certificate renewal, and upstreams reached over TLS and HTTP/2.

use std::path::Path;
use std::time::Duration;

use portcullis_e2e::tls::{
    Alert, Pki, TlsConnection, client_config, curl, hello_with_version, openssl_s_client, tls_echo_upstream,
};
use portcullis_e2e::{TestGateway, config, config_with, echo_upstream, get, route, write_config};
use serde_json::Value;

/// `config` with `[listener.tls]` set to `tls` (TOML lines) on its listener.
fn with_tls(config: String, tls: &str) -> String {
    let listener = "[[listener]]\naddress = \"127.0.0.1:0\"\n";
    assert!(config.contains(listener));
    config.replacen(listener, &format!("{listener}\n[listener.tls]\n{tls}\n"), 1)
}

fn certificates(entries: &[&portcullis_e2e::tls::Issued]) -> String {
    let list: Vec<String> = entries
        .iter()
        .map(|i| format!("{{ cert_file = \"{}\", key_file = \"{}\" }}", i.cert_file.display(), i.key_file.display()))
        .collect();
    format!("certificates = [{}]", list.join(", "))
}

fn pki_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("portcullis-pki-{}-{name}", std::process::id()))
}

fn echoed(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not the echo JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_http1_and_h2_by_alpn_and_picks_certificates_by_sni() {
    let dir = pki_dir("alpn");
    let pki = Pki::new(&dir, "server");
    let api = pki.issue("api", "api.test", &["api.test"], &[], false);
    let apps = pki.issue("apps", "apps", &["*.apps.test"], &[], false);
    let upstream = echo_upstream().await;
    let gw =
        TestGateway::start(&with_tls(config(upstream, &route("all", "/", &[])), &certificates(&[&api, &apps]))).await;

    let h1 = curl(gw.addr, "api.test", "/hello", &pki.ca_file, &["--http1.1"]).await;
    assert_eq!((h1.exit, h1.status, h1.version.as_str()), (0, 200, "1.1"), "{h1:?}");
    let echo = echoed(&h1.body);
    assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https", "{echo}");
    let h2 = curl(gw.addr, "api.test", "/hello", &pki.ca_file, &["--http2"]).await;
    assert_eq!((h2.exit, h2.status, h2.version.as_str()), (0, 200, "2"), "{h2:?}");

    // The wildcard certificate is chosen by SNI; curl verifies it against the name.
    let wildcard = curl(gw.addr, "shop.apps.test", "/", &pki.ca_file, &[]).await;
    assert_eq!((wildcard.exit, wildcard.status), (0, 200), "{wildcard:?}");
    // A name no certificate has is refused in the handshake with rustls' access_denied alert
    // (a default certificate served instead would answer with a ServerHello).
    assert_eq!(hello_with_version(gw.addr, 0x0303, "api.test").await, None, "a known name gets a ServerHello");
    let unknown = hello_with_version(gw.addr, 0x0303, "nope.test").await;
    assert_eq!(unknown, Some(Alert { level: 2, description: 49 }), "access_denied for an unknown SNI");
    // No SNI (a client connecting by IP address) gets the first certificate.
    let out = openssl_s_client(gw.addr, &["-noservername", "-CAfile", &pki.ca_file.display().to_string()]).await;
    assert!(out.contains("CN = api.test") || out.contains("CN=api.test"), "{out}");
    let out = openssl_s_client(gw.addr, &["-servername", "x.apps.test", "-alpn", "h2"]).await;
    assert!(out.contains("CN = apps") || out.contains("CN=apps"), "{out}");
    assert!(out.contains("ALPN protocol: h2"), "{out}");
    gw.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_refuses_old_versions_expired_certificates_and_plain_http() {
    let dir = pki_dir("versions");
    let pki = Pki::new(&dir, "server");
    let api = pki.issue("api", "api.test", &["api.test"], &[], false);
    let upstream = echo_upstream().await;
    let gw = TestGateway::start(&with_tls(config(upstream, &route("all", "/", &[])), &certificates(&[&api]))).await;
    // A client offering TLS 1.1 at most is refused with protocol_version (RFC 8446 §6.2);
    // the same hand-built hello offering 1.2 gets a ServerHello, so it is well formed.
    let tls11 = hello_with_version(gw.addr, 0x0302, "api.test").await;
    assert_eq!(tls11, Some(Alert { level: 2, description: 70 }), "TLS 1.1 is refused");
    assert_eq!(hello_with_version(gw.addr, 0x0303, "api.test").await, None, "TLS 1.2 is accepted by default");
    let strict = curl(gw.addr, "api.test", "/", &pki.ca_file, &["--tlsv1.3"]).await;
    assert_eq!((strict.exit, strict.status), (0, 200), "{strict:?}");
    gw.stop().await;

    // `min_version = "1.3"` refuses a TLS 1.2 client the same way and serves TLS 1.3.
    let tls13_only = format!("{}\nmin_version = \"1.3\"", certificates(&[&api]));
    let gw = TestGateway::start(&with_tls(config(upstream, &route("all", "/", &[])), &tls13_only)).await;
    let tls12 = hello_with_version(gw.addr, 0x0303, "api.test").await;
    assert_eq!(tls12, Some(Alert { level: 2, description: 70 }), "TLS 1.2 is refused with min_version 1.3");
    let capped = curl(gw.addr, "api.test", "/", &pki.ca_file, &["--tls-max", "1.2"]).await;
    assert_eq!((capped.exit, capped.status), (35, 0), "curl capped at TLS 1.2 fails its handshake: {capped:?}");
    let strict = curl(gw.addr, "api.test", "/", &pki.ca_file, &["--tlsv1.3"]).await;
    assert_eq!((strict.exit, strict.status), (0, 200), "{strict:?}");
    gw.stop().await;

    // `handshake_timeout_ms` closes a connection that starts no handshake.
    let slow = format!("{}\nhandshake_timeout_ms = 300", certificates(&[&api]));
    let gw = TestGateway::start(&with_tls(config(upstream, &route("all", "/", &[])), &slow)).await;
    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read =
        tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut silent, &mut byte)).await;
    let closed_after = started.elapsed();
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "the listener closes a silent TLS connection: {read:?}");
    assert!(
        closed_after >= Duration::from_millis(250) && closed_after < Duration::from_secs(3),
        "closed after {closed_after:?}, not about 300 ms"
    );
    gw.stop().await;

    // An expired server certificate is loaded (an expiry must not stop a start or reload), and
    // clients refuse it.
    let expired = pki.issue("expired", "api.test", &["api.test"], &[], true);
    let gw = TestGateway::start(&with_tls(config(upstream, &route("all", "/", &[])), &certificates(&[&expired]))).await;
    let refused = curl(gw.addr, "api.test", "/", &pki.ca_file, &[]).await;
    assert_eq!(refused.exit, 60, "curl refuses an expired server certificate: {refused:?}");
    assert!(refused.stderr.contains("expired"), "{refused:?}");
    gw.stop().await;
    let gw = TestGateway::start(&with_tls(config(upstream, &route("all", "/", &[])), &certificates(&[&api]))).await;

    // Clear-text HTTP on a TLS port gets no HTTP answer.
    let plain = tokio::time::timeout(Duration::from_secs(5), async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nhost: api.test\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out).await;
        out
    })
    .await
    .expect("the listener closes a clear-text connection");
    assert!(!plain.starts_with(b"HTTP/"), "{:?}", String::from_utf8_lossy(&plain));
    gw.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_valid_client_certificate_and_plugins_see_its_names() {
    let dir = pki_dir("mtls");
    let servers = Pki::new(&dir, "server");
    let api = servers.issue("api", "api.test", &["api.test"], &[], false);
    let clients = Pki::new(&dir, "clients");
    let billing = clients.issue("billing", "billing", &["billing.internal"], &["spiffe://example.org/billing"], false);
    let expired = clients.issue("expired", "old", &[], &["spiffe://example.org/old"], true);
    let outsiders = Pki::new(&dir, "outsiders");
    let foreign = outsiders.issue("foreign", "foreign", &[], &["spiffe://example.org/billing"], false);

    let upstream = echo_upstream().await;
    let mtls =
        r#"{ allowed_prefixes = ["spiffe://example.org/"], roles = { "spiffe://example.org/billing" = ["billing"] } }"#;
    let routes = route("mtls", "/", &[("mtls", Some(mtls))]);
    let tls = format!("{}\nclient_ca_file = \"{}\"", certificates(&[&api]), clients.ca_file.display());
    let gw = TestGateway::start(&with_tls(config(upstream, &routes), &tls)).await;
    let ca = &servers.ca_file;
    let with = |issued: &portcullis_e2e::tls::Issued| {
        vec![
            "--cert".to_owned(),
            issued.cert_file.display().to_string(),
            "--key".to_owned(),
            issued.key_file.display().to_string(),
        ]
    };

    let ok_args = with(&billing);
    let ok = curl(gw.addr, "api.test", "/orders", ca, &ok_args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!((ok.exit, ok.status), (0, 200), "{ok:?}");
    let echo = echoed(&ok.body);
    assert_eq!(echo["headers"]["x-user-id"][0], "spiffe://example.org/billing", "{echo}");
    assert_eq!(echo["headers"]["x-user-roles"][0], "billing", "{echo}");

    let none = curl(gw.addr, "api.test", "/orders", ca, &[]).await;
    assert!(none.exit != 0 && none.status == 0, "no client certificate must fail the handshake: {none:?}");
    for (what, issued) in [("expired", &expired), ("foreign CA", &foreign)] {
        let args = with(issued);
        let refused =
            curl(gw.addr, "api.test", "/orders", ca, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        assert!(refused.exit != 0 && refused.status == 0, "{what}: {refused:?}");
    }
    gw.stop().await;

    // Optional client authentication: the plugin decides, so it answers 401 without a
    // certificate, and routes without it serve everyone.
    let routes = [route("mtls", "/workloads", &[("mtls", Some(mtls))]), route("open", "/", &[])].concat();
    let tls = format!("{tls}\nclient_auth = \"optional\"");
    let gw = TestGateway::start(&with_tls(config(upstream, &routes), &tls)).await;
    let anonymous = curl(gw.addr, "api.test", "/workloads", ca, &[]).await;
    assert_eq!((anonymous.exit, anonymous.status), (0, 401), "{anonymous:?}");
    let open = curl(gw.addr, "api.test", "/", ca, &[]).await;
    assert_eq!((open.exit, open.status), (0, 200), "{open:?}");
    let expired_args = with(&expired);
    let still_refused =
        curl(gw.addr, "api.test", "/", ca, &expired_args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(still_refused.status == 0, "a certificate that is sent must be valid: {still_refused:?}");
    gw.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificates_reach_new_connections_while_open_ones_keep_serving() {
    let dir = pki_dir("renew");
    let pki = Pki::new(&dir, "server");
    let first = pki.issue("api", "api.test", &["api.test"], &[], false);
    let upstream = echo_upstream().await;
    let gw = TestGateway::start(&with_tls(config(upstream, &route("all", "/", &[])), &certificates(&[&first]))).await;
    let client = client_config(&pki.ca_file, &["h2", "http/1.1"], None);
    let mut h2 = TlsConnection::open(gw.addr, "api.test", client.clone()).await.unwrap();
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    let client_h1 = client_config(&pki.ca_file, &["http/1.1"], None);
    let mut h1 = TlsConnection::open(gw.addr, "api.test", client_h1).await.unwrap();
    assert_eq!(h2.get("/a").await.unwrap().0, 200);
    assert_eq!(h1.get("/a").await.unwrap().0, 200);
    assert_eq!(h1.server_cert, first.der);

    let renewed = pki.issue("api", "api.test", &["api.test"], &[], false);
    assert_ne!(renewed.der, first.der);
    let mut served = None;
    for _ in 0..100 {
        let fresh = TlsConnection::open(gw.addr, "api.test", client.clone()).await.unwrap();
        if fresh.server_cert == renewed.der {
            served = Some(fresh);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut fresh = served.expect("new connections get the renewed certificate within 5 s");
    assert_eq!(fresh.get("/b").await.unwrap().0, 200);
    assert_eq!(h2.get("/c").await.unwrap().0, 200, "an open h2 connection keeps serving");
    assert_eq!(h1.get("/c").await.unwrap().0, 200, "an open HTTP/1.1 connection keeps serving");

    // A broken renewal is refused and the last good certificate keeps being served.
    portcullis_e2e::replace_file(
        &renewed.key_file,
        b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    );
    let mut last = None;
    for _ in 0..100 {
        last = gw.gateway.reloads().pop().filter(|r| r.result == "error");
        if last.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = last.expect("the broken key is refused by a reload within 5 s");
    assert!(last.error.as_deref().unwrap_or("").contains("listener[0].tls.certificates[0].key_file"), "{last:?}");
    let after = TlsConnection::open(gw.addr, "api.test", client).await.unwrap();
    assert_eq!(after.server_cert, renewed.der);
    gw.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_are_reached_over_tls_and_http2_with_a_client_certificate() {
    let dir = pki_dir("upstream");
    let backends = Pki::new(&dir, "backends");
    let backend = backends.issue("backend", "backend", &["backend.test"], &[], false);
    let gateways = Pki::new(&dir, "gateways");
    let gateway_cert = gateways.issue("gateway", "gateway", &["gateway.test"], &[], false);
    let tls_upstream = tls_echo_upstream(&backend, Some(&gateways.ca_file)).await;
    let h2c_upstream = echo_upstream().await;

    let tls_table = |protocol: &str, server_name: &str, client_cert: bool| {
        let mut t = format!(
            "protocol = \"{protocol}\"\ntls = {{ ca_file = \"{}\", server_name = \"{server_name}\"",
            backends.ca_file.display()
        );
        if client_cert {
            t.push_str(&format!(
                ", client_cert_file = \"{}\", client_key_file = \"{}\"",
                gateway_cert.cert_file.display(),
                gateway_cert.key_file.display()
            ));
        }
        t + " }"
    };
    let upstream = |name: &str, addr: std::net::SocketAddr, extra: &str| {
        format!("[upstream.{name}]\nendpoints = [\"{addr}\"]\n{extra}\n\n")
    };
    let extra = [
        upstream("tls_h2", tls_upstream, &tls_table("http2", "backend.test", true)),
        upstream("tls_h1", tls_upstream, &tls_table("http1", "backend.test", true)),
        upstream("no_client_cert", tls_upstream, &tls_table("http2", "backend.test", false)),
        upstream("wrong_name", tls_upstream, &tls_table("http2", "other.test", true)),
        upstream("h2c", h2c_upstream, "protocol = \"http2\""),
    ]
    .concat();
    let routes: String = ["tls_h2", "tls_h1", "no_client_cert", "wrong_name", "h2c"]
        .iter()
        .map(|name| format!("\n[[route]]\nid = \"{name}\"\npath_prefix = \"/{name}\"\nupstream = \"{name}\"\n"))
        .collect();
    let gw = TestGateway::start(&config_with(h2c_upstream, &extra, &routes)).await;

    let reply = get(&gw.url("/tls_h2/x"), &[]).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["version"], "HTTP/2.0");
    assert_eq!(reply.json()["path"], "/tls_h2/x");
    let reply = get(&gw.url("/tls_h1/x"), &[]).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["version"], "HTTP/1.1");
    let reply = get(&gw.url("/h2c/x"), &[]).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["version"], "HTTP/2.0");
    for refused in ["/no_client_cert/x", "/wrong_name/x"] {
        let reply = get(&gw.url(refused), &[]).await;
        assert_eq!(reply.status, 502, "{refused}: {:?}", reply.body);
    }
    gw.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_are_refused_with_the_field_and_file() {
    let dir = pki_dir("bad");
    let pki = Pki::new(&dir, "server");
    let api = pki.issue("api", "api.test", &["api.test"], &[], false);
    let other = pki.issue("other", "other.test", &["other.test"], &[], false);
    let upstream = echo_upstream().await;
    let base = config(upstream, &route("all", "/", &[]));
    let missing = Path::new("/nonexistent/cert.pem");
    let cases = [
        (
            format!(
                "certificates = [{{ cert_file = \"{}\", key_file = \"{}\" }}]",
                missing.display(),
                api.key_file.display()
            ),
            "listener[0].tls.certificates[0].cert_file",
        ),
        (
            format!(
                "certificates = [{{ cert_file = \"{}\", key_file = \"{}\" }}]",
                api.cert_file.display(),
                other.key_file.display()
            ),
            "listener[0].tls.certificates[0].key_file",
        ),
        (
            format!("{}\nclient_ca_file = \"{}\"", certificates(&[&api]), api.key_file.display()),
            "listener[0].tls.client_ca_file",
        ),
        (format!("{}\nalpn = [\"spdy/3\"]", certificates(&[&api])), "listener[0].tls.alpn[0]"),
    ];
    for (tls, field) in cases {
        let (config_dir, file) = write_config(&with_tls(base.clone(), &tls));
        let error = match portcullis::Gateway::start_with_engine(&file, portcullis_e2e::engine()).await {
            Ok(_) => panic!("{field}: the gateway must refuse this TLS configuration"),
            Err(e) => e.to_string(),
        };
        assert!(error.contains(field), "{field}: {error}");
        assert!(error.contains("gateway.toml"), "{field}: the message names the file: {error}");
        let _ = std::fs::remove_dir_all(config_dir);
    }
    let _ = std::fs::remove_dir_all(dir);
}
