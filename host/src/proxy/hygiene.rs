//! Request hygiene before routing: path normalization ([`super::path`]), `Host` and
//! `:authority` agreement, header names with underscores, and the client IP behind trusted
//! proxies.
//!
//! - **Host and authority.** An HTTP/2 `:authority` (or an HTTP/1.1 absolute-form target) and a
//!   `Host` field that name different hosts are refused with 400: the router and the upstream
//!   could otherwise disagree on which host the request is for (RFC 9110 §7.2, RFC 9113
//!   §8.3.1).
//! - **Underscores.** Header names with `_` are dropped by default (nginx's
//!   `underscores_in_headers off`), rejected with 400, or kept, per listener. CGI-style backends
//!   map `-` to `_`, so `x_user_id` could otherwise pose as `x-user-id`.
//! - **Client IP.** The TCP peer, unless the peer is in `trusted_proxies`: then the rightmost
//!   `x-forwarded-for` address that is not itself a trusted proxy (the first hop the trusted
//!   chain cannot vouch for). Upstream, an untrusted peer's forwarding and client-IP fields
//!   (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`, `X-Client-IP`, `True-Client-IP`) are removed
//!   and replaced by the gateway's own; a trusted peer's are kept and the peer appended
//!   (RFC 7239 §5.2 reasoning), as `X-Forwarded-For`, RFC 7239 `Forwarded`, or both
//!   (`forwarded_headers`).

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, header};
use ipnet::IpNet;

use super::path;
use crate::config::model::{AcceptTraceContext, ForwardedHeaders, ListenerConfig, UnderscoreHeaders};
use crate::error::GatewayError;

/// A listener's hygiene settings, parsed once.
#[derive(Debug, Clone, Default)]
pub struct Hygiene {
    underscores: UnderscoreHeaders,
    trusted: Vec<IpNet>,
    trace_context: AcceptTraceContext,
    forwarded: ForwardedHeaders,
}

/// Whether `name` (lowercase, as `HeaderName` keeps it) is a field a client sets to pose as
/// another client, host or scheme: removed from requests of peers that are not trusted
/// proxies, so an upstream never mistakes them for the gateway's. Matched by its text (a
/// length switch, then one comparison) rather than against nine `HeaderName`s.
fn is_spoofable(name: &str) -> bool {
    matches!(
        name,
        "forwarded"
            | "x-forwarded-for"
            | "x-forwarded-host"
            | "x-forwarded-port"
            | "x-forwarded-proto"
            | "x-forwarded-prefix"
            | "x-real-ip"
            | "x-client-ip"
            | "true-client-ip"
    )
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// `peer` as forwarding fields write it: the canonical IP (an IPv4-mapped IPv6 address as
/// IPv4), computed once per client connection.
pub fn peer_text(peer: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.to_canonical().to_string()).expect("an IP address is a valid field value")
}

impl Hygiene {
    /// The settings of `listener` (validated at load, so bad entries cannot occur here).
    pub fn new(listener: &ListenerConfig) -> Self {
        Hygiene {
            underscores: listener.headers_with_underscores,
            trusted: listener.trusted_proxies.iter().map(|c| c.0).collect(),
            trace_context: listener.accept_trace_context,
            forwarded: listener.forwarded_headers,
        }
    }

    /// Whether a request from `peer` may continue its caller's trace (`accept_trace_context`).
    pub fn accepts_trace_context(&self, peer: IpAddr) -> bool {
        match self.trace_context {
            AcceptTraceContext::Always => true,
            AcceptTraceContext::TrustedProxies => self.trusts(peer),
            AcceptTraceContext::Never => false,
        }
    }

    /// Whether `ip` is in the listener's `trusted_proxies`.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// Normalizes the request in place: the path (and so the URI), underscore headers.
    ///
    /// Errors: [`GatewayError::BadRequest`] for a path [`path::normalize`] refuses, a
    /// `Host`/authority mismatch, or an underscore header when they are rejected.
    pub fn apply(&self, parts: &mut http::request::Parts) -> Result<(), GatewayError> {
        let normalized = path::normalize(parts.uri.path()).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
        if let std::borrow::Cow::Owned(normalized) = normalized {
            let path_and_query = match parts.uri.query() {
                Some(q) => format!("{normalized}?{q}"),
                None => normalized,
            };
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            uri.path_and_query = Some(
                path_and_query.parse().map_err(|_| GatewayError::BadRequest("the path cannot be normalized".into()))?,
            );
            parts.uri = http::Uri::from_parts(uri)
                .map_err(|_| GatewayError::BadRequest("the path cannot be normalized".into()))?;
        }
        // Each field's values found once (a hashed look-up each), no list built for the usual
        // request: one `Host`, no `Transfer-Encoding`, no underscore in a name.
        let mut hosts = parts.headers.get_all(header::HOST).iter();
        if let (Some(authority), Some(host)) = (parts.uri.authority(), hosts.next())
            && !host.as_bytes().eq_ignore_ascii_case(authority.as_str().as_bytes())
        {
            return Err(GatewayError::BadRequest("`Host` and the request target's authority differ".into()));
        }
        // hyper already refuses most malformed framing; refuse the ambiguous rest, as Envoy
        // does by default: both framings at once, or any transfer coding but a lone `chunked`.
        let mut codings = parts.headers.get_all(header::TRANSFER_ENCODING).iter();
        if let Some(first) = codings.next() {
            if parts.headers.contains_key(header::CONTENT_LENGTH) {
                return Err(GatewayError::BadRequest("both `Content-Length` and `Transfer-Encoding`".into()));
            }
            if codings.next().is_some() || !first.as_bytes().eq_ignore_ascii_case(b"chunked") {
                return Err(GatewayError::BadRequest("`Transfer-Encoding` other than `chunked`".into()));
            }
        }
        if hosts.next().is_some() {
            return Err(GatewayError::BadRequest("more than one `Host` field".into()));
        }
        let underscored = |name: &HeaderName| name.as_str().as_bytes().contains(&b'_');
        if self.underscores != UnderscoreHeaders::Allow && parts.headers.keys().any(underscored) {
            let named: Vec<_> = parts.headers.keys().filter(|n| underscored(n)).cloned().collect();
            if self.underscores == UnderscoreHeaders::Reject {
                return Err(GatewayError::BadRequest(format!(
                    "header names with underscores are refused ({})",
                    named[0]
                )));
            }
            for name in named {
                parts.headers.remove(name);
            }
        }
        Ok(())
    }

    /// The client IP plugins see, from the TCP `peer` and, behind trusted proxies, the
    /// `x-forwarded-for` chain.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let chain: Vec<IpAddr> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map_while(|hop| hop.trim().parse::<IpAddr>().ok())
            .collect();
        chain.iter().rev().copied().find(|ip| !self.trusts(*ip)).or_else(|| chain.first().copied()).unwrap_or(peer)
    }

    /// Sets the forwarding fields for the upstream. From a peer that is not a trusted proxy,
    /// every spoofable field ([`is_spoofable`]) is removed first. Then, per `forwarded_headers`:
    /// `x-forwarded-for` gets the trusted chain plus `peer` and `x-forwarded-proto` is set to
    /// `scheme` unless a trusted proxy set it; `Forwarded` (RFC 7239 §4) gets an element
    /// `for=PEER;proto=SCHEME;host="HOST"` after the trusted proxies' elements, IPv6 peers
    /// quoted and bracketed (§6). `peer_text` is [`peer_text`]`(peer)`.
    pub fn forward(&self, headers: &mut HeaderMap, peer: IpAddr, peer_text: &HeaderValue, scheme: &'static str) {
        let peer = peer.to_canonical();
        let trusted = self.trusts(peer);
        if !trusted {
            // One pass over the names present (a handful), matched by their text, instead of
            // nine hashed removals: usually none of them is there.
            let present: Vec<HeaderName> = headers.keys().filter(|n| is_spoofable(n.as_str())).cloned().collect();
            for name in present {
                headers.remove(name);
            }
        }
        if self.forwarded != ForwardedHeaders::Forwarded {
            if trusted {
                append_element(headers, X_FORWARDED_FOR, peer_text.clone());
                if !headers.contains_key(X_FORWARDED_PROTO) {
                    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
                }
            } else {
                // Both were just removed: nothing to join or keep.
                headers.insert(X_FORWARDED_FOR, peer_text.clone());
                headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
            }
        }
        if self.forwarded != ForwardedHeaders::XForwarded {
            let node = match peer {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("\"[{ip}]\""),
            };
            let mut element = format!("for={node};proto={scheme}");
            if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
                let quoted = host.replace('\\', "\\\\").replace('"', "\\\"");
                element.push_str(&format!(";host=\"{quoted}\""));
            }
            if let Ok(element) = HeaderValue::from_str(&element) {
                append_element(headers, header::FORWARDED, element);
            }
        }
    }
}

/// Replaces every `name` field with one: their values and `element`, comma-separated.
fn append_element(headers: &mut HeaderMap, name: HeaderName, element: HeaderValue) {
    let value = match headers.get_all(&name).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>() {
        // The usual case, a client talking to us directly: no list to join.
        present if present.is_empty() => Some(element),
        mut present => {
            present.push(element.to_str().unwrap_or_default());
            HeaderValue::from_str(&present.join(", ")).ok()
        }
    };
    if let Some(value) = value {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hygiene(trusted: &[&str], underscores: UnderscoreHeaders) -> Hygiene {
        Hygiene {
            underscores,
            trusted: trusted.iter().map(|c| crate::config::Cidr::parse(c).unwrap().0).collect(),
            trace_context: AcceptTraceContext::Always,
            forwarded: ForwardedHeaders::Both,
        }
    }

    fn forward(h: &Hygiene, headers: &mut HeaderMap, peer: &str, scheme: &'static str) {
        let peer: IpAddr = peer.parse().unwrap();
        h.forward(headers, peer, &peer_text(peer), scheme);
    }

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn client_ip_believes_forwarded_for_only_from_trusted_peers() {
        let h = hygiene(&["10.0.0.0/8", "192.168.1.1"], UnderscoreHeaders::Drop);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Untrusted peer: its claims are ignored.
        assert_eq!(h.client_ip(ip("203.0.113.9"), &xff("1.2.3.4")), ip("203.0.113.9"));
        // Trusted peer: the rightmost address that is not a trusted proxy.
        assert_eq!(h.client_ip(ip("10.1.1.1"), &xff("6.6.6.6, 198.51.100.7, 10.2.2.2")), ip("198.51.100.7"));
        assert_eq!(h.client_ip(ip("192.168.1.1"), &xff("198.51.100.7")), ip("198.51.100.7"));
        // Trusted peer without a chain, or with garbage: the peer.
        assert_eq!(h.client_ip(ip("10.1.1.1"), &HeaderMap::new()), ip("10.1.1.1"));
        assert_eq!(h.client_ip(ip("10.1.1.1"), &xff("not-an-ip")), ip("10.1.1.1"));
    }

    #[test]
    fn forwarded_for_is_replaced_for_untrusted_peers_and_appended_for_trusted_ones() {
        let h = hygiene(&["10.0.0.0/8"], UnderscoreHeaders::Drop);
        let mut spoofed = xff("1.2.3.4");
        forward(&h, &mut spoofed, "203.0.113.9", "http");
        assert_eq!(spoofed["x-forwarded-for"], "203.0.113.9");
        let mut chained = xff("198.51.100.7");
        forward(&h, &mut chained, "10.1.1.1", "https");
        assert_eq!(chained["x-forwarded-for"], "198.51.100.7, 10.1.1.1");
        assert_eq!(chained["x-forwarded-proto"], "https");
    }

    #[test]
    fn spoofable_forwarding_fields_are_removed_for_untrusted_peers_and_extended_for_trusted_ones() {
        let h = hygiene(&["10.0.0.0/8"], UnderscoreHeaders::Drop);
        let claims = [
            ("forwarded", "for=6.6.6.6;proto=https"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-host", "admin.internal"),
            ("x-forwarded-proto", "https"),
            ("true-client-ip", "6.6.6.6"),
            ("host", "gw.example"),
        ];
        let with_claims = || {
            let mut headers = HeaderMap::new();
            for (name, value) in claims {
                headers.insert(name, HeaderValue::from_static(value));
            }
            headers
        };
        let mut spoofed = with_claims();
        forward(&h, &mut spoofed, "203.0.113.9", "http");
        assert_eq!(spoofed["forwarded"], "for=203.0.113.9;proto=http;host=\"gw.example\"");
        assert_eq!(spoofed["x-forwarded-proto"], "http");
        for gone in ["x-real-ip", "x-forwarded-host", "true-client-ip"] {
            assert!(!spoofed.contains_key(gone), "{gone}");
        }
        let mut trusted = with_claims();
        forward(&h, &mut trusted, "10.1.1.1", "http");
        assert_eq!(trusted["forwarded"], "for=6.6.6.6;proto=https, for=10.1.1.1;proto=http;host=\"gw.example\"");
        assert_eq!(
            (&trusted["x-real-ip"], &trusted["x-forwarded-proto"]),
            (&HeaderValue::from_static("6.6.6.6"), &HeaderValue::from_static("https"))
        );
        let mut v6 = HeaderMap::new();
        forward(&h, &mut v6, "2001:db8::17", "https");
        assert_eq!(v6["forwarded"], "for=\"[2001:db8::17]\";proto=https");
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn apply_normalizes_the_path_and_checks_host_and_underscores() {
        let drop = hygiene(&[], UnderscoreHeaders::Drop);
        let mut p = parts("/api/%2e%2e//admin?x=1", &[("x_user_id", "root"), ("x-ok", "1")]);
        drop.apply(&mut p).unwrap();
        assert_eq!(p.uri, "/admin?x=1");
        assert!(!p.headers.contains_key("x_user_id"));
        assert!(p.headers.contains_key("x-ok"));
        let reject = hygiene(&[], UnderscoreHeaders::Reject);
        assert!(reject.apply(&mut parts("/", &[("x_user_id", "root")])).is_err());
        let allow = hygiene(&[], UnderscoreHeaders::Allow);
        let mut kept = parts("/", &[("x_user_id", "root")]);
        allow.apply(&mut kept).unwrap();
        assert!(kept.headers.contains_key("x_user_id"));
        assert!(drop.apply(&mut parts("http://a.example/x", &[("host", "b.example")])).is_err());
        drop.apply(&mut parts("http://a.example/x", &[("host", "A.example")])).unwrap();
        assert!(drop.apply(&mut parts("/x", &[("host", "a"), ("host", "b")])).is_err());
        assert!(drop.apply(&mut parts("/a%2fb", &[])).is_err());
    }

    #[test]
    fn apply_refuses_ambiguous_framing_and_a_second_host() {
        let h = hygiene(&[], UnderscoreHeaders::Drop);
        let refused = |headers: &[(&str, &str)]| match h.apply(&mut parts("/x", headers)) {
            Err(GatewayError::BadRequest(why)) => why,
            other => panic!("{headers:?} was not refused: {other:?}"),
        };
        h.apply(&mut parts("/x", &[("host", "a"), ("transfer-encoding", "Chunked")])).unwrap();
        assert!(refused(&[("transfer-encoding", "chunked"), ("content-length", "3")]).contains("both"));
        assert!(refused(&[("transfer-encoding", "gzip, chunked")]).contains("other than"));
        assert!(refused(&[("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")]).contains("other than"));
        assert!(refused(&[("host", "a"), ("host", "a")]).contains("more than one"));
    }
}
