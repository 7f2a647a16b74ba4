//! A service's `build:` (pure): what `gantry deploy` builds on the
//! cluster before it deploys. The short form is the context; the long
//! form's `context`, `dockerfile`, `args`, `target`, `secrets` and
//! `no_cache` are honoured; `keys.rs` classes the others.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::files::{FileDecl, FileSource};
use crate::raw::{self, ListOrDict};
use crate::{Ctx, ParseOptions, StackError};

/// What to build for a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    /// The context directory, absolute.
    pub context: PathBuf,
    /// The Dockerfile, relative to the context (none: `Dockerfile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// `--build-arg`s.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    /// The stage to build (`--target`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Secrets its `RUN --mount=type=secret,id=ID` steps read: the id (the
    /// key of a top-level secret) and where its value comes from.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, FileSource>,
    /// Build every step again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_cache: bool,
    /// Images whose recorded steps serve as cache (`cache_from`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_from: Vec<String>,
}

/// A `cache_from` entry (or `--cache-from` value): an image reference,
/// or BuildKit's `type=registry,ref=IMAGE`; other cache types are refused.
pub fn cache_source(v: &str) -> Result<String, String> {
    let v = v.trim();
    if !v.contains('=') {
        if v.is_empty() {
            return Err("an empty cache source".into());
        }
        return Ok(v.to_owned());
    }
    let mut kind = None;
    let mut reference = None;
    for part in v.split(',') {
        match part.split_once('=') {
            Some(("type", t)) => kind = Some(t),
            Some(("ref", r)) if !r.is_empty() => reference = Some(r),
            _ => {
                return Err(format!(
                    "cache source {v:?}: only type=registry,ref=IMAGE or an image name"
                ))
            }
        }
    }
    match (kind, reference) {
        (None | Some("registry"), Some(r)) => Ok(r.to_owned()),
        (Some(t), _) if t != "registry" => Err(format!(
            "cache source {v:?}: type={t} is not supported (only images: type=registry,ref=IMAGE)"
        )),
        _ => Err(format!("cache source {v:?} names no image (ref=)")),
    }
}

/// `build:` as written: a context, or the long form.
#[derive(Debug, Clone)]
pub(crate) enum RawBuild {
    Context(String),
    Long(LongBuild),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct LongBuild {
    pub(crate) context: Option<String>,
    pub(crate) dockerfile: Option<String>,
    pub(crate) args: Option<ListOrDict>,
    pub(crate) target: Option<String>,
    pub(crate) secrets: Option<Vec<raw::FileUse>>,
    pub(crate) no_cache: Option<bool>,
    pub(crate) cache_from: Option<Vec<String>>,
}

impl<'de> Deserialize<'de> for RawBuild {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, MapAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawBuild;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a context path, or a mapping with context, dockerfile, args...")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawBuild, E> {
                Ok(RawBuild::Context(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawBuild, A::Error> {
                LongBuild::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawBuild::Long)
            }
        }
        d.deserialize_any(V)
    }
}

/// Turns a service's `build:` into a [`Build`].
pub(crate) fn build(
    ctx: &Ctx<'_>,
    service: &str,
    b: Spanned<RawBuild>,
    secrets: &BTreeMap<String, FileDecl>,
    paths: &ParseOptions,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Build, StackError> {
    let at = b.referenced;
    let long = match b.value {
        RawBuild::Context(c) => LongBuild {
            context: Some(c),
            ..LongBuild::default()
        },
        RawBuild::Long(l) => l,
    };
    let raw = long.context.unwrap_or_else(|| ".".into());
    if raw.contains("://") || raw.starts_with("git@") {
        return ctx.err(
            &at,
            format!("service {service}: build context {raw}: only a local folder is supported (not a Git or HTTP URL)"),
        );
    }
    let context = crate::files::host_path(&raw, paths)
        .or_else(|why| ctx.err(&at, format!("service {service}: build context {why}")))?;
    // `./app/.` is `./app`.
    let context: PathBuf = context.components().collect();
    if let Some(d) = &long.dockerfile {
        if d.is_empty() || d.starts_with('/') || d.split('/').any(|p| p == "..") {
            return ctx.err(
                &at,
                format!(
                    "service {service}: build dockerfile {d:?} must be a path inside the context"
                ),
            );
        }
    }
    let mut secret_ids = BTreeMap::new();
    for u in long.secrets.unwrap_or_default() {
        let id = match u {
            raw::FileUse::Short(s) => s,
            raw::FileUse::Long(l) => l.source,
        };
        let Some(decl) = secrets.get(&id) else {
            return ctx.err(
                &at,
                format!("service {service}: build secret {id} is not declared under the top-level secrets key"),
            );
        };
        if matches!(decl.source, FileSource::External | FileSource::Content(_)) {
            return ctx.err(
                &at,
                format!("service {service}: build secret {id} must come from a file or an environment variable (its value is read where gantry deploy runs)"),
            );
        }
        secret_ids.insert(id, decl.source.clone());
    }
    let cache_from = long
        .cache_from
        .unwrap_or_default()
        .iter()
        .map(|v| cache_source(v))
        .collect::<Result<Vec<_>, _>>()
        .or_else(|why| ctx.err(&at, format!("service {service}: build {why}")))?;
    Ok(Build {
        cache_from,
        context,
        dockerfile: long.dockerfile,
        args: crate::dict(long.args, lookup),
        target: long.target.filter(|t| !t.is_empty()),
        secrets: secret_ids,
        no_cache: long.no_cache.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::cache_source;

    #[test]
    fn cache_sources_are_images_or_registry_refs() {
        assert_eq!(cache_source("shop/web:1").unwrap(), "shop/web:1");
        assert_eq!(
            cache_source("type=registry,ref=reg.io/a:b").unwrap(),
            "reg.io/a:b"
        );
        assert_eq!(cache_source("ref=a").unwrap(), "a");
        for (bad, says) in [
            ("type=gha", "type=gha is not supported"),
            ("type=local,src=/tmp/x", "only type=registry"),
            ("type=registry", "names no image"),
            ("type=registry,ref=", "only type=registry"),
            ("", "empty"),
        ] {
            let e = cache_source(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
