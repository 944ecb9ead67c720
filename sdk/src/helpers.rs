//! Conveniences on the WIT records: header look-up, identities, local responses and edits.

use crate::{AuthOutcome, Authenticated, Authentication, Header, HeaderEdits, Identity, LocalResponse};

// === impl Identity ===

impl Identity {
    /// An identity for `subject` with no issuer, roles, scopes, authentication facts or claims.
    pub fn new(subject: impl Into<String>) -> Self {
        Identity {
            subject: subject.into(),
            issuer: None,
            roles: Vec::new(),
            scopes: Vec::new(),
            authentication: Authentication { acr: None, amr: Vec::new(), auth_time: None },
            claims: Vec::new(),
        }
    }

    /// Sets how the subject authenticated: `acr`, `amr` and `auth_time` (seconds since the Unix
    /// epoch), as OpenID Connect Core §2 names them; step-up policies (RFC 9470) read them.
    pub fn with_authentication(mut self, acr: Option<String>, amr: Vec<String>, auth_time: Option<u64>) -> Self {
        self.authentication = Authentication { acr, amr, auth_time };
        self
    }

    /// Sets the issuer.
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Sets the roles.
    pub fn with_roles(mut self, roles: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.roles = roles.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the scopes.
    pub fn with_scopes(mut self, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }
}

/// Whether `text` can stand inside an RFC 9110 §5.6.4 quoted-string as is: no `"`, `\\` or
/// control characters. Check configured realms and descriptions with it at `configure` time.
pub fn is_quotable(text: &str) -> bool {
    !text.contains(['"', '\\']) && !text.chars().any(char::is_control)
}

/// Decodes a query-string component: `%XX` escapes and `+` as a space (the
/// `application/x-www-form-urlencoded` convention). None when an escape is malformed or the
/// result is not UTF-8.
pub fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                out.push(u8::from_str_radix(raw.get(i + 1..i + 3)?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

// === impl AuthOutcome ===

impl AuthOutcome {
    /// `authenticated` with `identity`, removing nothing from the forwarded request.
    pub fn authenticated(identity: Identity) -> Self {
        AuthOutcome::Authenticated(Authenticated::new(identity))
    }
}

// === impl Authenticated ===

impl Authenticated {
    /// A successful authentication of `identity` that removes nothing.
    pub fn new(identity: Identity) -> Self {
        Authenticated { identity, remove_headers: Vec::new(), remove_query_params: Vec::new() }
    }

    /// Also removes header `name` (the credential) before the request goes upstream.
    pub fn hiding_header(mut self, name: &str) -> Self {
        self.remove_headers.push(name.to_ascii_lowercase());
        self
    }

    /// Also removes query parameter `name` (the credential) before the request goes upstream.
    pub fn hiding_query_param(mut self, name: &str) -> Self {
        self.remove_query_params.push(name.to_owned());
        self
    }
}

impl From<Authenticated> for AuthOutcome {
    fn from(done: Authenticated) -> Self {
        AuthOutcome::Authenticated(done)
    }
}

// === impl LocalResponse ===

impl LocalResponse {
    /// A local response with `status` (200..=599), no headers and no body.
    pub fn new(status: u16) -> Self {
        LocalResponse { status, headers: Vec::new(), body: Vec::new() }
    }

    /// An RFC 9457 problem details response: `application/problem+json` with `type` (a URI
    /// reference; `about:blank` when you have none), `title`, `status` and `detail`.
    pub fn problem(status: u16, type_uri: &str, title: &str, detail: &str) -> Self {
        let body = serde_json::json!({
            "type": type_uri,
            "title": title,
            "status": status,
            "detail": detail,
        });
        LocalResponse::new(status)
            .with_header("content-type", "application/problem+json")
            .with_body(body.to_string().into_bytes())
    }

    /// A `401 Unauthorized` problem (`urn:portcullis:problem:unauthorized`, `detail` as its
    /// detail) with an RFC 6750 §3 challenge: `Bearer realm="REALM"`, and with `error` (e.g.
    /// `invalid_token`) also `error="ERROR", error_description="DETAIL"`. `realm` and `detail`
    /// must pass [`is_quotable`].
    pub fn bearer_unauthorized(realm: &str, error: Option<&str>, detail: &str) -> Self {
        let challenge = match error {
            None => format!("Bearer realm=\"{realm}\""),
            Some(error) => format!("Bearer realm=\"{realm}\", error=\"{error}\", error_description=\"{detail}\""),
        };
        LocalResponse::problem(401, "urn:portcullis:problem:unauthorized", "Unauthorized", detail)
            .with_header("www-authenticate", &challenge)
    }

    /// Adds a header field.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push(Header { name: name.to_owned(), value: value.to_owned() });
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

// === impl HeaderEdits ===

impl HeaderEdits {
    /// Replaces every field named `name` with one field of `value`.
    pub fn set(mut self, name: &str, value: &str) -> Self {
        self.set.push(Header { name: name.to_owned(), value: value.to_owned() });
        self
    }

    /// Adds a field, keeping existing ones of that name.
    pub fn append(mut self, name: &str, value: &str) -> Self {
        self.append.push(Header { name: name.to_owned(), value: value.to_owned() });
        self
    }

    /// Removes every field named `name`.
    pub fn remove(mut self, name: &str) -> Self {
        self.remove.push(name.to_owned());
        self
    }
}

#[expect(clippy::derivable_impls, reason = "`HeaderEdits` is generated by wit-bindgen, which derives no `Default`")]
impl Default for HeaderEdits {
    fn default() -> Self {
        HeaderEdits { remove: Vec::new(), set: Vec::new(), append: Vec::new() }
    }
}

/// A path pattern of `/`-separated segments, as `rbac` rules and scoped API keys use them: a
/// literal segment matches itself, `*` matches any one non-empty segment, and a final `**`
/// matches any rest, including nothing (`/admin/**` matches `/admin` and `/admin/a/b`, not
/// `/administrator`). Match it against [`Request::path`](crate::Request::path), which the host
/// normalized (RFC 3986 §6.2.2), so `/api/../admin` cannot dodge an `/admin/**` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern(Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Any,
    Rest,
}

impl PathPattern {
    /// Parses `pattern`.
    ///
    /// Errors, in plain words for a [`ConfigError`](crate::ConfigError): it does not start
    /// with `/`, has an empty segment (`//` or a trailing `/`), or `**` before its end.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let Some(rest) = pattern.strip_prefix('/') else { return Err("must start with `/`".into()) };
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
        Ok(PathPattern(segments))
    }

    /// Whether `path` (starting with `/`) matches, segment by segment.
    pub fn matches(&self, path: &str) -> bool {
        let mut parts = path.strip_prefix('/').unwrap_or(path).split('/').filter(|_| path.len() > 1);
        for segment in &self.0 {
            match (segment, parts.next()) {
                (Segment::Rest, _) => return true,
                (Segment::Any, Some(part)) if !part.is_empty() => {}
                (Segment::Literal(l), Some(part)) if l == part => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }
}
