//! The router: an immutable index from (host, path, method) to a route, built from the
//! configuration.
//!
//! Most specific match wins, in this order: a route for the request's exact host beats a route
//! for any host; within a host, an exact path or matchit pattern (`path`, static segments beating
//! `{param}` beating `{*catch_all}`, as matchit ranks them) beats a prefix (`path_prefix`), and a
//! longer prefix beats a shorter one. Prefixes match whole segments. A route whose methods do not
//! include the request's method is passed over for the next most specific one.
//!
//! The host and prefix tables hash with foldhash, not std's SipHash: the prefix walk hashes
//! one candidate per path segment on every request (SipHash about 170 instructions each,
//! callgrind), and a keyed hash against flooding is not needed where only the configuration
//! inserts keys (a request's host or path is only looked up, so it cannot grow a bucket).

use std::collections::HashSet;

use http::Method;

use crate::config::{Issue, RouteConfig};

/// Index of a route in the configuration's route list.
pub type RouteIndex = usize;

/// A table of configured keys, looked up with request text (see the module docs).
type Table<V> = std::collections::HashMap<String, V, foldhash::fast::RandomState>;

/// The routing table.
#[derive(Debug, Default)]
pub struct Router {
    by_host: Table<HostTable>,
    any_host: HostTable,
    methods: Vec<Vec<Method>>,
}

#[derive(Debug, Default)]
struct HostTable {
    paths: matchit::Router<Vec<RouteIndex>>,
    path_keys: HashSet<String>,
    prefixes: Table<Vec<RouteIndex>>,
}

// === impl Router ===

impl Router {
    /// Builds the table. Errors: a `path` that matchit refuses or that conflicts with another
    /// route's pattern (for example `/users/{id}` and `/users/{name}`), named by route.
    pub fn build(routes: &[RouteConfig]) -> Result<Router, Vec<Issue>> {
        let mut router = Router::default();
        let mut issues = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            router.methods.push(route.methods.iter().filter_map(|m| Method::from_bytes(m.as_bytes()).ok()).collect());
            let table = match &route.host {
                Some(host) => router.by_host.entry(host.clone()).or_default(),
                None => &mut router.any_host,
            };
            if let Some(prefix) = &route.path_prefix {
                let key = crate::config::normalize_prefix(prefix).to_owned();
                table.prefixes.entry(key).or_default().push(i);
            } else if let Some(path) = &route.path {
                if table.path_keys.contains(path) {
                    if let Ok(m) = table.paths.at_mut(path) {
                        m.value.push(i);
                    }
                } else if let Err(e) = table.paths.insert(path.clone(), vec![i]) {
                    issues.push(Issue::new(format!("route[{i}].path"), e.to_string()));
                } else {
                    table.path_keys.insert(path.clone());
                }
            }
        }
        if issues.is_empty() { Ok(router) } else { Err(issues) }
    }

    /// The most specific route for `host` (lowercase, no port), `path` and `method`, if any.
    pub fn find(&self, host: &str, path: &str, method: &Method) -> Option<RouteIndex> {
        self.by_host
            .get(host)
            .and_then(|t| t.find(path, method, &self.methods))
            .or_else(|| self.any_host.find(path, method, &self.methods))
    }
}

// === impl HostTable ===

impl HostTable {
    fn find(&self, path: &str, method: &Method, methods: &[Vec<Method>]) -> Option<RouteIndex> {
        let allows = |i: &&RouteIndex| methods[**i].is_empty() || methods[**i].contains(method);
        if let Ok(m) = self.paths.at(path)
            && let Some(i) = m.value.iter().find(allows)
        {
            return Some(*i);
        }
        if self.prefixes.is_empty() {
            return None;
        }
        // Walk up whole segments: /a/b/c, /a/b, /a, /.
        let mut candidate = crate::config::normalize_prefix(path);
        loop {
            if let Some(i) = self.prefixes.get(candidate).and_then(|v| v.iter().find(allows)) {
                return Some(*i);
            }
            if candidate == "/" {
                return None;
            }
            candidate = match candidate.rfind('/') {
                Some(0) | None => "/",
                Some(cut) => &candidate[..cut],
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(id: &str, host: Option<&str>, prefix: Option<&str>, path: Option<&str>, methods: &[&str]) -> RouteConfig {
        RouteConfig {
            id: id.into(),
            host: host.map(Into::into),
            path_prefix: prefix.map(Into::into),
            path: path.map(Into::into),
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            upstream: "u".into(),
            chain: Vec::new(),
            max_body_bytes: 1024,
            public: false,
            golden: Vec::new(),
        }
    }

    fn table() -> (Vec<RouteConfig>, Router) {
        let routes = vec![
            route("root", None, Some("/"), None, &[]),
            route("api", None, Some("/api/"), None, &[]),
            route("api-v2", None, Some("/api/v2"), None, &[]),
            route("item", None, None, Some("/api/items/{id}"), &["GET"]),
            route("item-post", None, None, Some("/api/items/{id}"), &["POST"]),
            route("exact", None, None, Some("/api/items/special"), &["GET"]),
            route("host-api", Some("admin.example"), Some("/api"), None, &[]),
        ];
        let router = Router::build(&routes).unwrap();
        (routes, router)
    }

    fn find<'a>(routes: &'a [RouteConfig], r: &Router, host: &str, path: &str, m: Method) -> Option<&'a str> {
        r.find(host, path, &m).map(|i| routes[i].id.as_str())
    }

    #[test]
    fn router_prefers_the_most_specific_match() {
        let (routes, r) = table();
        assert_eq!(find(&routes, &r, "x", "/api/items/special", Method::GET), Some("exact"));
        assert_eq!(find(&routes, &r, "x", "/api/items/7", Method::GET), Some("item"));
        assert_eq!(find(&routes, &r, "x", "/api/items/7", Method::POST), Some("item-post"));
        assert_eq!(find(&routes, &r, "x", "/api/v2/things", Method::GET), Some("api-v2"));
        assert_eq!(find(&routes, &r, "x", "/api/other", Method::GET), Some("api"));
        assert_eq!(find(&routes, &r, "x", "/elsewhere", Method::GET), Some("root"));
    }

    #[test]
    fn router_falls_back_when_the_method_does_not_match() {
        let (routes, r) = table();
        assert_eq!(find(&routes, &r, "x", "/api/items/special", Method::DELETE), Some("api"));
    }

    #[test]
    fn router_matches_prefixes_on_whole_segments() {
        let (routes, r) = table();
        assert_eq!(find(&routes, &r, "x", "/apix", Method::GET), Some("root"));
        assert_eq!(find(&routes, &r, "x", "/api", Method::GET), Some("api"));
    }

    #[test]
    fn router_prefers_host_routes_over_any_host() {
        let (routes, r) = table();
        assert_eq!(find(&routes, &r, "admin.example", "/api/x", Method::GET), Some("host-api"));
        assert_eq!(find(&routes, &r, "admin.example", "/other", Method::GET), Some("root"));
    }

    #[test]
    fn router_without_a_match_returns_none() {
        let routes = vec![route("api", None, Some("/api"), None, &[])];
        let r = Router::build(&routes).unwrap();
        assert_eq!(r.find("x", "/nope", &Method::GET), None);
    }

    #[test]
    fn router_refuses_conflicting_patterns() {
        let routes = vec![route("a", None, None, Some("/u/{id}"), &[]), route("b", None, None, Some("/u/{name}"), &[])];
        let issues = Router::build(&routes).unwrap_err();
        assert_eq!(issues[0].field, "route[1].path");
    }
}
