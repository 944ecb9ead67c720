//! Configuration: parse the TOML file ([`model`]), check it as a whole, and report every problem
//! with the file, the field path and the reason, the way `nginx -t` does.
//!
//! The request path never reads this raw form: [`crate::snapshot::Snapshot`] is built from it.

pub mod model;
mod net;
mod validate;

pub(crate) use validate::normalize_prefix;

use std::fmt;
use std::path::{Path, PathBuf};

pub use model::{
    AuditFsync, AuditSigningConfig, BreakerConfig, Capability, FailurePolicy, GatewayConfig, GoldenConfig,
    GoldenExpect, GoldenValue, Isolation, KvBackend, KvConfig, PluginConfig, PluginKind, PluginSigningConfig,
    RouteConfig, RuntimeConfig, SigningAlgorithm, StepConfig, StepMode,
};
pub use net::{Cidr, Origin};

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Where, as a field path: `route[1].chain[0].plugin`, `plugin.jwt.path`, or `line 12` for
    /// syntax errors.
    pub field: String,
    /// Why, in plain words.
    pub message: String,
}

impl Issue {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Issue { field: field.into(), message: message.into() }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        /// The configuration file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}", Invalid(file, issues))]
    Invalid {
        /// The configuration file.
        file: PathBuf,
        /// Every problem found, in file order where known.
        issues: Vec<Issue>,
    },
}

struct Invalid<'a>(&'a Path, &'a [Issue]);

impl fmt::Display for Invalid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.1.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}: {}", self.0.display(), issue.field, issue.message)?;
        }
        Ok(())
    }
}

/// A parsed and checked configuration, with the directory its relative paths start from.
#[derive(Debug)]
pub struct LoadedConfig {
    /// The file it came from.
    pub file: PathBuf,
    /// The file's directory: plugin paths and `$file` references are relative to it.
    pub base_dir: PathBuf,
    /// The parsed content.
    pub config: GatewayConfig,
    /// SHA-256 (hex) of the text that was parsed, for [`crate::sources::Sources`].
    pub digest: String,
}

impl LoadedConfig {
    /// A [`ConfigError::Invalid`] for this file.
    pub fn invalid(&self, issues: Vec<Issue>) -> ConfigError {
        ConfigError::Invalid { file: self.file.clone(), issues }
    }

    /// `path` resolved against the configuration file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.base_dir.join(path)
    }
}

/// Reads, parses and checks the configuration file at `file`.
///
/// Errors: [`ConfigError::Read`] when the file cannot be read; [`ConfigError::Invalid`] with
/// every problem found: TOML syntax (with line), unknown or mistyped fields (with the field
/// path), and references, names and values that do not hold together.
pub fn load(file: &Path) -> Result<LoadedConfig, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read { file: file.to_owned(), source })?;
    let mut config = check_text(&text).map_err(|issues| ConfigError::Invalid { file: file.to_owned(), issues })?;
    let base_dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    if let Some(dir) = &mut config.runtime.compile_cache_dir {
        *dir = base_dir.join(&*dir);
    }
    if let Some(file) = &mut config.kv.password_file {
        *file = base_dir.join(&*file);
    }
    let digest = crate::sources::sha256_hex(text.as_bytes());
    Ok(LoadedConfig { file: file.to_owned(), base_dir, config, digest })
}

/// Parses and checks configuration text, without reading any file it names.
///
/// Errors: every problem found, as [`load`] reports them (without the file name).
pub fn check_text(text: &str) -> Result<GatewayConfig, Vec<Issue>> {
    let config = parse(text).map_err(|issue| vec![issue])?;
    let issues = validate::check(&config);
    if issues.is_empty() { Ok(config) } else { Err(issues) }
}

/// Parses TOML text into the model; the issue names the field path and line.
fn parse(text: &str) -> Result<GatewayConfig, Issue> {
    let line_of =
        |span: Option<std::ops::Range<usize>>| span.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let de = toml::de::Deserializer::parse(text).map_err(|e| {
        let at = line_of(e.span()).map_or_else(|| "syntax".to_owned(), |l| format!("line {l}"));
        Issue::new(at, e.message().trim().to_owned())
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let line = line_of(e.inner().span());
        let mut field = if path == "." { "(top level)".to_owned() } else { path };
        if let Some(line) = line {
            field.push_str(&format!(" (line {line})"));
        }
        Issue::new(field, e.inner().message().trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names_a_misspelt_field_and_its_line() {
        let text =
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[[route]]\nid = \"a\"\npathh = \"/x\"\nupstream = \"u\"\n";
        let issue = parse(text).unwrap_err();
        assert!(issue.field.starts_with("route[0].pathh"), "{issue:?}");
        assert!(issue.field.contains("line 6"), "{issue:?}");
        assert!(issue.message.contains("unknown field `pathh`"), "{issue:?}");
    }

    #[test]
    fn parse_refuses_a_bad_address_block_or_origin_by_field_and_line() {
        let text = "[[listener]]\naddress = \"127.0.0.1:0\"\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n";
        let issue = parse(text).unwrap_err();
        assert!(issue.field.starts_with("listener[0].trusted_proxies[1]"), "{issue:?}");
        assert!(issue.field.contains("line 3"), "{issue:?}");
        assert!(issue.message.contains("`10.0.0.0/33` is not an address or CIDR block"), "{issue:?}");
        let text = "[plugin.p]\npath = \"p.wasm\"\nkind = \"auth\"\nallowed_origins = [\"https://idp.example/keys\"]\n";
        let issue = parse(text).unwrap_err();
        assert!(issue.field.starts_with("plugin.p.allowed_origins[0]"), "{issue:?}");
        assert!(issue.message.contains("must be an origin"), "{issue:?}");
    }

    #[test]
    fn parse_reports_syntax_errors_with_a_line() {
        let issue = parse("[listener\naddress = 1\n").unwrap_err();
        assert_eq!(issue.field, "line 1");
    }
}
