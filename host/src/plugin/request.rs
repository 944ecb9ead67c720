//! The request as plugins see it: one host value per request, lent to each call.
//!
//! Contracts 0.2.0 and 0.3.0 pass a `borrow<request>` (a WIT resource) instead of 0.1.0's
//! `request-head` record: the guest asks for what it reads (`path()`, `header(name)`, …) and
//! nothing else is copied into its memory. The host keeps one [`PluginRequest`] behind an
//! `Arc`; each call fills the store's one [`RequestView`] (a clone of that `Arc`, and of the
//! identity's) and empties it when the call returns, so between calls the chain holds the only
//! reference and edits the headers in place (`Arc::make_mut` does not copy then). The view is
//! a resource-table entry pushed at the store's first lend and kept: a push and a delete per
//! call cost a boxed entry's allocation and free (docs/BENCHMARKS.md, entry 44). Since 0.3.0 the request also answers for the identity (`identity()`,
//! `subject()`, `has-role`, `has-scope`, `claim`), which 0.2.0 lowered into every hook as a
//! record whether the plugin read it or not.

use std::sync::Arc;

use http::{HeaderMap, Method};
use wasmtime::component::Resource;

use super::bindings::portcullis::plugin::types::{self, ClientCert, Identity, Request};
use super::bindings::v2::portcullis::plugin::types as v2_types;
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

/// The resource table's entry a `request` is lent through: while a call runs, the request
/// and the identity an earlier auth step established (none when anonymous); between calls,
/// nothing.
#[derive(Debug, Default)]
pub struct RequestView {
    /// The request, while lent.
    pub request: Option<Arc<PluginRequest>>,
    /// Its identity, if any.
    pub identity: Option<Arc<Identity>>,
}

impl HostState {
    /// Lends `request` (with `identity`) to the next call: a borrowed handle the guest may
    /// read until [`Self::end_lend`]. The store's one view is pushed into its resource table
    /// at the first lend and refilled at every later one.
    ///
    /// Errors: the resource table is full (the first lend only).
    pub(crate) fn lend(
        &mut self,
        request: &Arc<PluginRequest>,
        identity: Option<&Arc<Identity>>,
    ) -> wasmtime::Result<Resource<RequestView>> {
        let filled = RequestView { request: Some(request.clone()), identity: identity.cloned() };
        let rep = match self.lent.as_ref().map(Resource::rep) {
            Some(rep) => {
                *self.table().get_mut(&Resource::<RequestView>::new_borrow(rep))? = filled;
                rep
            }
            None => {
                let lent = self.table().push(filled)?;
                let rep = lent.rep();
                self.lent = Some(lent);
                rep
            }
        };
        Ok(Resource::new_borrow(rep))
    }

    /// Ends the current lend, dropping the call's references to the request and the
    /// identity: a handle the guest kept past its call reads as not lent.
    pub(crate) fn end_lend(&mut self) {
        if let Some(rep) = self.lent.as_ref().map(Resource::rep)
            && let Ok(view) = self.table().get_mut(&Resource::<RequestView>::new_borrow(rep))
        {
            *view = RequestView::default();
        }
    }

    /// The view behind a handle the guest passed back, of either contract's `request` type
    /// (the binding's type names the WIT resource; the table entry is the [`RequestView`]).
    fn view<R: 'static>(&mut self, handle: &Resource<R>) -> wasmtime::Result<&RequestView> {
        let view = Resource::<RequestView>::new_borrow(handle.rep());
        Ok(self.table().get(&view)?)
    }

    /// Errors: the handle names no view, or the view lends nothing (a handle kept past the
    /// call it was lent to, which the canonical ABI does not allow a borrow to be).
    fn lent<R: 'static>(&mut self, handle: &Resource<R>) -> wasmtime::Result<&PluginRequest> {
        self.view(handle)?
            .request
            .as_deref()
            .ok_or_else(|| wasmtime::format_err!("the request is lent only during a call"))
    }

    fn lent_identity<R: 'static>(&mut self, handle: &Resource<R>) -> wasmtime::Result<Option<&Identity>> {
        Ok(self.view(handle)?.identity.as_deref())
    }
}

/// The `request` methods contracts 0.2.0 and 0.3.0 share, for the bindings module `$m`;
/// `$cert` converts the host's client certificate to `$m`'s record. 0.3.0's identity methods
/// come in as the block.
macro_rules! request_methods {
    ($m:ident, $cert:path, { $($identity:tt)* }) => {
        impl $m::HostRequest for HostState {
            fn method(&mut self, r: Resource<$m::Request>) -> wasmtime::Result<String> {
                Ok(self.lent(&r)?.method.as_str().to_owned())
            }

            fn scheme(&mut self, r: Resource<$m::Request>) -> wasmtime::Result<String> {
                Ok(self.lent(&r)?.scheme.to_owned())
            }

            fn authority(&mut self, r: Resource<$m::Request>) -> wasmtime::Result<String> {
                Ok(self.lent(&r)?.authority.clone())
            }

            fn path(&mut self, r: Resource<$m::Request>) -> wasmtime::Result<String> {
                Ok(self.lent(&r)?.path.clone())
            }

            fn query(&mut self, r: Resource<$m::Request>) -> wasmtime::Result<Option<String>> {
                Ok(self.lent(&r)?.query.clone())
            }

            fn header(&mut self, r: Resource<$m::Request>, name: String) -> wasmtime::Result<Option<String>> {
                Ok(self.lent(&r)?.headers.get(name.as_str()).map(crate::proxy::headers::value_text))
            }

            fn header_values(&mut self, r: Resource<$m::Request>, name: String) -> wasmtime::Result<Vec<String>> {
                Ok(self.lent(&r)?.headers.get_all(name.as_str()).iter().map(crate::proxy::headers::value_text).collect())
            }

            fn headers(&mut self, r: Resource<$m::Request>) -> wasmtime::Result<Vec<$m::Header>> {
                let headers = crate::proxy::headers::to_wit(&self.lent(&r)?.headers);
                Ok(headers.into_iter().map(|h| $m::Header { name: h.name, value: h.value }).collect())
            }

            fn client_ip(&mut self, r: Resource<$m::Request>) -> wasmtime::Result<String> {
                Ok(self.lent(&r)?.client_ip.clone())
            }

            fn client_cert(&mut self, r: Resource<$m::Request>) -> wasmtime::Result<Option<$m::ClientCert>> {
                Ok(self.lent(&r)?.client_cert.as_ref().map($cert))
            }

            fn request_id(&mut self, r: Resource<$m::Request>) -> wasmtime::Result<String> {
                Ok(self.lent(&r)?.request_id.clone())
            }

            fn route(&mut self, r: Resource<$m::Request>) -> wasmtime::Result<String> {
                Ok(self.lent(&r)?.route.to_string())
            }

            $($identity)*

            // Hooks are lent a `borrow<request>`, which a guest does not drop; the store's
            // one view stays in the table either way (`lend`).
            fn drop(&mut self, _r: Resource<$m::Request>) -> wasmtime::Result<()> {
                Ok(())
            }
        }
    };
}

request_methods!(types, ClientCert::clone, {
    fn identity(&mut self, r: Resource<Request>) -> wasmtime::Result<Option<Identity>> {
        Ok(self.lent_identity(&r)?.cloned())
    }

    fn subject(&mut self, r: Resource<Request>) -> wasmtime::Result<Option<String>> {
        Ok(self.lent_identity(&r)?.map(|i| i.subject.clone()))
    }

    fn has_role(&mut self, r: Resource<Request>, name: String) -> wasmtime::Result<bool> {
        Ok(self.lent_identity(&r)?.is_some_and(|i| i.roles.contains(&name)))
    }

    fn has_scope(&mut self, r: Resource<Request>, name: String) -> wasmtime::Result<bool> {
        Ok(self.lent_identity(&r)?.is_some_and(|i| i.scopes.contains(&name)))
    }

    fn claim(&mut self, r: Resource<Request>, name: String) -> wasmtime::Result<Option<String>> {
        Ok(self.lent_identity(&r)?.and_then(|i| i.claims.iter().find(|c| c.name == name)).map(|c| c.json.clone()))
    }
});

request_methods!(v2_types, super::previous::client_cert, {});

#[cfg(test)]
mod tests {
    use super::super::bindings::portcullis::plugin::types::{Authentication, Claim, HostRequest};
    use super::super::host::state_for_tests;
    use super::*;

    fn request() -> Arc<PluginRequest> {
        Arc::new(PluginRequest {
            method: Method::POST,
            scheme: "https",
            authority: "example.test".into(),
            path: "/api/orders".into(),
            query: None,
            headers: HeaderMap::from_iter([(http::header::USER_AGENT, http::HeaderValue::from_static("curl"))]),
            client_ip: "192.0.2.7".into(),
            client_cert: None,
            request_id: "r-1".into(),
            route: "api".into(),
        })
    }

    fn alice() -> Arc<Identity> {
        Arc::new(Identity {
            subject: "alice".into(),
            issuer: Some("https://issuer.example".into()),
            roles: vec!["reader".into()],
            scopes: vec!["orders:write".into()],
            authentication: Authentication {
                acr: Some("urn:example:mfa".into()),
                amr: vec!["otp".into()],
                auth_time: None,
            },
            claims: vec![Claim { name: "region".into(), json: "\"eu-west\"".into() }],
        })
    }

    #[test]
    fn the_lent_request_answers_for_its_identity_and_an_anonymous_one_for_none() {
        let mut state = state_for_tests(Vec::new(), Arc::default(), None);
        let identity = alice();
        let lent = state.lend(&request(), Some(&identity)).unwrap();
        let r = || Resource::<Request>::new_borrow(lent.rep());
        assert_eq!(state.method(r()).unwrap(), "POST");
        assert_eq!(state.subject(r()).unwrap().as_deref(), Some("alice"));
        assert!(state.has_role(r(), "reader".into()).unwrap());
        assert!(!state.has_role(r(), "Reader".into()).unwrap(), "roles match exactly");
        assert!(state.has_scope(r(), "orders:write".into()).unwrap());
        assert!(!state.has_scope(r(), "reader".into()).unwrap(), "a role is not a scope");
        assert_eq!(state.claim(r(), "region".into()).unwrap().as_deref(), Some("\"eu-west\""));
        assert_eq!(state.claim(r(), "tenant".into()).unwrap(), None);
        // The whole record, as the auth step established it (the bindings' records have no `PartialEq`).
        let whole = HostRequest::identity(&mut state, r()).unwrap();
        assert_eq!(format!("{whole:?}"), format!("{:?}", Some(&*identity)));
        state.end_lend();
        assert_eq!(Arc::strong_count(&identity), 1, "the call's reference ends with the lend");
        assert!(state.method(r()).is_err(), "a handle kept past its call reads nothing");

        let anonymous = state.lend(&request(), None).unwrap();
        let r = || Resource::<Request>::new_borrow(anonymous.rep());
        assert_eq!(state.subject(r()).unwrap(), None);
        assert!(!state.has_role(r(), "reader".into()).unwrap());
        assert!(!state.has_scope(r(), "orders:write".into()).unwrap());
        assert_eq!(state.claim(r(), "region".into()).unwrap(), None);
        assert!(HostRequest::identity(&mut state, r()).unwrap().is_none());
        state.end_lend();
        assert_eq!(anonymous.rep(), lent.rep(), "every lend goes through the store's one view");
    }

    #[test]
    fn a_0_2_0_plugin_reads_the_same_lent_request() {
        use super::super::bindings::v2::portcullis::plugin::types::{HostRequest as V2, Request as V2Request};
        let mut state = state_for_tests(Vec::new(), Arc::default(), None);
        let lent = state.lend(&request(), Some(&alice())).unwrap();
        let r = || Resource::<V2Request>::new_borrow(lent.rep());
        assert_eq!(V2::path(&mut state, r()).unwrap(), "/api/orders");
        assert_eq!(V2::client_ip(&mut state, r()).unwrap(), "192.0.2.7");
        assert_eq!(V2::route(&mut state, r()).unwrap(), "api");
        let headers = V2::headers(&mut state, r()).unwrap();
        assert_eq!(
            headers.iter().map(|h| (h.name.as_str(), h.value.as_str())).collect::<Vec<_>>(),
            [("user-agent", "curl")]
        );
        state.end_lend();
    }
}
