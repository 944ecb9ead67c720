//! Time and connection limits on loopback, each bounded in time: slow request bodies get 408
//! and are never timed or blamed against the upstream; a connection that starts no request is
//! closed; idle keep-alive connections are closed (HTTP/1.1) or sent GOAWAY (HTTP/2) and closed
//! hard when the client ignores it; a connection flood is capped at `max_connections` (and per
//! client IP) without starving later clients; and shutdown drains in-flight requests up to
//! `drain_timeout_ms`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use portcullis_e2e::{TestGateway, config, echo_upstream, listener_with, route, serve, silent_upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the peer closes (at most `limit`): the bytes, and whether it closed in time.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(limit, stream.read_to_end(&mut out)).await.is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_bodies_get_408_and_the_connection_is_closed() {
    let upstream = echo_upstream().await;
    // `validated` buffers the body for its validation step; `streamed` sends it upstream as it
    // comes.
    let validate = r#"{ max_body_bytes = 1024 }"#;
    let routes =
        [route("validated", "/validated", &[("validate", Some(validate))]), route("streamed", "/", &[])].concat();
    let toml = listener_with(config(upstream, &routes), "body_idle_timeout_ms = 300\nbody_timeout_ms = 900");
    let gw = TestGateway::start(&toml).await;

    for path in ["/validated", "/streamed"] {
        // Idle: two bytes of ten, then nothing.
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: gw.test\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\n{{\""
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let (text, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert!(closed, "{path}: the connection must be closed");
        assert!(text.starts_with("HTTP/1.1 408"), "{path}: {text}");
        assert!(text.contains("urn:portcullis:problem:request-timeout"), "{path}: {text}");
        assert!(text.to_ascii_lowercase().contains("connection: close"), "{path}: {text}");
        assert!(started.elapsed() >= Duration::from_millis(250), "{path}: not before the idle timeout");

        // Total: a byte every 100 ms never trips the idle timeout but runs past the total.
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: gw.test\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let trickle = async {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if stream.write_all(b" ").await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(1500), trickle).await;
        let (text, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert!(text.starts_with("HTTP/1.1 408"), "{path}: {text}");
        assert!(started.elapsed() >= Duration::from_millis(850), "{path}: not before the total timeout");
    }
    // A body that arrives in time is unaffected.
    let reply = portcullis_e2e::request("POST", &gw.url("/streamed"), &[], "on time").await;
    assert_eq!(reply.status, 200);
    gw.stop().await;
}

/// Endpoint 0 of upstream `app` as `/status` shows it.
async fn app_endpoint(gw: &TestGateway) -> serde_json::Value {
    let status = portcullis_e2e::get(&format!("http://{}/status", gw.admin), &[]).await.json();
    status["upstreams"]["app"]["endpoints"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_is_timed_by_the_body_timeouts_never_against_the_upstream() {
    let upstream = echo_upstream().await;
    // `config` gives upstream `app` a 1 s response timeout.
    let toml = listener_with(config(upstream, &route("streamed", "/", &[])), "body_idle_timeout_ms = 400");
    let gw = TestGateway::start(&toml).await;

    // 192 KiB at 64 KiB/s: three times the response timeout, and never idle for 400 ms.
    let (chunk, chunks) = (8 * 1024, 24);
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: gw.test\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        chunk * chunks
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    for _ in 0..chunks {
        stream.write_all(&vec![b'x'; chunk]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(125)).await;
    }
    let (text, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    println!("192 KiB at 64 KiB/s through a 1 s response timeout: {:?}, {:?}", text.lines().next(), started.elapsed());
    assert!(closed && text.starts_with("HTTP/1.1 200"), "{text:.200}");
    assert!(started.elapsed() > Duration::from_millis(2500), "the upload really was slow");

    // A client that stops halfway gets 408 from the idle timeout, and the endpoint is not
    // blamed for it.
    for _ in 0..3 {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        let head = "POST /upload HTTP/1.1\r\nhost: gw.test\r\ncontent-length: 1000\r\n\r\n0123456789";
        stream.write_all(head.as_bytes()).await.unwrap();
        let (text, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert!(text.starts_with("HTTP/1.1 408"), "{text:.200}");
    }
    let endpoint = app_endpoint(&gw).await;
    assert_eq!((endpoint["failures"].as_u64(), endpoint["available"].as_bool()), (Some(0), Some(true)), "{endpoint}");
    gw.stop().await;
}

/// The HTTP/2 connection preface and an empty SETTINGS frame (RFC 9113 §3.4, §6.5).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// A HEADERS frame on stream 1 with END_STREAM and END_HEADERS: `GET http://gw.test/` in HPACK
/// (static-table `:method GET`, `:scheme http`, `:path /`, a literal `:authority`).
const H2_GET: &[u8] = b"\x00\x00\x0c\x01\x05\x00\x00\x00\x01\x82\x86\x84\x41\x07gw.test";

/// How long until the gateway closes `stream` (reading and discarding what it sends), at most
/// `limit`; `None` if it is still open then.
async fn closed_after(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let read_all = async { while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {} };
    tokio::time::timeout(limit, read_all).await.ok().map(|()| started.elapsed())
}

/// With the keep-alive shorter than the head-read time, a connection that sends nothing is
/// idle first: asked to close at the keep-alive (200 ms) and closed hard `drain_timeout_ms`
/// later, not left to the 3 s head-read time (its task re-arming a past deadline meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_at_a_keep_alive_shorter_than_the_head_read_time() {
    let settings = "header_read_timeout_ms = 3000\nkeep_alive_timeout_ms = 200\ndrain_timeout_ms = 200";
    let gw =
        TestGateway::start(&listener_with(config(echo_upstream().await, &route("public", "/", &[])), settings)).await;
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let after = closed_after(&mut silent, Duration::from_secs(6)).await.expect("a silent connection is closed");
    println!("silent TCP connection, keep-alive 200 ms, head-read 3 s: closed after {after:?}");
    assert!(
        after >= Duration::from_millis(150) && after < Duration::from_millis(1500),
        "{after:?}: not the keep-alive and drain (200 + 200 ms)"
    );
    let reply = portcullis_e2e::get(&gw.url("/after"), &[]).await;
    assert_eq!(reply.status, 200, "the listener still serves");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_stage_is_bounded_silent_sniffing_and_unacknowledged_goaway() {
    let upstream = echo_upstream().await;
    let settings = "header_read_timeout_ms = 300\nkeep_alive_timeout_ms = 1000\ndrain_timeout_ms = 300";
    let gw = TestGateway::start(&listener_with(config(upstream, &route("public", "/", &[])), settings)).await;

    // A TCP connection that sends nothing: closed at the header-read timeout, not at 60 s.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let after = closed_after(&mut silent, Duration::from_secs(5)).await.expect("a silent connection is closed");
    println!("silent TCP connection closed after {after:?}");
    assert!(
        after >= Duration::from_millis(250) && after < Duration::from_millis(900),
        "{after:?}: not the 1 s keep-alive"
    );

    // An h2c client that sends its preface and SETTINGS and then nothing.
    let mut preface_only = TcpStream::connect(gw.addr).await.unwrap();
    preface_only.write_all(H2_PREFACE).await.unwrap();
    let after = closed_after(&mut preface_only, Duration::from_secs(5)).await.expect("closed");
    println!("h2c preface and SETTINGS only: closed after {after:?}");
    assert!(after < Duration::from_millis(900), "{after:?}: not the 1 s keep-alive");

    // An h2c client that makes a request, then never acknowledges SETTINGS, GOAWAY or PING:
    // asked to close when idle (1 s), closed hard 300 ms later.
    let mut deaf = TcpStream::connect(gw.addr).await.unwrap();
    deaf.write_all(H2_PREFACE).await.unwrap();
    deaf.write_all(H2_GET).await.unwrap();
    let after = closed_after(&mut deaf, Duration::from_secs(10)).await.expect("an un-acked h2c connection is closed");
    println!("h2c client ignoring GOAWAY and PING: closed after {after:?}");
    assert!(after >= Duration::from_millis(1200) && after < Duration::from_secs(4), "{after:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_per_ip_cap_are_closed_and_the_slot_comes_back() {
    let upstream = echo_upstream().await;
    let gw =
        TestGateway::start(&listener_with(config(upstream, &route("public", "/", &[])), "max_connections_per_ip = 2"))
            .await;
    let first = TcpStream::connect(gw.addr).await.unwrap();
    let _second = TcpStream::connect(gw.addr).await.unwrap();
    let mut third = TcpStream::connect(gw.addr).await.unwrap();
    // The header-read timeout is 10 s: a close within 2 s is the cap.
    assert!(closed_after(&mut third, Duration::from_secs(2)).await.is_some(), "the third connection is refused");
    drop(first);
    let started = Instant::now();
    loop {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(b"GET /x HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n\r\n").await.unwrap();
        let (text, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        if text.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the closed connection's slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_past_the_route_limit_get_413_declared_or_streamed() {
    let upstream = echo_upstream().await;
    let small =
        route("small", "/small", &[]).replacen("upstream = \"app\"\n", "upstream = \"app\"\nmax_body_bytes = 16\n", 1);
    let routes = [small, route("default", "/", &[])].concat();
    let gw = TestGateway::start(&config(upstream, &routes)).await;
    // Declared: refused before the body is read, and the connection is closed.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(b"POST /small HTTP/1.1\r\nhost: gw.test\r\ncontent-length: 17\r\n\r\n").await.unwrap();
    let (text, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 413") && closed, "{text}");
    assert!(text.contains("urn:portcullis:problem:body-too-large"), "{text}");
    // Streamed (chunked): cut off when it grows past the limit.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let chunked = b"POST /small HTTP/1.1\r\nhost: gw.test\r\ntransfer-encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
    stream.write_all(chunked).await.unwrap();
    let (text, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 413") && closed, "{text}");
    // At the limit, and on a route with the default limit, bodies pass.
    let reply = portcullis_e2e::request("POST", &gw.url("/small"), &[], "0123456789abcdef").await;
    assert_eq!(reply.status, 200);
    let reply = portcullis_e2e::request("POST", &gw.url("/other"), &[], &"x".repeat(64 * 1024)).await;
    assert_eq!(reply.status, 200);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_http1_and_http2() {
    let upstream = echo_upstream().await;
    let toml = listener_with(config(upstream, &route("all", "/", &[])), "keep_alive_timeout_ms = 400");
    let gw = TestGateway::start(&toml).await;

    // HTTP/1.1: two requests on one connection, then silence.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    for _ in 0..2 {
        stream.write_all(b"GET /a HTTP/1.1\r\nhost: gw.test\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 16 * 1024];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let idle_since = Instant::now();
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(closed, "an idle HTTP/1.1 connection is closed");
    assert!(idle_since.elapsed() >= Duration::from_millis(150), "not while it was in use");

    // HTTP/2 (prior knowledge): the connection ends with GOAWAY once idle.
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let driver = tokio::spawn(connection);
    let request = http::Request::get(format!("http://{}/b", gw.addr)).body(Full::new(Bytes::new())).unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection is shut down");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_capped_and_later_clients_are_served() {
    let upstream = echo_upstream().await;
    let toml =
        listener_with(config(upstream, &route("all", "/", &[])), "max_connections = 32\nheader_read_timeout_ms = 500");
    let gw = TestGateway::start(&toml).await;
    // 300 connections that send a partial head and stall (slowloris).
    let mut flood = Vec::new();
    for _ in 0..300 {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        let _ = stream.write_all(b"GET / HTTP/1.1\r\nhost: gw.test\r\nx-slow: ").await;
        flood.push(stream);
    }
    // Those past the cap are closed at once; the rest when their head times out.
    let started = Instant::now();
    let mut closed_early = 0;
    for stream in &mut flood {
        let mut buf = [0u8; 512];
        let read =
            tokio::time::timeout(Duration::from_millis(300).saturating_sub(started.elapsed()), stream.read(&mut buf))
                .await;
        if matches!(read, Ok(Ok(0)) | Ok(Err(_))) {
            closed_early += 1;
        }
    }
    assert!(closed_early >= 300 - 32, "only {closed_early} of the connections past the cap were closed at once");
    for stream in &mut flood {
        let (_, closed) = read_until_closed(stream, Duration::from_secs(5)).await;
        assert!(closed, "a stalled head is cut off by header_read_timeout_ms");
    }
    drop(flood);
    // The slots are free again.
    let reply = portcullis_e2e::get(&gw.url("/after"), &[]).await;
    assert_eq!(reply.status, 200);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests_up_to_the_drain_timeout() {
    // An upstream that answers after 500 ms.
    let (slow, _task) = serve(|_, _, _, _| {
        std::thread::sleep(Duration::from_millis(500));
        (200, "text/plain", "late but whole".into())
    })
    .await;
    let gw = TestGateway::start(&listener_with(config(slow, &route("all", "/", &[])), "drain_timeout_ms = 3000")).await;
    let url = gw.url("/slow");
    let in_flight = tokio::spawn(async move { portcullis_e2e::get(&url, &[]).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let addr = gw.addr;
    let stopped = Instant::now();
    gw.stop().await;
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200, "the in-flight request finishes during the drain");
    assert_eq!(reply.body, "late but whole");
    assert!(stopped.elapsed() < Duration::from_secs(3), "the drain ends when the last request does");
    assert!(TcpStream::connect(addr).await.is_err(), "no new connections after shutdown");

    // An upstream that never answers: the drain gives up at its deadline.
    let gw = TestGateway::start(&listener_with(
        config(silent_upstream().await, &route("all", "/", &[])),
        "drain_timeout_ms = 300",
    ))
    .await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(b"GET /stuck HTTP/1.1\r\nhost: gw.test\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopped = Instant::now();
    gw.stop().await;
    assert!(stopped.elapsed() < Duration::from_secs(2), "shutdown is bounded by drain_timeout_ms");
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(2)).await;
    assert!(closed, "the stuck connection is closed");
}
