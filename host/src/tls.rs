//! TLS with rustls (ring provider, TLS 1.2 and 1.3 only): listener configurations with
//! certificates chosen by SNI, ALPN `h2`/`http/1.1` and optional client certificates; upstream
//! client configurations with system or configured roots, SNI, hostname verification and an
//! optional client certificate.
//!
//! PEM files are parsed with `rustls-pki-types`' [`PemObject`] (`rustls-pemfile` is archived).
//! Every file is read when a snapshot is built, so a reload picks up renewed certificates; new
//! connections get them, open ones keep the session they negotiated.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::config::model::{ClientAuth, ListenerTlsConfig, TlsVersion, UpstreamTlsConfig};
use crate::config::{Issue, LoadedConfig};
use crate::sources::Sources;

/// The crypto provider every TLS configuration uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

fn versions(min: TlsVersion) -> &'static [&'static SupportedProtocolVersion] {
    match min {
        TlsVersion::Tls12 => rustls::ALL_VERSIONS,
        TlsVersion::Tls13 => &TLS13_ONLY,
    }
}

/// Builds a listener's server configuration from `tls`, reading every file it names (relative
/// to the configuration file) and adding them to `sources` so hot reload watches them.
///
/// Errors: one [`Issue`] per unreadable or invalid file, under `at` (e.g.
/// `listener[0].tls.certificates[1].cert_file`): no certificate or key in the PEM, a key that
/// does not match its certificate, a certificate without DNS names (beyond the first), a CA
/// file without certificates.
pub fn server_config(
    loaded: &LoadedConfig,
    tls: &ListenerTlsConfig,
    at: &str,
    sources: &mut Sources,
) -> Result<Arc<ServerConfig>, Vec<Issue>> {
    let mut issues = Vec::new();
    let mut resolver = SniResolver::default();
    for (i, cert) in tls.certificates.iter().enumerate() {
        let field = format!("{at}.certificates[{i}]");
        let cert_path = loaded.resolve(&cert.cert_file);
        let key_path = loaded.resolve(&cert.key_file);
        sources.record_now(&cert_path);
        sources.record_now(&key_path);
        match certified_key(&cert_path, &key_path) {
            Ok(key) => {
                if key.end_entity_cert().is_ok_and(|der| !currently_valid(der)) {
                    tracing::warn!(cert_file = %cert_path.display(), "{field}: the certificate is expired or not yet valid; clients will refuse it");
                }
                if let Err(why) = resolver.add(key, i == 0) {
                    issues.push(Issue::new(format!("{field}.cert_file"), why));
                }
            }
            Err((file, why)) => issues.push(Issue::new(format!("{field}.{file}"), why)),
        }
    }
    let builder = ServerConfig::builder_with_provider(provider()).with_protocol_versions(versions(tls.min_version));
    let builder = match builder {
        Ok(b) => b,
        Err(e) => return Err(vec![Issue::new(format!("{at}.min_version"), e.to_string())]),
    };
    let builder = match &tls.client_ca_file {
        None => Some(builder.with_no_client_auth()),
        Some(file) => {
            let path = loaded.resolve(file);
            sources.record_now(&path);
            let verifier = roots(&path).and_then(|roots| {
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                let verifier = match tls.client_auth {
                    ClientAuth::Required => verifier,
                    ClientAuth::Optional => verifier.allow_unauthenticated(),
                };
                verifier.build().map_err(|e| format!("{}: {e}", path.display()))
            });
            match verifier {
                Ok(v) => Some(builder.with_client_cert_verifier(v)),
                Err(why) => {
                    issues.push(Issue::new(format!("{at}.client_ca_file"), why));
                    None
                }
            }
        }
    };
    match builder {
        Some(builder) if issues.is_empty() => {
            let mut config = builder.with_cert_resolver(Arc::new(resolver));
            config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
            Ok(Arc::new(config))
        }
        _ => Err(issues),
    }
}

/// Builds the client configuration for an upstream's endpoints: roots from `ca_file` or the
/// system, and the optional client certificate. Files are added to `sources`. ALPN is left
/// empty: hyper-rustls sets `h2` or `http/1.1` from the upstream's `protocol` (and refuses a
/// configuration that already has some).
///
/// Errors: an [`Issue`] under `at` naming the file and reason; a system without any root
/// certificate when no `ca_file` is given.
pub fn client_config(
    loaded: &LoadedConfig,
    tls: &UpstreamTlsConfig,
    at: &str,
    sources: &mut Sources,
) -> Result<ClientConfig, Issue> {
    let roots = match &tls.ca_file {
        Some(file) => {
            let path = loaded.resolve(file);
            sources.record_now(&path);
            roots(&path).map_err(|why| Issue::new(format!("{at}.ca_file"), why))?
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(Issue::new(
                    format!("{at}.ca_file"),
                    "no system root certificates found (install ca-certificates or set `ca_file`)",
                ));
            }
            roots
        }
    };
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| Issue::new(format!("{at}.ca_file"), e.to_string()))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| Issue::new(at, e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => {
            let (cert_path, key_path) = (loaded.resolve(cert), loaded.resolve(key));
            sources.record_now(&cert_path);
            sources.record_now(&key_path);
            let chain = read_certs(&cert_path).map_err(|why| Issue::new(format!("{at}.client_cert_file"), why))?;
            let key = read_key(&key_path).map_err(|why| Issue::new(format!("{at}.client_key_file"), why))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Issue::new(format!("{at}.client_key_file"), format!("{}: {e}", key_path.display())))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// A client configuration that trusts nothing, for connectors that only ever see `http` URIs.
pub fn unused_client_config() -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth()
}

/// The certificate chain and key from two PEM files, checked to belong together.
/// Errors: (`cert_file` or `key_file`, reason with the path).
fn certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, (&'static str, String)> {
    let chain = read_certs(cert_path).map_err(|why| ("cert_file", why))?;
    let key = read_key(key_path).map_err(|why| ("key_file", why))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| ("key_file", format!("{}: unsupported key: {e}", key_path.display())))?;
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|e| ("key_file", format!("{} does not match {}: {e}", key_path.display(), cert_path.display())))?;
    Ok(certified)
}

/// Every certificate in a PEM file, in order.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE in the PEM file", path.display()));
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: no usable private key: {e}", path.display()))
}

/// A root store of every certificate in a PEM file.
pub(crate) fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// Chooses the certificate by SNI: exact DNS names first, then `*.` wildcards one label deep
/// (RFC 6125 §6.4.3). No SNI gets the default (first) certificate; an SNI that matches no
/// certificate gets none, so rustls ends the handshake with an `access_denied` alert.
#[derive(Debug, Default)]
struct SniResolver {
    default: Option<Arc<CertifiedKey>>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl SniResolver {
    /// Indexes `key` under its end-entity certificate's DNS names; earlier certificates win a
    /// name both claim. Errors when a certificate other than the default has no DNS name.
    fn add(&mut self, key: CertifiedKey, is_default: bool) -> Result<(), String> {
        let names = key.end_entity_cert().map(|c| describe(c).dns_names).unwrap_or_default();
        if names.is_empty() && !is_default {
            return Err("the certificate has no DNS name (subjectAltName), so no SNI can select it".into());
        }
        let key = Arc::new(key);
        for name in names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(suffix) => self.wildcard.entry(suffix.to_owned()).or_insert_with(|| key.clone()),
                None => self.exact.entry(name).or_insert_with(|| key.clone()),
            };
        }
        if is_default {
            self.default = Some(key);
        }
        Ok(())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else { return self.default.clone() };
        let name = name.to_ascii_lowercase();
        self.exact
            .get(&name)
            .or_else(|| name.split_once('.').and_then(|(_, parent)| self.wildcard.get(parent)))
            .cloned()
    }
}

/// Whether now is within the certificate's validity period (true when it does not parse:
/// rustls has the final word).
fn currently_valid(der: &CertificateDer<'_>) -> bool {
    X509Certificate::from_der(der.as_ref()).map_or(true, |(_, cert)| cert.validity().is_valid())
}

/// What a certificate says about its subject, as plugins see a verified client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateFacts {
    /// The subject distinguished name (RFC 4514 string form), e.g. `CN=billing,O=Example`.
    pub subject: String,
    /// `dNSName` subject alternative names.
    pub dns_names: Vec<String>,
    /// `uniformResourceIdentifier` subject alternative names, e.g. SPIFFE IDs.
    pub uris: Vec<String>,
    /// SHA-256 of the DER certificate, lowercase hex.
    pub sha256: String,
}

/// Reads subject and subject alternative names from a DER certificate. A certificate that
/// does not parse (rustls accepted it, so this does not happen in practice) gives only the
/// fingerprint.
pub fn describe(der: &CertificateDer<'_>) -> CertificateFacts {
    let mut facts = CertificateFacts::default();
    for byte in Sha256::digest(der.as_ref()) {
        let _ = write!(facts.sha256, "{byte:02x}");
    }
    let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) else { return facts };
    facts.subject = cert.subject().to_string();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => facts.dns_names.push((*dns).to_owned()),
                GeneralName::URI(uri) => facts.uris.push((*uri).to_owned()),
                _ => {}
            }
        }
    }
    facts
}
