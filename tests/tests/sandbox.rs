//! Untrusted plugins cannot hurt the gateway: each misbehaviour fails its own request with the
//! right status and failure kind, other routes keep answering during and after, host memory
//! stays bounded, and the crash-loop breaker trips and recovers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use portcullis::config;
use portcullis::snapshot::Snapshot;
use portcullis_e2e::{
    TestGateway, config as gateway_config, echo_upstream, engine, get, metric, plugin, route, rss_bytes, scrape,
    write_config,
};

fn routes() -> String {
    [
        route("fragile", "/fragile/", &[("chaos", None)]),
        route("breaker", "/breaker/", &[("chaos-breaker", None)]),
        route("fresh", "/fresh/", &[("chaos-fresh", None)]),
        route("public", "/public/", &[]),
    ]
    .concat()
}

/// Sends requests to `/public/` until `stop`, counting the answers that were not 200.
fn watch_public(gw: &TestGateway, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u32, u32)> {
    let url = gw.url("/public/x");
    tokio::spawn(async move {
        let (sent, bad) = (AtomicU32::new(0), AtomicU32::new(0));
        while !stop.load(Ordering::Relaxed) {
            sent.fetch_add(1, Ordering::Relaxed);
            if get(&url, &[]).await.status != 200 {
                bad.fetch_add(1, Ordering::Relaxed);
            }
        }
        (sent.into_inner(), bad.into_inner())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_plugins_fail_their_own_requests_with_the_right_kind() {
    // Its own engine, so the failure counts are this test's alone (metrics are per process).
    let own = portcullis::plugin::PluginEngine::new(&Default::default()).unwrap();
    let gw = TestGateway::start_with(&gateway_config(echo_upstream().await, &routes()), own).await;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_public(&gw, stop.clone());
    let cases = [
        ("panic", "trap"),
        ("loop", "timeout"),
        ("oom", "out-of-memory"),
        ("recurse-big", "trap"),
        ("recurse-small", "trap"),
        ("crlf", "invalid-output"),
        ("status", "invalid-output"),
        ("big-body", "invalid-output"),
    ];
    for (chaos, _) in cases {
        let reply = get(&gw.url("/fragile/x"), &[("x-chaos", chaos)]).await;
        assert_eq!(reply.status, 500, "{chaos}: {:?}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.json()["type"], "urn:portcullis:problem:plugin-failed", "{chaos}");
        assert!(reply.headers.get("x-evil").is_none(), "{chaos}");
    }
    assert_eq!(get(&gw.url("/fragile/x"), &[]).await.status, 200, "the plugin still serves good requests");
    stop.store(true, Ordering::Relaxed);
    let (sent, bad) = watcher.await.unwrap();
    println!("public route during the misbehaviour: {sent} requests, {bad} not 200");
    assert!(sent > 0);
    assert_eq!(bad, 0, "another route failed while a plugin misbehaved");

    let metrics = scrape(&gw).await;
    for (kind, count) in [("trap", 3.0), ("timeout", 1.0), ("out-of-memory", 1.0), ("invalid-output", 3.0)] {
        let labels = format!("plugin=\"chaos\",kind=\"{kind}\"");
        assert_eq!(metric(&metrics, "portcullis_plugin_failures_total", &labels), Some(count), "{kind}:\n{metrics}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bombs_leave_host_memory_bounded() {
    let gw = TestGateway::start(&gateway_config(echo_upstream().await, &routes())).await;
    assert_eq!(get(&gw.url("/fragile/x"), &[("x-chaos", "oom")]).await.status, 500);
    let before = rss_bytes();
    for _ in 0..10 {
        assert_eq!(get(&gw.url("/fragile/x"), &[("x-chaos", "oom")]).await.status, 500);
    }
    let after = rss_bytes();
    let grown_mib = after.saturating_sub(before) / (1024 * 1024);
    println!("RSS before {} MiB, after 10 memory bombs of 64 MiB each {} MiB", before >> 20, after >> 20);
    assert!(grown_mib < 128, "host memory grew by {grown_mib} MiB");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_floods_are_capped_and_counted() {
    let gw = TestGateway::start(&gateway_config(echo_upstream().await, &routes())).await;
    let reply = get(&gw.url("/fragile/x"), &[("x-chaos", "log-flood")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.upstream_saw("x-filtered"), ["yes"]);
    let metrics = scrape(&gw).await;
    assert_eq!(
        metric(&metrics, "portcullis_plugin_log_events_dropped_total", "plugin=\"chaos\""),
        Some(9_900.0),
        "{metrics}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_trips_fails_fast_and_recovers_through_a_probe() {
    let gw = TestGateway::start(&gateway_config(echo_upstream().await, &routes())).await;
    let plugins = |gw: &TestGateway| {
        let url = format!("http://{}/plugins", gw.admin);
        async move {
            let reply = get(&url, &[]).await.json();
            reply["plugins"].as_array().unwrap().iter().find(|p| p["id"] == "chaos-breaker").unwrap()["breaker"].clone()
        }
    };
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/breaker/x"), &[("x-chaos", "panic")]).await.status, 500);
    }
    assert_eq!(plugins(&gw).await, "open");
    let refused = get(&gw.url("/breaker/x"), &[]).await;
    assert_eq!(refused.status, 503, "a good request fails fast while the breaker is open");
    assert_eq!(refused.json()["type"], "urn:portcullis:problem:plugin-unavailable");
    assert_eq!(get(&gw.url("/public/x"), &[]).await.status, 200, "other routes are unaffected");
    let metrics = scrape(&gw).await;
    assert_eq!(metric(&metrics, "portcullis_plugin_breaker_open", "plugin=\"chaos-breaker\""), Some(1.0), "{metrics}");
    assert_eq!(
        metric(&metrics, "portcullis_plugin_failures_total", "plugin=\"chaos-breaker\",kind=\"breaker-open\""),
        Some(1.0)
    );

    // Past the 300 ms open period, one probe goes through; it succeeds and closes the breaker.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let probe = get(&gw.url("/breaker/x"), &[]).await;
    assert_eq!(probe.status, 200);
    assert_eq!(plugins(&gw).await, "closed");
    assert_eq!(get(&gw.url("/breaker/x"), &[]).await.status, 200);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_output_trips_the_breaker_like_a_trap() {
    // Its own engine: the breaker gauge of `chaos-breaker` is asserted by another test.
    let own = portcullis::plugin::PluginEngine::new(&Default::default()).unwrap();
    let gw = TestGateway::start_with(&gateway_config(echo_upstream().await, &routes()), own).await;
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/breaker/x"), &[("x-chaos", "crlf")]).await.status, 500);
    }
    assert_eq!(get(&gw.url("/breaker/x"), &[]).await.status, 503, "three refused answers opened the breaker");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_recovers_at_once_when_a_reload_replaces_the_plugin() {
    // Its own engine: the breaker gauge of `chaos-breaker` is asserted by another test.
    let own = portcullis::plugin::PluginEngine::new(&Default::default()).unwrap();
    let gw = TestGateway::start_with(&gateway_config(echo_upstream().await, &routes()), own).await;
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/breaker/x"), &[("x-chaos", "panic")]).await.status, 500);
    }
    assert_eq!(get(&gw.url("/breaker/x"), &[]).await.status, 503, "open");
    gw.gateway.reload().await.unwrap();
    assert_eq!(get(&gw.url("/breaker/x"), &[]).await.status, 200, "the reloaded plugin starts with a closed breaker");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_isolation_gives_every_request_fresh_memory() {
    let gw = TestGateway::start(&gateway_config(echo_upstream().await, &routes())).await;
    let mut reused = Vec::new();
    let mut fresh = Vec::new();
    for _ in 0..3 {
        reused.extend(get(&gw.url("/fragile/x"), &[("x-chaos", "calls")]).await.upstream_saw("x-calls"));
        fresh.extend(get(&gw.url("/fresh/x"), &[("x-chaos", "calls")]).await.upstream_saw("x-calls"));
    }
    assert_eq!(reused, ["1", "2", "3"], "a reused instance keeps its memory");
    assert_eq!(fresh, ["1", "1", "1"], "isolation = \"request\" starts from scratch every time");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifying_keys_held_by_the_host_are_capped_per_instance_and_freed_on_drop() {
    let gw = TestGateway::start(&gateway_config(echo_upstream().await, &routes())).await;
    // Twice on a reused instance: keys dropped by the first request give their places back.
    for _ in 0..2 {
        let reply = get(&gw.url("/fragile/x"), &[("x-chaos", "keys")]).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(reply.upstream_saw("x-keys-held"), ["1024"]);
        let refused = reply.upstream_saw("x-keys-refused").concat();
        assert!(refused.contains("Unsupported") && refused.contains("at most 1024 verifying keys"), "{refused}");
        assert_eq!(reply.upstream_saw("x-keys-after-drop"), ["ok"]);
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_is_shared_by_a_plugins_instances_and_needs_the_grant() {
    let gw = TestGateway::start(&gateway_config(echo_upstream().await, &routes())).await;
    let first = get(&gw.url("/fresh/x"), &[("x-chaos", "count")]).await.upstream_saw("x-count");
    let second = get(&gw.url("/fresh/x"), &[("x-chaos", "count")]).await.upstream_saw("x-count");
    assert_eq!((first, second), (vec!["1".to_owned()], vec!["2".to_owned()]), "two fresh instances, one counter");
    gw.stop().await;

    let ungranted = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[upstream.app]\nendpoints = [\"127.0.0.1:9\"]\n\n[plugin.chaos]\npath = \"{}\"\nkind = \"filter\"\n",
        plugin("chaos_filter").display()
    );
    let error = build(&ungranted).await.unwrap_err();
    assert!(
        error.contains(
            "plugin.chaos.path: refused imports: `portcullis:plugin/kv@0.3.0` (the `kv` capability is not granted)"
        ),
        "{error}"
    );
}

/// A component importing `wasi:sockets` loads by default (the host links sockets with every
/// address denied) and its connection attempt fails as an error value inside the guest, not a
/// trap; with `strict_imports` it is refused at load, before compiling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_importing_sockets_load_denied_or_are_refused_when_strict() {
    let sneaky = format!("\n[plugin.sneaky]\npath = \"{}\"\nkind = \"filter\"\n", plugin("socket_filter").display());
    let toml = gateway_config(echo_upstream().await, &route("sneaky", "/sneaky/", &[("sneaky", None)])) + &sneaky;
    let gw = TestGateway::start(&toml).await;
    let reply = get(&gw.url("/sneaky/x"), &[]).await;
    assert_eq!(reply.status, 200, "{:?}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.upstream_saw("x-reached"), ["no"], "the connection was denied, and the guest saw an error");
    let plugins = get(&format!("http://{}/plugins", gw.admin), &[]).await.json();
    let listed = plugins["plugins"].as_array().unwrap().iter().find(|p| p["id"] == "sneaky").unwrap();
    let imports = listed["imports"].as_array().unwrap().iter().filter_map(|i| i.as_str()).collect::<Vec<_>>();
    assert!(imports.iter().any(|i| i.starts_with("wasi:sockets/tcp@")), "/plugins lists the imports: {imports:?}");
    gw.stop().await;

    for strict in ["[runtime]\nstrict_imports = true\n\n", ""] {
        let plugin_strict = if strict.is_empty() { "strict_imports = true\n" } else { "" };
        let toml = format!(
            "{strict}[[listener]]\naddress = \"127.0.0.1:0\"\n\n[upstream.app]\nendpoints = [\"127.0.0.1:9\"]\n{sneaky}{plugin_strict}"
        );
        let error = build(&toml).await.unwrap_err();
        assert!(error.contains("plugin.sneaky.path: refused imports:"), "{error}");
        assert!(error.contains("wasi:sockets/"), "{error}");
        assert!(error.contains("`strict_imports`: plugins get no network access"), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_limits_a_looping_plugin_when_metering_is_on() {
    let toml = gateway_config(echo_upstream().await, &route("fueled", "/fueled/", &[("fueled", None)])).replacen(
        "[[listener]]",
        "[runtime]\nfuel_metering = true\n\n[[listener]]",
        1,
    ) + &format!(
        "\n[plugin.fueled]\npath = \"{}\"\nkind = \"filter\"\ncapabilities = [\"kv\"]\nfuel = 1000000\ndeadline_ms = 10000\n",
        plugin("chaos_filter").display()
    );
    let loaded = write_config(&toml).1;
    let runtime = config::load(&loaded).unwrap().config.runtime;
    let metered = portcullis::plugin::PluginEngine::new(&runtime).unwrap();
    let gw = TestGateway::start_with(&toml, metered).await;
    assert_eq!(get(&gw.url("/fueled/x"), &[]).await.status, 200, "a normal call fits its fuel");
    assert_eq!(get(&gw.url("/fueled/x"), &[("x-chaos", "loop")]).await.status, 500);
    let metrics = scrape(&gw).await;
    assert_eq!(
        metric(&metrics, "portcullis_plugin_failures_total", "plugin=\"fueled\",kind=\"out-of-fuel\""),
        Some(1.0),
        "{metrics}"
    );
    gw.stop().await;

    let unmetered = toml.replace("fuel_metering = true", "fuel_metering = false");
    let error = build(&unmetered).await.unwrap_err();
    assert!(error.contains("plugin.fueled.fuel: needs `fuel_metering = true` in [runtime]"), "{error}");
}

async fn build(toml: &str) -> Result<Snapshot, String> {
    let (_dir, file) = write_config(toml);
    let loaded = config::load(&file).map_err(|e| e.to_string())?;
    Snapshot::build(&loaded, &engine()).await.map_err(|e| e.to_string())
}

/// Every pooled instance keeps the fiber stack of its last call (wasmtime caches it in the
/// store), so more step pools serving traffic than the engine has stacks must still be served:
/// 1,100 routes, each a tag filter with its own configuration (its own pool), each called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_step_pools_in_use_than_a_thousand_stacks_all_serve() {
    const ROUTES: usize = 1_100;
    let routes: String = (0..ROUTES)
        .map(|i| route(&format!("r{i}"), &format!("/r{i}/"), &[("tagger", Some(&format!("{{ suffix = \"-{i}\" }}")))]))
        .collect();
    let gw = TestGateway::start(&gateway_config(echo_upstream().await, &routes)).await;
    for i in 0..ROUTES {
        let reply = get(&gw.url(&format!("/r{i}/x")), &[]).await;
        assert_eq!(reply.status, 200, "route {i}: {:?}", reply.body);
        assert_eq!(reply.upstream_saw("x-tag"), [format!("a-{i}")]);
    }
    gw.stop().await;
}
