//! An API version gate against `portcullis:plugin@0.2.0`'s published `filter-plugin` world with
//! bare wit-bindgen and its default options: the same policy as `plugins/api-version-js`, in
//! its simplest form. Configuration `{"allowed": ["1", "2"]}`: a request whose
//! `x-api-version` is allowed continues (the header set to the trimmed value); any other gets a
//! 400 problem document (RFC 9457). `allowed` missing or empty is refused at `/allowed`.
//!
//! Only built for `wasm32`, like the other bare guests.
#![cfg(target_arch = "wasm32")]
#![allow(missing_docs, unsafe_code, reason = "wit-bindgen's generated canonical-ABI glue")]

wit_bindgen::generate!({
    path: "../../../wit",
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

    fn on_request(request: &Request, _: Option<Identity>) -> FilterAction {
        let version = request.header("x-api-version").map(|v| v.trim().to_owned());
        match version {
            Some(v) if ALLOWED.with(|a| a.borrow().contains(&v)) => FilterAction::Continue(HeaderEdits {
                remove: Vec::new(),
                set: vec![Header { name: "x-api-version".to_owned(), value: v }],
                append: Vec::new(),
            }),
            _ => FilterAction::Respond(LocalResponse {
                status: 400,
                headers: vec![Header { name: "content-type".to_owned(), value: "application/problem+json".to_owned() }],
                body: br#"{"type":"about:blank","title":"Unsupported API version","status":400}"#.to_vec(),
            }),
        }
    }

    fn on_response(_: &Request, _: Option<Identity>, _: ResponseHead) -> FilterAction {
        FilterAction::Continue(HeaderEdits { remove: Vec::new(), set: Vec::new(), append: Vec::new() })
    }
}

export!(Gate);
