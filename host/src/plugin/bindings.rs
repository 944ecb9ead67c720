//! The host's one `wasmtime::component::bindgen!`, over the `gateway` world of `wit/`.
//!
//! The world exports every plugin kind; a plugin component exports one. The host never
//! instantiates the world as a whole: it loads the one exported interface of the kind named in
//! the configuration through that interface's `GuestIndices`, so a component needs only that
//! export (and fails to load, with a clear error, when it lacks it).
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
        default: trappable,
    },
    exports: { default: async },
});
