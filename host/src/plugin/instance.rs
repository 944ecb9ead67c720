//! One plugin instance: a store and the loaded export of its kind, and the typed calls on it.

use wasmtime::Store;
use wasmtime::component::{Instance as WasmInstance, InstancePre};

use super::bindings::exports::portcullis::plugin::{auth, filter, logging, rate_limit, validation};
use super::bindings::portcullis::plugin::types::{ConfigError, Identity, RequestHead, ResponseHead};
use super::host::HostState;
use crate::config::PluginKind;

/// Export look-ups of one kind, resolved once per component.
pub(crate) enum KindIndices {
    Auth(auth::GuestIndices),
    RateLimit(rate_limit::GuestIndices),
    Validation(validation::GuestIndices),
    Logging(logging::GuestIndices),
    Filter(filter::GuestIndices),
}

/// The loaded export of one kind on one instance.
pub(crate) enum Guest {
    Auth(auth::Guest),
    RateLimit(rate_limit::Guest),
    Validation(validation::Guest),
    Logging(logging::Guest),
    Filter(filter::Guest),
}

/// A call the chain makes, by kind (borrows only, so it is `Copy`).
#[derive(Clone, Copy)]
pub enum Call<'a> {
    /// `auth.authenticate`
    Authenticate(&'a RequestHead),
    /// `rate-limit.check`
    Check(&'a RequestHead, Option<&'a Identity>),
    /// `validation.validate`
    Validate(&'a RequestHead, Option<&'a Identity>, Option<&'a [u8]>),
    /// `logging.observe`
    Observe(&'a logging::Exchange),
    /// `filter.on-request`
    OnRequest(&'a RequestHead, Option<&'a Identity>),
    /// `filter.on-response`
    OnResponse(&'a RequestHead, Option<&'a Identity>, &'a ResponseHead),
}

/// What the plugin answered, by kind.
#[derive(Debug)]
pub enum Reply {
    /// From `authenticate`.
    Auth(auth::AuthOutcome),
    /// From `check`.
    RateLimit(rate_limit::RateLimitOutcome),
    /// From `validate`.
    Validation(validation::ValidationOutcome),
    /// From `observe`.
    Observed,
    /// From `on-request` or `on-response`.
    Filter(filter::FilterAction),
}

/// A live instance.
pub(crate) struct Instance {
    pub store: Store<HostState>,
    pub guest: Guest,
    pub uses: u64,
}

// === impl KindIndices ===

impl KindIndices {
    /// Looks up `kind`'s export. Errors: the component does not export that interface (or
    /// exports it with other functions).
    pub fn new(kind: PluginKind, pre: &InstancePre<HostState>) -> wasmtime::Result<Self> {
        Ok(match kind {
            PluginKind::Auth => KindIndices::Auth(auth::GuestIndices::new(pre)?),
            PluginKind::RateLimit => KindIndices::RateLimit(rate_limit::GuestIndices::new(pre)?),
            PluginKind::Validation => KindIndices::Validation(validation::GuestIndices::new(pre)?),
            PluginKind::Logging => KindIndices::Logging(logging::GuestIndices::new(pre)?),
            PluginKind::Filter => KindIndices::Filter(filter::GuestIndices::new(pre)?),
        })
    }

    pub fn load(&self, store: &mut Store<HostState>, instance: &WasmInstance) -> wasmtime::Result<Guest> {
        Ok(match self {
            KindIndices::Auth(i) => Guest::Auth(i.load(store, instance)?),
            KindIndices::RateLimit(i) => Guest::RateLimit(i.load(store, instance)?),
            KindIndices::Validation(i) => Guest::Validation(i.load(store, instance)?),
            KindIndices::Logging(i) => Guest::Logging(i.load(store, instance)?),
            KindIndices::Filter(i) => Guest::Filter(i.load(store, instance)?),
        })
    }
}

// === impl Instance ===

impl Instance {
    /// `configure(config)` on whichever kind this is.
    pub async fn configure(&mut self, config: &str) -> wasmtime::Result<Result<(), ConfigError>> {
        let store = &mut self.store;
        match &self.guest {
            Guest::Auth(g) => g.call_configure(store, config).await,
            Guest::RateLimit(g) => g.call_configure(store, config).await,
            Guest::Validation(g) => g.call_configure(store, config).await,
            Guest::Logging(g) => g.call_configure(store, config).await,
            Guest::Filter(g) => g.call_configure(store, config).await,
        }
    }

    /// `validation.body-limit`, or none for other kinds.
    pub async fn body_limit(&mut self) -> wasmtime::Result<Option<u64>> {
        match &self.guest {
            Guest::Validation(g) => g.call_body_limit(&mut self.store).await,
            _ => Ok(None),
        }
    }

    /// Makes `call`. Errors: a trap, a timeout, or a call of the wrong kind (a host bug).
    pub async fn invoke(&mut self, call: Call<'_>) -> wasmtime::Result<Reply> {
        let store = &mut self.store;
        match (&self.guest, call) {
            (Guest::Auth(g), Call::Authenticate(r)) => g.call_authenticate(store, r).await.map(Reply::Auth),
            (Guest::RateLimit(g), Call::Check(r, i)) => g.call_check(store, r, i).await.map(Reply::RateLimit),
            (Guest::Validation(g), Call::Validate(r, i, b)) => {
                g.call_validate(store, r, i, b).await.map(Reply::Validation)
            }
            (Guest::Logging(g), Call::Observe(e)) => g.call_observe(store, e).await.map(|()| Reply::Observed),
            (Guest::Filter(g), Call::OnRequest(r, i)) => g.call_on_request(store, r, i).await.map(Reply::Filter),
            (Guest::Filter(g), Call::OnResponse(r, i, s)) => {
                g.call_on_response(store, r, i, s).await.map(Reply::Filter)
            }
            _ => Err(wasmtime::format_err!("host bug: call does not match the plugin's kind")),
        }
    }
}
