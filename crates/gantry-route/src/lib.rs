//! The edge proxy's routes, pure: what a route says ([`RouteSpec`]), where
//! routes come from (service labels, Gantry's own and docker-flow-proxy's,
//! in [`labels`]; docker-flow-proxy's reconfigure queries in [`dfp`]), and
//! the [`Table`] that picks the route of a request by host and path.
//!
//! **Architecture invariant:** nothing here does I/O or keeps time; the
//! proxy (`gantry-proxy`) builds a new [`Table`] on every change and swaps
//! it in whole, so a lookup never sees half a change.

pub mod dfp;
pub mod labels;
mod table;

use serde::{Deserialize, Serialize};

pub use table::{Hit, Table};

/// How a route's path matches the request's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathType {
    /// The request path starts with it (DFP's `path_beg`).
    #[default]
    Prefix,
    /// The request path is it (DFP's `path`).
    Exact,
    /// The request path ends with it (DFP's `path_end`).
    Suffix,
    /// The regular expression matches the request path (DFP's `path_reg`).
    Regex,
}

/// Whether a route is served over HTTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpsMode {
    /// A certificate is obtained for the route's names; plain HTTP
    /// redirects to HTTPS once it exists.
    #[default]
    Auto,
    /// HTTP always redirects to HTTPS (DFP's `httpsOnly`).
    Redirect,
    /// Plain HTTP only: no certificate, no redirect.
    Off,
}

/// How a route spreads requests over its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each in turn.
    #[default]
    RoundRobin,
    /// The one with the fewest requests in flight.
    LeastConn,
}

/// How an ACME CA checks that we hold a route's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AcmeChallenge {
    /// A token served over plain HTTP on port 80.
    #[default]
    Http01,
    /// A special certificate offered on port 443 (ALPN `acme-tls/1`).
    TlsAlpn01,
}

/// One HTTP route: requests for these names and this path go to this
/// service's tasks on this port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    /// The service (`STACK_SERVICE`, or a name a DFP client gave).
    pub service: String,
    /// Host names, lower case; a leading `*` matches any host ending with
    /// the rest (`*.example.com`, DFP's `*example.com`). Empty: any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The path to match; `/` matches everything.
    pub path: String,
    /// How [`path`](Self::path) matches.
    #[serde(default)]
    pub path_type: PathType,
    /// The port in the tasks.
    pub port: u16,
    /// Remove a prefix path before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Regular expression and replacement applied to the path before
    /// forwarding (DFP's `reqPathSearchReplace`).
    #[serde(default)]
    pub replace: Vec<(String, String)>,
    /// HTTPS.
    #[serde(default)]
    pub https: HttpsMode,
    /// Host names that redirect (301) to the first of [`hosts`](Self::hosts).
    #[serde(default)]
    pub redirect_from: Vec<String>,
    /// Balancing.
    #[serde(default)]
    pub balance: Balance,
    /// Pin a client to a backend with a cookie.
    #[serde(default)]
    pub sticky: bool,
    /// A path the proxy requests on every backend to check its health.
    #[serde(default)]
    pub health_path: Option<String>,
    /// The ACME challenge for its certificate.
    #[serde(default)]
    pub acme: AcmeChallenge,
}

/// A route with the overlay addresses of its service's healthy tasks: what
/// the manager sends each proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The route.
    pub spec: RouteSpec,
    /// The tasks' addresses (the port is the route's).
    pub backends: Vec<std::net::Ipv4Addr>,
}

/// Whether two host patterns (exact names or `*suffix` wildcards) share a
/// name.
fn hosts_meet(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(x), Some(y)) => x.ends_with(y) || y.ends_with(x),
        (Some(s), None) => b.ends_with(s) && b.len() > s.len(),
        (None, Some(s)) => a.ends_with(s) && a.len() > s.len(),
        (None, None) => a == b,
    }
}

impl RouteSpec {
    /// Whether this route would take some request that `other` serves,
    /// were both in one table: a host of `other`'s that it names at least
    /// as closely (an exact name before the longest wildcard before any
    /// host), and a path of `other`'s that it matches at least as closely
    /// (an exact path before the longest prefix). Suffixes and regular
    /// expressions are taken to take any path.
    pub fn takes_from(&self, other: &RouteSpec) -> bool {
        let rank = |h: &str| h.strip_prefix('*').map_or(usize::MAX, str::len);
        let hosts = match (self.hosts.is_empty(), other.hosts.is_empty()) {
            (_, true) => true,
            (true, false) => false,
            (false, false) => self.hosts.iter().any(|a| {
                other
                    .hosts
                    .iter()
                    .any(|b| hosts_meet(a, b) && rank(a) >= rank(b))
            }),
        };
        let (a, b) = (&self.path, &other.path);
        let paths = match (self.path_type, other.path_type) {
            (PathType::Prefix, PathType::Prefix) => a.starts_with(b.as_str()),
            (PathType::Exact, PathType::Prefix) => a.starts_with(b.as_str()),
            (PathType::Prefix, PathType::Exact) => false,
            (PathType::Exact, PathType::Exact) => a == b,
            _ => true,
        };
        hosts && paths
    }

    /// Whether the route names `host` (a name or a `*suffix` wildcard):
    /// a certificate for it is the route's.
    pub fn names_host(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| hosts_meet(h, host))
    }

    /// A route of `service` on `port` for every host and path.
    pub fn new(service: &str, port: u16) -> Self {
        Self {
            service: service.to_owned(),
            hosts: Vec::new(),
            path: "/".to_owned(),
            path_type: PathType::Prefix,
            port,
            strip_prefix: false,
            replace: Vec::new(),
            https: HttpsMode::Auto,
            redirect_from: Vec::new(),
            balance: Balance::RoundRobin,
            sticky: false,
            health_path: None,
            acme: AcmeChallenge::Http01,
        }
    }

    /// Checks names, paths and expressions.
    pub fn validate(&self) -> Result<(), RouteError> {
        if self.service.is_empty() {
            return Err(RouteError::Invalid("a route needs a service".into()));
        }
        if self.port == 0 {
            return Err(RouteError::Invalid(format!(
                "route of {}: port 0 is not a port",
                self.service
            )));
        }
        for h in self.hosts.iter().chain(&self.redirect_from) {
            check_host(h)?;
        }
        match self.path_type {
            PathType::Regex => {
                regex::Regex::new(&self.path).map_err(|e| {
                    RouteError::Invalid(format!(
                        "path {:?} is not a regular expression: {e}",
                        self.path
                    ))
                })?;
            }
            PathType::Prefix | PathType::Exact => {
                if !self.path.starts_with('/') {
                    return Err(RouteError::Invalid(format!(
                        "path {:?} must start with /",
                        self.path
                    )));
                }
            }
            PathType::Suffix => {}
        }
        if self
            .path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(RouteError::Invalid(format!(
                "path {:?} holds a space or control character",
                self.path
            )));
        }
        for (search, _) in &self.replace {
            regex::Regex::new(search).map_err(|e| {
                RouteError::Invalid(format!("{search:?} is not a regular expression: {e}"))
            })?;
        }
        if let Some(p) = self.health_path.as_ref().filter(|p| !p.starts_with('/')) {
            return Err(RouteError::Invalid(format!(
                "health path {p:?} must start with /"
            )));
        }
        Ok(())
    }

    /// The names that need a certificate: the exact host names (a
    /// wildcard needs DNS-01, which Gantry does not do) and the
    /// redirecting names.
    pub fn tls_names(&self) -> Vec<String> {
        if self.https == HttpsMode::Off {
            return Vec::new();
        }
        self.hosts
            .iter()
            .chain(&self.redirect_from)
            .filter(|h| !h.starts_with('*'))
            .cloned()
            .collect()
    }
}

/// A host name or pattern that is not one.
fn check_host(h: &str) -> Result<(), RouteError> {
    let name = h.strip_prefix('*').unwrap_or(h);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' || c == ':')
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(RouteError::Invalid(format!("{h:?} is not a host name")))
    }
}

/// Lower case, without a port or a trailing dot.
pub fn normalize_host(h: &str) -> std::borrow::Cow<'_, str> {
    let h = h.trim();
    let h = if h.starts_with('[') {
        // `[v6]` or `[v6]:port`: up to and with the bracket.
        match h.find(']') {
            Some(i) => &h[..=i],
            None => "",
        }
    } else {
        h.rsplit_once(':')
            .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
            .map_or(h, |(h, _)| h)
    };
    let h = h.trim_end_matches('.');
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(h.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(h)
    }
}

/// A route that cannot be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// A bad value.
    #[error("{0}")]
    Invalid(String),
}

/// Splits a comma-separated list, trimmed, without empty items.
pub(crate) fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `true`/`false` and the usual spellings.
pub(crate) fn boolean(key: &str, v: &str) -> Result<bool, RouteError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(RouteError::Invalid(format!(
            "{key}: {v:?} is not true or false"
        ))),
    }
}

/// A port number.
pub(crate) fn port(key: &str, v: &str) -> Result<u16, RouteError> {
    match v.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(RouteError::Invalid(format!("{key}: {v:?} is not a port"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(hosts: &[&str], path: &str, t: PathType) -> RouteSpec {
        let mut r = RouteSpec::new("s", 80);
        r.hosts = hosts.iter().map(|h| (*h).to_owned()).collect();
        r.path = path.into();
        r.path_type = t;
        r
    }

    #[test]
    fn a_route_takes_what_it_would_match_first() {
        use PathType::*;
        let api = route(&["www.shop.test"], "/api", Prefix);
        for (other, takes) in [
            (route(&["www.shop.test"], "/api", Prefix), true),
            (route(&["www.shop.test"], "/api/", Prefix), true),
            (route(&["www.shop.test"], "/api/x", Exact), true),
            (route(&["www.shop.test"], "/api", Exact), true),
            (route(&["www.shop.test"], "/", Prefix), false),
            (route(&["www.shop.test"], "/static", Prefix), false),
            (route(&["www.shop.test"], ".php", Suffix), true),
            (route(&["*.shop.test"], "/api/", Prefix), false),
            (route(&[], "/api/", Prefix), false),
            (route(&["shop.test"], "/api/", Prefix), false),
        ] {
            assert_eq!(other.takes_from(&api), takes, "{other:?}");
        }
        // A label route for any host is taken by a named host's route.
        let any = route(&[], "/api", Prefix);
        assert!(route(&["www.shop.test"], "/api", Prefix).takes_from(&any));
        assert!(route(&[], "/api/v2", Prefix).takes_from(&any));
        assert!(!route(&[], "/ghost", Prefix).takes_from(&any));
        // Wildcards: the longer suffix is looked up first.
        let wild = route(&["*.shop.test"], "/", Prefix);
        assert!(route(&["*.eu.shop.test"], "/", Prefix).takes_from(&wild));
        assert!(!route(&["*.test"], "/", Prefix).takes_from(&wild));
        assert!(route(&["www.shop.test"], "/x", Prefix).takes_from(&wild));
        assert!(wild.names_host("www.shop.test"));
        assert!(!wild.names_host("shop.test"));
        assert!(!route(&[], "/", Prefix).names_host("www.shop.test"));
    }
}
