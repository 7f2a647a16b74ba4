//! Routes from a service's labels.
//!
//! Gantry's own, `gantry.http.KEY` for the service's route, or
//! `gantry.http.NAME.KEY` for one of several:
//!
//! | key | value | default |
//! |---|---|---|
//! | `host` | names, comma-separated; `*.example.com` matches subdomains | any host |
//! | `path` | the path | `/` |
//! | `path_type` | `prefix`, `exact`, `suffix` or `regex` | `prefix` |
//! | `port` | the port in the tasks | `80` |
//! | `strip_prefix` | remove the path prefix before forwarding | `false` |
//! | `https` | `auto` (certificate, HTTP redirects once it exists), `redirect`, `off` | `auto` |
//! | `redirect_from` | names that redirect to the first host | |
//! | `balance` | `round_robin` or `least_conn` | `round_robin` |
//! | `sticky` | pin clients to a task with a cookie | `false` |
//! | `health` | a path the proxy checks on every task | |
//! | `acme` | the ACME challenge: `http-01` or `tls-alpn-01` | `http-01` |
//!
//! And docker-flow-proxy's, read when `com.df.notify=true`: every
//! `com.df.X` is DFP's query parameter `X` (`serviceDomain`,
//! `servicePath`, `port`, `httpsOnly`, `redirectFromDomain`, `pathType`,
//! `reqPathSearchReplace`, the indexed forms...), so stacks written for
//! DFP deploy unchanged.

use std::collections::BTreeMap;

use crate::dfp::{self, TcpRoute};
use crate::{
    boolean, list, port, AcmeChallenge, Balance, HttpsMode, PathType, RouteError, RouteSpec,
};

/// The prefix of Gantry's labels.
pub const PREFIX: &str = "gantry.http.";

/// The routes `labels` give `service`, HTTP and TCP.
pub fn routes(
    service: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(Vec<RouteSpec>, Vec<TcpRoute>), RouteError> {
    let mut out = gantry_routes(service, labels)?;
    let mut tcp = Vec::new();
    let notify = labels
        .get("com.df.notify")
        .map(|v| boolean("com.df.notify", v))
        .transpose()?
        .unwrap_or(false);
    if notify {
        let mut q: dfp::Query = labels
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("com.df.")?.to_owned(), v.clone())))
            .collect();
        q.insert("serviceName".into(), service.to_owned());
        let r = dfp::reconfigure(&q)
            .map_err(|e| RouteError::Invalid(format!("com.df labels: {}", e.message)))?;
        out.extend(r.routes);
        tcp = r.tcp;
    }
    Ok((out, tcp))
}

fn gantry_routes(
    service: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Vec<RouteSpec>, RouteError> {
    // Route name ("" for the unnamed one) → key → value.
    let mut groups: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
    for (k, v) in labels {
        let Some(rest) = k.strip_prefix(PREFIX) else {
            continue;
        };
        let (name, key) = rest.rsplit_once('.').unwrap_or(("", rest));
        groups.entry(name).or_default().insert(key, v);
    }
    let mut out = Vec::new();
    for (name, keys) in groups {
        let label = |k: &str| {
            if name.is_empty() {
                format!("{PREFIX}{k}")
            } else {
                format!("{PREFIX}{name}.{k}")
            }
        };
        let mut r = RouteSpec::new(service, 80);
        for (key, v) in keys {
            let l = label(key);
            match key {
                "host" => {
                    r.hosts = list(v)
                        .into_iter()
                        .map(|h| h.to_ascii_lowercase())
                        .collect()
                }
                "path" => r.path = v.trim().to_owned(),
                "path_type" => {
                    r.path_type = match v.trim() {
                        "prefix" => PathType::Prefix,
                        "exact" => PathType::Exact,
                        "suffix" => PathType::Suffix,
                        "regex" => PathType::Regex,
                        _ => {
                            return Err(RouteError::Invalid(format!(
                                "{l}: {v:?} is not prefix, exact, suffix or regex"
                            )));
                        }
                    }
                }
                "port" => r.port = port(&l, v)?,
                "strip_prefix" => r.strip_prefix = boolean(&l, v)?,
                "https" => {
                    r.https = match v.trim() {
                        "auto" => HttpsMode::Auto,
                        "redirect" => HttpsMode::Redirect,
                        "off" => HttpsMode::Off,
                        _ => {
                            return Err(RouteError::Invalid(format!(
                                "{l}: {v:?} is not auto, redirect or off"
                            )));
                        }
                    }
                }
                "redirect_from" => {
                    r.redirect_from = list(v)
                        .into_iter()
                        .map(|h| h.to_ascii_lowercase())
                        .collect()
                }
                "balance" => {
                    r.balance = match v.trim() {
                        "round_robin" => Balance::RoundRobin,
                        "least_conn" => Balance::LeastConn,
                        _ => {
                            return Err(RouteError::Invalid(format!(
                                "{l}: {v:?} is not round_robin or least_conn"
                            )));
                        }
                    }
                }
                "sticky" => r.sticky = boolean(&l, v)?,
                "health" => r.health_path = Some(v.trim().to_owned()),
                "acme" => {
                    r.acme = match v.trim() {
                        "http-01" => AcmeChallenge::Http01,
                        "tls-alpn-01" => AcmeChallenge::TlsAlpn01,
                        _ => {
                            return Err(RouteError::Invalid(format!(
                                "{l}: {v:?} is not http-01 or tls-alpn-01"
                            )));
                        }
                    }
                }
                _ => {
                    return Err(RouteError::Invalid(format!(
                        "unknown label {l} (host, path, path_type, port, strip_prefix, https, redirect_from, balance, sticky, health, acme)"
                    )));
                }
            }
        }
        if r.path.is_empty() {
            r.path = "/".into();
        }
        r.validate()
            .map_err(|e| RouteError::Invalid(format!("{}: {e}", label("*"))))?;
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn gantry_labels_make_a_route() {
        let (r, tcp) = routes(
            "shop_web",
            &labels(&[
                ("gantry.http.host", "WWW.Example.com, *.example.org"),
                ("gantry.http.path", "/api"),
                ("gantry.http.port", "8080"),
                ("gantry.http.strip_prefix", "true"),
                ("gantry.http.https", "redirect"),
                ("gantry.http.balance", "least_conn"),
                ("gantry.http.sticky", "true"),
                ("gantry.http.health", "/healthz"),
                ("other", "x"),
            ]),
        )
        .unwrap();
        assert!(tcp.is_empty());
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(r.service, "shop_web");
        assert_eq!(r.hosts, ["www.example.com", "*.example.org"]);
        assert_eq!((r.path.as_str(), r.port), ("/api", 8080));
        assert!(r.strip_prefix && r.sticky);
        assert_eq!(r.https, HttpsMode::Redirect);
        assert_eq!(r.balance, Balance::LeastConn);
        assert_eq!(r.health_path.as_deref(), Some("/healthz"));
        assert_eq!(r.tls_names(), ["www.example.com"]);
    }

    #[test]
    fn named_routes_and_no_labels() {
        let (r, _) = routes(
            "s",
            &labels(&[
                ("gantry.http.site.host", "a.test"),
                ("gantry.http.admin.host", "admin.a.test"),
                ("gantry.http.admin.port", "9000"),
            ]),
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].hosts[0].as_str(), r[0].port), ("admin.a.test", 9000));
        assert_eq!((r[1].hosts[0].as_str(), r[1].port), ("a.test", 80));
        assert!(routes("s", &labels(&[])).unwrap().0.is_empty());
    }

    #[test]
    fn bad_labels_say_which() {
        for (k, v) in [
            ("gantry.http.port", "http"),
            ("gantry.http.path_type", "glob"),
            ("gantry.http.https", "always"),
            ("gantry.http.balance", "random"),
            ("gantry.http.sticky", "perhaps"),
            ("gantry.http.hots", "a.test"),
            ("gantry.http.path", "no-slash"),
            ("gantry.http.host", "bad host"),
            ("gantry.http.health", "healthz"),
            ("gantry.http.acme", "dns-01"),
        ] {
            let e = routes("s", &labels(&[(k, v)])).unwrap_err().to_string();
            assert!(e.contains("gantry.http."), "{k}={v}: {e}");
        }
    }

    #[test]
    fn dfp_labels_deploy_unchanged() {
        let (r, _) = routes(
            "go-demo_main",
            &labels(&[
                ("com.df.notify", "true"),
                ("com.df.distribute", "true"),
                ("com.df.servicePath", "/demo"),
                ("com.df.port", "8080"),
                ("com.df.serviceDomain", "demo.example.com"),
                ("com.df.httpsOnly", "true"),
                ("com.df.redirectFromDomain", "old.example.com"),
            ]),
        )
        .unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].service, "go-demo_main");
        assert_eq!(r[0].hosts, ["demo.example.com"]);
        assert_eq!(r[0].https, HttpsMode::Redirect);
        assert_eq!(r[0].redirect_from, ["old.example.com"]);
        // Without notify, DFP's labels mean nothing.
        let (r, _) = routes("s", &labels(&[("com.df.servicePath", "/x")])).unwrap();
        assert!(r.is_empty());
        let e = routes(
            "s",
            &labels(&[("com.df.notify", "true"), ("com.df.servicePath", "/x")]),
        );
        assert!(e.unwrap_err().to_string().contains("port"));
    }
}
