//! The host's `wasmtime::component::bindgen!`s: the current contract, `portcullis:plugin@0.3.0`
//! (`wit/`), at the top of this module, and the previous ones, `0.2.0` (`wit/0.2.0/`) in [`v2`]
//! and `0.1.0` (`wit/0.1.0/`) in [`v1`], so components built against any of them load (see
//! `docs/DECISIONS.md`, "Contract 0.2.0" and "Contract 0.3.0").
//!
//! Each world exports every plugin kind; a plugin component exports one. The host never
//! instantiates a world as a whole: it loads the one exported interface of the kind named in
//! the configuration through that interface's `GuestIndices`, so a component needs only that
//! export (and fails to load, with a clear error, when it lacks it).
//!
//! The rest of the host works in the current contract's types; [`super::legacy`] converts to
//! and from 0.1.0's at the call, [`super::previous`] to and from 0.2.0's.
#![allow(
    missing_docs,
    unsafe_code,
    reason = "generated from the WIT, whose doc comments carry over; its unsafe blocks are wasmtime's typed-function glue"
)]

/// The bindings of a contract of 0.2.0's capability set or later, from the WIT in `$path`:
/// outbound HTTP and `kv` as async host imports, every import trappable, async exports, and
/// `signatures.verifying-key` as the host's key type.
macro_rules! contract_bindings {
    ($path:literal) => {
        wasmtime::component::bindgen!({
            path: $path,
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
    };
}

contract_bindings!("../wit");

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

/// The `portcullis:plugin@0.2.0` contract, served for components built against it. Its records
/// have 0.3.0's shapes; only its hooks differ (they take the identity as a record).
pub mod v2 {
    contract_bindings!("../wit/0.2.0");
}
