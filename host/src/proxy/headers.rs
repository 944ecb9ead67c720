//! Header hygiene on the proxy path (RFC 9110 §7.6.1) and the conversion of plugin-supplied
//! header edits, which are untrusted input.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::plugin::bindings::portcullis::plugin::types::{Header, HeaderEdits, Identity};

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1, RFC 9112 §9.6),
/// plus `content-length`: hyper re-frames every forwarded body from its size, so the client's
/// framing is never passed on as is (a desync defence: FIELD-NOTES on `Transfer-Encoding:
/// ,chunked`).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// `x-request-id`: the request's id, kept from a sane client value or made up, sent upstream and
/// back to the client.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// W3C Trace Context `traceparent` (§3.2).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// W3C Trace Context `tracestate` (§3.3).
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Whether `name` is one of the fixed hop-by-hop fields (not counting those a `Connection`
/// field names).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// Where `name` stands in [`HOP_BY_HOP`], with `content-length` as 9: a match on the name's
/// text (a length switch, then one comparison at most) instead of comparing `HeaderName`s nine
/// times over, which callgrind put at about 1.3 k instructions per request on each side.
fn framing_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        "content-length" => 9,
        _ => return None,
    })
}

/// Whether a `Connection` option (any case) names one of the [`HOP_BY_HOP`] or framing fields,
/// which their own bit removes.
fn is_framing_option(option: &str) -> bool {
    let mut lower = [0u8; 24];
    let Some(buf) = lower.get_mut(..option.len()) else { return false };
    buf.copy_from_slice(option.as_bytes());
    buf.make_ascii_lowercase();
    std::str::from_utf8(buf).is_ok_and(|name| framing_index(name).is_some())
}

/// What [`strip_inbound`]'s pass found to remove: `framing` has bit `i` for
/// [`framing_index`] `i`.
#[derive(Debug, Default, Clone, Copy)]
struct Found {
    framing: u16,
    identity: bool,
    trace_context: bool,
}

/// Removes hop-by-hop fields, every field named in `Connection`, and `content-length`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let framing = headers.keys().filter_map(|name| framing_index(name.as_str())).fold(0, |bits, i| bits | 1 << i);
    remove_framing(headers, framing);
}

/// What a client's request loses before any plugin or the upstream sees it, in one pass over
/// the names present: the hop-by-hop and framing fields ([`strip_hop_by_hop`]), every
/// client-supplied copy of the identity headers ([`IdentityHeaders::strip`]), and the W3C
/// `traceparent` and `tracestate` unless `keep_trace_context` (the listener accepts trace
/// context from this peer). A hashed removal is made only for a name that is there.
///
/// Returns whether trace context was kept: a `traceparent` or `tracestate` field is there
/// and `keep_trace_context` (without one there is nothing to extract).
pub fn strip_inbound(headers: &mut HeaderMap, ids: &IdentityHeaders, keep_trace_context: bool) -> bool {
    let mut found = Found::default();
    for name in headers.keys() {
        let text = name.as_str();
        if let Some(i) = framing_index(text) {
            found.framing |= 1 << i;
            continue;
        }
        found.trace_context |= matches!(text, "traceparent" | "tracestate");
        found.identity |= ids.is_reserved(name);
    }
    remove_framing(headers, found.framing);
    if found.identity {
        ids.strip(headers);
    }
    if found.trace_context && !keep_trace_context {
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
    }
    found.trace_context && keep_trace_context
}

/// Removes the fields of `framing` (bits of [`framing_index`]) and those a `Connection` field
/// names.
fn remove_framing(headers: &mut HeaderMap, framing: u16) {
    // The usual field, an upstream's `Connection: keep-alive`, names only a field removed
    // below: no options to split or `HeaderName` to build (a custom one copies its bytes).
    let usual = || {
        let mut values = headers.get_all(header::CONNECTION).iter();
        values.next().is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"keep-alive")) && values.next().is_none()
    };
    if framing & 1 != 0 && !usual() {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|option| !is_framing_option(option))
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        for name in &named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if framing & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if framing & (1 << 9) != 0 {
        headers.remove(header::CONTENT_LENGTH);
    }
}

/// The client's `x-request-id` when it is 1..=128 characters of `[A-Za-z0-9._:-]`, else a new
/// UUID v4.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        })
        .map_or_else(
            || {
                // Encoded straight into a buffer, not through `Display` (`to_string`): 0.1 k
                // fewer instructions per request (callgrind).
                let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
                uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text).to_owned()
            },
            str::to_owned,
        )
}

/// Header names carrying the verified identity upstream.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    /// Subject header, `x-user-id` by default.
    pub subject: HeaderName,
    /// Roles header (comma-separated), `x-user-roles` by default.
    pub roles: HeaderName,
    /// Scopes header (space-separated), `x-user-scopes` by default.
    pub scopes: HeaderName,
    /// Issuer header, `x-user-issuer` by default.
    pub issuer: HeaderName,
    /// Further client headers always removed.
    pub strip: Vec<HeaderName>,
}

// === impl IdentityHeaders ===

impl IdentityHeaders {
    fn all(&self) -> impl Iterator<Item = &HeaderName> {
        [&self.subject, &self.roles, &self.scopes, &self.issuer].into_iter().chain(self.strip.iter())
    }

    /// Whether `name` is one of the reserved identity headers.
    pub fn is_reserved(&self, name: &HeaderName) -> bool {
        self.all().any(|n| n == name)
    }

    /// Removes every client-supplied copy of the identity headers. Runs before the chain, on
    /// every request, so a client can never assert an identity.
    pub fn strip(&self, headers: &mut HeaderMap) {
        for name in self.all() {
            headers.remove(name);
        }
    }

    /// Sets the identity headers from `identity`, which [`check_identity`] accepted (a value
    /// that still cannot be a header value is left out and logged).
    pub fn inject(&self, headers: &mut HeaderMap, identity: &Identity) {
        let mut put = |name: &HeaderName, value: &str| match HeaderValue::from_str(value) {
            Ok(v) => {
                headers.insert(name.clone(), v);
            }
            Err(_) => tracing::warn!(header = %name, "identity value is not a valid header value; not sent"),
        };
        put(&self.subject, &identity.subject);
        if !identity.roles.is_empty() {
            put(&self.roles, &identity.roles.join(","));
        }
        if !identity.scopes.is_empty() {
            put(&self.scopes, &identity.scopes.join(" "));
        }
        if let Some(issuer) = &identity.issuer {
            put(&self.issuer, issuer);
        }
    }
}

/// Checks that an auth step's identity reaches the upstream exactly as the chain saw it, for
/// every auth plugin alike. The subject and issuer must be field values (RFC 9110 §5.5:
/// visible ASCII with interior spaces, not at either end; non-ASCII is refused rather than
/// sent as `obs-text`). A role must be such a value without `,`, the roles header's
/// separator; a scope must be an RFC 6749 §3.3 `scope-token` (no space, `"` or `\`). Without
/// this, a role `guest,admin` that rbac compared as one string would reach the upstream as
/// two roles.
///
/// Errors: the first offending field and value, for the step's invalid-output failure.
pub fn check_identity(identity: &Identity) -> Result<(), String> {
    fn field_value(v: &str) -> bool {
        !v.is_empty()
            && !v.starts_with([' ', '\t'])
            && !v.ends_with([' ', '\t'])
            && v.bytes().all(|b| b.is_ascii_graphic() || b == b' ' || b == b'\t')
    }
    let refuse = |what: &str, v: &str| Err(format!("identity {what} {v:.64?} cannot be sent upstream as it is"));
    if !field_value(&identity.subject) {
        return refuse("subject", &identity.subject);
    }
    if let Some(issuer) = identity.issuer.as_deref().filter(|i| !field_value(i)) {
        return refuse("issuer", issuer);
    }
    if let Some(role) = identity.roles.iter().find(|r| !field_value(r) || r.contains(',')) {
        return refuse("role (no `,`: the roles header's separator)", role);
    }
    let scope_token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if let Some(scope) = identity.scopes.iter().find(|s| !scope_token(s)) {
        return refuse("scope (an RFC 6749 scope-token)", scope);
    }
    Ok(())
}

/// Why a plugin-supplied header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderRefused {
    /// Not a valid field name (RFC 9110 §5.1 token).
    #[error("invalid header name {0:?}")]
    Name(String),
    /// Contains CR, LF, NUL or another forbidden byte.
    #[error("invalid value for header `{0}`")]
    Value(String),
    /// A hop-by-hop, framing, `host` or identity header, which only the host sets.
    #[error("header `{0}` is reserved to the gateway")]
    Reserved(String),
}

/// Converts one plugin header, refusing invalid names and values and reserved names.
pub fn plugin_header(
    h: &Header,
    identity: Option<&IdentityHeaders>,
) -> Result<(HeaderName, HeaderValue), HeaderRefused> {
    let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| HeaderRefused::Name(h.name.clone()))?;
    check_not_reserved(&name, identity)?;
    let value = HeaderValue::from_str(&h.value).map_err(|_| HeaderRefused::Value(h.name.clone()))?;
    Ok((name, value))
}

/// Whether `name` is a field the host owns: hop-by-hop fields, `content-length`, `host`, and
/// (given `identity`) the identity headers. Plugins can neither edit nor inject them.
///
/// Errors: [`HeaderRefused::Reserved`] naming the field.
pub(crate) fn check_not_reserved(name: &HeaderName, identity: Option<&IdentityHeaders>) -> Result<(), HeaderRefused> {
    let reserved = HOP_BY_HOP.contains(name)
        || name == header::CONTENT_LENGTH
        || name == header::HOST
        || identity.is_some_and(|i| i.is_reserved(name));
    if reserved { Err(HeaderRefused::Reserved(name.to_string())) } else { Ok(()) }
}

/// Applies plugin `edits` to `headers` (remove, then set, then append), all or nothing.
///
/// Errors: the first refused header; `headers` is then unchanged.
pub fn apply_edits(
    headers: &mut HeaderMap,
    edits: &HeaderEdits,
    identity: Option<&IdentityHeaders>,
) -> Result<(), HeaderRefused> {
    let remove = edits
        .remove
        .iter()
        .map(|n| {
            let name = HeaderName::from_bytes(n.as_bytes()).map_err(|_| HeaderRefused::Name(n.clone()))?;
            check_not_reserved(&name, identity).map(|()| name)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let set = edits.set.iter().map(|h| plugin_header(h, identity)).collect::<Result<Vec<_>, _>>()?;
    let append = edits.append.iter().map(|h| plugin_header(h, identity)).collect::<Result<Vec<_>, _>>()?;
    for name in remove {
        headers.remove(name);
    }
    for (name, value) in set {
        headers.insert(name, value);
    }
    for (name, value) in append {
        headers.append(name, value);
    }
    Ok(())
}

/// `uri` without the query parameters named in `names` (compared with their names as sent and
/// percent-decoded), keeping every other parameter in order. The query goes away when it ends
/// up empty.
pub fn strip_query_params(uri: &http::Uri, names: &[String]) -> http::Uri {
    let Some(query) = uri.query() else { return uri.clone() };
    let path_and_query = match strip_query(query, names) {
        Some(kept) => format!("{}?{kept}", uri.path()),
        None => uri.path().to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path_and_query.parse().ok().or(parts.path_and_query);
    http::Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// `query` (without `?`) without the parameters named in `names`, as [`strip_query_params`]
/// compares them; none when no parameter is left.
pub fn strip_query(query: &str, names: &[String]) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(k, _)| k);
            let decoded = percent_decode(name);
            !names.iter().any(|n| n == name || decoded.as_deref() == Some(n.as_str()))
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// `%XX` and `+` decoding of a query component; none when the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The header section as WIT records: lowercase names, values as UTF-8 (invalid bytes replaced
/// by U+FFFD, as the WIT documents).
pub fn to_wit(headers: &HeaderMap) -> Vec<Header> {
    headers.iter().map(|(name, value)| wit_header(name, value)).collect()
}

/// One field as a WIT record; invalid UTF-8 in the value becomes U+FFFD, as the contract says.
pub fn wit_header(name: &HeaderName, value: &HeaderValue) -> Header {
    Header { name: name.as_str().to_owned(), value: value_text(value) }
}

/// A field value as text, invalid UTF-8 sequences replaced by U+FFFD (what the contract
/// promises a plugin). Checked with `str::from_utf8` first, which takes ASCII a word at a
/// time: `String::from_utf8_lossy` decodes character by character even when nothing needs
/// replacing, about 7 instructions a byte, and a bearer token is 600 bytes or more.
pub fn value_text(value: &HeaderValue) -> String {
    match std::str::from_utf8(value.as_bytes()) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(value.as_bytes()).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_lent_as_text_with_invalid_utf8_replaced() {
        let text = |bytes: &[u8]| value_text(&HeaderValue::from_bytes(bytes).unwrap());
        assert_eq!(text(b"Bearer eyJ.a-b_c"), "Bearer eyJ.a-b_c");
        // obs-text (RFC 9110, section 5.5) that is UTF-8 comes through as it is.
        assert_eq!(text("caf\u{e9} \u{2713}".as_bytes()), "caf\u{e9} \u{2713}");
        assert_eq!(text(b"a\xffb\xc3"), "a\u{fffd}b\u{fffd}");
        assert_eq!(text(b"tab\there"), "tab\there");
    }

    fn identity_headers() -> IdentityHeaders {
        IdentityHeaders {
            subject: HeaderName::from_static("x-user-id"),
            roles: HeaderName::from_static("x-user-roles"),
            scopes: HeaderName::from_static("x-user-scopes"),
            issuer: HeaderName::from_static("x-user-issuer"),
            strip: vec![],
        }
    }

    #[test]
    fn check_identity_refuses_values_the_identity_headers_cannot_carry_faithfully() {
        let identity = |subject: &str, roles: &[&str], scopes: &[&str]| Identity {
            issuer: Some("https://issuer.example".into()),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Identity::new(subject, roles.iter().map(|r| r.to_string()).collect())
        };
        assert!(check_identity(&identity("alice", &["reader", "team lead"], &["orders:read"])).is_ok());
        let refused = [
            identity("", &[], &[]),
            identity(" alice", &[], &[]),
            identity("al\nice", &[], &[]),
            identity("alïce", &[], &[]),
            identity("alice", &["reader", "guest,admin"], &[]),
            identity("alice", &[""], &[]),
            identity("alice", &[], &["orders:read orders:write"]),
            identity("alice", &[], &["a\"b"]),
        ];
        for bad in refused {
            assert!(check_identity(&bad).is_err(), "{bad:?}");
        }
        let mut bad_issuer = identity("alice", &[], &[]);
        bad_issuer.issuer = Some("iss\r\nx-user-id: root".into());
        assert!(check_identity(&bad_issuer).unwrap_err().contains("issuer"));
    }

    #[test]
    fn strip_hop_by_hop_removes_connection_named_and_framing_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static(",chunked"));
        h.insert("content-length", HeaderValue::from_static("5"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn a_lone_keep_alive_option_takes_the_short_way_and_any_other_option_still_names_a_field() {
        let strip = |connection: &[&str]| {
            let mut h = HeaderMap::new();
            for value in connection {
                h.append("connection", HeaderValue::from_str(value).unwrap());
            }
            h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            h.insert("x-secret", HeaderValue::from_static("1"));
            h.insert("x-keep", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h);
            let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
            left.sort_unstable();
            left.join(" ")
        };
        assert_eq!(strip(&["keep-alive"]), "x-keep x-secret");
        assert_eq!(strip(&["Keep-Alive"]), "x-keep x-secret");
        // The same option with another, in one field or in a second one: that one is removed.
        assert_eq!(strip(&["Keep-Alive, x-secret"]), "x-keep");
        assert_eq!(strip(&["keep-alive", "x-secret"]), "x-keep");
        assert_eq!(strip(&["x-secret", "keep-alive"]), "x-keep");
    }

    #[test]
    fn request_id_keeps_a_sane_client_id_and_replaces_a_bad_one() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("bad id with spaces"));
        assert_ne!(request_id(&h), "bad id with spaces");
    }

    #[test]
    fn apply_edits_refuses_crlf_identity_and_framing_headers_all_or_nothing() {
        let ids = identity_headers();
        let mut h = HeaderMap::new();
        let edit = |name: &str, value: &str| HeaderEdits {
            remove: vec![],
            set: vec![
                Header { name: "x-ok".into(), value: "1".into() },
                Header { name: name.into(), value: value.into() },
            ],
            append: vec![],
        };
        assert!(apply_edits(&mut h, &edit("x-evil", "a\r\nb"), Some(&ids)).is_err());
        assert!(apply_edits(&mut h, &edit("x-user-id", "root"), Some(&ids)).is_err());
        assert!(apply_edits(&mut h, &edit("content-length", "0"), Some(&ids)).is_err());
        assert!(apply_edits(&mut h, &edit("bad name", "v"), Some(&ids)).is_err());
        assert!(h.is_empty(), "nothing applied on refusal");
        apply_edits(&mut h, &edit("x-fine", "v"), Some(&ids)).unwrap();
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn strip_query_params_removes_only_the_named_parameters() {
        let names = vec!["apikey".to_owned()];
        let uri: http::Uri = "/v1/items?apikey=s3cret&page=2&%61pikey=x&apikeyx=1".parse().unwrap();
        assert_eq!(strip_query_params(&uri, &names), "/v1/items?page=2&apikeyx=1");
        let only: http::Uri = "/v1?apikey=s3cret".parse().unwrap();
        assert_eq!(strip_query_params(&only, &names), "/v1");
        let none: http::Uri = "/v1".parse().unwrap();
        assert_eq!(strip_query_params(&none, &names), "/v1");
    }

    #[test]
    fn strip_inbound_removes_framing_identity_and_untrusted_trace_context_in_one_pass() {
        let ids = identity_headers();
        let request = || {
            let mut h = HeaderMap::new();
            h.insert("connection", HeaderValue::from_static("keep-alive, x-secret"));
            h.insert("x-secret", HeaderValue::from_static("1"));
            h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            h.insert("content-length", HeaderValue::from_static("5"));
            h.insert("x-user-id", HeaderValue::from_static("root"));
            h.insert("x-user-roles", HeaderValue::from_static("admin"));
            h.insert(
                "traceparent",
                HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            );
            h.insert("tracestate", HeaderValue::from_static("k=v"));
            h.insert("x-keep", HeaderValue::from_static("1"));
            h
        };
        let mut h = request();
        assert!(!strip_inbound(&mut h, &ids, false), "trace context removed");
        assert_eq!(h.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["x-keep"]);
        let mut h = request();
        assert!(strip_inbound(&mut h, &ids, true), "trace context kept");
        let mut kept: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["traceparent", "tracestate", "x-keep"]);
        // Nothing to remove: nothing removed.
        let mut h = HeaderMap::new();
        h.insert("x-keep", HeaderValue::from_static("1"));
        assert!(!strip_inbound(&mut h, &ids, true), "no trace context to keep");
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn identity_strip_removes_client_copies() {
        let ids = identity_headers();
        let mut h = HeaderMap::new();
        h.insert("x-user-id", HeaderValue::from_static("admin"));
        h.insert("x-user-roles", HeaderValue::from_static("admin"));
        ids.strip(&mut h);
        assert!(h.is_empty());
    }
}
