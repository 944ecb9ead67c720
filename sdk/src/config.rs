//! Turning the step's JSON configuration into a plugin, with errors that name the field.

use crate::{ConfigError, Plugin};

/// Deserializes `json` into `P::Config` and builds `P`.
///
/// Errors: the JSON pointer (RFC 6901) of the field that failed to deserialize, e.g.
/// `/keys/0/alg`, with serde's message; or whatever [`Plugin::new`] refuses.
pub fn parse<P: Plugin>(json: &str) -> Result<P, ConfigError> {
    let mut de = serde_json::Deserializer::from_str(json);
    let config: P::Config = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| ConfigError { pointer: json_pointer(e.path()), message: e.inner().to_string() })?;
    de.end().map_err(|e| ConfigError::new("", e.to_string()))?;
    P::new(config)
}

fn json_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        pointer.push('/');
        match segment {
            Segment::Seq { index } => pointer.push_str(&index.to_string()),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
            Segment::Unknown => pointer.push('?'),
        }
    }
    pointer
}

impl ConfigError {
    /// A configuration error at `pointer` (RFC 6901 JSON pointer; empty for the whole document).
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { pointer: pointer.into(), message: message.into() }
    }
}
