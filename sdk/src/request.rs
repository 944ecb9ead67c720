//! [`Request`]: the request a hook is lent (WIT `request`, contract 0.3.0).
//!
//! In a component, each accessor asks the host for that one part, so a call copies into the
//! plugin's memory only what it reads; the scalar parts (`method`, `path`, …) and the identity
//! are kept after the first ask, header look-ups are not. Natively (unit tests) a `Request` is
//! a plain value built with [`crate::testing::request`].
//!
//! The request also answers for the identity an earlier auth step established (contract
//! 0.3.0; 0.2.0 handed every hook the whole identity record): [`Request::subject`],
//! [`Request::has_role`], [`Request::has_scope`] and [`Request::claim`] copy one fact each,
//! [`Request::identity`] the whole record once.

use std::cell::OnceCell;

use crate::{ClientCert, Header, Identity};

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
    identity: OnceCell<Option<Identity>>,
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code, reason = "natively the subject comes from `identity`"))]
    subject: OnceCell<Option<String>>,
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
    pub identity: Option<Identity>,
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
            identity: OnceCell::new(),
            subject: OnceCell::new(),
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

    /// The identity an earlier auth step established, or `None` when the request is anonymous
    /// (no auth step ran, or each answered `anonymous`). The first ask copies the whole record
    /// into the plugin (about ten strings and lists); when the decision needs one fact, ask for
    /// it instead ([`Request::subject`], [`Request::has_role`], …).
    pub fn identity(&self) -> Option<&Identity> {
        self.identity
            .get_or_init(|| match &self.source {
                #[cfg(target_arch = "wasm32")]
                Source::Host(r) => r.identity(),
                Source::Owned(o, _) => o.identity.clone(),
            })
            .as_ref()
    }

    /// The identity's subject (e.g. a JWT `sub`, RFC 7519 §4.1.2), or `None` when anonymous.
    /// One host call, kept after the first ask (none when [`Request::identity`] was read).
    pub fn subject(&self) -> Option<&str> {
        #[cfg(target_arch = "wasm32")]
        if let (None, Source::Host(r)) = (self.identity.get(), &self.source) {
            return self.subject.get_or_init(|| r.subject()).as_deref();
        }
        self.identity().map(|i| i.subject.as_str())
    }

    /// Whether the identity holds role `name` (exact match); `false` when anonymous. One host
    /// call each time (none when [`Request::identity`] was read).
    pub fn has_role(&self, name: &str) -> bool {
        #[cfg(target_arch = "wasm32")]
        if let (None, Source::Host(r)) = (self.identity.get(), &self.source) {
            return r.has_role(name);
        }
        self.identity().is_some_and(|i| i.roles.iter().any(|r| r == name))
    }

    /// Whether the identity holds OAuth 2.0 scope `name` (RFC 6749 §3.3, exact match); `false`
    /// when anonymous. One host call each time (none when [`Request::identity`] was read).
    pub fn has_scope(&self, name: &str) -> bool {
        #[cfg(target_arch = "wasm32")]
        if let (None, Source::Host(r)) = (self.identity.get(), &self.source) {
            return r.has_scope(name);
        }
        self.identity().is_some_and(|i| i.scopes.iter().any(|s| s == name))
    }

    /// The claim `name` the auth step passed on, as JSON text (e.g. `"eu-west"`), or `None`
    /// when it passed no such claim or the request is anonymous. One host call each time
    /// (none when [`Request::identity`] was read).
    pub fn claim(&self, name: &str) -> Option<String> {
        #[cfg(target_arch = "wasm32")]
        if let (None, Source::Host(r)) = (self.identity.get(), &self.source) {
            return r.claim(name);
        }
        self.identity()?.claims.iter().find(|c| c.name == name).map(|c| c.json.clone())
    }
}
