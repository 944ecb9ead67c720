//! Test support for the end-to-end suites in `tests/tests/`: start the real gateway on
//! ephemeral loopback ports with plugins built from `plugins/` and `tests/guests/` (see
//! `build.rs`), real upstreams, a real HTTP client, and tokens minted with `jsonwebtoken`.

pub mod redis_server;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::Gateway;
use portcullis::plugin::PluginEngine;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// The demo issuer the quickstart's jwt-auth step trusts.
pub const ISSUER: &str = "https://demo.portcullis.invalid";
/// The demo audience.
pub const AUDIENCE: &str = "portcullis-demo";

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace root").to_path_buf()
}

/// Path of the component built from crate `name` (underscores, e.g. `jwt_auth`).
pub fn plugin(name: &str) -> PathBuf {
    Path::new(env!("PORTCULLIS_PLUGIN_DIR")).join(format!("{name}.wasm"))
}

/// One engine for the whole test binary: compiled components are cached by content hash, so
/// each plugin compiles once however many gateways a test binary starts.
pub fn engine() -> Arc<PluginEngine> {
    static ENGINE: OnceLock<Arc<PluginEngine>> = OnceLock::new();
    ENGINE.get_or_init(|| PluginEngine::new(&Default::default()).expect("creating the plugin engine")).clone()
}

/// A gateway serving a configuration written to a temporary directory.
pub struct TestGateway {
    /// The running gateway.
    pub gateway: Gateway,
    /// Its first listener.
    pub addr: SocketAddr,
    /// Its admin listener.
    pub admin: SocketAddr,
    dir: PathBuf,
}

impl TestGateway {
    /// Writes `config` (TOML) to a fresh directory and starts a gateway on it.
    ///
    /// # Panics
    /// When the gateway refuses to start; use [`write_config`] and [`Gateway::start`] to test
    /// refusals.
    pub async fn start(config: &str) -> TestGateway {
        Self::start_with(config, engine()).await
    }

    /// Writes `config` and starts a gateway with its own engine, built from the file's
    /// `[runtime]` and `[kv]` as the binary does: for engine-wide settings such as a shared
    /// Redis (the shared [`engine`] has the in-process store).
    ///
    /// # Panics
    /// As [`TestGateway::start`].
    pub async fn start_standalone(config: &str) -> TestGateway {
        let (_, file) = write_config(config);
        let gateway = match Gateway::start(&file).await {
            Ok(g) => g,
            Err(e) => panic!("gateway refused the test configuration:\n{e}"),
        };
        Self::wrap(gateway, &file)
    }

    /// [`TestGateway::start`] on `engine` (e.g. one with fuel metering).
    ///
    /// # Panics
    /// As [`TestGateway::start`].
    pub async fn start_with(config: &str, engine: Arc<PluginEngine>) -> TestGateway {
        let (_, file) = write_config(config);
        Self::start_file_with(&file, engine).await
    }

    /// A gateway serving `file` (named `gateway.toml`), on the shared engine; its directory is
    /// removed by [`TestGateway::stop`].
    ///
    /// # Panics
    /// As [`TestGateway::start`].
    pub async fn start_file(file: &Path) -> TestGateway {
        Self::start_file_with(file, engine()).await
    }

    async fn start_file_with(file: &Path, engine: Arc<PluginEngine>) -> TestGateway {
        let gateway = match Gateway::start_with_engine(file, engine).await {
            Ok(g) => g,
            Err(e) => panic!("gateway refused the test configuration:\n{e}"),
        };
        Self::wrap(gateway, file)
    }

    fn wrap(gateway: Gateway, file: &Path) -> TestGateway {
        let addr = gateway.listener_addrs()[0];
        let admin = gateway.admin_addr().expect("admin listener enabled");
        let dir = file.parent().expect("a file in a directory").to_path_buf();
        TestGateway { gateway, addr, admin, dir }
    }

    /// The configuration file the gateway serves; rewrite it to test reloads.
    pub fn config_file(&self) -> PathBuf {
        self.dir.join("gateway.toml")
    }

    /// `http://ADDR{path}` on the first listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The records of `audit.jsonl` beside the configuration, waiting up to 2 s for at least
    /// `count` (logging steps run after the response).
    pub async fn audit_records(&self, count: usize) -> Vec<Value> {
        let path = self.dir.join("audit.jsonl");
        let mut records = Vec::new();
        for _ in 0..100 {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            records = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            if records.len() >= count {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        records
    }

    /// The `x-tag` values the upstream saw for `GET /tagged/x` (a route running the tag
    /// filter guest), or `status N` when the gateway did not answer 200.
    pub async fn tag(&self) -> String {
        let reply = get(&self.url("/tagged/x"), &[]).await;
        if reply.status != 200 {
            return format!("status {}", reply.status);
        }
        reply.upstream_saw("x-tag").concat()
    }

    /// The record of the first reload that is refused from now on, waiting up to 5 s for it
    /// (a file-change reload started by a write just made).
    ///
    /// # Panics
    /// When none is refused in time.
    pub async fn refused_reload(&self) -> portcullis::reload::ReloadRecord {
        let started = std::time::Instant::now();
        loop {
            if let Some(last) = self.gateway.reloads().pop().filter(|r| r.result != "ok") {
                return last;
            }
            assert!(started.elapsed() < std::time::Duration::from_secs(5), "no reload was refused");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The record of the last reload once it is refused with an error containing `text`,
    /// waiting up to 5 s for it: for a test that makes several refused reloads in a row.
    ///
    /// # Panics
    /// When none is in time, with the last reload's error.
    pub async fn refused_reload_naming(&self, text: &str) -> portcullis::reload::ReloadRecord {
        let started = std::time::Instant::now();
        loop {
            let last = self.gateway.reloads().pop();
            if let Some(last) =
                last.as_ref().filter(|r| r.result != "ok" && r.error.as_deref().unwrap_or_default().contains(text))
            {
                return last.clone();
            }
            let error = last.and_then(|r| r.error);
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "no reload was refused naming {text:?}; the last: {error:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The directory holding the configuration (and the audit file).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Shuts the gateway down and removes its directory.
    pub async fn stop(self) {
        self.gateway.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The quickstart's configuration served as written, only its addresses moved to ephemeral
/// loopback ports and `upstream`, and its audit file to `target/quickstart-test-audit-PID.jsonl`;
/// written beside the original so its relative paths resolve the same. [`Quickstart::stop`]
/// shuts it down and removes both files.
///
/// # Panics
/// When the gateway refuses it.
pub async fn start_quickstart(upstream: SocketAddr) -> Quickstart {
    let dir = root().join("examples/quickstart");
    let text = std::fs::read_to_string(dir.join("portcullis.toml")).expect("reading the quickstart configuration");
    let audit = format!("quickstart-test-audit-{}.jsonl", std::process::id());
    let text = text
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0")
        .replace("127.0.0.1:8081", &upstream.to_string())
        .replace("quickstart-audit.jsonl", &audit);
    static N: AtomicUsize = AtomicUsize::new(0);
    let file = dir.join(format!(".quickstart-test-{}-{}.toml", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&file, text).expect("writing the quickstart test configuration");
    match Gateway::start(&file).await {
        Ok(gateway) => Quickstart { gateway, file, audit: root().join("target").join(audit) },
        Err(e) => {
            let _ = std::fs::remove_file(&file);
            panic!("{e}")
        }
    }
}

/// A gateway serving the quickstart's configuration ([`start_quickstart`]).
pub struct Quickstart {
    /// The gateway.
    pub gateway: Gateway,
    file: PathBuf,
    audit: PathBuf,
}

impl Quickstart {
    /// Shuts the gateway down and removes its configuration copy and audit file.
    pub async fn stop(self) {
        self.gateway.shutdown().await;
        let _ = std::fs::remove_file(&self.file);
        let _ = std::fs::remove_file(&self.audit);
    }
}

/// Writes `config` to `gateway.toml` in a new directory under the system temp dir; returns the
/// directory and the file.
pub fn write_config(config: &str) -> (PathBuf, PathBuf) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "portcullis-e2e-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("creating a temp dir");
    let file = dir.join("gateway.toml");
    std::fs::write(&file, config).expect("writing the test config");
    (dir, file)
}

/// A gateway configuration in front of `upstream`, with the first-party plugins and test
/// guests declared, followed by `routes` (TOML): `jwt`, `audit` (to `audit.jsonl` beside the
/// configuration), `ratelimit`, `rbac`, `apikey`, `validate`, `mtls`, and the chaos test guest as
/// `chaos` (fail-closed, 1 s deadline), `chaos-open` (fail-open), `chaos-breaker` (breaker
/// opens after 3 failures, for 300 ms), `chaos-fresh` (a fresh instance per request), the tag
/// filter test guest (build `a`) as `tagger`, and the contract 0.1.0 test guest as `legacy`.
pub fn config(upstream: SocketAddr, routes: &str) -> String {
    config_with(upstream, "", routes)
}

/// [`config`] with more TOML (e.g. `[plugin.ID]` tables that name a test server's origin)
/// before the routes.
pub fn config_with(upstream: SocketAddr, extra: &str, routes: &str) -> String {
    let jwks = root().join("examples/quickstart/keys/jwks.json");
    format!(
        r#"
[[listener]]
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"

[upstream.app]
endpoints = ["{upstream}"]
connect_timeout_ms = 500
response_timeout_ms = 1000

[plugin.jwt]
path = "{jwt}"
kind = "auth"
capabilities = ["kv", "http-client"]

[plugin.audit]
path = "{audit}"
kind = "logging"
capabilities = ["audit"]
audit_file = "audit.jsonl"

[plugin.ratelimit]
path = "{ratelimit}"
kind = "rate-limit"
capabilities = ["kv"]

[plugin.rbac]
path = "{rbac}"
kind = "filter"

[plugin.apikey]
path = "{apikey}"
kind = "auth"

[plugin.validate]
path = "{validate}"
kind = "validation"

[plugin.mtls]
path = "{mtls}"
kind = "auth"

[plugin.chaos]
path = "{chaos}"
kind = "filter"
capabilities = ["kv"]
deadline_ms = 1000
breaker = {{ failures = 1000 }}

[plugin.chaos-open]
path = "{chaos}"
kind = "filter"
capabilities = ["kv"]
failure_policy = "fail-open"
deadline_ms = 1000
breaker = {{ failures = 1000 }}

[plugin.chaos-breaker]
path = "{chaos}"
kind = "filter"
capabilities = ["kv"]
breaker = {{ failures = 3, window_ms = 10000, open_ms = 300 }}

[plugin.chaos-fresh]
path = "{chaos}"
kind = "filter"
capabilities = ["kv"]
isolation = "request"
failure_policy = "fail-open"

[plugin.tagger]
path = "{tag}"
kind = "filter"

[plugin.legacy]
path = "{legacy}"
kind = "filter"

{extra}

{routes}
"#,
        jwt = plugin("jwt_auth").display(),
        audit = plugin("audit_log").display(),
        ratelimit = plugin("rate_limit").display(),
        rbac = plugin("rbac").display(),
        apikey = plugin("api_key_auth").display(),
        validate = plugin("request_validation").display(),
        mtls = plugin("mtls_auth").display(),
        chaos = plugin("chaos_filter").display(),
        tag = plugin("tag_filter_a").display(),
        legacy = plugin("legacy_filter").display(),
        routes = routes.replace("{JWKS}", &jwks.display().to_string()),
    )
}

/// `config` with `settings` (TOML lines) added to its first `[[listener]]`.
pub fn listener_with(config: String, settings: &str) -> String {
    config.replacen("address = \"127.0.0.1:0\"\n", &format!("address = \"127.0.0.1:0\"\n{settings}\n"), 1)
}

/// A `[plugin.ID]` table for the component built from plugin crate `crate_name` (e.g.
/// `jwt_auth`), an auth plugin granted `http-client` and `kv` and allowed to reach
/// `http://{origin}` only: for steps that fetch from a test server.
pub fn outbound_auth_plugin(id: &str, crate_name: &str, origin: SocketAddr) -> String {
    format!(
        "\n[plugin.{id}]\npath = \"{}\"\nkind = \"auth\"\ncapabilities = [\"http-client\", \"kv\"]\nallowed_origins = [\"http://{origin}\"]\n",
        plugin(crate_name).display()
    )
}

/// The quickstart's jwt-auth step configuration (inline TOML table), reading the JWKS file by
/// absolute path.
pub const JWT_CONFIG: &str =
    r#"{ issuer = "https://demo.portcullis.invalid", audiences = ["portcullis-demo"], jwks = { "$file" = "{JWKS}" } }"#;

/// A `[[route]]` to upstream `app` for `path_prefix`, with chain `steps`: each a plugin id and
/// an optional inline TOML table for its `config`.
pub fn route(id: &str, path_prefix: &str, steps: &[(&str, Option<&str>)]) -> String {
    let mut toml = format!("\n[[route]]\nid = \"{id}\"\npath_prefix = \"{path_prefix}\"\nupstream = \"app\"\n");
    for (plugin, config) in steps {
        toml.push_str(&format!("\n[[route.chain]]\nplugin = \"{plugin}\"\n"));
        if let Some(config) = config {
            toml.push_str(&format!("config = {config}\n"));
        }
    }
    toml
}

/// Starts the echo upstream on an ephemeral loopback port.
pub async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the echo upstream");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(portcullis_demo::serve_echo(listener));
    addr
}

/// Starts an upstream that accepts connections and reads, but never answers.
pub async fn silent_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the silent upstream");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// A loopback address where nothing listens.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
    listener.local_addr().expect("local addr")
}

/// The value of the sample `name{labels}` in a Prometheus text exposition, if present.
/// `labels` is written as it appears, e.g. `plugin="chaos",kind="trap"`.
pub fn metric(exposition: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    exposition.lines().find_map(|line| line.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
}

/// The admin listener's `/metrics` text.
pub async fn scrape(gateway: &TestGateway) -> String {
    let reply = get(&format!("http://{}/metrics", gateway.admin), &[]).await;
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// This process's resident set size, in bytes (Linux `/proc/self/status` `VmRSS`).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Everything the gateway logged in this test binary since [`capture_logs`] was first called,
/// as JSON lines (`tracing-subscriber`'s JSON format).
pub fn captured_logs() -> Vec<Value> {
    let buffer = LOGS.lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&buffer).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

/// Installs a global `tracing` subscriber writing JSON lines into memory, once per test binary.
pub fn capture_logs() {
    capture_logs_filtered("info");
}

/// [`capture_logs`] with an `EnvFilter` directive (`trace,cranelift_codegen=info`, say), for
/// tests that read every level.
pub fn capture_logs_filtered(directives: &str) {
    struct Capture;
    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            LOGS.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let filter = tracing_subscriber::EnvFilter::new(directives);
    let _ = tracing_subscriber::fmt().json().with_writer(|| Capture).with_env_filter(filter).try_init();
}

/// Everything captured since [`capture_logs`] or [`capture_logs_filtered`], as text.
pub fn captured_text() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Header fields.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    ///
    /// # Panics
    /// When it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// For an echo upstream reply: the values of header `name` the upstream received.
    pub fn upstream_saw(&self, name: &str) -> Vec<String> {
        self.json()["headers"][name]
            .as_array()
            .map(|v| v.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }
}

/// Sends `request` with a real HTTP/1.1 client and reads the whole response.
///
/// # Panics
/// On connection errors.
pub async fn send(request: Request<Full<Bytes>>) -> Reply {
    static CLIENT: OnceLock<Client<HttpConnector, Full<Bytes>>> = OnceLock::new();
    let client = CLIENT.get_or_init(|| Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build_http());
    let response = client.request(request).await.expect("sending the request");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("reading the body").to_bytes();
    Reply { status: parts.status, headers: parts.headers, body }
}

/// Replaces `path` with `contents` the way editors and deploy tools do: write a temporary file
/// beside it, then rename it over the original (an atomic swap for readers).
pub fn replace_file(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp-swap");
    std::fs::write(&tmp, contents).expect("writing the replacement");
    std::fs::rename(&tmp, path).expect("renaming the replacement into place");
}

/// `GET url` with `headers`.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(request.body(Full::default()).expect("building the request")).await
}

/// A plain HTTP/1.1 server on an ephemeral loopback port answering every request with
/// `handler(method, path, headers, body)` (status, content type, body): a real server for
/// the plugins' outbound calls (JWKS, token introspection). Aborting the returned task stops
/// it whole, open keep-alive connections included, so later requests are refused.
pub async fn serve<F>(handler: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(&http::Method, &str, &HeaderMap, &[u8]) -> (u16, &'static str, String) + Send + Sync + 'static,
{
    use hyper::service::service_fn;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding a test server");
    let addr = listener.local_addr().expect("local addr");
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        // Connections live in this set, owned by the accept task: aborting it drops them all.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            while connections.try_join_next().is_some() {}
            let handler = handler.clone();
            connections.spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let (status, content_type, text) =
                            handler(&parts.method, parts.uri.path(), &parts.headers, &body);
                        let mut response = hyper::Response::new(Full::new(Bytes::from(text)));
                        *response.status_mut() =
                            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                        response
                            .headers_mut()
                            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    (addr, task)
}

/// Sends `method url` with `headers` and `body`.
pub async fn request(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(request.body(Full::new(Bytes::from(body.to_owned()))).expect("building the request")).await
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Claims the demo issuer would put in a token for `sub`, valid for an hour.
pub fn claims(sub: &str) -> Value {
    json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now(), "exp": now() + 3600, "roles": ["reader"] })
}

/// Signs `claims` with RS256 and the quickstart's demo key (`kid` `demo-rs256`).
pub fn mint(claims: &Value) -> String {
    mint_with(claims, &root().join("examples/quickstart/keys/demo-only-private-key.pem"))
}

/// Signs `claims` with RS256 and the RSA key in `pem_file`, `kid` `demo-rs256`.
pub fn mint_with(claims: &Value, pem_file: &Path) -> String {
    let pem = std::fs::read(pem_file).expect("reading the signing key");
    let key = EncodingKey::from_rsa_pem(&pem).expect("an RSA private key");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("demo-rs256".into());
    jsonwebtoken::encode(&header, claims, &key).expect("signing")
}
