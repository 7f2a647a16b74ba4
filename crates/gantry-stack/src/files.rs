//! Compose's secrets and configs: the top-level `secrets:` and `configs:`
//! (each from a `file`, an `environment` variable, inline `content` for a
//! config, or `external`), and a service's use of them in the short
//! (`- NAME`) and long (`source`, `target`, `uid`, `gid`, `mode`) syntax.
//! The parser records where a value comes from, never the value: the CLI
//! reads it when it deploys.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::*;
use gantry_spec::FileRef;

/// A secret or config the stack file declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDecl {
    /// Its `name:`: the name in the cluster instead of `STACK_KEY` (for
    /// an external one, the name it has there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where its value comes from.
    pub source: FileSource,
    /// Its labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `template_driver: golang`: a file template, filled for each task.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub template: bool,
}

/// Where a declared secret's or config's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileSource {
    /// A file (absolute, resolved against the stack file's folder).
    File(PathBuf),
    /// An environment variable of the deploying CLI (with `.env`).
    Environment(String),
    /// Inline text (configs).
    Content(String),
    /// One of the cluster's, made with `gantry secret create`: never
    /// made or changed by a deploy; it must exist.
    External,
}

impl FileDecl {
    /// Its name in the cluster when stack `stack` declares it as `key`.
    pub fn cluster_name(&self, stack: &str, key: &str) -> String {
        match (&self.name, &self.source) {
            (Some(n), _) => n.clone(),
            (None, FileSource::External) => key.to_owned(),
            (None, _) => format!("{stack}_{key}"),
        }
    }
}

/// The top-level `secrets:` or `configs:` (`kind` names which).
pub(crate) fn declared(
    ctx: &Ctx<'_>,
    kind: &str,
    top: BTreeMap<String, Option<raw::TopFile>>,
    paths: &ParseOptions,
) -> Result<BTreeMap<String, FileDecl>, StackError> {
    let mut out = BTreeMap::new();
    for (key, f) in top {
        let f = f.unwrap_or_default();
        let what = format!("{kind} {key}");
        let place = ctx.places.get(&format!("{kind}s.{key}")).cloned();
        let fail = |msg: String| -> StackError {
            match &place {
                Some(at) => ctx.err::<()>(at, msg).unwrap_err(),
                None => ctx.nowhere(msg),
            }
        };
        if !check::file_name(&key) {
            return Err(fail(format!(
                "{what}: invalid name: letters, digits, '_', '.' and '-', starting with a letter or digit"
            )));
        }
        let external = match f.external.as_ref().map(|e| &e.value) {
            Some(raw::External::Flag(b)) => *b,
            Some(raw::External::Named { .. }) => true,
            None => false,
        };
        let mut name = f.name.as_ref().map(|n| n.value.clone());
        if let Some(raw::External::Named { name: n }) = f.external.as_ref().map(|e| &e.value) {
            name = Some(n.clone());
        }
        if let Some(n) = &name {
            if !check::file_name(n) {
                return Err(fail(format!("{what}: invalid name {n:?}")));
            }
        }
        let content = f.content.as_ref().filter(|_| kind == "config");
        if let (Some(c), "secret") = (&f.content, kind) {
            return ctx.err(
                &c.referenced,
                format!("{what}: content is for configs; give a secret a file or an environment variable"),
            );
        }
        let sources = [
            f.file.is_some(),
            f.environment.is_some(),
            content.is_some(),
            external,
        ];
        let source = match sources.iter().filter(|s| **s).count() {
            0 => {
                return Err(fail(format!(
                    "{what}: give one of file, environment{}, external",
                    if kind == "config" { ", content" } else { "" }
                )))
            }
            1 => {
                if let Some(p) = &f.file {
                    FileSource::File(file_path(ctx, &what, p, paths)?)
                } else if let Some(e) = &f.environment {
                    FileSource::Environment(e.value.clone())
                } else if let Some(c) = content {
                    FileSource::Content(c.value.clone())
                } else {
                    FileSource::External
                }
            }
            _ => {
                return Err(fail(format!(
                    "{what}: give only one of file, environment{}, external",
                    if kind == "config" { ", content" } else { "" }
                )))
            }
        };
        let template = match &f.template_driver {
            None => false,
            Some(t) if t.value == "golang" && kind == "config" => true,
            Some(t) if kind == "config" => {
                return ctx.err(
                    &t.referenced,
                    format!(
                        "{what}: template_driver {:?} is not available: use golang",
                        t.value
                    ),
                )
            }
            Some(t) => {
                return ctx.err(
                    &t.referenced,
                    format!("{what}: templates are for configs; a secret's value is kept as given"),
                )
            }
        };
        if template && external {
            return Err(fail(format!(
                "{what}: an external config is the cluster's as it is; template_driver is for configs the stack makes"
            )));
        }
        if let (FileSource::Content(c), true) = (&source, template) {
            gantry_spec::template::check_file(c.as_bytes())
                .map_err(|e| fail(format!("{what}: template: {e}")))?;
        }
        out.insert(
            key,
            FileDecl {
                name,
                source,
                labels: crate::dict(f.labels, &|_| None),
                template,
            },
        );
    }
    Ok(out)
}

/// A path written in the stack file, on the deploying host: `~/` from the
/// home folder, relative from the stack file's folder; why not, else.
pub(crate) fn host_path(raw: &str, paths: &ParseOptions) -> Result<PathBuf, String> {
    if raw.is_empty() || raw.contains('\0') {
        return Err(format!("invalid path {raw:?}"));
    }
    if let Some(rest) = raw.strip_prefix("~/") {
        match &paths.home {
            Some(h) => Ok(h.join(rest)),
            None => Err(format!("{raw}: no home folder to resolve ~")),
        }
    } else if raw.starts_with('/') {
        Ok(PathBuf::from(raw))
    } else {
        match &paths.dir {
            Some(d) => Ok(d.join(raw)),
            None => Err(format!(
                "{raw} is relative, and the stack file's folder is not known"
            )),
        }
    }
}

fn file_path(
    ctx: &Ctx<'_>,
    what: &str,
    p: &Spanned<String>,
    paths: &ParseOptions,
) -> Result<PathBuf, StackError> {
    host_path(&p.value, paths).or_else(|why| ctx.err(&p.referenced, format!("{what}: file {why}")))
}

pub(crate) fn uses(
    ctx: &Ctx<'_>,
    service: &str,
    kind: &str,
    v: Spanned<Vec<Spanned<raw::FileUse>>>,
    declared: &BTreeMap<String, FileDecl>,
) -> Result<Vec<FileRef>, StackError> {
    let mut out: Vec<FileRef> = Vec::new();
    for u in v.value {
        let at = &u.referenced;
        let (source, target, uid, gid, mode) = match u.value {
            raw::FileUse::Short(s) => (s, None, None, None, None),
            raw::FileUse::Long(l) => (l.source, l.target, l.uid, l.gid, l.mode),
        };
        if !declared.contains_key(&source) {
            return ctx.err(
                at,
                format!("service {service} uses {kind} {source:?}, which the file does not declare under {kind}s:"),
            );
        }
        let id = |v: Option<raw::Scalar>, what: &str| -> Result<u32, StackError> {
            match v {
                None => Ok(0),
                Some(s) => s.text().trim().parse::<u32>().or_else(|_| {
                    ctx.err(
                        at,
                        format!(
                            "service {service}: {kind} {source}: {what} must be a number, not {:?}",
                            s.text()
                        ),
                    )
                }),
            }
        };
        let mode = match mode {
            None => 0o444,
            Some(raw::Scalar::Int(n)) if (0..=0o7777).contains(&n) => n as u32,
            Some(s) => {
                let t = s.text();
                let digits = t.strip_prefix("0o").unwrap_or(&t);
                match u32::from_str_radix(digits, 8) {
                    Ok(m) if m <= 0o7777 => m,
                    _ => {
                        return ctx.err(
                            at,
                            format!("service {service}: {kind} {source}: invalid mode {t:?}: octal permission bits, such as 0440"),
                        )
                    }
                }
            }
        };
        let target = target.unwrap_or_else(|| source.clone());
        let r = FileRef {
            uid: id(uid, "uid")?,
            gid: id(gid, "gid")?,
            mode,
            source,
            target,
            version: 0,
        };
        out.push(r);
    }
    Ok(out)
}

/// Renders a declaration back as compose (`stack config`).
pub(crate) fn render(d: &FileDecl) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    match &d.source {
        FileSource::File(p) => {
            o.insert("file".into(), p.display().to_string().into());
        }
        FileSource::Environment(e) => {
            o.insert("environment".into(), e.clone().into());
        }
        FileSource::Content(c) => {
            o.insert("content".into(), c.clone().into());
        }
        FileSource::External => {
            o.insert("external".into(), true.into());
        }
    }
    if let Some(n) = &d.name {
        o.insert("name".into(), n.clone().into());
    }
    if !d.labels.is_empty() {
        o.insert("labels".into(), serde_json::json!(d.labels));
    }
    if d.template {
        o.insert("template_driver".into(), "golang".into());
    }
    serde_json::Value::Object(o)
}

impl Stack {
    /// The stack as deployed as `stack`: each service's secrets and
    /// configs named by their names in the cluster, and what the deploy
    /// makes (kind, key, name), the external ones apart.
    pub fn resolve_files(&mut self, stack: &str) {
        let names = |decls: &BTreeMap<String, FileDecl>| -> BTreeMap<String, String> {
            decls
                .iter()
                .map(|(k, d)| (k.clone(), d.cluster_name(stack, k)))
                .collect()
        };
        let (secrets, configs) = (names(&self.secrets), names(&self.configs));
        for s in self.services.values_mut() {
            for f in &mut s.secrets {
                if let Some(n) = secrets.get(&f.source) {
                    f.source = n.clone();
                }
            }
            for f in &mut s.configs {
                if let Some(n) = configs.get(&f.source) {
                    f.source = n.clone();
                }
            }
            for b in s
                .volumes
                .iter_mut()
                .filter_map(|m| m.volume.backup.as_mut())
            {
                for name in std::iter::once(&mut b.key).chain(b.credentials.as_mut()) {
                    if let Some(n) = secrets.get(name) {
                        *name = n.clone();
                    }
                }
            }
        }
    }
}
