//! The route table: a request's host and path to its route.
//!
//! Hosts first: an exact name beats the longest matching wildcard, which
//! beats routes for any host; a host whose routes have no path that
//! matches falls through to the next group. Within a group: exact paths,
//! then prefixes and suffixes longest first, then regular expressions in
//! the order given, then the catch-all `/`.

use std::collections::HashMap;

use regex::Regex;

use crate::{normalize_host, PathType, RouteSpec};

struct Entry<T> {
    spec: RouteSpec,
    regex: Option<Regex>,
    replace: Vec<(Regex, String)>,
    value: T,
}

/// A request's route.
#[derive(Debug)]
pub enum Hit<'a, 'p, T> {
    /// Forward to the route's backends.
    Route {
        /// The route.
        spec: &'a RouteSpec,
        /// What the caller keeps with it (its backends).
        value: &'a T,
        /// The path to forward, after prefix stripping and replacement
        /// (the request's own when the route keeps it).
        path: std::borrow::Cow<'p, str>,
    },
    /// The host redirects to another (`redirect_from`).
    Redirect {
        /// The host to redirect to.
        host: &'a str,
        /// The route's HTTPS mode.
        spec: &'a RouteSpec,
    },
}

/// Routes by host and path, built once per change and then only read.
pub struct Table<T> {
    entries: Vec<Entry<T>>,
    exact: HashMap<String, Vec<usize>>,
    /// (suffix, entries), longest suffix first.
    wildcard: Vec<(String, Vec<usize>)>,
    any: Vec<usize>,
    redirects: HashMap<String, usize>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl<T> Table<T> {
    /// A table of these routes. A route whose expressions do not compile
    /// is left out ([`RouteSpec::validate`] refuses those earlier).
    pub fn new(routes: Vec<(RouteSpec, T)>) -> Self {
        let mut entries = Vec::new();
        for (spec, value) in routes {
            let regex = match spec.path_type {
                PathType::Regex => match Regex::new(&spec.path) {
                    Ok(r) => Some(r),
                    Err(_) => continue,
                },
                _ => None,
            };
            let Ok(replace) = spec
                .replace
                .iter()
                .map(|(s, r)| Regex::new(s).map(|re| (re, r.clone())))
                .collect::<Result<Vec<_>, _>>()
            else {
                continue;
            };
            entries.push(Entry {
                spec,
                regex,
                replace,
                value,
            });
        }
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wild: HashMap<String, Vec<usize>> = HashMap::new();
        let mut any = Vec::new();
        let mut redirects = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            if e.spec.hosts.is_empty() {
                any.push(i);
            }
            for h in &e.spec.hosts {
                match h.strip_prefix('*') {
                    Some(suffix) => wild.entry(suffix.to_owned()).or_default().push(i),
                    None => exact.entry(h.clone()).or_default().push(i),
                }
            }
            if e.spec.hosts.first().is_some_and(|h| !h.starts_with('*')) {
                for r in &e.spec.redirect_from {
                    redirects.entry(r.clone()).or_insert(i);
                }
            }
        }
        let order = |v: &mut Vec<usize>| {
            v.sort_by_key(|&i| {
                let s = &entries[i].spec;
                let rank = match s.path_type {
                    PathType::Exact => 0,
                    PathType::Prefix if s.path == "/" => 3,
                    PathType::Prefix | PathType::Suffix => 1,
                    PathType::Regex => 2,
                };
                (rank, std::cmp::Reverse(s.path.len()), i)
            });
        };
        exact.values_mut().for_each(order);
        order(&mut any);
        let mut wildcard: Vec<(String, Vec<usize>)> = wild.into_iter().collect();
        wildcard.iter_mut().for_each(|(_, v)| order(v));
        wildcard.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        Self {
            entries,
            exact,
            wildcard,
            any,
            redirects,
        }
    }

    /// Every route with its value.
    pub fn routes(&self) -> impl Iterator<Item = (&RouteSpec, &T)> {
        self.entries.iter().map(|e| (&e.spec, &e.value))
    }

    /// How many routes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No routes.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The route of a request for `host` (as in the Host header or SNI,
    /// any case, with or without a port) and `path` (without the query).
    pub fn lookup<'p>(&self, host: &str, path: &'p str) -> Option<Hit<'_, 'p, T>> {
        let host = normalize_host(host);
        let groups = self
            .exact
            .get(host.as_ref())
            .into_iter()
            .chain(
                self.wildcard
                    .iter()
                    .filter(|(suffix, _)| {
                        host.ends_with(suffix.as_str()) && host.len() > suffix.len()
                    })
                    .map(|(_, v)| v),
            )
            .chain(std::iter::once(&self.any));
        for group in groups {
            for &i in group {
                let e = &self.entries[i];
                if let Some(path) = e.forward(path) {
                    return Some(Hit::Route {
                        spec: &e.spec,
                        value: &e.value,
                        path,
                    });
                }
            }
        }
        let &i = self.redirects.get(host.as_ref())?;
        let e = &self.entries[i];
        Some(Hit::Redirect {
            host: &e.spec.hosts[0],
            spec: &e.spec,
        })
    }
}

impl<T> Entry<T> {
    /// The path to forward if this route matches `path`.
    fn forward<'p>(&self, path: &'p str) -> Option<std::borrow::Cow<'p, str>> {
        let s = &self.spec;
        let matched = match s.path_type {
            PathType::Prefix => path.starts_with(&s.path),
            PathType::Exact => path == s.path,
            PathType::Suffix => path.ends_with(&s.path),
            PathType::Regex => self.regex.as_ref().is_some_and(|r| r.is_match(path)),
        };
        if !matched {
            return None;
        }
        let strip = s.strip_prefix && s.path_type == PathType::Prefix && s.path != "/";
        if !strip && self.replace.is_empty() && path.starts_with('/') {
            return Some(std::borrow::Cow::Borrowed(path));
        }
        let mut out = if strip {
            let rest = &path[s.path.len()..];
            if rest.starts_with('/') {
                rest.to_owned()
            } else {
                format!("/{rest}")
            }
        } else {
            path.to_owned()
        };
        for (re, with) in &self.replace {
            out = re.replace_all(&out, with.as_str()).into_owned();
        }
        if !out.starts_with('/') {
            out.insert(0, '/');
        }
        Some(std::borrow::Cow::Owned(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HttpsMode;

    fn route(service: &str, hosts: &[&str], path: &str, t: PathType) -> RouteSpec {
        let mut r = RouteSpec::new(service, 80);
        r.hosts = hosts.iter().map(|h| (*h).to_owned()).collect();
        r.path = path.into();
        r.path_type = t;
        r
    }

    fn service<'a>(t: &'a Table<&'static str>, host: &str, path: &str) -> Option<&'a str> {
        match t.lookup(host, path)? {
            Hit::Route { value, .. } => Some(value),
            Hit::Redirect { .. } => Some("redirect"),
        }
    }

    #[test]
    fn hosts_then_paths_in_precedence() {
        let t = Table::new(vec![
            (route("any", &[], "/", PathType::Prefix), "any"),
            (route("api", &[], "/api", PathType::Prefix), "api"),
            (route("www", &["www.a.com"], "/", PathType::Prefix), "www"),
            (
                route("wapi", &["www.a.com"], "/api", PathType::Prefix),
                "wapi",
            ),
            (
                route("exact", &["www.a.com"], "/api/x", PathType::Exact),
                "exact",
            ),
            (route("wild", &["*.a.com"], "/", PathType::Prefix), "wild"),
            (route("deep", &["*.b.a.com"], "/", PathType::Prefix), "deep"),
            (
                route("png", &["img.a.com"], ".png", PathType::Suffix),
                "png",
            ),
            (
                route("re", &["re.a.com"], "^/v[0-9]+/", PathType::Regex),
                "re",
            ),
        ]);
        assert_eq!(service(&t, "www.a.com", "/"), Some("www"));
        assert_eq!(service(&t, "WWW.A.COM:8080", "/api/y"), Some("wapi"));
        assert_eq!(service(&t, "www.a.com.", "/api/x"), Some("exact"));
        assert_eq!(service(&t, "x.a.com", "/api"), Some("wild"));
        assert_eq!(service(&t, "x.b.a.com", "/"), Some("deep"));
        assert_eq!(
            service(&t, "a.com", "/"),
            Some("any"),
            "a wildcard needs a label in front"
        );
        assert_eq!(service(&t, "other.org", "/api/z"), Some("api"));
        assert_eq!(service(&t, "img.a.com", "/cat.png"), Some("png"));
        assert_eq!(
            service(&t, "img.a.com", "/cat.jpg"),
            Some("wild"),
            "falls through to the wildcard"
        );
        assert_eq!(service(&t, "re.a.com", "/v2/x"), Some("re"));
        assert_eq!(service(&t, "re.a.com", "/vx/x"), Some("wild"));
    }

    #[test]
    fn no_route_and_redirects() {
        let mut r = route("www", &["www.a.com"], "/", PathType::Prefix);
        r.redirect_from = vec!["a.com".into()];
        r.https = HttpsMode::Redirect;
        let t = Table::new(vec![(r, "www")]);
        assert!(t.lookup("b.com", "/").is_none());
        match t.lookup("a.com", "/x") {
            Some(Hit::Redirect { host, spec }) => {
                assert_eq!(host, "www.a.com");
                assert_eq!(spec.https, HttpsMode::Redirect);
            }
            other => panic!("{other:?}"),
        }
        assert!(Table::<()>::default().lookup("a", "/").is_none());
    }

    #[test]
    fn stripping_and_replacing() {
        let mut a = route("a", &[], "/api", PathType::Prefix);
        a.strip_prefix = true;
        let mut b = route("b", &[], "/demo", PathType::Prefix);
        b.replace = vec![("^/demo".into(), "/v2".into())];
        let t = Table::new(vec![(a, ()), (b, ())]);
        let path = |p: &str| match t.lookup("h", p) {
            Some(Hit::Route { path, .. }) => path.into_owned(),
            other => panic!("{other:?}"),
        };
        assert_eq!(path("/api/users"), "/users");
        assert_eq!(path("/api"), "/");
        assert_eq!(path("/apix"), "/x");
        assert_eq!(path("/demo/x"), "/v2/x");
    }

    #[test]
    fn a_bad_expression_is_left_out() {
        let t = Table::new(vec![(route("bad", &[], "(", PathType::Regex), ())]);
        assert!(t.is_empty());
    }

    proptest::proptest! {
        /// Any host and path: the lookup never panics, and a hit's path
        /// starts with a slash.
        #[test]
        fn lookups_are_total(host in "\\PC{0,40}", path in "\\PC{0,60}") {
            let mut s = route("s", &["*.x.com"], "/p", PathType::Prefix);
            s.strip_prefix = true;
            let t = Table::new(vec![
                (s, ()),
                (route("r", &["y.com"], "^/a+", PathType::Regex), ()),
                (route("e", &[], "/e", PathType::Exact), ()),
            ]);
            if let Some(Hit::Route { path, .. }) = t.lookup(&host, &path) {
                proptest::prop_assert!(path.starts_with('/'));
            }
        }
    }
}
