//! The admin listener, bound to loopback by default:
//!
//! - `GET /healthz`: the process is alive (`{"status":"ok"}`).
//! - `GET /readyz`: a snapshot is loaded and every listener is bound (200, else 503); with a
//!   shared `kv` store that is down, 200 `{"status":"degraded","kv":{…}}`. The
//!   admin listener is bound before the first snapshot is built, and until it is
//!   ([`serve_starting`]) `/readyz` and `/status` answer 503 with the plugins still compiling.
//! - `GET /metrics`: Prometheus metrics, text exposition format.
//! - `GET /plugins`: each loaded plugin's id, kind, content hash (SHA-256), contract, imports,
//!   failure policy and crash-loop breaker state, as JSON.
//! - `POST /reload`: reloads the configuration now; 200 `{"result":"ok"}`, or 422 with an RFC
//!   9457 problem whose `errors` list every problem (the running configuration keeps serving).
//! - `GET /status`: JSON with each upstream endpoint's health (available, active check
//!   verdict, ejection, requests in flight, totals, recent error rate and latency), each
//!   plugin's SHA-256, breaker state and failure count, each audit sink's written and failed
//!   records, sync policy, signing key id and last signed checkpoint, the plugins compiling now (`loading`), the `kv` backend's health (`kv`:
//!   backend, `up` or `down`, the last error, the address without credentials), and the last
//!   reload.
//! - `GET /reloads`: the recent reload attempts (time, cause, result, error, warnings,
//!   duration, and each plugin's SHA-256), oldest first.
//! - `GET /routes`: each route's id, what it matches, its upstream, body limit, number of
//!   golden requests, and its chain (plugin, kind, mode, failure policy, canary split).
//! - `GET /`: the dashboard ([`dashboard`]), a static page that reads the endpoints above;
//!   it and its assets under `/dashboard/` hold no data and are served without the token.
//!
//! Every request first passes [`access`]: a `Host` check (421), a same-origin check on
//! state-changing requests (403), the bearer token when one is configured (401), and a rate
//! limit on `POST /reload` (429).

pub mod access;
mod dashboard;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{Body, full};
use crate::error::problem;
use crate::metrics::Metrics;
use crate::reload::{ReloadCause, Reloader};
use crate::snapshot::Snapshot;
use access::{AdminAccess, Refusal};

/// What the admin endpoints report on.
#[derive(Clone)]
pub struct AdminState {
    /// Set once every listener is bound.
    pub ready: Arc<AtomicBool>,
    /// The serving snapshot.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// Performs reloads.
    pub reloader: Arc<Reloader>,
    /// Who may use the endpoints.
    pub access: Arc<AdminAccess>,
}

/// Serves the admin endpoints until `shutdown` turns true.
pub async fn serve(listener: TcpListener, state: AdminState, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let state = state.clone();
        let service = service_fn(move |request| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(route(&request, &state).await) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Serves the admin endpoints while the first snapshot is built, until `stop` turns true, then
/// hands the listener back for [`serve`]. `/healthz` answers 200; `/readyz` and `/status`
/// answer 503 with `{"status":"starting","loading":[{"plugin","bytes","elapsed_ms"}]}` naming
/// the plugins still compiling; every other endpoint answers 503 `starting` (RFC 9457).
/// Access is checked as in [`serve`].
pub async fn serve_starting(
    listener: TcpListener,
    access: Arc<AdminAccess>,
    engine: Arc<crate::plugin::PluginEngine>,
    mut stop: watch::Receiver<bool>,
) -> TcpListener {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return listener,
        };
        let Ok((stream, _)) = accepted else { continue };
        let (access, engine) = (access.clone(), engine.clone());
        let service = service_fn(move |request: Request<Incoming>| {
            let (access, engine) = (access.clone(), engine.clone());
            async move { Ok::<_, Infallible>(route_starting(&request, &access, &engine)) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route_starting(
    request: &Request<Incoming>,
    access: &AdminAccess,
    engine: &crate::plugin::PluginEngine,
) -> Response<Body> {
    if let Err(refusal) = access.check(request.method(), request.uri().path(), request.headers()) {
        return refused(&refusal);
    }
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
        (&Method::GET, "/readyz" | "/status") => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "starting", "loading": engine.loading() }).to_string(),
        ),
        _ => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting",
            "The gateway is loading its configuration and plugins; `/readyz` lists what is still compiling.",
            "-",
            None,
        ),
    }
}

async fn route(request: &Request<Incoming>, state: &AdminState) -> Response<Body> {
    if let Err(refusal) = state.access.check(request.method(), request.uri().path(), request.headers()) {
        return refused(&refusal);
    }
    match (request.method(), request.uri().path()) {
        (&Method::POST, "/reload") if let Err(wait) = state.access.take_reload() => {
            let mut response = problem(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many reloads asked for; `max_reloads_per_minute` in [admin] sets the pace.",
                "-",
                None,
            );
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(wait.as_secs().max(1)));
            response
        }
        (&Method::POST, "/reload") => match state.reloader.reload(ReloadCause::Request).await {
            Ok(()) => json(StatusCode::OK, r#"{"result":"ok"}"#.into()),
            Err(e) => {
                let errors: Vec<serde_json::Value> = e.to_string().lines().map(|l| l.into()).collect();
                problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "reload-failed",
                    "The configuration was not reloaded; the running one keeps serving.",
                    "-",
                    Some(("errors", serde_json::Value::Array(errors))),
                )
            }
        },
        (&Method::GET, "/reloads") => {
            json(StatusCode::OK, serde_json::json!({ "reloads": state.reloader.history() }).to_string())
        }
        (&Method::GET, "/healthz") => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
        (&Method::GET, "/readyz") if state.ready.load(Ordering::Acquire) => {
            // A shared `kv` store that is down degrades the gateway without taking it out of
            // rotation: routes that do not use it serve as before, and those that do answer
            // per their steps' failure policy.
            let kv = state.reloader.engine().kv().health();
            let body = if kv.state == "up" {
                serde_json::json!({ "status": "ready" })
            } else {
                serde_json::json!({ "status": "degraded", "kv": kv })
            };
            json(StatusCode::OK, body.to_string())
        }
        (&Method::GET, "/readyz") => json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"starting"}"#.into()),
        (&Method::GET, "/metrics") => {
            refresh_gauges(&state.snapshot.load(), &state.metrics);
            let mut response = Response::new(full(Bytes::from(state.metrics.encode())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            response
        }
        (&Method::GET, "/plugins") => json(StatusCode::OK, plugins(&state.snapshot.load())),
        (&Method::GET, "/routes") => json(StatusCode::OK, routes(&state.snapshot.load())),
        (&Method::GET, path) if let Some(response) = dashboard::asset(path) => response,
        (&Method::GET, "/status") => json(StatusCode::OK, status(state)),
        _ => problem(StatusCode::NOT_FOUND, "no-route", "Unknown admin endpoint.", "-", None),
    }
}

/// The problem response for a [`Refusal`].
fn refused(refusal: &Refusal) -> Response<Body> {
    let (status, slug) = match refusal {
        Refusal::Misdirected(_) => (StatusCode::MISDIRECTED_REQUEST, "misdirected-request"),
        Refusal::CrossOrigin => (StatusCode::FORBIDDEN, "cross-origin"),
        Refusal::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
        Refusal::TokenUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "admin-token-unavailable"),
    };
    let mut response = problem(status, slug, &refusal.to_string(), "-", None);
    if *refusal == Refusal::Unauthorized {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"portcullis-admin\""));
    }
    response
}

fn policy_label(policy: crate::config::FailurePolicy) -> &'static str {
    match policy {
        crate::config::FailurePolicy::FailClosed => "fail-closed",
        crate::config::FailurePolicy::FailOpen => "fail-open",
    }
}

/// `{"routes":[{id, host, path_prefix, path, methods, upstream, max_body_bytes, golden,
/// chain:[{plugin, kind, mode, failure_policy, canary:{plugin, percent, key}|null}]}]}`, in
/// configuration order.
fn routes(snapshot: &Snapshot) -> String {
    use crate::chain::Step as _;
    let list: Vec<_> = snapshot
        .routes
        .iter()
        .map(|r| {
            let chain: Vec<_> = r
                .chain
                .steps()
                .iter()
                .map(|link| {
                    let canary = link.canary.as_ref().map(|c| {
                        serde_json::json!({
                            "plugin": &**c.step.id(),
                            "percent": f64::from(c.per_10k) / 100.0,
                            "key": c.key.label(),
                        })
                    });
                    serde_json::json!({
                        "plugin": &**link.step.id(),
                        "kind": link.step.kind().to_string(),
                        "mode": match link.mode {
                            crate::config::StepMode::Enforce => "enforce",
                            crate::config::StepMode::Shadow => "shadow",
                        },
                        "failure_policy": policy_label(link.policy),
                        "canary": canary,
                    })
                })
                .collect();
            serde_json::json!({
                "id": &*r.id,
                "host": r.matches.host,
                "path_prefix": r.matches.path_prefix,
                "path": r.matches.path,
                "methods": r.matches.methods,
                "upstream": r.upstream.name(),
                "max_body_bytes": r.max_body_bytes,
                "golden": r.golden,
                "chain": chain,
            })
        })
        .collect();
    serde_json::json!({ "routes": list }).to_string()
}

fn plugins(snapshot: &Snapshot) -> String {
    let list: Vec<_> = snapshot
        .plugins
        .values()
        .map(|p| {
            serde_json::json!({
                "id": &*p.id,
                "kind": p.kind.to_string(),
                "sha256": p.content_hash,
                "contract": p.contract.to_string(),
                "failure_policy": policy_label(p.policy),
                "breaker": p.breaker_state().label(),
                "imports": p.imports,
                "secrets": p.grants().secrets.names().collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({ "plugins": list }).to_string()
}

/// Sets the gauges read from the serving snapshot at scrape time: endpoint availability and
/// plugin instances (summed over the plugin's step pools).
fn refresh_gauges(snapshot: &Snapshot, metrics: &Metrics) {
    use crate::metrics::{EndpointLabels, InstanceLabels};
    for (name, upstream) in &snapshot.upstreams {
        for endpoint in upstream.endpoints() {
            let labels = EndpointLabels { upstream: name.clone(), endpoint: endpoint.address.to_string() };
            metrics.endpoint_available.get_or_create(&labels).set(i64::from(endpoint.health.is_available()));
        }
    }
    let mut counts: std::collections::BTreeMap<&str, (usize, usize)> =
        snapshot.plugins.keys().map(|id| (id.as_str(), (0, 0))).collect();
    let mut seen = std::collections::HashSet::new();
    let links = snapshot.routes.iter().flat_map(|r| r.chain.steps());
    for step in links.flat_map(|l| std::iter::once(&l.step).chain(l.canary.as_ref().map(|c| &c.step))) {
        let pool = step.pool();
        if !seen.insert(Arc::as_ptr(pool)) {
            continue;
        }
        let (idle, busy) = pool.instance_counts();
        if let Some(count) = counts.get_mut(&*pool.plugin().id) {
            count.0 += idle;
            count.1 += busy;
        }
    }
    for (plugin, (idle, busy)) in counts {
        for (state, n) in [("idle", idle), ("busy", busy)] {
            let labels = InstanceLabels { plugin: plugin.to_owned(), state: state.to_owned() };
            metrics.plugin_instances.get_or_create(&labels).set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

fn status(state: &AdminState) -> String {
    let snapshot = state.snapshot.load();
    let upstreams: serde_json::Map<String, serde_json::Value> = snapshot
        .upstreams
        .iter()
        .map(|(name, u)| (name.clone(), serde_json::json!({ "endpoints": u.status() })))
        .collect();
    let plugins: serde_json::Map<String, serde_json::Value> = snapshot
        .plugins
        .iter()
        .map(|(id, p)| {
            let plugin = serde_json::json!({
                "sha256": p.content_hash,
                "breaker": p.breaker_state().label(),
                "failures_since_load": p.failure_count(),
            });
            (id.clone(), plugin)
        })
        .collect();
    let last_reload = state.reloader.history().pop();
    let audit_sinks = state.reloader.engine().audit_sinks().status();
    let loading = state.reloader.engine().loading();
    let kv = state.reloader.engine().kv().health();
    // By name and source only: never a value, its length or a digest of it.
    let secrets: serde_json::Map<String, serde_json::Value> = snapshot
        .secrets
        .iter()
        .map(|(name, secret)| (name.to_string(), serde_json::json!({ "source": secret.source.to_string() })))
        .collect();
    serde_json::json!({
        "upstreams": upstreams,
        "secrets": secrets,
        "plugins": plugins,
        "loading": loading,
        "kv": kv,
        "audit_sinks": audit_sinks,
        "last_reload": last_reload,
    })
    .to_string()
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response
}
