//! Measures, on this machine, in one run:
//! - one `filter` plugin call on a warm instance, through the host's `StepPool` (host overhead
//!   of lending the request and lifting the answer included);
//! - one `jwt-auth` call on a warm instance (an RS256 signature check inside wasm);
//! - a plugin that loops forever, at the default 100 ms deadline: request start to its 500;
//! - the request phase of a one-step chain for each first-party plugin on a warm instance
//!   (rbac, rate-limit with a quota never reached, api-key-auth, request-validation with a JSON
//!   Schema and a 60-byte body), host conversions included; and audit-log's `observe` with its
//!   write to the hash-chained audit file;
//! - whole requests over loopback (sequential, keep-alive, real client and echo upstream) on a
//!   route with no plugins and on the quickstart's two-step chain (jwt-auth → audit-log).
//!
//! Wall-clock medians of several rounds; the machine is shared, so compare numbers from the
//! same run only.

use std::time::{Duration, Instant};

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};
use portcullis::body::{LazyBody, full};
use portcullis::chain::ChainState;
use portcullis::plugin::{Call, PluginRequest};
use portcullis_e2e::{JWT_CONFIG, TestGateway, claims, config, echo_upstream, get, mint, route};

const CALLS: u32 = 20_000;
const REQUESTS: u32 = 2_000;
const ROUNDS: usize = 5;

fn head(token: Option<&str>) -> Arc<PluginRequest> {
    let mut headers = HeaderMap::new();
    headers.insert("user-agent", HeaderValue::from_static("bench"));
    headers.insert("accept", HeaderValue::from_static("*/*"));
    if let Some(t) = token {
        headers.insert("authorization", format!("Bearer {t}").parse().expect("a header value"));
    }
    Arc::new(PluginRequest {
        method: Method::GET,
        scheme: "http",
        authority: "127.0.0.1:8080".into(),
        path: "/api/orders".into(),
        query: None,
        headers,
        client_ip: "127.0.0.1".into(),
        client_cert: None,
        request_id: "bench".into(),
        route: "bench".into(),
    })
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let upstream = echo_upstream().await;
    let routes = [
        route("bare", "/bare/", &[]),
        route("filter", "/filter/", &[("chaos", None)]),
        route("jwt", "/jwt/", &[("jwt", Some(JWT_CONFIG))]),
        route("two-step", "/api/", &[("jwt", Some(JWT_CONFIG)), ("audit", None)]),
        route("looping", "/loop/", &[("looper", None)]),
        route("rbac", "/rbac/", &[("rbac", Some(r#"{ rules = [{ path = "/admin/**", roles = ["admin"] }, { methods = ["GET"], path = "/api/**", roles = ["reader"] }] }"#))]),
        route("ratelimit", "/rl/", &[("ratelimit", Some(r#"{ key = "client-ip", limits = [{ name = "s", requests = 1000000000, window_ms = 1000 }, { name = "h", requests = 1000000000, window_ms = 3600000 }] }"#))]),
        route("apikey", "/key/", &[("apikey", Some(r#"{ keys = [{ key = "k-bench-0123456789", subject = "svc", roles = ["reader"] }] }"#))]),
        route("validate", "/validate/", &[("validate", Some(r#"{ methods = ["GET"], content_types = ["application/json"], body_schema = { type = "object", required = ["item", "quantity"], properties = { item = { type = "string", minLength = 1 }, quantity = { type = "integer", minimum = 1 } } } }"#))]),
        route("audit", "/audit/", &[("audit", None)]),
    ]
    .concat()
        + &format!(
            "\n[plugin.looper]\npath = \"{}\"\nkind = \"filter\"\ncapabilities = [\"kv\"]\nbreaker = {{ failures = 1000000 }}\n",
            portcullis_e2e::plugin("chaos_filter").display()
        );
    let gw = TestGateway::start(&config(upstream, &routes)).await;
    let snapshot = gw.gateway.snapshot();
    let token = mint(&claims("alice"));

    // No span is recorded without export: the calls run under an empty trace context.
    let cx = portcullis::telemetry::Context::new();
    let trace = portcullis::chain::Trace { telemetry: snapshot.telemetry.clone(), cx: cx.clone() };
    let step = |route: usize| snapshot.routes[route].chain.steps()[0].step.pool().clone();
    let (filter, jwt) = (step(1), step(2));
    let plain = head(None);
    let authed = head(Some(&token));
    let mut warm_filter = Vec::new();
    let mut warm_jwt = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..CALLS {
            filter
                .call("bench", &cx, Call::OnRequest(&plain, None), Instant::now())
                .await
                .expect("filter call")
                .1
                .settle(true);
        }
        warm_filter.push(started.elapsed().as_secs_f64() * 1e6 / f64::from(CALLS));
        let started = Instant::now();
        for _ in 0..CALLS / 20 {
            jwt.call("bench", &cx, Call::Authenticate(&authed, None), Instant::now())
                .await
                .expect("jwt call")
                .1
                .settle(true);
        }
        warm_jwt.push(started.elapsed().as_secs_f64() * 1e6 / f64::from(CALLS / 20));
    }

    // The whole request phase of the two-step chain, in process (no sockets).
    let chain = &snapshot.routes[3].chain;
    let mut request_phase = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..CALLS / 20 {
            let mut h = Arc::new((*authed).clone());
            let mut state = ChainState::default();
            let mut body = LazyBody::new(full(bytes::Bytes::new()), 0);
            chain.on_request(&mut h, &mut body, &snapshot.identity, &mut state, &trace).await.expect("chain");
        }
        request_phase.push(started.elapsed().as_secs_f64() * 1e6 / f64::from(CALLS / 20));
    }

    // One-step chains, one per first-party plugin, through `Chain::on_request`.
    let mut per_plugin = Vec::new();
    let order_body = bytes::Bytes::from_static(br#"{"item": "bolt", "quantity": 3, "note": "bench order"}"#);
    for (index, name) in [(5, "rbac"), (6, "rate-limit"), (7, "api-key-auth"), (8, "request-validation")] {
        let chain = &snapshot.routes[index].chain;
        let mut request = (*authed).clone();
        request.headers.insert("x-api-key", HeaderValue::from_static("k-bench-0123456789"));
        request.headers.insert("content-type", HeaderValue::from_static("application/json"));
        let identity = Arc::new(portcullis::plugin::bindings::portcullis::plugin::types::Identity::new(
            "alice",
            vec!["reader".into()],
        ));
        let mut samples = Vec::new();
        for _ in 0..ROUNDS {
            let started = Instant::now();
            for _ in 0..CALLS / 4 {
                let mut h = Arc::new(request.clone());
                let mut state = ChainState { identity: Some(identity.clone()), ..ChainState::default() };
                let mut body = LazyBody::new(full(order_body.clone()), 1024 * 1024);
                let verdict =
                    chain.on_request(&mut h, &mut body, &snapshot.identity, &mut state, &trace).await.expect("chain");
                assert!(matches!(verdict, portcullis::chain::Verdict::Continue), "{name}: {verdict:?}");
            }
            samples.push(started.elapsed().as_secs_f64() * 1e6 / f64::from(CALLS / 4));
        }
        per_plugin.push((format!("{name}, one-step chain request phase, warm instance"), median(samples)));
    }
    let exchange = std::sync::Arc::new(portcullis::plugin::bindings::exports::portcullis::plugin::logging::Exchange {
        request_id: "bench".into(),
        route: "audit".into(),
        method: "GET".into(),
        authority: "127.0.0.1:8080".into(),
        path: "/audit/x".into(),
        query: None,
        client_ip: "127.0.0.1".into(),
        identity: None,
        status: 200,
        start_ms: 1,
        duration_us: 350,
        bytes_in: 0,
        bytes_out: 120,
        request_headers: portcullis::proxy::headers::to_wit(&authed.headers),
        response_headers: vec![],
        endpoint: Some("127.0.0.1:8081".into()),
        decisions: vec![],
    });
    let mut audit = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..CALLS / 4 {
            snapshot.routes[9].chain.observe(&exchange, &trace).await;
        }
        audit.push(started.elapsed().as_secs_f64() * 1e6 / f64::from(CALLS / 4));
    }
    per_plugin.push(("audit-log observe, warm instance (record + chained file append)".to_owned(), median(audit)));

    let auth = format!("Bearer {token}");
    let mut bare = Vec::new();
    let mut two_step = Vec::new();
    for _ in 0..ROUNDS {
        for (path, headers, out) in
            [("/bare/x", vec![], &mut bare), ("/api/x", vec![("authorization", auth.as_str())], &mut two_step)]
        {
            let url = gw.url(path);
            let started = Instant::now();
            for _ in 0..REQUESTS {
                let reply = get(&url, &headers).await;
                assert_eq!(reply.status, 200);
            }
            out.push(started.elapsed().as_secs_f64() * 1e6 / f64::from(REQUESTS));
        }
    }
    // A plugin that loops forever, at the default 100 ms deadline: call start to 5xx.
    let mut looping = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let reply = get(&gw.url("/loop/x"), &[("x-chaos", "loop")]).await;
        assert_eq!(reply.status, 500);
        looping.push(started.elapsed().as_secs_f64() * 1e3);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    println!("| measurement | median µs | rounds |");
    println!("|---|---|---|");
    println!("| filter plugin call, warm instance | {:.2} | {ROUNDS} × {CALLS} |", median(warm_filter));
    println!(
        "| jwt-auth call (RS256 verify in wasm), warm instance | {:.1} | {ROUNDS} × {} |",
        median(warm_jwt),
        CALLS / 20
    );
    println!(
        "| two-step chain request phase (jwt-auth, audit-log skipped until after the response) | {:.1} | {ROUNDS} × {} |",
        median(request_phase),
        CALLS / 20
    );
    for (name, us) in &per_plugin {
        println!("| {name} | {us:.1} | {ROUNDS} × {} |", CALLS / 4);
    }
    let (bare, two_step) = (median(bare), median(two_step));
    println!(
        "| request, no plugins (loopback round trip incl. client and upstream) | {bare:.1} | {ROUNDS} × {REQUESTS} |"
    );
    println!("| request, two-step chain jwt-auth → audit-log | {two_step:.1} | {ROUNDS} × {REQUESTS} |");
    println!("| added by the two-step chain | {:.1} | |", two_step - bare);
    let (min, max) = looping.iter().fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    println!(
        "| looping plugin, default 100 ms deadline: request start to 500, ms (min–max {min:.1}–{max:.1}) | {:.1} ms | 20 |",
        median(looping)
    );
    gw.stop().await;
}
