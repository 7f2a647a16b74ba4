//! Builds on the cluster: what `POST /v1/builds` takes (its query, and the
//! build's secrets in headers) and what it answers (JSON lines). A manager
//! that sends a build on to a builder node (`gantry.builder=true`) speaks
//! the same to that node's agent.

use base64::Engine;
use serde::{Deserialize, Serialize};

/// A line of a build's answer: the build's output as it comes, then how
/// it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildEvent {
    /// A line of the builder's output.
    Line(String),
    /// Built: from a manager, the image by digest in the cluster's
    /// registry (`MANAGER/REPOSITORY@sha256:...`); from a builder node,
    /// the manifest's digest in its image store (`sha256:...`).
    Done {
        /// The image.
        image: String,
    },
    /// The build failed; nothing was pushed.
    Failed {
        /// Why.
        message: String,
    },
}

/// The header that carries a build secret: `ID=BASE64`.
pub const BUILD_SECRET_HEADER: &str = "x-gantry-build-secret";

/// The label that makes a node a builder: builds sent to the cluster run
/// on such a node (up and active) rather than on the manager.
pub const BUILDER_LABEL: &str = "gantry.builder";

/// What to build: `POST /v1/builds?repo=&tag=[&dockerfile=&target=&arg=K=V&no_cache=true&cache_from=IMAGE]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildParams {
    /// The repository in the cluster's registry.
    pub repo: String,
    /// Its tag (`latest` when none is given).
    pub tag: String,
    /// The Dockerfile, a path inside the context.
    pub dockerfile: Option<String>,
    /// The stage to build.
    pub target: Option<String>,
    /// Build arguments, `KEY=VALUE`.
    pub args: Vec<String>,
    /// Build without the cache.
    pub no_cache: bool,
    /// Images whose recorded steps serve as cache.
    pub cache_from: Vec<String>,
}

impl BuildParams {
    /// The query string that carries these.
    pub fn to_query(&self) -> String {
        let mut q: Vec<(&str, &str)> = vec![("repo", &self.repo), ("tag", &self.tag)];
        if let Some(d) = &self.dockerfile {
            q.push(("dockerfile", d));
        }
        if let Some(t) = &self.target {
            q.push(("target", t));
        }
        for a in &self.args {
            q.push(("arg", a));
        }
        if self.no_cache {
            q.push(("no_cache", "true"));
        }
        for c in &self.cache_from {
            q.push(("cache_from", c));
        }
        serde_urlencoded::to_string(&q).unwrap_or_default()
    }

    /// Reads a query: unknown parameters, an argument without `=` and a
    /// Dockerfile outside the context are refused. The repository and
    /// tag are the registry's to check.
    pub fn parse(q: &str) -> Result<Self, String> {
        let mut r = BuildParams::default();
        for (k, v) in serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .map_err(|e| format!("query: {e}"))?
        {
            match k.as_str() {
                "repo" => r.repo = v,
                "tag" => r.tag = v,
                "dockerfile" => r.dockerfile = Some(v),
                "target" => r.target = Some(v),
                "arg" if v.contains('=') => r.args.push(v),
                "arg" => return Err(format!("build argument {v:?} is not KEY=VALUE")),
                "no_cache" => r.no_cache = v == "true",
                "cache_from" if !v.trim().is_empty() => r.cache_from.push(v),
                "cache_from" => return Err("an empty cache_from".into()),
                other => return Err(format!("unknown build parameter {other:?}")),
            }
        }
        if r.repo.is_empty() {
            return Err("a build names its repository (repo=)".into());
        }
        if r.tag.is_empty() {
            r.tag = "latest".into();
        }
        if let Some(d) = &r.dockerfile {
            if d.is_empty() || d.starts_with('/') || d.split('/').any(|p| p == "..") {
                return Err(format!(
                    "dockerfile {d:?} must be a path inside the context"
                ));
            }
        }
        Ok(r)
    }
}

/// The repository and tag an image name has in the cluster's registry:
/// its registry host (a first part with `.` or `:`, or `localhost`)
/// dropped, `latest` when it names no tag.
pub fn cluster_name(image: &str) -> (String, String) {
    let mut rest = image;
    if let Some((first, after)) = image.split_once('/') {
        if first.contains('.') || first.contains(':') || first == "localhost" {
            rest = after;
        }
    }
    let (repo, tag) = match rest.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (rest, "latest"),
    };
    (repo.to_owned(), tag.to_owned())
}

/// A build secret as its header carries it.
pub fn build_secret_header(id: &str, value: &[u8]) -> String {
    format!(
        "{id}={}",
        base64::engine::general_purpose::STANDARD.encode(value)
    )
}

/// A build secret from its header: its id (letters, digits, `-_.`) and
/// value.
pub fn parse_build_secret(v: &[u8]) -> Result<(String, zeroize::Zeroizing<Vec<u8>>), String> {
    let v = std::str::from_utf8(v).map_err(|_| "a build secret header is not text")?;
    let (id, b64) = v.split_once('=').ok_or("a build secret is ID=BASE64")?;
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!("invalid build secret id {id:?}"));
    }
    let value = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("build secret {id}: {e}"))?;
    Ok((id.to_owned(), zeroize::Zeroizing::new(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_round_trips_and_is_checked() {
        let r = BuildParams::parse(
            "repo=shop%2Fweb&tag=1.2&arg=A%3D1&arg=B%3Dx%3Dy&target=run&no_cache=true",
        )
        .unwrap();
        assert_eq!(r.repo, "shop/web");
        assert_eq!(r.tag, "1.2");
        assert_eq!(r.args, ["A=1", "B=x=y"]);
        assert_eq!(r.target.as_deref(), Some("run"));
        assert!(r.no_cache);
        assert_eq!(BuildParams::parse(&r.to_query()).unwrap(), r);
        let r = BuildParams::parse("repo=a&cache_from=shop%2Fweb%3A1&cache_from=b").unwrap();
        assert_eq!(r.cache_from, ["shop/web:1", "b"]);
        assert_eq!(BuildParams::parse(&r.to_query()).unwrap(), r);
        assert_eq!(BuildParams::parse("repo=a").unwrap().tag, "latest");
        for bad in [
            "repo=a&dockerfile=../Dockerfile",
            "repo=a&dockerfile=/etc/passwd",
            "repo=a&dockerfile=",
            "repo=a&what=1",
            "repo=a&arg=NOEQUALS",
            "repo=a&cache_from=",
            "tag=1",
        ] {
            assert!(BuildParams::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_round_trip_and_bad_ids_are_refused() {
        let h = build_secret_header("npm.token", b"s3cr=t\n");
        let (id, v) = parse_build_secret(h.as_bytes()).unwrap();
        assert_eq!((id.as_str(), v.as_slice()), ("npm.token", &b"s3cr=t\n"[..]));
        for bad in ["=AAAA", "a b=AAAA", "../x=AAAA", "id", "id=***"] {
            assert!(parse_build_secret(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
