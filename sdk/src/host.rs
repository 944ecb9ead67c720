//! The host's capabilities as plain functions: `log`, `kv`, the clock, the outbound HTTP
//! client, the audit trail, secrets and signature checks. Compiled for `wasm32` they call the
//! Portcullis host; compiled natively (in a plugin's unit tests) they call the thread-local
//! fake in [`crate::testing`].

pub use crate::bindings::portcullis::plugin::audit::AuditError;
pub use crate::bindings::portcullis::plugin::http_client::{HttpError, OutboundRequest, OutboundResponse};
pub use crate::bindings::portcullis::plugin::kv::{Cell, KvError};
pub use crate::bindings::portcullis::plugin::log::Level;

#[cfg(target_arch = "wasm32")]
use crate::bindings::portcullis::plugin as imp;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing::fake as imp;

/// Emits a log event with extra key/value `fields` into the gateway's log, tagged by the host
/// with the plugin id and request id. Messages over 16 KiB are truncated by the host.
pub fn log_with(level: Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    imp::log::emit(level, message, &fields);
}

/// Emits a log event at `level`.
pub fn log(level: Level, message: &str) {
    imp::log::emit(level, message, &[]);
}

/// Fails the current call: logs `message` at error level and panics, which the host sees as a
/// trap (on wasm32, Rust's panic is the `unreachable` instruction). The step's failure policy
/// then decides the request: fail-closed answers 500, or 503 when the cause was a `kv` call
/// that found the shared store unavailable; fail-open lets the request through and counts the
/// failure. The instance is discarded and a fresh one serves the next call.
///
/// Use it when the plugin cannot decide, for example a quota that cannot be read.
pub fn fail(message: &str) -> ! {
    imp::log::emit(Level::Error, message, &[]);
    panic!("{message}");
}

/// Wall-clock time in milliseconds since the Unix epoch, as the host (or the test fake) sees it.
pub fn now_ms() -> u64 {
    imp::clock::now_ms()
}

/// Sends one outbound HTTP request through the host, which allows only the origins on this
/// plugin's allow-list. Errors: see [`HttpError`].
pub fn http_send(request: &OutboundRequest) -> Result<OutboundResponse, HttpError> {
    imp::http_client::send(request)
}

/// Appends `record` (one JSON object on one line) to the plugin's hash-chained audit trail and
/// returns its hash (64 lowercase hex digits). Needs the `audit` capability; the host adds the
/// `prev` and `hash` members.
///
/// Errors: [`AuditError::InvalidRecord`] for a record that is not a non-empty one-line JSON
/// object under 64 KiB; [`AuditError::Unavailable`] when the sink cannot be written.
pub fn audit_append(record: &str) -> Result<String, AuditError> {
    imp::audit::append(record)
}

/// Appends the standard audit record of `exchange`, the one this [`crate::Logging::observe`]
/// call received, rendered by the host, and returns its hash (64 lowercase hex digits). Needs
/// the `audit` capability. The record's members are those of `docs/audit.md` (time, request
/// id, route, method, authority, path, client IP, subject, status, latency in ms, bytes in and
/// out, endpoint, the recorded request headers, each step's decision); the query string is
/// never recorded. Header values of `authorization`, `proxy-authorization`, `cookie`,
/// `set-cookie`, `x-api-key` and of the names in `redact` (any ASCII case) are written as
/// `"[redacted]"`.
///
/// The plugin neither builds nor serializes the record, which is most of what an audit step
/// costs when it does ([`audit_append`] stays for records of the plugin's own format). In the
/// gateway the host records its own copy of the exchange `observe` received; the native test
/// fake renders `exchange`, with the host's code (`portcullis-audit-record`).
///
/// Errors: [`AuditError::InvalidRecord`] when called outside `observe` or when the record
/// would be over 64 KiB; [`AuditError::Unavailable`] when the sink cannot be written.
#[cfg_attr(target_arch = "wasm32", allow(unused_variables, reason = "the host has the exchange"))]
pub fn audit_append_observed(exchange: &crate::Exchange, redact: &[String]) -> Result<String, AuditError> {
    #[cfg(target_arch = "wasm32")]
    return imp::audit::append_observed(redact);
    #[cfg(not(target_arch = "wasm32"))]
    return imp::audit::append_observed(exchange, redact);
}

/// Declares, from [`crate::Plugin::new`] (the host's `configure`), that this logging plugin
/// writes the standard audit record of every exchange and nothing else per exchange: the host
/// then appends that record itself for each exchange, exactly as [`audit_append_observed`]
/// with `redact` would from [`crate::Logging::observe`], and never calls `observe`. No
/// exchange is copied into the plugin and no call is made per exchange, which is most of what
/// an audit step costs (docs/BENCHMARKS.md, entry 48). Needs the `audit` capability. A plugin
/// that filters, enriches or formats records per exchange does not call it.
///
/// The native test fake remembers the declaration ([`crate::testing::each_exchange`]).
///
/// Errors: [`AuditError::InvalidRecord`] when called outside `configure`.
pub fn audit_append_each_exchange(redact: &[String]) -> Result<(), AuditError> {
    imp::audit::append_each_exchange(redact)
}

/// The plugin's key/value store: shared by all instances of the plugin, namespaced per plugin,
/// surviving configuration reloads. TTLs are in milliseconds.
pub mod kv {
    pub use super::Cell;
    use super::{KvError, imp};

    /// The value under `key`, or `None`.
    pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
        imp::kv::get(key)
    }

    /// Stores `value` under `key`, with an optional time to live in milliseconds.
    pub fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), KvError> {
        imp::kv::set(key, value, ttl_ms)
    }

    /// Removes `key`; `true` when a live value was removed.
    pub fn delete(key: &str) -> Result<bool, KvError> {
        imp::kv::delete(key)
    }

    /// Adds `delta` to the decimal counter under `key` atomically and returns the new value. An
    /// absent key counts as 0 and is created with `ttl_ms`; an existing key keeps its expiry.
    pub fn increment(key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, KvError> {
        imp::kv::increment(key, delta, ttl_ms)
    }

    /// Writes `value` only when the current value equals `expected` (`None`: absent). `true` when
    /// written.
    pub fn compare_and_swap(
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<bool, KvError> {
        imp::kv::compare_and_swap(key, expected, value, ttl_ms)
    }

    /// Takes `quantity` units from the generic cell rate algorithm cell (GCRA, ITU-T I.371)
    /// under `key`, atomically and in one round trip on a shared store: each unit costs
    /// `interval_us` microseconds, and units may be taken up to `window_us` ahead of now
    /// (the burst). A refused take changes nothing; a negative `quantity` gives units back.
    /// Now is the store's clock (the Redis server's on Redis).
    ///
    /// Errors: [`KvError::NotANumber`] when `key` holds something else; the store's
    /// [`KvError::Unavailable`], [`KvError::QuotaExceeded`] and [`KvError::TooLarge`].
    pub fn throttle(key: &str, interval_us: u64, window_us: u64, quantity: i32) -> Result<super::Cell, KvError> {
        imp::kv::throttle(key, interval_us, window_us, quantity)
    }
}

/// Secrets the gateway holds (`[secret.NAME]`), used by name: the host writes a secret's value
/// where it belongs and the plaintext never enters the plugin's memory. Every plugin may call
/// these; each call succeeds only for the secrets in the plugin's `secrets` grant (`[plugin.ID]
/// secrets = ["NAME"]`), and [`reveal`](secrets::reveal) only for those in `readable_secrets`.
pub mod secrets {
    pub use crate::bindings::portcullis::plugin::secrets::{BasicCredential, Credential, SecretError, SecretHeader};

    use super::{HttpError, OutboundRequest, OutboundResponse, imp};

    /// A header credential: `name: prefix` followed by the secret's value.
    pub fn header(name: &str, secret: &str, prefix: &str) -> Credential {
        Credential::Header(SecretHeader { name: name.to_owned(), secret: secret.to_owned(), prefix: prefix.to_owned() })
    }

    /// HTTP Basic credentials (RFC 7617) whose password is the secret.
    pub fn basic(user: &str, secret: &str) -> Credential {
        Credential::Basic(BasicCredential { user: user.to_owned(), secret: secret.to_owned(), form_encode: false })
    }

    /// OAuth 2.0 `client_secret_basic` (RFC 6749 §2.3.1): Basic credentials of the client id and
    /// the secret, each form-urlencoded first.
    pub fn client_secret_basic(client_id: &str, secret: &str) -> Credential {
        Credential::Basic(BasicCredential { user: client_id.to_owned(), secret: secret.to_owned(), form_encode: true })
    }

    /// Sets a header of the request sent upstream to `credential`, replacing the client's fields
    /// of that name (which later steps no longer see). The value is written by the host after
    /// the chain. From `authenticate` or `on_request` only; elsewhere the host fails the request.
    ///
    /// Errors: [`SecretError::NotGranted`]; [`SecretError::Invalid`] for a header name the host
    /// owns (hop-by-hop fields, `host`, `content-length`) or a prefix with CR, LF or NUL. The
    /// identity headers are refused after the call, failing the step.
    pub fn inject(credential: &Credential) -> Result<(), SecretError> {
        imp::secrets::inject(credential)
    }

    /// [`http_send`](super::http_send) with `credential` added by the host. Needs the
    /// `http-client` capability too.
    ///
    /// Errors: as `http_send`, and `not-allowed` / `invalid-request` for a credential that is
    /// not granted or cannot be written.
    pub fn send(request: &OutboundRequest, credential: &Credential) -> Result<OutboundResponse, HttpError> {
        imp::secrets::send(request, credential)
    }

    /// The value of `secret`, for a plugin granted it in `readable_secrets`.
    ///
    /// Errors: [`SecretError::NotGranted`] otherwise.
    pub fn reveal(secret: &str) -> Result<Vec<u8>, SecretError> {
        imp::secrets::reveal(secret)
    }
}

/// Signature checks done by the host natively (`ring`), for plugins that verify JSON Web
/// Signatures (RFC 7515; JWTs, RFC 7519): an RS256 check costs about 30 µs in the gateway,
/// against about 2 ms for an RSA library compiled into the plugin. Every plugin may use it; a
/// key is made once (from a JWK or PEM, pinned to one algorithm) and kept.
///
/// ```
/// use portcullis_sdk::signatures::{Algorithm, VerifyingKey};
/// // RFC 7515, appendix A.3: an ES256 JWS and its key.
/// let jwk = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
///              "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
/// let key = VerifyingKey::from_jwk(jwk, Algorithm::Es256).unwrap();
/// let jws = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
/// let (input, signature) = jws.rsplit_once('.').unwrap();
/// # use portcullis_signatures::base64url;
/// let signature = base64url(signature).unwrap(); // any base64url (RFC 4648 §5) decoder
/// assert!(key.verify(input.as_bytes(), &signature));
/// assert!(!key.verify(b"another message", &signature));
/// ```
pub mod signatures {
    pub use crate::bindings::portcullis::plugin::signatures::{Algorithm, KeyError};

    #[cfg(target_arch = "wasm32")]
    use crate::bindings::portcullis::plugin::signatures::VerifyingKey as Imp;
    #[cfg(not(target_arch = "wasm32"))]
    use crate::testing::fake::signatures::VerifyingKey as Imp;

    /// A public key held by the host, pinned to one [`Algorithm`]. Dropping it frees the
    /// host's copy; an instance may hold at most 1024 at once.
    #[derive(Debug)]
    pub struct VerifyingKey {
        key: Imp,
        algorithm: Algorithm,
    }

    impl VerifyingKey {
        /// A key for `algorithm` from one JSON Web Key (RFC 7517 §4), as JSON text: `RSA`
        /// (2048 to 8192 bits), `EC` on P-256 or P-384, or `OKP` Ed25519 (RFC 8037).
        ///
        /// Errors: [`KeyError::Invalid`] for a malformed JWK or one that does not fit
        /// `algorithm` (its `alg`, its `use` `enc`, its key type); [`KeyError::Unsupported`]
        /// for other key types, curves and RSA sizes, which the plugin may check itself.
        pub fn from_jwk(jwk: &str, algorithm: Algorithm) -> Result<VerifyingKey, KeyError> {
            Imp::from_jwk(jwk, algorithm).map(|key| VerifyingKey { key, algorithm })
        }

        /// A key for `algorithm` from PEM text (RFC 7468): `PUBLIC KEY` (SubjectPublicKeyInfo)
        /// or `RSA PUBLIC KEY` (PKCS #1). The first block is read.
        ///
        /// Errors: as [`VerifyingKey::from_jwk`]; other PEM labels are
        /// [`KeyError::Unsupported`].
        pub fn from_pem(pem: &str, algorithm: Algorithm) -> Result<VerifyingKey, KeyError> {
            Imp::from_pem(pem, algorithm).map(|key| VerifyingKey { key, algorithm })
        }

        /// The algorithm the key is pinned to.
        pub fn algorithm(&self) -> Algorithm {
            self.algorithm
        }

        /// Whether `signature` is this key's signature of `message`. For a JWS, `message` is
        /// the signing input as sent (`header.payload`) and `signature` the base64url-decoded
        /// third part (ECDSA: `r || s`, RFC 7518 §3.4). The host counts each check in
        /// `portcullis_plugin_signature_checks_total`.
        pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
            self.key.verify(message, signature)
        }
    }
}
