//! The configuration file as written (TOML), before validation.
//!
//! Every table refuses unknown fields so a misspelt key is an error, not a silently ignored
//! setting. Durations are in milliseconds (`_ms`), sizes in bytes (`_bytes`) or MiB (`_mib`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Client-facing listeners; at least one.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`, `/plugins`).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Settings of the WebAssembly engine, shared by every plugin.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Hot reload.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// Identity headers sent upstream.
    #[serde(default)]
    pub identity: IdentityConfig,
    /// Upstreams by name.
    #[serde(default, rename = "upstream")]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Plugins by id.
    #[serde(default, rename = "plugin")]
    pub plugins: BTreeMap<String, PluginConfig>,
    /// Routes, in any order: the most specific match wins.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
}

/// `[[listener]]`: one client-facing socket (HTTP/1.1 and h2c).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `ip:port` to bind; port 0 picks a free port.
    pub address: SocketAddr,
    /// Time allowed to receive a request head, in ms (hyper's `header_read_timeout`).
    #[serde(default = "defaults::header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// Largest request body accepted when a chain buffers it, in bytes (413 beyond).
    #[serde(default = "defaults::max_buffered_body_bytes")]
    pub max_buffered_body_bytes: u64,
    /// What to do with request header names containing `_` (they can collide with `-` names
    /// in CGI-style backends, e.g. `x_user_id` read as `x-user-id`).
    #[serde(default)]
    pub headers_with_underscores: UnderscoreHeaders,
    /// Peers (CIDRs, e.g. `10.0.0.0/8`, or single addresses) whose `x-forwarded-for` is
    /// believed. Default: none, so the client IP is always the TCP peer.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Largest request head (request line and header fields), in bytes; 431 beyond
    /// (HTTP/1.1: hyper's read buffer, at least 8192; HTTP/2: `SETTINGS_MAX_HEADER_LIST_SIZE`).
    #[serde(default = "defaults::max_request_header_bytes")]
    pub max_request_header_bytes: u64,
    /// Most request header fields; 431 beyond.
    #[serde(default = "defaults::max_request_headers")]
    pub max_request_headers: u64,
    /// Longest request target (path and query), in bytes; 414 beyond.
    #[serde(default = "defaults::max_uri_bytes")]
    pub max_uri_bytes: u64,
    /// Most connections open at once on this listener; connections past it are closed as soon
    /// as they are accepted.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u64,
}

/// `headers_with_underscores` (as nginx's `underscores_in_headers off` and Envoy's
/// `headers_with_underscores_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnderscoreHeaders {
    /// Remove such fields before routing (nginx's default).
    #[default]
    Drop,
    /// Answer 400.
    Reject,
    /// Keep them.
    Allow,
}

/// `[admin]`: the operator's listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `ip:port` to bind.
    #[serde(default = "defaults::admin_address")]
    pub address: SocketAddr,
    /// Set to false to run without an admin listener.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { address: defaults::admin_address(), enabled: true }
    }
}

/// `[runtime]`: the WebAssembly engine. Read at start; a reload cannot change it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Wasm stack per call, in KiB: deeper recursion traps with `stack overflow`. wasmtime sets
    /// it per engine, so it is shared by every plugin.
    #[serde(default = "defaults::max_wasm_stack_kib")]
    pub max_wasm_stack_kib: u64,
    /// Count fuel (executed wasm instructions, roughly) so plugins may set `fuel`. Costs every
    /// plugin some speed; off by default, and epoch deadlines bound time either way.
    #[serde(default)]
    pub fuel_metering: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { max_wasm_stack_kib: defaults::max_wasm_stack_kib(), fuel_metering: false }
    }
}

/// `[reload]`: how the gateway notices configuration and plugin changes. Reloads also happen
/// on SIGHUP and `POST /reload` on the admin listener, whatever this says.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Watch the configuration file, every plugin file and every `$file` reference.
    #[serde(default = "defaults::yes")]
    pub watch: bool,
    /// Quiet time after the last file event before reloading, in ms (coalesces bursts of
    /// writes, e.g. an editor's save or a file copied in several writes).
    #[serde(default = "defaults::debounce_ms")]
    pub debounce_ms: u64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig { watch: true, debounce_ms: defaults::debounce_ms() }
    }
}

/// `[identity]`: header names carrying the verified identity upstream. Client-supplied copies of
/// these headers are always removed before the chain runs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Header carrying the subject.
    #[serde(default = "defaults::subject_header")]
    pub subject_header: String,
    /// Header carrying the roles, comma-separated.
    #[serde(default = "defaults::roles_header")]
    pub roles_header: String,
    /// Header carrying the scopes, space-separated (as OAuth 2.0 `scope`).
    #[serde(default = "defaults::scopes_header")]
    pub scopes_header: String,
    /// Header carrying the issuer.
    #[serde(default = "defaults::issuer_header")]
    pub issuer_header: String,
    /// More client headers to remove from every request, e.g. `x-internal-token`.
    #[serde(default)]
    pub strip_headers: Vec<String>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            subject_header: defaults::subject_header(),
            roles_header: defaults::roles_header(),
            scopes_header: defaults::scopes_header(),
            issuer_header: defaults::issuer_header(),
            strip_headers: Vec::new(),
        }
    }
}

/// `[upstream.NAME]`: where matched requests go.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Endpoints as `host:port`, used round robin.
    pub endpoints: Vec<String>,
    /// Time allowed to open a TCP connection, in ms (502 when it fails, 504 when it times out).
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time allowed from sending the request to receiving the response head, in ms (504).
    #[serde(default = "defaults::response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// Idle keep-alive connections kept per endpoint.
    #[serde(default = "defaults::pool_max_idle")]
    pub pool_max_idle_per_endpoint: usize,
    /// How long an idle keep-alive connection is kept, in ms.
    #[serde(default = "defaults::pool_idle_timeout_ms")]
    pub pool_idle_timeout_ms: u64,
}

/// The five plugin kinds of the WIT contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    /// `portcullis:plugin/auth`
    Auth,
    /// `portcullis:plugin/rate-limit`
    RateLimit,
    /// `portcullis:plugin/validation`
    Validation,
    /// `portcullis:plugin/logging`
    Logging,
    /// `portcullis:plugin/filter`
    Filter,
}

impl std::fmt::Display for PluginKind {
    /// The kind as written in configuration and WIT: `auth`, `rate-limit`, …
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PluginKind::Auth => "auth",
            PluginKind::RateLimit => "rate-limit",
            PluginKind::Validation => "validation",
            PluginKind::Logging => "logging",
            PluginKind::Filter => "filter",
        })
    }
}

/// What a failing plugin call does to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// The request fails with a 500 problem response.
    FailClosed,
    /// The step is skipped and the chain goes on.
    FailOpen,
}

/// How instances are reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// Instances are configured once and reused for many requests (fast: a warm filter call
    /// costs ~2.5 µs including the host's conversions, measured by `tests/benches/chain_cost.rs`,
    /// against 20–35 µs to instantiate, before `configure`).
    #[default]
    Reuse,
    /// Every request gets a freshly instantiated and configured instance, dropped afterwards:
    /// nothing in memory survives from one request to the next.
    Request,
}

/// `breaker`: the crash-loop breaker of a plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Failures within `window_ms` that open the breaker.
    #[serde(default = "defaults::breaker_failures")]
    pub failures: u32,
    /// The window failures are counted in, in ms.
    #[serde(default = "defaults::breaker_window_ms")]
    pub window_ms: u64,
    /// How long the breaker first stays open before one probe call is let through, in ms.
    /// Each failed probe doubles it, up to `max_open_ms`.
    #[serde(default = "defaults::breaker_open_ms")]
    pub open_ms: u64,
    /// The longest the breaker stays open between probes, in ms.
    #[serde(default = "defaults::breaker_max_open_ms")]
    pub max_open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: defaults::breaker_failures(),
            window_ms: defaults::breaker_window_ms(),
            open_ms: defaults::breaker_open_ms(),
            max_open_ms: defaults::breaker_max_open_ms(),
        }
    }
}

/// A capability a plugin may be granted beyond `log` and `clock`, which every plugin has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// The shared key/value store.
    Kv,
    /// Outbound HTTP to the origins in `allowed_origins`.
    HttpClient,
    /// The hash-chained audit trail (`audit_file`, or stdout when absent).
    Audit,
}

/// `[plugin.ID]`: a component file and how to run it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Path of the `.wasm` component, relative to the configuration file.
    pub path: PathBuf,
    /// Which WIT interface the component exports.
    pub kind: PluginKind,
    /// Default: `fail-closed`, except `fail-open` for `logging`.
    #[serde(default)]
    pub failure_policy: Option<FailurePolicy>,
    /// Capabilities granted beyond `log` and `clock`.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// Origins (`scheme://host[:port]`) reachable with `http-client`.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// JSON Lines file the `audit` capability appends hash-chained records to, relative to the
    /// configuration file; absent: the gateway's stdout.
    #[serde(default)]
    pub audit_file: Option<PathBuf>,
    /// Linear memory per instance, in MiB.
    #[serde(default = "defaults::memory_mib")]
    pub memory_mib: u64,
    /// Time allowed for one call, in ms (enforced with epoch interruption).
    #[serde(default = "defaults::deadline_ms")]
    pub deadline_ms: u64,
    /// Most instances alive at once per configured step; more requests wait for one.
    #[serde(default = "defaults::max_instances")]
    pub max_instances: usize,
    /// Calls after which an instance is replaced by a fresh one (bounds memory growth).
    #[serde(default = "defaults::max_uses")]
    pub max_uses_per_instance: u64,
    /// Reuse instances (default) or give every request a fresh one.
    #[serde(default)]
    pub isolation: Isolation,
    /// Fuel per call (needs `[runtime] fuel_metering = true`); running out fails the call with
    /// kind `out-of-fuel`. Absent: unlimited (the deadline still applies).
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Log events kept per call; more are dropped and counted.
    #[serde(default = "defaults::max_log_events")]
    pub max_log_events_per_call: u32,
    /// The crash-loop breaker.
    #[serde(default)]
    pub breaker: BreakerConfig,
}

/// `[[route]]`: which requests it takes and what runs on them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique route id, used in logs, metrics and plugin requests.
    pub id: String,
    /// Exact host (without port) this route serves; absent serves any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix, matched on whole segments: `/api` matches `/api` and `/api/x`, not `/apix`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Exact path or matchit pattern (`/users/{id}`, `/files/{*rest}`).
    #[serde(default)]
    pub path: Option<String>,
    /// Allowed methods; empty allows all.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Name of the upstream in `[upstream.NAME]`.
    pub upstream: String,
    /// The filter chain, in order.
    #[serde(default)]
    pub chain: Vec<StepConfig>,
}

/// One step of a route's chain.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    /// Plugin id in `[plugin.ID]`.
    pub plugin: String,
    /// The plugin's configuration, passed to its `configure` as JSON. A table `{ "$file" =
    /// "PATH" }` anywhere inside is replaced by the text of that file (relative to the
    /// configuration file), so keys and JWKS documents can live in their own files.
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// Overrides the plugin's failure policy for this step.
    #[serde(default)]
    pub failure_policy: Option<FailurePolicy>,
}

/// Defaults, named so the docs and the code agree.
pub mod defaults {
    use std::net::{Ipv4Addr, SocketAddr};

    /// 10 s: generous for real clients, short enough against slowloris.
    pub fn header_read_timeout_ms() -> u64 {
        10_000
    }
    /// 64 KiB, as Envoy's edge `max_request_headers_kb`.
    pub fn max_request_header_bytes() -> u64 {
        64 * 1024
    }
    /// 100, as Envoy's and hyper's defaults.
    pub fn max_request_headers() -> u64 {
        100
    }
    /// 8 KiB, as nginx's `large_client_header_buffers` line size.
    pub fn max_uri_bytes() -> u64 {
        8 * 1024
    }
    /// 10,000 per listener.
    pub fn max_connections() -> u64 {
        10_000
    }
    /// 1 MiB.
    pub fn max_buffered_body_bytes() -> u64 {
        1024 * 1024
    }
    /// 127.0.0.1:9901, Envoy's admin port, on loopback only.
    pub fn admin_address() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 9901))
    }
    pub(crate) fn yes() -> bool {
        true
    }
    /// `x-user-id`.
    pub fn subject_header() -> String {
        "x-user-id".into()
    }
    /// `x-user-roles`.
    pub fn roles_header() -> String {
        "x-user-roles".into()
    }
    /// `x-user-scopes`.
    pub fn scopes_header() -> String {
        "x-user-scopes".into()
    }
    /// `x-user-issuer`.
    pub fn issuer_header() -> String {
        "x-user-issuer".into()
    }
    /// 1 s.
    pub fn connect_timeout_ms() -> u64 {
        1_000
    }
    /// 15 s, Envoy's route timeout default.
    pub fn response_timeout_ms() -> u64 {
        15_000
    }
    /// 64.
    pub fn pool_max_idle() -> usize {
        64
    }
    /// 90 s.
    pub fn pool_idle_timeout_ms() -> u64 {
        90_000
    }
    /// 64 MiB.
    pub fn memory_mib() -> u64 {
        64
    }
    /// 100 ms.
    pub fn deadline_ms() -> u64 {
        100
    }
    /// 16: calls on a warm instance rarely wait, so few instances are alive at once.
    pub fn max_instances() -> usize {
        16
    }
    /// 10,000 calls.
    pub fn max_uses() -> u64 {
        10_000
    }
    /// 100 ms: reloads land well within a second of the write.
    pub fn debounce_ms() -> u64 {
        100
    }
    /// 100 events.
    pub fn max_log_events() -> u32 {
        100
    }
    /// 512 KiB, wasmtime's default.
    pub fn max_wasm_stack_kib() -> u64 {
        512
    }
    /// 5 failures.
    pub fn breaker_failures() -> u32 {
        5
    }
    /// 10 s.
    pub fn breaker_window_ms() -> u64 {
        10_000
    }
    /// 1 s.
    pub fn breaker_open_ms() -> u64 {
        1_000
    }
    /// 30 s.
    pub fn breaker_max_open_ms() -> u64 {
        30_000
    }
}
