//! A fleet of gateways on one real Redis (`[kv] backend = "redis"`): one quota across every
//! instance, compare-and-swap from two gateways, TTLs, namespaces, a JWKS fetched once for the
//! fleet, and the documented answers while Redis is down or slow. Each test starts its own
//! `redis-server` on an ephemeral loopback port (persistence off) and its gateways with their
//! own engines, as separate processes would have.

#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions: a panic is the failure report")]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use portcullis_e2e::redis_server::RedisServer;
use portcullis_e2e::{Reply, TestGateway, claims, config_with, echo_upstream, get, metric, mint, route, scrape, serve};
use serde_json::Value;

async fn admin_json(gw: &TestGateway, path: &str) -> (u16, Value) {
    let reply = get(&format!("http://{}{path}", gw.admin), &[]).await;
    (reply.status.as_u16(), reply.json())
}

async fn concurrently(jobs: Vec<(String, Vec<(&'static str, String)>)>) -> Vec<Reply> {
    let tasks: Vec<_> = jobs
        .into_iter()
        .map(|(url, headers)| {
            tokio::spawn(async move {
                let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                get(&url, &headers).await
            })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_redis_let_through_exactly_one_quota() {
    let redis = RedisServer::start_with_password(Some("fleet-secret-7"));
    let upstream = echo_upstream().await;
    let dir = std::env::temp_dir().join(format!("portcullis-fleet-pw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let password_file = dir.join("redis-password");
    std::fs::write(&password_file, "fleet-secret-7\n").unwrap();
    let kv = redis.kv_table(&format!("password_file = \"{}\"", password_file.display()));
    let limit = r#"{ key = "route", limits = [{ name = "fleet", requests = 5, window_ms = 10000 }] }"#;
    let config = config_with(upstream, &kv, &route("limited", "/limited/", &[("ratelimit", Some(limit))]));
    let (a, b) = (TestGateway::start_standalone(&config).await, TestGateway::start_standalone(&config).await);

    let jobs = (0..20).map(|i| (if i % 2 == 0 { &a } else { &b }).url("/limited/x")).map(|u| (u, vec![])).collect();
    let replies = concurrently(jobs).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let limited = replies.iter().filter(|r| r.status == 429).count();
    assert_eq!((ok, limited), (5, 15), "one quota of 5 for the two gateways together");
    for r in replies.iter().filter(|r| r.status == 429) {
        assert_eq!(r.headers["ratelimit-policy"], "\"fleet\";q=5;w=10");
        let retry = r.headers["retry-after"].to_str().unwrap();
        assert!(matches!(retry, "1" | "2"), "one request per 2 s, less the time the burst took: {retry}");
    }
    // One cell in Redis, in the plugin's namespace, expiring once full again.
    let keys: Vec<String> = redis.command(&["KEYS", "portcullis:ratelimit:k:*"]);
    assert_eq!(keys, vec!["portcullis:ratelimit:k:rl:limited:route:fleet".to_owned()]);
    let ttl: i64 = redis.command(&["PTTL", &keys[0]]);
    assert!((5_000..=10_001).contains(&ttl), "the cell expires when full again: {ttl} ms");

    let (status, body) = admin_json(&a, "/status").await;
    assert_eq!(status, 200);
    assert_eq!(body["kv"]["backend"], "redis");
    assert_eq!(body["kv"]["state"], "up");
    let shown = body["kv"].to_string();
    assert!(!shown.contains("fleet-secret-7"), "no credentials in /status: {shown}");
    let (status, ready) = admin_json(&b, "/readyz").await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")));
    let exposition = scrape(&a).await;
    assert!(
        metric(&exposition, "portcullis_kv_command_duration_seconds_count", r#"backend="redis",op="throttle""#)
            .unwrap()
            >= 1.0
    );
    assert_eq!(metric(&exposition, "portcullis_kv_backend_up", r#"backend="redis""#), Some(1.0));
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_ttls_and_namespaces_hold_across_two_gateways() {
    let redis = RedisServer::start();
    let upstream = echo_upstream().await;
    let routes = route("cas", "/cas/", &[("chaos", None)]) + &route("other", "/other/", &[("chaos-open", None)]);
    let config = config_with(upstream, &redis.kv_table(""), &routes);
    let (a, b) = (TestGateway::start_standalone(&config).await, TestGateway::start_standalone(&config).await);

    // A counter kept by get and compare-and-swap alone, from both gateways at once.
    let jobs = (0..40)
        .map(|i| ((if i % 2 == 0 { &a } else { &b }).url("/cas/x"), vec![("x-chaos", "cas".to_owned())]))
        .collect();
    let replies = concurrently(jobs).await;
    assert!(replies.iter().all(|r| r.status == 200), "{:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());
    let written: BTreeSet<u64> = replies.iter().map(|r| r.upstream_saw("x-cas")[0].parse().unwrap()).collect();
    assert_eq!(written, (1..=40).collect(), "every swap wrote a distinct value: none was lost");
    let stored: String = redis.command(&["GET", "portcullis:chaos:k:cas"]);
    assert_eq!(stored, "40");
    // `increment` (INCRBY inside the script) from both gateways at once: every count once.
    let jobs = (0..20)
        .map(|i| ((if i % 2 == 0 { &a } else { &b }).url("/cas/x"), vec![("x-chaos", "count".to_owned())]))
        .collect();
    let counted: BTreeSet<i64> =
        concurrently(jobs).await.iter().map(|r| r.upstream_saw("x-count")[0].parse().unwrap()).collect();
    assert_eq!(counted, (1..=20).collect());

    let kv = |gw: &TestGateway, path: &str, op: &str, key: &str, extra: &[(&'static str, &str)]| {
        let url = gw.url(path);
        let mut headers = vec![("x-chaos", op.to_owned()), ("x-kv-key", key.to_owned())];
        headers.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            get(&url, &headers).await.upstream_saw("x-kv").first().cloned().unwrap_or_default()
        }
    };
    // Fleet-wide within a plugin, invisible to another plugin.
    assert_eq!(kv(&a, "/cas/x", "kv-set", "shared", &[("x-kv-value", "from-a")]).await, "stored");
    assert_eq!(kv(&b, "/cas/x", "kv-get", "shared", &[]).await, "from-a");
    assert_eq!(kv(&b, "/other/x", "kv-get", "shared", &[]).await, "absent", "plugin `chaos-open` has its own keys");

    // A TTL runs on Redis: the value is gone for every gateway when it passes.
    assert_eq!(kv(&a, "/cas/x", "kv-set", "brief", &[("x-kv-value", "v"), ("x-kv-ttl-ms", "300")]).await, "stored");
    assert_eq!(kv(&b, "/cas/x", "kv-get", "brief", &[]).await, "v");
    let ttl: i64 = redis.command(&["PTTL", "portcullis:chaos:k:brief"]);
    assert!((1..=300).contains(&ttl), "{ttl}");
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(kv(&b, "/cas/x", "kv-get", "brief", &[]).await, "absent");
    assert_eq!(redis.command::<i64>(&["EXISTS", "portcullis:chaos:k:brief"]), 0);
    // The namespace's index forgets the expired key at the next write.
    assert_eq!(kv(&a, "/cas/x", "kv-set", "later", &[("x-kv-value", "v")]).await, "stored");
    let indexed: Vec<String> = redis.command(&["ZRANGE", "portcullis:chaos:i", "0", "-1"]);
    assert_eq!(indexed, vec!["cas", "hits", "later", "shared"], "brief was swept from the index");
    let bytes: i64 = redis.command(&["GET", "portcullis:chaos:b"]);
    let live = "cas40hits20latervsharedfrom-a".len();
    assert_eq!(bytes, i64::try_from(live).unwrap(), "the byte count follows the keys");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_fetches_a_jwks_once() {
    let redis = RedisServer::start();
    let upstream = echo_upstream().await;
    let jwks = std::fs::read_to_string(portcullis_e2e::root().join("examples/quickstart/keys/jwks.json")).unwrap();
    let fetches = Arc::new(AtomicU32::new(0));
    let (server, task) = {
        let fetches = fetches.clone();
        serve(move |_, _, _, _| {
            fetches.fetch_add(1, Ordering::SeqCst);
            (200, "application/json", jwks.clone())
        })
        .await
    };
    let extra = portcullis_e2e::outbound_auth_plugin("jwt-remote", "jwt_auth", server) + &redis.kv_table("");
    let step = format!(
        r#"{{ issuer = "https://demo.portcullis.invalid", jwks_url = "http://{server}/jwks.json", jwks_cache = {{ max_age_ms = 60000, refetch_cooldown_ms = 10000, max_stale_ms = 120000 }} }}"#
    );
    let config = config_with(upstream, &extra, &route("api", "/api/", &[("jwt-remote", Some(&step))]));
    let gateways = [
        TestGateway::start_standalone(&config).await,
        TestGateway::start_standalone(&config).await,
        TestGateway::start_standalone(&config).await,
    ];
    let token = format!("Bearer {}", mint(&claims("alice")));
    for gw in &gateways {
        assert_eq!(get(&gw.url("/api/x"), &[("authorization", &token)]).await.status, 200);
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "three gateways, one JWKS fetch: the document is shared in kv");
    for gw in gateways {
        gw.stop().await;
    }
    task.abort();
}

/// The `[[route]]` for a rate-limit step with `policy`.
fn limited_route(id: &str, prefix: &str, policy: &str) -> String {
    format!(
        "\n[[route]]\nid = \"{id}\"\npath_prefix = \"{prefix}\"\nupstream = \"app\"\n\n[[route.chain]]\nplugin = \"ratelimit\"\nfailure_policy = \"{policy}\"\nconfig = {{ limits = [{{ name = \"q\", requests = 100000, window_ms = 10000 }}] }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_or_slow_protected_routes_answer_per_policy_in_time_and_recover() {
    let mut redis = RedisServer::start();
    let upstream = echo_upstream().await;
    let routes = limited_route("closed", "/closed/", "fail-closed")
        + &limited_route("open", "/open/", "fail-open")
        + &route("plain", "/plain/", &[]);
    let kv = redis.kv_table("connect_timeout_ms = 200\ncommand_timeout_ms = 100\nprobe_interval_ms = 100");
    let gw = TestGateway::start_standalone(&config_with(upstream, &kv, &routes)).await;
    for path in ["/closed/x", "/open/x", "/plain/x"] {
        assert_eq!(get(&gw.url(path), &[]).await.status, 200, "{path} with Redis up");
    }

    redis.stop();
    // More failures than the breaker's default threshold: they must not open it.
    for _ in 0..12 {
        let started = Instant::now();
        let reply = get(&gw.url("/closed/x"), &[]).await;
        assert_eq!(reply.status, 503, "fail-closed without its quota store");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "answered within the timeouts: {:?}",
            started.elapsed()
        );
    }
    assert_eq!(get(&gw.url("/open/x"), &[]).await.status, 200, "fail-open lets the request through");
    assert_eq!(get(&gw.url("/plain/x"), &[]).await.status, 200, "routes without kv are unaffected");
    let (status, ready) = admin_json(&gw, "/readyz").await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("degraded")), "{ready}");
    assert_eq!(ready["kv"]["state"], "down");
    let exposition = scrape(&gw).await;
    let failed = metric(&exposition, "portcullis_plugin_failures_total", r#"plugin="ratelimit",kind="kv-unavailable""#);
    assert!(failed.unwrap_or(0.0) >= 13.0, "{failed:?}");
    assert_eq!(metric(&exposition, "portcullis_kv_backend_up", r#"backend="redis""#), Some(0.0));
    let (_, status) = admin_json(&gw, "/status").await;
    assert_eq!(status["plugins"]["ratelimit"]["breaker"], "closed", "an outage of the store is not a crashing plugin");

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if get(&gw.url("/closed/x"), &[]).await.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway reconnects by itself once Redis is back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while admin_json(&gw, "/readyz").await.1["status"] != "ready" {
        assert!(Instant::now() < deadline, "ready again once the probe sees Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A slow Redis (a 1.5 s stall): the same answers within the command timeout.
    let stall = std::thread::spawn({
        let url = redis.url();
        move || {
            let mut connection = redis::Client::open(url).unwrap().get_connection().unwrap();
            redis::cmd("DEBUG").arg("SLEEP").arg("1.5").query::<()>(&mut connection).unwrap();
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    assert_eq!(get(&gw.url("/closed/x"), &[]).await.status, 503);
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "the command timeout bounds the wait: {:?}",
        started.elapsed()
    );
    assert_eq!(get(&gw.url("/plain/x"), &[]).await.status, 200);
    stall.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&gw.url("/closed/x"), &[]).await.status != 200 {
        assert!(Instant::now() < deadline, "served again after the stall");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_settings_are_checked_and_name_the_field() {
    let upstream = echo_upstream().await;
    let refused = |kv: &str| {
        let (_, file) = portcullis_e2e::write_config(&config_with(upstream, kv, &route("plain", "/p/", &[])));
        async move { portcullis::Gateway::start(&file).await.err().map(|e| e.to_string()).unwrap_or_default() }
    };
    let with_password = refused("[kv]\nbackend = \"redis\"\nurl = \"redis://:hunter2@127.0.0.1:6379/0\"").await;
    assert!(with_password.contains("kv.url") && with_password.contains("credentials"), "{with_password}");
    assert!(!with_password.contains("hunter2"), "the refusal does not repeat the password: {with_password}");
    let scheme = refused("[kv]\nbackend = \"redis\"\nurl = \"http://127.0.0.1:6379\"").await;
    assert!(scheme.contains("kv.url"), "{scheme}");
    let timeout = refused("[kv]\nbackend = \"redis\"\ncommand_timeout_ms = 0").await;
    assert!(timeout.contains("kv.command_timeout_ms"), "{timeout}");
    let unset = refused("[kv]\nbackend = \"redis\"\npassword_env = \"PORTCULLIS_TEST_UNSET_REDIS_PASSWORD\"").await;
    assert!(unset.contains("kv.password_env"), "{unset}");
}
