//! Request hygiene through the real gateway, over raw TCP so the request line reaches it byte
//! for byte: paths are normalized before routing and plugins, so a route's chain cannot be
//! bypassed with dot segments, encoded dots or doubled slashes; ambiguous paths get 400;
//! header names with underscores are dropped; spoofed `x-forwarded-for`, `Forwarded`,
//! `X-Real-IP` and the like are not believed.

#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions: a panic is the failure report")]

use portcullis_e2e::{JWT_CONFIG, TestGateway, config, echo_upstream, listener_with, route};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `raw` (a whole HTTP/1.1 request) and returns the status and body of the answer.
async fn raw(gw: &TestGateway, request: &str) -> (u16, String) {
    let addr = gw.url("").trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n{extra}\r\n")
}

/// The echo upstream's JSON out of a (possibly chunked) body.
fn echoed(body: &str) -> Value {
    let start = body.find('{').unwrap();
    let end = body.rfind('}').unwrap();
    serde_json::from_str(&body[start..=end]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_and_encodings_cannot_bypass_a_protected_route() {
    let upstream = echo_upstream().await;
    let routes = [route("admin", "/admin", &[("jwt", Some(JWT_CONFIG))]), route("public", "/", &[])].concat();
    let gw = TestGateway::start(&config(upstream, &routes)).await;
    for path in [
        "/admin/users",
        "/public/../admin/users",
        "/%2e%2e/admin/users",
        "/public/%2E%2E/admin/users",
        "//admin/users",
        "/./admin//users",
        "/%61dmin/users",
    ] {
        let (status, _) = raw(&gw, &get(path, "")).await;
        assert_eq!(status, 401, "{path} must reach the protected route's chain");
    }
    for path in ["/admin%2fusers", "/public%2f..%2fadmin", "/public\\..\\admin", "/a%00b", "/a%zz"] {
        let (status, body) = raw(&gw, &get(path, "")).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("urn:portcullis:problem:bad-request"), "{path}: {body}");
    }
    let (status, body) = raw(&gw, &get("/public/a/../b//c?q=%2e%2e", "")).await;
    assert_eq!(status, 200);
    let echo = echoed(&body);
    assert_eq!(echo["path"], "/public/b/c", "the upstream gets the normalized path");
    assert_eq!(echo["query"], "q=%2e%2e", "and the query as sent");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_headers_are_dropped_and_forwarded_for_is_not_believed() {
    let upstream = echo_upstream().await;
    let gw = TestGateway::start(&config(upstream, &route("public", "/", &[]))).await;
    let (status, body) = raw(&gw, &get("/x", "x_user_id: root\r\nx-forwarded-for: 6.6.6.6\r\nx-keep: 1\r\n")).await;
    assert_eq!(status, 200);
    let echo = echoed(&body);
    assert!(echo["headers"].get("x_user_id").is_none(), "{echo}");
    assert_eq!(echo["headers"]["x-keep"][0], "1");
    assert_eq!(echo["headers"]["x-forwarded-for"][0], "127.0.0.1", "a client's own x-forwarded-for is replaced");
    let (status, _) = raw(&gw, "GET http://a.test/x HTTP/1.1\r\nhost: b.test\r\nconnection: close\r\n\r\n").await;
    assert_eq!(status, 400, "Host and the absolute-form target disagree");
    gw.stop().await;
}

/// Forwarding and client-IP fields a client may set to pose as someone else.
const SPOOFED: &str = "forwarded: for=6.6.6.6;proto=https\r\nx-real-ip: 6.6.6.6\r\nx-forwarded-host: admin.internal\r\n\
                       x-forwarded-proto: https\r\nx-forwarded-port: 443\r\ntrue-client-ip: 6.6.6.6\r\nx-client-ip: 6.6.6.6\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_clients_forwarding_fields_are_replaced_by_the_gateways_own() {
    let upstream = echo_upstream().await;
    let text = listener_with(config(upstream, &route("public", "/", &[])), "forwarded_headers = \"both\"");
    let gw = TestGateway::start(&text).await;
    let (status, body) = raw(&gw, &get("/x", SPOOFED)).await;
    assert_eq!(status, 200);
    let seen = &echoed(&body)["headers"];
    assert_eq!(seen["forwarded"][0], "for=127.0.0.1;proto=http;host=\"gw.test\"", "{seen}");
    assert_eq!((&seen["x-forwarded-for"][0], &seen["x-forwarded-proto"][0]), (&"127.0.0.1".into(), &"http".into()));
    for gone in ["x-real-ip", "x-forwarded-host", "x-forwarded-port", "true-client-ip", "x-client-ip"] {
        assert!(seen.get(gone).is_none(), "{gone} reached the upstream: {seen}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_forwarding_fields_are_kept_and_extended() {
    let upstream = echo_upstream().await;
    let text = listener_with(
        config(upstream, &route("public", "/", &[])),
        "trusted_proxies = [\"127.0.0.1\"]\nforwarded_headers = \"forwarded\"",
    );
    let gw = TestGateway::start(&text).await;
    let (status, body) = raw(&gw, &get("/x", SPOOFED)).await;
    assert_eq!(status, 200);
    let seen = &echoed(&body)["headers"];
    assert_eq!(seen["forwarded"][0], "for=6.6.6.6;proto=https, for=127.0.0.1;proto=http;host=\"gw.test\"", "{seen}");
    assert_eq!(seen["x-real-ip"][0], "6.6.6.6", "kept from a trusted proxy");
    assert!(seen.get("x-forwarded-for").is_none(), "`forwarded` alone adds no X-Forwarded-For: {seen}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_forwarded_client_ip_is_used_and_the_chain_kept() {
    let upstream = echo_upstream().await;
    let text = listener_with(
        config(upstream, &route("public", "/", &[("audit", None)])),
        "trusted_proxies = [\"127.0.0.0/8\"]",
    );
    let gw = TestGateway::start(&text).await;
    let (status, body) =
        raw(&gw, &get("/x", "x-request-id: trusted-xff\r\nx-forwarded-for: 198.51.100.7, 127.0.0.2\r\n")).await;
    assert_eq!(status, 200);
    assert_eq!(echoed(&body)["headers"]["x-forwarded-for"][0], "198.51.100.7, 127.0.0.2, 127.0.0.1");
    let records = gw.audit_records(1).await;
    assert_eq!(records[0]["client_ip"], "198.51.100.7", "plugins see the first untrusted hop");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431_and_414_and_excess_connections_are_closed() {
    let upstream = echo_upstream().await;
    let text = listener_with(
        config(upstream, &route("public", "/", &[])),
        "max_connections = 2\nmax_request_header_bytes = 16384",
    );
    let gw = TestGateway::start(&text).await;
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    assert_eq!(raw(&gw, &get("/x", &many)).await.0, 431, "more than 100 header fields");
    let big = format!("x-big: {}\r\n", "a".repeat(20_000));
    assert_eq!(raw(&gw, &get("/x", &big)).await.0, 431, "a head over max_request_header_bytes");
    let (status, body) = raw(&gw, &get(&format!("/{}", "a".repeat(9000)), "")).await;
    assert_eq!(status, 414, "{body}");
    assert!(body.contains("uri-too-long"));
    assert_eq!(raw(&gw, &get("/x", "x-fine: 1\r\n")).await.0, 200);
    // Two idle keep-alive connections fill the listener; a third is closed on accept. The
    // gateway closed the connections above itself, and frees a connection's slot a moment
    // after the client sees it close (its task ends after the socket does): a connection
    // turned away in that moment is tried again, for up to 5 s.
    let addr = gw.url("").trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while held.len() < 2 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut buf = [0u8; 12];
        let answered = match s.write_all(b"GET /x HTTP/1.1\r\nhost: gw.test\r\n\r\n").await {
            Ok(()) => s.read_exact(&mut buf).await.map(|_| ()),
            Err(e) => Err(e),
        };
        match answered {
            Ok(()) => {
                assert_eq!(&buf[9..12], b"200");
                held.push(s);
            }
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "no connection slot came free within 5 s: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    let mut third = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _ = third.write_all(b"GET /x HTTP/1.1\r\nhost: gw.test\r\n\r\n").await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), third.read_to_end(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the third connection is closed unanswered: {:?}",
        String::from_utf8_lossy(&buf)
    );
    drop(held);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(raw(&gw, &get("/x", "")).await.0, 200, "room again once they close");
    gw.stop().await;
}
