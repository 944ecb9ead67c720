//! Proxy behaviour end to end: routing, hygiene, request ids, upstream failures, trapping
//! plugins and failure policies.

use portcullis_e2e::{TestGateway, closed_port, config, echo_upstream, get, route, silent_upstream};

fn public() -> String {
    route("public", "/public/", &[])
}

/// `/fragile/` runs the chaos filter fail-closed, `/tolerant/` fail-open, `/public/` nothing.
fn chaos_routes() -> String {
    [
        route("fragile", "/fragile/", &[("chaos", None)]),
        route("tolerant", "/tolerant/", &[("chaos-open", None)]),
        public(),
    ]
    .concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_path_is_a_404_problem() {
    let gw = TestGateway::start(&config(echo_upstream().await, &public())).await;
    let reply = get(&gw.url("/nowhere"), &[]).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.headers["content-type"], "application/problem+json");
    let problem = reply.json();
    assert_eq!(problem["type"], "urn:portcullis:problem:no-route");
    assert_eq!(problem["status"], 404);
    assert_eq!(problem["request_id"].as_str(), reply.headers["x-request-id"].to_str().ok());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_and_silent_upstream_is_504() {
    let down = TestGateway::start(&config(closed_port().await, &public())).await;
    let reply = get(&down.url("/public/x"), &[]).await;
    assert_eq!(reply.status, 502, "{:?}", reply.body);
    assert_eq!(reply.json()["type"], "urn:portcullis:problem:upstream-failed");
    down.stop().await;

    let silent = TestGateway::start(&config(silent_upstream().await, &public())).await;
    let reply = get(&silent.url("/public/x"), &[]).await;
    assert_eq!(reply.status, 504, "{:?}", reply.body);
    assert_eq!(reply.json()["type"], "urn:portcullis:problem:upstream-timeout");
    silent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_kept_or_generated_and_sent_both_ways() {
    let gw = TestGateway::start(&config(echo_upstream().await, &public())).await;
    let reply = get(&gw.url("/public/x"), &[("x-request-id", "trace-abc-123")]).await;
    assert_eq!(reply.upstream_saw("x-request-id"), ["trace-abc-123"]);
    assert_eq!(reply.headers["x-request-id"], "trace-abc-123");
    let generated = get(&gw.url("/public/x"), &[]).await;
    let id = generated.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(generated.upstream_saw("x-request-id"), [id]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_and_forwarding_headers_added() {
    let gw = TestGateway::start(&config(echo_upstream().await, &public())).await;
    let reply = get(
        &gw.url("/public/x?q=1"),
        &[
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("x-forwarded-for", "10.9.8.7"),
            ("x-kept", "yes"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.upstream_saw("x-secret").is_empty());
    assert!(reply.upstream_saw("te").is_empty());
    assert_eq!(reply.upstream_saw("x-kept"), ["yes"]);
    assert_eq!(reply.upstream_saw("x-forwarded-for"), ["127.0.0.1"], "an untrusted client's chain is replaced");
    assert_eq!(reply.upstream_saw("x-forwarded-proto"), ["http"]);
    assert_eq!(reply.json()["query"], "q=1");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_is_streamed_and_reframed() {
    use bytes::Bytes;
    use http_body_util::Full;
    let gw = TestGateway::start(&config(echo_upstream().await, &public())).await;
    let request = http::Request::post(gw.url("/public/upload"))
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"hello upstream")))
        .unwrap();
    let reply = portcullis_e2e::send(request).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["body"], "hello upstream");
    assert_eq!(reply.upstream_saw("content-length"), ["14"]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trapping_plugin_fails_its_request_and_nothing_else() {
    let gw = TestGateway::start(&config(echo_upstream().await, &chaos_routes())).await;
    let trapped = get(&gw.url("/fragile/x"), &[("x-chaos", "panic")]).await;
    assert_eq!(trapped.status, 500, "{:?}", trapped.body);
    let problem = trapped.json();
    assert_eq!(problem["type"], "urn:portcullis:problem:plugin-failed");
    assert!(!String::from_utf8_lossy(&trapped.body).contains("unreachable"), "no internal detail leaks");

    let (public_url, fragile_url) = (gw.url("/public/x"), gw.url("/fragile/x"));
    let (other_route, same_route) = tokio::join!(get(&public_url, &[]), get(&fragile_url, &[]));
    assert_eq!(other_route.status, 200);
    assert_eq!(same_route.status, 200, "a fresh instance replaces the trapped one");
    assert_eq!(same_route.upstream_saw("x-filtered"), ["yes"]);

    let tolerated = get(&gw.url("/tolerant/x"), &[("x-chaos", "panic")]).await;
    assert_eq!(tolerated.status, 200, "fail-open skips the failed step");
    assert!(tolerated.upstream_saw("x-filtered").is_empty());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looping_plugin_is_stopped_at_its_deadline_while_other_routes_answer() {
    let gw = TestGateway::start(&config(echo_upstream().await, &chaos_routes())).await;
    let (looping_url, public_url) = (gw.url("/fragile/x"), gw.url("/public/x"));
    let looping = tokio::spawn(async move { get(&looping_url, &[("x-chaos", "loop")]).await });
    let meanwhile = get(&public_url, &[]).await;
    assert_eq!(meanwhile.status, 200, "another route answers while a plugin loops");
    let looped = looping.await.unwrap();
    assert_eq!(looped.status, 500, "{:?}", looped.body);
    assert_eq!(looped.json()["type"], "urn:portcullis:problem:plugin-failed");
    assert_eq!(get(&gw.url("/fragile/x"), &[]).await.status, 200);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_plugin_output_is_refused_before_use() {
    let gw = TestGateway::start(&config(echo_upstream().await, &chaos_routes())).await;
    for chaos in ["crlf", "status"] {
        let reply = get(&gw.url("/fragile/x"), &[("x-chaos", chaos)]).await;
        assert_eq!(reply.status, 500, "{chaos}: {:?}", reply.body);
        assert!(reply.headers.get("x-evil").is_none());
    }
    let tolerated = get(&gw.url("/tolerant/x"), &[("x-chaos", "crlf")]).await;
    assert_eq!(tolerated.status, 200);
    assert!(tolerated.upstream_saw("x-injected").is_empty(), "refused edits are not applied");
    assert!(tolerated.upstream_saw("x-evil").is_empty());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_read_timeout_closes_a_slow_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let toml = config(echo_upstream().await, &public()).replacen(
        "address = \"127.0.0.1:0\"",
        "address = \"127.0.0.1:0\"\nheader_read_timeout_ms = 200",
        1,
    );
    let gw = TestGateway::start(&toml).await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(b"GET /public/x HTTP/1.1\r\nHost: a\r\nX-Slow: ").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the gateway kept a stalled request head open");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_is_served() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let gw = TestGateway::start(&config(echo_upstream().await, &public())).await;
    let client = Client::builder(TokioExecutor::new()).http2_only(true).build_http::<Full<Bytes>>();
    let response = client.get(gw.url("/public/h2").parse().unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["path"], "/public/h2");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_reports_health_and_readiness() {
    let gw = TestGateway::start(&config(echo_upstream().await, &public())).await;
    let health = get(&format!("http://{}/healthz", gw.admin), &[]).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    let ready = get(&format!("http://{}/readyz", gw.admin), &[]).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");
    gw.stop().await;
}
