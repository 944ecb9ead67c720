//! The first-party policy plugins end to end: built from `plugins/`, loaded by the real gateway,
//! driven by a real HTTP client, with real local servers for JWKS and token introspection.

#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions: a panic is the failure report")]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_e2e::{
    JWT_CONFIG, TestGateway, claims, config, config_with, echo_upstream, get, mint, request, route, serve,
};
use serde_json::{Value, json};

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_counts_exactly_under_concurrency_sends_headers_and_resets_with_the_clock() {
    let upstream = echo_upstream().await;
    let limit = r#"{ key = "client-ip", limits = [{ name = "per-minute", requests = 10, window_ms = 60000 }] }"#;
    let routes = route("limited", "/limited/", &[("ratelimit", Some(limit))]);
    // Its own engine: its clock is moved forward below.
    let engine = portcullis::plugin::PluginEngine::new(&Default::default()).unwrap();
    let gw = TestGateway::start_with(&config(upstream, &routes), engine.clone()).await;
    let url = gw.url("/limited/x");
    let replies = futures_join(30, || {
        let url = url.clone();
        async move { get(&url, &[]).await }
    })
    .await;
    let ok: Vec<_> = replies.iter().filter(|r| r.status == 200).collect();
    let limited: Vec<_> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!((ok.len(), limited.len()), (10, 20), "exactly the quota passes, however many instances run");
    for r in &ok {
        assert_eq!(r.headers["ratelimit-policy"], "\"per-minute\";q=10;w=60");
        assert!(r.headers["ratelimit"].to_str().unwrap().starts_with("\"per-minute\";r="));
    }
    for r in &limited {
        assert_eq!(r.headers["retry-after"], "6", "one request per 6 s");
        assert_eq!(r.headers["ratelimit"], "\"per-minute\";r=0;t=60");
        assert_eq!(r.json()["type"], "urn:portcullis:problem:rate-limited");
    }
    engine.clock().advance(Duration::from_secs(6));
    assert_eq!(get(&url, &[]).await.status, 200, "one request back after 6 s");
    assert_eq!(get(&url, &[]).await.status, 429);
    engine.clock().advance(Duration::from_secs(60));
    let after: Vec<_> = futures_join(12, || {
        let url = url.clone();
        async move { get(&url, &[]).await }
    })
    .await
    .into_iter()
    .map(|r| r.status.as_u16())
    .collect();
    assert_eq!(after.iter().filter(|s| **s == 200).count(), 10, "the whole quota after a full window: {after:?}");
    gw.stop().await;
}

/// Runs `n` requests made by `f` concurrently.
async fn futures_join<F, Fut>(n: usize, f: F) -> Vec<portcullis_e2e::Reply>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = portcullis_e2e::Reply> + Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(f())).collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    replies
}

const RBAC: &str = r#"{ rules = [
    { methods = ["GET"], path = "/api/**", roles = ["reader", "admin"] },
    { methods = ["POST", "DELETE"], path = "/api/**", roles = ["admin"] },
] }"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_allows_by_role_refuses_403_and_asks_anonymous_callers_to_authenticate() {
    let upstream = echo_upstream().await;
    let optional_jwt = JWT_CONFIG.replacen("{ issuer", "{ require_token = false, issuer", 1);
    let routes = route("api", "/api/", &[("jwt", Some(&optional_jwt)), ("rbac", Some(RBAC))]);
    let gw = TestGateway::start(&config(upstream, &routes)).await;
    let reader = bearer(&mint(&claims("alice")));
    let mut admin_claims = claims("bob");
    admin_claims["roles"] = json!(["admin"]);
    let admin = bearer(&mint(&admin_claims));
    assert_eq!(get(&gw.url("/api/items"), &[("authorization", &reader)]).await.status, 200);
    let refused = request("POST", &gw.url("/api/items"), &[("authorization", &reader)], "{}").await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["type"], "urn:portcullis:problem:forbidden");
    assert_eq!(request("POST", &gw.url("/api/items"), &[("authorization", &admin)], "{}").await.status, 200);
    let anonymous = get(&gw.url("/api/items"), &[]).await;
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.headers["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_authenticate_and_never_reach_the_upstream() {
    let upstream = echo_upstream().await;
    let keys = r#"{ query_param = "apikey", keys = [
        { key = "k-reader-0123456789", subject = "svc-reader", roles = ["reader"] },
        { sha256 = "SHA", subject = "svc-admin", roles = ["admin"] },
    ] }"#;
    // sha256 of "k-admin-0123456789", as an operator would store it.
    let keys = keys.replace("SHA", "ee9272f4f893ceab06022129106b96006a3ec2db08aed5ed27a663d7fda1113f");
    let routes = route(
        "svc",
        "/svc/",
        &[
            ("apikey", Some(&keys)),
            ("rbac", Some(r#"{ rules = [{ path = "/svc/**", roles = ["reader"] }] }"#)),
            ("tagger", None),
        ],
    );
    let gw = TestGateway::start(&config(upstream, &routes)).await;
    let by_header = get(&gw.url("/svc/items"), &[("x-api-key", "k-reader-0123456789")]).await;
    assert_eq!(by_header.status, 200, "{:?}", by_header.body);
    assert_eq!(by_header.upstream_saw("x-user-id"), ["svc-reader"]);
    assert!(by_header.upstream_saw("x-api-key").is_empty(), "the key header is removed");
    let by_query = get(&gw.url("/svc/items?page=2&apikey=k-reader-0123456789"), &[]).await;
    assert_eq!(by_query.status, 200);
    assert_eq!(by_query.json()["query"], "page=2", "the key parameter is removed, the rest kept");
    assert_eq!(by_query.upstream_saw("x-tag-query"), ["page=2"], "later steps are lent the query without the key");
    let wrong = get(&gw.url("/svc/items"), &[("x-api-key", "k-wrong-0123456789")]).await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.headers["www-authenticate"].to_str().unwrap().starts_with("ApiKey"));
    assert_eq!(get(&gw.url("/svc/items"), &[]).await.status, 401);
    gw.stop().await;
}

const VALIDATE: &str = r#"{ methods = ["POST"], content_types = ["application/json"], max_body_bytes = 1024, body_schema = { type = "object", required = ["name", "price"], additionalProperties = false, properties = { name = { type = "string", minLength = 1 }, price = { type = "number", minimum = 0 } } } }"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_validation_answers_400_422_and_413_and_forwards_valid_bodies() {
    let upstream = echo_upstream().await;
    let routes = route("orders", "/orders", &[("jwt", Some(JWT_CONFIG)), ("validate", Some(VALIDATE))]);
    let gw = TestGateway::start(&config(upstream, &routes)).await;
    let auth = bearer(&mint(&claims("alice")));
    let json_headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let url = gw.url("/orders");
    let ok = request("POST", &url, &json_headers, r#"{"name": "bolt", "price": 2.5}"#).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["body"], r#"{"name": "bolt", "price": 2.5}"#, "the validated body is forwarded intact");
    let invalid = request("POST", &url, &json_headers, r#"{"name": "", "price": -1, "extra": true}"#).await;
    assert_eq!(invalid.status, 422);
    assert_eq!(invalid.headers["content-type"], "application/problem+json");
    let mut pointers: Vec<String> = invalid.json()["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap().to_owned())
        .collect();
    pointers.sort();
    assert_eq!(pointers, ["", "/name", "/price"], "{:?}", invalid.json());
    let malformed = request("POST", &url, &json_headers, "{not json").await;
    assert_eq!(malformed.status, 400);
    let too_large =
        request("POST", &url, &json_headers, &format!(r#"{{"name": "{}", "price": 1}}"#, "x".repeat(2000))).await;
    assert_eq!(too_large.status, 413);
    let wrong_type =
        request("POST", &url, &[("authorization", auth.as_str()), ("content-type", "text/plain")], "{}").await;
    assert_eq!(wrong_type.status, 422);
    // Authentication runs before the body is read: an unauthenticated client cannot make the
    // gateway buffer its body.
    let anonymous = request("POST", &url, &[("content-type", "application/json")], &"x".repeat(2000)).await;
    assert_eq!(anonymous.status, 401);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_is_hash_chained_and_verify_finds_tampering() {
    let upstream = echo_upstream().await;
    let routes = route("public", "/public/", &[("audit", None)]);
    let gw = TestGateway::start(&config(upstream, &routes)).await;
    for i in 0..5 {
        get(&gw.url(&format!("/public/{i}?apikey=secret")), &[("x-api-key", "secret")]).await;
    }
    let records = gw.audit_records(5).await;
    assert_eq!(records.len(), 5);
    assert_eq!(records[0]["prev"], "0".repeat(64));
    for pair in records.windows(2) {
        assert_eq!(pair[1]["prev"], pair[0]["hash"]);
    }
    let path = gw.dir().join("audit.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("secret"), "neither the query nor the key header is recorded");
    let verify = |t: &str| portcullis::plugin::audit::verify(std::io::Cursor::new(t.to_owned())).unwrap();
    assert_eq!(verify(&text).unwrap().0, 5);
    let tampered = text.replacen("\"status\":200", "\"status\":204", 3);
    let third = text.lines().nth(2).unwrap();
    let tampered = tampered
        .lines()
        .take(2)
        .chain(std::iter::once(third))
        .chain(tampered.lines().skip(3))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(verify(&tampered).unwrap_err().record, 1, "the first edited record is reported");
    gw.stop().await;
}

/// An RFC 7662 introspection endpoint: `good-token` is active for alice, anything else is not.
/// While `down` is set it answers 500, as a failing authorization server does.
async fn introspection_server(
    calls: Arc<AtomicU32>,
    down: Arc<AtomicBool>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    serve(move |method, path, headers, body| {
        calls.fetch_add(1, Ordering::SeqCst);
        if down.load(Ordering::SeqCst) {
            return (500, "text/plain", "internal error".into());
        }
        assert_eq!((method.as_str(), path), ("POST", "/introspect"));
        let basic = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
        if basic != "Basic Z2F0ZXdheTpzM2NyZXQ=" {
            return (401, "application/json", r#"{"error":"invalid_client"}"#.into());
        }
        let form = String::from_utf8_lossy(body);
        let doc = if form.starts_with("token=good-token&") {
            json!({ "active": true, "sub": "alice", "scope": "items:read", "roles": ["reader"], "exp": portcullis_e2e::now() + 600 })
        } else {
            json!({ "active": false })
        };
        (200, "application/json", doc.to_string())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_introspection_authenticates_caches_and_reports_an_unreachable_server() {
    let upstream = echo_upstream().await;
    let calls = Arc::new(AtomicU32::new(0));
    let down = Arc::new(AtomicBool::new(false));
    let (server, task) = introspection_server(calls.clone(), down.clone()).await;
    let extra = portcullis_e2e::outbound_auth_plugin("introspect", "oauth2_introspection", server);
    let step =
        format!(r#"{{ endpoint = "http://{server}/introspect", client_id = "gateway", client_secret = "s3cret" }}"#);
    let routes = route("api", "/api/", &[("introspect", Some(&step))]);
    let gw = TestGateway::start(&config_with(upstream, &extra, &routes)).await;
    let url = gw.url("/api/items");
    let ok = get(&url, &[("authorization", "Bearer good-token")]).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(ok.upstream_saw("x-user-id"), ["alice"]);
    assert_eq!(ok.upstream_saw("x-user-scopes"), ["items:read"]);
    assert_eq!(get(&url, &[("authorization", "Bearer good-token")]).await.status, 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the active result is cached");
    let bad = get(&url, &[("authorization", "Bearer revoked-token")]).await;
    assert_eq!(bad.status, 401);
    assert!(bad.headers["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    get(&url, &[("authorization", "Bearer revoked-token")]).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the inactive result is cached too");
    down.store(true, Ordering::SeqCst);
    let failing = get(&url, &[("authorization", "Bearer another-token")]).await;
    assert_eq!(failing.status, 503, "{:?}", failing.body);
    assert_eq!(failing.json()["type"], "urn:portcullis:problem:auth-unavailable");
    assert_eq!(get(&url, &[("authorization", "Bearer good-token")]).await.status, 200, "cached results still serve");
    // Nothing listens any more: connection refused is 503 too, never a hang or a 500.
    task.abort();
    let _ = task.await;
    let before = calls.load(Ordering::SeqCst);
    let refused = get(&url, &[("authorization", "Bearer yet-another-token")]).await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert_eq!(calls.load(Ordering::SeqCst), before, "the server really is gone");
    gw.stop().await;
}

/// Signs `claims` with RS256 and `kid`, with the quickstart key.
fn mint_kid(claims: &Value, kid: &str) -> String {
    let pem = std::fs::read(portcullis_e2e::root().join("examples/quickstart/keys/demo-only-private-key.pem")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_jwks_url_rotation_stale_keys_and_an_endpoint_outage() {
    let upstream = echo_upstream().await;
    let jwks: Value = serde_json::from_str(
        &std::fs::read_to_string(portcullis_e2e::root().join("examples/quickstart/keys/jwks.json")).unwrap(),
    )
    .unwrap();
    let with_kids = |kids: &[&str]| {
        let template = jwks["keys"][0].clone();
        let keys: Vec<Value> = kids
            .iter()
            .map(|k| {
                let mut key = template.clone();
                key["kid"] = json!(k);
                key
            })
            .collect();
        json!({ "keys": keys }).to_string()
    };
    let served = Arc::new(Mutex::new(Some(with_kids(&["k1"]))));
    let fetches = Arc::new(AtomicU32::new(0));
    let (server, task) = {
        let (served, fetches) = (served.clone(), fetches.clone());
        serve(move |_, _, _, _| {
            fetches.fetch_add(1, Ordering::SeqCst);
            match served.lock().unwrap().clone() {
                Some(doc) => (200, "application/json", doc),
                None => (503, "text/plain", "down".into()),
            }
        })
        .await
    };
    let extra = portcullis_e2e::outbound_auth_plugin("jwt-remote", "jwt_auth", server);
    let step = format!(
        r#"{{ issuer = "https://demo.portcullis.invalid", jwks_url = "http://{server}/jwks.json", jwks_cache = {{ max_age_ms = 60000, refetch_cooldown_ms = 10000, max_stale_ms = 120000 }}, max_token_bytes = 4096 }}"#
    );
    let routes = route("api", "/api/", &[("jwt-remote", Some(&step))]);
    let engine = portcullis::plugin::PluginEngine::new(&Default::default()).unwrap();
    let gw = TestGateway::start_with(&config_with(upstream, &extra, &routes), engine.clone()).await;
    let url = gw.url("/api/x");
    // Tokens expire in a day, so moving the plugin clock below keeps them valid.
    let token = |kid: &str| {
        let mut c = claims("alice");
        c["exp"] = json!(portcullis_e2e::now() + 86_400);
        bearer(&mint_kid(&c, kid))
    };
    assert_eq!(get(&url, &[("authorization", &token("k1"))]).await.status, 200);
    assert_eq!(get(&url, &[("authorization", &token("k1"))]).await.status, 200);
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "cached");
    // Rotation: k2 is published. Within the cooldown the unknown kid is refused without a fetch.
    *served.lock().unwrap() = Some(with_kids(&["k1", "k2"]));
    assert_eq!(get(&url, &[("authorization", &token("k2"))]).await.status, 401);
    engine.clock().advance(Duration::from_millis(10_001));
    assert_eq!(get(&url, &[("authorization", &token("k2"))]).await.status, 200, "refetched after the cooldown");
    // An oversized token is refused before any key is looked at.
    let huge = format!("Bearer {}", "a".repeat(5000));
    assert_eq!(get(&url, &[("authorization", &huge)]).await.status, 401);
    // The endpoint goes down: stale keys serve until max_stale_ms past max-age, then 401.
    *served.lock().unwrap() = None;
    task.abort();
    engine.clock().advance(Duration::from_secs(90));
    assert_eq!(
        get(&url, &[("authorization", &token("k1"))]).await.status,
        200,
        "stale keys while the endpoint is down"
    );
    engine.clock().advance(Duration::from_secs(120));
    assert_eq!(get(&url, &[("authorization", &token("k1"))]).await.status, 401, "keys dropped past max_stale_ms");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_counters_survive_a_configuration_reload() {
    let upstream = echo_upstream().await;
    let limit = r#"{ limits = [{ name = "per-hour", requests = 3, window_ms = 3600000 }] }"#;
    let routes = route("limited", "/limited/", &[("ratelimit", Some(limit))]);
    let gw = TestGateway::start(&config(upstream, &routes)).await;
    let url = gw.url("/limited/x");
    for _ in 0..3 {
        assert_eq!(get(&url, &[]).await.status, 200);
    }
    // A new snapshot with a new route and a new plugin instance pool for the same step.
    let more = [routes.clone(), route("other", "/other/", &[])].concat();
    std::fs::write(gw.config_file(), config(upstream, &more)).unwrap();
    gw.gateway.reload().await.unwrap();
    assert_eq!(get(&gw.url("/other/x"), &[]).await.status, 200, "the new configuration serves");
    assert_eq!(get(&url, &[]).await.status, 429, "the quota used before the reload still counts");
    gw.stop().await;
}
