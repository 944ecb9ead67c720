//! The plugin contract across versions: components built against `portcullis:plugin@0.3.0` (the
//! SDK's plugins), `0.2.0` (the `bare-filter` guest) and `0.1.0` (the `legacy-filter` guest,
//! both bare wit-bindgen) in one chain, and declared hooks.

use portcullis::Gateway;
use portcullis_e2e::{
    JWT_CONFIG, TestGateway, claims, config, config_with, echo_upstream, engine, get, metric, mint, plugin, route,
    scrape, write_config,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_of_0_1_0_and_0_2_0_serve_beside_0_3_0_ones_and_see_the_identity_and_earlier_edits() {
    let upstream = echo_upstream().await;
    let bare = format!("[plugin.bare]\npath = \"{}\"\nkind = \"filter\"\n", plugin("bare_filter").display());
    let routes = route(
        "api",
        "/api/",
        &[
            ("jwt", Some(JWT_CONFIG)),
            ("tagger", Some(r#"{ suffix = "-2" }"#)),
            ("bare", Some(r#"{ allowed = ["1"] }"#)),
            ("legacy", Some("{}")),
        ],
    ) + &route("open", "/open/", &[("bare", Some(r#"{ allowed = ["1"] }"#))]);
    let gw = TestGateway::start(&config_with(upstream, &bare, &routes)).await;
    let token = format!("Bearer {}", mint(&claims("alice")));
    let headers = [("authorization", token.as_str()), ("x-echo", "kept"), ("x-api-version", "1")];
    let reply = get(&gw.url("/api/orders?x=1"), &headers).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    // The 0.2.0 component was lent the request and handed the identity as a record.
    assert_eq!(reply.upstream_saw("x-v2-subject"), ["alice"]);
    assert_eq!(reply.upstream_saw("x-api-version"), ["1"]);
    // The 0.1.0 component got a request-head with the 0.3.0 filter's edit applied, and the
    // identity a 0.3.0 auth plugin established.
    assert_eq!(reply.upstream_saw("x-legacy-path"), ["/api/orders"]);
    assert_eq!(reply.upstream_saw("x-legacy-route"), ["api"]);
    assert_eq!(reply.upstream_saw("x-legacy-tag"), ["a-2"]);
    assert_eq!(reply.upstream_saw("x-legacy-subject"), ["alice"]);
    assert_eq!(reply.upstream_saw("x-tag"), ["a-2"]);
    // 0.1.0 declares no hooks, so its response hook is called.
    assert_eq!(reply.headers["x-legacy-status"], "200");
    assert_eq!(reply.headers["x-legacy-echo"], "kept", "the request's headers outlive the upstream exchange");

    let plugins = admin_json(&gw, "/plugins").await;
    let contract = |id: &str| {
        plugins["plugins"].as_array().and_then(|a| a.iter().find(|p| p["id"] == id)).map(|p| p["contract"].clone())
    };
    assert_eq!(contract("legacy"), Some("0.1.0".into()), "{plugins}");
    assert_eq!(contract("bare"), Some("0.2.0".into()), "{plugins}");
    assert_eq!(contract("tagger"), Some("0.3.0".into()), "{plugins}");

    // Anonymous: the 0.2.0 component is handed no identity.
    let reply = get(&gw.url("/open/orders"), &[("x-api-version", "1")]).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.upstream_saw("x-v2-subject"), ["anonymous"]);
    gw.stop().await;
}

/// The admin API's `path`, as JSON.
async fn admin_json(gw: &TestGateway, path: &str) -> serde_json::Value {
    get(&format!("http://{}{path}", gw.admin), &[]).await.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_is_called_only_for_the_hooks_it_declares() {
    let upstream = echo_upstream().await;
    // Plugin ids of this test's own: the engine, and so the metrics, are shared by the tests.
    let table =
        |id: &str| format!("[plugin.{id}]\npath = \"{}\"\nkind = \"filter\"\n", plugin("tag_filter_a").display());
    let extra = table("tag-plain") + &table("tag-both");
    let routes = [
        route("plain", "/plain/", &[("tag-plain", None)]),
        route("both", "/both/", &[("tag-both", Some("{ response = true }"))]),
    ]
    .concat();
    let gw = TestGateway::start(&config_with(upstream, &extra, &routes)).await;
    for _ in 0..3 {
        let plain = get(&gw.url("/plain/x"), &[]).await;
        assert_eq!(plain.status, 200);
        assert_eq!(plain.upstream_saw("x-tag"), ["a"]);
        assert!(plain.headers.get("x-tag-response").is_none(), "no response hook declared: not called");
        let both = get(&gw.url("/both/x"), &[("x-echo", "seen")]).await;
        assert_eq!(both.upstream_saw("x-tag"), ["a"]);
        assert_eq!(both.upstream_saw("x-echo"), ["seen"]);
        assert_eq!(both.headers["x-tag-response"], "a", "the declared response hook runs");
        assert_eq!(both.headers["x-tag-echo"], "seen", "and reads the request's headers");
    }
    let scraped = scrape(&gw).await;
    let calls = |plugin: &str, phase: &str| {
        let labels = format!("plugin=\"{plugin}\",phase=\"{phase}\"");
        metric(&scraped, "portcullis_plugin_call_duration_seconds_count", &labels).unwrap_or(0.0)
    };
    assert_eq!(calls("tag-plain", "request"), 3.0);
    assert_eq!(calls("tag-plain", "response"), 0.0, "{scraped}");
    assert_eq!(calls("tag-both", "request"), 3.0);
    assert_eq!(calls("tag-both", "response"), 3.0);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_0_1_0_components_configure_refusal_names_the_plugin_and_step() {
    let upstream = echo_upstream().await;
    let (_dir, file) = write_config(&config(upstream, &route("api", "/api/", &[("legacy", Some("{ x = 1 }"))])));
    let error = Gateway::start_with_engine(&file, engine()).await.err().expect("a refused step").to_string();
    assert!(error.contains("legacy") && error.contains("takes no configuration"), "{error}");
}
