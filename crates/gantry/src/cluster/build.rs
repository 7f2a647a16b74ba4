//! `gantry deploy` of services with `build:`: each context is packed
//! (after `.dockerignore`, as `docker build` sends it), sent to the
//! manager, built there and pushed to the cluster's registry; the
//! service then deploys the image by digest. The builds' output streams
//! here; the first that fails stops the deploy before anything changes.

use gantry_api::{BuildEvent, Client};
use gantry_stack::{Build, FileSource, Stack};
use std::collections::BTreeMap;

/// The repository and tag a service's image is pushed as: its `image:`
/// without the registry (`shop/web:1.2`), or `STACK-SERVICE:latest` when
/// it names none.
pub(crate) fn target(stack: &str, service: &str, image: &str) -> anyhow::Result<(String, String)> {
    if image == service {
        return Ok((
            format!("{stack}-{service}").to_ascii_lowercase(),
            "latest".into(),
        ));
    }
    if image.contains('@') {
        anyhow::bail!(
            "service {service}: image {image} names a digest; a built image is named by a tag"
        );
    }
    Ok(gantry_api::cluster_name(image))
}

/// Packs a context as a tar file: every file `.dockerignore` keeps, and
/// always the Dockerfile and `.dockerignore` itself.
fn pack(b: &Build, out: &std::fs::File) -> anyhow::Result<u64> {
    let ignore = gantry_image::build::DockerIgnore::load(&b.context)
        .map_err(|e| anyhow::anyhow!("{}: {e}", b.context.display()))?;
    let dockerfile = b.dockerfile.clone().unwrap_or_else(|| "Dockerfile".into());
    let mut tar = tar::Builder::new(std::io::BufWriter::new(out));
    tar.follow_symlinks(false);
    let mut files = 0u64;
    let mut stack = vec![b.context.clone()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for e in entries {
            let path = e.path();
            let rel = path
                .strip_prefix(&b.context)?
                .to_string_lossy()
                .into_owned();
            let kept = rel == dockerfile || rel == ".dockerignore" || !ignore.ignored(&rel);
            let ft = e.file_type()?;
            if ft.is_dir() {
                // An ignored folder may hold an exception: look inside.
                if kept {
                    tar.append_dir(&rel, &path)?;
                }
                stack.push(path);
            } else if kept {
                tar.append_path_with_name(&path, &rel)?;
                files += 1;
            }
        }
    }
    tar.into_inner()?;
    Ok(files)
}

fn secret_value(
    id: &str,
    src: &FileSource,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<Vec<u8>> {
    match src {
        FileSource::File(p) => {
            std::fs::read(p).map_err(|e| anyhow::anyhow!("build secret {id}: {}: {e}", p.display()))
        }
        FileSource::Environment(v) => env
            .get(v)
            .map(|s| s.as_bytes().to_vec())
            .ok_or_else(|| anyhow::anyhow!("build secret {id}: variable {v} is not set")),
        _ => anyhow::bail!("build secret {id}: not from a file or a variable"),
    }
}

/// Builds every service of the stack that has `build:`, in start order,
/// and points each at the image it pushed (by digest).
pub(crate) fn build_all(
    c: &Client,
    stack_name: &str,
    stack: &mut Stack,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let order: Vec<String> = stack
        .start_order
        .iter()
        .filter(|n| stack.builds.contains_key(*n))
        .cloned()
        .collect();
    for name in order {
        let mut b = stack.builds[&name].clone();
        let image = stack.services[&name].image.clone();
        let (repo, tag) = target(stack_name, &name, &image)?;
        // `cache_from` naming the service's own image: as it is pushed.
        for c in &mut b.cache_from {
            if *c == image {
                *c = format!("{repo}:{tag}");
            }
        }
        let built = build_one(c, &name, &b, &repo, &tag, env)
            .map_err(|e| anyhow::anyhow!("service {name}: {e}; nothing was deployed"))?;
        eprintln!("Built service {name}: {built}");
        if let Some(s) = stack.services.get_mut(&name) {
            s.image = built;
        }
    }
    Ok(())
}

fn build_one(
    c: &Client,
    name: &str,
    b: &Build,
    repo: &str,
    tag: &str,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<String> {
    if !b.context.is_dir() {
        anyhow::bail!("build context {} is not a folder", b.context.display());
    }
    let file = tempfile::tempfile()?;
    let n = pack(b, &file)?;
    let len = file.metadata()?.len();
    eprintln!(
        "Building service {name}: {n} files ({}) from {}",
        crate::output::size(len),
        b.context.display()
    );
    let query = gantry_api::BuildParams {
        repo: repo.to_owned(),
        tag: tag.to_owned(),
        dockerfile: b.dockerfile.clone(),
        target: b.target.clone(),
        args: b.args.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        no_cache: b.no_cache,
        cache_from: b.cache_from.clone(),
    }
    .to_query();
    let mut headers = reqwest::header::HeaderMap::new();
    for (id, src) in &b.secrets {
        let v = zeroize::Zeroizing::new(secret_value(id, src, env)?);
        headers.append(
            gantry_api::BUILD_SECRET_HEADER,
            reqwest::header::HeaderValue::from_str(&gantry_api::build_secret_header(id, &v))?,
        );
    }
    let file = tokio::fs::File::from_std(file);
    let mut outcome: Option<BuildEvent> = None;
    let prefix = format!("[{name}] ");
    super::call(async {
        use std::io::SeekFrom;
        use tokio::io::AsyncSeekExt;
        let mut file = file;
        file.seek(SeekFrom::Start(0))
            .await
            .map_err(|e| gantry_api::ApiError::Other(e.to_string()))?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        c.post_lines(&format!("/v1/builds?{query}"), headers, body, |lines| {
            for l in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                match serde_json::from_slice::<BuildEvent>(l) {
                    Ok(BuildEvent::Line(t)) => {
                        eprintln!("{prefix}{}", crate::output::printable(&t))
                    }
                    Ok(e) => outcome = Some(e),
                    Err(_) => {}
                }
            }
            true
        })
        .await
    })?;
    match outcome {
        Some(BuildEvent::Done { image }) => Ok(image),
        Some(BuildEvent::Failed { message }) => anyhow::bail!("the build failed: {message}"),
        _ => anyhow::bail!("the manager's answer ended before the build did"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_images_are_pushed_under_their_image_name_or_the_stacks() {
        let t = |i: &str| target("shop", "web", i).unwrap();
        assert_eq!(t("web"), ("shop-web".into(), "latest".into()));
        assert_eq!(t("acme/web:1.2"), ("acme/web".into(), "1.2".into()));
        assert_eq!(t("ghcr.io/acme/web"), ("acme/web".into(), "latest".into()));
        assert_eq!(t("localhost:5000/web:2"), ("web".into(), "2".into()));
        assert!(target("shop", "web", "web@sha256:00").is_err());
    }
}
