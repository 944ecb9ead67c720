//! Whole-file checks that serde cannot express: references between sections, names, ranges and
//! route conflicts. Every problem is collected, not just the first.

use std::collections::HashSet;

use super::Issue;
use super::model::{Capability, GatewayConfig, GoldenValue, PluginKind, RouteConfig, StepMode};

/// `[kv]`: a Redis URL without credentials, one password source, sane timeouts.
fn check_kv(issues: &mut Vec<Issue>, kv: &super::model::KvConfig) {
    use super::model::KvBackend;
    if kv.backend == KvBackend::Memory {
        if kv.url.is_some() {
            issues.push(Issue::new("kv.url", "is only used with `backend = \"redis\"`"));
        }
        return;
    }
    if let Some(url) = &kv.url {
        match url.split_once("://") {
            Some(("redis" | "rediss", rest)) => {
                let authority = rest.split('/').next().unwrap_or_default();
                if authority.contains('@') {
                    issues.push(Issue::new(
                        "kv.url",
                        "must not hold credentials: set `username`, and `password_file` or `password_env`",
                    ));
                }
            }
            _ => issues.push(Issue::new("kv.url", "must start with redis:// or rediss://")),
        }
    }
    if kv.password_file.is_some() && kv.password_env.is_some() {
        issues.push(Issue::new("kv.password_env", "set `password_file` or `password_env`, not both"));
    }
    if !kv.key_prefix.bytes().all(|b| b.is_ascii_graphic()) {
        issues.push(Issue::new("kv.key_prefix", "use visible ASCII characters"));
    }
    check_range(issues, "kv.connect_timeout_ms", kv.connect_timeout_ms, 1, 60_000);
    check_range(issues, "kv.command_timeout_ms", kv.command_timeout_ms, 1, 60_000);
    check_range(issues, "kv.probe_interval_ms", kv.probe_interval_ms, 10, 3_600_000);
}

/// Every problem in `config`, in file order; empty when it holds together.
pub(super) fn check(config: &GatewayConfig) -> Vec<Issue> {
    let mut issues = Vec::new();
    check_range(&mut issues, "runtime.max_wasm_stack_kib", config.runtime.max_wasm_stack_kib, 64, 16 * 1024);
    check_range(&mut issues, "runtime.instance_slots", u64::from(config.runtime.instance_slots), 8, 65_536);
    if config.listeners.is_empty() {
        issues.push(Issue::new("listener", "at least one [[listener]] is required"));
    }
    check_kv(&mut issues, &config.kv);
    let admin = &config.admin;
    if admin.token_file.is_some() && admin.token_env.is_some() {
        issues.push(Issue::new("admin.token_env", "set `token_file` or `token_env`, not both"));
    }
    check_range(&mut issues, "admin.max_reloads_per_minute", u64::from(admin.max_reloads_per_minute), 1, 6000);
    for (i, name) in admin.hostnames.iter().enumerate() {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b)) {
            issues.push(Issue::new(format!("admin.hostnames[{i}]"), format!("`{name}` is not a host name")));
        }
    }
    for (i, l) in config.listeners.iter().enumerate() {
        if l.header_read_timeout_ms == 0 {
            issues.push(Issue::new(format!("listener[{i}].header_read_timeout_ms"), "must be > 0"));
        }
        let at = |f: &str| format!("listener[{i}].{f}");
        check_range(&mut issues, &at("max_request_header_bytes"), l.max_request_header_bytes, 8192, 1024 * 1024);
        check_range(&mut issues, &at("max_request_headers"), l.max_request_headers, 1, 1000);
        check_range(&mut issues, &at("max_uri_bytes"), l.max_uri_bytes, 256, 65_534);
        check_range(&mut issues, &at("max_connections"), l.max_connections, 1, 1_000_000);
        if let Some(per_ip) = l.max_connections_per_ip {
            check_range(&mut issues, &at("max_connections_per_ip"), per_ip, 1, 1_000_000);
        }
        for (field, v) in [
            ("body_idle_timeout_ms", l.body_idle_timeout_ms),
            ("body_timeout_ms", l.body_timeout_ms),
            ("keep_alive_timeout_ms", l.keep_alive_timeout_ms),
        ] {
            check_range(&mut issues, &at(field), v, 1, 86_400_000);
        }
        check_range(&mut issues, &at("drain_timeout_ms"), l.drain_timeout_ms, 0, 3_600_000);
        if let Some(tls) = &l.tls {
            if tls.certificates.is_empty() {
                issues.push(Issue::new(at("tls.certificates"), "at least one certificate is required"));
            }
            for (k, alpn) in tls.alpn.iter().enumerate() {
                if !matches!(alpn.as_str(), "h2" | "http/1.1") {
                    issues
                        .push(Issue::new(at(&format!("tls.alpn[{k}]")), format!("`{alpn}` is not `h2` or `http/1.1`")));
                }
            }
            if tls.alpn.is_empty() {
                issues.push(Issue::new(at("tls.alpn"), "offer at least one of `h2` and `http/1.1`"));
            }
            check_range(&mut issues, &at("tls.handshake_timeout_ms"), tls.handshake_timeout_ms, 1, 600_000);
        }
    }
    let id = &config.identity;
    for (field, name) in [
        ("identity.subject_header", &id.subject_header),
        ("identity.roles_header", &id.roles_header),
        ("identity.scopes_header", &id.scopes_header),
        ("identity.issuer_header", &id.issuer_header),
    ] {
        check_header_name(&mut issues, field, name);
    }
    for (i, name) in id.strip_headers.iter().enumerate() {
        check_header_name(&mut issues, &format!("identity.strip_headers[{i}]"), name);
    }
    for (name, u) in &config.upstreams {
        let at = format!("upstream.{name}");
        if u.endpoints.is_empty() {
            issues.push(Issue::new(format!("{at}.endpoints"), "at least one endpoint is required"));
        }
        for (i, e) in u.endpoints.iter().enumerate() {
            let ok = e.parse::<http::uri::Authority>().is_ok_and(|a| a.port_u16().is_some());
            if !ok {
                issues.push(Issue::new(format!("{at}.endpoints[{i}]"), format!("`{e}` is not host:port")));
            }
        }
        if let Some(hc) = &u.health_check {
            if !hc.path.starts_with('/') || hc.path.parse::<http::uri::PathAndQuery>().is_err() {
                issues.push(Issue::new(
                    format!("{at}.health_check.path"),
                    format!("`{}` is not a path starting with `/`", hc.path),
                ));
            }
            check_range(&mut issues, &format!("{at}.health_check.interval_ms"), hc.interval_ms, 10, 3_600_000);
            check_range(&mut issues, &format!("{at}.health_check.timeout_ms"), hc.timeout_ms, 1, hc.interval_ms.max(1));
            check_range(
                &mut issues,
                &format!("{at}.health_check.healthy_threshold"),
                u64::from(hc.healthy_threshold),
                1,
                1000,
            );
            check_range(
                &mut issues,
                &format!("{at}.health_check.unhealthy_threshold"),
                u64::from(hc.unhealthy_threshold),
                1,
                1000,
            );
        }
        let od = &u.outlier_detection;
        check_range(
            &mut issues,
            &format!("{at}.outlier_detection.consecutive_failures"),
            u64::from(od.consecutive_failures),
            1,
            1_000_000,
        );
        check_range(
            &mut issues,
            &format!("{at}.outlier_detection.base_ejection_ms"),
            od.base_ejection_ms,
            1,
            86_400_000,
        );
        if od.max_ejection_ms < od.base_ejection_ms {
            issues.push(Issue::new(
                format!("{at}.outlier_detection.max_ejection_ms"),
                "must be at least `base_ejection_ms`",
            ));
        }
        if let Some(tls) = &u.tls {
            if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
                issues.push(Issue::new(
                    format!("{at}.tls"),
                    "set both `client_cert_file` and `client_key_file`, or neither",
                ));
            }
            if let Some(name) = &tls.server_name
                && rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
            {
                issues.push(Issue::new(
                    format!("{at}.tls.server_name"),
                    format!("`{name}` is not a DNS name or IP address"),
                ));
            }
        }
        for (field, v) in [("connect_timeout_ms", u.connect_timeout_ms), ("response_timeout_ms", u.response_timeout_ms)]
        {
            if v == 0 {
                issues.push(Issue::new(format!("{at}.{field}"), "must be > 0"));
            }
        }
    }
    for (name, p) in &config.plugins {
        let at = format!("plugin.{name}");
        if !is_id(name) {
            issues.push(Issue::new(&at, "plugin ids use a-z, 0-9, `-` and `_`"));
        }
        check_range(&mut issues, &format!("{at}.memory_mib"), p.memory_mib, 1, 4096);
        check_range(&mut issues, &format!("{at}.deadline_ms"), p.deadline_ms, 1, 60_000);
        check_range(&mut issues, &format!("{at}.max_instances"), p.max_instances as u64, 1, 1024);
        check_range(&mut issues, &format!("{at}.max_uses_per_instance"), p.max_uses_per_instance, 1, u64::MAX);
        check_range(&mut issues, &format!("{at}.breaker.failures"), u64::from(p.breaker.failures), 1, 1_000_000);
        check_range(&mut issues, &format!("{at}.breaker.window_ms"), p.breaker.window_ms, 1, 86_400_000);
        check_range(&mut issues, &format!("{at}.breaker.open_ms"), p.breaker.open_ms, 1, 86_400_000);
        if p.breaker.max_open_ms < p.breaker.open_ms {
            issues.push(Issue::new(format!("{at}.breaker.max_open_ms"), "must be at least `open_ms`"));
        }
        if p.fuel.is_some() && !config.runtime.fuel_metering {
            issues.push(Issue::new(format!("{at}.fuel"), "needs `fuel_metering = true` in [runtime]"));
        }
        if !p.allowed_origins.is_empty() && !p.capabilities.contains(&Capability::HttpClient) {
            issues.push(Issue::new(
                format!("{at}.allowed_origins"),
                "needs the `http-client` capability in `capabilities`",
            ));
        }
        let audited = p.capabilities.contains(&Capability::Audit);
        if p.audit_file.is_some() && !audited {
            issues.push(Issue::new(format!("{at}.audit_file"), "needs the `audit` capability in `capabilities`"));
        }
        if p.audit_fsync != crate::config::AuditFsync::Never && !audited {
            issues.push(Issue::new(format!("{at}.audit_fsync"), "needs the `audit` capability in `capabilities`"));
        }
        if let Some(signing) = &p.audit_signing {
            if !audited {
                issues
                    .push(Issue::new(format!("{at}.audit_signing"), "needs the `audit` capability in `capabilities`"));
            }
            if !config.secrets.contains_key(&signing.key) {
                issues.push(Issue::new(
                    format!("{at}.audit_signing.key"),
                    format!("no [secret.{}] is defined", signing.key),
                ));
            }
            let interval = format!("{at}.audit_signing.checkpoint_interval_ms");
            check_range(&mut issues, &interval, signing.checkpoint_interval_ms, 10, 3_600_000);
        }
        if let Some(pin) = &p.sha256
            && !(pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            issues.push(Issue::new(format!("{at}.sha256"), "must be 64 hex digits (the file's `sha256sum`)"));
        }
        for (field, names) in [("secrets", &p.secrets), ("readable_secrets", &p.readable_secrets)] {
            for (j, secret) in names.iter().enumerate() {
                if !config.secrets.contains_key(secret) {
                    issues.push(Issue::new(format!("{at}.{field}[{j}]"), format!("no [secret.{secret}] is defined")));
                }
            }
        }
    }
    if config.plugin_signing.required && config.plugin_signing.trusted_keys.is_empty() {
        issues.push(Issue::new("plugin_signing.trusted_keys", "`required = true` needs at least one trusted key"));
    }
    for (name, s) in &config.secrets {
        let at = format!("secret.{name}");
        if !is_id(name) {
            issues.push(Issue::new(&at, "secret names use a-z, 0-9, `-` and `_`"));
        }
        match (&s.env, &s.file) {
            (Some(_), Some(_)) => issues.push(Issue::new(format!("{at}.file"), "set `env` or `file`, not both")),
            (None, None) => issues.push(Issue::new(&at, "needs `env` (a variable name) or `file` (a path)")),
            (Some(var), None) if var.is_empty() || var.contains(['=', '\0']) => {
                issues.push(Issue::new(format!("{at}.env"), "is not an environment variable name"));
            }
            _ => {}
        }
    }
    let mut ids = HashSet::new();
    for (i, r) in config.routes.iter().enumerate() {
        check_route(config, &mut issues, i, r);
        if !ids.insert(r.id.as_str()) {
            issues.push(Issue::new(format!("route[{i}].id"), format!("duplicate route id `{}`", r.id)));
        }
    }
    check_conflicts(config, &mut issues);
    issues
}

fn check_route(config: &GatewayConfig, issues: &mut Vec<Issue>, i: usize, r: &RouteConfig) {
    let at = format!("route[{i}]");
    if r.id.is_empty() || !r.id.chars().all(|c| c.is_ascii_graphic()) {
        issues.push(Issue::new(format!("{at}.id"), "must be non-empty visible ASCII"));
    }
    match (&r.path_prefix, &r.path) {
        (Some(p), None) | (None, Some(p)) if p.starts_with('/') => {}
        (Some(_), Some(_)) => issues.push(Issue::new(&at, "set `path_prefix` or `path`, not both")),
        (None, None) => issues.push(Issue::new(&at, "one of `path_prefix` or `path` is required")),
        _ => issues.push(Issue::new(&at, "paths must start with `/`")),
    }
    if let Some(host) = &r.host {
        check_host(issues, &format!("{at}.host"), host);
    }
    for (j, m) in r.methods.iter().enumerate() {
        check_method(issues, &format!("{at}.methods[{j}]"), m);
    }
    if !config.upstreams.contains_key(&r.upstream) {
        issues.push(Issue::new(format!("{at}.upstream"), format!("no [upstream.{}] is defined", r.upstream)));
    }
    let mut auth_steps = 0;
    for (j, step) in r.chain.iter().enumerate() {
        match config.plugins.get(&step.plugin) {
            None => issues
                .push(Issue::new(format!("{at}.chain[{j}].plugin"), format!("no [plugin.{}] is defined", step.plugin))),
            Some(p) if p.kind == PluginKind::Logging && step.mode == StepMode::Shadow => issues.push(Issue::new(
                format!("{at}.chain[{j}].mode"),
                "a logging step decides nothing: `shadow` is for auth, rate-limit, validation and filter steps",
            )),
            Some(p) if step.canary.is_some() && (p.kind == PluginKind::Logging || step.mode == StepMode::Shadow) => {
                issues.push(Issue::new(
                    format!("{at}.chain[{j}].canary"),
                    "a canary splits an enforced auth, rate-limit, validation or filter step",
                ));
            }
            // A shadow auth step beside the enforced one is how a new auth configuration is tried.
            Some(p) if p.kind == PluginKind::Auth && step.mode == StepMode::Enforce => auth_steps += 1,
            Some(_) => {}
        }
    }
    for (j, step) in r.chain.iter().enumerate() {
        let Some(canary) = &step.canary else { continue };
        let field = format!("{at}.chain[{j}].canary");
        match (config.plugins.get(&step.plugin), config.plugins.get(&canary.plugin)) {
            (_, None) => {
                issues.push(Issue::new(format!("{field}.plugin"), format!("no [plugin.{}] is defined", canary.plugin)))
            }
            (Some(own), Some(other)) if own.kind != other.kind => issues.push(Issue::new(
                format!("{field}.plugin"),
                format!(
                    "`{}` is a {} plugin; the step's `{}` is a {}",
                    canary.plugin, other.kind, step.plugin, own.kind
                ),
            )),
            _ => {}
        }
        if !(0.0..=100.0).contains(&canary.percent) {
            issues.push(Issue::new(format!("{field}.percent"), "must be 0 to 100"));
        }
        let key_ok = matches!(canary.key.as_str(), "client-ip" | "subject")
            || canary.key.strip_prefix("header:").is_some_and(|h| http::HeaderName::from_bytes(h.as_bytes()).is_ok());
        if !key_ok {
            issues.push(Issue::new(format!("{field}.key"), "`client-ip`, `subject` or `header:NAME`"));
        }
    }
    if auth_steps > 1 {
        issues.push(Issue::new(format!("{at}.chain"), "at most one enforced auth step per chain"));
    }
    check_golden(config, issues, &at, r);
}

/// A route's `[[route.golden]]` requests: names, methods, paths, header fields, and decisions
/// expected of steps the chain has. Whether each matches its route is checked when it runs.
fn check_golden(config: &GatewayConfig, issues: &mut Vec<Issue>, route_at: &str, r: &RouteConfig) {
    let mut names = HashSet::new();
    for (k, g) in r.golden.iter().enumerate() {
        let at = format!("{route_at}.golden[{k}]");
        if g.name.trim().is_empty() {
            issues.push(Issue::new(format!("{at}.name"), "must not be empty"));
        } else if !names.insert(g.name.as_str()) {
            issues
                .push(Issue::new(format!("{at}.name"), format!("another golden request of the route is `{}`", g.name)));
        }
        check_method(issues, &format!("{at}.method"), &g.method);
        if !g.path.starts_with('/') || g.path.parse::<http::uri::PathAndQuery>().is_err() {
            issues.push(Issue::new(format!("{at}.path"), "a path (and query) starting with `/`"));
        }
        if let Some(host) = &g.host {
            check_host(issues, &format!("{at}.host"), host);
        }
        for (name, value) in &g.headers {
            let field = format!("{at}.headers.{name}");
            check_header_name(issues, &field, name);
            let text = match value {
                GoldenValue::Text(text) => Some(text),
                GoldenValue::File { prefix, .. } => prefix.as_ref(),
            };
            if text.is_some_and(|t| http::HeaderValue::from_str(t).is_err()) {
                issues.push(Issue::new(field, "is not a valid header value"));
            }
        }
        for name in g.expect_headers.keys() {
            check_header_name(issues, &format!("{at}.expect_headers.{name}"), name);
        }
        for plugin in g.expect_decisions.keys() {
            let field = format!("{at}.expect_decisions.{plugin}");
            let step =
                r.chain.iter().find(|s| s.plugin == *plugin || s.canary.as_ref().is_some_and(|c| c.plugin == *plugin));
            match (step, config.plugins.get(plugin)) {
                (None, _) => issues.push(Issue::new(field, format!("`{plugin}` is not a step of this route's chain"))),
                (Some(_), Some(p)) if p.kind == PluginKind::Logging => {
                    issues.push(Issue::new(field, "a logging step decides nothing before the response"));
                }
                _ => {}
            }
        }
    }
}

/// Two routes with the same host and path (or prefix) and overlapping methods would make the
/// winner depend on file order: refuse them.
fn check_conflicts(config: &GatewayConfig, issues: &mut Vec<Issue>) {
    let routes = &config.routes;
    for (i, a) in routes.iter().enumerate() {
        for (j, b) in routes.iter().enumerate().skip(i + 1) {
            let same_place = a.host == b.host
                && a.path_prefix.as_deref().map(normalize_prefix) == b.path_prefix.as_deref().map(normalize_prefix)
                && a.path == b.path;
            let overlap =
                a.methods.is_empty() || b.methods.is_empty() || a.methods.iter().any(|m| b.methods.contains(m));
            if same_place && overlap {
                issues.push(Issue::new(
                    format!("route[{j}]"),
                    format!("matches the same requests as route[{i}] (`{}`)", a.id),
                ));
            }
        }
    }
}

/// `/api/` and `/api` are the same segment prefix.
pub(crate) fn normalize_prefix(prefix: &str) -> &str {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() { "/" } else { trimmed }
}

/// A route's or golden request's `host`: lowercase, without port.
fn check_host(issues: &mut Vec<Issue>, field: &str, host: &str) {
    if host.is_empty() || host.contains(':') || host.chars().any(|c| c.is_ascii_uppercase()) {
        issues.push(Issue::new(field, "a lowercase host name without port"));
    }
}

/// An uppercase method token (RFC 9110 §9.1).
fn check_method(issues: &mut Vec<Issue>, field: &str, method: &str) {
    if http::Method::from_bytes(method.as_bytes()).is_err() || method.chars().any(|c| c.is_ascii_lowercase()) {
        issues.push(Issue::new(field, format!("`{method}` is not an uppercase method token")));
    }
}

fn check_header_name(issues: &mut Vec<Issue>, field: &str, name: &str) {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.chars().any(|c| c.is_ascii_uppercase()) {
        issues.push(Issue::new(field, format!("`{name}` is not a lowercase header name")));
    }
}

fn check_range(issues: &mut Vec<Issue>, field: &str, v: u64, min: u64, max: u64) {
    if v < min || v > max {
        issues.push(Issue::new(field, format!("{v} is outside {min}..={max}")));
    }
}

fn is_id(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}
