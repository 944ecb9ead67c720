//! Write Portcullis gateway plugins in Rust.
//!
//! A Portcullis plugin is a WebAssembly component implementing one typed kind of the
//! `portcullis:plugin@0.3.0` WIT package (`wit/` in the repository): `auth`, `rate-limit`,
//! `validation`, `logging` or `filter`. With this crate a plugin is a configuration type, a
//! constructor that validates it, the trait of its kind with only the hooks it needs, and one
//! export macro. Build it with `cargo build --target wasm32-wasip2`; no other tool is needed.
//!
//! A whole plugin, a filter that tags requests for the upstream and refuses a blocked path:
//!
//! ```
//! use portcullis_sdk::{ConfigError, Filter, FilterAction, HeaderEdits, LocalResponse, Plugin, Request};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     tag: String,
//!     #[serde(default)]
//!     blocked_prefix: Option<String>,
//! }
//!
//! struct Tagger(Config);
//!
//! impl Plugin for Tagger {
//!     type Config = Config;
//!     fn new(config: Config) -> Result<Self, ConfigError> {
//!         if config.tag.is_empty() {
//!             return Err(ConfigError::new("/tag", "must not be empty"));
//!         }
//!         Ok(Tagger(config))
//!     }
//! }
//!
//! impl Filter for Tagger {
//!     fn on_request(&self, request: &Request<'_>) -> FilterAction {
//!         if let Some(prefix) = &self.0.blocked_prefix {
//!             if request.path().starts_with(prefix.as_str()) {
//!                 return FilterAction::Respond(LocalResponse::problem(
//!                     403, "about:blank", "Forbidden", "this path is blocked"));
//!             }
//!         }
//!         FilterAction::Continue(HeaderEdits::default().set("x-tag", &self.0.tag))
//!     }
//! }
//!
//! portcullis_sdk::export_filter!(Tagger);
//!
//! // Unit tests run natively against the SDK's fake host:
//! use portcullis_sdk::testing;
//! let tagger: Tagger = testing::configure(r#"{"tag": "blue", "blocked_prefix": "/admin"}"#).unwrap();
//! let allowed = tagger.on_request(&testing::request("GET", "/api/x").build());
//! assert_eq!(allowed, FilterAction::Continue(HeaderEdits::default().set("x-tag", "blue")));
//! let refused = tagger.on_request(&testing::request("GET", "/admin/x").build());
//! assert!(matches!(refused, FilterAction::Respond(r) if r.status == 403));
//! let bad = testing::configure::<Tagger>(r#"{"tagg": "blue"}"#).err().unwrap();
//! assert_eq!(bad.pointer, "/tagg");
//! ```
//!
//! Host capabilities are plain functions: [`log`], [`log_with`], [`kv`], [`now_ms`],
//! [`http_send`], [`audit_append`], [`audit_append_observed`], [`audit_append_each_exchange`],
//! [`secrets`] and [`signatures`].
//! Natively they reach [`testing`]'s fake, so plugin logic is tested with plain `cargo test`.
//!
//! # What a call costs
//!
//! A hook call's cost in the gateway is mostly its crossings of the component boundary, not
//! the plugin's own code (`bench/callgrind.py`, docs/BENCHMARKS.md): rbac's policy runs in
//! 0.6 k instructions natively, its step in the gateway in about 15 k (21 k before contract
//! 0.3.0 stopped handing every hook the identity record). Measured there:
//!
//! - Each [`Request`] accessor is one host call that copies its answer into the plugin (the
//!   method, path and other single values are kept after the first ask; header look-ups are
//!   not). Read what the decision needs, and prefer [`Request::header`] to
//!   [`Request::headers`], which copies every field.
//! - Every string the host hands a hook (each header value, the identity's subject) is an
//!   allocation in the plugin's memory, made through a call into it: about 0.6 k
//!   instructions each, empty lists included. Since contract 0.3.0 the identity is not handed
//!   to every hook: ask the request for the one fact the decision needs
//!   ([`Request::has_role`], [`Request::subject`]) rather than the whole record
//!   ([`Request::identity`], about ten strings and lists).
//! - `format!` costs more inside wasm than natively: on a per-request path, push into a
//!   `String` made with capacity. rate-limit's counter keys did that for about 5 k
//!   instructions fewer per request.
//! - Build with `opt-level = 3` (the workspace's `plugin` profile): 16% fewer instructions
//!   than `"s"` on the benchmark's five-step chain.
//! - On wasm32 the SDK installs the plugin's global allocator: a free list per power-of-two
//!   size class (16 B to 4 KiB) in front of wasi-libc's `malloc`, which the strings lent on
//!   every call made the guests' largest cost (about 400 instructions per allocation and
//!   free). The five-step chain ran 7.6% fewer instructions and 10% less server CPU with it.
//!   A plugin with an allocator of its own depends on this crate with
//!   `default-features = false` (feature `allocator`).
//! - A filter hook the plugin does not override is never called.
//! - A logging plugin that writes the usual audit record asks the host for it
//!   ([`audit_append_observed`]) instead of serializing one: audit-log's step went from 139 k
//!   to 103 k instructions that way. One that writes nothing else per exchange declares it
//!   once in `configure` ([`audit_append_each_exchange`]): the host then appends the record
//!   itself and never calls its `observe` (no exchange is copied in; entry 48).

mod bindings_mod {
    pub use crate::bindings::exports::portcullis::plugin::{
        auth::{AuthOutcome, Authenticated},
        filter::{FilterAction, HookSet},
        logging::{Exchange, Phase, StepDecision},
        rate_limit::{Limited, Quota, RateLimitOutcome},
        validation::{Invalid, ValidationOutcome, Violation},
    };
    pub use crate::bindings::portcullis::plugin::types::{
        Authentication, Claim, ClientCert, ConfigError, Header, HeaderEdits, Identity, LocalResponse, ResponseHead,
    };
}

#[cfg(any(test, all(feature = "allocator", target_arch = "wasm32", not(target_feature = "atomics"))))]
mod alloc;
#[doc(hidden)]
pub mod bindings;
mod config;
mod export;
mod helpers;
mod host;
mod kinds;
mod request;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use bindings_mod::*;
#[doc(hidden)]
pub use export::__private;
pub use helpers::{PathPattern, is_quotable, percent_decode};
pub use host::{
    AuditError, HttpError, KvError, Level, OutboundRequest, OutboundResponse, audit_append, audit_append_each_exchange,
    audit_append_observed, fail, http_send, kv, log, log_with, now_ms, secrets, signatures,
};
pub use kinds::{Auth, Filter, Logging, Plugin, RateLimit, Validation};
pub use request::Request;
pub use serde;
pub use serde_json;
