//! A table-driven request-smuggling suite: raw bytes to the gateway over TCP, and a raw
//! upstream that records the exact bytes it receives. Each case is either rejected (a 4xx and
//! the connection closed, nothing forwarded) or forwarded as exactly one request with
//! unambiguous framing (never both `Content-Length` and `Transfer-Encoding`, never the client's
//! framing headers as sent).

#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions: a panic is the failure report")]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_e2e::{TestGateway, config, route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An upstream that answers every request `200 ok` and records everything it read.
async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let record = record.clone();
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let n = match tokio::time::timeout(Duration::from_millis(150), stream.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => return,
                        Ok(Ok(n)) => n,
                        // Quiet: answer what arrived (one response per request line seen).
                        Err(_) => {
                            if pending.is_empty() {
                                continue;
                            }
                            let requests = count_requests(&pending);
                            record.lock().unwrap().extend_from_slice(&pending);
                            pending.clear();
                            for _ in 0..requests.max(1) {
                                if stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                                    return;
                                }
                            }
                            continue;
                        }
                    };
                    pending.extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (addr, seen)
}

/// Requests the gateway forwarded in `bytes`: it adds exactly one `x-request-id` to each.
fn forwarded_requests(bytes: &[u8]) -> usize {
    String::from_utf8_lossy(bytes).to_ascii_lowercase().matches("\r\nx-request-id: ").count()
}

/// Request lines (`METHOD /path HTTP/1.1`) at the start of a line in `bytes` (an upper bound
/// on requests, used to answer each).
fn count_requests(bytes: &[u8]) -> usize {
    String::from_utf8_lossy(bytes)
        .split("\r\n")
        .filter(|line| {
            let mut parts = line.split(' ');
            matches!((parts.next(), parts.next(), parts.next(), parts.next()), (Some(m), Some(p), Some("HTTP/1.1"), None)
                if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) && p.starts_with('/'))
        })
        .count()
}

/// Sends `bytes` and reads until the gateway closes or goes quiet; returns the statuses seen
/// and whether the connection was closed.
async fn send(gw: &TestGateway, bytes: &[u8]) -> (Vec<u16>, bool) {
    let addr = gw.url("").trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match tokio::time::timeout(Duration::from_millis(800), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&out);
    let statuses = text.match_indices("HTTP/1.1 ").filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok()).collect();
    (statuses, closed)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A 4xx, the connection closed, nothing forwarded.
    Rejected,
    /// Exactly one request reaches the upstream.
    ForwardedOnce,
    /// Exactly one request reaches the upstream, framed by `Transfer-Encoding` alone, and the
    /// client connection is closed after the response (RFC 9112 §6.3: a request with both
    /// framings is read by its `Transfer-Encoding`, and the connection is not reused).
    ForwardedOnceThenClosed,
}

const CASES: &[(&str, &str, Expect)] = &[
    (
        "CL and TE together (CL.TE)",
        "POST /s HTTP/1.1\r\nHost: gw\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGPOST /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n",
        Expect::ForwardedOnceThenClosed,
    ),
    (
        "TE and CL together (TE.CL)",
        "POST /s HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n44\r\nGPOST /smuggled HTTP/1.1\r\nHost: gw\r\nContent-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n\r\n0\r\n\r\n",
        Expect::ForwardedOnceThenClosed,
    ),
    (
        "duplicate Content-Length, different values",
        "POST /s HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc",
        Expect::Rejected,
    ),
    ("Content-Length list", "POST /s HTTP/1.1\r\nHost: gw\r\nContent-Length: 3, 40\r\n\r\nabc", Expect::Rejected),
    ("negative Content-Length", "POST /s HTTP/1.1\r\nHost: gw\r\nContent-Length: -3\r\n\r\nabc", Expect::Rejected),
    (
        "Content-Length with a plus sign",
        "POST /s HTTP/1.1\r\nHost: gw\r\nContent-Length: +3\r\n\r\nabc",
        Expect::Rejected,
    ),
    (
        "obfuscated TE: leading comma",
        "POST /s HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: ,chunked\r\n\r\n0\r\n\r\n",
        Expect::Rejected,
    ),
    (
        "obfuscated TE: xchunked",
        "POST /s HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        Expect::Rejected,
    ),
    (
        "obfuscated TE: chunked then identity",
        "POST /s HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        Expect::Rejected,
    ),
    (
        "TE with whitespace before the colon",
        "POST /s HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        Expect::Rejected,
    ),
    (
        "bad chunk size",
        "POST /s HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        Expect::Rejected,
    ),
    (
        "chunk size overflow",
        "POST /s HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        Expect::Rejected,
    ),
    ("bare LF line endings", "GET /s HTTP/1.1\nHost: gw\nX-A: 1\n\n", Expect::ForwardedOnce),
    ("bare CR in a header value", "GET /s HTTP/1.1\r\nHost: gw\r\nX-A: 1\rX-B: 2\r\n\r\n", Expect::Rejected),
    ("NUL in a header value", "GET /s HTTP/1.1\r\nHost: gw\r\nX-A: a\0b\r\n\r\n", Expect::Rejected),
    ("obs-fold", "GET /s HTTP/1.1\r\nHost: gw\r\nX-A: 1\r\n  folded\r\n\r\n", Expect::Rejected),
    ("whitespace before the colon", "GET /s HTTP/1.1\r\nHost: gw\r\nX-A : 1\r\n\r\n", Expect::Rejected),
    (
        "pipelined request after an invalid one",
        "GET /s HTTP/1.1\r\nHost: gw\r\nX-A : 1\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n",
        Expect::Rejected,
    ),
    (
        "valid chunked body",
        "POST /s HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        Expect::ForwardedOnce,
    ),
    (
        "valid Content-Length body",
        "POST /s HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\nabc",
        Expect::ForwardedOnce,
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_smuggling_case_is_rejected_or_forwarded_once_with_clean_framing() {
    let (upstream, seen) = recording_upstream().await;
    let gw = TestGateway::start(&config(upstream, &route("all", "/", &[]))).await;
    let mut failures = Vec::new();
    for (name, bytes, expect) in CASES {
        seen.lock().unwrap().clear();
        let (statuses, closed) = send(&gw, bytes.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        let forwarded = seen.lock().unwrap().clone();
        let text = String::from_utf8_lossy(&forwarded).to_ascii_lowercase();
        let requests = forwarded_requests(&forwarded);
        let head_end = text.find("\r\n\r\n").unwrap_or(text.len());
        let ok = match expect {
            Expect::Rejected => requests == 0 && closed && statuses.first().is_some_and(|s| (400..500).contains(s)),
            Expect::ForwardedOnce | Expect::ForwardedOnceThenClosed => {
                let head = &text[..head_end];
                requests == 1
                    && (head.starts_with("post /s ") || head.starts_with("get /s "))
                    && !(head.contains("content-length:") && head.contains("transfer-encoding:"))
                    && statuses == [200]
                    && (*expect == Expect::ForwardedOnce || closed)
            }
        };
        if !ok {
            failures.push(format!("{name}: expected {expect:?}; client got {statuses:?} (closed: {closed}); upstream got {requests} request(s): {text:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    gw.stop().await;
}

/// An HTTP/2 frame: 24-bit length, type, flags, 31-bit stream id, payload (RFC 9113 §4.1).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK block of literal fields without indexing and without Huffman coding (RFC 7541
/// §6.2.2), so any bytes, CR and LF included, reach the server's decoder as written.
fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        for text in [name, value] {
            assert!(text.len() < 127, "one-byte lengths only");
            out.push(u8::try_from(text.len()).unwrap());
            out.extend_from_slice(text.as_bytes());
        }
    }
    out
}

/// What an HTTP/2 server did with stream 1.
#[derive(Debug, PartialEq, Eq)]
enum H2Answer {
    /// Response headers; the status when it was sent as a static-table index (200, 400, …).
    Headers(Option<u16>),
    /// RST_STREAM on stream 1.
    Reset,
    /// GOAWAY for the connection.
    GoAway,
    /// Nothing within the time limit.
    Silence,
}

/// Sends the preface, SETTINGS and `request` frames on a fresh h2c connection, and reads frames
/// until stream 1 is answered.
async fn h2_send(gw: &TestGateway, request: &[u8]) -> H2Answer {
    let addr = gw.url("").trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(frame(4, 0, 0, &[]));
    bytes.extend_from_slice(request);
    stream.write_all(&bytes).await.unwrap();
    let read = async {
        loop {
            let mut head = [0u8; 9];
            if stream.read_exact(&mut head).await.is_err() {
                return H2Answer::Silence;
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if stream.read_exact(&mut payload).await.is_err() {
                return H2Answer::Silence;
            }
            let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            match (head[3], id) {
                (1, 1) => {
                    // Static table indices 8..=14 are :status 200, 204, 206, 304, 400, 404, 500.
                    let status = match payload.first() {
                        Some(0x88) => Some(200),
                        Some(0x8c) => Some(400),
                        Some(b) if (0x88..=0x8e).contains(b) => Some(0),
                        _ => None,
                    };
                    return H2Answer::Headers(status);
                }
                (3, 1) => return H2Answer::Reset,
                (7, _) => return H2Answer::GoAway,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3), read).await.unwrap_or(H2Answer::Silence)
}

fn h2_get(extra: &[(&str, &str)]) -> Vec<u8> {
    let mut fields = vec![(":method", "GET"), (":scheme", "http"), (":path", "/s"), (":authority", "gw")];
    fields.extend_from_slice(extra);
    frame(1, 0x4 | 0x1, 1, &hpack(&fields))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_h2_requests_are_reset_and_never_forwarded() {
    let (upstream, seen) = recording_upstream().await;
    let gw = TestGateway::start(&config(upstream, &route("all", "/", &[]))).await;
    let mut post_with_wrong_length = frame(
        1,
        0x4,
        1,
        &hpack(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/s"),
            (":authority", "gw"),
            ("content-length", "3"),
        ]),
    );
    post_with_wrong_length.extend(frame(0, 0x1, 1, b"abcdefgh"));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("transfer-encoding in h2", h2_get(&[("transfer-encoding", "chunked")])),
        ("connection-specific header", h2_get(&[("connection", "keep-alive")])),
        ("CRLF in a header value", h2_get(&[("x-a", "1\r\nx-injected: 2")])),
        ("LF in a header value", h2_get(&[("x-a", "1\nGET /smuggled HTTP/1.1")])),
        ("NUL in a header value", h2_get(&[("x-a", "a\0b")])),
        ("uppercase header name", h2_get(&[("X-Upper", "1")])),
        ("DATA longer than content-length", post_with_wrong_length),
    ];
    let mut failures = Vec::new();
    for (name, bytes) in cases {
        seen.lock().unwrap().clear();
        let answer = h2_send(&gw, &bytes).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        let forwarded = forwarded_requests(&seen.lock().unwrap());
        let rejected = matches!(answer, H2Answer::Reset | H2Answer::GoAway | H2Answer::Headers(Some(400)));
        if !rejected || forwarded != 0 {
            failures.push(format!("{name}: server answered {answer:?}; upstream got {forwarded} request(s)"));
        }
    }
    // The same frames without the defect are served, exactly once.
    seen.lock().unwrap().clear();
    let answer = h2_send(&gw, &h2_get(&[("x-a", "1")])).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(answer, H2Answer::Headers(Some(200)));
    assert_eq!(forwarded_requests(&seen.lock().unwrap()), 1);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    gw.stop().await;
}
