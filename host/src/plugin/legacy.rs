//! Contract 0.1.0, served: conversions between its generated types and the current
//! contract's, which the rest of the host uses.
//!
//! What differs: 0.1.0 passes the request as a `request-head` record (built here per call from
//! the [`PluginRequest`], headers included), its `identity` has no `authentication` or `claims`
//! (an identity from a 0.1.0 auth plugin gets empty ones; a 0.1.0 plugin is given the identity
//! without them), and its `filter` has no `hooks` (both hooks are called). Every other type has
//! the same shape in both ([`same_shapes!`]).

use super::bindings::portcullis::plugin as cur;
use super::bindings::v1::exports::portcullis::plugin as v1x;
use super::bindings::v1::portcullis::plugin as v1;
use super::request::PluginRequest;
use cur::types::Identity;

use super::bindings::exports::portcullis::plugin as curx;

fn header_from_current(h: cur::types::Header) -> v1::types::Header {
    v1::types::Header { name: h.name, value: h.value }
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
        client_cert: request.client_cert.as_ref().map(client_cert),
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

same_shapes!(v1, v1x);
