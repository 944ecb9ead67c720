//! The quickstart's configuration, served as written (only its addresses moved to ephemeral
//! loopback ports): the full `/api/` chain does what the README shows.

use portcullis_e2e::{claims, echo_upstream, get, mint, request, start_quickstart};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_chain_authenticates_authorizes_limits_validates_and_audits() {
    let upstream = echo_upstream().await;
    let quickstart = start_quickstart(upstream).await;
    let gateway = &quickstart.gateway;
    let base = format!("http://{}", gateway.listener_addrs()[0]);
    let mut alice = claims("alice");
    alice["sub"] = json!(format!("alice-{}", std::process::id()));
    let auth = format!("Bearer {}", mint(&alice));
    let json_auth = [("authorization", auth.as_str()), ("content-type", "application/json")];

    let listed = get(&format!("{base}/api/orders"), &[("authorization", &auth)]).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.headers["ratelimit-policy"], "\"per-10s\";q=5;w=10, \"per-hour\";q=1000;w=3600");
    let created =
        request("POST", &format!("{base}/api/orders"), &json_auth, r#"{"item": "bolt", "quantity": 3}"#).await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    let invalid =
        request("POST", &format!("{base}/api/orders"), &json_auth, r#"{"item": "bolt", "quantity": 0}"#).await;
    assert_eq!(invalid.status, 422);
    assert_eq!(invalid.json()["errors"][0]["pointer"], "/quantity");
    let forbidden = request("DELETE", &format!("{base}/api/orders/1"), &[("authorization", &auth)], "").await;
    assert_eq!(forbidden.status, 403, "DELETE is for admins");
    // Counted so far: the GET and both POSTs (rate-limit runs before validation); rbac refused
    // the DELETE before rate-limit ran. The fourth and fifth pass, the sixth is limited.
    for _ in 0..2 {
        assert_eq!(get(&format!("{base}/api/orders"), &[("authorization", &auth)]).await.status, 200);
    }
    let limited = get(&format!("{base}/api/orders"), &[("authorization", &auth)]).await;
    assert_eq!(limited.status, 429, "the sixth request within 10 s");
    assert!(limited.headers.contains_key("retry-after"));
    assert_eq!(get(&format!("{base}/api/orders"), &[]).await.status, 401);
    quickstart.stop().await;
}
