//! Distributed tracing: W3C Trace Context in and out, a span per request with a child span per
//! plugin step, per upstream exchange and per plugin outbound request, exported over OTLP/HTTP
//! when the standard `OTEL_*` variables ask for it.
//!
//! - **Propagation** follows W3C Trace Context Level 1 (`traceparent`, `tracestate`), parsed and
//!   written by OpenTelemetry's `TraceContextPropagator`. Whether a client's context is
//!   believed is the listener's `accept_trace_context`; one that is not is removed and the
//!   request starts a new trace.
//! - **Spans** follow the OpenTelemetry HTTP semantic conventions: the request is a `SERVER`
//!   span named `{method} {route}`; each plugin step an `INTERNAL` span `plugin {id}` with
//!   `portcullis.plugin.{id,kind,phase,decision}`; the upstream exchange and each plugin
//!   outbound request a `CLIENT` span `{method}`. No query string, header value or body is
//!   ever recorded (they carry credentials).
//! - **Export** ([`ExportSettings::from_vars`]) is on when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, or `OTEL_TRACES_EXPORTER=otlp`. Spans go
//!   through the SDK's batch processor to `opentelemetry-otlp`'s HTTP exporter (protobuf or
//!   JSON). The HTTP client is the gateway's own hyper client over rustls, so no second TLS
//!   stack is linked.
//! - **Without export** no span is recorded: the request reuses the client's accepted context
//!   unchanged (a non-recording intermediary, as W3C Trace Context allows), or starts a new
//!   unsampled one, so the access log and the upstream still share a trace id at the cost of
//!   two random numbers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::KeyValue;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    SpanContext, SpanKind, TraceContextExt, TraceFlags, TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, Sampler, SdkTracer, SdkTracerProvider,
};

pub use opentelemetry::Context;
pub use opentelemetry::trace::Status;

/// A variable of the OpenTelemetry environment that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {reason}")]
pub struct TelemetryError {
    /// The variable, e.g. `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub variable: String,
    /// What is wrong with its value.
    pub reason: String,
}

impl TelemetryError {
    fn new(variable: &str, reason: impl Into<String>) -> Self {
        TelemetryError { variable: variable.to_owned(), reason: reason.into() }
    }
}

/// Where and how spans are exported, read from the OpenTelemetry SDK environment variables
/// (<https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/> and
/// the OTLP exporter's).
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    /// The full URL spans are POSTed to, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub endpoint: String,
    /// `http/protobuf` (default) or `http/json`.
    pub protocol: Protocol,
    /// Extra request headers (e.g. an API key for a hosted collector).
    pub headers: HashMap<String, String>,
    /// Time allowed for one export request (default 10 s).
    pub timeout: Duration,
    /// A PEM file of CA certificates for an `https` endpoint; absent: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// `service.name` (default `portcullis`).
    pub service_name: String,
    /// Further resource attributes (`OTEL_RESOURCE_ATTRIBUTES`).
    pub resource: Vec<(String, String)>,
    /// The sampler (default `parentbased_always_on`).
    pub sampler: SamplerSetting,
    /// Delay between two batch exports (`OTEL_BSP_SCHEDULE_DELAY`, default 5 s).
    pub schedule_delay: Duration,
    /// Spans queued before new ones are dropped (`OTEL_BSP_MAX_QUEUE_SIZE`, default 2,048).
    pub max_queue_size: usize,
    /// Spans per export request (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, default 512).
    pub max_export_batch_size: usize,
}

/// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerSetting {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio` with a ratio in 0..=1.
    Ratio(f64),
    /// `parentbased_always_on`: follow the caller's sampled flag, sample new traces.
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio`.
    ParentBasedRatio(f64),
}

impl SamplerSetting {
    fn sampler(self) -> Sampler {
        match self {
            SamplerSetting::AlwaysOn => Sampler::AlwaysOn,
            SamplerSetting::AlwaysOff => Sampler::AlwaysOff,
            SamplerSetting::Ratio(r) => Sampler::TraceIdRatioBased(r),
            SamplerSetting::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            SamplerSetting::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            SamplerSetting::ParentBasedRatio(r) => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r))),
        }
    }
}

/// The default OTLP/HTTP endpoint when only `OTEL_TRACES_EXPORTER=otlp` is set.
pub const DEFAULT_ENDPOINT: &str = "http://localhost:4318";

// === impl ExportSettings ===

impl ExportSettings {
    /// Reads the export settings through `var` (the process environment in production, a map
    /// in tests). Signal-specific `OTEL_EXPORTER_OTLP_TRACES_*` variables win over the general
    /// `OTEL_EXPORTER_OTLP_*` ones; `…_TRACES_ENDPOINT` is used as is, `…_ENDPOINT` gets
    /// `/v1/traces` appended (OTLP exporter specification).
    ///
    /// Returns `Ok(None)` when nothing asks for export, or `OTEL_SDK_DISABLED=true`, or
    /// `OTEL_TRACES_EXPORTER=none`.
    ///
    /// Errors: a [`TelemetryError`] naming the variable: an exporter other than `otlp`/`none`,
    /// the `grpc` protocol (not built in; use OTLP/HTTP, port 4318), an endpoint that is not an
    /// absolute `http`/`https` URL, a malformed `key=value` list, a non-numeric timeout or
    /// batch setting, an unknown sampler or a ratio outside 0..=1.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<ExportSettings>, TelemetryError> {
        let get = |name: &str| var(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let exporter = get("OTEL_TRACES_EXPORTER");
        match exporter.as_deref() {
            Some("none") => return Ok(None),
            None | Some("otlp") => {}
            Some(other) => {
                return Err(TelemetryError::new(
                    "OTEL_TRACES_EXPORTER",
                    format!("`{other}` is not supported; use `otlp` or `none`"),
                ));
            }
        }
        let endpoint = if let Some(url) = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            check_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &url)?;
            url
        } else if let Some(base) = get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            check_url("OTEL_EXPORTER_OTLP_ENDPOINT", &base)?;
            format!("{}/v1/traces", base.trim_end_matches('/'))
        } else if exporter.is_some() {
            format!("{DEFAULT_ENDPOINT}/v1/traces")
        } else {
            return Ok(None);
        };
        let pick = |name: &str| {
            let specific = name.replace("OTEL_EXPORTER_OTLP_", "OTEL_EXPORTER_OTLP_TRACES_");
            get(&specific).map(|v| (specific, v)).or_else(|| get(name).map(|v| (name.to_owned(), v)))
        };
        let protocol = match pick("OTEL_EXPORTER_OTLP_PROTOCOL") {
            None => Protocol::HttpBinary,
            Some((_, p)) if p == "http/protobuf" => Protocol::HttpBinary,
            Some((_, p)) if p == "http/json" => Protocol::HttpJson,
            Some((name, p)) => {
                return Err(TelemetryError::new(
                    &name,
                    format!(
                        "`{p}` is not supported; use `http/protobuf` or `http/json` (the collector's OTLP/HTTP port, 4318)"
                    ),
                ));
            }
        };
        let headers = match pick("OTEL_EXPORTER_OTLP_HEADERS") {
            Some((name, text)) => key_values(&name, &text)?.into_iter().collect(),
            None => HashMap::new(),
        };
        let timeout = match pick("OTEL_EXPORTER_OTLP_TIMEOUT") {
            Some((name, ms)) => Duration::from_millis(number(&name, &ms)?),
            None => Duration::from_secs(10),
        };
        let ca_file = pick("OTEL_EXPORTER_OTLP_CERTIFICATE").map(|(_, path)| PathBuf::from(path));
        let resource = match get("OTEL_RESOURCE_ATTRIBUTES") {
            Some(text) => key_values("OTEL_RESOURCE_ATTRIBUTES", &text)?,
            None => Vec::new(),
        };
        let service_name = get("OTEL_SERVICE_NAME")
            .or_else(|| resource.iter().find(|(k, _)| k == "service.name").map(|(_, v)| v.clone()))
            .unwrap_or_else(|| "portcullis".to_owned());
        let ratio = || -> Result<f64, TelemetryError> {
            let Some(arg) = get("OTEL_TRACES_SAMPLER_ARG") else { return Ok(1.0) };
            match arg.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(TelemetryError::new(
                    "OTEL_TRACES_SAMPLER_ARG",
                    format!("`{arg}` is not a ratio between 0 and 1"),
                )),
            }
        };
        let sampler = match get("OTEL_TRACES_SAMPLER").as_deref() {
            None | Some("parentbased_always_on") => SamplerSetting::ParentBasedAlwaysOn,
            Some("always_on") => SamplerSetting::AlwaysOn,
            Some("always_off") => SamplerSetting::AlwaysOff,
            Some("traceidratio") => SamplerSetting::Ratio(ratio()?),
            Some("parentbased_always_off") => SamplerSetting::ParentBasedAlwaysOff,
            Some("parentbased_traceidratio") => SamplerSetting::ParentBasedRatio(ratio()?),
            Some(other) => {
                return Err(TelemetryError::new(
                    "OTEL_TRACES_SAMPLER",
                    format!(
                        "`{other}` is not supported; use always_on, always_off, traceidratio, parentbased_always_on, \
                         parentbased_always_off or parentbased_traceidratio"
                    ),
                ));
            }
        };
        let setting = |name: &str, default: u64| get(name).map_or(Ok(default), |v| number(name, &v));
        let schedule_delay = Duration::from_millis(setting("OTEL_BSP_SCHEDULE_DELAY", 5_000)?);
        let max_queue_size = usize::try_from(setting("OTEL_BSP_MAX_QUEUE_SIZE", 2_048)?.max(1)).unwrap_or(usize::MAX);
        let max_export_batch_size = usize::try_from(setting("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)?.max(1))
            .unwrap_or(usize::MAX)
            .min(max_queue_size);
        Ok(Some(ExportSettings {
            endpoint,
            protocol,
            headers,
            timeout,
            ca_file,
            service_name,
            resource,
            sampler,
            schedule_delay,
            max_queue_size,
            max_export_batch_size,
        }))
    }
}

fn check_url(variable: &str, url: &str) -> Result<(), TelemetryError> {
    match url.parse::<http::Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => Ok(()),
        _ => Err(TelemetryError::new(variable, format!("`{url}` is not an absolute http or https URL"))),
    }
}

fn number(variable: &str, text: &str) -> Result<u64, TelemetryError> {
    text.parse().map_err(|_| TelemetryError::new(variable, format!("`{text}` is not a whole number")))
}

/// `key1=value1,key2=value2` with percent-encoded values (W3C Baggage syntax, as the
/// specification requires for `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_RESOURCE_ATTRIBUTES`).
fn key_values(variable: &str, text: &str) -> Result<Vec<(String, String)>, TelemetryError> {
    text.split(',')
        .filter(|item| !item.trim().is_empty())
        .map(|item| {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| TelemetryError::new(variable, format!("`{}` is not `key=value`", item.trim())))?;
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .map_err(|_| TelemetryError::new(variable, format!("the value of `{}` is not UTF-8", key.trim())))?;
            Ok((key.trim().to_owned(), value.into_owned()))
        })
        .collect()
}

/// The process's tracer and propagator. Cheap to share; one per engine.
pub struct Telemetry {
    tracer: Option<(SdkTracerProvider, SdkTracer)>,
    endpoint: Option<String>,
    propagator: TraceContextPropagator,
    ids: RandomIdGenerator,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

/// How a step's or exchange's span ended, for its attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanOutcome {
    /// It did its work.
    Ok,
    /// It failed (a 5xx from the gateway or upstream, a plugin failure, a refused connection).
    Error,
}

// === impl Telemetry ===

impl Telemetry {
    /// Tracing without export: trace ids are propagated and logged, no span is recorded.
    pub fn disabled() -> Telemetry {
        Telemetry {
            tracer: None,
            endpoint: None,
            propagator: TraceContextPropagator::new(),
            ids: RandomIdGenerator::default(),
        }
    }

    /// Reads [`ExportSettings::from_vars`] from the process environment and builds the
    /// matching telemetry. Must run inside a tokio runtime (export requests run on it).
    ///
    /// Errors: as [`ExportSettings::from_vars`] and [`Telemetry::exporting`].
    pub fn from_env() -> Result<Telemetry, TelemetryError> {
        match ExportSettings::from_vars(|name| std::env::var(name).ok())? {
            Some(settings) => Telemetry::exporting(&settings),
            None => Ok(Telemetry::disabled()),
        }
    }

    /// Telemetry that records spans and exports them in batches as `settings` say. Export
    /// requests run on the current tokio runtime; a failed export is logged by the SDK and its
    /// spans dropped, never retried into memory without bound.
    ///
    /// Errors: outside a tokio runtime; an unreadable `ca_file` (named by
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`); the exporter refusing the settings.
    pub fn exporting(settings: &ExportSettings) -> Result<Telemetry, TelemetryError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            TelemetryError::new("OTEL_EXPORTER_OTLP_ENDPOINT", format!("export needs a tokio runtime: {e}"))
        })?;
        let client = ExportClient::new(settings, runtime)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(settings.endpoint.clone())
            .with_protocol(settings.protocol)
            .with_timeout(settings.timeout)
            .with_headers(settings.headers.clone())
            .build()
            .map_err(|e| TelemetryError::new("OTEL_EXPORTER_OTLP_ENDPOINT", e.to_string()))?;
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(settings.schedule_delay)
            .with_max_queue_size(settings.max_queue_size)
            .with_max_export_batch_size(settings.max_export_batch_size)
            .build();
        let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batch).build();
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_attributes(
                settings
                    .resource
                    .iter()
                    .filter(|(k, _)| k != "service.name")
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .with_service_name(settings.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(settings.sampler.sampler())
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("portcullis");
        Ok(Telemetry {
            tracer: Some((provider, tracer)),
            endpoint: Some(settings.endpoint.clone()),
            propagator: TraceContextPropagator::new(),
            ids: RandomIdGenerator::default(),
        })
    }

    /// The OTLP endpoint spans go to, when exporting.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// The trace context in `headers` (`traceparent`, `tracestate`), or an empty context when
    /// there is none or it is malformed (W3C Trace Context §4.3: then a new trace starts).
    pub fn extract(&self, headers: &HeaderMap) -> Context {
        self.propagator.extract(&HeaderExtractor(headers))
    }

    /// Starts the request's span under `parent` (from [`Telemetry::extract`], possibly empty).
    /// Without export: `parent` itself when valid, else a new unsampled root context.
    /// `describe` gives the span's name and attributes; it runs only when spans are recorded.
    pub fn start_request(&self, parent: &Context, describe: impl FnOnce() -> (String, Vec<KeyValue>)) -> Context {
        match &self.tracer {
            Some(_) => self.start(parent, SpanKind::Server, describe),
            None if parent.span().span_context().is_valid() => parent.clone(),
            None => {
                let root = SpanContext::new(
                    self.ids.new_trace_id(),
                    self.ids.new_span_id(),
                    TraceFlags::default(),
                    false,
                    TraceState::default(),
                );
                Context::new().with_remote_span_context(root)
            }
        }
    }

    /// Starts a child span of `parent` named and described by `describe`; without export,
    /// returns `parent` and never calls `describe` (no attribute is built on that path).
    pub fn start(
        &self,
        parent: &Context,
        kind: SpanKind,
        describe: impl FnOnce() -> (String, Vec<KeyValue>),
    ) -> Context {
        let Some((_, tracer)) = &self.tracer else { return parent.clone() };
        let (name, attributes) = describe();
        let span =
            tracer.span_builder(name).with_kind(kind).with_attributes(attributes).start_with_context(tracer, parent);
        parent.with_span(span)
    }

    /// Whether spans are recorded at all (export is configured).
    pub fn is_recording(&self) -> bool {
        self.tracer.is_some()
    }

    /// Writes `cx`'s `traceparent` (and `tracestate`, when not empty) into `headers`,
    /// replacing any already there. Nothing is written for an invalid context.
    ///
    /// Written directly, as W3C Trace Context §3.2 spells it (`00-{trace-id}-{parent-id}-
    /// {flags}`, lowercase hex, only the `sampled` flag), rather than through the
    /// propagator's `format!`: this runs on every forwarded request, export or not. The
    /// propagator still parses what clients send ([`Telemetry::extract`]); a test checks both
    /// write the same bytes.
    pub fn inject(&self, cx: &Context, headers: &mut HeaderMap) {
        use crate::proxy::headers::{TRACEPARENT, TRACESTATE};
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            headers.remove(TRACEPARENT);
            headers.remove(TRACESTATE);
            return;
        }
        // `insert` replaces what was there: no hashed removal first.
        match HeaderValue::from_bytes(&traceparent(sc)) {
            Ok(value) => headers.insert(TRACEPARENT, value),
            Err(_) => headers.remove(TRACEPARENT),
        };
        // W3C Trace Context §3.3 lets a vendor omit an empty `tracestate`; upstreams should not
        // see a field with no members.
        let state = sc.trace_state().header();
        match HeaderValue::from_str(&state) {
            Ok(value) if !state.is_empty() => headers.insert(TRACESTATE, value),
            _ => headers.remove(TRACESTATE),
        };
    }

    /// Exports every ended span now. Blocks until the export finishes or times out: call it
    /// from a blocking context (`spawn_blocking`), not on a runtime worker.
    pub fn flush(&self) {
        if let Some((provider, _)) = &self.tracer
            && let Err(e) = provider.force_flush()
        {
            tracing::warn!(error = %e, "exporting the last spans failed");
        }
    }
}

/// The 55 bytes of `sc`'s `traceparent` value (W3C Trace Context §3.2, version `00`).
fn traceparent(sc: &SpanContext) -> [u8; 55] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 55];
    out[..2].copy_from_slice(b"00");
    let flags = [(sc.trace_flags() & TraceFlags::SAMPLED).to_u8()];
    for (start, bytes) in [(3, &sc.trace_id().to_bytes()[..]), (36, &sc.span_id().to_bytes()[..]), (53, &flags[..])] {
        for (i, b) in bytes.iter().enumerate() {
            out[start + 2 * i] = DIGITS[usize::from(b >> 4)];
            out[start + 2 * i + 1] = DIGITS[usize::from(b & 0xf)];
        }
    }
    out
}

/// Ends the span in `cx` (when it is a recording span of ours) with `attributes` and, for an
/// error, an error status carrying `reason`.
pub fn end(cx: &Context, outcome: SpanOutcome, reason: &str, attributes: impl IntoIterator<Item = KeyValue>) {
    let span = cx.span();
    if !span.is_recording() {
        return;
    }
    span.set_attributes(attributes);
    if outcome == SpanOutcome::Error {
        span.set_status(Status::error(reason.to_owned()));
    }
    span.end();
}

/// The lowercase hex trace id of `cx`, or `-` when it has none (for the access log).
pub fn trace_id(cx: &Context) -> String {
    let span = cx.span();
    let sc = span.span_context();
    if sc.is_valid() { sc.trace_id().to_string() } else { "-".to_owned() }
}

/// The lowercase hex span id of `cx`, or `-`.
pub fn span_id(cx: &Context) -> String {
    let span = cx.span();
    let sc = span.span_context();
    if sc.is_valid() { sc.span_id().to_string() } else { "-".to_owned() }
}

/// Largest response body read from a collector, in bytes.
const MAX_COLLECTOR_RESPONSE_BYTES: usize = 1024 * 1024;

/// The exporter's HTTP client: the gateway's hyper client over rustls (ring), run on the
/// gateway's tokio runtime. The SDK's batch processor exports from its own thread with a
/// plain `block_on`, so each request is spawned onto the runtime and its handle awaited.
#[derive(Debug, Clone)]
struct ExportClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl ExportClient {
    fn new(settings: &ExportSettings, runtime: tokio::runtime::Handle) -> Result<Self, TelemetryError> {
        let roots = match &settings.ca_file {
            Some(path) => {
                crate::tls::roots(path).map_err(|why| TelemetryError::new("OTEL_EXPORTER_OTLP_CERTIFICATE", why))?
            }
            None => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                roots
            }
        };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .map_err(|e| TelemetryError::new("OTEL_EXPORTER_OTLP_CERTIFICATE", e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Ok(ExportClient { client, runtime, timeout: settings.timeout })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let (client, timeout) = (self.client.clone(), self.timeout);
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, Full::new(body));
        let exchange = async move {
            let response = client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_COLLECTOR_RESPONSE_BYTES).collect().await?.to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
        };
        let task = self.runtime.spawn(async move {
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| "the collector did not answer in time".into())
                .and_then(|r| r)
        });
        task.await?
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceId};
    use opentelemetry_http::HeaderInjector;

    use super::*;

    #[test]
    fn inject_writes_what_the_w3c_propagator_writes() {
        let telemetry = Telemetry::disabled();
        for (flags, state) in [(TraceFlags::SAMPLED, "vendor=abc,other=1"), (TraceFlags::default(), "")] {
            let sc = SpanContext::new(
                TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
                SpanId::from_hex("b7ad6b7169203331").unwrap(),
                flags,
                true,
                state.parse().unwrap(),
            );
            let cx = Context::new().with_remote_span_context(sc);
            let mut ours = HeaderMap::new();
            ours.insert("traceparent", HeaderValue::from_static("00-stale"));
            telemetry.inject(&cx, &mut ours);
            let mut theirs = HeaderMap::new();
            TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut theirs));
            assert_eq!(ours["traceparent"], theirs["traceparent"]);
            assert_eq!(ours.get("tracestate"), theirs.get("tracestate").filter(|v| !v.is_empty()));
        }
        let mut none = HeaderMap::new();
        telemetry.inject(&Context::new(), &mut none);
        assert!(none.is_empty(), "an invalid context writes nothing");
    }

    fn settings(vars: &[(&str, &str)]) -> Result<Option<ExportSettings>, TelemetryError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        ExportSettings::from_vars(|name| map.get(name).cloned())
    }

    #[test]
    fn nothing_set_means_no_export() {
        assert_eq!(settings(&[]), Ok(None));
        assert_eq!(
            settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SDK_DISABLED", "true")]),
            Ok(None)
        );
        assert_eq!(
            settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_TRACES_EXPORTER", "none")]),
            Ok(None)
        );
    }

    #[test]
    fn endpoints_follow_the_otlp_exporter_rules() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]).unwrap().unwrap();
        assert_eq!(s.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(s.protocol, Protocol::HttpBinary);
        assert_eq!(s.sampler, SamplerSetting::ParentBasedAlwaysOn);
        assert_eq!(s.service_name, "portcullis");
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://wrong:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://collector/custom/path"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.endpoint, "https://collector/custom/path");
        let s = settings(&[("OTEL_TRACES_EXPORTER", "otlp")]).unwrap().unwrap();
        assert_eq!(s.endpoint, "http://localhost:4318/v1/traces");
    }

    #[test]
    fn headers_resource_sampler_and_batch_settings_are_read() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=secret%20value, x-tenant=a"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=edge,deployment.environment=prod"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.headers.get("api-key").map(String::as_str), Some("secret value"));
        assert_eq!(s.headers.get("x-tenant").map(String::as_str), Some("a"));
        assert_eq!(s.protocol, Protocol::HttpJson, "the traces-specific variable wins");
        assert_eq!(s.timeout, Duration::from_millis(2500));
        assert_eq!(s.service_name, "edge");
        assert!(s.resource.contains(&("deployment.environment".to_owned(), "prod".to_owned())));
        assert_eq!(s.sampler, SamplerSetting::ParentBasedRatio(0.25));
        assert_eq!(s.schedule_delay, Duration::from_millis(100));
    }

    #[test]
    fn bad_values_name_their_variable() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let cases: [(&[(&str, &str)], &str); 7] = [
            (&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")], "OTEL_EXPORTER_OTLP_PROTOCOL"),
            (&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")], "OTEL_EXPORTER_OTLP_ENDPOINT"),
            (&[endpoint, ("OTEL_EXPORTER_OTLP_HEADERS", "novalue")], "OTEL_EXPORTER_OTLP_HEADERS"),
            (&[endpoint, ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "soon")], "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"),
            (&[endpoint, ("OTEL_TRACES_SAMPLER", "sometimes")], "OTEL_TRACES_SAMPLER"),
            (
                &[endpoint, ("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "2")],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (&[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")], "OTEL_TRACES_EXPORTER"),
        ];
        for (vars, variable) in cases {
            let error = settings(vars).expect_err(variable);
            assert_eq!(error.variable, variable, "{error}");
        }
    }

    #[test]
    fn without_export_a_valid_parent_passes_through_and_a_missing_one_starts_a_trace() {
        let telemetry = Telemetry::disabled();
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        let parent = telemetry.extract(&headers);
        let cx = telemetry.start_request(&parent, || ("GET r".into(), Vec::new()));
        assert_eq!(trace_id(&cx), "4bf92f3577b34da6a3ce929d0e0e4736");
        let mut out = HeaderMap::new();
        telemetry.inject(&cx, &mut out);
        assert_eq!(out["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");

        let fresh = telemetry.start_request(&telemetry.extract(&HeaderMap::new()), || ("GET r".into(), Vec::new()));
        assert_eq!(trace_id(&fresh).len(), 32);
        telemetry.inject(&fresh, &mut out);
        let written = out["traceparent"].to_str().unwrap();
        assert!(written.starts_with(&format!("00-{}-", trace_id(&fresh))) && written.ends_with("-00"), "{written}");

        headers.insert("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01".parse().unwrap());
        assert!(!telemetry.extract(&headers).span().span_context().is_valid(), "an all-zero trace id is invalid");
    }
}
