//! The admin listener's access rules end to end, with a real HTTP client: `Host` names that are
//! not this listener's (DNS rebinding) get 421, cross-origin `POST /reload` gets 403, a bearer
//! token guards everything but the health probes and the dashboard's static page (and is
//! re-read when rotated), and reloads
//! past `max_reloads_per_minute` get 429.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use portcullis_e2e::{Reply, TestGateway, config, echo_upstream, engine, route, send, write_config};

/// The harness configuration with `settings` (TOML lines) added to `[admin]`.
async fn admin_config(settings: &str) -> String {
    let text = config(echo_upstream().await, &route("public", "/", &[]));
    let admin = "[admin]\naddress = \"127.0.0.1:0\"\n";
    assert!(text.contains(admin));
    text.replacen(admin, &format!("{admin}{settings}\n"), 1)
}

/// `method path` on the admin listener with `headers`.
async fn admin(gw: &TestGateway, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::builder().method(method).uri(format!("http://{}{path}", gw.admin));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(request.body(Full::<Bytes>::default()).expect("a valid admin request")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_hosts_and_cross_origin_reloads_are_refused() {
    let gw = TestGateway::start(&admin_config("hostnames = [\"gw-admin.internal\"]").await).await;
    let own = gw.admin.to_string();
    let rebound = admin(&gw, "GET", "/metrics", &[("host", "attacker.example")]).await;
    assert_eq!(rebound.status, 421, "a rebound name reads nothing");
    assert!(String::from_utf8_lossy(&rebound.body).contains("misdirected-request"));
    let forged = [("host", own.as_str()), ("origin", "http://attacker.example")];
    assert_eq!(admin(&gw, "POST", "/reload", &forged).await.status, 403);
    let cross_site = [("host", own.as_str()), ("sec-fetch-site", "cross-site")];
    assert_eq!(admin(&gw, "POST", "/reload", &cross_site).await.status, 403);
    assert_eq!(gw.gateway.reloads().len(), 1, "no refused request reloaded");
    for host in [own.as_str(), "localhost", "gw-admin.internal:9901"] {
        assert_eq!(admin(&gw, "POST", "/reload", &[("host", host)]).await.status, 200, "{host}");
    }
    let same_origin = format!("http://{own}");
    assert_eq!(admin(&gw, "POST", "/reload", &[("host", &own), ("origin", &same_origin)]).await.status, 200);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_guards_everything_but_the_health_probes() {
    let (dir, file) = write_config(&admin_config("token_file = \"admin-token\"").await);
    std::fs::write(dir.join("admin-token"), "first-token\n").unwrap();
    let gw = TestGateway::start_file(&file).await;
    let without = admin(&gw, "GET", "/metrics", &[]).await;
    assert_eq!(without.status, 401);
    assert_eq!(without.headers["www-authenticate"], "Bearer realm=\"portcullis-admin\"");
    assert_eq!(admin(&gw, "GET", "/status", &[("authorization", "Bearer first-toke")]).await.status, 401);
    assert_eq!(admin(&gw, "POST", "/reload", &[("authorization", "Basic Zmlyc3QtdG9rZW4=")]).await.status, 401);
    assert_eq!(admin(&gw, "GET", "/metrics", &[("authorization", "Bearer first-token")]).await.status, 200);
    assert_eq!(admin(&gw, "GET", "/healthz", &[]).await.status, 200);
    assert_eq!(admin(&gw, "GET", "/readyz", &[]).await.status, 200);
    // The dashboard's page and assets hold no data and are served to anyone; its data is not.
    assert_eq!(admin(&gw, "GET", "/", &[]).await.status, 200);
    assert_eq!(admin(&gw, "GET", "/dashboard/app.js", &[]).await.status, 200);
    assert_eq!(admin(&gw, "GET", "/dashboard/nothing.js", &[]).await.status, 404);
    assert_eq!(admin(&gw, "GET", "/routes", &[]).await.status, 401);
    let routes = admin(&gw, "GET", "/routes", &[("authorization", "Bearer first-token")]).await;
    assert_eq!(routes.json()["routes"][0]["id"], "public");
    // Rotated: the old token stops working at once, the new one works, no restart.
    std::fs::write(dir.join("admin-token"), "second-token").unwrap();
    assert_eq!(admin(&gw, "GET", "/status", &[("authorization", "Bearer first-token")]).await.status, 401);
    assert_eq!(admin(&gw, "GET", "/status", &[("authorization", "Bearer second-token")]).await.status, 200);
    // An unreadable token file refuses, it does not open up.
    std::fs::remove_file(dir.join("admin-token")).unwrap();
    assert_eq!(admin(&gw, "GET", "/status", &[("authorization", "Bearer second-token")]).await.status, 503);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_token_file_or_variable_stops_the_start() {
    let (_, file) = write_config(&admin_config("token_file = \"no-such-token\"").await);
    let error = portcullis::Gateway::start_with_engine(&file, engine()).await.err().expect("refused").to_string();
    assert!(error.contains("admin.token_file") && error.contains("no-such-token"), "{error}");
    let (_, file) = write_config(&admin_config("token_env = \"PORTCULLIS_TEST_UNSET_ADMIN_TOKEN\"").await);
    let error = portcullis::Gateway::start_with_engine(&file, engine()).await.err().expect("refused").to_string();
    assert!(error.contains("PORTCULLIS_TEST_UNSET_ADMIN_TOKEN"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_past_the_per_minute_budget_get_429() {
    let gw = TestGateway::start(&admin_config("max_reloads_per_minute = 2").await).await;
    assert_eq!(admin(&gw, "POST", "/reload", &[]).await.status, 200);
    assert_eq!(admin(&gw, "POST", "/reload", &[]).await.status, 200);
    let limited = admin(&gw, "POST", "/reload", &[]).await;
    assert_eq!(limited.status, 429);
    let retry: u64 = limited.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert_eq!(gw.gateway.reloads().len(), 3, "the start and two reloads");
    gw.stop().await;
}
