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
    /// Where the `kv` capability keeps plugin state: in process (default) or on a Redis
    /// shared by a fleet.
    #[serde(default)]
    pub kv: KvConfig,
    /// Hot reload.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// Identity headers sent upstream.
    #[serde(default)]
    pub identity: IdentityConfig,
    /// Upstreams by name.
    #[serde(default, rename = "upstream")]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Secrets by name (`[secret.NAME]`), used by plugins granted them ([`crate::secrets`]).
    #[serde(default, rename = "secret")]
    pub secrets: BTreeMap<String, SecretConfig>,
    /// `[plugin_signing]`: which keys plugin files must be signed with.
    #[serde(default)]
    pub plugin_signing: PluginSigningConfig,
    /// Plugins by id.
    #[serde(default, rename = "plugin")]
    pub plugins: BTreeMap<String, PluginConfig>,
    /// Routes, in any order: the most specific match wins.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
}

/// `[[listener]]`: one client-facing socket: HTTP/1.1 and h2c in clear text, or TLS with
/// HTTP/1.1 and HTTP/2 chosen by ALPN when `[listener.tls]` is present.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `ip:port` to bind; port 0 picks a free port.
    pub address: SocketAddr,
    /// Time allowed to receive a request head, in ms: how long a new connection may stay
    /// open without starting a request (protocol detection, the HTTP/2 preface and SETTINGS
    /// included), and how long an HTTP/1.1 connection may wait for, and read, its next head
    /// after a response ended. Enforced by the listener's connection task, not hyper's
    /// per-request header timer (`host/src/server.rs`).
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
    pub trusted_proxies: Vec<super::Cidr>,
    /// Whose W3C trace context (`traceparent`, `tracestate`) is continued: `always` (default),
    /// `trusted-proxies` (only from peers in `trusted_proxies`), or `never`. A context not
    /// accepted is removed and the request starts a new trace.
    #[serde(default)]
    pub accept_trace_context: AcceptTraceContext,
    /// Which forwarding fields the upstream gets: `x-forwarded` (default: `X-Forwarded-For`
    /// and `X-Forwarded-Proto`), `forwarded` (RFC 7239 `Forwarded`) or `both`. Whatever the
    /// choice, a peer not in `trusted_proxies` has its own copies of every forwarding and
    /// client-IP field (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`, `X-Client-IP`,
    /// `True-Client-IP`) removed first; a trusted peer's are kept and extended.
    #[serde(default)]
    pub forwarded_headers: ForwardedHeaders,
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
    /// Most connections open at once from one client IP (the TCP peer), as HAProxy's and
    /// Envoy's per-source limits; connections past it are closed as soon as they are
    /// accepted. Peers in `trusted_proxies` are exempt (a load balancer carries many
    /// clients). Absent: no per-IP limit.
    #[serde(default)]
    pub max_connections_per_ip: Option<u64>,
    /// Longest wait for the client's next chunk of a request body, in ms, timed while the
    /// gateway is waiting to read (as nginx's `client_body_timeout`: not while the upstream or a
    /// plugin is slow to take the body); 408 when exceeded.
    #[serde(default = "defaults::body_idle_timeout_ms")]
    pub body_idle_timeout_ms: u64,
    /// Longest time to receive a whole request body, counted from the request head, in ms;
    /// 408 when exceeded.
    #[serde(default = "defaults::body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// How long a connection may stay open with no request in flight, in ms; it is then
    /// closed (HTTP/1.1) or sent GOAWAY (HTTP/2). For HTTP/1.1 the wait for the next request
    /// head is also bounded by `header_read_timeout_ms`.
    #[serde(default = "defaults::keep_alive_timeout_ms")]
    pub keep_alive_timeout_ms: u64,
    /// On shutdown (SIGTERM, SIGINT), how long in-flight requests may take to finish, in ms;
    /// connections still open then are closed. Also how long a connection asked to close
    /// (idle past `keep_alive_timeout_ms`: HTTP/2 GOAWAY) may linger before it is closed hard.
    #[serde(default = "defaults::drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// TLS termination; absent: clear text.
    #[serde(default)]
    pub tls: Option<ListenerTlsConfig>,
}

/// `[listener.tls]`: TLS 1.2 and 1.3 with rustls. Certificate, key and CA files are read when
/// the configuration is loaded and again on every reload (they are watched like plugin files),
/// so a renewed certificate is served to new connections without dropping open ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// Certificates, chosen by the client's SNI among the DNS names of each certificate
    /// (subject alternative names, `*.` wildcards included). The first one is also served to
    /// clients that send no SNI (IP address clients); a client whose SNI matches none is
    /// refused during the handshake (rustls sends an `access_denied` alert).
    pub certificates: Vec<CertificateConfig>,
    /// PEM file of the CA certificates that client certificates must chain to. Present:
    /// mutual TLS, and plugins see the verified client certificate (the request's `client-cert()`).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Whether a client certificate is required (default) or only verified when sent.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// ALPN protocols offered, in order of preference: `h2` and `http/1.1`.
    #[serde(default = "defaults::alpn")]
    pub alpn: Vec<String>,
    /// Lowest TLS version: `1.2` (default) or `1.3`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Time allowed for the TLS handshake, in ms; the connection is closed after it.
    #[serde(default = "defaults::tls_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
}

/// One certificate chain and its private key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM file: the end-entity certificate first, then intermediates.
    pub cert_file: PathBuf,
    /// PEM file: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// `client_auth` of `[listener.tls]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuth {
    /// A handshake without a valid client certificate fails.
    #[default]
    Required,
    /// Clients may connect without a certificate; one that is sent must be valid.
    Optional,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 (RFC 5246) and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 (RFC 8446) only.
    #[serde(rename = "1.3")]
    Tls13,
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

/// `accept_trace_context`: whose W3C Trace Context the gateway continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AcceptTraceContext {
    /// Every client's (Envoy's and Kong's default): traces started by callers continue
    /// through the gateway.
    #[default]
    Always,
    /// Only from peers listed in `trusted_proxies`; others start a new trace.
    TrustedProxies,
    /// Never: every request starts a new trace (a public edge that does not want callers
    /// to pick trace ids or force sampling).
    Never,
}

/// `forwarded_headers`: how the gateway tells the upstream who the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeaders {
    /// `X-Forwarded-For` (the chain plus the peer) and `X-Forwarded-Proto`: what most
    /// upstreams read (nginx, Envoy, HAProxy emit them).
    #[default]
    XForwarded,
    /// RFC 7239 `Forwarded: for=…;proto=…;host=…` only.
    Forwarded,
    /// Both families.
    Both,
}

/// Which store backs the `kv` capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KvBackend {
    /// In the gateway process: per instance, lost at exit.
    #[default]
    Memory,
    /// A Redis server (or Valkey) shared by every gateway configured with it.
    Redis,
}

/// `[kv]`: the `kv` capability's store. Read at start; a reload cannot change it.
///
/// With `backend = "redis"`, every gateway with the same `url` and `key_prefix` shares each
/// plugin's keys (`docs/FLEET.md`). Credentials never go in `url`: the password comes from
/// `password_file` or `password_env` and is never logged.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvConfig {
    /// `memory` (default) or `redis`.
    #[serde(default)]
    pub backend: KvBackend,
    /// `redis://host:port/db`, or `rediss://…` for TLS (verified against the system roots).
    /// Default `redis://127.0.0.1:6379/0`.
    #[serde(default)]
    pub url: Option<String>,
    /// ACL user name (Redis 6+), when the server has users.
    #[serde(default)]
    pub username: Option<String>,
    /// File whose first line is the password (resolved against the configuration file's
    /// directory; read at start).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Prepended to every key, so several fleets can share one Redis. Default `portcullis:`.
    #[serde(default = "defaults::kv_key_prefix")]
    pub key_prefix: String,
    /// Time allowed to open a connection, in ms. Default 250.
    #[serde(default = "defaults::kv_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time allowed for one command's answer, in ms. Default 100.
    #[serde(default = "defaults::kv_command_timeout_ms")]
    pub command_timeout_ms: u64,
    /// How often a `PING` checks the server between calls, in ms. Default 1000.
    #[serde(default = "defaults::kv_probe_interval_ms")]
    pub probe_interval_ms: u64,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            backend: KvBackend::Memory,
            url: None,
            username: None,
            password_file: None,
            password_env: None,
            key_prefix: defaults::kv_key_prefix(),
            connect_timeout_ms: defaults::kv_connect_timeout_ms(),
            command_timeout_ms: defaults::kv_command_timeout_ms(),
            probe_interval_ms: defaults::kv_probe_interval_ms(),
        }
    }
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
    /// Host names a request's `Host` may name, besides IP literals and `localhost` (any port).
    /// Any other `Host` gets 421: a page on a name that an attacker points at this address
    /// (DNS rebinding) cannot reach the admin endpoints.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// File holding a bearer token (one trailing newline ignored) that every endpoint but
    /// `/healthz` and `/readyz` requires (RFC 6750 `Authorization: Bearer`); read on each
    /// request, so a rotated token needs no restart. Relative to the configuration file.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding that token instead, read at start.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Most `POST /reload` requests served per minute (a bucket of this size refilled evenly
    /// over a minute); 429 with `Retry-After` beyond.
    #[serde(default = "defaults::max_reloads_per_minute")]
    pub max_reloads_per_minute: u32,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: defaults::admin_address(),
            enabled: true,
            hostnames: Vec::new(),
            token_file: None,
            token_env: None,
            max_reloads_per_minute: defaults::max_reloads_per_minute(),
        }
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
    /// Plugin instances alive at once in the whole process, over every plugin (each plugin's
    /// `max_instances` bounds its own share): the pooling allocator's capacity.
    /// Each slot reserves address space up front (a linear memory of up to 4 GiB with its
    /// guard, a fiber stack, tables), committed only when used; lower it where address space
    /// is limited (`ulimit -v`, valgrind). A call that finds no free slot fails `unavailable`
    /// (503).
    #[serde(default = "defaults::instance_slots")]
    pub instance_slots: u32,
    /// Count fuel (executed wasm instructions, roughly) so plugins may set `fuel`. Costs every
    /// plugin some speed; off by default, and epoch deadlines bound time either way.
    #[serde(default)]
    pub fuel_metering: bool,
    /// Refuse components that import `wasi:filesystem`, `wasi:sockets` or `wasi:http`, instead
    /// of linking them to contexts that grant nothing (the default; see `plugin::imports`).
    /// A plugin's own `strict_imports` overrides this. Unlike the other `[runtime]` settings it
    /// applies at every load, reloads included.
    #[serde(default)]
    pub strict_imports: bool,
    /// Keep compiled components on disk, keyed by content and engine configuration, so a
    /// restart or `validate` does not compile an unchanged component again.
    #[serde(default = "defaults::yes")]
    pub compile_cache: bool,
    /// Where compiled components are kept, relative to the configuration file. Absent:
    /// `$XDG_CACHE_HOME/portcullis/components`, else `$HOME/.cache/portcullis/components`.
    /// Created with mode 0700; a directory others may write to is not used.
    #[serde(default)]
    pub compile_cache_dir: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_wasm_stack_kib: defaults::max_wasm_stack_kib(),
            instance_slots: defaults::instance_slots(),
            fuel_metering: false,
            strict_imports: false,
            compile_cache: true,
            compile_cache_dir: None,
        }
    }
}

impl RuntimeConfig {
    /// The compile cache directory: `compile_cache_dir` (already resolved against the
    /// configuration file by [`crate::config::load`]), else the user's cache directory; none
    /// when the cache is off or no cache directory is known.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        if !self.compile_cache {
            return None;
        }
        if let Some(dir) = &self.compile_cache_dir {
            return Some(dir.clone());
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("portcullis").join("components"))
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
    /// The HTTP version spoken to the endpoints: `http1` (default) or `http2` (prior knowledge
    /// in clear text, ALPN `h2` over TLS).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// TLS to the endpoints; absent: clear text.
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
    /// How an endpoint is chosen among the available ones.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// Active health checks; absent: none (passive detection still applies).
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Passive outlier detection.
    #[serde(default)]
    pub outlier_detection: OutlierConfig,
    /// Time allowed to open a TCP connection, in ms (502 when it fails, 504 when it times out).
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time allowed from sending the request to receiving the response head, in ms (504).
    #[serde(default = "defaults::response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// Keep-alive connections an endpoint's list keeps (`upstream::direct`): parked ones,
    /// including those still reading the body of the response they were last used for; a
    /// connection given back to a full list is closed once its response ends.
    #[serde(default = "defaults::pool_max_idle")]
    pub pool_max_idle_per_endpoint: usize,
    /// How long an idle keep-alive connection is kept, in ms, counted from the end of its last
    /// response body.
    #[serde(default = "defaults::pool_idle_timeout_ms")]
    pub pool_idle_timeout_ms: u64,
}

/// `load_balancing` of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancing {
    /// Each available endpoint in turn.
    #[default]
    RoundRobin,
    /// The available endpoint with the fewest requests in flight (ties in turn): slow
    /// endpoints get less traffic.
    LeastRequests,
}

/// `[upstream.NAME.health_check]`: active HTTP health checks (see [`crate::health`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Path requested with `GET`; a 2xx or 3xx answer passes.
    #[serde(default = "defaults::health_path")]
    pub path: String,
    /// Time between checks of one endpoint, in ms.
    #[serde(default = "defaults::health_interval_ms")]
    pub interval_ms: u64,
    /// Time allowed for one check, in ms; longer is a failure.
    #[serde(default = "defaults::health_timeout_ms")]
    pub timeout_ms: u64,
    /// Passes in a row that mark an unhealthy endpoint healthy.
    #[serde(default = "defaults::healthy_threshold")]
    pub healthy_threshold: u32,
    /// Failures in a row that mark a healthy endpoint unhealthy.
    #[serde(default = "defaults::unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

/// `[upstream.NAME.outlier_detection]`: passive ejection of failing endpoints (see
/// [`crate::health`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Set to false to never eject on traffic.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// Failures in a row (5xx, connection errors, timeouts) that eject an endpoint.
    #[serde(default = "defaults::consecutive_failures")]
    pub consecutive_failures: u32,
    /// First ejection time, in ms; doubled on each later ejection of the same endpoint.
    #[serde(default = "defaults::base_ejection_ms")]
    pub base_ejection_ms: u64,
    /// Longest ejection, in ms.
    #[serde(default = "defaults::max_ejection_ms")]
    pub max_ejection_ms: u64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            enabled: true,
            consecutive_failures: defaults::consecutive_failures(),
            base_ejection_ms: defaults::base_ejection_ms(),
            max_ejection_ms: defaults::max_ejection_ms(),
        }
    }
}

/// `protocol` of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with a keep-alive pool.
    #[default]
    Http1,
    /// HTTP/2, many requests multiplexed on one connection per endpoint.
    Http2,
}

/// `[upstream.NAME.tls]`: TLS from the gateway to the endpoints (rustls, TLS 1.2 and 1.3).
/// The server certificate is always verified against the roots and the server name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM file of the CA certificates trusted for the endpoints; absent: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Name sent as SNI and checked against the certificate; absent: each endpoint's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM certificate chain the gateway presents to the endpoints (mutual TLS).
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
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

/// `audit_fsync`: when an audit sink's writes are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditFsync {
    /// No `fdatasync`: a crash of the operating system may lose what its page cache held.
    #[default]
    Never,
    /// `fdatasync` after every write of the sink (its timed writes and each fail-closed
    /// step's record).
    Always,
}

/// The algorithm that signs audit checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SigningAlgorithm {
    /// HMAC-SHA256 (RFC 2104) with a shared key of at least 32 bytes.
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    /// Ed25519 (RFC 8032) with a PKCS#8 PEM private key; verifiers need only the public key.
    #[serde(rename = "ed25519")]
    Ed25519,
}

impl std::fmt::Display for SigningAlgorithm {
    /// As written in configuration and checkpoints: `hmac-sha256`, `ed25519`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SigningAlgorithm::HmacSha256 => "hmac-sha256",
            SigningAlgorithm::Ed25519 => "ed25519",
        })
    }
}

/// `[plugin.ID.audit_signing]`: how the audit sink signs checkpoints of its chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSigningConfig {
    /// `hmac-sha256` or `ed25519`.
    pub algorithm: SigningAlgorithm,
    /// The `[secret.NAME]` holding the key: the HMAC key itself, or the Ed25519 private key in
    /// PKCS#8 PEM (`portcullis audit keygen`). The plugin is not granted it: the host signs.
    pub key: String,
    /// How often a checkpoint is signed while records are being appended, in ms (10 ms to
    /// 1 hour; default 1,000). Records after the last checkpoint are covered by no signature
    /// yet: this bounds that window. A checkpoint is also signed at shutdown, before a rotation
    /// and before the key changes.
    #[serde(default = "defaults::checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
    /// A file every checkpoint is also appended to (one JSON line, fsynced), relative to the
    /// configuration file: ship it off the box; `portcullis audit verify --checkpoints` checks
    /// the audit file against it. Checkpoints also go to the log (target `portcullis::audit`)
    /// and `GET /status`.
    #[serde(default)]
    pub checkpoint_file: Option<PathBuf>,
}

/// `[plugin_signing]`: signed plugin files, in the wasmsign2 format (the WebAssembly
/// tool-conventions signature proposal; `host/src/plugin/signing.rs`). Applies at every load,
/// reloads included.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSigningConfig {
    /// Ed25519 public key files (PEM as `portcullis audit keygen` writes them, DER, or
    /// wasmsign2's own format), relative to the configuration file: a plugin signed by any one
    /// is accepted.
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    /// Refuse every plugin whose file carries no signature (embedded, or the plugin's
    /// `signature` file) by a trusted key. Default `false`: then only a signature that is
    /// present is checked, and one that does not verify is still refused.
    #[serde(default)]
    pub required: bool,
}

/// `[secret.NAME]`: where a secret's value is read from; exactly one of `env` and `file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretConfig {
    /// The environment variable that holds the value.
    #[serde(default)]
    pub env: Option<String>,
    /// The file that holds the value (one trailing newline removed), relative to the
    /// configuration file; watched and reloaded like a `$file`.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// `[plugin.ID]`: a component file and how to run it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Path of the `.wasm` component, relative to the configuration file.
    pub path: PathBuf,
    /// The component's SHA-256 (64 hex digits, `sha256sum` of the file): pinned, the file must
    /// have exactly this content at load and at every reload, or it is refused (a reload then
    /// keeps the serving snapshot).
    #[serde(default)]
    pub sha256: Option<String>,
    /// A detached wasmsign2 signature of the component (`portcullis plugin sign --detached`),
    /// relative to the configuration file; absent: the signature embedded in the component,
    /// if any. Checked against `[plugin_signing] trusted_keys`.
    #[serde(default)]
    pub signature: Option<PathBuf>,
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
    pub allowed_origins: Vec<super::Origin>,
    /// JSON Lines file the `audit` capability appends hash-chained records to, relative to the
    /// configuration file; absent: the gateway's stdout.
    #[serde(default)]
    pub audit_file: Option<PathBuf>,
    /// When the audit sink's writes reach the disk: `never` (default: the operating system's
    /// page cache decides) or `always` (every write is followed by `fdatasync`, so a record a
    /// fail-closed step wrote survives a power loss). Belongs to the sink: plugins sharing an
    /// `audit_file` must agree.
    #[serde(default)]
    pub audit_fsync: AuditFsync,
    /// `[plugin.ID.audit_signing]`: signed checkpoints of the audit chain
    /// (`host/src/plugin/checkpoint.rs`). Belongs to the sink, as `audit_fsync` does.
    #[serde(default)]
    pub audit_signing: Option<AuditSigningConfig>,
    /// Secrets (`[secret.NAME]` names) the plugin may use by name through the `secrets`
    /// interface without reading them: the host writes them into headers.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Secrets the plugin may also read (`secrets.reveal`): once read, a value is in plugin
    /// memory, so grant this only to plugins that must compute with it (an HMAC key).
    #[serde(default)]
    pub readable_secrets: Vec<String>,
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
    /// Refuse this component if it imports `wasi:filesystem`, `wasi:sockets` or `wasi:http`.
    /// Absent: `[runtime] strict_imports`.
    #[serde(default)]
    pub strict_imports: Option<bool>,
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
    /// Serves without authentication by intent. A reload that leaves a route which had an
    /// `auth` step with none (a chain deleted by mistake, or a configuration file read while
    /// half written) is refused unless the new configuration sets this; with it, the reload is
    /// applied and says so in its warnings. Default `false`.
    #[serde(default)]
    pub public: bool,
    /// Largest request body accepted on this route, in bytes, whether it is streamed upstream
    /// or buffered: 413 when `Content-Length` declares more (the body is not read) or when a
    /// streamed body grows past it.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: u64,
    /// Golden requests: test requests this route must answer as each expects, run against
    /// every candidate snapshot before it serves ([`GoldenConfig`]).
    #[serde(default)]
    pub golden: Vec<GoldenConfig>,
}

/// `[[route.golden]]`: a test request the route must answer as it says, run in process
/// against every candidate snapshot (at start, by `validate`, at each reload) before it
/// serves; a failing one refuses the snapshot ([`crate::golden`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenConfig {
    /// What the case checks, for messages (`no token → 401`); unique in its route.
    pub name: String,
    /// The method. Default `GET`.
    #[serde(default = "defaults::golden_method")]
    pub method: String,
    /// Path and query (`/api/orders/1?full=1`); it must match this route.
    pub path: String,
    /// Host, lowercase without port. Default: the route's `host`, else `localhost`.
    #[serde(default)]
    pub host: Option<String>,
    /// Request header fields: a value, or `{ "$file" = "PATH", prefix = "Bearer " }` for one
    /// read from a file (relative to the configuration file, one trailing newline removed;
    /// a changed file reloads), so a long-lived test token can live beside the keys.
    #[serde(default)]
    pub headers: BTreeMap<String, GoldenValue>,
    /// The request body, as text. Default empty.
    #[serde(default)]
    pub body: Option<String>,
    /// The client's IP address plugins see. Default `192.0.2.1` (TEST-NET-1, RFC 5737), so
    /// golden requests take from no real client's quota.
    #[serde(default = "defaults::golden_client_ip")]
    pub client_ip: std::net::IpAddr,
    /// `"forward"` (the chain lets it through to the upstream) or the status the gateway
    /// answers itself with (`401`, `403`, `429`, …).
    pub expect: GoldenExpect,
    /// Fields and their exact values (several joined by `, `): on the request forwarded
    /// upstream when `expect = "forward"` (injected identity included; a field written from a
    /// secret reads `[secret NAME]`), else on the gateway's response.
    #[serde(default)]
    pub expect_headers: BTreeMap<String, String>,
    /// Plugin id to the decision it must make (`authenticated`, `denied`, `continue`,
    /// `respond`, `limited`, `invalid`, `failed`; a shadow step's reads `shadow:DECISION`).
    #[serde(default)]
    pub expect_decisions: BTreeMap<String, String>,
}

/// A golden request's header value: literal text, or read from a file.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum GoldenValue {
    /// The value itself.
    Text(String),
    /// `{ "$file" = "PATH", prefix = "…" }`: `prefix` then the file's text.
    File {
        /// The file, relative to the configuration file.
        #[serde(rename = "$file")]
        file: PathBuf,
        /// Written before the file's text (`Bearer `). Default none.
        #[serde(default)]
        prefix: Option<String>,
    },
}

/// What a golden request must come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoldenExpect {
    /// The chain lets it through to the upstream.
    Forward,
    /// The gateway answers with this status itself.
    Status(u16),
}

impl<'de> Deserialize<'de> for GoldenExpect {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Status(u16),
            Word(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Status(status) if (100..=599).contains(&status) => Ok(GoldenExpect::Status(status)),
            Raw::Word(word) if word == "forward" => Ok(GoldenExpect::Forward),
            _ => Err(serde::de::Error::custom("expected `\"forward\"` or a status code 100..=599")),
        }
    }
}

/// One step of a route's chain.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    /// Plugin id in `[plugin.ID]`.
    pub plugin: String,
    /// The plugin's configuration, passed to its `configure` as JSON. A table `{ "$file" =
    /// "PATH" }` anywhere inside is replaced by the text of that file (relative to the
    /// configuration file), so keys and JWKS documents can live in their own files; a table
    /// `{ "$secret" = "NAME" }` by the value of a secret in the plugin's `readable_secrets`.
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// Overrides the plugin's failure policy for this step.
    #[serde(default)]
    pub failure_policy: Option<FailurePolicy>,
    /// `enforce` (default), or `shadow`: the step runs and its decision is recorded, but not
    /// enforced (see [`StepMode`]).
    #[serde(default)]
    pub mode: StepMode,
    /// A second plugin (or version) that serves a share of this step's requests instead.
    #[serde(default)]
    pub canary: Option<CanaryConfig>,
}

/// `canary = { plugin, percent, key, config }` of a step: `percent` of requests, chosen by a
/// stable hash of `key`, go to `plugin` instead of the step's own; the same key always lands
/// on the same side, so a client sees one version. Each side has its plugin's own metrics.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// Plugin id in `[plugin.ID]`, of the step's kind.
    pub plugin: String,
    /// Share of requests it serves, 0 to 100 (fractions allowed, in steps of 0.01).
    pub percent: f64,
    /// What picks the side: `client-ip` (default), `subject` (the identity's, else the client
    /// IP), or `header:NAME` (the first value of that request header; without one, the client
    /// IP).
    #[serde(default = "defaults::canary_key")]
    pub key: String,
    /// Its step configuration; absent: the step's.
    #[serde(default)]
    pub config: Option<toml::Table>,
}

/// Whether a step's decisions apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepMode {
    /// Its decisions and edits apply; its failures follow its failure policy.
    #[default]
    Enforce,
    /// It runs in the request phase on live traffic and its decision is recorded (metrics with
    /// `mode="shadow"`, the logging steps' exchange, its span), but not enforced: its edits,
    /// identity and local responses are discarded and its failures never affect the request.
    /// Beside an enforced step of its kind, their disagreements are counted per route.
    Shadow,
}

/// Defaults, named so the docs and the code agree.
pub mod defaults {
    /// 1,000 ms.
    pub fn checkpoint_interval_ms() -> u64 {
        1000
    }
    /// `client-ip`.
    pub fn canary_key() -> String {
        "client-ip".to_owned()
    }
    /// `GET`.
    pub fn golden_method() -> String {
        "GET".to_owned()
    }
    /// `192.0.2.1`, in TEST-NET-1 (RFC 5737).
    pub fn golden_client_ip() -> std::net::IpAddr {
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1))
    }
    /// `portcullis:`.
    pub fn kv_key_prefix() -> String {
        "portcullis:".to_owned()
    }
    /// 250 ms: a LAN connect is under 1 ms; this bounds a request's wait while Redis is away.
    pub fn kv_connect_timeout_ms() -> u64 {
        250
    }
    /// 100 ms: loopback and LAN answers take 0.1–1 ms (`docs/FLEET.md` has the measurements);
    /// beyond this Redis is treated as unavailable for the call.
    pub fn kv_command_timeout_ms() -> u64 {
        100
    }
    /// 1 s.
    pub fn kv_probe_interval_ms() -> u64 {
        1000
    }
    /// 30: an operator's or a deploy tool's pace, not a loop's.
    pub fn max_reloads_per_minute() -> u32 {
        30
    }
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
    /// 30 s, half of nginx's `client_body_timeout`.
    pub fn body_idle_timeout_ms() -> u64 {
        30_000
    }
    /// 5 min.
    pub fn body_timeout_ms() -> u64 {
        300_000
    }
    /// 60 s, under nginx's 75 s `keepalive_timeout` so most clients see the close coming.
    pub fn keep_alive_timeout_ms() -> u64 {
        60_000
    }
    /// 10 s.
    pub fn drain_timeout_ms() -> u64 {
        10_000
    }
    /// `h2`, then `http/1.1`.
    pub fn alpn() -> Vec<String> {
        vec!["h2".into(), "http/1.1".into()]
    }
    /// 10 s.
    pub fn tls_handshake_timeout_ms() -> u64 {
        10_000
    }
    /// 10 MiB: ten times nginx's `client_max_body_size`, for APIs that take uploads.
    pub fn max_body_bytes() -> u64 {
        10 * 1024 * 1024
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
    /// `/healthz`.
    pub fn health_path() -> String {
        "/healthz".into()
    }
    /// 5 s.
    pub fn health_interval_ms() -> u64 {
        5_000
    }
    /// 1 s.
    pub fn health_timeout_ms() -> u64 {
        1_000
    }
    /// 2 passes, as Envoy's examples.
    pub fn healthy_threshold() -> u32 {
        2
    }
    /// 3 failures.
    pub fn unhealthy_threshold() -> u32 {
        3
    }
    /// 5, Envoy's `consecutive_5xx` default.
    pub fn consecutive_failures() -> u32 {
        5
    }
    /// 30 s, Envoy's `base_ejection_time` default.
    pub fn base_ejection_ms() -> u64 {
        30_000
    }
    /// 300 s, Envoy's `max_ejection_time` default.
    pub fn max_ejection_ms() -> u64 {
        300_000
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
    /// 4,096: a 1,000-route configuration whose old and new snapshots coexist in a reload.
    pub fn instance_slots() -> u32 {
        4096
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
