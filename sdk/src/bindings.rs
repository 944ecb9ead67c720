//! The SDK's one `wit_bindgen::generate!`, over the `gateway` world of `wit/`.
//!
//! The bindings module carries only the imports' description; each `export_*!` macro of this
//! crate invokes the generated per-interface export glue of one kind, so a component built with
//! the SDK exports exactly the kind it implements (checked: the `component-type` section that
//! wit-bindgen emits here is "gateway-with-all-of-its-exports-removed").
#![allow(missing_docs, unsafe_code, reason = "generated canonical-ABI glue; its docs come from the WIT doc comments")]

wit_bindgen::generate!({
    path: "../wit",
    world: "portcullis:plugin/gateway",
    pub_export_macro: true,
    default_bindings_module: "portcullis_sdk::bindings",
    additional_derives: [PartialEq, Eq],
});
