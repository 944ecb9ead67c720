//! A `filter` built against `portcullis:plugin@0.1.0` (`wit/0.1.0/`) with bare wit-bindgen, as a
//! plugin written before contract 0.2.0 was: it receives the whole `request-head` record and
//! has no `hooks` export, so the host calls both hooks.
//!
//! On the request it reports what it saw: `x-legacy-path` (the path), `x-legacy-tag` (the
//! `x-tag` header an earlier step set, or `none`), `x-legacy-subject` (the identity's subject,
//! or `anonymous`) and `x-legacy-route`. On the response it sets `x-legacy-status` to the
//! upstream's status and `x-legacy-echo` to the request's `x-echo`, if any. A step configuration other than `{}` is refused at `/`.
//! Each request is logged (`log.emit` of 0.1.0), so the component imports
//! `portcullis:plugin/log@0.1.0` and loads only where the host links 0.1.0's capabilities.
//!
//! Only built for `wasm32`: natively (a `cargo build --workspace`), export names such as
//! `portcullis:plugin/filter@0.1.0#configure` are not valid linker symbols, as the SDK notes.
#![cfg(target_arch = "wasm32")]
#![allow(missing_docs, unsafe_code, reason = "wit-bindgen's generated canonical-ABI glue")]

wit_bindgen::generate!({
    path: "../../../wit/0.1.0",
    world: "portcullis:plugin/filter-plugin",
});

use exports::portcullis::plugin::filter::{FilterAction, Guest};
use portcullis::plugin::types::{ConfigError, Header, HeaderEdits, Identity, RequestHead, ResponseHead};

struct Legacy;

fn set(name: &str, value: &str) -> Header {
    Header { name: name.to_owned(), value: value.to_owned() }
}

impl Guest for Legacy {
    fn configure(config: String) -> Result<(), ConfigError> {
        if config.trim() == "{}" {
            Ok(())
        } else {
            Err(ConfigError { pointer: String::new(), message: "takes no configuration".to_owned() })
        }
    }

    fn on_request(request: RequestHead, identity: Option<Identity>) -> FilterAction {
        portcullis::plugin::log::emit(portcullis::plugin::log::Level::Debug, "legacy filter saw a request", &[]);
        let tag = request.headers.iter().find(|h| h.name == "x-tag").map_or("none", |h| h.value.as_str());
        let subject = identity.as_ref().map_or("anonymous", |i| i.subject.as_str());
        FilterAction::Continue(HeaderEdits {
            remove: Vec::new(),
            set: vec![
                set("x-legacy-path", &request.path),
                set("x-legacy-tag", tag),
                set("x-legacy-subject", subject),
                set("x-legacy-route", &request.route),
            ],
            append: Vec::new(),
        })
    }

    fn on_response(request: RequestHead, _: Option<Identity>, response: ResponseHead) -> FilterAction {
        let mut headers = vec![set("x-legacy-status", &response.status.to_string())];
        if let Some(echo) = request.headers.iter().find(|h| h.name == "x-echo") {
            headers.push(set("x-legacy-echo", &echo.value));
        }
        FilterAction::Continue(HeaderEdits { remove: Vec::new(), set: headers, append: Vec::new() })
    }
}

export!(Legacy);
