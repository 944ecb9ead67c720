//! `rbac`: a Portcullis `filter` plugin that authorizes requests by method and path against the
//! identity an earlier auth step established (role-based and scope-based access control).
//!
//! Rules are checked in order and the first whose methods and path match decides:
//!
//! - a rule with no `roles` and no `scopes` is public: every request passes, even anonymous;
//! - otherwise an anonymous request gets 401 with an RFC 6750 `WWW-Authenticate: Bearer`
//!   challenge, and an identity that does not hold the required roles/scopes gets 403; with
//!   `require = "any"` (default) one listed role or scope suffices, with `"all"` every one is
//!   needed. Scopes missing yield the RFC 6750 §3.1 `insufficient_scope` error and a `scope`
//!   attribute listing them.
//!
//! A request no rule matches gets `default`: `deny` (403, the default) or `allow`. Responses are
//! RFC 9457 problem documents.
//!
//! Path patterns are split on `/`: a literal segment matches itself, `*` matches any one
//! segment, and a final `**` matches any rest, including nothing (`/admin/**` matches `/admin`
//! and `/admin/a/b`). The host normalizes paths (dot segments, `%2e`, `//`) before plugins see them.
//!
//! Configuration reference: `plugins/rbac/README.md`.

use portcullis_sdk::{ConfigError, Filter, FilterAction, HeaderEdits, Identity, LocalResponse, Plugin, Request};
use serde::Deserialize;

/// How the listed roles and scopes combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Require {
    /// At least one listed role or scope.
    #[default]
    Any,
    /// Every listed role and scope.
    All,
}

/// What a request no rule matches gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fallback {
    /// 403.
    #[default]
    Deny,
    /// Passes.
    Allow,
}

/// One rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Methods this rule covers (uppercase tokens); empty: every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path pattern (see the crate docs).
    pub path: String,
    /// Roles that grant access.
    #[serde(default)]
    pub roles: Vec<String>,
    /// OAuth 2.0 scopes that grant access.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// How they combine.
    #[serde(default)]
    pub require: Require,
}

/// The step configuration (JSON).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The rules, first match wins.
    pub rules: Vec<Rule>,
    /// For requests no rule matches.
    #[serde(default)]
    pub default: Fallback,
    /// The `realm` of the 401 challenge.
    #[serde(default = "realm")]
    pub realm: String,
}

fn realm() -> String {
    "portcullis".into()
}

/// The configured plugin.
pub struct Rbac {
    config: Config,
    patterns: Vec<Vec<Segment>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Any,
    Rest,
}

fn parse_pattern(path: &str) -> Result<Vec<Segment>, String> {
    let Some(rest) = path.strip_prefix('/') else { return Err("must start with `/`".into()) };
    let parts: Vec<&str> = if rest.is_empty() { Vec::new() } else { rest.split('/').collect() };
    let mut segments = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        segments.push(match *part {
            "**" if i + 1 == parts.len() => Segment::Rest,
            "**" => return Err("`**` is only allowed as the last segment".into()),
            "*" => Segment::Any,
            "" => return Err("empty segment (`//` or a trailing `/`)".into()),
            literal => Segment::Literal(literal.to_owned()),
        });
    }
    Ok(segments)
}

fn matches(pattern: &[Segment], path: &str) -> bool {
    let rest = path.strip_prefix('/').unwrap_or(path);
    let parts: Vec<&str> = if rest.is_empty() { Vec::new() } else { rest.split('/').collect() };
    let mut i = 0;
    for segment in pattern {
        match segment {
            Segment::Rest => return true,
            Segment::Any => {
                if parts.get(i).is_none_or(|p| p.is_empty()) {
                    return false;
                }
            }
            Segment::Literal(l) => {
                if parts.get(i) != Some(&l.as_str()) {
                    return false;
                }
            }
        }
        i += 1;
    }
    i == parts.len()
}

impl Plugin for Rbac {
    type Config = Config;

    fn new(mut config: Config) -> Result<Self, ConfigError> {
        let mut patterns = Vec::new();
        for (i, rule) in config.rules.iter_mut().enumerate() {
            patterns.push(parse_pattern(&rule.path).map_err(|m| ConfigError::new(format!("/rules/{i}/path"), m))?);
            for (j, m) in rule.methods.iter_mut().enumerate() {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err(ConfigError::new(format!("/rules/{i}/methods/{j}"), "must be a method name"));
                }
                *m = m.to_ascii_uppercase();
            }
            let bad =
                |s: &String| s.is_empty() || s.contains(['"', '\\']) || s.chars().any(|c| c.is_control() || c == ' ');
            if let Some(j) = rule.scopes.iter().position(bad) {
                return Err(ConfigError::new(
                    format!("/rules/{i}/scopes/{j}"),
                    "scopes are non-empty tokens (RFC 6749 §3.3)",
                ));
            }
            if let Some(j) = rule.roles.iter().position(String::is_empty) {
                return Err(ConfigError::new(format!("/rules/{i}/roles/{j}"), "must not be empty"));
            }
        }
        if !portcullis_sdk::is_quotable(&config.realm) {
            return Err(ConfigError::new("/realm", "must not contain quotes, backslashes or control characters"));
        }
        Ok(Rbac { config, patterns })
    }
}

/// The decision for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Passes.
    Allow,
    /// Anonymous request to a protected rule: 401.
    Unauthenticated,
    /// The identity lacks what the rule requires: 403, with the missing scopes (if any).
    Forbidden {
        /// Scopes the rule lists that the identity lacks (for the RFC 6750 challenge).
        missing_scopes: Vec<String>,
    },
}

impl Rbac {
    /// Decides `request` for `identity`.
    pub fn decide(&self, request: &Request<'_>, identity: Option<&Identity>) -> Decision {
        let rule = self.config.rules.iter().zip(&self.patterns).find(|(rule, pattern)| {
            (rule.methods.is_empty() || rule.methods.iter().any(|m| m.eq_ignore_ascii_case(request.method())))
                && matches(pattern, request.path())
        });
        let Some((rule, _)) = rule else {
            return match self.config.default {
                Fallback::Allow => Decision::Allow,
                Fallback::Deny => Decision::Forbidden { missing_scopes: Vec::new() },
            };
        };
        if rule.roles.is_empty() && rule.scopes.is_empty() {
            return Decision::Allow;
        }
        let Some(identity) = identity else { return Decision::Unauthenticated };
        let has_role = |r: &String| identity.roles.contains(r);
        let has_scope = |s: &String| identity.scopes.contains(s);
        let ok = match rule.require {
            Require::Any => rule.roles.iter().any(has_role) || rule.scopes.iter().any(has_scope),
            Require::All => rule.roles.iter().all(has_role) && rule.scopes.iter().all(has_scope),
        };
        if ok {
            Decision::Allow
        } else {
            Decision::Forbidden { missing_scopes: rule.scopes.iter().filter(|s| !has_scope(s)).cloned().collect() }
        }
    }
}

impl Filter for Rbac {
    fn on_request(&self, request: &Request<'_>, identity: Option<&Identity>) -> FilterAction {
        let realm = &self.config.realm;
        match self.decide(request, identity) {
            Decision::Allow => FilterAction::Continue(HeaderEdits::default()),
            Decision::Unauthenticated => {
                FilterAction::Respond(LocalResponse::bearer_unauthorized(realm, None, "Authentication is required"))
            }
            Decision::Forbidden { missing_scopes } => {
                let mut response = LocalResponse::problem(
                    403,
                    "urn:portcullis:problem:forbidden",
                    "Forbidden",
                    "The caller is not allowed to perform this operation",
                );
                if !missing_scopes.is_empty() {
                    let challenge = format!(
                        "Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{}\"",
                        missing_scopes.join(" ")
                    );
                    response = response.with_header("www-authenticate", &challenge);
                }
                FilterAction::Respond(response)
            }
        }
    }
}

portcullis_sdk::export_filter!(Rbac);

#[cfg(test)]
mod tests {
    use portcullis_sdk::testing;

    use super::*;

    fn rbac() -> Rbac {
        testing::configure(
            r#"{"rules": [
                {"path": "/api/health"},
                {"methods": ["GET"], "path": "/api/items/**", "roles": ["reader", "admin"]},
                {"methods": ["post", "DELETE"], "path": "/api/items/*", "roles": ["admin"], "scopes": ["items:write"], "require": "all"},
                {"path": "/api/admin/**", "roles": ["admin"]}
            ]}"#,
        )
        .unwrap()
    }

    fn decide(p: &Rbac, method: &str, path: &str, identity: Option<&Identity>) -> Decision {
        p.decide(&testing::request(method, path).build(), identity)
    }

    #[test]
    fn first_matching_rule_decides_with_any_and_all() {
        let p = rbac();
        let reader = Identity::new("alice").with_roles(["reader"]);
        let admin = Identity::new("bob").with_roles(["admin"]).with_scopes(["items:write"]);
        let admin_no_scope = Identity::new("carol").with_roles(["admin"]);
        assert_eq!(decide(&p, "GET", "/api/health", None), Decision::Allow);
        assert_eq!(decide(&p, "GET", "/api/items", Some(&reader)), Decision::Allow);
        assert_eq!(decide(&p, "GET", "/api/items/1/parts", Some(&reader)), Decision::Allow);
        assert_eq!(decide(&p, "GET", "/api/items/1", None), Decision::Unauthenticated);
        assert_eq!(decide(&p, "POST", "/api/items/1", Some(&admin)), Decision::Allow);
        assert_eq!(
            decide(&p, "POST", "/api/items/1", Some(&admin_no_scope)),
            Decision::Forbidden { missing_scopes: vec!["items:write".into()] }
        );
        assert!(matches!(decide(&p, "DELETE", "/api/items/1", Some(&reader)), Decision::Forbidden { .. }));
        assert!(matches!(decide(&p, "GET", "/api/admin", Some(&reader)), Decision::Forbidden { .. }));
        assert_eq!(decide(&p, "GET", "/api/admin/users", Some(&admin)), Decision::Allow);
        assert!(matches!(decide(&p, "GET", "/elsewhere", Some(&admin)), Decision::Forbidden { .. }), "default deny");
    }

    #[test]
    fn responses_are_401_with_a_challenge_or_403_with_insufficient_scope() {
        let p = rbac();
        let FilterAction::Respond(r) = p.on_request(&testing::request("GET", "/api/items/1").build(), None) else {
            panic!()
        };
        assert_eq!(r.status, 401);
        assert!(r.headers.iter().any(|h| h.name == "www-authenticate" && h.value.starts_with("Bearer")));
        let admin = Identity::new("carol").with_roles(["admin"]);
        let FilterAction::Respond(r) = p.on_request(&testing::request("POST", "/api/items/1").build(), Some(&admin))
        else {
            panic!()
        };
        assert_eq!(r.status, 403);
        assert!(r.headers.iter().any(|h| h.value.contains("insufficient_scope") && h.value.contains("items:write")));
    }

    #[test]
    fn patterns_match_whole_segments() {
        let pat = |p: &str| parse_pattern(p).unwrap();
        assert!(matches(&pat("/a/*"), "/a/b"));
        assert!(!matches(&pat("/a/*"), "/a"));
        assert!(!matches(&pat("/a/*"), "/a/b/c"));
        assert!(!matches(&pat("/a"), "/ab"));
        assert!(matches(&pat("/a/**"), "/a"));
        assert!(matches(&pat("/**"), "/anything/at/all"));
        assert!(!matches(&pat("/a/**"), "/ab"));
        assert!(parse_pattern("a").is_err());
        assert!(parse_pattern("/a/**/b").is_err());
        assert!(parse_pattern("/a//b").is_err());
    }

    #[test]
    fn allow_default_and_config_errors() {
        let open: Rbac = testing::configure(r#"{"rules": [], "default": "allow"}"#).unwrap();
        assert_eq!(decide(&open, "GET", "/x", None), Decision::Allow);
        let err = |json: &str| testing::configure::<Rbac>(json).err().unwrap().pointer;
        assert_eq!(err(r#"{"rules": [{"path": "x"}]}"#), "/rules/0/path");
        assert_eq!(err(r#"{"rules": [{"path": "/x", "methods": ["G T"]}]}"#), "/rules/0/methods/0");
        assert_eq!(err(r#"{"rules": [{"path": "/x", "scopes": ["a b"]}]}"#), "/rules/0/scopes/0");
    }
}
