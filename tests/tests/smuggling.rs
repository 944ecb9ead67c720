//! A table-driven request-smuggling suite: raw bytes to the gateway over TCP, and a raw
//! upstream that records the exact bytes it receives. Each case is either rejected (a 4xx and
//! the connection closed, nothing forwarded) or forwarded as exactly one request with
//! unambiguous framing (never both `Content-Length` and `Transfer-Encoding`, never the client's
//! framing headers as sent).

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
    ("CL and TE together (CL.TE)", "POST /s HTTP/1.1\r\nHost: gw\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGPOST /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n", Expect::ForwardedOnceThenClosed),
    ("TE and CL together (TE.CL)", "POST /s HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n44\r\nGPOST /smuggled HTTP/1.1\r\nHost: gw\r\nContent-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n\r\n0\r\n\r\n", Expect::ForwardedOnceThenClosed),
    ("duplicate Content-Length, different values", "POST /s HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc", Expect::Rejected),
    ("Content-Length list", "POST /s HTTP/1.1\r\nHost: gw\r\nContent-Length: 3, 40\r\n\r\nabc", Expect::Rejected),
    ("negative Content-Length", "POST /s HTTP/1.1\r\nHost: gw\r\nContent-Length: -3\r\n\r\nabc", Expect::Rejected),
    ("Content-Length with a plus sign", "POST /s HTTP/1.1\r\nHost: gw\r\nContent-Length: +3\r\n\r\nabc", Expect::Rejected),
    ("obfuscated TE: leading comma", "POST /s HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: ,chunked\r\n\r\n0\r\n\r\n", Expect::Rejected),
    ("obfuscated TE: xchunked", "POST /s HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", Expect::Rejected),
    ("obfuscated TE: chunked then identity", "POST /s HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", Expect::Rejected),
    ("TE with whitespace before the colon", "POST /s HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", Expect::Rejected),
    ("bad chunk size", "POST /s HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", Expect::Rejected),
    ("chunk size overflow", "POST /s HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n0\r\n\r\n", Expect::Rejected),
    ("bare LF line endings", "GET /s HTTP/1.1\nHost: gw\nX-A: 1\n\n", Expect::ForwardedOnce),
    ("bare CR in a header value", "GET /s HTTP/1.1\r\nHost: gw\r\nX-A: 1\rX-B: 2\r\n\r\n", Expect::Rejected),
    ("NUL in a header value", "GET /s HTTP/1.1\r\nHost: gw\r\nX-A: a\0b\r\n\r\n", Expect::Rejected),
    ("obs-fold", "GET /s HTTP/1.1\r\nHost: gw\r\nX-A: 1\r\n  folded\r\n\r\n", Expect::Rejected),
    ("whitespace before the colon", "GET /s HTTP/1.1\r\nHost: gw\r\nX-A : 1\r\n\r\n", Expect::Rejected),
    ("pipelined request after an invalid one", "GET /s HTTP/1.1\r\nHost: gw\r\nX-A : 1\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n", Expect::Rejected),
    ("valid chunked body", "POST /s HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", Expect::ForwardedOnce),
    ("valid Content-Length body", "POST /s HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\nabc", Expect::ForwardedOnce),
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
