//! The quickstart's `/api/` chain end to end: jwt-auth then audit-log, real tokens.

use portcullis_e2e::{
    JWT_CONFIG, TestGateway, claims, config, config_with, echo_upstream, get, mint, mint_with, plugin, root, route,
};
use serde_json::json;

async fn gateway() -> TestGateway {
    let upstream = echo_upstream().await;
    let routes = [
        route(
            "api",
            "/api/",
            &[
                ("jwt", Some(JWT_CONFIG)),
                ("chaos", None),
                (
                    "audit",
                    Some(r#"{ headers = ["authorization", "user-agent", "x-session"], redact = ["X-Session"] }"#),
                ),
            ],
        ),
        route("public", "/public/", &[]),
    ]
    .concat();
    TestGateway::start(&config(upstream, &routes)).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_token_reaches_upstream_with_identity_headers() {
    let gw = gateway().await;
    let mut c = claims("alice");
    c["roles"] = json!(["reader", "writer"]);
    c["scope"] = json!("orders:read orders:write");
    let reply = get(&gw.url("/api/orders"), &[("authorization", &bearer(&mint(&c)))]).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.upstream_saw("x-user-id"), ["alice"]);
    assert_eq!(reply.upstream_saw("x-user-roles"), ["reader,writer"]);
    assert_eq!(reply.upstream_saw("x-user-scopes"), ["orders:read orders:write"]);
    assert_eq!(reply.upstream_saw("x-user-issuer"), ["https://demo.portcullis.invalid"]);
    assert_eq!(reply.upstream_saw("x-seen-subject"), ["alice"], "later steps see the identity");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_records_the_exchange_after_the_response() {
    portcullis_e2e::capture_logs();
    let gw = gateway().await;
    let request_id = "audit-check-1";
    let token = mint(&claims("alice"));
    let sent = [("authorization", bearer(&token)), ("x-request-id", request_id.into()), ("x-session", "s-77".into())];
    let sent: Vec<(&str, &str)> = sent.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let reply = get(&gw.url("/api/orders?api_key=k-123"), &sent).await;
    assert_eq!(reply.status, 200);
    let records = gw.audit_records(1).await;
    let record =
        records.iter().find(|r| r["request_id"] == request_id).expect("an audit record for the request").clone();
    assert_eq!(record["subject"], "alice");
    assert_eq!(record["status"], 200);
    assert_eq!(record["route"], "api");
    assert_eq!(record["headers"]["authorization"], "[redacted]");
    assert!(record["bytes_out"].as_u64().unwrap() > 0);
    let decisions: Vec<String> = record["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            format!(
                "{} {} {}",
                d["plugin"].as_str().unwrap(),
                d["phase"].as_str().unwrap(),
                d["decision"].as_str().unwrap()
            )
        })
        .collect();
    // The chaos filter declares no response hook (contract `hooks`, since 0.2.0), so it has no
    // response-phase decision.
    assert_eq!(decisions, ["jwt request authenticated", "chaos request continue"]);
    assert!(record["hash"].as_str().is_some_and(|h| h.len() == 64), "chained by the host");
    // The host renders the standard record (audit-log declares `audit.append-each-exchange`
    // in `configure`, and the host appends it without calling `observe`): the members of
    // docs/audit.md in their order, the plugin's `redact` names honoured, the query never
    // recorded.
    assert_eq!(record["headers"]["x-session"], "[redacted]");
    assert_eq!(record["path"], "/api/orders");
    let text = std::fs::read_to_string(gw.dir().join("audit.jsonl")).unwrap();
    let line = text.lines().find(|l| l.contains(request_id)).unwrap();
    for secret in ["k-123", "s-77", token.as_str()] {
        assert!(!line.contains(secret), "{secret} is not recorded: {line}");
    }
    let members = [
        "type",
        "time",
        "time_ms",
        "request_id",
        "route",
        "method",
        "authority",
        "path",
        "client_ip",
        "subject",
        "status",
        "latency_ms",
        "bytes_in",
        "bytes_out",
        "endpoint",
        "headers",
        "decisions",
        "prev",
        "hash",
    ];
    let at: Vec<usize> = members.iter().map(|m| line.find(&format!("\"{m}\":")).unwrap_or(usize::MAX)).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "members in the documented order: {line}");
    assert_eq!(record["type"], "audit");
    assert_eq!(record["method"], "GET");
    let logged = portcullis_e2e::captured_logs();
    assert!(!serde_json::to_string(&logged).unwrap().contains(&token), "the token is never logged");
    let audit = std::fs::read_to_string(gw.dir().join("audit.jsonl")).unwrap();
    assert!(!audit.contains(&token), "nor written to the audit trail");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_never_reach_upstream() {
    let gw = gateway().await;
    let spoof = [("x-user-id", "root"), ("x-user-roles", "admin"), ("x-user-scopes", "all"), ("x-user-issuer", "me")];
    let public = get(&gw.url("/public/x"), &spoof).await;
    assert_eq!(public.status, 200);
    for (name, _) in spoof {
        assert!(public.upstream_saw(name).is_empty(), "{name} reached the upstream on an anonymous route");
    }
    let mut with_token = spoof.to_vec();
    let auth = bearer(&mint(&claims("alice")));
    with_token.push(("authorization", &auth));
    let api = get(&gw.url("/api/x"), &with_token).await;
    assert_eq!(api.status, 200);
    assert_eq!(api.upstream_saw("x-user-id"), ["alice"], "exactly the verified subject");
    assert_eq!(api.upstream_saw("x-user-roles"), ["reader"]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tokens_are_refused_with_401_and_a_bearer_challenge() {
    let gw = gateway().await;
    let mut expired = claims("alice");
    expired["exp"] = json!(portcullis_e2e::now() - 3600);
    let mut wrong_audience = claims("alice");
    wrong_audience["aud"] = json!("someone-else");
    let mut exp_as_string = claims("alice");
    exp_as_string["exp"] = json!((portcullis_e2e::now() + 3600).to_string());
    let bad_signature = mint_with(&claims("alice"), &root().join("tests/fixtures/attacker-private.pem"));
    let alg_none = {
        let valid = mint(&claims("alice"));
        let payload = valid.split('.').nth(1).unwrap().to_owned();
        // {"alg":"none","typ":"JWT"}
        format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.")
    };
    let cases = [
        ("missing", None),
        ("expired", Some(mint(&expired))),
        ("wrong audience", Some(mint(&wrong_audience))),
        ("exp as a string", Some(mint(&exp_as_string))),
        ("bad signature", Some(bad_signature)),
        ("alg none", Some(alg_none)),
        ("garbage", Some("not.a.jwt".to_owned())),
    ];
    for (case, token) in cases {
        let auth = token.map(|t| bearer(&t));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let reply = get(&gw.url("/api/orders"), &headers).await;
        assert_eq!(reply.status, 401, "{case}: {:?}", reply.body);
        let challenge = reply.headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer realm=\"portcullis\""), "{case}: {challenge}");
        if case != "missing" {
            assert!(challenge.contains("error=\"invalid_token\""), "{case}: {challenge}");
        }
        assert_eq!(reply.headers["content-type"], "application/problem+json", "{case}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_signatures_are_checked_by_the_host_and_counted() {
    // A plugin id of its own: the test binary's gateways share one engine and its metrics.
    let extra = format!(
        "[plugin.jwt-counted]\npath = \"{}\"\nkind = \"auth\"\ncapabilities = [\"kv\", \"http-client\"]\n",
        plugin("jwt_auth").display()
    );
    let routes = route("api", "/api/", &[("jwt-counted", Some(JWT_CONFIG))]);
    let gw = TestGateway::start(&config_with(echo_upstream().await, &extra, &routes)).await;
    let valid = mint(&claims("alice"));
    let forged = mint_with(&claims("mallory"), &root().join("tests/fixtures/attacker-private.pem"));
    let reply = get(&gw.url("/api/orders"), &[("authorization", &bearer(&valid))]).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    for _ in 0..2 {
        let reply = get(&gw.url("/api/orders"), &[("authorization", &bearer(&forged))]).await;
        assert_eq!(reply.status, 401);
    }
    // jwt-auth hands its RS256 keys to the host's `signatures` capability, which checks each
    // signature natively and counts it; a forged token is checked (and counted) every time.
    let metrics = portcullis_e2e::scrape(&gw).await;
    let checks = |result: &str| {
        let labels = format!("plugin=\"jwt-counted\",algorithm=\"RS256\",result=\"{result}\"");
        portcullis_e2e::metric(&metrics, "portcullis_plugin_signature_checks_total", &labels)
    };
    assert_eq!(checks("valid"), Some(1.0), "{metrics}");
    assert_eq!(checks("invalid"), Some(2.0), "{metrics}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_value_holding_the_header_separator_never_reaches_the_upstream() {
    let gw = gateway().await;
    let mut c = claims("mallory");
    c["roles"] = json!(["reader", "guest,admin"]);
    let reply = get(&gw.url("/api/orders"), &[("authorization", &bearer(&mint(&c)))]).await;
    assert_eq!(reply.status, 500, "the auth step's answer is refused (fail-closed): {:?}", reply.body);
    assert!(reply.json().get("headers").is_none(), "the upstream was not reached");
    let mut c = claims("mallory");
    c["scope"] = json!("orders:read");
    c["sub"] = json!("mallory\u{7f}");
    assert_eq!(get(&gw.url("/api/orders"), &[("authorization", &bearer(&mint(&c)))]).await.status, 500);
    gw.stop().await;
}
