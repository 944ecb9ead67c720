//! One trait per plugin kind. Every hook has a default, so a plugin overrides only what it needs
//! (the proxy-wasm `HttpContext` habit: defaults continue).

use serde::de::DeserializeOwned;

use crate::{
    AuthOutcome, Exchange, FilterAction, HeaderEdits, HookSet, RateLimitOutcome, Request, ResponseHead,
    ValidationOutcome,
};

/// What every plugin is: a value built once per plugin instance from its typed configuration.
///
/// The host passes the step's configuration as JSON text; the SDK deserializes it into
/// [`Plugin::Config`] (a serde error becomes a [`ConfigError`](crate::ConfigError) whose
/// `pointer` names the field) and then calls [`Plugin::new`], which may validate further.
/// A refused configuration is reported at load or reload time, never at request time.
pub trait Plugin: Sized + 'static {
    /// The plugin's configuration, deserialized from the step's JSON. Use
    /// `#[serde(deny_unknown_fields)]` so misspelt fields are refused.
    type Config: DeserializeOwned;

    /// Builds the plugin from its configuration, or says which field is wrong and why.
    fn new(config: Self::Config) -> Result<Self, crate::ConfigError>;
}

/// Kind `auth`: establishes who is calling.
pub trait Auth: Plugin {
    /// Called for every request, before the upstream. Default: [`AuthOutcome::Anonymous`].
    fn authenticate(&self, request: &Request<'_>) -> AuthOutcome {
        let _ = request;
        AuthOutcome::Anonymous
    }
}

/// Kind `rate-limit`: decides whether a request fits its quotas.
pub trait RateLimit: Plugin {
    /// Called for every request; the identity of an earlier auth step, if any, is the
    /// request's ([`Request::subject`], [`Request::identity`]). Default: allowed, with no quota
    /// to report.
    fn check(&self, request: &Request<'_>) -> RateLimitOutcome {
        let _ = request;
        RateLimitOutcome::Allowed(Vec::new())
    }
}

/// Kind `validation`: checks a request against rules.
pub trait Validation: Plugin {
    /// Bytes of request body this plugin needs to see; `None` (the default) needs no body.
    fn body_limit(&self) -> Option<u64> {
        None
    }

    /// Called for every request; `body` is the buffered body when [`Validation::body_limit`]
    /// asked for it. Default: [`ValidationOutcome::Valid`].
    fn validate(&self, request: &Request<'_>, body: Option<&[u8]>) -> ValidationOutcome {
        let _ = (request, body);
        ValidationOutcome::Valid
    }
}

/// Kind `logging`: observes each finished exchange, after the response was sent.
pub trait Logging: Plugin {
    /// The header fields (lowercase names) this plugin wants in each [`Exchange`]'s
    /// `request_headers` and `response_headers`, asked once after configuration; `None` (the
    /// default) for every field. Naming them saves copying the rest into every call.
    fn record_headers(&self) -> Option<Vec<String>> {
        None
    }

    /// Called once per exchange, unless [`crate::Plugin::new`] declared with
    /// [`crate::audit_append_each_exchange`] that the host's standard audit record is all this
    /// plugin writes: the host then appends that record itself and never calls `observe`.
    /// Default: does nothing.
    fn observe(&self, exchange: &Exchange) {
        let _ = exchange;
    }
}

/// Kind `filter`: general request and response processing.
///
/// The host calls only the hooks [`Filter::hooks`] names, by default `on_request` alone: a
/// filter that implements [`Filter::on_response`] must say so there, or it is never called.
pub trait Filter: Plugin {
    /// The hooks the host calls on this instance, asked once after configuration. Default:
    /// [`HookSet::ON_REQUEST`]. Return `HookSet::ON_REQUEST | HookSet::ON_RESPONSE` when the
    /// filter implements `on_response`, or `HookSet::ON_RESPONSE` alone for a response-only
    /// filter (the configuration may decide: a filter with nothing to do on responses should
    /// leave it out, saving a plugin call per request).
    fn hooks(&self) -> HookSet {
        HookSet::ON_REQUEST
    }

    /// Called before the upstream. Default: continue with no edits.
    fn on_request(&self, request: &Request<'_>) -> FilterAction {
        let _ = request;
        FilterAction::Continue(HeaderEdits::default())
    }

    /// Called when the upstream's response head arrives, when [`Filter::hooks`] has
    /// [`HookSet::ON_RESPONSE`]. Default: continue with no edits.
    fn on_response(&self, request: &Request<'_>, response: &ResponseHead) -> FilterAction {
        let _ = (request, response);
        FilterAction::Continue(HeaderEdits::default())
    }
}
