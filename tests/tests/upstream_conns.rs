//! The gateway's own upstream connections (`host/src/upstream/direct.rs`), end to end:
//! sequential requests reuse one upstream connection per endpoint while round robin still
//! alternates, whichever client connections they come on; a response
//! streaming longer than the idle timeout is not cut, and a parked connection is closed after
//! it; an endpoint that closes idle connections costs no request; and after a reload the next
//! request on the same client connection goes where the new configuration says. On the
//! client's side: a client connection is not idle while its response streams, and a stalled
//! next head on it is cut off at `header_read_timeout_ms`.

#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions: a panic is the failure report")]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use portcullis_e2e::{TestGateway, config_with, listener_with, replace_file, send};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A test endpoint: answers `NAME PORT` (the port of the gateway's connection it came on), or
/// on `/drip` six chunks 100 ms apart; counts connections accepted and still open.
struct Endpoint {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    _task: JoinHandle<()>,
}

async fn endpoint(name: &'static str) -> Endpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, o) = (accepted.clone(), open.clone());
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, peer)) = listener.accept().await else { continue };
            a.fetch_add(1, Ordering::SeqCst);
            o.fetch_add(1, Ordering::SeqCst);
            let open = o.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| async move {
                    let body = if request.uri().path() == "/drip" {
                        Drip::new(6).boxed()
                    } else {
                        Full::new(Bytes::from(format!("{name} {}", peer.port())))
                            .map_err(|never| match never {})
                            .boxed()
                    };
                    Ok::<_, std::convert::Infallible>(http::Response::new(body))
                });
                let io = TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Endpoint { addr, accepted, open, _task: task }
}

/// `left` chunks of `chunk\n`, one every 100 ms.
struct Drip {
    left: u32,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Drip {
    fn new(left: u32) -> Self {
        Drip { left, sleep: Box::pin(tokio::time::sleep(Duration::from_millis(100))) }
    }
}

impl Body for Drip {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        std::task::ready!(self.sleep.as_mut().poll(cx));
        self.left -= 1;
        let next = tokio::time::Instant::now() + Duration::from_millis(100);
        self.sleep.as_mut().reset(next);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"chunk\n")))))
    }
}

/// A gateway whose route `/` goes to `endpoints` round robin, with `settings` in the upstream.
async fn gateway(endpoints: &[SocketAddr], settings: &str) -> TestGateway {
    TestGateway::start(&config(endpoints, settings)).await
}

fn config(endpoints: &[SocketAddr], settings: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let extra = format!("[upstream.pool]\nendpoints = [{}]\n{settings}\n", list.join(", "));
    config_with(endpoints[0], &extra, "\n[[route]]\nid = \"pool\"\npath_prefix = \"/\"\nupstream = \"pool\"\n")
}

/// One keep-alive HTTP/1.1 client connection to `addr`.
async fn client(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    sender
}

/// Waits until `sender`'s connection can take a request.
async fn sender_ready(sender: &mut SendRequest<Full<Bytes>>) {
    sender.ready().await.expect("the client connection is open");
}

/// `GET path` on `sender`'s connection: status and body.
async fn get(sender: &mut SendRequest<Full<Bytes>>, path: &str) -> (u16, String) {
    sender_ready(sender).await;
    let request = Request::get(path).header(http::header::HOST, "gateway.test").body(Full::default()).unwrap();
    let response = sender.send_request(request).await.expect("a response");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("the whole body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Waits up to 3 s for `count` to read `want`.
async fn settles(count: &AtomicUsize, want: usize) -> bool {
    for _ in 0..60 {
        if count.load(Ordering::SeqCst) == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_reuse_one_upstream_connection_per_endpoint_under_round_robin() {
    let (a, b) = (endpoint("a").await, endpoint("b").await);
    let gw = gateway(&[a.addr, b.addr], "").await;
    let mut first = client(gw.addr).await;
    let mut answers = Vec::new();
    for _ in 0..8 {
        let (status, body) = get(&mut first, "/").await;
        assert_eq!(status, 200, "{body}");
        answers.push(body);
    }
    // Round robin still alternates, and each endpoint saw one connection: the same port.
    let names: Vec<&str> = answers.iter().map(|b| &b[..1]).collect();
    assert_eq!(names, ["a", "b", "a", "b", "a", "b", "a", "b"]);
    assert!(answers.iter().step_by(2).all(|b| *b == answers[0]), "{answers:?}");
    assert!(answers.iter().skip(1).step_by(2).all(|b| *b == answers[1]), "{answers:?}");
    assert_eq!((a.accepted.load(Ordering::SeqCst), b.accepted.load(Ordering::SeqCst)), (1, 1));

    // Two client connections taking turns share them: the connections are the endpoint's,
    // not a client connection's.
    let mut other = client(gw.addr).await;
    for round in 0..4 {
        let conn = if round % 2 == 0 { &mut first } else { &mut other };
        let (status, body) = get(conn, "/").await;
        assert_eq!(status, 200);
        assert!(body == answers[0] || body == answers[1], "{body} came on a new connection: {answers:?}");
    }
    assert_eq!((a.accepted.load(Ordering::SeqCst), b.accepted.load(Ordering::SeqCst)), (1, 1));
    drop(other);

    // The client leaves; the next client connection gets the parked upstream connections.
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut second = client(gw.addr).await;
    for _ in 0..4 {
        let (status, body) = get(&mut second, "/").await;
        assert_eq!(status, 200);
        assert!(body == answers[0] || body == answers[1], "{body} came on a new connection: {answers:?}");
    }
    assert_eq!((a.accepted.load(Ordering::SeqCst), b.accepted.load(Ordering::SeqCst)), (1, 1));

    drop(second);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // One-request client connections (the test helper's) share them too, once the gateway
    // has seen the previous one close.
    for _ in 0..4 {
        assert_eq!(send(Request::get(gw.url("/")).body(Full::default()).unwrap()).await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!((a.accepted.load(Ordering::SeqCst), b.accepted.load(Ordering::SeqCst)), (1, 1));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_response_outlives_the_idle_timeout_and_a_parked_connection_does_not() {
    let a = endpoint("a").await;
    let gw = gateway(&[a.addr], "pool_idle_timeout_ms = 300").await;
    let mut conn = client(gw.addr).await;
    // 600 ms of streaming, twice the idle timeout: the connection is leased, not idle.
    let (status, body) = get(&mut conn, "/drip").await;
    assert_eq!((status, body.lines().count()), (200, 6), "{body}");
    assert_eq!(a.open.load(Ordering::SeqCst), 1);
    // Parked now: closed by the gateway within the idle timeout (the client stays connected).
    assert!(settles(&a.open, 0).await, "the parked upstream connection was not closed");
    let (status, _) = get(&mut conn, "/").await;
    assert_eq!(status, 200);
    assert_eq!(a.accepted.load(Ordering::SeqCst), 2);
    gw.stop().await;
}

/// An endpoint speaking just enough HTTP/1.1: every request on a connection answered `200 ok`
/// with keep-alive, and the connection closed 50 ms after each answer, the way servers with
/// a short keep-alive timeout do. Counts connections.
async fn impatient_endpoint() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            });
        }
    });
    (addr, accepted)
}

/// The client connection's idle and head-read times (300 ms each here) run between
/// exchanges: a response streaming for 600 ms keeps its connection in use, and the next
/// request goes on the same connection. A next head that stalls half-sent is then cut off at
/// `header_read_timeout_ms`, long before the 5 s keep-alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connection_is_busy_while_its_response_streams_and_a_stalled_next_head_is_cut_off() {
    let a = endpoint("a").await;
    let settings = "header_read_timeout_ms = 300\nkeep_alive_timeout_ms = 300";
    let gw = TestGateway::start(&listener_with(config(&[a.addr], ""), settings)).await;
    let mut conn = client(gw.addr).await;
    let (status, body) = get(&mut conn, "/drip").await;
    assert_eq!((status, body.lines().count()), (200, 6), "{body}");
    let (status, _) = get(&mut conn, "/").await;
    assert_eq!(status, 200, "the connection outlived its streamed response");
    drop(conn);
    gw.stop().await;

    let gw = TestGateway::start(&listener_with(
        config(&[a.addr], ""),
        "header_read_timeout_ms = 300\nkeep_alive_timeout_ms = 5000",
    ))
    .await;
    let mut raw = TcpStream::connect(gw.addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nhost: gateway.test\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    let n = raw.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    raw.write_all(b"GET / HTTP/1.1\r\nhost: gateway.test\r\nx-slow: ").await.unwrap();
    let stalled = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(4), async {
        while matches!(raw.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    println!("a stalled second head was cut off after {:?}", stalled.elapsed());
    assert!(closed.is_ok(), "a stalled second head was kept open");
    assert!(
        stalled.elapsed() < Duration::from_millis(2500),
        "{:?}: the keep-alive, not the head-read time",
        stalled.elapsed()
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_closing_idle_connections_costs_no_request() {
    let (addr, accepted) = impatient_endpoint().await;
    let gw = gateway(&[addr], "").await;
    let mut conn = client(gw.addr).await;
    for round in 0..5 {
        let (status, body) = get(&mut conn, "/").await;
        assert_eq!((status, body.as_str()), (200, "ok"), "request {round}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reload_a_kept_client_connection_goes_to_the_new_endpoint() {
    let (a, b) = (endpoint("a").await, endpoint("b").await);
    let gw = gateway(&[a.addr], "").await;
    let mut conn = client(gw.addr).await;
    assert!(get(&mut conn, "/").await.1.starts_with("a "));
    replace_file(&gw.config_file(), config(&[b.addr], "").as_bytes());
    let reload = send(Request::post(format!("http://{}/reload", gw.admin)).body(Full::default()).unwrap()).await;
    assert_eq!(reload.status, 200, "{:?}", reload.body);
    for _ in 0..3 {
        let (status, body) = get(&mut conn, "/").await;
        assert_eq!(status, 200);
        assert!(body.starts_with("b "), "{body}");
    }
    // The replaced upstream's connection is closed, not kept for the old snapshot.
    assert!(settles(&a.open, 0).await, "the old upstream's connection stayed open");
    gw.stop().await;
}

/// An endpoint answering a request with its own body; on `/big-head`, with a 200 KiB response
/// field as well. Counts connections accepted.
async fn echo_endpoint() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: Request<hyper::body::Incoming>| async move {
                    let big = request.uri().path() == "/big-head";
                    let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let mut response = http::Response::new(Full::new(body));
                    if big {
                        let value = http::HeaderValue::from_str(&"v".repeat(200 * 1024)).unwrap();
                        response.headers_mut().insert("x-big", value);
                    }
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .max_buf_size(4 * 1024 * 1024)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_cross_a_kept_upstream_connection_intact_and_an_oversized_response_head_is_502() {
    let (addr, accepted) = echo_endpoint().await;
    let gw = gateway(&[addr], "").await;
    let mut conn = client(gw.addr).await;
    // 1 MiB each way, several times over one upstream connection: the connection's write
    // buffer grows to its bound and is reused, and a small body after the large ones is sent
    // whole, nothing of the earlier ones left in it.
    for (round, size) in [1024 * 1024, 1024 * 1024 + 7, 3].into_iter().enumerate() {
        let body: Vec<u8> = (0..size).map(|i| u8::try_from((i * 31 + round) % 251).unwrap()).collect();
        sender_ready(&mut conn).await;
        let request = Request::post("/upload")
            .header(http::header::HOST, "gateway.test")
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let response = conn.send_request(request).await.expect("a response");
        assert_eq!(response.status(), 200, "round {round}");
        let echoed = response.into_body().collect().await.expect("the whole body").to_bytes();
        assert!(echoed.len() == body.len() && echoed[..] == body[..], "round {round}: {} bytes back", echoed.len());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one upstream connection carried every round");
    // A response head well past the direct connection's 64 KiB buffer (hyper checks it between
    // reads, so one up to about twice that can pass) is the upstream's fault: 502, and the
    // gateway goes on serving.
    let (status, body) = get(&mut conn, "/big-head").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(get(&mut conn, "/").await.0, 200);
    gw.stop().await;
}
