//! Safe plugin rollout (issue 17), end to end: a shadow step runs on live traffic and its
//! decisions are visible, but never enforced; a canary serves its share of clients, each
//! client always on one side; signed plugins load, unsigned and wrongly signed ones are
//! refused at load and at reload; golden requests refuse a configuration that answers them
//! otherwise, at start and at reload. (Pinned plugins are in `reload.rs`.)

use std::time::{Duration, Instant};

use portcullis::plugin::{checkpoint, signing};
use portcullis_e2e::{
    JWT_CONFIG, TestGateway, claims, config_with, echo_upstream, get, metric, mint, plugin, replace_file, scrape,
    write_config,
};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_percent_canary_serves_its_share_and_each_client_stays_on_its_side() {
    let upstream = echo_upstream().await;
    let extra = format!("\n[plugin.tagger-b]\npath = \"{}\"\nkind = \"filter\"\n", plugin("tag_filter_b").display());
    let routes = r#"
[[route]]
id = "tagged"
path_prefix = "/"
upstream = "app"

[[route.chain]]
plugin = "tagger"
config = { suffix = "" }
canary = { plugin = "tagger-b", percent = 10, key = "header:x-client" }
"#;
    let gw = TestGateway::start(&config_with(upstream, &extra, routes)).await;
    let side = |client: String| {
        let url = gw.url("/x");
        async move {
            let reply = get(&url, &[("x-client", &client)]).await;
            assert_eq!(reply.status, 200);
            reply.upstream_saw("x-tag").concat()
        }
    };
    let mut canary = 0;
    for client in 0..2000 {
        if side(format!("client-{client}")).await == "b" {
            canary += 1;
        }
    }
    // Binomial(2000, 0.1): mean 200, standard deviation 13.4; 140..=260 is ±4.5 of them.
    assert!((140..=260).contains(&canary), "{canary} of 2000 on the canary");
    // Sticky: a client's side never changes.
    for client in ["client-7", "client-1234", "someone-else"] {
        let first = side(client.to_owned()).await;
        for _ in 0..10 {
            assert_eq!(side(client.to_owned()).await, first, "{client} changed sides");
        }
    }
    // Each side has its own plugin's metrics.
    let exposition = scrape(&gw).await;
    let served = |plugin: &str| {
        metric(
            &exposition,
            "portcullis_plugin_decisions_total",
            &format!(r#"plugin="{plugin}",decision="continue",mode="enforce""#),
        )
        .unwrap_or(0.0)
    };
    assert!(served("tagger-b") >= f64::from(canary), "{exposition}");
    assert!(served("tagger") >= f64::from(2000 - canary));
    gw.stop().await;
}

/// A gateway of one `/tagged/` route running `filter.wasm` from `dir`, every plugin required
/// to be signed by `dir/release.pub`; `plugin_lines` go into the plugin's table.
fn signed_site(upstream: std::net::SocketAddr, dir: &std::path::Path, plugin_lines: &str) -> String {
    format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n[reload]\ndebounce_ms = 50\n\n\
         [plugin_signing]\ntrusted_keys = [\"release.pub\"]\nrequired = true\n\n[upstream.app]\nendpoints = [\"{upstream}\"]\n\n\
         [plugin.tag]\npath = \"{}\"\nkind = \"filter\"\n{plugin_lines}\n\n[[route]]\nid = \"tagged\"\npath_prefix = \"/tagged/\"\n\
         upstream = \"app\"\n\n[[route.chain]]\nplugin = \"tag\"\nconfig = {{ suffix = \"\" }}\n",
        dir.join("filter.wasm").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_plugins_load_and_unsigned_or_wrongly_signed_ones_are_refused_at_load_and_at_reload() {
    let upstream = echo_upstream().await;
    let (private, public) = checkpoint::generate().unwrap();
    let (stranger, _) = checkpoint::generate().unwrap();
    let component = |name: &str| std::fs::read(plugin(name)).unwrap();
    let signed = |name: &str, key: &str| signing::sign(&component(name), key.as_bytes()).unwrap();
    let (dir, file) = write_config("");
    std::fs::write(dir.join("release.pub"), &public).unwrap();
    let start = |wasm: &[u8], lines: &str| {
        std::fs::write(dir.join("filter.wasm"), wasm).unwrap();
        std::fs::write(&file, signed_site(upstream, &dir, lines)).unwrap();
        portcullis::Gateway::start_with_engine(&file, portcullis_e2e::engine())
    };
    // At load: unsigned, and signed by a key that is not trusted, each refused by its field.
    let why = start(&component("tag_filter_a"), "").await.err().unwrap().to_string();
    assert!(why.contains("plugin.tag.signature") && why.contains("not signed"), "{why}");
    let why = start(&signed("tag_filter_a", &stranger).0, "").await.err().unwrap().to_string();
    assert!(why.contains("plugin.tag.signature") && why.contains("does not verify"), "{why}");
    // A detached signature beside an unchanged file.
    std::fs::write(dir.join("filter.wasm.sig"), signed("tag_filter_a", &private).1).unwrap();
    let gateway = start(&component("tag_filter_a"), "signature = \"filter.wasm.sig\"").await.unwrap();
    gateway.shutdown().await;

    // Embedded, then replaced on the running gateway: by an unsigned build (refused, the
    // signed one keeps serving), then by a signed one (served).
    std::fs::write(dir.join("filter.wasm"), signed("tag_filter_a", &private).0).unwrap();
    std::fs::write(&file, signed_site(upstream, &dir, "")).unwrap();
    let gw = TestGateway::start_file(&file).await;
    assert_eq!(gw.tag().await, "a");
    replace_file(&dir.join("filter.wasm"), &component("tag_filter_b"));
    let why = gw.refused_reload().await.error.unwrap_or_default();
    assert!(why.contains("plugin.tag.signature") && why.contains("not signed"), "{why}");
    assert_eq!(gw.tag().await, "a", "the signed snapshot keeps serving");
    replace_file(&dir.join("filter.wasm"), &signed("tag_filter_b", &private).0);
    let started = Instant::now();
    while gw.tag().await != "b" {
        assert!(started.elapsed() < Duration::from_secs(5), "the signed build was not served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.stop().await;
}

/// The route of the golden tests: jwt then rbac (readers may read, admins may delete), with
/// `rbac_rules` and three golden requests; the reader's token is `reader.jwt` beside the file.
fn golden_site(upstream: std::net::SocketAddr, rbac_rules: &str, golden_path: &str) -> String {
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
plugin = "rbac"
config = {{ rules = {rbac_rules} }}

[[route.golden]]
name = "no token → 401"
path = "/orders/1"
expect = 401
expect_decisions = {{ jwt = "denied" }}

[[route.golden]]
name = "reader DELETE → 403"
method = "DELETE"
path = "{golden_path}"
headers = {{ authorization = {{ "$file" = "reader.jwt", prefix = "Bearer " }} }}
expect = 403
expect_decisions = {{ rbac = "respond" }}

[[route.golden]]
name = "reader GET is forwarded as alice"
path = "/orders/1?full=1"
headers = {{ authorization = {{ "$file" = "reader.jwt", prefix = "Bearer " }}, x-user-id = "mallory" }}
expect = "forward"
expect_headers = {{ x-user-id = "alice", x-user-roles = "reader" }}

[[route]]
id = "other"
path_prefix = "/other"
upstream = "app"
"#
    );
    let reload = "\n[reload]\ndebounce_ms = 50\n";
    config_with(upstream, reload, &routes)
}

const READERS_READ: &str =
    r#"[ { methods = ["GET"], path = "/orders/**", roles = ["reader"] }, { path = "/orders/**", roles = ["admin"] } ]"#;
const READERS_DELETE: &str = r#"[ { path = "/orders/**", roles = ["reader", "admin"] } ]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_requests_gate_start_and_reload_and_name_the_failing_case() {
    let upstream = echo_upstream().await;
    let (dir, file) = write_config(&golden_site(upstream, READERS_DELETE, "/orders/1"));
    let reader = mint(&claims("alice"));
    std::fs::write(dir.join("reader.jwt"), format!("{reader}\n")).unwrap();
    let bearer = format!("Bearer {reader}");

    // At start: a policy that lets readers delete fails "reader DELETE → 403".
    let why = portcullis::Gateway::start_with_engine(&file, portcullis_e2e::engine()).await.err().unwrap().to_string();
    assert!(why.contains("route[0].golden[1]") && why.contains("`reader DELETE → 403`"), "{why}");
    assert!(why.contains("expected 403, got forward") && why.contains("rbac=continue"), "{why}");
    assert!(!why.contains(&reader), "a golden request's header values are never shown: {why}");

    std::fs::write(&file, golden_site(upstream, READERS_READ, "/orders/1")).unwrap();
    let gw = TestGateway::start_file(&file).await;
    let delete = |url: String| {
        let bearer = bearer.clone();
        async move { portcullis_e2e::request("DELETE", &url, &[("authorization", &bearer)], "").await.status }
    };
    assert_eq!(delete(gw.url("/orders/1")).await, 403);

    // At reload: the same mistake is refused by the golden request, and the old policy serves.
    replace_file(&file, golden_site(upstream, READERS_DELETE, "/orders/1").as_bytes());
    let why = gw.refused_reload_naming("route[0].golden[1]").await.error.unwrap_or_default();
    assert!(why.contains("expected 403, got forward"), "{why}");
    assert_eq!(delete(gw.url("/orders/1")).await, 403, "the running policy keeps serving");

    // A golden request must match the route that lists it.
    replace_file(&file, golden_site(upstream, READERS_READ, "/other/1").as_bytes());
    gw.refused_reload_naming("matches route `other`, not the route that lists it").await;

    // Its `$file` is a source: a token file that no longer holds the reader role fails the
    // forwarded case at the reload that change starts.
    std::fs::write(&file, golden_site(upstream, READERS_READ, "/orders/1")).unwrap();
    let mut nobody = claims("alice");
    nobody["roles"] = serde_json::json!([]);
    replace_file(&dir.join("reader.jwt"), mint(&nobody).as_bytes());
    let why = gw.refused_reload_naming("route[0].golden[2]").await.error.unwrap_or_default();
    assert!(why.contains("`reader GET is forwarded as alice`: expected forward, got 403"), "{why}");
    let reply = get(&gw.url("/orders/1"), &[("authorization", &bearer)]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.upstream_saw("x-user-id"), ["alice"]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_golden_requests_are_refused_by_their_fields() {
    let routes = r#"
[[route]]
id = "r"
path_prefix = "/"
upstream = "app"

[[route.chain]]
plugin = "rbac"

[[route.chain]]
plugin = "audit"

[[route.golden]]
name = "twice"
path = "/a"
expect = 200

[[route.golden]]
name = "twice"
method = "get"
path = "a"
headers = { "X-Upper" = "v" }
expect = "forward"
expect_decisions = { jwt = "authenticated", audit = "observed" }
"#;
    let config = config_with(echo_upstream().await, "", routes);
    let why = portcullis::config::check_text(&config).err().unwrap();
    let fields: Vec<_> = why.iter().map(|i| i.field.as_str()).collect();
    for field in [
        "route[0].golden[1].name",
        "route[0].golden[1].method",
        "route[0].golden[1].path",
        "route[0].golden[1].headers.X-Upper",
        "route[0].golden[1].expect_decisions.jwt",
        "route[0].golden[1].expect_decisions.audit",
    ] {
        assert!(fields.contains(&field), "{field} not in {why:?}");
    }
    let wrong = config.replace("expect = 200", "expect = \"allow\"");
    let why = portcullis::config::check_text(&wrong).err().unwrap();
    assert!(why[0].field.starts_with("route[0].golden[0].expect") && why[0].message.contains("forward"), "{why:?}");
}
