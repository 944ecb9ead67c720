//! Microbenchmarks (criterion): `cargo bench -p portcullis-e2e --bench micro`.
//!
//! - `plugin_call/*`: one call of each first-party plugin kind on a warm instance, through the
//!   host's `StepPool` (lending the request, the call, lifting and checking the answer), and a
//!   small filter built against contract 0.1.0 (`legacy-filter`) and the current one (the tag
//!   filter, 0.3.0);
//! - `instance/*`: the same rbac call on a pooled instance and on a fresh one per call
//!   (`isolation = "request"`: instantiate, `configure`, call);
//! - `route_lookup/*`: `Router::find` with 10, 1,000 and 10,000 routes (a hit in the middle of
//!   the table and a miss);
//! - `snapshot_build/1000_routes`: `Snapshot::build` of 1,000 routes, each with a jwt-auth →
//!   rbac chain, plugins already compiled (what a reload of a large configuration costs).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::Method;
use portcullis::plugin::bindings::exports::portcullis::plugin::logging::Exchange;
use portcullis::plugin::bindings::portcullis::plugin::types::Identity;
use portcullis::plugin::{Call, PluginRequest};
use portcullis::router::Router;
use portcullis::telemetry::Context;
use portcullis_e2e::{JWT_CONFIG, TestGateway, claims, config_with, echo_upstream, mint, route};

fn head(headers: Vec<(&'static str, String)>) -> Arc<PluginRequest> {
    let mut all = http::HeaderMap::new();
    all.insert("user-agent", http::HeaderValue::from_static("bench"));
    for (name, value) in headers {
        all.append(name, value.parse().expect("a header value"));
    }
    Arc::new(PluginRequest {
        method: Method::POST,
        scheme: "http",
        authority: "127.0.0.1:8080".into(),
        path: "/api/orders".into(),
        query: None,
        headers: all,
        client_ip: "127.0.0.1".into(),
        client_cert: None,
        request_id: "bench".into(),
        route: "bench".into(),
    })
}

const RBAC: &str = r#"{ rules = [{ path = "/admin/**", roles = ["admin"] }, { methods = ["GET", "POST"], path = "/api/**", roles = ["reader"] }] }"#;

fn plugin_calls(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let routes = [
        route("jwt", "/jwt/", &[("jwt", Some(JWT_CONFIG))]),
        route("apikey", "/key/", &[("apikey", Some(r#"{ keys = [{ key = "k-bench-0123456789", subject = "svc", roles = ["reader"] }] }"#))]),
        route("rbac", "/rbac/", &[("rbac", Some(RBAC))]),
        route("ratelimit", "/rl/", &[("ratelimit", Some(r#"{ key = "subject", limits = [{ name = "s", requests = 1000000000, window_ms = 1000 }] }"#))]),
        route("validate", "/validate/", &[("validate", Some(r#"{ methods = ["POST"], content_types = ["application/json"], body_schema = { type = "object", required = ["item", "quantity"], properties = { item = { type = "string", minLength = 1 }, quantity = { type = "integer", minimum = 1 } } } }"#))]),
        route("audit", "/audit/", &[("audit", None)]),
        route("fresh", "/fresh/", &[("rbac-fresh", Some(RBAC))]),
        route("legacy", "/legacy/", &[("legacy", Some("{}"))]),
        route("tag", "/tag/", &[("tagger", None)]),
    ]
    .concat();
    let extra = format!(
        "[plugin.rbac-fresh]\npath = \"{}\"\nkind = \"filter\"\nisolation = \"request\"\n",
        portcullis_e2e::plugin("rbac").display()
    );
    let gw = runtime.block_on(async {
        let upstream = echo_upstream().await;
        TestGateway::start(&config_with(upstream, &extra, &routes)).await
    });
    let snapshot = gw.gateway.snapshot();
    let pool = |index: usize| snapshot.routes[index].chain.steps()[0].step.pool().clone();
    let cx = Context::new();
    let token = mint(&claims("alice"));
    let authed = head(vec![("authorization", format!("Bearer {token}"))]);
    let keyed = head(vec![("x-api-key", "k-bench-0123456789".into())]);
    let json = head(vec![("content-type", "application/json".into())]);
    let body = br#"{"item": "bolt", "quantity": 3, "note": "benchmark order"}"#;
    let identity = std::sync::Arc::new(Identity::new("alice", vec!["reader".into()]));
    let exchange = std::sync::Arc::new(Exchange {
        request_id: "bench".into(),
        route: "audit".into(),
        method: "POST".into(),
        authority: "127.0.0.1:8080".into(),
        path: "/api/orders".into(),
        query: None,
        client_ip: "127.0.0.1".into(),
        identity: Some((*identity).clone()),
        status: 200,
        start_ms: 1,
        duration_us: 350,
        bytes_in: 58,
        bytes_out: 120,
        request_headers: portcullis::proxy::headers::to_wit(&authed.headers),
        response_headers: vec![],
        endpoint: Some("127.0.0.1:8081".into()),
        decisions: vec![],
    });

    let mut group = c.benchmark_group("plugin_call");
    let cases: [(&str, usize, Call<'_>); 8] = [
        ("auth_jwt_rs256", 0, Call::Authenticate(&authed, None)),
        ("auth_api_key", 1, Call::Authenticate(&keyed, None)),
        ("filter_rbac", 2, Call::OnRequest(&json, Some(&identity))),
        ("rate_limit", 3, Call::Check(&json, Some(&identity))),
        ("validation_json_schema", 4, Call::Validate(&json, Some(&identity), Some(body))),
        ("logging_audit_append", 5, Call::Observe(&exchange)),
        // The same small filter built against contract 0.1.0 (a request-head record copied in)
        // and 0.3.0 (the request lent, only what it reads copied).
        ("filter_tag_contract_0_1_0", 7, Call::OnRequest(&keyed, Some(&identity))),
        ("filter_tag_contract_0_3_0", 8, Call::OnRequest(&keyed, Some(&identity))),
    ];
    for (name, index, call) in cases {
        let pool = pool(index);
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let (reply, settle) =
                    pool.call("bench", &cx, call, std::time::Instant::now()).await.expect("plugin call");
                settle.settle(true);
                black_box(reply);
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("instance");
    for (name, index) in [("pooled_rbac", 2), ("fresh_rbac", 6)] {
        let pool = pool(index);
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let (reply, settle) = pool
                    .call("bench", &cx, Call::OnRequest(&json, Some(&identity)), std::time::Instant::now())
                    .await
                    .expect("plugin call");
                settle.settle(true);
                black_box(reply);
            });
        });
    }
    group.finish();
    runtime.block_on(gw.stop());
}

fn routes_toml(count: usize, steps: &str) -> String {
    let mut text =
        String::from("[[listener]]\naddress = \"127.0.0.1:0\"\n\n[upstream.app]\nendpoints = [\"127.0.0.1:9\"]\n");
    for i in 0..count {
        // Every third route is an exact path with a method, the rest prefixes: both router kinds.
        if i % 3 == 0 {
            text.push_str(&format!(
                "\n[[route]]\nid = \"r{i}\"\npath = \"/svc{i}/items\"\nmethods = [\"GET\"]\nupstream = \"app\"\n{steps}"
            ));
        } else {
            text.push_str(&format!(
                "\n[[route]]\nid = \"r{i}\"\npath_prefix = \"/svc{i}/\"\nupstream = \"app\"\n{steps}"
            ));
        }
    }
    text
}

fn route_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for count in [10usize, 1_000, 10_000] {
        let config = portcullis::config::check_text(&routes_toml(count, "")).expect("a valid configuration");
        let router = Router::build(&config.routes).expect("routes build");
        // A prefix route near the middle of the table (every third route is an exact path).
        let middle = if (count / 2) % 3 == 0 { count / 2 + 1 } else { count / 2 };
        let hit = format!("/svc{middle}/orders/42");
        assert!(router.find("api.example.com", &hit, &Method::GET).is_some());
        group.bench_with_input(BenchmarkId::new("hit", count), &hit, |b, path| {
            b.iter(|| black_box(router.find("api.example.com", black_box(path), &Method::GET)));
        });
        group.bench_with_input(BenchmarkId::new("miss", count), &"/nothing/here", |b, path| {
            b.iter(|| black_box(router.find("api.example.com", black_box(path), &Method::GET)));
        });
    }
    group.finish();
}

fn snapshot_build(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let plugins = format!(
        "\n[plugin.jwt]\npath = \"{}\"\nkind = \"auth\"\ncapabilities = [\"kv\", \"http-client\"]\n\n[plugin.rbac]\npath = \"{}\"\nkind = \"filter\"\n",
        portcullis_e2e::plugin("jwt_auth").display(),
        portcullis_e2e::plugin("rbac").display()
    );
    let jwks = portcullis_e2e::root().join("examples/quickstart/keys/jwks.json");
    let steps = format!(
        "\n[[route.chain]]\nplugin = \"jwt\"\nconfig = {}\n\n[[route.chain]]\nplugin = \"rbac\"\nconfig = {RBAC}\n",
        JWT_CONFIG.replace("{JWKS}", &jwks.display().to_string())
    );
    let text = routes_toml(1_000, &steps) + &plugins;
    let (_dir, file) = portcullis_e2e::write_config(&text);
    let loaded = portcullis::config::load(&file).expect("the 1,000-route configuration loads");
    let engine = portcullis_e2e::engine();
    // The first build compiles the components; later builds find them in the engine's cache.
    runtime.block_on(portcullis::snapshot::Snapshot::build(&loaded, &engine)).expect("snapshot");
    let mut group = c.benchmark_group("snapshot_build");
    group.sample_size(10);
    group.bench_function("1000_routes_jwt_rbac", |b| {
        b.to_async(&runtime).iter(|| async {
            black_box(portcullis::snapshot::Snapshot::build(&loaded, &engine).await.expect("snapshot"))
        });
    });
    group.finish();
}

criterion_group!(benches, plugin_calls, route_lookup, snapshot_build);
criterion_main!(benches);
