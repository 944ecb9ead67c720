//! [`Request`]: the request a hook is lent (WIT `request`, contract 0.2.0).
//!
//! In a component, each accessor asks the host for that one part, so a call copies into the
//! plugin's memory only what it reads; the scalar parts (`method`, `path`, …) are kept after
//! the first ask, header look-ups are not. Natively (unit tests) a `Request` is a plain value
//! built with [`crate::testing::request`].

use std::cell::OnceCell;

use crate::{ClientCert, Header};

/// The request as the plugin sees it, after the host's hygiene and every earlier step's edits.
/// Valid for the hook call it was passed to.
pub struct Request<'a> {
    source: Source<'a>,
    method: OnceCell<String>,
    scheme: OnceCell<String>,
    authority: OnceCell<String>,
    path: OnceCell<String>,
    query: OnceCell<Option<String>>,
    client_ip: OnceCell<String>,
    request_id: OnceCell<String>,
    route: OnceCell<String>,
}

enum Source<'a> {
    #[cfg(target_arch = "wasm32")]
    Host(&'a crate::bindings::portcullis::plugin::types::Request),
    #[cfg_attr(target_arch = "wasm32", allow(dead_code, reason = "only the native test fake builds requests"))]
    Owned(Owned, std::marker::PhantomData<&'a ()>),
}

/// A request held by value, for tests.
#[derive(Debug, Clone, Default)]
pub(crate) struct Owned {
    pub method: String,
    pub scheme: String,
    pub authority: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<Header>,
    pub client_ip: String,
    pub client_cert: Option<ClientCert>,
    pub request_id: String,
    pub route: String,
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("method", &self.method()).field("path", &self.path()).finish_non_exhaustive()
    }
}

macro_rules! scalar {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub fn $name(&self) -> &str {
            self.$name.get_or_init(|| match &self.source {
                #[cfg(target_arch = "wasm32")]
                Source::Host(r) => r.$name(),
                Source::Owned(o, _) => o.$name.clone(),
            })
        }
    };
}

impl<'a> Request<'a> {
    fn new(source: Source<'a>) -> Self {
        Request {
            source,
            method: OnceCell::new(),
            scheme: OnceCell::new(),
            authority: OnceCell::new(),
            path: OnceCell::new(),
            query: OnceCell::new(),
            client_ip: OnceCell::new(),
            request_id: OnceCell::new(),
            route: OnceCell::new(),
        }
    }

    /// The request the host lent to this call.
    #[cfg(target_arch = "wasm32")]
    #[doc(hidden)]
    pub fn from_host(request: &'a crate::bindings::portcullis::plugin::types::Request) -> Self {
        Request::new(Source::Host(request))
    }

    #[cfg_attr(target_arch = "wasm32", allow(dead_code, reason = "only the native test fake builds requests"))]
    pub(crate) fn from_owned(owned: Owned) -> Request<'static> {
        Request::new(Source::Owned(owned, std::marker::PhantomData))
    }

    scalar!(
        /// The method token, e.g. `GET`.
        method
    );
    scalar!(
        /// `http` or `https`, as seen by the gateway's listener.
        scheme
    );
    scalar!(
        /// The target host and optional port (`Host` or `:authority`).
        authority
    );
    scalar!(
        /// The normalized path without the query (RFC 3986 §6.2.2), as routed. Starts with `/`.
        path
    );
    scalar!(
        /// The client's IP address as text (the TCP peer, or what a trusted proxy reported).
        client_ip
    );
    scalar!(
        /// The request id (`x-request-id`).
        request_id
    );
    scalar!(
        /// The matched route's id.
        route
    );

    /// The raw query string without `?`; `None` when the target had no `?`.
    pub fn query(&self) -> Option<&str> {
        self.query
            .get_or_init(|| match &self.source {
                #[cfg(target_arch = "wasm32")]
                Source::Host(r) => r.query(),
                Source::Owned(o, _) => o.query.clone(),
            })
            .as_deref()
    }

    /// The first value of header `name` (case-insensitive), if present. One host call each
    /// time: keep the value rather than asking twice.
    pub fn header(&self, name: &str) -> Option<String> {
        match &self.source {
            #[cfg(target_arch = "wasm32")]
            Source::Host(r) => r.header(name),
            Source::Owned(o, _) => {
                o.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.clone())
            }
        }
    }

    /// Every value of header `name` (case-insensitive), in the order received.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        match &self.source {
            #[cfg(target_arch = "wasm32")]
            Source::Host(r) => r.header_values(name),
            Source::Owned(o, _) => {
                o.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.clone()).collect()
            }
        }
    }

    /// Every header field, in order. Copies them all: prefer [`Request::header`].
    pub fn headers(&self) -> Vec<Header> {
        match &self.source {
            #[cfg(target_arch = "wasm32")]
            Source::Host(r) => r.headers(),
            Source::Owned(o, _) => o.headers.clone(),
        }
    }

    /// The client certificate the listener verified (mutual TLS), if any.
    pub fn client_cert(&self) -> Option<ClientCert> {
        match &self.source {
            #[cfg(target_arch = "wasm32")]
            Source::Host(r) => r.client_cert(),
            Source::Owned(o, _) => o.client_cert.clone(),
        }
    }

    /// The raw (still percent-encoded) value of query parameter `name`, if present.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }

    /// The token of an `Authorization: Bearer <token>` header (RFC 6750 §2.1), if present. The
    /// scheme is matched case-insensitively.
    pub fn bearer_token(&self) -> Option<String> {
        let value = self.header("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
    }
}
