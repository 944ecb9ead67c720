//! Request path normalization, applied before routing and before any plugin sees the path,
//! so that `/api/../admin`, `/%2e%2e/admin` or `//admin` cannot reach a route (or slip past a
//! route's chain) that the plain path `/admin` would not.
//!
//! Steps, in order (RFC 3986 §6.2.2 syntax-based normalization, as Envoy's `normalize_path`
//! and `merge_slashes` do):
//!
//! 1. Refuse what has no single meaning: a path that does not start with `/`, a backslash, an
//!    encoded slash or backslash (`%2F`, `%5C`: one backend decodes them, another does not), an
//!    encoded NUL or control character, and malformed `%` escapes.
//! 2. Decode percent-encoded unreserved characters (`ALPHA DIGIT - . _ ~`, RFC 3986 §2.3), so
//!    `%2e` is `.` and `%41` is `A`; other escapes stay encoded, with uppercase hex (§6.2.2.1).
//! 3. Merge runs of `/` into one.
//! 4. Remove `.` and `..` segments (RFC 3986 §5.2.4); `..` above the root stays at the root.
//!
//! The normalized path is what the router matches, what plugins see and what is forwarded
//! upstream; the query is forwarded as received.

use std::borrow::Cow;

/// Why a path was refused (the client gets 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an origin-form path.
    #[error("the path must start with `/`")]
    NotAbsolute,
    /// `%2F` or `%5C`.
    #[error("encoded slashes and backslashes are not accepted in paths")]
    EncodedSlash,
    /// A raw `\`.
    #[error("backslashes are not accepted in paths")]
    Backslash,
    /// `%00`–`%1F` or `%7F`.
    #[error("encoded control characters are not accepted in paths")]
    EncodedControl,
    /// `%` not followed by two hex digits.
    #[error("malformed percent-encoding in the path")]
    BadEscape,
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether `path` (starting with `/`) is already normal: no `%`, no backslash, no empty, `.` or
/// `..` segment (an empty last segment, a trailing `/`, is fine). Most requests take this
/// branch and cost one scan, no allocation.
fn already_normal(path: &str) -> bool {
    if path.contains(['%', '\\']) {
        return false;
    }
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment == "." || segment == ".." || (segment.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// The normalized form of `path` (no query); borrowed, without allocating, when `path` is
/// already normal.
///
/// Errors: see [`PathError`].
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if already_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    // Steps 1 and 2: one pass over the bytes.
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let (Some(hi), Some(lo)) =
                    (bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b)))
                else {
                    return Err(PathError::BadEscape);
                };
                let value = hi * 16 + lo;
                match value {
                    b'/' | b'\\' => return Err(PathError::EncodedSlash),
                    0x00..=0x1f | 0x7f => return Err(PathError::EncodedControl),
                    v if unreserved(v) => decoded.push(char::from(v)),
                    v => {
                        decoded.push('%');
                        decoded.push(char::from(b"0123456789ABCDEF"[usize::from(v >> 4)]));
                        decoded.push(char::from(b"0123456789ABCDEF"[usize::from(v & 15)]));
                    }
                }
                i += 3;
            }
            _ => {
                // Copy the run up to the next `%` or `\` (keeps UTF-8 intact).
                let end = bytes[i..].iter().position(|b| *b == b'%' || *b == b'\\').map_or(bytes.len(), |p| i + p);
                decoded.push_str(&path[i..end]);
                i = end;
            }
        }
    }
    // Steps 3 and 4.
    let mut segments: Vec<&str> = Vec::new();
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        match segment {
            "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (trailing && !out.ends_with('/')) {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_encoded_dots_and_duplicate_slashes_are_resolved() {
        for (input, want) in [
            ("/", "/"),
            ("/api/orders", "/api/orders"),
            ("/api/orders/", "/api/orders/"),
            ("/api/../admin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/%2E%2E/%2e/admin", "/admin"),
            ("/api/%2e%2e/admin", "/admin"),
            ("//admin", "/admin"),
            ("/api//orders///1", "/api/orders/1"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/b/..", "/a/"),
            ("/a/./b/.", "/a/b/"),
            ("/%41pi", "/Api"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/.%2e/x", "/x"),
        ] {
            assert_eq!(normalize(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn normal_paths_are_borrowed_and_the_rest_rewritten() {
        for normal in ["/", "/api/orders", "/api/orders/", "/a.b/..c/.d"] {
            assert!(matches!(normalize(normal), Ok(Cow::Borrowed(_))), "{normal}");
        }
        for rewritten in ["//a", "/a//b", "/a/./b", "/a/..", "/a/.", "/%41"] {
            assert!(matches!(normalize(rewritten), Ok(Cow::Owned(_))), "{rewritten}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        assert_eq!(normalize("/api%2f..%2fadmin"), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/api%5c..%5cadmin"), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/api\\..\\admin"), Err(PathError::Backslash));
        assert_eq!(normalize("/a%00b"), Err(PathError::EncodedControl));
        assert_eq!(normalize("/a%0d%0a"), Err(PathError::EncodedControl));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%4"), Err(PathError::BadEscape));
        assert_eq!(normalize("*"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for input in ["/a/../b//c/%2e/d", "/x/%7e/%c3%a9", "/..", "/a/b/../../.."] {
            let once = normalize(input).unwrap().into_owned();
            assert_eq!(normalize(&once).unwrap(), once, "{input}");
        }
    }
}
