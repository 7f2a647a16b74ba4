//! docker-flow-proxy's reconfigure and remove queries, parsed into routes
//! with DFP's validation and status codes, so its clients (and its
//! `com.df.*` labels, see [`crate::labels`]) work unchanged.
//!
//! A query holds one destination per index: `servicePath`, `port`, ... for
//! the first, `servicePath.1`, `port.1`, ... up to `.10` for the others.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{boolean, list, port, HttpsMode, PathType, RouteError, RouteSpec};

/// The highest destination index (`servicePath.10`).
pub const MAX_INDEX: usize = 10;

/// A reconfigure query, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconfigure {
    /// `serviceName`.
    pub service: String,
    /// Its HTTP routes.
    pub routes: Vec<RouteSpec>,
    /// Its TCP routes (`reqMode=tcp`).
    pub tcp: Vec<TcpRoute>,
    /// `distribute`: apply on every proxy of the cluster.
    pub distribute: bool,
}

/// A TCP route: connections to `src_port` on the proxy go to the service's
/// tasks on `port`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct TcpRoute {
    /// The service.
    pub service: String,
    /// The port the proxy listens on.
    pub src_port: u16,
    /// The port in the tasks.
    pub port: u16,
}

/// A query DFP refuses, with the status it answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DfpError {
    /// The HTTP status.
    pub status: u16,
    /// DFP's message.
    pub message: String,
}

impl DfpError {
    fn bad(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
        }
    }
}

impl From<RouteError> for DfpError {
    fn from(e: RouteError) -> Self {
        Self::bad(e.to_string())
    }
}

/// The parameters by name; the last value wins, as in DFP (Go's
/// `r.URL.Query().Get` takes the first, but nobody repeats them).
pub type Query = BTreeMap<String, String>;

/// Parses a `/v1/docker-flow-proxy/reconfigure` query.
pub fn reconfigure(q: &Query) -> Result<Reconfigure, DfpError> {
    let service = service_name(q)?;
    let get = |k: &str, i: usize| -> Option<&str> {
        let v = if i == 0 {
            q.get(k)
        } else {
            q.get(&format!("{k}.{i}"))
        };
        v.map(|s| s.as_str()).filter(|s| !s.trim().is_empty())
    };
    let distribute = q
        .get("distribute")
        .map(|v| boolean("distribute", v))
        .transpose()?
        .unwrap_or(false);
    let mut routes = Vec::new();
    let mut tcp = Vec::new();
    for i in 0..=MAX_INDEX {
        let any = ["servicePath", "serviceDomain", "port", "srcPort", "reqMode"]
            .iter()
            .any(|k| get(k, i).is_some());
        if !any {
            continue;
        }
        // A destination's settings fall back on the unindexed ones, as
        // DFP's do.
        let pick = |k: &str| get(k, i).or_else(|| get(k, 0));
        let mode = pick("reqMode").unwrap_or("http").to_ascii_lowercase();
        let Some(p) = get("port", i).or_else(|| if i == 0 { None } else { get("port", 0) }) else {
            return Err(DfpError::bad("port parameter is mandatory."));
        };
        let p = port("port", p)?;
        match mode.as_str() {
            "tcp" => {
                let Some(src) = get("srcPort", i) else {
                    return Err(DfpError::bad(
                        "srcPort parameter is mandatory when reqMode is tcp.",
                    ));
                };
                tcp.push(TcpRoute {
                    service: service.clone(),
                    src_port: port("srcPort", src)?,
                    port: p,
                });
            }
            "http" => {
                let paths = get("servicePath", i).map(list).unwrap_or_default();
                let domains: Vec<String> = pick("serviceDomain")
                    .map(list)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|d| d.to_ascii_lowercase())
                    .collect();
                if paths.is_empty() && domains.is_empty() {
                    return Err(DfpError {
                        status: 409,
                        message:
                            "When using reqMode http, servicePath or serviceDomain are mandatory"
                                .into(),
                    });
                }
                let path_type = match pick("pathType").unwrap_or("path_beg") {
                    "path_beg" => PathType::Prefix,
                    "path_end" => PathType::Suffix,
                    "path_reg" => PathType::Regex,
                    "path" => PathType::Exact,
                    other => {
                        return Err(DfpError::bad(format!(
                            "pathType {other:?} is not one of path_beg, path_end, path_reg, path"
                        )));
                    }
                };
                let https_only = pick("httpsOnly")
                    .map(|v| boolean("httpsOnly", v))
                    .transpose()?
                    .unwrap_or(false);
                let replace = pick("reqPathSearchReplace")
                    .map(|v| {
                        v.split(':')
                            .filter(|s| !s.is_empty())
                            .map(|pair| {
                                pair.split_once(',')
                                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                                    .ok_or_else(|| {
                                        DfpError::bad(format!(
                                            "reqPathSearchReplace {pair:?}: use SEARCH,REPLACE"
                                        ))
                                    })
                            })
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .transpose()?
                    .unwrap_or_default();
                let redirect_from = pick("redirectFromDomain")
                    .map(list)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|d| d.to_ascii_lowercase())
                    .collect::<Vec<_>>();
                let paths = if paths.is_empty() {
                    vec!["/".to_owned()]
                } else {
                    paths
                };
                for path in paths {
                    let mut r = RouteSpec::new(&service, p);
                    r.hosts = domains.clone();
                    r.path = path;
                    r.path_type = path_type;
                    r.replace = replace.clone();
                    r.https = if https_only {
                        HttpsMode::Redirect
                    } else {
                        HttpsMode::Auto
                    };
                    r.redirect_from = redirect_from.clone();
                    r.validate()?;
                    routes.push(r);
                }
            }
            other => {
                return Err(DfpError::bad(format!(
                    "reqMode {other:?} is not supported (http or tcp)"
                )));
            }
        }
    }
    if routes.is_empty() && tcp.is_empty() {
        // No destination at all: DFP's checks, in its order.
        return Err(DfpError::bad("port parameter is mandatory."));
    }
    Ok(Reconfigure {
        service,
        routes,
        tcp,
        distribute,
    })
}

/// Parses a `/v1/docker-flow-proxy/remove` query: the service and whether
/// to apply it everywhere.
pub fn remove(q: &Query) -> Result<(String, bool), DfpError> {
    let service = service_name(q)?;
    let distribute = q
        .get("distribute")
        .map(|v| boolean("distribute", v))
        .transpose()?
        .unwrap_or(false);
    Ok((service, distribute))
}

fn service_name(q: &Query) -> Result<String, DfpError> {
    let name = q.get("serviceName").map(|s| s.trim()).unwrap_or("");
    if name.is_empty() {
        return Err(DfpError::bad("serviceName parameter is mandatory."));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.len() > 200
    {
        return Err(DfpError::bad(format!(
            "serviceName {name:?} is not a service name"
        )));
    }
    Ok(name.to_owned())
}

/// One destination in DFP's reply (`ServiceDest`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceDest {
    /// ParseOptions.
    pub service_path: Vec<String>,
    /// Domains.
    pub service_domain: Vec<String>,
    /// Port in the tasks.
    pub port: String,
    /// `http` or `tcp`.
    pub req_mode: String,
    /// TCP: the proxy's port.
    pub src_port: u16,
    /// `path_beg`, ...
    pub path_type: String,
    /// `httpsOnly`.
    pub https_only: bool,
    /// `redirectFromDomain`.
    pub redirect_from_domain: Vec<String>,
}

/// DFP's reply to reconfigure and remove.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Reply {
    /// `OK` or `NOK`.
    pub status: String,
    /// Empty when OK.
    pub message: String,
    /// `serviceName`.
    pub service_name: String,
    /// The destinations.
    pub service_dest: Vec<ServiceDest>,
    /// `distribute`.
    pub distribute: bool,
}

impl Reply {
    /// The reply to a reconfigure that worked.
    pub fn ok(r: &Reconfigure) -> Self {
        let mut dest: Vec<ServiceDest> = r
            .routes
            .iter()
            .map(|s| ServiceDest {
                service_path: vec![s.path.clone()],
                service_domain: s.hosts.clone(),
                port: s.port.to_string(),
                req_mode: "http".into(),
                src_port: 0,
                path_type: match s.path_type {
                    PathType::Prefix => "path_beg",
                    PathType::Exact => "path",
                    PathType::Suffix => "path_end",
                    PathType::Regex => "path_reg",
                }
                .into(),
                https_only: s.https == HttpsMode::Redirect,
                redirect_from_domain: s.redirect_from.clone(),
            })
            .collect();
        dest.extend(r.tcp.iter().map(|t| ServiceDest {
            service_path: Vec::new(),
            service_domain: Vec::new(),
            port: t.port.to_string(),
            req_mode: "tcp".into(),
            src_port: t.src_port,
            path_type: String::new(),
            https_only: false,
            redirect_from_domain: Vec::new(),
        }));
        Self {
            status: "OK".into(),
            message: String::new(),
            service_name: r.service.clone(),
            service_dest: dest,
            distribute: r.distribute,
        }
    }

    /// A reply that says what is wrong.
    pub fn nok(service: &str, message: &str) -> Self {
        Self {
            status: "NOK".into(),
            message: message.into(),
            service_name: service.into(),
            service_dest: Vec::new(),
            distribute: false,
        }
    }

    /// The reply to a remove that worked.
    pub fn removed(service: &str, distribute: bool) -> Self {
        Self {
            status: "OK".into(),
            message: String::new(),
            service_name: service.into(),
            service_dest: Vec::new(),
            distribute,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Query {
        s.split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    #[test]
    fn the_documented_example_routes_a_path() {
        let r = reconfigure(&q("serviceName=go-demo&servicePath=/demo&port=8080")).unwrap();
        assert_eq!(r.service, "go-demo");
        assert_eq!(r.routes.len(), 1);
        assert_eq!(r.routes[0].path, "/demo");
        assert_eq!(r.routes[0].path_type, PathType::Prefix);
        assert_eq!(r.routes[0].port, 8080);
        assert!(r.routes[0].hosts.is_empty());
        assert!(!r.distribute);
        let reply = serde_json::to_value(Reply::ok(&r)).unwrap();
        assert_eq!(reply["Status"], "OK");
        assert_eq!(reply["ServiceName"], "go-demo");
        assert_eq!(reply["ServiceDest"][0]["Port"], "8080");
        assert_eq!(reply["ServiceDest"][0]["ServicePath"][0], "/demo");
    }

    #[test]
    fn errors_carry_dfps_status_and_message() {
        let e = reconfigure(&q("servicePath=/demo&port=8080")).unwrap_err();
        assert_eq!(
            (e.status, e.message.as_str()),
            (400, "serviceName parameter is mandatory.")
        );
        let e = reconfigure(&q("serviceName=a&port=8080")).unwrap_err();
        assert_eq!(e.status, 409);
        let e = reconfigure(&q("serviceName=a&servicePath=/x")).unwrap_err();
        assert_eq!(
            (e.status, e.message.as_str()),
            (400, "port parameter is mandatory.")
        );
        let e = reconfigure(&q("serviceName=a")).unwrap_err();
        assert_eq!(e.status, 400);
        for bad in [
            "serviceName=a&servicePath=/x&port=0",
            "serviceName=a&servicePath=/x&port=99999",
            "serviceName=a&servicePath=/x&port=80&pathType=weird",
            "serviceName=a&servicePath=(&port=80&pathType=path_reg",
            "serviceName=a&servicePath=x&port=80",
            "serviceName=a&serviceDomain=exa mple.com&port=80",
            "serviceName=a&serviceDomain=a..b&port=80",
            "serviceName=a;rm&servicePath=/x&port=80",
            "serviceName=a&servicePath=/x&port=80&reqMode=udp",
            "serviceName=a&reqMode=tcp&port=80",
            "serviceName=a&servicePath=/x&port=80&httpsOnly=maybe",
            "serviceName=a&servicePath=/x&port=80&reqPathSearchReplace=nocomma",
            "serviceName=a&servicePath=/x&port=80&reqPathSearchReplace=(,x",
        ] {
            let e = reconfigure(&q(bad)).unwrap_err();
            assert_eq!(e.status, 400, "{bad}: {e}");
        }
        assert_eq!(remove(&q("")).unwrap_err().status, 400);
        assert_eq!(
            remove(&q("serviceName=a&distribute=true")).unwrap(),
            ("a".into(), true)
        );
    }

    #[test]
    fn every_parameter_is_read() {
        let r = reconfigure(&q(
            "serviceName=web&servicePath=/a,/b&serviceDomain=Example.com,*.example.org&port=80\
             &pathType=path_reg&httpsOnly=true&redirectFromDomain=old.example.com\
             &reqPathSearchReplace=/a/,/:^/b,/c&distribute=true",
        ))
        .unwrap();
        assert!(r.distribute);
        assert_eq!(r.routes.len(), 2);
        let a = &r.routes[0];
        assert_eq!(a.hosts, ["example.com", "*.example.org"]);
        assert_eq!(a.path_type, PathType::Regex);
        assert_eq!(a.https, HttpsMode::Redirect);
        assert_eq!(a.redirect_from, ["old.example.com"]);
        assert_eq!(
            a.replace,
            [
                ("/a/".to_owned(), "/".to_owned()),
                ("^/b".to_owned(), "/c".to_owned())
            ]
        );
        assert_eq!(r.routes[1].path, "/b");
    }

    #[test]
    fn indexed_destinations_and_tcp() {
        let r = reconfigure(&q(
            "serviceName=app&servicePath=/api&port=8080&servicePath.1=/admin&port.1=9090\
             &serviceDomain=app.example.com&reqMode.2=tcp&srcPort.2=5432&port.2=5432",
        ))
        .unwrap();
        assert_eq!(r.routes.len(), 2);
        assert_eq!(
            (r.routes[0].path.as_str(), r.routes[0].port),
            ("/api", 8080)
        );
        assert_eq!(
            (r.routes[1].path.as_str(), r.routes[1].port),
            ("/admin", 9090)
        );
        assert_eq!(
            r.routes[1].hosts,
            ["app.example.com"],
            "falls back on the unindexed domain"
        );
        assert_eq!(
            r.tcp,
            [TcpRoute {
                service: "app".into(),
                src_port: 5432,
                port: 5432
            }]
        );
    }

    #[test]
    fn a_domain_alone_routes_every_path() {
        let r = reconfigure(&q("serviceName=a&serviceDomain=a.test&port=80")).unwrap();
        assert_eq!(r.routes[0].path, "/");
        assert_eq!(r.routes[0].hosts, ["a.test"]);
    }
}
