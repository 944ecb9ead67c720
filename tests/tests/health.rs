//! Upstream health end to end: active health checks move traffic off a killed endpoint and back
//! when it returns, passive outlier detection ejects an endpoint that answers 5xx (but never the
//! last one), every endpoint down gives 503 at once, least-requests favours the fast endpoint,
//! and `/status` reports all of it.

#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions: a panic is the failure report")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use portcullis_e2e::{TestGateway, config_with, get};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A server on `addr` answering every request `status` with body `name` after `delay`, counting
/// requests other than health checks. Aborting the task closes it and its connections.
async fn endpoint(
    addr: SocketAddr,
    name: &'static str,
    status: u16,
    delay: Duration,
    hits: Arc<AtomicUsize>,
) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind(addr).await.expect("binding an endpoint");
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            while connections.try_join_next().is_some() {}
            let hits = hits.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let hits = hits.clone();
                    async move {
                        if request.uri().path() != "/healthz" {
                            hits.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(delay).await;
                        }
                        let mut response = http::Response::new(Full::new(Bytes::from_static(name.as_bytes())));
                        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    (addr, task)
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A configuration whose route `/` goes to upstream `pool` with `endpoints` and `settings`.
fn pool_config(endpoints: &[SocketAddr], settings: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let extra = format!("[upstream.pool]\nendpoints = [{}]\nconnect_timeout_ms = 200\n{settings}\n", list.join(", "));
    config_with(endpoints[0], &extra, "\n[[route]]\nid = \"pool\"\npath_prefix = \"/\"\nupstream = \"pool\"\n")
}

async fn status(gw: &TestGateway) -> Value {
    let reply = get(&format!("http://{}/status", gw.admin), &[]).await;
    assert_eq!(reply.status, 200);
    reply.json()
}

/// Waits up to 5 s for `/status` to say endpoint `index` of `pool` is (or is not) available.
async fn wait_available(gw: &TestGateway, index: usize, available: bool) {
    for _ in 0..100 {
        if status(gw).await["upstreams"]["pool"]["endpoints"][index]["available"] == available {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("endpoint {index} did not become available={available}: {}", status(gw).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_move_traffic_off_a_dead_endpoint_and_back() {
    let (a_hits, b_hits) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, a_task) = endpoint(any_port(), "A", 200, Duration::ZERO, a_hits.clone()).await;
    let (b, _b_task) = endpoint(any_port(), "B", 200, Duration::ZERO, b_hits.clone()).await;
    let settings = "[upstream.pool.health_check]\npath = \"/healthz\"\ninterval_ms = 100\ntimeout_ms = 100\nhealthy_threshold = 2\nunhealthy_threshold = 2\n\
                    [upstream.pool.outlier_detection]\nconsecutive_failures = 2\nbase_ejection_ms = 300\n";
    let gw = TestGateway::start(&pool_config(&[a, b], settings)).await;
    for _ in 0..10 {
        assert_eq!(get(&gw.url("/x"), &[]).await.status, 200);
    }
    assert!(a_hits.load(Ordering::Relaxed) > 0 && b_hits.load(Ordering::Relaxed) > 0, "round robin uses both");

    a_task.abort();
    wait_available(&gw, 0, false).await;
    let st = status(&gw).await;
    assert_eq!(st["upstreams"]["pool"]["endpoints"][0]["active"], "unhealthy", "{st}");
    let before = b_hits.load(Ordering::Relaxed);
    for _ in 0..30 {
        let reply = get(&gw.url("/x"), &[]).await;
        assert_eq!(reply.status, 200, "no 5xx once the dead endpoint is detected");
        assert_eq!(reply.body, "B");
    }
    assert_eq!(b_hits.load(Ordering::Relaxed) - before, 30);

    let (_, _a_again) = endpoint(a, "A", 200, Duration::ZERO, a_hits.clone()).await;
    wait_available(&gw, 0, true).await;
    let before = a_hits.load(Ordering::Relaxed);
    for _ in 0..10 {
        assert_eq!(get(&gw.url("/x"), &[]).await.status, 200);
    }
    assert!(a_hits.load(Ordering::Relaxed) > before, "the endpoint takes traffic again");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_down_gives_503_at_once() {
    let hits = Arc::new(AtomicUsize::new(0));
    let (a, a_task) = endpoint(any_port(), "A", 200, Duration::ZERO, hits.clone()).await;
    let (b, b_task) = endpoint(any_port(), "B", 200, Duration::ZERO, hits.clone()).await;
    let settings = "[upstream.pool.health_check]\ninterval_ms = 100\ntimeout_ms = 100\nunhealthy_threshold = 1\n";
    let gw = TestGateway::start(&pool_config(&[a, b], settings)).await;
    assert_eq!(get(&gw.url("/x"), &[]).await.status, 200);
    a_task.abort();
    b_task.abort();
    wait_available(&gw, 0, false).await;
    wait_available(&gw, 1, false).await;
    let started = Instant::now();
    let reply = get(&gw.url("/x"), &[]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["type"], "urn:portcullis:problem:no-healthy-upstream");
    assert!(started.elapsed() < Duration::from_millis(500), "answered without trying dead endpoints");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_detection_ejects_a_5xx_endpoint_but_never_the_last_one() {
    let (bad_hits, good_hits) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (bad, _bad_task) = endpoint(any_port(), "bad", 500, Duration::ZERO, bad_hits.clone()).await;
    let (good, _good_task) = endpoint(any_port(), "good", 200, Duration::ZERO, good_hits.clone()).await;
    let settings = "[upstream.pool.outlier_detection]\nconsecutive_failures = 3\nbase_ejection_ms = 60000\n";
    let mut toml = pool_config(&[bad, good], settings);
    toml.push_str(&format!(
        "\n[upstream.alone]\nendpoints = [\"{bad}\"]\noutlier_detection = {{ consecutive_failures = 3 }}\n\n[[route]]\nid = \"alone\"\npath_prefix = \"/alone\"\nupstream = \"alone\"\n"
    ));
    let gw = TestGateway::start(&toml).await;
    let mut errors = 0;
    for _ in 0..40 {
        if get(&gw.url("/x"), &[]).await.status == 500 {
            errors += 1;
        }
    }
    assert_eq!(errors, 3, "three 5xx in a row eject the endpoint; then only the good one answers");
    let st = status(&gw).await;
    let bad_status = &st["upstreams"]["pool"]["endpoints"][0];
    assert_eq!(bad_status["available"], false, "{st}");
    assert_eq!(bad_status["ejections"], 1, "{st}");
    assert!(bad_status["ejected_for_ms"].as_u64().unwrap() > 50_000, "{st}");
    assert!(bad_status["recent_error_rate"].as_f64().unwrap() > 0.2, "{st}");
    assert_eq!(st["upstreams"]["pool"]["endpoints"][1]["available"], true);
    // A reload keeps what was learned about endpoints that stay.
    gw.gateway.reload().await.unwrap();
    let after = status(&gw).await;
    assert_eq!(after["upstreams"]["pool"]["endpoints"][0]["available"], false, "{after}");
    assert_eq!(after["upstreams"]["pool"]["endpoints"][0]["ejections"], 1, "{after}");
    assert_eq!(get(&gw.url("/x"), &[]).await.status, 200);

    // The only endpoint of `alone` is never ejected: its 500s pass through, not 503s.
    for _ in 0..6 {
        assert_eq!(get(&gw.url("/alone"), &[]).await.status, 500);
    }
    assert_eq!(status(&gw).await["upstreams"]["alone"]["endpoints"][0]["ejections"], 0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_requests_sends_more_traffic_to_the_faster_endpoint() {
    let (slow_hits, fast_hits) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (slow, _slow_task) = endpoint(any_port(), "slow", 200, Duration::from_millis(200), slow_hits.clone()).await;
    let (fast, _fast_task) = endpoint(any_port(), "fast", 200, Duration::from_millis(5), fast_hits.clone()).await;
    let gw = TestGateway::start(&pool_config(&[slow, fast], "load_balancing = \"least-requests\"\n")).await;
    let url = gw.url("/x");
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = url.clone();
        clients.spawn(async move {
            for _ in 0..10 {
                assert_eq!(get(&url, &[]).await.status, 200);
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    let (slow_n, fast_n) = (slow_hits.load(Ordering::Relaxed), fast_hits.load(Ordering::Relaxed));
    assert_eq!(slow_n + fast_n, 40);
    assert!(fast_n > 2 * slow_n, "least-requests favours the fast endpoint: fast {fast_n}, slow {slow_n}");
    gw.stop().await;
}
