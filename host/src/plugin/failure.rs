//! How a plugin call can fail, told apart for logs, metrics and the failure policy.

use wasmtime::Trap;

/// The kind of a plugin failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The call ran past its deadline (epoch interruption).
    Timeout,
    /// The call used up its `fuel`.
    OutOfFuel,
    /// The instance tried to grow memory past its `memory_mib`.
    OutOfMemory,
    /// The guest trapped; the code as wasmtime names it (`unreachable`, `stack overflow`, …).
    /// A Rust `panic!` in the guest shows as `wasm trap: wasm \`unreachable\` instruction
    /// executed`.
    Trap(String),
    /// The guest returned something the host refuses (bad header, status, size).
    InvalidOutput(String),
    /// The guest called a capability it is not granted (a host-side refusal that traps).
    CapabilityDenied(String),
    /// No instance could be created (pool exhausted, instantiation error).
    Unavailable(String),
    /// The plugin's crash-loop breaker is open: the call was not made.
    BreakerOpen,
    /// The plugin trapped after a `kv` call found the shared store unavailable (Redis down
    /// or slow): the plugin failed its request for that reason. Not counted by the breaker,
    /// since the plugin is not at fault.
    KvUnavailable(String),
}

impl FailureKind {
    /// A short stable label, for logs and metrics: `timeout`, `out-of-fuel`, `out-of-memory`,
    /// `trap`, `invalid-output`, `capability-denied`, `unavailable`, `breaker-open`,
    /// `kv-unavailable`.
    pub fn label(&self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::OutOfFuel => "out-of-fuel",
            FailureKind::OutOfMemory => "out-of-memory",
            FailureKind::Trap(_) => "trap",
            FailureKind::InvalidOutput(_) => "invalid-output",
            FailureKind::CapabilityDenied(_) => "capability-denied",
            FailureKind::Unavailable(_) => "unavailable",
            FailureKind::BreakerOpen => "breaker-open",
            FailureKind::KvUnavailable(_) => "kv-unavailable",
        }
    }

    /// Whether the gateway, rather than the plugin's own behaviour on this call, kept the call
    /// from succeeding (no instance free, breaker open, the shared `kv` store unreachable):
    /// answered 503 instead of 500.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, FailureKind::Unavailable(_) | FailureKind::BreakerOpen | FailureKind::KvUnavailable(_))
    }
}

/// The error a host function returns to trap a guest that called a capability it was not
/// granted; [`PluginFailure::from_wasmtime`] recognizes it.
#[derive(Debug, thiserror::Error)]
#[error("capability `{0}` is not granted to this plugin")]
pub struct CapabilityDenied(pub &'static str);

/// A failed plugin call: which plugin, and how.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin `{plugin}` failed ({}): {detail}", kind.label())]
pub struct PluginFailure {
    /// Plugin id.
    pub plugin: String,
    /// What went wrong.
    pub kind: FailureKind,
    /// Details for the log; never sent to clients.
    pub detail: String,
}

impl PluginFailure {
    /// A failure of `plugin` of `kind`.
    pub fn new(plugin: &str, kind: FailureKind) -> Self {
        let detail = match &kind {
            FailureKind::Trap(d)
            | FailureKind::InvalidOutput(d)
            | FailureKind::CapabilityDenied(d)
            | FailureKind::Unavailable(d)
            | FailureKind::KvUnavailable(d) => d.clone(),
            FailureKind::Timeout => "deadline exceeded".to_owned(),
            FailureKind::OutOfFuel => "fuel exhausted".to_owned(),
            FailureKind::OutOfMemory => "memory limit reached".to_owned(),
            FailureKind::BreakerOpen => "crash-loop breaker open".to_owned(),
        };
        PluginFailure { plugin: plugin.to_owned(), kind, detail }
    }

    /// Classifies an error from a wasmtime call. A memory limit hit through `StoreLimits` is not
    /// a `Trap` code, so the error chain is matched as well (FIELD-NOTES).
    pub fn from_wasmtime(plugin: &str, error: &wasmtime::Error) -> Self {
        let kind = match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => FailureKind::Timeout,
            Some(Trap::OutOfFuel) => FailureKind::OutOfFuel,
            Some(trap) => FailureKind::Trap(trap.to_string()),
            None if error.downcast_ref::<CapabilityDenied>().is_some() => {
                FailureKind::CapabilityDenied(error.to_string())
            }
            None => {
                let text = format!("{error:#}");
                if text.contains("growing memory") || text.contains("memory limit") {
                    FailureKind::OutOfMemory
                } else {
                    FailureKind::Trap(text)
                }
            }
        };
        let mut failure = PluginFailure::new(plugin, kind);
        failure.detail = format!("{error:#}");
        failure
    }
}
