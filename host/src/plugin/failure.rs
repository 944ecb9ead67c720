//! How a plugin call can fail, told apart for logs, metrics and the failure policy.

use wasmtime::Trap;

/// The kind of a plugin failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The call ran past its deadline (epoch interruption).
    Timeout,
    /// The instance tried to grow memory past its `memory_mib`.
    OutOfMemory,
    /// The guest trapped; the code as wasmtime names it (`unreachable`, `stack overflow`, …).
    /// A Rust `panic!` in the guest shows as `wasm trap: wasm \`unreachable\` instruction
    /// executed`.
    Trap(String),
    /// The guest returned something the host refuses (bad header, status, size).
    InvalidOutput(String),
    /// No instance could be created (pool exhausted, instantiation error).
    Unavailable(String),
}

impl FailureKind {
    /// A short stable label, for logs and metrics: `timeout`, `out-of-memory`, `trap`,
    /// `invalid-output`, `unavailable`.
    pub fn label(&self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::OutOfMemory => "out-of-memory",
            FailureKind::Trap(_) => "trap",
            FailureKind::InvalidOutput(_) => "invalid-output",
            FailureKind::Unavailable(_) => "unavailable",
        }
    }
}

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
            FailureKind::Trap(d) | FailureKind::InvalidOutput(d) | FailureKind::Unavailable(d) => d.clone(),
            FailureKind::Timeout => "deadline exceeded".to_owned(),
            FailureKind::OutOfMemory => "memory limit reached".to_owned(),
        };
        PluginFailure { plugin: plugin.to_owned(), kind, detail }
    }

    /// Classifies an error from a wasmtime call. A memory limit hit through `StoreLimits` is not
    /// a `Trap` code, so the error chain is matched as well (FIELD-NOTES).
    pub fn from_wasmtime(plugin: &str, error: &wasmtime::Error) -> Self {
        let kind = match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => FailureKind::Timeout,
            Some(trap) => FailureKind::Trap(trap.to_string()),
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
