//! Secrets: `[secret.NAME]` values the gateway holds so that plugins can use them without
//! reading them.
//!
//! A secret comes from an environment variable (`env = "VAR"`) or a file (`file = "PATH"`,
//! relative to the configuration file, one trailing newline removed). A file is one of the
//! snapshot's [`Sources`], so rewriting it reloads the gateway as a `$file` does; an environment
//! variable is read at every build from the process's environment.
//!
//! A plugin is granted secrets by name (`[plugin.ID] secrets = [...]`): it can then have the host
//! put one into the request sent upstream or into an `http-client` request (the WIT `secrets`
//! interface), and the value never enters its memory. `readable_secrets = [...]` grants reading
//! a value as well, for plugins that must compute with it.
//!
//! Values are [`SecretValue`]s, whose `Debug` prints `[redacted]`; the gateway shows secrets
//! only by name and source (`/status`), never by value, length or digest. A header the host
//! writes from a secret is marked sensitive (`HeaderValue::set_sensitive`), so HTTP/2's HPACK
//! never indexes it (RFC 7541 §7.1.3).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use http::{HeaderName, HeaderValue};

use crate::config::{Issue, LoadedConfig};
use crate::sources::Sources;

/// A secret's bytes. Formatting never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Arc<[u8]>);

impl SecretValue {
    /// The bytes, for the host code that writes them where they belong.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where a secret's value came from, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable, by name.
    Env(String),
    /// A file (resolved against the configuration file's directory).
    File(PathBuf),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(var) => write!(f, "env {var}"),
            SecretSource::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// One configured secret.
#[derive(Debug, Clone)]
pub struct Secret {
    /// Its source.
    pub source: SecretSource,
    /// Its value.
    pub value: SecretValue,
}

/// Every `[secret.NAME]` of a configuration, by name.
#[derive(Debug, Default, Clone)]
pub struct Secrets(BTreeMap<Arc<str>, Secret>);

impl Secrets {
    /// Reads every `[secret.NAME]` of `loaded`, recording secret files in `sources`.
    ///
    /// Errors, one [`Issue`] per secret, naming the field and never the value: an environment
    /// variable that is not set, a file that cannot be read, an empty value.
    pub fn load(loaded: &LoadedConfig, sources: &mut Sources) -> Result<Secrets, Vec<Issue>> {
        let mut secrets = BTreeMap::new();
        let mut issues = Vec::new();
        for (name, config) in &loaded.config.secrets {
            let read = match (&config.env, &config.file) {
                (Some(var), None) => read_env(var).map(|v| (SecretSource::Env(var.clone()), v, "env")),
                (None, Some(file)) => {
                    let path = loaded.resolve(file);
                    read_file(&path, sources).map(|v| (SecretSource::File(path), v, "file"))
                }
                // Validation refuses both and neither; a build of an unchecked model says so too.
                _ => Err("needs exactly one of `env` and `file`".to_owned()),
            };
            match read {
                Ok((_, value, field)) if value.is_empty() => {
                    issues.push(Issue::new(format!("secret.{name}.{field}"), "the secret is empty"));
                }
                Ok((source, value, _)) => {
                    secrets.insert(name.as_str().into(), Secret { source, value: SecretValue(value.into()) });
                }
                Err(why) => {
                    let field = if config.file.is_some() { "file" } else { "env" };
                    issues.push(Issue::new(format!("secret.{name}.{field}"), why));
                }
            }
        }
        if issues.is_empty() { Ok(Secrets(secrets)) } else { Err(issues) }
    }

    /// The secret called `name`.
    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.0.get(name)
    }

    /// Every secret, by name, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Secret)> {
        self.0.iter()
    }
}

fn read_env(var: &str) -> Result<Vec<u8>, String> {
    use std::os::unix::ffi::OsStringExt as _;
    std::env::var_os(var).map(|v| v.into_vec()).ok_or_else(|| format!("environment variable `{var}` is not set"))
}

/// The bytes of `path` without one trailing newline (`\n` or `\r\n`), recorded in `sources`
/// (a changed file reloads).
///
/// Errors: the file cannot be read, with its path.
pub(crate) fn read_file(path: &std::path::Path, sources: &mut Sources) -> Result<Vec<u8>, String> {
    let mut bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    sources.record(path, &bytes);
    // One trailing newline (`echo token > file`, or a CRLF editor), as the issue's and
    // Kubernetes' secret files have it.
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    Ok(bytes)
}

/// What a plugin may do with secrets, fixed at load: the secrets it may use by name, and which
/// of them it may read.
#[derive(Debug, Default)]
pub struct SecretGrants {
    usable: BTreeMap<Arc<str>, (SecretValue, bool)>,
}

/// Why a plugin cannot use a secret as it asked; mirrors the WIT `secret-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Not granted to the plugin (or not configured at all); names it.
    #[error("secret `{0}` is not granted to this plugin")]
    NotGranted(String),
    /// The credential cannot be written as asked; says why.
    #[error("{0}")]
    Invalid(String),
}

/// A credential a plugin asked for, as the WIT `credential` describes it.
#[derive(Debug, Clone)]
pub enum CredentialRequest<'a> {
    /// `name: prefix value`.
    Header {
        /// Field name.
        name: &'a str,
        /// Secret name.
        secret: &'a str,
        /// Text before the value.
        prefix: &'a str,
    },
    /// `authorization: Basic base64(user ":" value)` (RFC 7617).
    Basic {
        /// The user id (an OAuth 2.0 client id).
        user: &'a str,
        /// Secret name.
        secret: &'a str,
        /// Form-urlencode user and value first (OAuth 2.0 `client_secret_basic`, RFC 6749
        /// §2.3.1).
        form_encode: bool,
    },
}

/// A header field whose value the host wrote from a secret: marked sensitive, and shown by
/// `Debug` only by the secret's name.
#[derive(Clone)]
pub struct SecretHeader {
    /// The field name.
    pub name: HeaderName,
    /// The value (sensitive).
    pub value: HeaderValue,
    /// The secret it holds.
    pub secret: Arc<str>,
}

impl fmt::Debug for SecretHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretHeader({}: secret `{}`)", self.name, self.secret)
    }
}

impl SecretGrants {
    /// Grants for a plugin configured with `usable` and `readable` secret names (validation
    /// made sure each is configured; a name missing from `secrets` is simply not granted).
    pub fn new(secrets: &Secrets, usable: &[String], readable: &[String]) -> Self {
        let mut grants = BTreeMap::new();
        for name in usable.iter().chain(readable) {
            if let Some(secret) = secrets.get(name) {
                grants.insert(Arc::from(name.as_str()), (secret.value.clone(), readable.contains(name)));
            }
        }
        SecretGrants { usable: grants }
    }

    /// The names of the secrets granted, in name order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.usable.keys().map(|name| &**name)
    }

    /// The header `credential` asks for, with the secret's value written in.
    ///
    /// Errors: [`SecretError::NotGranted`]; [`SecretError::Invalid`] when the name is not a
    /// field name, or prefix, user or value cannot be in a header value (CR, LF, NUL and other
    /// control characters but tab), or names a field the host writes (hop-by-hop fields,
    /// `host`, `content-length`). The identity headers are checked where the header is applied,
    /// which knows them.
    pub fn header(&self, credential: &CredentialRequest<'_>) -> Result<SecretHeader, SecretError> {
        let (name, secret) = match credential {
            CredentialRequest::Header { name, secret, .. } => (*name, *secret),
            CredentialRequest::Basic { secret, .. } => ("authorization", *secret),
        };
        let Some((key, (value, _))) = self.usable.get_key_value(secret) else {
            return Err(SecretError::NotGranted(secret.to_owned()));
        };
        let field = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| SecretError::Invalid(format!("`{name}` is not a header field name")))?;
        if crate::proxy::headers::is_hop_by_hop(&field)
            || field == http::header::HOST
            || field == http::header::CONTENT_LENGTH
        {
            return Err(SecretError::Invalid(format!("`{field}` is a field the host writes")));
        }
        let mut bytes = Vec::new();
        match credential {
            CredentialRequest::Header { prefix, .. } => {
                bytes.extend_from_slice(prefix.as_bytes());
                bytes.extend_from_slice(value.expose());
            }
            CredentialRequest::Basic { user, form_encode, .. } => {
                let mut pair = Vec::with_capacity(user.len() + 1 + value.expose().len());
                if *form_encode {
                    form_urlencode(user.as_bytes(), &mut pair);
                    pair.push(b':');
                    form_urlencode(value.expose(), &mut pair);
                } else {
                    if user.contains(':') {
                        return Err(SecretError::Invalid("a Basic user id must not contain `:` (RFC 7617 §2)".into()));
                    }
                    pair.extend_from_slice(user.as_bytes());
                    pair.push(b':');
                    pair.extend_from_slice(value.expose());
                }
                bytes.extend_from_slice(b"Basic ");
                bytes.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(&pair).as_bytes());
            }
        }
        let mut value = HeaderValue::from_bytes(&bytes).map_err(|_| {
            SecretError::Invalid(format!(
                "the prefix, user or secret `{secret}` holds a character a header value cannot (CR, LF, NUL or \
                 another control character)"
            ))
        })?;
        value.set_sensitive(true);
        Ok(SecretHeader { name: field, value, secret: key.clone() })
    }

    /// The value of `secret`, for a plugin granted to read it.
    ///
    /// Errors: [`SecretError::NotGranted`] when it is not in the plugin's `readable_secrets`.
    pub fn reveal(&self, secret: &str) -> Result<&SecretValue, SecretError> {
        match self.usable.get(secret) {
            Some((value, true)) => Ok(value),
            _ => Err(SecretError::NotGranted(secret.to_owned())),
        }
    }
}

/// Appends `bytes` to `out` as `application/x-www-form-urlencoded` writes one value (WHATWG
/// URL §5.2): ASCII alphanumerics and `*-._` as they are, space as `+`, every other byte `%XX`.
fn form_urlencode(bytes: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(b),
            b' ' => out.push(b'+'),
            _ => out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants() -> SecretGrants {
        let mut map = BTreeMap::new();
        let secret = |v: &[u8]| Secret { source: SecretSource::Env("X".into()), value: SecretValue(v.into()) };
        map.insert(Arc::from("token"), secret(b"s3cr3t"));
        map.insert(Arc::from("key"), secret(b"hmac-key"));
        map.insert(Arc::from("broken"), secret(b"a\r\nb"));
        map.insert(Arc::from("other"), secret(b"not granted"));
        let secrets = Secrets(map);
        SecretGrants::new(&secrets, &["token".into(), "broken".into()], &["key".into()])
    }

    #[test]
    fn headers_carry_the_value_marked_sensitive_and_debug_shows_only_names() {
        let g = grants();
        let h = g.header(&CredentialRequest::Header { name: "authorization", secret: "token", prefix: "Bearer " });
        let h = h.expect("granted");
        assert_eq!(h.value, "Bearer s3cr3t");
        assert!(h.value.is_sensitive());
        let shown = format!("{h:?} {:?}", SecretValue(Arc::from(&b"s3cr3t"[..])));
        assert!(!shown.contains("s3cr3t"), "{shown}");
        // RFC 7617 §2: base64("client:s3cr3t").
        let basic = |user, form_encode| {
            g.header(&CredentialRequest::Basic { user, secret: "token", form_encode }).expect("granted").value
        };
        assert_eq!(basic("client", false), "Basic Y2xpZW50OnMzY3IzdA==");
        // RFC 6749 §2.3.1: base64("gate+way:s3cr3t").
        assert_eq!(basic("gate way", true), "Basic Z2F0ZSt3YXk6czNjcjN0");
    }

    #[test]
    fn ungranted_unreadable_and_unwritable_secrets_are_refused() {
        let g = grants();
        let header = |name, secret| g.header(&CredentialRequest::Header { name, secret, prefix: "" });
        assert_eq!(header("authorization", "other").unwrap_err(), SecretError::NotGranted("other".into()));
        assert!(matches!(header("bad name", "token"), Err(SecretError::Invalid(_))));
        assert!(matches!(header("transfer-encoding", "token"), Err(SecretError::Invalid(_))));
        assert!(matches!(header("host", "token"), Err(SecretError::Invalid(_))));
        let Err(SecretError::Invalid(why)) = header("x-key", "broken") else { panic!("CR LF accepted") };
        assert!(!why.contains("a\r\nb"));
        assert_eq!(g.reveal("key").map(SecretValue::expose), Ok(&b"hmac-key"[..]));
        assert_eq!(g.reveal("token").unwrap_err(), SecretError::NotGranted("token".into()));
        assert!(g.header(&CredentialRequest::Basic { user: "a:b", secret: "token", form_encode: false }).is_err());
    }
}
