//! The host's `wasmtime::component::bindgen!`s: the current contract, `portcullis:plugin@0.2.0`
//! (`wit/`), at the top of this module, and the previous one, `0.1.0` (`wit/0.1.0/`), in
//! [`v1`], so components built against either load (see `docs/DECISIONS.md`, "Contract 0.2.0").
//!
//! Each world exports every plugin kind; a plugin component exports one. The host never
//! instantiates a world as a whole: it loads the one exported interface of the kind named in
//! the configuration through that interface's `GuestIndices`, so a component needs only that
//! export (and fails to load, with a clear error, when it lacks it).
//!
//! The rest of the host works in 0.2.0's types; [`super::legacy`] converts to and from 0.1.0's
//! at the call.
#![allow(
    missing_docs,
    unsafe_code,
    reason = "generated from the WIT, whose doc comments carry over; its unsafe blocks are wasmtime's typed-function glue"
)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "portcullis:plugin/gateway",
    imports: {
        "portcullis:plugin/http-client.send": async | trappable,
        "portcullis:plugin/secrets.send": async | trappable,
        "portcullis:plugin/kv.get": async | trappable,
        "portcullis:plugin/kv.set": async | trappable,
        "portcullis:plugin/kv.delete": async | trappable,
        "portcullis:plugin/kv.increment": async | trappable,
        "portcullis:plugin/kv.compare-and-swap": async | trappable,
        "portcullis:plugin/kv.throttle": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    with: { "portcullis:plugin/signatures.verifying-key": portcullis_signatures::VerifyingKey },
});

/// The `portcullis:plugin@0.1.0` contract, served for components built against it.
pub mod v1 {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "portcullis:plugin/gateway",
        imports: {
            "portcullis:plugin/http-client.send": async | trappable,
            "portcullis:plugin/kv.get": async | trappable,
            "portcullis:plugin/kv.set": async | trappable,
            "portcullis:plugin/kv.delete": async | trappable,
            "portcullis:plugin/kv.increment": async | trappable,
            "portcullis:plugin/kv.compare-and-swap": async | trappable,
            default: trappable,
        },
        exports: { default: async },
    });
}
