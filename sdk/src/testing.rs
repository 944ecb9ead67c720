//! A native fake of the host, so plugin logic is unit-tested with plain `cargo test`.
//!
//! Each test thread has its own fake: a `kv` store honouring TTLs against the fake clock, a
//! record of every log event and audit record, a settable clock, an optional outbound HTTP
//! handler, granted secrets, and signature checks made with the gateway's own code (counted
//! by [`signature_checks`]). Start a test with [`reset`] when it depends on that state.
//!
//! ```
//! use portcullis_sdk::testing;
//! testing::reset();
//! testing::set_now_ms(1_000);
//! portcullis_sdk::kv::set("k", b"v", Some(500)).unwrap();
//! testing::advance_ms(500);
//! assert_eq!(portcullis_sdk::kv::get("k").unwrap(), None);
//! ```

use std::cell::RefCell;
use std::collections::HashMap;

use crate::host::{HttpError, Level, OutboundRequest, OutboundResponse};
use crate::request::Owned;
use crate::{ConfigError, Header, Plugin, Request};

/// One log event a plugin emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Severity.
    pub level: Level,
    /// The message text.
    pub message: String,
    /// Extra key/value pairs.
    pub fields: Vec<(String, String)>,
}

type HttpHandler = Box<dyn FnMut(&OutboundRequest) -> Result<OutboundResponse, HttpError>>;

struct State {
    now_ms: u64,
    kv: HashMap<String, (Vec<u8>, Option<u64>)>,
    kv_down: Option<String>,
    logs: Vec<LogRecord>,
    audit: Vec<String>,
    http: Option<HttpHandler>,
    /// Granted secrets: value, and whether it may be read.
    secrets: HashMap<String, (Vec<u8>, bool)>,
    injected: Vec<crate::secrets::Credential>,
    /// Signatures checked through `signatures`: valid, invalid.
    signature_checks: (u32, u32),
    /// What `audit.append-each-exchange` declared: the names to redact.
    each_exchange: Option<Vec<String>>,
}

impl Default for State {
    fn default() -> Self {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        State {
            now_ms,
            kv: HashMap::new(),
            kv_down: None,
            logs: Vec::new(),
            audit: Vec::new(),
            http: None,
            secrets: HashMap::new(),
            injected: Vec::new(),
            signature_checks: (0, 0),
            each_exchange: None,
        }
    }
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    STATE.with(|s| f(&mut s.borrow_mut()))
}

/// Clears this thread's fake: empty store and log, clock at the real current time, no HTTP
/// handler.
pub fn reset() {
    with_state(|s| *s = State::default());
}

/// Sets the fake clock, in milliseconds since the Unix epoch.
pub fn set_now_ms(now_ms: u64) {
    with_state(|s| s.now_ms = now_ms);
}

/// Moves the fake clock forward by `ms` milliseconds.
pub fn advance_ms(ms: u64) {
    with_state(|s| s.now_ms += ms);
}

/// Every log event emitted on this thread since the last [`reset`].
pub fn logs() -> Vec<LogRecord> {
    with_state(|s| s.logs.clone())
}

/// Every record appended with [`crate::audit_append`] or [`crate::audit_append_observed`] on
/// this thread since the last [`reset`], as the plugin gave it or the host would render it
/// (without the host's `prev` and `hash`).
pub fn audit_records() -> Vec<String> {
    with_state(|s| s.audit.clone())
}

/// What the plugin declared with [`crate::audit_append_each_exchange`] on this thread since the
/// last [`reset`]: the header names it redacts in the standard record the host then appends for
/// every exchange (without calling its `observe`); none when it did not declare it.
pub fn each_exchange() -> Option<Vec<String>> {
    with_state(|s| s.each_exchange.clone())
}

/// Makes every `kv` call fail with `KvError::Unavailable(why)` (a shared store that is down),
/// or, with `None`, work again.
pub fn set_kv_unavailable(why: Option<&str>) {
    with_state(|s| s.kv_down = why.map(str::to_owned));
}

/// Answers outbound HTTP requests with `handler` instead of refusing them.
pub fn set_http_handler(handler: impl FnMut(&OutboundRequest) -> Result<OutboundResponse, HttpError> + 'static) {
    with_state(|s| s.http = Some(Box::new(handler)));
}

/// Builds a plugin from JSON configuration text exactly as the host's `configure` call does.
///
/// Errors: the same [`ConfigError`] the host would report, with the field's JSON pointer.
pub fn configure<P: Plugin>(json: &str) -> Result<P, ConfigError> {
    crate::config::parse::<P>(json)
}

/// Starts a [`Request`] for `method` and `target` (path with optional `?query`), as the host
/// would pass it: scheme `http`, authority `example.test`, client IP `127.0.0.1`, route `test`,
/// anonymous (see [`RequestBuilder::identity`]).
pub fn request(method: &str, target: &str) -> RequestBuilder {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    RequestBuilder(Owned {
        method: method.to_owned(),
        scheme: "http".to_owned(),
        authority: "example.test".to_owned(),
        path,
        query,
        headers: Vec::new(),
        client_ip: "127.0.0.1".to_owned(),
        client_cert: None,
        request_id: "test-request".to_owned(),
        route: "test".to_owned(),
        identity: None,
    })
}

/// Builder for a test [`Request`]; see [`request`].
#[derive(Debug, Clone)]
pub struct RequestBuilder(Owned);

impl RequestBuilder {
    /// Adds a header field; the name is lowercased as the host does.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.0.headers.push(Header { name: name.to_ascii_lowercase(), value: value.to_owned() });
        self
    }

    /// Sets the client IP address.
    pub fn client_ip(mut self, ip: &str) -> Self {
        self.0.client_ip = ip.to_owned();
        self
    }

    /// Sets the verified client certificate (mutual TLS); the scheme becomes `https`.
    pub fn client_cert(mut self, cert: crate::ClientCert) -> Self {
        self.0.scheme = "https".to_owned();
        self.0.client_cert = Some(cert);
        self
    }

    /// Sets the route id.
    pub fn route(mut self, route: &str) -> Self {
        self.0.route = route.to_owned();
        self
    }

    /// Sets the identity an earlier auth step established (`None`: anonymous, the default).
    pub fn identity(mut self, identity: Option<crate::Identity>) -> Self {
        self.0.identity = identity;
        self
    }

    /// The finished request.
    pub fn build(self) -> Request<'static> {
        Request::from_owned(self.0)
    }
}

/// Grants the plugin the secret `name` with `value`, readable with `secrets::reveal` when
/// `readable`.
pub fn grant_secret(name: &str, value: &[u8], readable: bool) {
    with_state(|s| s.secrets.insert(name.to_owned(), (value.to_vec(), readable)));
}

/// The credentials the plugin asked to have injected since [`reset`], in order.
pub fn injected() -> Vec<crate::secrets::Credential> {
    with_state(|s| s.injected.clone())
}

/// The signatures checked through [`crate::signatures::VerifyingKey::verify`] since [`reset`]:
/// how many verified, how many did not. The fake checks them with the gateway's own code
/// (`portcullis-signatures`), so a plugin's tests see what the gateway would decide.
pub fn signature_checks() -> (u32, u32) {
    with_state(|s| s.signature_checks)
}

/// The fake's implementation of each import, with the generated bindings' signatures.
pub(crate) mod fake {
    pub mod log {
        use super::super::{LogRecord, with_state};
        use crate::host::Level;

        pub fn emit(level: Level, message: &str, fields: &[(String, String)]) {
            with_state(|s| {
                s.logs.push(LogRecord { level, message: message.to_owned(), fields: fields.to_vec() });
            });
        }
    }

    pub mod clock {
        pub fn now_ms() -> u64 {
            super::super::with_state(|s| s.now_ms)
        }
    }

    pub mod audit {
        use crate::host::AuditError;

        pub fn append(record: &str) -> Result<String, AuditError> {
            let parsed: Result<serde_json::Map<String, serde_json::Value>, _> = serde_json::from_str(record);
            if record.contains('\n') || parsed.is_err() {
                return Err(AuditError::InvalidRecord("not a one-line JSON object".to_owned()));
            }
            super::super::with_state(|s| {
                s.audit.push(record.to_owned());
                Ok(format!("{:064x}", s.audit.len()))
            })
        }

        /// The host's `append-each-exchange`: remembered for [`super::super::each_exchange`].
        pub fn append_each_exchange(redact: &[String]) -> Result<(), AuditError> {
            super::super::with_state(|s| s.each_exchange = Some(redact.to_vec()));
            Ok(())
        }

        /// The host's `append-observed`, rendering `exchange` with the host's own code.
        pub fn append_observed(exchange: &crate::Exchange, redact: &[String]) -> Result<String, AuditError> {
            // The gateway hands a logging plugin only the header fields it records; the fake
            // records those of the exchange the test built.
            append(&portcullis_audit_record::render_exchange!(exchange, |_: &str| true, redact, crate::Phase))
        }
    }

    pub mod http_client {
        use crate::host::{HttpError, OutboundRequest, OutboundResponse};

        pub fn send(request: &OutboundRequest) -> Result<OutboundResponse, HttpError> {
            super::super::with_state(|s| match s.http.as_mut() {
                Some(handler) => handler(request),
                None => Err(HttpError::NotAllowed("no fake HTTP handler is set".to_owned())),
            })
        }
    }

    pub mod secrets {
        use crate::host::{HttpError, OutboundRequest, OutboundResponse};
        use crate::secrets::{Credential, SecretError};

        fn granted(credential: &Credential) -> Result<(String, String), SecretError> {
            let secret = match credential {
                Credential::Header(h) => &h.secret,
                Credential::Basic(b) => &b.secret,
            };
            super::super::with_state(|s| {
                let Some((value, _)) = s.secrets.get(secret) else {
                    return Err(SecretError::NotGranted(secret.clone()));
                };
                let value = String::from_utf8_lossy(value).into_owned();
                Ok(match credential {
                    Credential::Header(h) => (h.name.clone(), format!("{}{value}", h.prefix)),
                    // The fake writes `user:value` unencoded, for tests to read.
                    Credential::Basic(b) => ("authorization".to_owned(), format!("Basic {}:{value}", b.user)),
                })
            })
        }

        pub fn inject(credential: &Credential) -> Result<(), SecretError> {
            granted(credential)?;
            super::super::with_state(|s| s.injected.push(credential.clone()));
            Ok(())
        }

        /// Calls the fake HTTP handler with the credential's header written in.
        pub fn send(request: &OutboundRequest, credential: &Credential) -> Result<OutboundResponse, HttpError> {
            let (name, value) = granted(credential).map_err(|e| HttpError::NotAllowed(format!("{e:?}")))?;
            let mut request = request.clone();
            request.headers.retain(|h| h.name != name);
            request.headers.push(crate::Header { name, value });
            super::http_client::send(&request)
        }

        pub fn reveal(secret: &str) -> Result<Vec<u8>, SecretError> {
            super::super::with_state(|s| match s.secrets.get(secret) {
                Some((value, true)) => Ok(value.clone()),
                _ => Err(SecretError::NotGranted(secret.to_owned())),
            })
        }
    }

    pub mod signatures {
        use crate::signatures::{Algorithm, KeyError};

        /// A verifying key, checked natively as the host does.
        #[derive(Debug)]
        pub struct VerifyingKey(portcullis_signatures::VerifyingKey);

        fn ours(algorithm: Algorithm) -> portcullis_signatures::Algorithm {
            use portcullis_signatures::Algorithm as A;
            match algorithm {
                Algorithm::Rs256 => A::Rs256,
                Algorithm::Rs384 => A::Rs384,
                Algorithm::Rs512 => A::Rs512,
                Algorithm::Ps256 => A::Ps256,
                Algorithm::Ps384 => A::Ps384,
                Algorithm::Ps512 => A::Ps512,
                Algorithm::Es256 => A::Es256,
                Algorithm::Es384 => A::Es384,
                Algorithm::EdDsa => A::EdDsa,
            }
        }

        fn made(
            key: Result<portcullis_signatures::VerifyingKey, portcullis_signatures::KeyError>,
        ) -> Result<VerifyingKey, KeyError> {
            match key {
                Ok(key) => Ok(VerifyingKey(key)),
                Err(portcullis_signatures::KeyError::Unsupported(why)) => Err(KeyError::Unsupported(why)),
                Err(portcullis_signatures::KeyError::Invalid(why)) => Err(KeyError::Invalid(why)),
            }
        }

        impl VerifyingKey {
            pub fn from_jwk(jwk: &str, algorithm: Algorithm) -> Result<VerifyingKey, KeyError> {
                made(portcullis_signatures::VerifyingKey::from_jwk(jwk, ours(algorithm)))
            }

            pub fn from_pem(pem: &str, algorithm: Algorithm) -> Result<VerifyingKey, KeyError> {
                made(portcullis_signatures::VerifyingKey::from_pem(pem, ours(algorithm)))
            }

            pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
                let valid = self.0.verify(message, signature);
                super::super::with_state(|s| {
                    let (ok, bad) = &mut s.signature_checks;
                    *if valid { ok } else { bad } += 1;
                });
                valid
            }
        }
    }

    pub mod kv {
        use super::super::{State, with_state};
        use crate::host::{Cell, KvError};

        const MAX_KEY: usize = 512;
        const MAX_VALUE: usize = 64 * 1024;

        fn live<'a>(s: &'a mut State, key: &str) -> Option<&'a mut (Vec<u8>, Option<u64>)> {
            let now = s.now_ms;
            if s.kv.get(key).is_some_and(|(_, exp)| exp.is_some_and(|e| e <= now)) {
                s.kv.remove(key);
            }
            s.kv.get_mut(key)
        }

        fn check(key: &str, value: &[u8]) -> Result<(), KvError> {
            if key.len() > MAX_KEY || value.len() > MAX_VALUE {
                return Err(KvError::TooLarge);
            }
            with_state(|s| s.kv_down.clone()).map_or(Ok(()), |why| Err(KvError::Unavailable(why)))
        }

        pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
            check(key, b"")?;
            with_state(|s| Ok(live(s, key).map(|(v, _)| v.clone())))
        }

        pub fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), KvError> {
            check(key, value)?;
            with_state(|s| {
                let expiry = ttl_ms.map(|t| s.now_ms + t);
                s.kv.insert(key.to_owned(), (value.to_vec(), expiry));
                Ok(())
            })
        }

        pub fn delete(key: &str) -> Result<bool, KvError> {
            check(key, b"")?;
            with_state(|s| Ok(live(s, key).is_some() && s.kv.remove(key).is_some()))
        }

        pub fn increment(key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, KvError> {
            check(key, b"")?;
            with_state(|s| {
                let now = s.now_ms;
                let (current, expiry) = match live(s, key) {
                    Some((v, exp)) => {
                        let n = std::str::from_utf8(v)
                            .ok()
                            .and_then(|t| t.parse::<i64>().ok())
                            .ok_or(KvError::NotANumber)?;
                        (n, *exp)
                    }
                    None => (0, ttl_ms.map(|t| now + t)),
                };
                let next = current.checked_add(delta).ok_or(KvError::NotANumber)?;
                s.kv.insert(key.to_owned(), (next.to_string().into_bytes(), expiry));
                Ok(next)
            })
        }

        pub fn compare_and_swap(
            key: &str,
            expected: Option<&[u8]>,
            value: &[u8],
            ttl_ms: Option<u64>,
        ) -> Result<bool, KvError> {
            check(key, value)?;
            with_state(|s| {
                let current = live(s, key).map(|(v, _)| v.clone());
                if current.as_deref() != expected {
                    return Ok(false);
                }
                let expiry = ttl_ms.map(|t| s.now_ms + t);
                s.kv.insert(key.to_owned(), (value.to_vec(), expiry));
                Ok(true)
            })
        }

        /// GCRA as the host's stores run it (`host/src/plugin/kv/gcra.rs`), on the fake clock.
        pub fn throttle(key: &str, interval_us: u64, window_us: u64, quantity: i32) -> Result<Cell, KvError> {
            check(key, b"")?;
            with_state(|s| {
                let now = s.now_ms.saturating_mul(1000);
                let stored = match live(s, key) {
                    Some((v, _)) => Some(
                        std::str::from_utf8(v).ok().and_then(|t| t.parse::<u64>().ok()).ok_or(KvError::NotANumber)?,
                    ),
                    None => None,
                };
                let interval = interval_us.max(1);
                let cost = interval.saturating_mul(u64::from(quantity.unsigned_abs()));
                let remaining = |tat: u64| window_us.saturating_sub(tat.saturating_sub(now)) / interval;
                let (cell, store) = if quantity < 0 {
                    match stored {
                        None => {
                            (Cell { allowed: true, remaining: remaining(now), reset_us: 0, retry_after_us: 0 }, None)
                        }
                        Some(tat) => {
                            let back = tat.saturating_sub(cost).max(now);
                            let cell = Cell {
                                allowed: true,
                                remaining: remaining(back),
                                reset_us: back - now,
                                retry_after_us: 0,
                            };
                            (cell, Some(back))
                        }
                    }
                } else {
                    let tat = stored.unwrap_or(0).max(now);
                    let new_tat = tat.saturating_add(cost);
                    let allow_at = new_tat.saturating_sub(window_us);
                    if now < allow_at {
                        let cell = Cell {
                            allowed: false,
                            remaining: remaining(tat),
                            reset_us: tat - now,
                            retry_after_us: allow_at - now,
                        };
                        (cell, None)
                    } else {
                        let cell = Cell {
                            allowed: true,
                            remaining: remaining(new_tat),
                            reset_us: new_tat - now,
                            retry_after_us: 0,
                        };
                        (cell, Some(new_tat))
                    }
                };
                if let Some(tat) = store {
                    let ttl_ms = (tat - now).div_ceil(1000) + 1;
                    s.kv.insert(key.to_owned(), (tat.to_string().into_bytes(), Some(s.now_ms + ttl_ms)));
                }
                Ok(cell)
            })
        }
    }
}
