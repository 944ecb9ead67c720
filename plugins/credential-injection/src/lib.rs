//! `credential-injection`: a Portcullis `filter` plugin that sends the upstream the gateway's own
//! credential, held as a `[secret]`, in place of whatever the client sent (the in-process
//! equivalent of Envoy's `credential_injector` filter, without the plaintext in plugin memory).
//!
//! On every request it asks the host (WIT `secrets.inject`) to set `header` to `prefix` followed
//! by the secret's value. The host removes the client's fields of that name at once, so later
//! steps never see them, and writes the value into the request only as it leaves for the
//! upstream: neither this plugin, nor later steps, nor logging steps ever hold it. With `basic_user`
//! the credential is HTTP Basic (RFC 7617) with the secret as password.
//!
//! Each use is appended to the audit trail (the `audit` capability): the secret's name, the
//! header, and the subject it was used for, never the value, the per-user record of token use
//! that a shared upstream credential otherwise loses. A request without an identity is refused
//! with 401 unless `allow_anonymous = true`: a credential the gateway holds is lent to
//! authenticated callers only.
//!
//! Configuration reference: `plugins/credential-injection/README.md`.

use portcullis_sdk::secrets::{self, Credential};
use portcullis_sdk::{ConfigError, Filter, FilterAction, HeaderEdits, LocalResponse, Plugin, Request};
use serde::{Deserialize, Serialize};

/// The step configuration (JSON).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The request header to set, e.g. `authorization` (lowercased).
    #[serde(default = "authorization")]
    pub header: String,
    /// The `[secret.NAME]` whose value it gets; the plugin's `secrets` grant must list it.
    pub secret: String,
    /// Text before the value, e.g. `Bearer ` (RFC 6750 §2.1). Not with `basic_user`.
    #[serde(default)]
    pub prefix: String,
    /// Send `authorization: Basic base64(basic_user ":" secret)` (RFC 7617) instead.
    #[serde(default)]
    pub basic_user: Option<String>,
    /// Lend the credential to requests without an identity too. Default `false`: 401.
    #[serde(default)]
    pub allow_anonymous: bool,
    /// Append an audit record per use (needs the `audit` capability). Default `true`.
    #[serde(default = "yes")]
    pub audit: bool,
    /// The `realm` of the 401 challenge.
    #[serde(default = "realm")]
    pub realm: String,
}

fn authorization() -> String {
    "authorization".into()
}

fn yes() -> bool {
    true
}

fn realm() -> String {
    "portcullis".into()
}

/// The configured plugin.
pub struct CredentialInjection {
    config: Config,
    credential: Credential,
}

impl Plugin for CredentialInjection {
    type Config = Config;

    fn new(mut config: Config) -> Result<Self, ConfigError> {
        config.header = config.header.to_ascii_lowercase();
        let token =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token(&config.header) {
            return Err(ConfigError::new("/header", "must be a header field name (an RFC 9110 token)"));
        }
        if config.secret.is_empty() {
            return Err(ConfigError::new("/secret", "names a [secret.NAME] of the gateway configuration"));
        }
        if config.prefix.chars().any(char::is_control) {
            return Err(ConfigError::new("/prefix", "must not contain control characters"));
        }
        if !portcullis_sdk::is_quotable(&config.realm) {
            return Err(ConfigError::new("/realm", "must not contain quotes, backslashes or control characters"));
        }
        let credential = match &config.basic_user {
            Some(user) if user.contains(':') || user.chars().any(char::is_control) => {
                return Err(ConfigError::new(
                    "/basic_user",
                    "must not contain `:` or control characters (RFC 7617 §2)",
                ));
            }
            Some(_) if !config.prefix.is_empty() => {
                return Err(ConfigError::new("/prefix", "is not used with `basic_user`"));
            }
            Some(_) if config.header != "authorization" => {
                return Err(ConfigError::new("/header", "Basic credentials go in `authorization`"));
            }
            Some(user) => secrets::basic(user, &config.secret),
            None => secrets::header(&config.header, &config.secret, &config.prefix),
        };
        Ok(CredentialInjection { config, credential })
    }
}

/// The audit record of one use.
#[derive(Serialize)]
struct Used<'a> {
    event: &'static str,
    time_ms: u64,
    request_id: &'a str,
    route: &'a str,
    method: &'a str,
    path: &'a str,
    subject: Option<&'a str>,
    issuer: Option<&'a str>,
    secret: &'a str,
    header: &'a str,
}

impl Filter for CredentialInjection {
    fn on_request(&self, request: &Request<'_>) -> FilterAction {
        if request.subject().is_none() && !self.config.allow_anonymous {
            return FilterAction::Respond(LocalResponse::bearer_unauthorized(
                &self.config.realm,
                None,
                "Authentication is required",
            ));
        }
        if let Err(e) = secrets::inject(&self.credential) {
            // A grant missing from the gateway configuration: fail the request (its policy
            // decides), never forward the client's own credential instead.
            portcullis_sdk::fail(&format!("cannot inject secret `{}`: {e:?}", self.config.secret));
        }
        if self.config.audit {
            let identity = request.identity();
            let record = Used {
                event: "credential-injected",
                time_ms: portcullis_sdk::now_ms(),
                request_id: request.request_id(),
                route: request.route(),
                method: request.method(),
                path: request.path(),
                subject: identity.map(|i| i.subject.as_str()),
                issuer: identity.and_then(|i| i.issuer.as_deref()),
                secret: &self.config.secret,
                header: &self.config.header,
            };
            let line = portcullis_sdk::serde_json::to_string(&record).unwrap_or_default();
            if let Err(e) = portcullis_sdk::audit_append(&line) {
                // Unaudited use of the gateway's credential is what this step exists to prevent.
                portcullis_sdk::fail(&format!("cannot audit the use of secret `{}`: {e:?}", self.config.secret));
            }
        }
        FilterAction::Continue(HeaderEdits::default())
    }
}

portcullis_sdk::export_filter!(CredentialInjection);

#[cfg(test)]
mod tests {
    use portcullis_sdk::{Identity, testing};

    use super::*;

    fn plugin(json: &str) -> CredentialInjection {
        testing::configure(json).unwrap()
    }

    #[test]
    fn injects_the_granted_secret_and_audits_the_subject_without_the_value() {
        testing::reset();
        testing::grant_secret("upstream-token", b"s3cr3t-marker", false);
        let p = plugin(r#"{"secret": "upstream-token", "prefix": "Bearer "}"#);
        let alice = Identity::new("alice").with_issuer("https://issuer.example");
        let request = testing::request("GET", "/deploys")
            .header("authorization", "Bearer client-token")
            .identity(Some(alice))
            .build();
        assert!(matches!(p.on_request(&request), FilterAction::Continue(_)));
        let injected = testing::injected();
        assert_eq!(injected, [secrets::header("authorization", "upstream-token", "Bearer ")]);
        let records = testing::audit_records();
        assert_eq!(records.len(), 1);
        let record: serde_json::Value = serde_json::from_str(&records[0]).unwrap();
        assert_eq!(record["subject"], "alice");
        assert_eq!(record["secret"], "upstream-token");
        assert_eq!(record["event"], "credential-injected");
        assert!(!records[0].contains("s3cr3t-marker"));
    }

    #[test]
    fn anonymous_requests_get_401_unless_allowed_and_basic_credentials_are_built_by_the_host() {
        testing::reset();
        testing::grant_secret("client-secret", b"pw", false);
        let p = plugin(r#"{"secret": "client-secret", "basic_user": "gateway"}"#);
        let FilterAction::Respond(r) = p.on_request(&testing::request("GET", "/").build()) else { panic!() };
        assert_eq!(r.status, 401);
        assert!(testing::injected().is_empty());
        let open =
            plugin(r#"{"secret": "client-secret", "basic_user": "gateway", "allow_anonymous": true, "audit": false}"#);
        assert!(matches!(open.on_request(&testing::request("GET", "/").build()), FilterAction::Continue(_)));
        assert_eq!(testing::injected(), [secrets::basic("gateway", "client-secret")]);
        assert!(testing::audit_records().is_empty());
    }

    #[test]
    fn configuration_errors_name_the_field() {
        let err = |json: &str| testing::configure::<CredentialInjection>(json).err().unwrap().pointer;
        assert_eq!(err(r#"{"secret": ""}"#), "/secret");
        assert_eq!(err(r#"{"secret": "s", "header": "bad header"}"#), "/header");
        assert_eq!(err(r#"{"secret": "s", "basic_user": "a:b"}"#), "/basic_user");
        assert_eq!(err(r#"{"secret": "s", "basic_user": "a", "prefix": "Bearer "}"#), "/prefix");
        assert_eq!(err(r#"{"secret": "s", "prefix": "a\nb"}"#), "/prefix");
    }

    #[test]
    #[should_panic(expected = "cannot inject secret")]
    fn an_ungranted_secret_fails_the_call() {
        testing::reset();
        let p = plugin(r#"{"secret": "missing", "allow_anonymous": true}"#);
        p.on_request(&testing::request("GET", "/").build());
    }
}
