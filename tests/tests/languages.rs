//! Plugins in three languages, each built with its toolchain's default flags against the
//! published `filter-plugin` world, through the gateway: `plugins/api-version-js`
//! (componentize-js) and `plugins/deny-list-py` (componentize-py) against
//! `portcullis:plugin@0.3.0`, and `tests/guests/bare-filter` (bare wit-bindgen) against
//! `0.2.0`. Also: configuration refusals name the plugin
//! and field in each; refusals by import or export come before compiling; compiled components
//! are read back from the disk cache on a restart, and a corrupt entry is compiled again;
//! `/readyz` lists the plugins still compiling.

use std::path::Path;
use std::sync::Arc;

use portcullis::config::{self, RuntimeConfig};
use portcullis::plugin::{CompiledFrom, PluginEngine};
use portcullis::snapshot::Snapshot;
use portcullis_e2e::{TestGateway, echo_upstream, engine, get, plugin, request, route, write_config};

const SUNSET: &str = "Sat, 01 May 2027 00:00:00 GMT";

fn js_plugin() -> String {
    format!("\n[plugin.version]\npath = \"{}\"\nkind = \"filter\"\n", plugin("api_version_js").display())
}

fn py_plugin() -> String {
    format!("\n[plugin.deny]\npath = \"{}\"\nkind = \"filter\"\n", plugin("deny_list_py").display())
}

fn bare_plugin() -> String {
    format!("\n[plugin.bare]\npath = \"{}\"\nkind = \"filter\"\n", plugin("bare_filter").display())
}

/// A gateway with only `plugins` (TOML tables) and `routes`, so a test's compile cache holds
/// its own components alone.
fn minimal(upstream: std::net::SocketAddr, plugins: &str, routes: &str) -> String {
    format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n[upstream.app]\nendpoints = [\"{upstream}\"]\n{plugins}\n{routes}"
    )
}

fn header<'a>(reply: &'a portcullis_e2e::Reply, name: &str) -> Option<&'a str> {
    reply.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_api_version_gate_answers_through_the_gateway() {
    let step = format!(r#"{{ allowed = ["1", "2"], query = "api-version", deprecated = ["1"], sunset = "{SUNSET}" }}"#);
    let routes = route("v", "/v/", &[("version", Some(&step))]);
    let gw = TestGateway::start(&minimal(echo_upstream().await, &js_plugin(), &routes)).await;

    let current = get(&gw.url("/v/x"), &[("x-api-version", "2")]).await;
    assert_eq!(current.status, 200, "{:?}", String::from_utf8_lossy(&current.body));
    assert_eq!(current.upstream_saw("x-api-version"), ["2"]);
    assert_eq!(header(&current, "deprecation"), None, "2 is not deprecated");

    let old = get(&gw.url("/v/x"), &[("x-api-version", " 1 ")]).await;
    assert_eq!(old.status, 200);
    assert_eq!(old.upstream_saw("x-api-version"), ["1"], "normalized for the upstream");
    assert_eq!(header(&old, "deprecation"), Some("true"), "RFC 9745, from the JS on-response hook");
    assert_eq!(header(&old, "sunset"), Some(SUNSET));

    let by_query = get(&gw.url("/v/x?api-version=2"), &[]).await;
    assert_eq!(by_query.status, 200);
    assert_eq!(by_query.upstream_saw("x-api-version"), ["2"], "the query parameter, set as the header");

    for headers in [&[("x-api-version", "3")][..], &[]] {
        let refused = get(&gw.url("/v/x"), headers).await;
        assert_eq!(refused.status, 400, "{headers:?}");
        assert_eq!(header(&refused, "content-type"), Some("application/problem+json"));
        assert_eq!(refused.json()["allowed"], serde_json::json!(["1", "2"]));
    }
    let plugins = get(&format!("http://{}/plugins", gw.admin), &[]).await.json();
    let version = plugins["plugins"].as_array().unwrap().iter().find(|p| p["id"] == "version").unwrap();
    let imports: Vec<&str> = version["imports"].as_array().unwrap().iter().filter_map(|i| i.as_str()).collect();
    assert!(
        imports.iter().any(|i| i.starts_with("wasi:http/outgoing-handler@")),
        "StarlingMonkey's default imports load: {imports:?}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_deny_list_answers_through_the_gateway() {
    let rules = r#"{ methods = ["TRACE"], paths = ["/d/admin"], user_agents = ["sqlmap"], client_ips = ["10.0.0.0/8", "2001:db8::/32"] }"#;
    let routes = [
        route("d", "/d/", &[("deny", Some(rules))]),
        route("local", "/local/", &[("deny", Some(r#"{ client_ips = ["127.0.0.0/8"], status = 404 }"#))]),
    ]
    .concat();
    let gw = TestGateway::start(&minimal(echo_upstream().await, &py_plugin(), &routes)).await;

    assert_eq!(get(&gw.url("/d/ok"), &[("user-agent", "curl/8")]).await.status, 200);
    assert_eq!(get(&gw.url("/d/administrator"), &[]).await.status, 200, "prefixes match whole segments");
    for (method, path, agent, rule) in [
        ("GET", "/d/admin/users", "curl/8", "path"),
        ("GET", "/d/x", "sqlmap/1.7", "user-agent"),
        ("TRACE", "/d/x", "curl/8", "method"),
    ] {
        let refused = request(method, &gw.url(path), &[("user-agent", agent)], "").await;
        assert_eq!(refused.status, 403, "{method} {path} {agent}");
        assert_eq!(header(&refused, "content-type"), Some("application/problem+json"));
        assert!(refused.json()["detail"].as_str().unwrap().contains(&format!("`{rule}`")), "{rule}");
    }
    let hidden = get(&gw.url("/local/x"), &[]).await;
    assert_eq!(hidden.status, 404, "the test client is 127.0.0.1, in the denied block");
    assert_eq!(hidden.json()["title"], "Not Found");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_wit_bindgen_rust_gate_answers_through_the_gateway() {
    let routes = route("b", "/b/", &[("bare", Some(r#"{ allowed = ["1"] }"#))]);
    let gw = TestGateway::start(&minimal(echo_upstream().await, &bare_plugin(), &routes)).await;
    assert_eq!(get(&gw.url("/b/x"), &[("x-api-version", "1")]).await.status, 200);
    let refused = get(&gw.url("/b/x"), &[("x-api-version", "9")]).await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["title"], "Unsupported API version");
    gw.stop().await;
}

async fn build_on(toml: &str, engine: &Arc<PluginEngine>) -> Result<Snapshot, String> {
    let (_dir, file) = write_config(toml);
    let loaded = config::load(&file).map_err(|e| e.to_string())?;
    Snapshot::build(&loaded, engine).await.map_err(|e| e.to_string())
}

/// What `portcullis validate` reports (it builds the snapshot exactly so) for a step
/// configuration each plugin refuses: the field path inside the step, and the plugin's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_language_refuses_a_bad_step_configuration_naming_plugin_and_field() {
    let cases = [
        (
            js_plugin(),
            "version",
            r#"{ allowed = [] }"#,
            "route[0].chain[0].config/allowed: refused by plugin `version`",
        ),
        (
            py_plugin(),
            "deny",
            r#"{ client_ips = ["10.0.0.0/33"] }"#,
            "route[0].chain[0].config/client_ips/0: refused by plugin `deny`",
        ),
        (bare_plugin(), "bare", r#"{ allowed = [] }"#, "route[0].chain[0].config/allowed: refused by plugin `bare`"),
    ];
    for (plugin, id, step, expected) in cases {
        let toml = minimal("127.0.0.1:9".parse().unwrap(), &plugin, &route("r", "/r/", &[(id, Some(step))]));
        let error = build_on(&toml, &engine()).await.unwrap_err();
        assert!(error.contains(expected), "{id}: {error}");
    }
}

fn engine_with_cache(dir: &Path, compile_cache: bool) -> Arc<PluginEngine> {
    let runtime = RuntimeConfig { compile_cache, compile_cache_dir: Some(dir.to_owned()), ..Default::default() };
    PluginEngine::new(&runtime).expect("creating an engine with its own compile cache")
}

fn entries(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "cwasm")).collect())
        .unwrap_or_default();
    found.sort();
    found
}

/// A refusal by import or export is decided from the binary: nothing is compiled (the compile
/// cache stays empty), for the 12 MB JavaScript component declared as the wrong kind and the
/// 18 MB Python one under `strict_imports`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_and_export_refusals_come_before_compiling() {
    let cache = tempdir("refusals");
    let engine = engine_with_cache(&cache, true);
    let wrong_kind = js_plugin().replace("kind = \"filter\"", "kind = \"auth\"");
    let toml = minimal("127.0.0.1:9".parse().unwrap(), &wrong_kind, "");
    let error = build_on(&toml, &engine).await.unwrap_err();
    assert!(
        error.contains("plugin.version.path: the component does not export the `auth` kind's interface")
            && error.contains("`portcullis:plugin/filter@0.3.0`"),
        "{error}"
    );
    let strict = py_plugin() + "strict_imports = true\n";
    let error = build_on(&minimal("127.0.0.1:9".parse().unwrap(), &strict, ""), &engine).await.unwrap_err();
    assert!(error.contains("plugin.deny.path: refused imports: `wasi:filesystem/types@"), "{error}");
    assert!(entries(&cache).is_empty(), "nothing was compiled: {:?}", entries(&cache));
    assert!(engine.loading().is_empty());
    let _ = std::fs::remove_dir_all(&cache);
}

/// The first start compiles the JavaScript and Python components (and `/readyz` lists them
/// while it does); a restart on a new engine, as a new process would be, reads both from the
/// disk cache and serves the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reads_compiled_components_from_the_disk_cache() {
    let cache = tempdir("restart");
    let routes = [
        route("v", "/v/", &[("version", Some(r#"{ allowed = ["1"] }"#))]),
        route("d", "/d/", &[("deny", Some(r#"{ paths = ["/d/admin"] }"#))]),
    ]
    .concat();
    let admin = free_port();
    let toml = minimal(echo_upstream().await, &(js_plugin() + &py_plugin()), &routes)
        .replace("[admin]\naddress = \"127.0.0.1:0\"", &format!("[admin]\naddress = \"127.0.0.1:{admin}\""));
    assert!(toml.contains(&format!("127.0.0.1:{admin}")), "the admin address is set: {toml}");
    let (_dir, file) = write_config(&toml);

    let cold = engine_with_cache(&cache, true);
    let starting = tokio::spawn({
        let (file, cold) = (file.clone(), cold.clone());
        async move { portcullis::Gateway::start_with_engine(&file, cold).await }
    });
    let mut seen_loading = Vec::new();
    while !starting.is_finished() {
        let url = format!("http://127.0.0.1:{admin}/readyz");
        // `get` panics when nothing listens yet: ask only once the admin listener is bound.
        let bound = tokio::net::TcpStream::connect(("127.0.0.1", admin)).await.is_ok();
        if bound
            && !starting.is_finished()
            && let Ok(reply) = tokio::time::timeout(std::time::Duration::from_secs(2), get(&url, &[])).await
            && reply.status == 503
        {
            for l in reply.json()["loading"].as_array().into_iter().flatten() {
                seen_loading.push(l["plugin"].as_str().unwrap_or_default().to_owned());
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let gateway = starting.await.unwrap().unwrap();
    assert!(
        seen_loading.iter().any(|p| p == "version" || p == "deny"),
        "/readyz named a plugin while it compiled: {seen_loading:?}"
    );
    assert_eq!(get(&format!("http://127.0.0.1:{admin}/readyz"), &[]).await.status, 200);
    assert_eq!(entries(&cache).len(), 2, "one entry per component");
    gateway.shutdown().await;

    let warm = engine_with_cache(&cache, true);
    for name in ["api_version_js", "deny_list_py"] {
        let bytes = std::fs::read(plugin(name)).unwrap();
        let hash = portcullis::sources::sha256_hex(&bytes);
        let started = std::time::Instant::now();
        let (_, from) = warm.compile(&bytes, &hash).unwrap();
        assert_eq!(from, CompiledFrom::Disk, "{name}");
        eprintln!("{name}: {} bytes, read from the cache in {:?}", bytes.len(), started.elapsed());
    }
    let started = std::time::Instant::now();
    let gw = TestGateway::start_with(&toml.replace(&format!("127.0.0.1:{admin}"), "127.0.0.1:0"), warm).await;
    eprintln!("warm start, both components from the cache: {:?}", started.elapsed());
    assert_eq!(get(&gw.url("/v/x"), &[("x-api-version", "1")]).await.status, 200);
    assert_eq!(get(&gw.url("/v/x"), &[("x-api-version", "2")]).await.status, 400);
    assert_eq!(get(&gw.url("/d/admin"), &[]).await.status, 403);
    assert_eq!(get(&gw.url("/d/x"), &[]).await.status, 200);
    gw.stop().await;
    let _ = std::fs::remove_dir_all(&cache);
}

/// A cache entry with a flipped byte is detected, removed and compiled again; a directory
/// others may write to is not used at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_untrusted_cache_is_not_loaded() {
    let cache = tempdir("corrupt");
    let bytes = std::fs::read(plugin("rbac")).unwrap();
    let hash = portcullis::sources::sha256_hex(&bytes);
    assert_eq!(engine_with_cache(&cache, true).compile(&bytes, &hash).unwrap().1, CompiledFrom::Cranelift);
    let [entry] = entries(&cache).try_into().unwrap();
    let mut stored = std::fs::read(&entry).unwrap();
    let middle = stored.len() / 2;
    stored[middle] ^= 0x40;
    std::fs::write(&entry, &stored).unwrap();
    assert_eq!(engine_with_cache(&cache, true).compile(&bytes, &hash).unwrap().1, CompiledFrom::Cranelift);
    assert_eq!(engine_with_cache(&cache, true).compile(&bytes, &hash).unwrap().1, CompiledFrom::Disk, "rewritten");

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let open = engine_with_cache(&cache, true);
    assert_eq!(open.compile_cache_dir(), None, "a world-writable cache is not used");
    assert_eq!(open.compile(&bytes, &hash).unwrap().1, CompiledFrom::Cranelift);
    assert_eq!(engine_with_cache(&cache, false).compile_cache_dir(), None, "compile_cache = false");
    let _ = std::fs::remove_dir_all(&cache);
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-cache-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    listener.local_addr().expect("a bound address").port()
}

/// The JavaScript and Python policies' own unit tests (`node --test`, `unittest`), which run
/// without the component host.
#[test]
fn the_javascript_and_python_policies_pass_their_own_unit_tests() {
    let root = portcullis_e2e::root();
    for (dir, program, args) in [
        ("plugins/api-version-js", "node", &["--test", "test/"][..]),
        ("plugins/deny-list-py", "python3", &["-m", "unittest", "-q"][..]),
    ] {
        let output = std::process::Command::new(program)
            .current_dir(root.join(dir))
            .args(args)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            output.status.success(),
            "{dir}: {program} {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
