//! One plugin instance: a store and the loaded export of its kind, and the typed calls on it.
//!
//! A component built against contract 0.3.0 is called with the request lent as a resource that
//! also answers for the identity; one built against 0.2.0 with the request lent and the
//! identity lowered as a record ([`super::previous`]); one built against 0.1.0 gets a
//! `request-head` record built for the call ([`super::legacy`]).

use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::{Instance as WasmInstance, InstancePre};

use super::bindings::exports::portcullis::plugin::{auth, filter, logging, rate_limit, validation};
use super::bindings::portcullis::plugin::types::{ConfigError, Identity, ResponseHead};
use super::bindings::v1::exports::portcullis::plugin as v1;
use super::bindings::v2::exports::portcullis::plugin as v2;
use super::host::HostState;
use super::legacy;
use super::previous;
use super::request::PluginRequest;
use crate::config::PluginKind;

/// Which contract a component was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `portcullis:plugin@0.1.0`.
    V0_1,
    /// `portcullis:plugin@0.2.0`.
    V0_2,
    /// `portcullis:plugin@0.3.0`, the current one.
    V0_3,
}

impl std::fmt::Display for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Contract::V0_1 => "0.1.0",
            Contract::V0_2 => "0.2.0",
            Contract::V0_3 => "0.3.0",
        })
    }
}

/// The hooks a step's plugin implements: the host calls only these. Only a `filter` of 0.2.0
/// or later reports them (`filter.hooks`); every other plugin has its kind's request hook, and
/// a 0.1.0 filter both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hooks {
    /// The request-phase hook (`authenticate`, `check`, `validate`, `on-request`).
    pub request: bool,
    /// `filter.on-response`.
    pub response: bool,
}

/// Export look-ups of one kind, resolved once per component.
pub(crate) enum KindIndices {
    Auth(auth::GuestIndices),
    RateLimit(rate_limit::GuestIndices),
    Validation(validation::GuestIndices),
    Logging(logging::GuestIndices),
    Filter(filter::GuestIndices),
    V2Auth(v2::auth::GuestIndices),
    V2RateLimit(v2::rate_limit::GuestIndices),
    V2Validation(v2::validation::GuestIndices),
    V2Logging(v2::logging::GuestIndices),
    V2Filter(v2::filter::GuestIndices),
    V1Auth(v1::auth::GuestIndices),
    V1RateLimit(v1::rate_limit::GuestIndices),
    V1Validation(v1::validation::GuestIndices),
    V1Logging(v1::logging::GuestIndices),
    V1Filter(v1::filter::GuestIndices),
}

/// The loaded export of one kind on one instance.
pub(crate) enum Guest {
    Auth(auth::Guest),
    RateLimit(rate_limit::Guest),
    Validation(validation::Guest),
    Logging(logging::Guest),
    Filter(filter::Guest),
    V2Auth(v2::auth::Guest),
    V2RateLimit(v2::rate_limit::Guest),
    V2Validation(v2::validation::Guest),
    V2Logging(v2::logging::Guest),
    V2Filter(v2::filter::Guest),
    V1Auth(v1::auth::Guest),
    V1RateLimit(v1::rate_limit::Guest),
    V1Validation(v1::validation::Guest),
    V1Logging(v1::logging::Guest),
    V1Filter(v1::filter::Guest),
}

/// The identity an earlier auth step established, shared so a call can lend it with the
/// request (contract 0.3.0) without copying it.
pub type SharedIdentity = Arc<Identity>;

/// A call the chain makes, by kind (borrows only, so it is `Copy`). Each hook that is lent the
/// request gets the identity too: 0.3.0 plugins read it from the request, 0.2.0 and 0.1.0 ones
/// as an argument (`authenticate` takes none in any contract).
#[derive(Clone, Copy)]
pub enum Call<'a> {
    /// `auth.authenticate`
    Authenticate(&'a Arc<PluginRequest>, Option<&'a SharedIdentity>),
    /// `rate-limit.check`
    Check(&'a Arc<PluginRequest>, Option<&'a SharedIdentity>),
    /// `validation.validate`
    Validate(&'a Arc<PluginRequest>, Option<&'a SharedIdentity>, Option<&'a [u8]>),
    /// `logging.observe`, after the response was sent. Shared, so the host can render its
    /// record for `audit.append-observed` during the call ([`super::StepPool::call`]).
    Observe(&'a Arc<logging::Exchange>),
    /// `logging.observe` by a fail-closed step, before the response is sent: the call's
    /// `audit.append`s return only once their record is written
    /// ([`super::audit::Sink::append_durably`]), and one that fails fails the step.
    Record(&'a Arc<logging::Exchange>),
    /// `filter.on-request`
    OnRequest(&'a Arc<PluginRequest>, Option<&'a SharedIdentity>),
    /// `filter.on-response`
    OnResponse(&'a Arc<PluginRequest>, Option<&'a SharedIdentity>, &'a ResponseHead),
}

/// What the plugin answered, by kind (in the current contract's types whatever the plugin's).
#[derive(Debug)]
pub enum Reply {
    /// From `authenticate`, boxed: with its identity it is three times the size of any other
    /// reply, and every reply is moved through several frames on each step.
    Auth(Box<auth::AuthOutcome>),
    /// From `check`.
    RateLimit(rate_limit::RateLimitOutcome),
    /// From `validate`.
    Validation(validation::ValidationOutcome),
    /// From `observe`.
    Observed,
    /// From `on-request` or `on-response`.
    Filter(filter::FilterAction),
}

// A reply is moved through several frames on every step: kept to a filter action's size (72
// bytes on 64-bit targets), so a move is a few vector stores, not a `memcpy` call.
const _: () = assert!(std::mem::size_of::<Reply>() <= 80);

/// A reply, with what the call asked of the host besides it.
#[derive(Debug)]
pub struct Replied {
    /// The plugin's answer.
    pub reply: Reply,
    /// Headers to write from secrets into the request sent upstream (`secrets.inject`), in
    /// the order asked.
    pub secret_headers: Vec<crate::secrets::SecretHeader>,
    /// For a [`Call::Record`], why one of its `audit.append`s failed, if one did.
    pub audit_failure: Option<String>,
}

impl From<Reply> for Replied {
    fn from(reply: Reply) -> Self {
        Replied { reply, secret_headers: Vec::new(), audit_failure: None }
    }
}

/// A live instance.
pub(crate) struct Instance {
    pub store: Store<HostState>,
    pub guest: Guest,
    pub uses: u64,
}

// === impl KindIndices ===

impl KindIndices {
    /// Looks up `kind`'s export, of contract 0.3.0, else 0.2.0, else 0.1.0. Errors: the
    /// component exports that interface in none of them (or with other functions); the message
    /// is 0.3.0's.
    pub fn new(kind: PluginKind, pre: &InstancePre<HostState>) -> wasmtime::Result<(Self, Contract)> {
        let current = match kind {
            PluginKind::Auth => auth::GuestIndices::new(pre).map(KindIndices::Auth),
            PluginKind::RateLimit => rate_limit::GuestIndices::new(pre).map(KindIndices::RateLimit),
            PluginKind::Validation => validation::GuestIndices::new(pre).map(KindIndices::Validation),
            PluginKind::Logging => logging::GuestIndices::new(pre).map(KindIndices::Logging),
            PluginKind::Filter => filter::GuestIndices::new(pre).map(KindIndices::Filter),
        };
        let error = match current {
            Ok(indices) => return Ok((indices, Contract::V0_3)),
            Err(e) => e,
        };
        let previous = match kind {
            PluginKind::Auth => v2::auth::GuestIndices::new(pre).map(KindIndices::V2Auth),
            PluginKind::RateLimit => v2::rate_limit::GuestIndices::new(pre).map(KindIndices::V2RateLimit),
            PluginKind::Validation => v2::validation::GuestIndices::new(pre).map(KindIndices::V2Validation),
            PluginKind::Logging => v2::logging::GuestIndices::new(pre).map(KindIndices::V2Logging),
            PluginKind::Filter => v2::filter::GuestIndices::new(pre).map(KindIndices::V2Filter),
        };
        if let Ok(indices) = previous {
            return Ok((indices, Contract::V0_2));
        }
        let legacy = match kind {
            PluginKind::Auth => v1::auth::GuestIndices::new(pre).map(KindIndices::V1Auth),
            PluginKind::RateLimit => v1::rate_limit::GuestIndices::new(pre).map(KindIndices::V1RateLimit),
            PluginKind::Validation => v1::validation::GuestIndices::new(pre).map(KindIndices::V1Validation),
            PluginKind::Logging => v1::logging::GuestIndices::new(pre).map(KindIndices::V1Logging),
            PluginKind::Filter => v1::filter::GuestIndices::new(pre).map(KindIndices::V1Filter),
        };
        legacy.map(|indices| (indices, Contract::V0_1)).map_err(|_| error)
    }

    pub fn load(&self, store: &mut Store<HostState>, instance: &WasmInstance) -> wasmtime::Result<Guest> {
        Ok(match self {
            KindIndices::Auth(i) => Guest::Auth(i.load(store, instance)?),
            KindIndices::RateLimit(i) => Guest::RateLimit(i.load(store, instance)?),
            KindIndices::Validation(i) => Guest::Validation(i.load(store, instance)?),
            KindIndices::Logging(i) => Guest::Logging(i.load(store, instance)?),
            KindIndices::Filter(i) => Guest::Filter(i.load(store, instance)?),
            KindIndices::V2Auth(i) => Guest::V2Auth(i.load(store, instance)?),
            KindIndices::V2RateLimit(i) => Guest::V2RateLimit(i.load(store, instance)?),
            KindIndices::V2Validation(i) => Guest::V2Validation(i.load(store, instance)?),
            KindIndices::V2Logging(i) => Guest::V2Logging(i.load(store, instance)?),
            KindIndices::V2Filter(i) => Guest::V2Filter(i.load(store, instance)?),
            KindIndices::V1Auth(i) => Guest::V1Auth(i.load(store, instance)?),
            KindIndices::V1RateLimit(i) => Guest::V1RateLimit(i.load(store, instance)?),
            KindIndices::V1Validation(i) => Guest::V1Validation(i.load(store, instance)?),
            KindIndices::V1Logging(i) => Guest::V1Logging(i.load(store, instance)?),
            KindIndices::V1Filter(i) => Guest::V1Filter(i.load(store, instance)?),
        })
    }
}

// === impl Instance ===

impl Instance {
    /// `configure(config)` on whichever kind this is.
    pub async fn configure(&mut self, config: &str) -> wasmtime::Result<Result<(), ConfigError>> {
        let store = &mut self.store;
        let legacy = |r: Result<(), super::bindings::v1::portcullis::plugin::types::ConfigError>| {
            r.map_err(legacy::config_error)
        };
        let previous = |r: Result<(), super::bindings::v2::portcullis::plugin::types::ConfigError>| {
            r.map_err(previous::config_error)
        };
        match &self.guest {
            Guest::Auth(g) => g.call_configure(store, config).await,
            Guest::RateLimit(g) => g.call_configure(store, config).await,
            Guest::Validation(g) => g.call_configure(store, config).await,
            Guest::Logging(g) => g.call_configure(store, config).await,
            Guest::Filter(g) => g.call_configure(store, config).await,
            Guest::V2Auth(g) => g.call_configure(store, config).await.map(previous),
            Guest::V2RateLimit(g) => g.call_configure(store, config).await.map(previous),
            Guest::V2Validation(g) => g.call_configure(store, config).await.map(previous),
            Guest::V2Logging(g) => g.call_configure(store, config).await.map(previous),
            Guest::V2Filter(g) => g.call_configure(store, config).await.map(previous),
            Guest::V1Auth(g) => g.call_configure(store, config).await.map(legacy),
            Guest::V1RateLimit(g) => g.call_configure(store, config).await.map(legacy),
            Guest::V1Validation(g) => g.call_configure(store, config).await.map(legacy),
            Guest::V1Logging(g) => g.call_configure(store, config).await.map(legacy),
            Guest::V1Filter(g) => g.call_configure(store, config).await.map(legacy),
        }
    }

    /// `validation.body-limit`, or none for other kinds.
    pub async fn body_limit(&mut self) -> wasmtime::Result<Option<u64>> {
        match &self.guest {
            Guest::Validation(g) => g.call_body_limit(&mut self.store).await,
            Guest::V2Validation(g) => g.call_body_limit(&mut self.store).await,
            Guest::V1Validation(g) => g.call_body_limit(&mut self.store).await,
            _ => Ok(None),
        }
    }

    /// `logging.record-headers` of a 0.2.0 or later logging plugin: the header names it wants in
    /// each exchange record, or none for all (every 0.1.0 logging plugin, and other kinds).
    pub async fn record_headers(&mut self) -> wasmtime::Result<Option<Vec<String>>> {
        match &self.guest {
            Guest::Logging(g) => g.call_record_headers(&mut self.store).await,
            Guest::V2Logging(g) => g.call_record_headers(&mut self.store).await,
            _ => Ok(None),
        }
    }

    /// The hooks to call: `filter.hooks` for a filter of 0.2.0 or later, the kind's otherwise.
    pub async fn hooks(&mut self) -> wasmtime::Result<Hooks> {
        let declared = match &self.guest {
            Guest::Filter(g) => g.call_hooks(&mut self.store).await?,
            Guest::V2Filter(g) => previous::hooks(g.call_hooks(&mut self.store).await?),
            Guest::V1Filter(_) => return Ok(Hooks { request: true, response: true }),
            Guest::Logging(_) | Guest::V2Logging(_) | Guest::V1Logging(_) => {
                return Ok(Hooks { request: false, response: false });
            }
            _ => return Ok(Hooks { request: true, response: false }),
        };
        Ok(Hooks {
            request: declared.contains(filter::HookSet::ON_REQUEST),
            response: declared.contains(filter::HookSet::ON_RESPONSE),
        })
    }

    /// Makes `call`. Errors: a trap, a timeout, or a call of the wrong kind (a host bug).
    pub async fn invoke(&mut self, call: Call<'_>) -> wasmtime::Result<Reply> {
        let lent = match call {
            Call::Authenticate(r, i)
            | Call::Check(r, i)
            | Call::Validate(r, i, _)
            | Call::OnRequest(r, i)
            | Call::OnResponse(r, i, _)
                if self.lends_request() =>
            {
                Some(self.store.data_mut().lend(r, i)?)
            }
            _ => None,
        };
        let reply = self.invoke_lent(call, lent.as_ref()).await;
        if lent.is_some() {
            self.store.data_mut().end_lend();
        }
        reply
    }

    /// Whether the plugin's contract lends the request (0.2.0 and later).
    fn lends_request(&self) -> bool {
        !matches!(
            self.guest,
            Guest::V1Auth(_)
                | Guest::V1RateLimit(_)
                | Guest::V1Validation(_)
                | Guest::V1Logging(_)
                | Guest::V1Filter(_)
        )
    }

    async fn invoke_lent(
        &mut self,
        call: Call<'_>,
        lent: Option<&wasmtime::component::Resource<super::request::RequestView>>,
    ) -> wasmtime::Result<Reply> {
        let store = &mut self.store;
        let handle = || {
            lent.map(|h| {
                wasmtime::component::Resource::<super::bindings::portcullis::plugin::types::Request>::new_borrow(
                    h.rep(),
                )
            })
            .ok_or_else(|| wasmtime::format_err!("host bug: request not lent"))
        };
        match (&self.guest, call) {
            (Guest::Auth(g), Call::Authenticate(..)) => {
                g.call_authenticate(store, handle()?).await.map(|o| Reply::Auth(Box::new(o)))
            }
            (Guest::RateLimit(g), Call::Check(..)) => g.call_check(store, handle()?).await.map(Reply::RateLimit),
            (Guest::Validation(g), Call::Validate(_, _, b)) => {
                g.call_validate(store, handle()?, b).await.map(Reply::Validation)
            }
            (Guest::Logging(g), Call::Observe(e) | Call::Record(e)) => {
                g.call_observe(store, e).await.map(|()| Reply::Observed)
            }
            (Guest::Filter(g), Call::OnRequest(..)) => g.call_on_request(store, handle()?).await.map(Reply::Filter),
            (Guest::Filter(g), Call::OnResponse(_, _, s)) => {
                g.call_on_response(store, handle()?, s).await.map(Reply::Filter)
            }
            // Boxed: the older contracts' calls hold converted records across their await,
            // which would make every call's future (moved on every step) as large as theirs.
            _ => {
                let lent = lent.map(|h| wasmtime::component::Resource::new_borrow(h.rep()));
                Box::pin(self.invoke_previous(call, lent)).await
            }
        }
    }

    /// A call on a component built against 0.2.0: the request lent as for 0.3.0 (`lent`), the
    /// identity and the other records converted to its types, its reply to the current ones.
    /// 0.1.0 calls go on to [`Self::invoke_legacy`].
    async fn invoke_previous(
        &mut self,
        call: Call<'_>,
        lent: Option<wasmtime::component::Resource<super::bindings::v2::portcullis::plugin::types::Request>>,
    ) -> wasmtime::Result<Reply> {
        let store = &mut self.store;
        let handle = || lent.ok_or_else(|| wasmtime::format_err!("host bug: request not lent"));
        let v2_identity = |i: Option<&SharedIdentity>| i.map(|i| previous::identity(i));
        match (&self.guest, call) {
            (Guest::V2Auth(g), Call::Authenticate(..)) => {
                let outcome = g.call_authenticate(store, handle()?).await?;
                Ok(Reply::Auth(Box::new(previous::auth_outcome(outcome))))
            }
            (Guest::V2RateLimit(g), Call::Check(_, i)) => {
                let outcome = g.call_check(store, handle()?, v2_identity(i).as_ref()).await?;
                Ok(Reply::RateLimit(previous::rate_limit_outcome(outcome)))
            }
            (Guest::V2Validation(g), Call::Validate(_, i, b)) => {
                let outcome = g.call_validate(store, handle()?, v2_identity(i).as_ref(), b).await?;
                Ok(Reply::Validation(previous::validation_outcome(outcome)))
            }
            (Guest::V2Logging(g), Call::Observe(e) | Call::Record(e)) => {
                g.call_observe(store, &previous::exchange(e)).await.map(|()| Reply::Observed)
            }
            (Guest::V2Filter(g), Call::OnRequest(_, i)) => {
                let action = g.call_on_request(store, handle()?, v2_identity(i).as_ref()).await?;
                Ok(Reply::Filter(previous::filter_action(action)))
            }
            (Guest::V2Filter(g), Call::OnResponse(_, i, s)) => {
                let seen = previous::response_head(s);
                let action = g.call_on_response(store, handle()?, v2_identity(i).as_ref(), &seen).await?;
                Ok(Reply::Filter(previous::filter_action(action)))
            }
            _ => self.invoke_legacy(call).await,
        }
    }

    /// A call on a component built against 0.1.0: the request head and identity converted to
    /// its records, its reply to the current ones.
    async fn invoke_legacy(&mut self, call: Call<'_>) -> wasmtime::Result<Reply> {
        let store = &mut self.store;
        let v1_identity = |i: Option<&SharedIdentity>| i.map(|i| legacy::identity(i));
        match (&self.guest, call) {
            (Guest::V1Auth(g), Call::Authenticate(r, _)) => {
                let head = legacy::request_head(r);
                g.call_authenticate(store, &head).await.map(|o| Reply::Auth(Box::new(legacy::auth_outcome(o))))
            }
            (Guest::V1RateLimit(g), Call::Check(r, i)) => {
                let head = legacy::request_head(r);
                let outcome = g.call_check(store, &head, v1_identity(i).as_ref()).await?;
                Ok(Reply::RateLimit(legacy::rate_limit_outcome(outcome)))
            }
            (Guest::V1Validation(g), Call::Validate(r, i, b)) => {
                let head = legacy::request_head(r);
                let outcome = g.call_validate(store, &head, v1_identity(i).as_ref(), b).await?;
                Ok(Reply::Validation(legacy::validation_outcome(outcome)))
            }
            (Guest::V1Logging(g), Call::Observe(e) | Call::Record(e)) => {
                g.call_observe(store, &legacy::exchange(e)).await.map(|()| Reply::Observed)
            }
            (Guest::V1Filter(g), Call::OnRequest(r, i)) => {
                let head = legacy::request_head(r);
                let action = g.call_on_request(store, &head, v1_identity(i).as_ref()).await?;
                Ok(Reply::Filter(legacy::filter_action(action)))
            }
            (Guest::V1Filter(g), Call::OnResponse(r, i, s)) => {
                let head = legacy::request_head(r);
                let seen = legacy::response_head(s);
                let action = g.call_on_response(store, &head, v1_identity(i).as_ref(), &seen).await?;
                Ok(Reply::Filter(legacy::filter_action(action)))
            }
            _ => Err(wasmtime::format_err!("host bug: call does not match the plugin's kind")),
        }
    }
}
