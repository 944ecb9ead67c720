//! Safe plugin rollout (issue 17), end to end: a shadow step runs on live traffic and its
//! decisions are visible, but never enforced. (Pinned plugins are in `reload.rs`.)

use portcullis_e2e::{JWT_CONFIG, TestGateway, claims, config_with, echo_upstream, get, metric, mint, plugin, scrape};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_step_that_would_refuse_does_not_and_its_decisions_are_visible() {
    let upstream = echo_upstream().await;
    // A stricter rbac policy tried in shadow before the enforced one: it would refuse readers.
    let extra = format!("\n[plugin.rbac-strict]\npath = \"{}\"\nkind = \"filter\"\n", plugin("rbac").display());
    let routes = format!(
        r#"
[[route]]
id = "orders"
path_prefix = "/orders"
upstream = "app"

[[route.chain]]
plugin = "jwt"
config = {JWT_CONFIG}

[[route.chain]]
plugin = "rbac-strict"
mode = "shadow"
config = {{ rules = [ {{ path = "/orders/**", roles = ["admin"] }} ] }}

[[route.chain]]
plugin = "rbac"
config = {{ rules = [ {{ path = "/orders/**", roles = ["reader", "admin"] }} ] }}

[[route.chain]]
plugin = "audit"
"#
    );
    let gw = TestGateway::start(&config_with(upstream, &extra, &routes)).await;
    let token = format!("Bearer {}", mint(&claims("alice")));
    for _ in 0..3 {
        let reply = get(&gw.url("/orders/1"), &[("authorization", &token)]).await;
        assert_eq!(reply.status, 200, "the shadow step's refusal is not enforced: {:?}", reply.body);
    }
    // A token without the reader role: both refuse (403), so they agree.
    let mut nobody = claims("bob");
    nobody["roles"] = serde_json::json!([]);
    let reply = get(&gw.url("/orders/1"), &[("authorization", &format!("Bearer {}", mint(&nobody)))]).await;
    assert_eq!(reply.status, 403);

    let exposition = scrape(&gw).await;
    let count = |labels: &str, name: &str| metric(&exposition, name, labels).unwrap_or(0.0);
    let decisions = "portcullis_plugin_decisions_total";
    assert_eq!(count(r#"plugin="rbac-strict",decision="respond",mode="shadow""#, decisions), 4.0, "{exposition}");
    assert_eq!(count(r#"plugin="rbac",decision="continue",mode="enforce""#, decisions), 3.0);
    assert_eq!(count(r#"plugin="rbac",decision="respond",mode="enforce""#, decisions), 1.0);
    let disagreements = "portcullis_shadow_disagreements_total";
    assert_eq!(count(r#"route="orders",plugin="rbac-strict""#, disagreements), 3.0, "{exposition}");

    // The exchange record says what the shadow step decided.
    let records = gw.audit_records(4).await;
    let first = &records[0]["decisions"];
    let shadow = first.as_array().unwrap().iter().find(|d| d["plugin"] == "rbac-strict").unwrap();
    assert_eq!(shadow["decision"], "shadow:respond");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_logging_step_is_refused_by_its_field() {
    let routes = "\n[[route]]\nid = \"r\"\npath_prefix = \"/\"\nupstream = \"app\"\n\n[[route.chain]]\nplugin = \"audit\"\nmode = \"shadow\"\n";
    let config = config_with(echo_upstream().await, "", routes);
    let why = portcullis::config::check_text(&config).err().unwrap();
    assert!(why.iter().any(|i| i.field == "route[0].chain[0].mode"), "{why:?}");
}
