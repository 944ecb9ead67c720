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
//! A rule may also demand a stronger or more recent authentication (step-up, RFC 9470):
//! `acr_values` lists the authentication context classes (`acr`) it accepts, `max_age_s` the
//! most seconds since the subject authenticated (`auth_time`). An identity that holds the
//! roles and scopes but not the authentication gets 401 with the RFC 9470 §3 challenge,
//! `Bearer error="insufficient_user_authentication"` and `acr_values="…"` or `max_age="…"`,
//! which tells the client to have the user authenticate again at the authorization server.
//!
//! A request no rule matches gets `default`: `deny` (403, the default) or `allow`. Responses are
//! RFC 9457 problem documents.
//!
//! Path patterns are split on `/`: a literal segment matches itself, `*` matches any one
//! segment, and a final `**` matches any rest, including nothing (`/admin/**` matches `/admin`
//! and `/admin/a/b`). The host normalizes paths (dot segments, `%2e`, `//`) before plugins see them.
//!
//! Configuration reference: `plugins/rbac/README.md`.

use portcullis_sdk::{ConfigError, Filter, FilterAction, HeaderEdits, LocalResponse, PathPattern, Plugin, Request};
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
    /// Authentication context classes (`acr`, RFC 9470 §2) accepted, in order of preference;
    /// empty: any, including none.
    #[serde(default)]
    pub acr_values: Vec<String>,
    /// Most seconds allowed since the subject authenticated (`auth_time`, RFC 9470 §2); an
    /// identity without `auth_time` does not meet it. Absent: no limit.
    #[serde(default)]
    pub max_age_s: Option<u64>,
}

impl Rule {
    /// Whether the rule passes every request, anonymous ones included.
    fn is_public(&self) -> bool {
        self.roles.is_empty() && self.scopes.is_empty() && self.acr_values.is_empty() && self.max_age_s.is_none()
    }
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
    patterns: Vec<PathPattern>,
}

impl Plugin for Rbac {
    type Config = Config;

    fn new(mut config: Config) -> Result<Self, ConfigError> {
        let mut patterns = Vec::new();
        for (i, rule) in config.rules.iter_mut().enumerate() {
            patterns.push(PathPattern::parse(&rule.path).map_err(|m| ConfigError::new(format!("/rules/{i}/path"), m))?);
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
            // They are quoted in the challenge, space-separated (RFC 9470 §3).
            if let Some(j) = rule.acr_values.iter().position(bad) {
                return Err(ConfigError::new(
                    format!("/rules/{i}/acr_values/{j}"),
                    "acr values are non-empty and have no spaces, quotes, backslashes or control characters",
                ));
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
    /// The identity holds the roles and scopes, but its authentication is not strong or
    /// recent enough: 401 with the RFC 9470 challenge.
    StepUp {
        /// The rule's `acr_values`, when the identity's `acr` is not among them.
        acr_values: Option<Vec<String>>,
        /// The rule's `max_age_s`, when the subject authenticated longer ago (or not said when).
        max_age_s: Option<u64>,
    },
}

impl Rbac {
    /// Decides `request` for the identity it carries. Asks the request for the facts the
    /// matched rule needs (each role and scope it names, whether there is an identity when
    /// that does not settle it), and for the whole identity only when the rule checks its
    /// authentication (`acr_values`, `max_age_s`).
    pub fn decide(&self, request: &Request<'_>) -> Decision {
        let rule = self.config.rules.iter().zip(&self.patterns).find(|(rule, pattern)| {
            (rule.methods.is_empty() || rule.methods.iter().any(|m| m.eq_ignore_ascii_case(request.method())))
                && pattern.matches(request.path())
        });
        let Some((rule, _)) = rule else {
            return match self.config.default {
                Fallback::Allow => Decision::Allow,
                Fallback::Deny => Decision::Forbidden { missing_scopes: Vec::new() },
            };
        };
        if rule.is_public() {
            return Decision::Allow;
        }
        // Roles and scopes first: an anonymous request holds none, so the allowed path asks
        // the host one question per role it checks, and whether there is an identity at all
        // only when the rule names none or the answer is no (401 or 403).
        let has_role = |r: &String| request.has_role(r);
        let has_scope = |s: &String| request.has_scope(s);
        let ok = match rule.require {
            _ if rule.roles.is_empty() && rule.scopes.is_empty() => request.subject().is_some(),
            Require::Any => rule.roles.iter().any(has_role) || rule.scopes.iter().any(has_scope),
            Require::All => rule.roles.iter().all(has_role) && rule.scopes.iter().all(has_scope),
        };
        if !ok {
            if request.subject().is_none() {
                return Decision::Unauthenticated;
            }
            return Decision::Forbidden {
                missing_scopes: rule.scopes.iter().filter(|s| !has_scope(s)).cloned().collect(),
            };
        }
        // Stepping up cannot grant a missing role, so 403 comes first; then the strength and
        // age of the authentication (RFC 9470 §3).
        if rule.acr_values.is_empty() && rule.max_age_s.is_none() {
            return Decision::Allow;
        }
        let Some(identity) = request.identity() else { return Decision::Unauthenticated };
        let authn = &identity.authentication;
        let acr_ok = rule.acr_values.is_empty() || authn.acr.as_ref().is_some_and(|acr| rule.acr_values.contains(acr));
        let age_ok = rule.max_age_s.is_none_or(|max| {
            let now_s = portcullis_sdk::now_ms() / 1000;
            authn.auth_time.is_some_and(|at| now_s.saturating_sub(at) <= max)
        });
        if acr_ok && age_ok {
            return Decision::Allow;
        }
        Decision::StepUp {
            acr_values: (!acr_ok).then(|| rule.acr_values.clone()),
            max_age_s: if age_ok { None } else { rule.max_age_s },
        }
    }
}

/// The RFC 9470 §3 challenge, e.g. `Bearer error="insufficient_user_authentication",
/// error_description="A different authentication level is required", acr_values="urn:mfa"`.
fn step_up_challenge(acr_values: Option<&[String]>, max_age_s: Option<u64>) -> (String, &'static str) {
    let description = if acr_values.is_some() {
        "A different authentication level is required"
    } else {
        "More recent authentication is required"
    };
    let mut challenge =
        format!("Bearer error=\"insufficient_user_authentication\", error_description=\"{description}\"");
    if let Some(values) = acr_values {
        challenge.push_str(&format!(", acr_values=\"{}\"", values.join(" ")));
    }
    if let Some(max_age) = max_age_s {
        challenge.push_str(&format!(", max_age=\"{max_age}\""));
    }
    (challenge, description)
}

impl Filter for Rbac {
    fn on_request(&self, request: &Request<'_>) -> FilterAction {
        let realm = &self.config.realm;
        match self.decide(request) {
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
            Decision::StepUp { acr_values, max_age_s } => {
                let (challenge, description) = step_up_challenge(acr_values.as_deref(), max_age_s);
                let response = LocalResponse::problem(
                    401,
                    "urn:portcullis:problem:insufficient-user-authentication",
                    "Insufficient user authentication",
                    description,
                )
                .with_header("www-authenticate", &challenge);
                FilterAction::Respond(response)
            }
        }
    }
}

portcullis_sdk::export_filter!(Rbac);

#[cfg(test)]
mod tests {
    use portcullis_sdk::{Identity, testing};

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
        p.decide(&testing::request(method, path).identity(identity.cloned()).build())
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
        let FilterAction::Respond(r) = p.on_request(&testing::request("GET", "/api/items/1").build()) else { panic!() };
        assert_eq!(r.status, 401);
        assert!(r.headers.iter().any(|h| h.name == "www-authenticate" && h.value.starts_with("Bearer")));
        let admin = Identity::new("carol").with_roles(["admin"]);
        let FilterAction::Respond(r) =
            p.on_request(&testing::request("POST", "/api/items/1").identity(Some(admin.clone())).build())
        else {
            panic!()
        };
        assert_eq!(r.status, 403);
        assert!(r.headers.iter().any(|h| h.value.contains("insufficient_scope") && h.value.contains("items:write")));
    }

    fn stepped(acr: Option<&str>, auth_time: Option<u64>) -> Identity {
        Identity::new("alice").with_roles(["admin"]).with_authentication(acr.map(str::to_owned), Vec::new(), auth_time)
    }

    fn challenge(response: &LocalResponse) -> &str {
        &response.headers.iter().find(|h| h.name == "www-authenticate").expect("a challenge").value
    }

    #[test]
    fn step_up_rules_answer_rfc_9470_challenges() {
        testing::reset();
        testing::set_now_ms(1_000_000_000);
        let now_s = 1_000_000;
        let p: Rbac = testing::configure(
            r#"{"rules": [
                {"methods": ["POST"], "path": "/transfers", "roles": ["admin"], "acr_values": ["urn:example:mfa", "urn:example:hwk"], "max_age_s": 300},
                {"path": "/profile", "acr_values": ["urn:example:mfa"]}
            ]}"#,
        )
        .unwrap();
        let post = |identity: &Identity| {
            p.on_request(&testing::request("POST", "/transfers").identity(Some(identity.clone())).build())
        };
        assert!(matches!(post(&stepped(Some("urn:example:mfa"), Some(now_s - 60))), FilterAction::Continue(_)));
        assert!(matches!(post(&stepped(Some("urn:example:hwk"), Some(now_s - 300))), FilterAction::Continue(_)));

        let FilterAction::Respond(r) = post(&stepped(Some("urn:example:pwd"), Some(now_s - 60))) else { panic!() };
        assert_eq!(r.status, 401);
        assert_eq!(
            challenge(&r),
            "Bearer error=\"insufficient_user_authentication\", error_description=\"A different authentication \
             level is required\", acr_values=\"urn:example:mfa urn:example:hwk\""
        );
        let FilterAction::Respond(r) = post(&stepped(Some("urn:example:mfa"), Some(now_s - 301))) else { panic!() };
        assert_eq!(
            challenge(&r),
            "Bearer error=\"insufficient_user_authentication\", error_description=\"More recent authentication \
             is required\", max_age=\"300\""
        );
        let FilterAction::Respond(r) = post(&stepped(None, None)) else { panic!() };
        assert!(challenge(&r).ends_with("acr_values=\"urn:example:mfa urn:example:hwk\", max_age=\"300\""));

        // Roles first: stepping up cannot grant a role.
        let reader = Identity::new("bob").with_roles(["reader"]).with_authentication(None, Vec::new(), None);
        let FilterAction::Respond(r) = post(&reader) else { panic!() };
        assert_eq!(r.status, 403);
        // A rule with only `acr_values` is not public: anonymous gets the plain 401.
        let req = testing::request("GET", "/profile");
        assert_eq!(p.decide(&req.clone().build()), Decision::Unauthenticated);
        let plain = Identity::new("carol");
        assert_eq!(
            p.decide(&req.identity(Some(plain)).build()),
            Decision::StepUp { acr_values: Some(vec!["urn:example:mfa".into()]), max_age_s: None }
        );
        let err = |json: &str| testing::configure::<Rbac>(json).err().unwrap().pointer;
        assert_eq!(err(r#"{"rules": [{"path": "/x", "acr_values": ["a b"]}]}"#), "/rules/0/acr_values/0");
    }

    #[test]
    fn patterns_match_whole_segments() {
        let pat = |p: &str| PathPattern::parse(p).unwrap();
        assert!(pat("/a/*").matches("/a/b"));
        assert!(!pat("/a/*").matches("/a"));
        assert!(!pat("/a/*").matches("/a/b/c"));
        assert!(!pat("/a").matches("/ab"));
        assert!(pat("/a/**").matches("/a"));
        assert!(pat("/**").matches("/anything/at/all"));
        assert!(pat("/**").matches("/"));
        assert!(pat("/").matches("/"));
        assert!(!pat("/").matches("/a"));
        assert!(!pat("/a/**").matches("/ab"));
        assert!(!pat("/a/*").matches("/a/"));
        assert!(PathPattern::parse("a").is_err());
        assert!(PathPattern::parse("/a/**/b").is_err());
        assert!(PathPattern::parse("/a//b").is_err());
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
