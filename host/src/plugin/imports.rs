//! Load-time check of a component's imports and exports, read from its binary before Cranelift
//! runs (a refusal takes milliseconds, not the 10–30 s an 18 MB Python component takes to
//! compile), against what the host links and what the plugin is granted.
//!
//! **WASI the host links but denies.** Toolchain runtimes import WASI whether or not the
//! plugin's code uses it: componentize-js 0.23 (StarlingMonkey) imports `wasi:http`,
//! `wasi:filesystem` and `wasi:cli`, componentize-py 0.25 adds seven `wasi:sockets`
//! interfaces. The host links all of them to a context that grants nothing (wasmtime-wasi's
//! `WasiCtx` with no preopens, no environment, empty stdio and every socket address denied;
//! `wasi:http/outgoing-handler` answering `HTTP-request-denied`), so by default such imports
//! are accepted and a use of them returns an error value. `strict_imports` (per plugin, or
//! `[runtime]` for all) refuses `wasi:filesystem`, `wasi:sockets` and `wasi:http` as the host
//! did before. The README's security model says why the default is safe.

use crate::config::{Capability, PluginKind};

/// The names a component imports and exports at its top level, e.g.
/// `portcullis:plugin/log@0.2.0` and `wasi:io/streams@0.2.12`.
#[derive(Debug, Clone, Default)]
pub struct Surface {
    /// Import names, in binary order.
    pub imports: Vec<String>,
    /// Export names, in binary order.
    pub exports: Vec<String>,
}

/// Reads the top-level import and export names of the component in `bytes` without
/// validating or compiling it (nested core modules and components are skipped).
///
/// Errors: the bytes are not a WebAssembly binary, are a core module rather than a component,
/// or are malformed in a section read here.
pub fn inspect(bytes: &[u8]) -> Result<Surface, String> {
    use wasmparser::{Encoding, Parser, Payload};
    let mut surface = Surface::default();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| format!("not a valid component: {e}"))?;
        match payload {
            Payload::Version { encoding: Encoding::Module, .. } if depth == 0 => {
                return Err("is a core WebAssembly module, not a component: build it for `wasm32-wasip2` \
                            or wrap it with `wasm-tools component new`"
                    .into());
            }
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(section) if depth == 1 => {
                for import in section {
                    let import = import.map_err(|e| format!("not a valid component: {e}"))?;
                    surface.imports.push(import.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(section) if depth == 1 => {
                for export in section {
                    let export = export.map_err(|e| format!("not a valid component: {e}"))?;
                    surface.exports.push(export.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok(surface)
}

/// Checks every import in `surface` against `granted` capabilities; with `strict`, WASI
/// interfaces that grant nothing here (`wasi:filesystem`, `wasi:sockets`, `wasi:http`) are
/// refused too.
///
/// Errors: one message listing each refused import and why.
pub fn check(surface: &Surface, granted: &[Capability], strict: bool) -> Result<(), String> {
    let refused: Vec<String> = surface
        .imports
        .iter()
        .filter_map(|name| refusal(name, granted, strict).map(|why| format!("`{name}` ({why})")))
        .collect();
    if refused.is_empty() { Ok(()) } else { Err(format!("refused imports: {}", refused.join(", "))) }
}

/// Checks that `surface` exports `kind`'s interface of a contract this host serves
/// (`portcullis:plugin/<kind>@0.3.x`, `@0.2.x` or `@0.1.x`). Function signatures are checked after
/// compilation, when the export is looked up.
///
/// Errors: the interface is not exported; the message lists what is.
pub fn check_exports(surface: &Surface, kind: PluginKind) -> Result<(), String> {
    let wanted = format!("portcullis:plugin/{kind}@");
    let served = surface.exports.iter().any(|name| {
        name.strip_prefix(&wanted)
            .is_some_and(|version| ["0.3.", "0.2.", "0.1."].iter().any(|v| version.starts_with(v)))
    });
    if served {
        return Ok(());
    }
    let exported = if surface.exports.is_empty() {
        "nothing".to_owned()
    } else {
        surface.exports.iter().map(|e| format!("`{e}`")).collect::<Vec<_>>().join(", ")
    };
    Err(format!(
        "the component does not export the `{kind}` kind's interface (`portcullis:plugin/{kind}@0.3.0`, \
         0.2.0 or 0.1.0); it exports {exported}"
    ))
}

/// Why `name` (e.g. `wasi:sockets/tcp@0.2.6`) is refused, or none when it is allowed.
fn refusal(name: &str, granted: &[Capability], strict: bool) -> Option<&'static str> {
    let interface = name.split('@').next().unwrap_or(name);
    let (package, _) = interface.split_once('/').unwrap_or((interface, ""));
    match (package, interface) {
        ("portcullis:plugin", "portcullis:plugin/types" | "portcullis:plugin/log" | "portcullis:plugin/clock") => None,
        ("portcullis:plugin", "portcullis:plugin/kv") => {
            (!granted.contains(&Capability::Kv)).then_some("the `kv` capability is not granted")
        }
        ("portcullis:plugin", "portcullis:plugin/http-client") => {
            (!granted.contains(&Capability::HttpClient)).then_some("the `http-client` capability is not granted")
        }
        ("portcullis:plugin", "portcullis:plugin/audit") => {
            (!granted.contains(&Capability::Audit)).then_some("the `audit` capability is not granted")
        }
        // Each call is checked against the secrets granted by name.
        ("portcullis:plugin", "portcullis:plugin/secrets") => None,
        // Pure computation on keys the plugin hands in, bounded per instance.
        ("portcullis:plugin", "portcullis:plugin/signatures") => None,
        // Linked with an empty context: no environment, arguments, stdio, or preopens.
        ("wasi:io" | "wasi:cli" | "wasi:clocks" | "wasi:random", _) => None,
        ("wasi:sockets", _) if strict => {
            Some("`strict_imports`: plugins get no network access; use the `http-client` capability")
        }
        ("wasi:filesystem", _) if strict => {
            Some("`strict_imports`: plugins get no filesystem; pass files with `{ \"$file\" = … }` in config")
        }
        ("wasi:http", _) if strict => {
            Some("`strict_imports`: plugins get no raw HTTP; use the `http-client` capability")
        }
        // Linked, granting nothing: no preopens, every address denied, every request denied.
        ("wasi:sockets" | "wasi:filesystem", _) => None,
        ("wasi:http", "wasi:http/types" | "wasi:http/outgoing-handler") => None,
        _ => Some("not provided by this host"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_allow_std_wasi_and_granted_capabilities_only() {
        let none: &[Capability] = &[];
        for ok in [
            "wasi:io/streams@0.2.6",
            "wasi:cli/stderr@0.2.6",
            "wasi:clocks/wall-clock@0.2.6",
            "portcullis:plugin/log@0.1.0",
        ] {
            assert_eq!(refusal(ok, none, true), None, "{ok}");
            assert_eq!(refusal(ok, none, false), None, "{ok}");
        }
        let denied = ["wasi:sockets/tcp@0.2.9", "wasi:filesystem/types@0.2.12", "wasi:http/outgoing-handler@0.2.10"];
        for linked in denied {
            assert!(refusal(linked, none, true).is_some(), "strict refuses {linked}");
            assert_eq!(refusal(linked, none, false), None, "{linked} is linked to a context that grants nothing");
        }
        for never in ["acme:evil/x", "wasi:http/incoming-handler@0.2.6", "wasi:keyvalue/store@0.2.0-draft"] {
            assert!(refusal(never, none, false).is_some(), "{never}");
        }
        assert!(refusal("portcullis:plugin/kv@0.1.0", none, false).is_some());
        assert_eq!(refusal("portcullis:plugin/kv@0.1.0", &[Capability::Kv], false), None);
        assert!(refusal("portcullis:plugin/http-client@0.1.0", &[Capability::Kv], false).is_some());
    }

    #[test]
    fn exports_name_the_kind_of_a_served_contract() {
        let surface = |e: &[&str]| Surface { imports: vec![], exports: e.iter().map(|s| (*s).to_owned()).collect() };
        assert!(check_exports(&surface(&["portcullis:plugin/filter@0.3.0"]), PluginKind::Filter).is_ok());
        assert!(check_exports(&surface(&["portcullis:plugin/filter@0.2.0"]), PluginKind::Filter).is_ok());
        assert!(check_exports(&surface(&["portcullis:plugin/filter@0.1.0"]), PluginKind::Filter).is_ok());
        let wrong = check_exports(&surface(&["portcullis:plugin/auth@0.2.0"]), PluginKind::Filter).unwrap_err();
        assert!(wrong.contains("`portcullis:plugin/auth@0.2.0`"), "{wrong}");
        assert!(check_exports(&surface(&["portcullis:plugin/filter@1.0.0"]), PluginKind::Filter).is_err());
        assert!(check_exports(&surface(&[]), PluginKind::Filter).unwrap_err().contains("exports nothing"));
    }

    #[test]
    fn a_core_module_is_refused_as_such() {
        let module = b"\0asm\x01\0\0\0";
        assert!(inspect(module).unwrap_err().contains("core WebAssembly module"));
        assert!(inspect(b"not wasm at all").is_err());
    }
}
