//! Zero trust from the seeds (issue 16), end to end: the gateway holds the upstream's
//! credential as a `[secret]` and no output of it ever shows the value; RFC 9470 step-up
//! authentication in `rbac`.
//!
//! Its own test binary: it captures the gateway's log at every level (TRACE for the gateway,
//! hyper, h2 and rustls; INFO for the compiler, which logs only code) to grep it for the marker
//! secrets.

use std::time::Duration;

use portcullis_e2e::{
    JWT_CONFIG, TestGateway, claims, config_with, echo_upstream, get, mint, plugin, replace_file, route, write_config,
};
use serde_json::json;

const MARKER: &str = "marker-secret-7d41c2b9e0";
const ROTATED: &str = "rotated-marker-55ab10fe";
const UNWRITABLE: &str = "unwritable-marker-c0ffee";

/// Keeps every event of every level (the compiler's at INFO: it logs code, not requests).
fn capture_every_level() {
    portcullis_e2e::capture_logs_filtered("trace,cranelift_codegen=info,wasmtime_cranelift=info,regalloc2=info");
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A gateway whose `/deploys` route authenticates with jwt-auth, then sends the upstream the
/// gateway's own token (the secret `upstream-token`, read from a file beside the
/// configuration), then logs the exchange with audit-log (recording `authorization`, which it
/// redacts, as every credential).
fn deploys_config(upstream: std::net::SocketAddr) -> String {
    let extra = format!(
        r#"
[reload]
debounce_ms = 50

[secret.upstream-token]
file = "upstream-token"

[secret.unused]
env = "PATH"

[plugin.inject]
path = "{}"
kind = "filter"
capabilities = ["audit"]
audit_file = "credentials.jsonl"
secrets = ["upstream-token"]
"#,
        plugin("credential_injection").display()
    );
    let routes = route(
        "deploys",
        "/deploys",
        &[
            ("jwt", Some(JWT_CONFIG)),
            ("inject", Some(r#"{ secret = "upstream-token", prefix = "Bearer " }"#)),
            ("audit", Some(r#"{ headers = ["authorization", "user-agent"] }"#)),
        ],
    );
    config_with(upstream, &extra, &routes)
}

async fn admin(gw: &TestGateway, path: &str) -> String {
    let reply = get(&format!("http://{}{path}", gw.admin), &[]).await;
    String::from_utf8_lossy(&reply.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_the_gateways_credential_and_no_output_of_the_gateway_shows_it() {
    capture_every_level();
    let upstream = echo_upstream().await;
    let (dir, file) = write_config(&deploys_config(upstream));
    let secret_file = dir.join("upstream-token");
    std::fs::write(&secret_file, format!("{MARKER}\n")).unwrap();
    let gw = TestGateway::start_file(&file).await;

    let token = mint(&claims("alice"));
    let reply = get(&gw.url("/deploys/42"), &[("authorization", &bearer(&token))]).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    // The upstream's echo: the gateway's credential (one trailing newline trimmed), never the
    // client's token.
    assert_eq!(reply.upstream_saw("authorization"), [format!("Bearer {MARKER}")]);
    assert_eq!(reply.upstream_saw("x-user-id"), ["alice"]);
    // A request without an identity is not lent the gateway's credential.
    let anonymous = get(&gw.url("/deploys/42"), &[]).await;
    assert_eq!(anonymous.status, 401);

    // Per-user token usage, by secret name.
    let used = read_lines(&dir.join("credentials.jsonl"), 1).await;
    assert_eq!(used[0]["event"], "credential-injected");
    assert_eq!(used[0]["subject"], "alice");
    assert_eq!(used[0]["secret"], "upstream-token");
    assert_eq!(used[0]["path"], "/deploys/42");

    // Rotation: the secret file is a watched source; the next request carries the new value.
    replace_file(&secret_file, format!("{ROTATED}\n").as_bytes());
    let rotated = eventually(|| async {
        let reply = get(&gw.url("/deploys/42"), &[("authorization", &bearer(&token))]).await;
        (reply.upstream_saw("authorization") == [format!("Bearer {ROTATED}")]).then_some(())
    })
    .await;
    assert!(rotated.is_some(), "the rotated secret was not served within 5 s");

    // A value that cannot be a header fails the request (fail-closed: 500), and the error
    // paths (the host's refusal, the plugin's failure) name the secret, not the value.
    replace_file(&secret_file, format!("{UNWRITABLE}\r\nsecond line\n").as_bytes());
    let failed = eventually(|| async {
        let reply = get(&gw.url("/deploys/42"), &[("authorization", &bearer(&token))]).await;
        (reply.status == 500).then_some(())
    })
    .await;
    assert!(failed.is_some(), "a secret with CR LF was written into a header");

    // Every output: admin endpoints, both audit files, and the log at every level.
    let outputs = [
        ("/status", admin(&gw, "/status").await),
        ("/plugins", admin(&gw, "/plugins").await),
        ("/reloads", admin(&gw, "/reloads").await),
        ("/metrics", admin(&gw, "/metrics").await),
        ("audit.jsonl", std::fs::read_to_string(dir.join("audit.jsonl")).unwrap_or_default()),
        ("credentials.jsonl", std::fs::read_to_string(dir.join("credentials.jsonl")).unwrap()),
        ("the log", portcullis_e2e::captured_text()),
    ];
    assert!(outputs[0].1.contains("upstream-token"), "/status names the secrets: {}", outputs[0].1);
    assert!(outputs[6].1.contains("plugin call failed"), "the failure was logged");
    for (output, text) in &outputs {
        for marker in [MARKER, ROTATED, UNWRITABLE] {
            assert!(!text.contains(marker), "{output} shows a secret value ({marker})");
        }
    }
    let status: serde_json::Value = serde_json::from_str(&outputs[0].1).unwrap();
    assert_eq!(status["secrets"]["unused"]["source"], "env PATH");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_granted_by_name_and_refused_with_the_field_that_is_wrong() {
    let upstream = echo_upstream().await;
    let good = deploys_config(upstream);
    let refusal = |config: String| async move {
        let (_, file) = write_config(&config);
        match portcullis::Gateway::start_with_engine(&file, portcullis_e2e::engine()).await {
            Ok(gw) => {
                gw.shutdown().await;
                panic!("accepted:\n{config}")
            }
            Err(e) => e.to_string(),
        }
    };
    // A grant of a secret that is not configured.
    let why = refusal(good.replace("secrets = [\"upstream-token\"]", "secrets = [\"nope\"]")).await;
    assert!(why.contains("plugin.inject.secrets[0]: no [secret.nope] is defined"), "{why}");
    // An environment variable that is not set, and a file that is missing.
    let why = refusal(good.replace("env = \"PATH\"", "env = \"PORTCULLIS_TEST_UNSET_VARIABLE\"")).await;
    assert!(
        why.contains("secret.unused.env: environment variable `PORTCULLIS_TEST_UNSET_VARIABLE` is not set"),
        "{why}"
    );
    let why = refusal(good.clone()).await;
    assert!(why.contains("secret.upstream-token.file: cannot read"), "{why}");
    // Both sources at once.
    let why = refusal(good.replace("env = \"PATH\"", "env = \"PATH\"\nfile = \"x\"")).await;
    assert!(why.contains("secret.unused.file: set `env` or `file`, not both"), "{why}");

    // Any plugin may import `secrets`, but uses only the secrets granted to it by name: without
    // the grant the step fails (fail-closed: 500) and the client's credential goes nowhere.
    let (dir, file) = write_config(&good.replace("secrets = [\"upstream-token\"]\n", ""));
    std::fs::write(dir.join("upstream-token"), MARKER).unwrap();
    let gw = TestGateway::start_file(&file).await;
    let reply = get(&gw.url("/deploys/1"), &[("authorization", &bearer(&mint(&claims("alice"))))]).await;
    assert_eq!(reply.status, 500);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_answers_rfc_9470_step_up_challenges() {
    let upstream = echo_upstream().await;
    let rbac = r#"{ rules = [ { methods = ["POST"], path = "/transfers/**", roles = ["reader"], acr_values = ["urn:example:mfa", "urn:example:hwk"], max_age_s = 300 } ] }"#;
    let routes = route("transfers", "/transfers", &[("jwt", Some(JWT_CONFIG)), ("rbac", Some(rbac))]);
    let gw = TestGateway::start(&config_with(upstream, "", &routes)).await;
    let post = |c: serde_json::Value| {
        let url = gw.url("/transfers/7");
        async move { portcullis_e2e::request("POST", &url, &[("authorization", &bearer(&mint(&c)))], "").await }
    };
    let challenge = |reply: &portcullis_e2e::Reply| {
        reply.headers.get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
    };

    // A password-only token: the RFC 9470 §3 challenge with the acceptable classes.
    let reply = post(claims("alice")).await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        challenge(&reply),
        "Bearer error=\"insufficient_user_authentication\", error_description=\"A different authentication level \
         is required\", acr_values=\"urn:example:mfa urn:example:hwk\", max_age=\"300\""
    );
    assert_eq!(reply.json()["type"], "urn:portcullis:problem:insufficient-user-authentication");

    // Multi-factor, but an hour ago: `max_age`.
    let mut stale = claims("alice");
    stale["acr"] = json!("urn:example:mfa");
    stale["auth_time"] = json!(portcullis_e2e::now() - 3600);
    let reply = post(stale).await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        challenge(&reply),
        "Bearer error=\"insufficient_user_authentication\", error_description=\"More recent authentication is \
         required\", max_age=\"300\""
    );

    // Stepped up: passes.
    let mut fresh = claims("alice");
    fresh["acr"] = json!("urn:example:hwk");
    fresh["amr"] = json!(["hwk", "pin"]);
    fresh["auth_time"] = json!(portcullis_e2e::now() - 10);
    let reply = post(fresh).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.upstream_saw("x-user-id"), ["alice"]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_api_key_is_refused_outside_its_operations() {
    let upstream = echo_upstream().await;
    let extra = format!(
        r#"
[secret.api-keys]
file = "api-keys.json"

[plugin.scoped-keys]
path = "{}"
kind = "auth"
readable_secrets = ["api-keys"]
"#,
        plugin("api_key_auth").display()
    );
    let routes = route("reports", "/", &[("scoped-keys", Some(r#"{ keys = { "$secret" = "api-keys" } }"#))]);
    let (dir, file) = write_config(&config_with(upstream, &extra, &routes));
    let keys = json!([
        { "sha256": sha256_hex("k-reporting-0123456789"), "subject": "reporting", "operations": [
            { "methods": ["GET"], "path": "/reports/**" },
            { "methods": ["POST"], "path": "/reports/*/exports" } ] },
        { "key": "k-expired-0123456789", "subject": "old", "expires": "2020-01-01T00:00:00Z" }
    ]);
    std::fs::write(dir.join("api-keys.json"), keys.to_string()).unwrap();
    let gw = TestGateway::start_file(&file).await;
    let call = |method: &'static str, path: &'static str, key: &'static str| {
        let url = gw.url(path);
        async move { portcullis_e2e::request(method, &url, &[("x-api-key", key)], "").await.status }
    };
    assert_eq!(call("GET", "/reports/2026/q4", "k-reporting-0123456789").await, 200);
    assert_eq!(call("POST", "/reports/7/exports", "k-reporting-0123456789").await, 200);
    assert_eq!(call("DELETE", "/reports/7", "k-reporting-0123456789").await, 403);
    assert_eq!(call("GET", "/admin/users", "k-reporting-0123456789").await, 403);
    assert_eq!(call("GET", "/reports/1", "k-expired-0123456789").await, 401);
    gw.stop().await;

    // `$secret` needs the read grant.
    let ungranted = config_with(upstream, &extra.replace("readable_secrets", "secrets"), &routes);
    let (dir, file) = write_config(&ungranted);
    std::fs::write(dir.join("api-keys.json"), keys.to_string()).unwrap();
    let why = match portcullis::Gateway::start_with_engine(&file, portcullis_e2e::engine()).await {
        Ok(gw) => {
            gw.shutdown().await;
            panic!("a `$secret` without `readable_secrets` was accepted")
        }
        Err(e) => e.to_string(),
    };
    assert!(
        why.contains("route[0].chain[0].config: `$secret` api-keys: the plugin's `readable_secrets` must list it"),
        "{why}"
    );
}

fn sha256_hex(text: &str) -> String {
    portcullis::sources::sha256_hex(text.as_bytes())
}

/// Polls `probe` every 20 ms for up to 5 s.
async fn eventually<F, Fut>(probe: F) -> Option<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<()>>,
{
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if probe().await.is_some() {
            return Some(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// The JSON lines of `file`, waiting up to 2 s for at least `count` (audit batches are written
/// within 25 ms).
async fn read_lines(file: &std::path::Path, count: usize) -> Vec<serde_json::Value> {
    for _ in 0..100 {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        if lines.len() >= count {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} has fewer than {count} records", file.display());
}
