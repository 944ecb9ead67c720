//! Network values written in the configuration and parsed as it is read: address blocks
//! (`trusted_proxies`) and origins (`allowed_origins`). A bad one is refused by the parser,
//! named by its field path and line (`listener[0].trusted_proxies[1] (line 9)`), so the code
//! that uses them holds typed values and never parses text again.

use std::net::IpAddr;

use http::Uri;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// An address block, written `10.0.0.0/8` or as a single address (a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub IpNet);

// === impl Cidr ===

impl Cidr {
    /// Parses `10.0.0.0/8`, `2001:db8::/32` or a single address.
    ///
    /// Errors: neither form.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        text.parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map(Cidr)
            .map_err(|_| format!("`{text}` is not an address or CIDR block"))
    }

    /// Whether `ip` is in the block.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.contains(ip)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Cidr::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An origin a plugin may reach: scheme, lowercase host, and port (defaulted from the scheme).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

// === impl Origin ===

impl Origin {
    /// Parses `scheme://host[:port]` as written in `allowed_origins` (RFC 6454 §4 origins).
    ///
    /// Errors: a scheme other than `http`/`https`, no host, or a path, query or userinfo.
    pub fn parse(text: &str) -> Result<Origin, String> {
        let uri: Uri = text.parse().map_err(|e| format!("`{text}` is not a URL: {e}"))?;
        let origin = Origin::of(&uri).ok_or_else(|| format!("`{text}` needs an http or https scheme and a host"))?;
        let has_path = uri.path_and_query().is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty());
        if has_path || text.contains('@') {
            return Err(format!("`{text}` must be an origin, `scheme://host[:port]`, without path, query or userinfo"));
        }
        Ok(origin)
    }

    /// The origin of an absolute `http`/`https` URI.
    pub fn of(uri: &Uri) -> Option<Origin> {
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let host = uri.host()?.to_ascii_lowercase();
        Some(Origin { port: uri.port_u16().unwrap_or(default_port), scheme, host })
    }
}

impl<'de> Deserialize<'de> for Origin {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Origin::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_take_blocks_and_single_addresses() {
        assert!(Cidr::parse("10.0.0.0/8").unwrap().contains(&"10.1.2.3".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains(&"::1".parse().unwrap()));
        assert!(!Cidr::parse("127.0.0.1").unwrap().contains(&"127.0.0.2".parse().unwrap()));
        for bad in ["10.0.0.0/33", "localhost", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn origins_normalize_scheme_host_and_default_port() {
        assert_eq!(
            Origin::parse("HTTPS://Auth.Example.com").unwrap(),
            Origin::parse("https://auth.example.com:443").unwrap()
        );
        assert_eq!(Origin::parse("http://127.0.0.1:8080").unwrap().to_string(), "http://127.0.0.1:8080");
        assert_ne!(Origin::parse("http://a.example").unwrap(), Origin::parse("https://a.example").unwrap());
        for bad in ["ftp://x", "https://x/path", "https://user@x", "x.example", "https://x?q=1"] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }
}
