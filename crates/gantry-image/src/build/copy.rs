//! What COPY and ADD put into a layer: sources from the build context
//! (after `.dockerignore`, never outside it) or, for `COPY --from`, from a
//! stage's or an image's filesystem (resolved inside it, never outside).

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use globset::{Glob, GlobMatcher};
use sha2::{Digest as _, Sha256};

use super::BuildError;
use crate::store::Store;

/// A filesystem made of image layers, read-only, for `COPY --from`: the
/// layers mounted as one overlay (the one layer's directory when there is
/// only one), unmounted when dropped.
pub(super) struct RootView {
    dir: PathBuf,
    mounted: bool,
}

impl RootView {
    /// `layers` bottom first, as an image lists them.
    pub(super) fn open(store: &Store, layers: &[super::Layer]) -> Result<Self, String> {
        // Topmost first; a layer found again below counts once.
        let mut distinct: Vec<&crate::Digest> = Vec::new();
        for (d, _, _) in layers.iter().rev() {
            if !distinct.contains(&d) {
                distinct.push(d);
            }
        }
        match distinct[..] {
            [] => {
                let dir = store.temp_path("from");
                fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
                Ok(Self {
                    dir,
                    mounted: false,
                })
            }
            [d] => Ok(Self {
                dir: store.ensure_layer(d).map_err(|e| e.to_string())?,
                mounted: false,
            }),
            _ => {
                let mut lower = Vec::new();
                for d in &distinct {
                    lower.push(store.ensure_layer(d).map_err(|e| e.to_string())?);
                }
                let dir = store.temp_path("from");
                fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
                let opts = format!("lowerdir={}", gantry_runtime::overlay_lowerdirs(&lower));
                nix::mount::mount(
                    Some("overlay"),
                    &dir,
                    Some("overlay"),
                    nix::mount::MsFlags::MS_RDONLY
                        | nix::mount::MsFlags::MS_NODEV
                        | nix::mount::MsFlags::MS_NOSUID,
                    Some(opts.as_str()),
                )
                .map_err(|e| {
                    let _ = fs::remove_dir(&dir);
                    format!("mount the source's {} layers: {e}", layers.len())
                })?;
                Ok(Self { dir, mounted: true })
            }
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RootView {
    fn drop(&mut self) {
        if self.mounted {
            let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
            let _ = fs::remove_dir(&self.dir);
        } else if self
            .dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".from"))
        {
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

/// Files a COPY or ADD makes rather than finds: its here-documents (0644)
/// and, for ADD, what its URLs hold (0600, as Docker's), in a directory
/// of their own, removed when dropped.
pub(super) struct Made {
    dir: PathBuf,
    files: Vec<(String, PathBuf)>,
}

/// How long a URL may take to connect, and to send its whole content.
const CONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
const DOWNLOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(3600);

impl Made {
    pub(super) fn new(store: &Store) -> Self {
        Self {
            dir: store.temp_path("made"),
            files: Vec::new(),
        }
    }

    fn slot(&mut self, name: &str) -> Result<PathBuf, String> {
        let path = self.dir.join(self.files.len().to_string()).join(name);
        fs::create_dir_all(path.parent().unwrap_or(&self.dir)).map_err(|e| e.to_string())?;
        Ok(path)
    }

    /// `docs`: the source as written, the file's name and its content.
    pub(super) fn heredocs(&mut self, docs: &[(String, String, String)]) -> Result<(), String> {
        for (_, name, body) in docs {
            let path = self.slot(name)?;
            fs::write(&path, body).map_err(|e| format!("write {name}: {e}"))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
                .map_err(|e| e.to_string())?;
            self.files.push((name.clone(), path));
        }
        Ok(())
    }

    /// Downloads `url` (ADD), checked against `checksum` (`sha256:<hex>`)
    /// when given; the file is named after the URL's last path segment.
    pub(super) fn download(&mut self, url: &str, checksum: Option<&str>) -> Result<(), String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("ADD {url}: {e}"))?;
        let name = parsed
            .path_segments()
            .and_then(|mut s| s.rfind(|p| !p.is_empty()).map(str::to_owned))
            .filter(|n| n != ".." && n != ".")
            .unwrap_or_else(|| "index.html".into());
        let path = self.slot(&name)?;
        let fetch = {
            let path = path.clone();
            let url = url.to_owned();
            move || -> Result<String, String> {
                crate::install_crypto_provider();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async {
                    use futures::StreamExt;
                    use std::io::Write;
                    let client = reqwest::Client::builder()
                        .connect_timeout(CONNECT_WAIT)
                        .timeout(DOWNLOAD_WAIT)
                        .build()
                        .map_err(|e| e.to_string())?;
                    let resp = client
                        .get(&url)
                        .send()
                        .await
                        .map_err(|e| format!("ADD {url}: {e}"))?;
                    if !resp.status().is_success() {
                        return Err(format!("ADD {url}: the server answered {}", resp.status()));
                    }
                    let mut f = fs::File::create(&path).map_err(|e| e.to_string())?;
                    let mut h = Sha256::new();
                    let mut body = resp.bytes_stream();
                    while let Some(chunk) = body.next().await {
                        let chunk = chunk.map_err(|e| format!("ADD {url}: {e}"))?;
                        h.update(&chunk);
                        f.write_all(&chunk).map_err(|e| e.to_string())?;
                    }
                    f.sync_all().map_err(|e| e.to_string())?;
                    Ok(format!("sha256:{}", hex::encode(h.finalize())))
                })
            }
        };
        // Not on a thread that already drives a runtime.
        let got = std::thread::scope(|sc| sc.spawn(fetch).join())
            .map_err(|_| format!("ADD {url}: the download panicked"))??;
        if let Some(want) = checksum {
            if got != want {
                let _ = fs::remove_file(&path);
                return Err(format!(
                    "ADD {url}: the content's checksum is {got}, not {want}"
                ));
            }
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
        self.files.push((name, path));
        Ok(())
    }

    pub(super) fn files(&self) -> &[(String, PathBuf)] {
        &self.files
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Whether a source is a URL (ADD downloads it).
pub(super) fn is_url(src: &str) -> bool {
    src.starts_with("http://") || src.starts_with("https://")
}

/// The deepest symlinks a path may go through inside a root (Linux's).
const MAX_LINKS: usize = 40;

/// `path` resolved inside `root` as if `root` were `/`: `..` stops at the
/// root and a symlink (absolute or relative) is followed inside it, so
/// nothing outside the root is ever reached. The last component is
/// followed too (as BuildKit follows a COPY source).
pub(super) fn resolve_in_root(root: &Path, path: &str) -> Result<PathBuf, String> {
    let mut todo: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_owned)
        .rev()
        .collect();
    let mut at: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            at.pop();
            continue;
        }
        let here: PathBuf = at
            .iter()
            .fold(root.to_path_buf(), |p, c| p.join(c))
            .join(&c);
        match fs::symlink_metadata(&here) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(format!("{path}: too many levels of symbolic links"));
                }
                let target = fs::read_link(&here).map_err(|e| format!("{path}: {e}"))?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    at.clear();
                }
                todo.extend(
                    target
                        .split('/')
                        .filter(|c| !c.is_empty() && *c != ".")
                        .map(str::to_owned)
                        .rev(),
                );
            }
            Ok(_) => at.push(c),
            Err(_) => return Err(format!("COPY --from: {path} not found in the source")),
        }
    }
    Ok(at.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

/// COPY --from sources (with wildcards in their last component) as files
/// of `root`.
pub(super) fn sources_in_root(
    root: &Path,
    srcs: &[String],
) -> Result<Vec<(String, PathBuf)>, String> {
    let mut out = Vec::new();
    for src in srcs {
        let (dir, last) = match src.trim_end_matches('/').rsplit_once('/') {
            Some((d, l)) => (d.to_owned(), l.to_owned()),
            None => (String::new(), src.trim_end_matches('/').to_owned()),
        };
        if last.contains(['*', '?', '[']) {
            let base = resolve_in_root(root, &dir)?;
            let g = Glob::new(&last)
                .map_err(|e| format!("bad pattern {src:?}: {e}"))?
                .compile_matcher();
            let mut names: Vec<String> = fs::read_dir(&base)
                .map_err(|e| format!("COPY --from: {dir}: {e}"))?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| g.is_match(n))
                .collect();
            names.sort();
            if names.is_empty() {
                return Err(format!(
                    "COPY --from: no source files were specified by {src:?}"
                ));
            }
            for n in names {
                let full = resolve_in_root(root, &format!("{dir}/{n}"))?;
                out.push((n, full));
            }
        } else {
            let full = resolve_in_root(root, src)?;
            let name = if last.is_empty() {
                "/".to_owned()
            } else {
                last
            };
            out.push((name, full));
        }
    }
    Ok(out)
}

pub(super) fn hash_tree(
    h: &mut Sha256,
    rel: &str,
    full: &Path,
    ignore: &DockerIgnore,
) -> std::io::Result<()> {
    let md = fs::symlink_metadata(full)?;
    h.update(rel.as_bytes());
    h.update(format!("{:o}{}", md.mode(), md.len()).as_bytes());
    if md.is_dir() {
        let mut names: Vec<_> = fs::read_dir(full)?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for n in names {
            let child = join_rel(rel, &n.to_string_lossy());
            if !ignore.ignored(&child) {
                hash_tree(h, &child, &full.join(&n), ignore)?;
            }
        }
    } else if md.file_type().is_symlink() {
        h.update(fs::read_link(full)?.to_string_lossy().as_bytes());
    } else {
        let mut f = fs::File::open(full)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(())
}

/// `.dockerignore` patterns: Go's `filepath.Match` with `**`, later
/// patterns win, `!` re-includes; a pattern that matches a directory
/// excludes what is under it.
#[derive(Default)]
pub struct DockerIgnore {
    rules: Vec<(GlobMatcher, bool)>,
}

impl DockerIgnore {
    /// Reads `<context>/.dockerignore` (none: nothing ignored).
    pub fn load(context: &Path) -> Result<Self, BuildError> {
        let text = fs::read_to_string(context.join(".dockerignore")).unwrap_or_default();
        Self::parse(&text).map_err(|msg| BuildError::Step { line: 0, msg })
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for l in text.lines() {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (neg, pat) = match l.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, l),
            };
            let pat = pat
                .trim_start_matches("./")
                .trim_start_matches('/')
                .trim_end_matches('/');
            let g = globset::GlobBuilder::new(pat)
                .literal_separator(true)
                .build()
                .map_err(|e| format!(".dockerignore: bad pattern {l:?}: {e}"))?;
            rules.push((g.compile_matcher(), neg));
        }
        Ok(Self { rules })
    }

    /// Whether a context-relative path is excluded.
    pub fn ignored(&self, rel: &str) -> bool {
        let mut out = false;
        for (g, neg) in &self.rules {
            let mut p = Path::new(rel);
            let mut hit = false;
            loop {
                if g.is_match(p) {
                    hit = true;
                    break;
                }
                match p.parent() {
                    Some(q) if !q.as_os_str().is_empty() => p = q,
                    _ => break,
                }
            }
            if hit {
                out = !neg;
            }
        }
        out
    }
}

/// Expands COPY sources (with wildcards) to context files, refusing any that
/// leave the context and skipping ignored ones.
pub(super) fn resolve_sources(
    ctx: &Path,
    ignore: &DockerIgnore,
    srcs: &[String],
) -> Result<Vec<(String, PathBuf)>, String> {
    let mut out = Vec::new();
    for src in srcs {
        if is_url(src) {
            return Err(format!("COPY cannot take a URL ({src}): use ADD"));
        }
        let mut clean = PathBuf::new();
        for c in Path::new(src).components() {
            match c {
                std::path::Component::Normal(p) => clean.push(p),
                std::path::Component::ParentDir if !clean.pop() => {
                    return Err(format!("COPY source {src:?} is outside the build context"));
                }
                _ => {}
            }
        }
        let rel = clean.to_string_lossy().into_owned();
        let before = out.len();
        if rel.contains(['*', '?', '[']) {
            let g = Glob::new(&rel)
                .map_err(|e| format!("bad pattern {src:?}: {e}"))?
                .compile_matcher();
            let mut all = Vec::new();
            list_context(ctx, Path::new(""), &mut all);
            for f in all {
                if g.is_match(&f) && !ignore.ignored(&f) {
                    out.push((f.clone(), ctx.join(&f)));
                }
            }
        } else {
            let full = ctx.join(&clean);
            // A symlink in the context may not lead out of it.
            let real = fs::canonicalize(&full)
                .map_err(|_| format!("COPY failed: file not found in build context: {src}"))?;
            let real_ctx = fs::canonicalize(ctx).map_err(|e| e.to_string())?;
            if !real.starts_with(&real_ctx) {
                return Err(format!("COPY source {src:?} is outside the build context"));
            }
            if !rel.is_empty() && ignore.ignored(&rel) {
                return Err(format!("COPY failed: {src} is excluded by .dockerignore"));
            }
            out.push((rel, full));
        }
        if out.len() == before {
            return Err(format!(
                "COPY failed: no source files were specified by {src:?}"
            ));
        }
    }
    Ok(out)
}

pub(super) fn list_context(ctx: &Path, rel: &Path, out: &mut Vec<String>) {
    for e in fs::read_dir(ctx.join(rel)).into_iter().flatten().flatten() {
        let r = rel.join(e.file_name());
        out.push(r.to_string_lossy().into_owned());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            list_context(ctx, &r, out);
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn copy_into(
    layer: &Path,
    files: &[(String, PathBuf)],
    dest: &str,
    workdir: &str,
    owner: (u32, u32),
    mode: Option<u32>,
    add: bool,
    many: bool,
    ignore: &DockerIgnore,
) -> Result<Option<PathBuf>, String> {
    let dest_abs = if dest.starts_with('/') {
        dest.to_owned()
    } else {
        format!("{}/{dest}", workdir.trim_end_matches('/'))
    };
    let dest_is_dir = dest.ends_with('/') || many || dest == "." || dest.ends_with("/.");
    let dest_rel = safe_rel(&dest_abs)?;
    let io = |e: std::io::Error| format!("COPY to {dest}: {e}");
    for (rel, full) in files {
        let md = fs::metadata(full).map_err(io)?;
        if md.is_dir() {
            let target = layer.join(&dest_rel);
            mkdirs(layer, &dest_rel, owner).map_err(io)?;
            copy_dir(full, rel, &target, owner, mode, ignore).map_err(io)?;
        } else if add && is_archive(full) {
            mkdirs(layer, &dest_rel, owner).map_err(io)?;
            let f = fs::File::open(full).map_err(io)?;
            crate::unpack::unpack(f, &layer.join(&dest_rel))
                .map_err(|e| format!("ADD {rel}: {e}"))?;
        } else {
            let target_rel = if dest_is_dir || layer.join(&dest_rel).is_dir() {
                dest_rel.join(Path::new(rel).file_name().unwrap_or_default())
            } else {
                dest_rel.clone()
            };
            if let Some(parent) = target_rel.parent() {
                mkdirs(layer, parent, (0, 0)).map_err(io)?;
            }
            copy_file(full, &layer.join(&target_rel), owner, mode).map_err(io)?;
        }
    }
    Ok(None)
}

pub(super) fn safe_rel(abs: &str) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in Path::new(abs).components() {
        match c {
            std::path::Component::Normal(p) => out.push(p),
            std::path::Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    Ok(out)
}

pub(super) fn mkdirs(layer: &Path, rel: &Path, owner: (u32, u32)) -> std::io::Result<()> {
    let mut cur = layer.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        if !cur.exists() {
            fs::create_dir(&cur)?;
            fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))?;
            let _ = std::os::unix::fs::lchown(&cur, Some(owner.0), Some(owner.1));
        }
    }
    Ok(())
}

pub(super) fn copy_file(
    src: &Path,
    dst: &Path,
    owner: (u32, u32),
    mode: Option<u32>,
) -> std::io::Result<()> {
    let md = fs::symlink_metadata(src)?;
    if md.file_type().is_symlink() {
        let _ = fs::remove_file(dst);
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
    } else {
        fs::copy(src, dst)?;
        fs::set_permissions(
            dst,
            fs::Permissions::from_mode(mode.unwrap_or(md.mode() & 0o7777)),
        )?;
        let t = nix::sys::time::TimeSpec::new(md.mtime(), 0);
        let _ = nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            dst,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        );
    }
    let _ = std::os::unix::fs::lchown(dst, Some(owner.0), Some(owner.1));
    Ok(())
}

pub(super) fn join_rel(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_owned()
    } else {
        format!("{base}/{name}")
    }
}

/// Copies a context directory (at context path `rel`) into the layer,
/// leaving out what `.dockerignore` excludes.
pub(super) fn copy_dir(
    src: &Path,
    rel: &str,
    dst: &Path,
    owner: (u32, u32),
    mode: Option<u32>,
    ignore: &DockerIgnore,
) -> std::io::Result<()> {
    for e in fs::read_dir(src)? {
        let e = e?;
        let child_rel = join_rel(rel, &e.file_name().to_string_lossy());
        if ignore.ignored(&child_rel) {
            continue;
        }
        let s = e.path();
        let d = dst.join(e.file_name());
        if e.file_type()?.is_dir() {
            if !d.exists() {
                fs::create_dir(&d)?;
            }
            let m = e.metadata()?.mode() & 0o7777;
            fs::set_permissions(&d, fs::Permissions::from_mode(mode.unwrap_or(m)))?;
            let _ = std::os::unix::fs::lchown(&d, Some(owner.0), Some(owner.1));
            copy_dir(&s, &child_rel, &d, owner, mode, ignore)?;
        } else {
            copy_file(&s, &d, owner, mode)?;
        }
    }
    Ok(())
}

pub(super) fn is_archive(p: &Path) -> bool {
    let mut head = [0u8; 512];
    let Ok(mut f) = fs::File::open(p) else {
        return false;
    };
    let n = f.read(&mut head).unwrap_or(0);
    if n >= 4 && crate::unpack::sniff(&head[..n]) != crate::unpack::Compression::None {
        return true;
    }
    n >= 262 && &head[257..262] == b"ustar"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerignore_semantics() {
        let i = DockerIgnore::parse("# c\n*.log\nsecret/\n!keep.log\n**/tmp\n").unwrap();
        assert!(i.ignored("a.log"));
        assert!(!i.ignored("keep.log"));
        assert!(i.ignored("secret/x/y"));
        assert!(i.ignored("deep/er/tmp"));
        assert!(i.ignored("deep/er/tmp/file"));
        assert!(!i.ignored("dir/a.log"), "* does not cross /");
        assert!(!i.ignored("src/main.rs"));
    }

    #[test]
    fn sources_stay_in_context() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("a.txt"), "a").unwrap();
        fs::write(t.path().join("b.txt"), "b").unwrap();
        fs::write(t.path().join("c.log"), "c").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("out")).unwrap();
        let none = DockerIgnore::parse("").unwrap();
        let got = resolve_sources(t.path(), &none, &["*.txt".into()]).unwrap();
        let names: Vec<_> = got.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(names.len(), 2);
        assert!(resolve_sources(t.path(), &none, &["../x".into()])
            .unwrap_err()
            .contains("outside"));
        assert!(resolve_sources(t.path(), &none, &["out".into()])
            .unwrap_err()
            .contains("outside"));
        assert!(resolve_sources(t.path(), &none, &["missing".into()])
            .unwrap_err()
            .contains("not found"));
        let ign = DockerIgnore::parse("*.log").unwrap();
        assert!(resolve_sources(t.path(), &ign, &["c.log".into()])
            .unwrap_err()
            .contains(".dockerignore"));
    }

    #[test]
    fn sources_from_a_stage_stay_inside_it() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        fs::write(root.join("bin/busybox"), "bb").unwrap();
        fs::write(root.join("usr/lib/a.so"), "a").unwrap();
        fs::write(root.join("usr/lib/b.so"), "b").unwrap();
        fs::write(t.path().join("secret"), "host").unwrap();
        std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
        std::os::unix::fs::symlink("/usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("../../../secret", root.join("bin/up")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        // Relative and absolute links are followed inside the root.
        assert_eq!(
            resolve_in_root(&root, "/bin/sh").unwrap(),
            root.join("bin/busybox")
        );
        assert_eq!(
            resolve_in_root(&root, "lib/a.so").unwrap(),
            root.join("usr/lib/a.so")
        );
        // Nothing leads out: `..` stops at the root.
        assert!(resolve_in_root(&root, "/bin/up")
            .unwrap_err()
            .contains("not found"));
        assert!(resolve_in_root(&root, "../../secret")
            .unwrap_err()
            .contains("not found"));
        assert!(resolve_in_root(&root, "/loop")
            .unwrap_err()
            .contains("too many"));
        let got = sources_in_root(&root, &["/lib/*.so".into(), "/bin/sh".into()]).unwrap();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a.so", "b.so", "sh"]);
        assert!(sources_in_root(&root, &["/lib/*.txt".into()]).is_err());
    }
}
