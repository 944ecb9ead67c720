//! Registered-claim checks (RFC 7519 §4.1) and the identity they yield.

use portcullis_sdk::Identity;
use serde_json::Value;

use crate::verified::Window;
use crate::{Issuer, Refusal};

/// Checks `claims` for `config`'s issuer at `now_s`, allowing `leeway_seconds` of clock skew,
/// and builds the identity.
pub(crate) fn check(config: &Issuer, leeway_seconds: u64, claims: &Value, now_s: i64) -> Result<Identity, Refusal> {
    let leeway = i64::try_from(leeway_seconds).unwrap_or(i64::MAX);
    let exp = numeric_date(claims, "exp")?.ok_or(Refusal::ClaimsRejected)?;
    if now_s > exp.saturating_add(leeway) {
        return Err(Refusal::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && now_s.saturating_add(leeway) < nbf
    {
        return Err(Refusal::NotYetValid);
    }
    if let Some(iat) = numeric_date(claims, "iat")?
        && now_s.saturating_add(leeway) < iat
    {
        return Err(Refusal::NotYetValid);
    }
    let issuer = claims.get("iss").and_then(Value::as_str).ok_or(Refusal::ClaimsRejected)?;
    if issuer != config.issuer {
        return Err(Refusal::ClaimsRejected);
    }
    if !config.audiences.is_empty() {
        let accepted = |a: &str| config.audiences.iter().any(|want| want == a);
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => accepted(a),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).any(accepted),
            _ => false,
        };
        if !ok {
            return Err(Refusal::ClaimsRejected);
        }
    }
    if config.required_claims.iter().any(|c| claims.get(c).is_none_or(Value::is_null)) {
        return Err(Refusal::ClaimsRejected);
    }
    let subject = claims.get("sub").and_then(Value::as_str).filter(|s| !s.is_empty()).ok_or(Refusal::ClaimsRejected)?;
    let roles = lookup(claims, &config.roles_claim).map(strings).unwrap_or_default();
    let scopes = claims.get("scope").or_else(|| claims.get("scp")).map(strings).unwrap_or_default();
    // How the subject authenticated (OpenID Connect Core §2), for step-up policies (RFC 9470).
    let acr = claims.get("acr").and_then(Value::as_str).map(str::to_owned);
    let amr = claims.get("amr").map(strings).unwrap_or_default();
    let auth_time = numeric_date(claims, "auth_time")?.and_then(|t| u64::try_from(t).ok());
    Ok(Identity::new(subject)
        .with_issuer(issuer)
        .with_roles(roles)
        .with_scopes(scopes)
        .with_authentication(acr, amr, auth_time))
}

/// The seconds in which claims that passed [`check`] keep passing it: from `nbf` and `iat`
/// (the later, minus the leeway) to `exp` plus the leeway.
pub(crate) fn window(leeway_seconds: u64, claims: &Value) -> Window {
    let leeway = i64::try_from(leeway_seconds).unwrap_or(i64::MAX);
    let date = |name| numeric_date(claims, name).ok().flatten();
    let from_s = date("nbf").max(date("iat")).map_or(i64::MIN, |t| t.saturating_sub(leeway));
    let until_s = date("exp").map_or(i64::MIN, |t| t.saturating_add(leeway));
    Window { from_s, until_s }
}

/// A NumericDate claim (RFC 7519 §2): absent, or a JSON number of seconds. Any other type is
/// refused rather than skipped.
fn numeric_date(claims: &Value, name: &str) -> Result<Option<i64>, Refusal> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f.floor() as i64))
            .map(Some)
            .ok_or(Refusal::ClaimsRejected),
        Some(_) => Err(Refusal::ClaimsRejected),
    }
}

/// The value at a dotted path, e.g. `realm_access.roles`.
fn lookup<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(claims, |v, key| v.get(key))
}

/// An array of strings, or one string split on spaces and commas.
fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Value::String(s) => s.split([' ', ',']).filter(|p| !p.is_empty()).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}
