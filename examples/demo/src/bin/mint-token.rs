//! `mint-token`: signs a JWT (RFC 7519) for trying Portcullis, by default with the
//! quickstart's demo-only RSA key, issuer and audience.
//!
//! ```text
//! cargo run -p portcullis-demo --bin mint-token -- --sub carol --roles reader --ttl 3600
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// Prints a signed JWT on stdout.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// PEM private key (RSA for RS*, EC for ES*).
    #[arg(long, default_value = "examples/quickstart/keys/demo-only-private-key.pem")]
    key: std::path::PathBuf,
    /// Signature algorithm.
    #[arg(long, default_value = "RS256")]
    alg: String,
    /// `kid` header: the key id in the JWKS.
    #[arg(long, default_value = "demo-rs256")]
    kid: String,
    /// `iss` claim.
    #[arg(long, default_value = "https://demo.portcullis.invalid")]
    iss: String,
    /// `aud` claim.
    #[arg(long, default_value = "portcullis-demo")]
    aud: String,
    /// `sub` claim.
    #[arg(long)]
    sub: String,
    /// Roles, comma-separated, in the `roles` claim.
    #[arg(long, default_value = "")]
    roles: String,
    /// Scopes, space-separated, in the `scope` claim.
    #[arg(long, default_value = "")]
    scope: String,
    /// Lifetime in seconds (sets `exp`); ignored when `--exp` is given.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Absolute `exp`, in seconds since the Unix epoch.
    #[arg(long)]
    exp: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let alg: Algorithm = args.alg.parse().with_context(|| format!("unknown algorithm {}", args.alg))?;
    let pem = std::fs::read(&args.key).with_context(|| format!("reading {}", args.key.display()))?;
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem)?,
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem)?,
        _ => EncodingKey::from_rsa_pem(&pem)?,
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let roles: Vec<&str> = args.roles.split(',').filter(|r| !r.is_empty()).collect();
    let mut claims = serde_json::json!({
        "iss": args.iss,
        "aud": args.aud,
        "sub": args.sub,
        "iat": now,
        "exp": args.exp.unwrap_or(now + args.ttl),
        "roles": roles,
    });
    if !args.scope.is_empty() {
        claims["scope"] = args.scope.into();
    }
    let mut header = Header::new(alg);
    header.kid = Some(args.kid);
    println!("{}", jsonwebtoken::encode(&header, &claims, &key)?);
    Ok(())
}
