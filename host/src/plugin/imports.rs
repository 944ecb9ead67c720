//! Load-time check of a component's imports against what the host provides and what the plugin
//! is granted, so a plugin that wants the network, the filesystem or an ungranted capability is
//! refused before it serves, with every offending import named.

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::config::Capability;

/// Checks every import of `component`.
///
/// Errors: one message listing each refused import and why.
pub(crate) fn check(engine: &Engine, component: &Component, granted: &[Capability]) -> Result<(), String> {
    let mut refused = Vec::new();
    for (name, _) in component.component_type().imports(engine) {
        if let Some(why) = refusal(name, granted) {
            refused.push(format!("`{name}` ({why})"));
        }
    }
    if refused.is_empty() { Ok(()) } else { Err(format!("refused imports: {}", refused.join(", "))) }
}

/// Why `name` (e.g. `wasi:sockets/tcp@0.2.6`) is refused, or none when it is allowed.
fn refusal(name: &str, granted: &[Capability]) -> Option<&'static str> {
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
        // Linked with an empty context: no environment, arguments, stdio, or preopens.
        ("wasi:io" | "wasi:cli" | "wasi:clocks" | "wasi:random", _) => None,
        ("wasi:sockets", _) => Some("plugins get no network access; use the `http-client` capability"),
        ("wasi:filesystem", _) => Some("plugins get no filesystem; pass files with `{ \"$file\" = … }` in config"),
        ("wasi:http", _) => Some("plugins get no raw HTTP; use the `http-client` capability"),
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
            assert_eq!(refusal(ok, none), None, "{ok}");
        }
        for bad in
            ["wasi:sockets/tcp@0.2.6", "wasi:filesystem/types@0.2.6", "wasi:http/outgoing-handler@0.2.6", "acme:evil/x"]
        {
            assert!(refusal(bad, none).is_some(), "{bad}");
        }
        assert!(refusal("portcullis:plugin/kv@0.1.0", none).is_some());
        assert_eq!(refusal("portcullis:plugin/kv@0.1.0", &[Capability::Kv]), None);
        assert!(refusal("portcullis:plugin/http-client@0.1.0", &[Capability::Kv]).is_some());
    }
}
