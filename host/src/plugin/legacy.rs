//! Contract 0.1.0, served: conversions between its generated types and 0.2.0's, which the rest
//! of the host uses.
//!
//! What differs: 0.1.0 passes the request as a `request-head` record (built here per call from
//! the [`PluginRequest`], headers included), its `identity` has no `authentication` or `claims`
//! (an identity from a 0.1.0 auth plugin gets empty ones; a 0.1.0 plugin is given the identity
//! without them), and its `filter` has no `hooks` (both hooks are called). Every other type has
//! the same shape in both.

use super::bindings::portcullis::plugin as cur;
use super::bindings::v1::exports::portcullis::plugin as v1x;
use super::bindings::v1::portcullis::plugin as v1;
use super::request::PluginRequest;
use cur::types::Identity;

use super::bindings::exports::portcullis::plugin as curx;

fn header(h: &cur::types::Header) -> v1::types::Header {
    v1::types::Header { name: h.name.clone(), value: h.value.clone() }
}

fn header_from_current(h: cur::types::Header) -> v1::types::Header {
    v1::types::Header { name: h.name, value: h.value }
}

fn header_from(h: v1::types::Header) -> cur::types::Header {
    cur::types::Header { name: h.name, value: h.value }
}

/// The 0.1.0 `request-head` for `request` (every header copied, as 0.1.0 did).
pub(crate) fn request_head(request: &PluginRequest) -> v1::types::RequestHead {
    v1::types::RequestHead {
        method: request.method.as_str().to_owned(),
        scheme: request.scheme.to_owned(),
        authority: request.authority.clone(),
        path: request.path.clone(),
        query: request.query.clone(),
        headers: request
            .headers
            .iter()
            .map(|(name, value)| header_from_current(crate::proxy::headers::wit_header(name, value)))
            .collect(),
        client_ip: request.client_ip.clone(),
        client_cert: request.client_cert.as_ref().map(|c| v1::types::ClientCert {
            subject: c.subject.clone(),
            dns_names: c.dns_names.clone(),
            uris: c.uris.clone(),
            sha256: c.sha256.clone(),
        }),
        request_id: request.request_id.clone(),
        route: request.route.to_string(),
    }
}

/// `identity` without what 0.1.0 lacks.
pub(crate) fn identity(identity: &Identity) -> v1::types::Identity {
    v1::types::Identity {
        subject: identity.subject.clone(),
        issuer: identity.issuer.clone(),
        roles: identity.roles.clone(),
        scopes: identity.scopes.clone(),
    }
}

/// A 0.1.0 identity, with no authentication facts or claims.
fn identity_from(identity: v1::types::Identity) -> Identity {
    Identity { issuer: identity.issuer, scopes: identity.scopes, ..Identity::new(identity.subject, identity.roles) }
}

pub(crate) fn response_head(head: &cur::types::ResponseHead) -> v1::types::ResponseHead {
    v1::types::ResponseHead { status: head.status, headers: head.headers.iter().map(header).collect() }
}

pub(crate) fn config_error(e: v1::types::ConfigError) -> cur::types::ConfigError {
    cur::types::ConfigError { pointer: e.pointer, message: e.message }
}

fn local_response(r: v1::types::LocalResponse) -> cur::types::LocalResponse {
    cur::types::LocalResponse {
        status: r.status,
        headers: r.headers.into_iter().map(header_from).collect(),
        body: r.body,
    }
}

fn header_edits(e: v1::types::HeaderEdits) -> cur::types::HeaderEdits {
    cur::types::HeaderEdits {
        remove: e.remove,
        set: e.set.into_iter().map(header_from).collect(),
        append: e.append.into_iter().map(header_from).collect(),
    }
}

pub(crate) fn auth_outcome(o: v1x::auth::AuthOutcome) -> curx::auth::AuthOutcome {
    use curx::auth::{AuthOutcome, Authenticated};
    match o {
        v1x::auth::AuthOutcome::Authenticated(a) => AuthOutcome::Authenticated(Authenticated {
            identity: identity_from(a.identity),
            remove_headers: a.remove_headers,
            remove_query_params: a.remove_query_params,
        }),
        v1x::auth::AuthOutcome::Anonymous => AuthOutcome::Anonymous,
        v1x::auth::AuthOutcome::Denied(r) => AuthOutcome::Denied(local_response(r)),
    }
}

fn quota(q: v1x::rate_limit::Quota) -> curx::rate_limit::Quota {
    curx::rate_limit::Quota {
        policy: q.policy,
        limit: q.limit,
        window_ms: q.window_ms,
        remaining: q.remaining,
        reset_ms: q.reset_ms,
    }
}

pub(crate) fn rate_limit_outcome(o: v1x::rate_limit::RateLimitOutcome) -> curx::rate_limit::RateLimitOutcome {
    use curx::rate_limit::{Limited, RateLimitOutcome};
    match o {
        v1x::rate_limit::RateLimitOutcome::Allowed(q) => RateLimitOutcome::Allowed(q.into_iter().map(quota).collect()),
        v1x::rate_limit::RateLimitOutcome::Limited(l) => RateLimitOutcome::Limited(Limited {
            quotas: l.quotas.into_iter().map(quota).collect(),
            retry_after_ms: l.retry_after_ms,
        }),
    }
}

pub(crate) fn validation_outcome(o: v1x::validation::ValidationOutcome) -> curx::validation::ValidationOutcome {
    use curx::validation::{Invalid, ValidationOutcome, Violation};
    match o {
        v1x::validation::ValidationOutcome::Valid => ValidationOutcome::Valid,
        v1x::validation::ValidationOutcome::Invalid(i) => ValidationOutcome::Invalid(Invalid {
            malformed: i.malformed,
            violations: i
                .violations
                .into_iter()
                .map(|v| Violation { pointer: v.pointer, message: v.message })
                .collect(),
        }),
    }
}

pub(crate) fn filter_action(a: v1x::filter::FilterAction) -> curx::filter::FilterAction {
    match a {
        v1x::filter::FilterAction::Continue(e) => curx::filter::FilterAction::Continue(header_edits(e)),
        v1x::filter::FilterAction::Respond(r) => curx::filter::FilterAction::Respond(local_response(r)),
    }
}

/// The exchange record as 0.1.0's `logging.observe` takes it.
pub(crate) fn exchange(e: &curx::logging::Exchange) -> v1x::logging::Exchange {
    v1x::logging::Exchange {
        request_id: e.request_id.clone(),
        route: e.route.clone(),
        method: e.method.clone(),
        authority: e.authority.clone(),
        path: e.path.clone(),
        query: e.query.clone(),
        client_ip: e.client_ip.clone(),
        identity: e.identity.as_ref().map(identity),
        status: e.status,
        start_ms: e.start_ms,
        duration_us: e.duration_us,
        bytes_in: e.bytes_in,
        bytes_out: e.bytes_out,
        request_headers: e.request_headers.iter().map(header).collect(),
        response_headers: e.response_headers.iter().map(header).collect(),
        endpoint: e.endpoint.clone(),
        decisions: e
            .decisions
            .iter()
            .map(|d| v1x::logging::StepDecision {
                plugin: d.plugin.clone(),
                phase: match d.phase {
                    curx::logging::Phase::Request => v1x::logging::Phase::Request,
                    curx::logging::Phase::Response => v1x::logging::Phase::Response,
                },
                decision: d.decision.clone(),
                duration_us: d.duration_us,
            })
            .collect(),
    }
}

/// 0.1.0's outbound request, in 0.2.0's type (the same shape).
pub(crate) fn outbound_request(r: v1::http_client::OutboundRequest) -> cur::http_client::OutboundRequest {
    cur::http_client::OutboundRequest {
        method: r.method,
        url: r.url,
        headers: r.headers.into_iter().map(header_from).collect(),
        body: r.body,
        timeout_ms: r.timeout_ms,
    }
}

/// 0.2.0's outbound result, in 0.1.0's types (the same shape).
pub(crate) fn outbound_result(
    r: Result<cur::http_client::OutboundResponse, cur::http_client::HttpError>,
) -> Result<v1::http_client::OutboundResponse, v1::http_client::HttpError> {
    use cur::http_client::HttpError as E;
    use v1::http_client::HttpError as O;
    match r {
        Ok(r) => Ok(v1::http_client::OutboundResponse {
            status: r.status,
            headers: r.headers.iter().map(header).collect(),
            body: r.body,
        }),
        Err(e) => Err(match e {
            E::NotAllowed(s) => O::NotAllowed(s),
            E::InvalidRequest(s) => O::InvalidRequest(s),
            E::Connect(s) => O::Connect(s),
            E::Timeout => O::Timeout,
            E::TooLarge => O::TooLarge,
        }),
    }
}
