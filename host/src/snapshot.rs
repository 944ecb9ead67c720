//! The running configuration as one immutable value: router, routes with their chains,
//! upstreams and plugins. Built whole, off the request path, from a [`LoadedConfig`]; a request
//! holds the snapshot it started with until it completes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::HeaderName;

use crate::chain::{Canary, CanaryKey, Chain, ChainStep, WasmStep};
use crate::config::{ConfigError, Issue, LoadedConfig};
use crate::plugin::audit::{Signing, SinkOptions};
use crate::plugin::checkpoint::SigningKey;
use crate::plugin::signing::{SignatureError, TrustedKeys};
use crate::plugin::{LoadedPlugin, PluginEngine, Provisions, StepLoadError, StepPool};
use crate::proxy::headers::IdentityHeaders;
use crate::router::Router;
use crate::secrets::{SecretGrants, Secrets};
use crate::sources::Sources;
use crate::upstream::Upstream;

/// Largest plugin file accepted, in bytes.
pub const MAX_PLUGIN_BYTES: u64 = 32 * 1024 * 1024;

/// A route ready to serve.
#[derive(Debug)]
pub struct RouteRuntime {
    /// Route id.
    pub id: Arc<str>,
    /// Where its requests go.
    pub upstream: Arc<Upstream>,
    /// Its filter chain.
    pub chain: Chain,
    /// Largest request body accepted, in bytes (413 beyond).
    pub max_body_bytes: u64,
    /// Its request metrics, resolved once.
    pub series: crate::metrics::RouteSeries,
    /// What it matches, as configured (for `GET /routes` and the dashboard).
    pub matches: RouteMatch,
    /// How many golden requests it lists (all passed, or the snapshot would not exist).
    pub golden: usize,
}

/// What a route matches, as its configuration says.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteMatch {
    /// Exact host; none for any host.
    pub host: Option<String>,
    /// Segment prefix, if the route has one.
    pub path_prefix: Option<String>,
    /// Exact path or pattern, if the route has one.
    pub path: Option<String>,
    /// Methods; empty for all.
    pub methods: Vec<String>,
}

/// Everything the request path reads, immutable.
#[derive(Debug)]
pub struct Snapshot {
    /// The routing index.
    pub router: Router,
    /// Routes, in configuration order (the router's index); [`Snapshot::route`] finds one.
    pub routes: Vec<Arc<RouteRuntime>>,
    /// Identity header names.
    pub identity: IdentityHeaders,
    /// Loaded plugins by id.
    pub plugins: BTreeMap<String, Arc<LoadedPlugin>>,
    /// Every file this snapshot was built from, with the digest of what was read: the
    /// configuration file, plugin files, `$file` references, certificates and keys. Hot
    /// reload watches them and reloads when one's content differs.
    pub sources: Sources,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// The process's metrics (the engine's).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The process's tracer (the engine's).
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// Each listener's TLS configuration, by listener index (none: clear text). A listener
    /// reads it at every handshake, so renewed certificates apply to new connections.
    pub listener_tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    /// The configured secrets (shown by name and source only).
    pub secrets: Secrets,
}

// === impl Snapshot ===

impl Snapshot {
    /// Gives every audit sink its plugins' options from this snapshot (`audit_fsync`,
    /// `audit_signing`): called when the snapshot starts serving, so a refused reload changes
    /// no sink.
    pub fn configure_audit_sinks(&self) {
        for plugin in self.plugins.values() {
            let grants = plugin.grants();
            if let Some(sink) = &grants.audit {
                sink.configure(&grants.audit_options);
            }
        }
    }

    /// The most specific route for `host` (lowercase, no port), `path` and `method`
    /// ([`Router::find`]'s rules), if any.
    pub fn route(&self, host: &str, path: &str, method: &http::Method) -> Option<&Arc<RouteRuntime>> {
        self.router.find(host, path, method).and_then(|i| self.routes.get(i))
    }

    /// Builds a snapshot: compiles every plugin (on blocking threads, reusing components
    /// compiled before from identical bytes), configures one pool per distinct (plugin, step
    /// configuration), and indexes the routes.
    ///
    /// Errors: [`ConfigError::Invalid`] listing every problem: unreadable or oversized plugin
    /// files, components that do not compile or lack their kind's export or import what the
    /// host does not provide, step configurations the plugin refuses (with the plugin's JSON
    /// pointer), `$file` references that cannot be read, router conflicts, and golden
    /// requests ([`crate::golden`]) that do not come out as they expect.
    pub async fn build(loaded: &LoadedConfig, engine: &Arc<PluginEngine>) -> Result<Snapshot, ConfigError> {
        Self::build_after(loaded, engine, None).await
    }

    /// [`Snapshot::build`] to replace `previous`: endpoints both have keep what health checks
    /// and outlier detection learned about them.
    ///
    /// Errors: as [`Snapshot::build`].
    pub async fn build_after(
        loaded: &LoadedConfig,
        engine: &Arc<PluginEngine>,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ConfigError> {
        let config = &loaded.config;
        let mut issues = Vec::new();
        let mut sources = Sources::default();
        sources.record_digest(&loaded.file, loaded.digest.clone());

        let router = Router::build(&config.routes).unwrap_or_else(|mut e| {
            issues.append(&mut e);
            Router::default()
        });

        let secrets = Secrets::load(loaded, &mut sources).unwrap_or_else(|mut e| {
            issues.append(&mut e);
            Secrets::default()
        });

        let trusted = Arc::new(trusted_keys(loaded, &mut sources).unwrap_or_else(|mut e| {
            issues.append(&mut e);
            TrustedKeys::default()
        }));
        let signatures_required = config.plugin_signing.required;

        let mut plugins = BTreeMap::new();
        // Which plugin's options each audit sink takes, by its file (none: stdout).
        let mut sinks: HashMap<Option<std::path::PathBuf>, (&str, SinkOptions)> = HashMap::new();
        for (id, plugin_config) in &config.plugins {
            let path = loaded.resolve(&plugin_config.path);
            let audit_file = plugin_config.audit_file.as_deref().map(|f| loaded.resolve(f));
            let audit_options = match audit_options(id, plugin_config, &secrets, loaded) {
                Ok(options) => options,
                Err(issue) => {
                    issues.push(issue);
                    continue;
                }
            };
            if plugin_config.capabilities.contains(&crate::config::Capability::Audit) {
                match sinks.get(&audit_file) {
                    Some((other, options)) if *options != audit_options => {
                        let sink = audit_file.as_ref().map_or("stdout".into(), |f| f.display().to_string());
                        issues.push(Issue::new(
                            format!("plugin.{id}.audit_signing"),
                            format!(
                                "writes the audit sink {sink} as plugin.{other} does, with other `audit_signing` or \
                                 `audit_fsync` settings: one sink has one key and one sync policy"
                            ),
                        ));
                        continue;
                    }
                    Some(_) => {}
                    None => {
                        sinks.insert(audit_file.clone(), (id, audit_options.clone()));
                    }
                }
            }
            let field = format!("plugin.{id}.path");
            let pin = plugin_config.sha256.as_deref().map(str::to_ascii_lowercase);
            let strict = plugin_config.strict_imports.unwrap_or(config.runtime.strict_imports);
            let (engine_for_compile, plugin_id) = (engine.clone(), id.clone());
            let (kind, capabilities) = (plugin_config.kind, plugin_config.capabilities.clone());
            let detached = match plugin_config.signature.as_deref().map(|f| loaded.resolve(f)) {
                None => None,
                Some(file) => match std::fs::read(&file) {
                    Ok(bytes) => {
                        sources.record(&file, &bytes);
                        Some(bytes)
                    }
                    Err(e) => {
                        issues.push(Issue::new(
                            format!("plugin.{id}.signature"),
                            format!("cannot read {}: {e}", file.display()),
                        ));
                        continue;
                    }
                },
            };
            let trusted = trusted.clone();
            let read = path.clone();
            let compiled = tokio::task::spawn_blocking(move || {
                let path = read;
                let size = std::fs::metadata(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?.len();
                if size > MAX_PLUGIN_BYTES {
                    return Err(format!("{} is {size} bytes, over the {MAX_PLUGIN_BYTES}-byte cap", path.display()));
                }
                let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let hash = crate::sources::sha256_hex(&bytes);
                if let Some(pin) = pin.filter(|pin| *pin != hash) {
                    return Ok(Err((
                        "sha256",
                        format!("{} has SHA-256 {hash}; the configuration pins {pin}", path.display()),
                    )));
                }
                if let Err(refusal) = check_signature(&bytes, detached.as_deref(), &trusted, signatures_required) {
                    return Ok(Err(("signature", format!("{}: {refusal}", path.display()))));
                }
                // Imports and exports are read from the binary first: a refusal costs
                // milliseconds, not a compilation.
                let surface = crate::plugin::imports::inspect(&bytes).map_err(|e| format!("{} {e}", path.display()))?;
                crate::plugin::imports::check(&surface, &capabilities, strict)?;
                crate::plugin::imports::check_exports(&surface, kind)?;
                let _loading = engine_for_compile.begin_loading(&plugin_id, size);
                let started = std::time::Instant::now();
                tracing::info!(plugin = %plugin_id, bytes = size, "compiling plugin");
                let (component, from) = engine_for_compile
                    .compile(&bytes, &hash)
                    .map_err(|e| format!("{} is not a valid component: {e:#}", path.display()))?;
                tracing::info!(
                    plugin = %plugin_id,
                    bytes = size,
                    ms = started.elapsed().as_millis() as u64,
                    from = from.label(),
                    "plugin compiled"
                );
                Ok(Ok((component, hash, surface.imports)))
            })
            .await
            .unwrap_or_else(|e| Err(format!("compilation task failed: {e}")));
            // A file that is not the pinned or a signed one: refused before compiling, by its
            // own field.
            let compiled = match compiled {
                Ok(Err((field, refusal))) => {
                    issues.push(Issue::new(format!("plugin.{id}.{field}"), refusal));
                    continue;
                }
                Ok(Ok(compiled)) => Ok(compiled),
                Err(e) => Err(e),
            };
            if let Ok((_, hash, _)) = &compiled {
                sources.record_digest(&path, hash.clone());
            }
            match compiled.and_then(|(component, hash, imports)| {
                let provisions = Provisions {
                    audit_file: audit_file.as_deref(),
                    audit_options,
                    secrets: SecretGrants::new(&secrets, &plugin_config.secrets, &plugin_config.readable_secrets),
                };
                LoadedPlugin::new(engine.clone(), id, plugin_config, &component, hash, imports, provisions)
            }) {
                Ok(plugin) => {
                    plugins.insert(id.clone(), Arc::new(plugin));
                }
                Err(message) => issues.push(Issue::new(field, message)),
            }
        }

        let id = &config.identity;
        let header =
            |name: &str| HeaderName::from_bytes(name.as_bytes()).unwrap_or(HeaderName::from_static("x-invalid"));
        let identity = IdentityHeaders {
            subject: header(&id.subject_header),
            roles: header(&id.roles_header),
            scopes: header(&id.scopes_header),
            issuer: header(&id.issuer_header),
            strip: id.strip_headers.iter().map(|h| header(h)).collect(),
        };

        let mut listener_tls = Vec::new();
        for (i, listener) in config.listeners.iter().enumerate() {
            let built = listener
                .tls
                .as_ref()
                .map(|tls| crate::tls::server_config(loaded, tls, &format!("listener[{i}].tls"), &mut sources));
            listener_tls.push(match built {
                None => None,
                Some(Ok(server)) => Some(server),
                Some(Err(mut e)) => {
                    issues.append(&mut e);
                    None
                }
            });
        }

        let mut upstreams: BTreeMap<String, Arc<Upstream>> = BTreeMap::new();
        for (name, u) in &config.upstreams {
            let tls = u
                .tls
                .as_ref()
                .map(|tls| crate::tls::client_config(loaded, tls, &format!("upstream.{name}.tls"), &mut sources));
            match tls.transpose() {
                Ok(tls) => {
                    let before = previous.and_then(|p| p.upstreams.get(name)).map(Arc::as_ref);
                    upstreams
                        .insert(name.clone(), Arc::new(Upstream::new(name, u, tls, before, engine.metrics().clone())));
                }
                Err(issue) => issues.push(issue),
            }
        }

        let mut pools = Pools { shared: HashMap::new(), plugins: &plugins, loaded, secrets: &secrets };
        let mut routes = Vec::new();
        for (i, route) in config.routes.iter().enumerate() {
            let mut steps = Vec::new();
            for (j, step) in route.chain.iter().enumerate() {
                let at = format!("route[{i}].chain[{j}]");
                let Some(plugin) = plugins.get(&step.plugin) else { continue };
                let Some(pool) = pools.get(&step.plugin, step.config.as_ref(), &at, &mut sources, &mut issues).await
                else {
                    continue;
                };
                let canary = match &step.canary {
                    None => None,
                    Some(c) => {
                        let table = c.config.as_ref().or(step.config.as_ref());
                        let at = format!("{at}.canary");
                        let Some(pool) = pools.get(&c.plugin, table, &at, &mut sources, &mut issues).await else {
                            continue;
                        };
                        // Validation checked the key and the range.
                        let key = CanaryKey::parse(&c.key).unwrap_or(CanaryKey::ClientIp);
                        let per_10k = (c.percent.clamp(0.0, 100.0) * 100.0).round() as u32;
                        Some(Canary { step: WasmStep(pool), per_10k, key })
                    }
                };
                let policy = step.failure_policy.unwrap_or(plugin.policy);
                steps.push(ChainStep { step: WasmStep(pool), policy, mode: step.mode, canary });
            }
            // Validation refused a route naming no upstream; skipping it would shift every
            // later route's index, so it ends the build here too.
            let Some(upstream) = upstreams.get(route.upstream.as_str()) else {
                issues.push(Issue::new(format!("route[{i}].upstream"), format!("no upstream `{}`", route.upstream)));
                continue;
            };
            routes.push(Arc::new(RouteRuntime {
                id: route.id.as_str().into(),
                upstream: upstream.clone(),
                chain: Chain::new(steps),
                max_body_bytes: route.max_body_bytes,
                series: crate::metrics::RouteSeries::new(engine.metrics(), &route.id),
                matches: RouteMatch {
                    host: route.host.clone(),
                    path_prefix: route.path_prefix.clone(),
                    path: route.path.clone(),
                    methods: route.methods.clone(),
                },
                golden: route.golden.len(),
            }));
        }

        let golden = crate::golden::prepare(loaded, &mut sources).unwrap_or_else(|mut e| {
            issues.append(&mut e);
            Vec::new()
        });
        if !issues.is_empty() {
            return Err(loaded.invalid(issues));
        }
        let metrics = engine.metrics().clone();
        let telemetry = engine.telemetry().clone();
        let snapshot = Snapshot {
            router,
            routes,
            identity,
            plugins,
            sources,
            upstreams,
            metrics,
            telemetry,
            listener_tls,
            secrets,
        };
        // Last: they need the whole snapshot, and a snapshot that fails them never serves.
        let failed = crate::golden::run(&snapshot, &golden).await;
        if !failed.is_empty() {
            return Err(loaded.invalid(failed));
        }
        Ok(snapshot)
    }
}

/// Step pools by (plugin, step configuration), shared by every step that has both.
struct Pools<'a> {
    shared: HashMap<(String, String), Arc<StepPool>>,
    plugins: &'a BTreeMap<String, Arc<LoadedPlugin>>,
    loaded: &'a LoadedConfig,
    secrets: &'a Secrets,
}

impl Pools<'_> {
    /// The pool of plugin `id` configured with `table`, configured now unless a step with the
    /// same plugin and configuration has one. Problems go to `issues` under `at` (the step's
    /// field path, e.g. `route[0].chain[1]`), with the plugin's JSON pointer when it refused.
    async fn get(
        &mut self,
        id: &str,
        table: Option<&toml::Table>,
        at: &str,
        sources: &mut Sources,
        issues: &mut Vec<Issue>,
    ) -> Option<Arc<StepPool>> {
        let plugin = self.plugins.get(id)?;
        let at = format!("{at}.config");
        let readable = self.loaded.config.plugins.get(id).map_or(&[][..], |p| &p.readable_secrets[..]);
        let refs = References { loaded: self.loaded, secrets: self.secrets, readable };
        let json = match step_config_json(&refs, table, sources) {
            Ok(json) => json,
            Err(message) => {
                issues.push(Issue::new(at, message));
                return None;
            }
        };
        let key = (id.to_owned(), json.clone());
        if let Some(pool) = self.shared.get(&key) {
            return Some(pool.clone());
        }
        match StepPool::new(plugin.clone(), json).await {
            Ok(pool) => {
                let pool = Arc::new(pool);
                self.shared.insert(key, pool.clone());
                Some(pool)
            }
            Err(StepLoadError::Refused(e)) => {
                let field = if e.pointer.is_empty() { at } else { format!("{at}{}", e.pointer) };
                issues.push(Issue::new(field, format!("refused by plugin `{id}`: {}", e.message)));
                None
            }
            Err(StepLoadError::Failed(f)) => {
                issues.push(Issue::new(at, format!("plugin `{id}` failed to configure: {}", f.detail)));
                None
            }
        }
    }
}

/// What a step configuration's references resolve against.
struct References<'a> {
    loaded: &'a LoadedConfig,
    secrets: &'a Secrets,
    /// The step's plugin's `readable_secrets`.
    readable: &'a [String],
}

/// The step's TOML table as JSON text, with every `{ "$file" = "PATH" }` table replaced by the
/// text of that file (relative to the configuration file), and every `{ "$secret" = "NAME" }`
/// by the value of that secret, which must be in the plugin's `readable_secrets` (the value is
/// then in plugin memory, as `secrets.reveal` would put it).
fn step_config_json(
    refs: &References<'_>,
    table: Option<&toml::Table>,
    sources: &mut Sources,
) -> Result<String, String> {
    let mut value = match table {
        Some(t) => serde_json::to_value(t).map_err(|e| e.to_string())?,
        None => serde_json::Value::Object(serde_json::Map::new()),
    };
    resolve_files(refs, &mut value, sources)?;
    Ok(value.to_string())
}

fn resolve_files(refs: &References<'_>, value: &mut serde_json::Value, sources: &mut Sources) -> Result<(), String> {
    use serde_json::Value;
    let loaded = refs.loaded;
    match value {
        Value::Object(map) if map.len() == 1 && map.contains_key("$secret") => {
            let Some(Value::String(name)) = map.get("$secret") else {
                return Err("`$secret` must be a secret's name".into());
            };
            if !refs.readable.contains(name) {
                return Err(format!("`$secret` {name}: the plugin's `readable_secrets` must list it"));
            }
            let Some(secret) = refs.secrets.get(name) else {
                return Err(format!("`$secret` {name}: no [secret.{name}] could be read"));
            };
            let text = std::str::from_utf8(secret.value.expose())
                .map_err(|_| format!("`$secret` {name}: the value is not UTF-8 text"))?;
            *value = Value::String(text.to_owned());
            Ok(())
        }
        Value::Object(map) if map.len() == 1 && map.contains_key("$file") => {
            let Some(Value::String(path)) = map.get("$file") else {
                return Err("`$file` must be a path string".into());
            };
            let full = loaded.resolve(std::path::Path::new(path));
            let text =
                std::fs::read_to_string(&full).map_err(|e| format!("cannot read `$file` {}: {e}", full.display()))?;
            sources.record(&full, text.as_bytes());
            *value = Value::String(text);
            Ok(())
        }
        Value::Object(map) => map.values_mut().try_for_each(|v| resolve_files(refs, v, sources)),
        Value::Array(items) => items.iter_mut().try_for_each(|v| resolve_files(refs, v, sources)),
        _ => Ok(()),
    }
}

/// The options plugin `id`'s configuration gives its audit sink: `audit_fsync`, and
/// `audit_signing` with its key read from the `[secret]` it names.
///
/// Errors: an [`Issue`] at `plugin.ID.audit_signing.key` when the secret is not defined or is
/// not a key of the algorithm (the message names the secret, never its value).
fn audit_options(
    id: &str,
    config: &crate::config::PluginConfig,
    secrets: &Secrets,
    loaded: &LoadedConfig,
) -> Result<SinkOptions, Issue> {
    let Some(signing) = &config.audit_signing else {
        return Ok(SinkOptions { fsync: config.audit_fsync, signing: None });
    };
    let field = format!("plugin.{id}.audit_signing.key");
    let name = &signing.key;
    let secret = secrets.get(name).ok_or_else(|| Issue::new(&field, format!("no [secret.{name}] is defined")))?;
    let key = SigningKey::new(signing.algorithm, secret.value.expose())
        .map_err(|e| Issue::new(&field, format!("secret `{name}`: {e}")))?;
    Ok(SinkOptions {
        fsync: config.audit_fsync,
        signing: Some(Signing {
            key,
            interval: std::time::Duration::from_millis(signing.checkpoint_interval_ms),
            export: signing.checkpoint_file.as_deref().map(|f| loaded.resolve(f)),
        }),
    })
}

/// The `[plugin_signing] trusted_keys` of `loaded`, each file recorded in `sources` (a changed
/// key file reloads).
///
/// Errors: one [`Issue`] per key file that cannot be read or is not an Ed25519 public key.
fn trusted_keys(loaded: &LoadedConfig, sources: &mut Sources) -> Result<TrustedKeys, Vec<Issue>> {
    let mut files = Vec::new();
    let mut issues = Vec::new();
    for (i, file) in loaded.config.plugin_signing.trusted_keys.iter().enumerate() {
        let path = loaded.resolve(file);
        match std::fs::read(&path) {
            Ok(bytes) => {
                sources.record(&path, &bytes);
                files.push((path, bytes));
            }
            Err(e) => issues.push(Issue::new(
                format!("plugin_signing.trusted_keys[{i}]"),
                format!("cannot read {}: {e}", path.display()),
            )),
        }
    }
    if !issues.is_empty() {
        return Err(issues);
    }
    TrustedKeys::parse(&files).map_err(|(path, why)| {
        let i = files.iter().position(|(p, _)| *p == path).unwrap_or(0);
        vec![Issue::new(format!("plugin_signing.trusted_keys[{i}]"), format!("{}: {why}", path.display()))]
    })
}

/// Whether `component` may load under `[plugin_signing]`: a signature that is present
/// (embedded, or `detached`) must verify with a trusted key; with `required`, one must be
/// present. With no trusted keys and nothing required, signatures are not looked at.
///
/// Errors: the [`SignatureError`], or a signature given with no trusted key to check it.
fn check_signature(
    component: &[u8],
    detached: Option<&[u8]>,
    trusted: &TrustedKeys,
    required: bool,
) -> Result<(), String> {
    if trusted.is_empty() {
        return match detached {
            Some(_) => Err("a `signature` file is configured but `[plugin_signing] trusted_keys` is empty".into()),
            None => Ok(()),
        };
    }
    match trusted.verify(component, detached) {
        Ok(key) => {
            tracing::debug!(key = %key.display(), "plugin signature verified");
            Ok(())
        }
        Err(SignatureError::Unsigned) if !required => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}
