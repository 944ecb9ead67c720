//! Contract 0.2.0, served: conversions between its generated types and the current
//! contract's (0.3.0), which the rest of the host uses.
//!
//! What differs: 0.2.0's hooks take the identity as an `option<identity>` record, lowered into
//! every call whether the plugin reads it or not; 0.3.0's read it from the lent request. Every
//! record has the same shape in both ([`same_shapes!`]), the identity included.

use super::bindings::portcullis::plugin as cur;
use super::bindings::v2::exports::portcullis::plugin as v2x;
use super::bindings::v2::portcullis::plugin as v2;
use cur::types::Identity;

use super::bindings::exports::portcullis::plugin as curx;

/// `identity` in 0.2.0's record.
pub(crate) fn identity(identity: &Identity) -> v2::types::Identity {
    v2::types::Identity {
        subject: identity.subject.clone(),
        issuer: identity.issuer.clone(),
        roles: identity.roles.clone(),
        scopes: identity.scopes.clone(),
        authentication: v2::types::Authentication {
            acr: identity.authentication.acr.clone(),
            amr: identity.authentication.amr.clone(),
            auth_time: identity.authentication.auth_time,
        },
        claims: identity
            .claims
            .iter()
            .map(|c| v2::types::Claim { name: c.name.clone(), json: c.json.clone() })
            .collect(),
    }
}

/// A 0.2.0 identity in the current record.
fn identity_from(identity: v2::types::Identity) -> Identity {
    Identity {
        subject: identity.subject,
        issuer: identity.issuer,
        roles: identity.roles,
        scopes: identity.scopes,
        authentication: cur::types::Authentication {
            acr: identity.authentication.acr,
            amr: identity.authentication.amr,
            auth_time: identity.authentication.auth_time,
        },
        claims: identity.claims.into_iter().map(|c| cur::types::Claim { name: c.name, json: c.json }).collect(),
    }
}

/// 0.2.0's hook set, in the current flags.
pub(crate) fn hooks(set: v2x::filter::HookSet) -> curx::filter::HookSet {
    let mut hooks = curx::filter::HookSet::empty();
    if set.contains(v2x::filter::HookSet::ON_REQUEST) {
        hooks |= curx::filter::HookSet::ON_REQUEST;
    }
    if set.contains(v2x::filter::HookSet::ON_RESPONSE) {
        hooks |= curx::filter::HookSet::ON_RESPONSE;
    }
    hooks
}

same_shapes!(v2, v2x);
