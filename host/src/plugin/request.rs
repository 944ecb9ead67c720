//! The request as plugins see it: one host value per request, lent to each call.
//!
//! Contract 0.2.0 passes a `borrow<request>` (a WIT resource) instead of 0.1.0's
//! `request-head` record: the guest asks for what it reads (`path()`, `header(name)`, …) and
//! nothing else is copied into its memory. The host keeps one [`PluginRequest`] behind an
//! `Arc`; each call pushes a [`RequestView`] (a clone of that `Arc`) into the store's resource
//! table and deletes it when the call returns, so between calls the chain holds the only
//! reference and edits the headers in place (`Arc::make_mut` does not copy then).

use std::sync::Arc;

use http::{HeaderMap, Method};
use wasmtime::component::Resource;

use super::bindings::portcullis::plugin::types::{self, ClientCert, Header, Request};
use super::host::HostState;

/// What the chain's plugins see of one request. `headers` are the request's own header fields
/// while the chain runs (the proxy moves them in and takes them back for the upstream), after
/// hygiene and with every earlier edit applied.
#[derive(Debug, Clone)]
pub struct PluginRequest {
    /// The method.
    pub method: Method,
    /// `http` or `https`, as seen by the listener.
    pub scheme: &'static str,
    /// `Host` or `:authority`.
    pub authority: String,
    /// The normalized path, as routed.
    pub path: String,
    /// The raw query without `?`.
    pub query: Option<String>,
    /// Request header fields.
    pub headers: HeaderMap,
    /// The client's IP address, as text.
    pub client_ip: String,
    /// The client certificate verified in the TLS handshake.
    pub client_cert: Option<ClientCert>,
    /// `x-request-id`.
    pub request_id: String,
    /// The matched route's id; `-` when none matched.
    pub route: Arc<str>,
}

impl types::Identity {
    /// An identity for `subject` with `roles`, and no issuer, scopes, authentication facts or
    /// claims.
    pub fn new(subject: impl Into<String>, roles: Vec<String>) -> Self {
        types::Identity {
            subject: subject.into(),
            issuer: None,
            roles,
            scopes: Vec::new(),
            authentication: types::Authentication { acr: None, amr: Vec::new(), auth_time: None },
            claims: Vec::new(),
        }
    }
}

/// The resource table's entry for a lent `request`.
#[derive(Debug)]
pub struct RequestView(pub Arc<PluginRequest>);

impl HostState {
    /// Lends `request` to the next call: a handle the guest may read until [`Self::end_lend`].
    pub(crate) fn lend(&mut self, request: &Arc<PluginRequest>) -> wasmtime::Result<Resource<RequestView>> {
        Ok(self.table().push(RequestView(request.clone()))?)
    }

    /// Ends a lend, dropping the call's reference to the request.
    pub(crate) fn end_lend(&mut self, handle: Resource<RequestView>) {
        // Absent only when the guest dropped a borrowed handle, which the canonical ABI forbids.
        let _ = self.table().delete(handle);
    }

    /// The request behind a handle the guest passed back (the binding's `Request` type names
    /// the WIT resource; the table entry is the [`RequestView`]).
    fn lent(&mut self, handle: &Resource<Request>) -> wasmtime::Result<&PluginRequest> {
        let view = Resource::<RequestView>::new_borrow(handle.rep());
        Ok(&self.table().get(&view)?.0)
    }
}

/// A header value as text: invalid UTF-8 sequences become U+FFFD, as the contract says.
fn text(value: &http::HeaderValue) -> String {
    match value.to_str() {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(value.as_bytes()).into_owned(),
    }
}

impl types::HostRequest for HostState {
    fn method(&mut self, r: Resource<Request>) -> wasmtime::Result<String> {
        Ok(self.lent(&r)?.method.as_str().to_owned())
    }

    fn scheme(&mut self, r: Resource<Request>) -> wasmtime::Result<String> {
        Ok(self.lent(&r)?.scheme.to_owned())
    }

    fn authority(&mut self, r: Resource<Request>) -> wasmtime::Result<String> {
        Ok(self.lent(&r)?.authority.clone())
    }

    fn path(&mut self, r: Resource<Request>) -> wasmtime::Result<String> {
        Ok(self.lent(&r)?.path.clone())
    }

    fn query(&mut self, r: Resource<Request>) -> wasmtime::Result<Option<String>> {
        Ok(self.lent(&r)?.query.clone())
    }

    fn header(&mut self, r: Resource<Request>, name: String) -> wasmtime::Result<Option<String>> {
        Ok(self.lent(&r)?.headers.get(name.as_str()).map(text))
    }

    fn header_values(&mut self, r: Resource<Request>, name: String) -> wasmtime::Result<Vec<String>> {
        Ok(self.lent(&r)?.headers.get_all(name.as_str()).iter().map(text).collect())
    }

    fn headers(&mut self, r: Resource<Request>) -> wasmtime::Result<Vec<Header>> {
        Ok(crate::proxy::headers::to_wit(&self.lent(&r)?.headers))
    }

    fn client_ip(&mut self, r: Resource<Request>) -> wasmtime::Result<String> {
        Ok(self.lent(&r)?.client_ip.clone())
    }

    fn client_cert(&mut self, r: Resource<Request>) -> wasmtime::Result<Option<ClientCert>> {
        Ok(self.lent(&r)?.client_cert.clone())
    }

    fn request_id(&mut self, r: Resource<Request>) -> wasmtime::Result<String> {
        Ok(self.lent(&r)?.request_id.clone())
    }

    fn route(&mut self, r: Resource<Request>) -> wasmtime::Result<String> {
        Ok(self.lent(&r)?.route.to_string())
    }

    fn drop(&mut self, r: Resource<Request>) -> wasmtime::Result<()> {
        self.end_lend(Resource::new_own(r.rep()));
        Ok(())
    }
}
