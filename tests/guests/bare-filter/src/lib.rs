//! An API version gate against `portcullis:plugin@0.2.0`'s published `filter-plugin` world
//! (`wit/0.2.0/`) with bare wit-bindgen and its default options: the same policy as
//! `plugins/api-version-js`, in its simplest form. Kept on 0.2.0 when the contract moved to
//! 0.3.0, so the tests prove a component built against 0.2.0 still loads and runs (its hooks
//! are handed the identity as a record, as 0.2.0 says: an allowed request also gets
//! `x-v2-subject`, the subject of the identity it was handed, or `anonymous`). A refused version is logged
//! (`log.emit` of 0.2.0), so the component imports `portcullis:plugin/log@0.2.0` and loads only
//! where the host links 0.2.0's capabilities. Configuration `{"allowed": ["1", "2"]}`: a request whose
//! `x-api-version` is allowed continues (the header set to the trimmed value); any other gets a
//! 400 problem document (RFC 9457). `allowed` missing or empty is refused at `/allowed`.
//!
//! Only built for `wasm32`, like the other bare guests.
#![cfg(target_arch = "wasm32")]
#![allow(missing_docs, unsafe_code, reason = "wit-bindgen's generated canonical-ABI glue")]

wit_bindgen::generate!({
    path: "../../../wit/0.2.0",
    world: "portcullis:plugin/filter-plugin",
});

use std::cell::RefCell;

use exports::portcullis::plugin::filter::{FilterAction, Guest, HookSet};
use portcullis::plugin::types::{ConfigError, Header, HeaderEdits, Identity, LocalResponse, Request, ResponseHead};

thread_local! {
    static ALLOWED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

struct Gate;

impl Guest for Gate {
    fn configure(config: String) -> Result<(), ConfigError> {
        let refused = |message: &str| ConfigError { pointer: "/allowed".to_owned(), message: message.to_owned() };
        let doc: serde_json::Value = serde_json::from_str(&config)
            .map_err(|e| ConfigError { pointer: String::new(), message: format!("not JSON: {e}") })?;
        let allowed: Vec<String> = doc["allowed"]
            .as_array()
            .ok_or_else(|| refused("a non-empty list of version strings"))?
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| refused("versions are strings")))
            .collect::<Result<_, _>>()?;
        if allowed.is_empty() {
            return Err(refused("a non-empty list of version strings"));
        }
        ALLOWED.with(|a| *a.borrow_mut() = allowed);
        Ok(())
    }

    fn hooks() -> HookSet {
        HookSet::ON_REQUEST
    }

    fn on_request(request: &Request, identity: Option<Identity>) -> FilterAction {
        let version = request.header("x-api-version").map(|v| v.trim().to_owned());
        let subject = identity.map_or_else(|| "anonymous".to_owned(), |i| i.subject);
        match version {
            Some(v) if ALLOWED.with(|a| a.borrow().contains(&v)) => FilterAction::Continue(HeaderEdits {
                remove: Vec::new(),
                set: vec![
                    Header { name: "x-api-version".to_owned(), value: v },
                    Header { name: "x-v2-subject".to_owned(), value: subject },
                ],
                append: Vec::new(),
            }),
            _ => {
                portcullis::plugin::log::emit(portcullis::plugin::log::Level::Info, "unsupported API version", &[]);
                FilterAction::Respond(LocalResponse {
                    status: 400,
                    headers: vec![Header {
                        name: "content-type".to_owned(),
                        value: "application/problem+json".to_owned(),
                    }],
                    body: br#"{"type":"about:blank","title":"Unsupported API version","status":400}"#.to_vec(),
                })
            }
        }
    }

    fn on_response(_: &Request, _: Option<Identity>, _: ResponseHead) -> FilterAction {
        FilterAction::Continue(HeaderEdits { remove: Vec::new(), set: Vec::new(), append: Vec::new() })
    }
}

export!(Gate);
