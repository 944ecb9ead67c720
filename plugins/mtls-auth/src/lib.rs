//! `mtls-auth`: a Portcullis `auth` plugin that turns the client certificate the listener
//! verified (mutual TLS, `[listener.tls] client_ca_file`) into the request's identity, the way
//! Envoy's and Istio's peer authentication name a workload by its certificate.
//!
//! - The listener has already checked the chain to its CA, the validity period and the client's
//!   possession of the key; the plugin only reads `request-head.client-cert`.
//! - The subject is the certificate's first URI subject alternative name (a SPIFFE ID such as
//!   `spiffe://example.org/billing`) by default; `subject = "dns"` takes the first DNS name and
//!   `subject = "dn"` the subject distinguished name. A certificate without that name is refused.
//! - `allowed_subjects` (exact) or `allowed_prefixes` (e.g. a SPIFFE trust domain) narrow which
//!   certificates are accepted beyond "signed by the CA"; empty lists accept any verified one.
//! - `roles` and `scopes` map subjects to what they are granted, for a later `rbac` step.
//! - No certificate: 401 (`require_cert = true`, the default) or anonymous. A refused
//!   certificate: 403. Responses are RFC 9457 problem documents.
//!
//! Configuration reference: `plugins/mtls-auth/README.md`.

use std::collections::BTreeMap;

use portcullis_sdk::{
    Auth, AuthOutcome, Authenticated, ClientCert, ConfigError, Identity, LocalResponse, Plugin, Request,
};
use serde::Deserialize;

/// Which certificate name becomes the subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectFrom {
    /// The first URI subject alternative name (SPIFFE ID).
    #[default]
    Uri,
    /// The first DNS subject alternative name.
    Dns,
    /// The subject distinguished name.
    Dn,
}

/// The step configuration (JSON).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Which name is the subject. Default `uri`.
    #[serde(default)]
    pub subject: SubjectFrom,
    /// Subjects accepted exactly. With `allowed_prefixes`, both empty accept every verified
    /// certificate.
    #[serde(default)]
    pub allowed_subjects: Vec<String>,
    /// Subject prefixes accepted, e.g. `spiffe://example.org/`.
    #[serde(default)]
    pub allowed_prefixes: Vec<String>,
    /// Roles granted per subject.
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    /// Scopes granted per subject.
    #[serde(default)]
    pub scopes: BTreeMap<String, Vec<String>>,
    /// When false, a request without a client certificate continues as anonymous. Default true.
    #[serde(default = "yes")]
    pub require_cert: bool,
}

fn yes() -> bool {
    true
}

/// The configured plugin.
pub struct MtlsAuth {
    config: Config,
}

impl Plugin for MtlsAuth {
    type Config = Config;

    fn new(config: Config) -> Result<Self, ConfigError> {
        for (field, list) in
            [("/allowed_subjects", &config.allowed_subjects), ("/allowed_prefixes", &config.allowed_prefixes)]
        {
            if let Some(i) = list.iter().position(String::is_empty) {
                return Err(ConfigError::new(format!("{field}/{i}"), "must not be empty"));
            }
        }
        Ok(MtlsAuth { config })
    }
}

// === impl MtlsAuth ===

impl MtlsAuth {
    /// The configured name of `cert`, if it has one.
    pub fn subject_of(&self, cert: &ClientCert) -> Option<String> {
        match self.config.subject {
            SubjectFrom::Uri => cert.uris.first().cloned(),
            SubjectFrom::Dns => cert.dns_names.first().cloned(),
            SubjectFrom::Dn => Some(cert.subject.clone()).filter(|s| !s.is_empty()),
        }
    }

    fn allowed(&self, subject: &str) -> bool {
        let (exact, prefixes) = (&self.config.allowed_subjects, &self.config.allowed_prefixes);
        (exact.is_empty() && prefixes.is_empty())
            || exact.iter().any(|s| s == subject)
            || prefixes.iter().any(|p| subject.starts_with(p.as_str()))
    }
}

impl Auth for MtlsAuth {
    fn authenticate(&self, request: &Request<'_>) -> AuthOutcome {
        let Some(cert) = request.client_cert() else {
            if !self.config.require_cert {
                return AuthOutcome::Anonymous;
            }
            let detail = "A client certificate is required";
            return AuthOutcome::Denied(
                LocalResponse::problem(401, "urn:portcullis:problem:unauthorized", "Unauthorized", detail)
                    .with_header("www-authenticate", "MutualTLS"),
            );
        };
        let subject = self.subject_of(&cert);
        let Some(subject) = subject.filter(|s| self.allowed(s)) else {
            let detail = "The client certificate is not allowed on this route";
            return AuthOutcome::Denied(LocalResponse::problem(
                403,
                "urn:portcullis:problem:forbidden",
                "Forbidden",
                detail,
            ));
        };
        let roles = self.config.roles.get(&subject).cloned().unwrap_or_default();
        let scopes = self.config.scopes.get(&subject).cloned().unwrap_or_default();
        Authenticated::new(Identity::new(subject).with_roles(roles).with_scopes(scopes)).into()
    }
}

portcullis_sdk::export_auth!(MtlsAuth);

#[cfg(test)]
mod tests {
    use portcullis_sdk::testing;

    use super::*;

    fn cert(uri: &str) -> ClientCert {
        ClientCert {
            subject: "O=Example, CN=billing".into(),
            dns_names: vec!["billing.internal".into()],
            uris: vec![uri.into()],
            sha256: "00".repeat(32),
        }
    }

    fn authenticate(config: &str, cert: Option<ClientCert>) -> AuthOutcome {
        let plugin: MtlsAuth = testing::configure(config).unwrap();
        let mut request = testing::request("GET", "/");
        if let Some(cert) = cert {
            request = request.client_cert(cert);
        }
        plugin.authenticate(&request.build())
    }

    #[test]
    fn the_spiffe_id_becomes_the_subject_with_its_roles() {
        let config = r#"{"allowed_prefixes": ["spiffe://example.org/"], "roles": {"spiffe://example.org/billing": ["billing"]}}"#;
        let AuthOutcome::Authenticated(done) = authenticate(config, Some(cert("spiffe://example.org/billing"))) else {
            panic!()
        };
        assert_eq!(done.identity.subject, "spiffe://example.org/billing");
        assert_eq!(done.identity.roles, ["billing"]);
    }

    #[test]
    fn dns_and_dn_subjects_can_be_chosen() {
        let AuthOutcome::Authenticated(done) = authenticate(r#"{"subject": "dns"}"#, Some(cert("spiffe://x/y"))) else {
            panic!()
        };
        assert_eq!(done.identity.subject, "billing.internal");
        let AuthOutcome::Authenticated(done) = authenticate(r#"{"subject": "dn"}"#, Some(cert("spiffe://x/y"))) else {
            panic!()
        };
        assert_eq!(done.identity.subject, "O=Example, CN=billing");
    }

    #[test]
    fn missing_certificates_get_401_and_foreign_ones_403() {
        let AuthOutcome::Denied(r) = authenticate("{}", None) else { panic!() };
        assert_eq!(r.status, 401);
        let config = r#"{"allowed_subjects": ["spiffe://example.org/billing"]}"#;
        let AuthOutcome::Denied(r) = authenticate(config, Some(cert("spiffe://example.org/orders"))) else { panic!() };
        assert_eq!(r.status, 403);
        assert!(matches!(authenticate(r#"{"require_cert": false}"#, None), AuthOutcome::Anonymous));
    }

    #[test]
    fn empty_allow_list_entries_are_refused() {
        let err = testing::configure::<MtlsAuth>(r#"{"allowed_prefixes": [""]}"#).err().unwrap();
        assert_eq!(err.pointer, "/allowed_prefixes/0");
    }
}
