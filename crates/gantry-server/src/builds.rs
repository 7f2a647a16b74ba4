//! Builds on the cluster (`gantry deploy` of a service with `build:`,
//! `POST /v1/builds`): the context comes as a tar stream (the CLI applied
//! `.dockerignore`), is unpacked in a private directory of this manager,
//! and built by `gantry image build --push` (the same binary, so RUN
//! steps run in its single-threaded helper) into the manager's host
//! store, pushed to the cluster's registry with the manager host's admin
//! credential. The answer streams the build's output as JSON lines and
//! ends with the image by digest, or why it failed; a failed build
//! pushes nothing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::Extension;
use base64::Engine;
use futures::StreamExt;
use gantry_api::BuildEvent;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};

use crate::api::{bad, Fail, Peer};
use crate::Shared;

/// Builds at once on one manager (each takes the CPU it can).
static RUNNING: Semaphore = Semaphore::const_new(2);

/// The largest context accepted.
const CONTEXT_LIMIT: u64 = 8 << 30;

/// What to build, from the query.
#[derive(Debug, Default)]
struct Request {
    repo: String,
    tag: String,
    dockerfile: Option<String>,
    target: Option<String>,
    args: Vec<String>,
    no_cache: bool,
}

fn parse_query(q: &str) -> Result<Request, Fail> {
    let mut r = Request::default();
    for (k, v) in serde_urlencoded::from_str::<Vec<(String, String)>>(q)
        .map_err(|e| bad(format!("query: {e}")))?
    {
        match k.as_str() {
            "repo" => r.repo = v,
            "tag" => r.tag = v,
            "dockerfile" => r.dockerfile = Some(v),
            "target" => r.target = Some(v),
            "arg" if v.contains('=') => r.args.push(v),
            "no_cache" => r.no_cache = v == "true",
            other => return Err(bad(format!("unknown build parameter {other:?}"))),
        }
    }
    crate::registry::check_name(&r.repo).map_err(bad)?;
    if r.tag.is_empty() {
        r.tag = "latest".into();
    }
    crate::registry::check_tag(&r.tag).map_err(bad)?;
    if let Some(d) = &r.dockerfile {
        if d.is_empty() || d.starts_with('/') || d.split('/').any(|p| p == "..") {
            return Err(bad(format!(
                "dockerfile {d:?} must be a path inside the context"
            )));
        }
    }
    Ok(r)
}

fn line(e: &BuildEvent) -> Bytes {
    crate::api::json_line(e)
}

/// `POST /v1/builds?repo=&tag=[&dockerfile=&target=&arg=K=V&no_cache=true]`.
pub(crate) async fn build(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Body, Fail> {
    peer.admin()?;
    let req = parse_query(query.as_deref().unwrap_or(""))?;
    let mut secrets = Vec::new();
    for v in headers.get_all(gantry_api::BUILD_SECRET_HEADER) {
        let v = v
            .to_str()
            .map_err(|_| bad("a build secret header is not text"))?;
        let (id, b64) = v
            .split_once('=')
            .ok_or_else(|| bad("a build secret is ID=BASE64"))?;
        let value = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| bad(format!("build secret {id}: {e}")))?;
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(bad(format!("invalid build secret id {id:?}")));
        }
        secrets.push((id.to_owned(), zeroize::Zeroizing::new(value)));
    }
    let dir = sh.cfg.data_dir.join("manager/builds").join(crate::new_id());
    crate::private_dir(&dir).map_err(|e| {
        Fail(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("build dir: {e}"),
        )
    })?;
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let ended = run(&sh, &dir, req, secrets, body, &tx).await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        let _ = tx.send(line(&ended)).await;
    });
    Ok(crate::api::lines(rx))
}

async fn run(
    sh: &Shared,
    dir: &Path,
    req: Request,
    secrets: Vec<(String, zeroize::Zeroizing<Vec<u8>>)>,
    body: Body,
    tx: &mpsc::Sender<Bytes>,
) -> BuildEvent {
    let failed = |message: String| BuildEvent::Failed { message };
    // The context, whole, before anything runs.
    let tar = dir.join("context.tar");
    if let Err(e) = receive(body, &tar).await {
        return failed(format!("receiving the context: {e}"));
    }
    let ctx = dir.join("context");
    let unpacked = {
        let (tar, ctx) = (tar.clone(), ctx.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&ctx)?;
            let mut a = tar::Archive::new(std::fs::File::open(&tar)?);
            a.set_preserve_permissions(true);
            a.set_overwrite(true);
            // Entries whose paths leave the folder are skipped by unpack.
            a.unpack(&ctx)?;
            std::fs::remove_file(&tar)
        })
        .await
    };
    match unpacked {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return failed(format!("unpacking the context: {e}")),
        Err(e) => return failed(format!("unpacking the context: {e}")),
    }
    let secret_dir = dir.join("secrets");
    let mut args: Vec<String> = Vec::new();
    if !secrets.is_empty() {
        if let Err(e) = crate::private_dir(&secret_dir) {
            return failed(format!("secrets: {e}"));
        }
    }
    for (i, (id, value)) in secrets.iter().enumerate() {
        let p = secret_dir.join(i.to_string());
        if let Err(e) = write_private(&p, value) {
            return failed(format!("secret {id}: {e}"));
        }
        args.extend(["--secret".into(), format!("id={id},src={}", p.display())]);
    }
    let image = format!("{}/{}:{}", sh.reach, req.repo, req.tag);
    let _turn = match RUNNING.acquire().await {
        Ok(t) => t,
        Err(_) => return failed("the manager is stopping".into()),
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return failed(format!("this program's path: {e}")),
    };
    let mut cmd = tokio::process::Command::new(exe);
    for r in &sh.cfg.insecure_registries {
        cmd.args(["--insecure-registry", r]);
    }
    cmd.arg("--data-dir")
        .arg(&sh.cfg.data_dir)
        .args(["image", "build", "--push", "-t", &image])
        .args(args);
    if let Some(d) = &req.dockerfile {
        cmd.arg("-f").arg(ctx.join(d));
    }
    if let Some(t) = &req.target {
        cmd.args(["--target", t]);
    }
    for a in &req.args {
        cmd.args(["--build-arg", a]);
    }
    if req.no_cache {
        cmd.arg("--no-cache");
    }
    let mut child = match cmd
        .arg(&ctx)
        .env("GANTRY_CONFIG_DIR", &sh.cfg.config_dir)
        .env_remove("GANTRY_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return failed(format!("starting the builder: {e}")),
    };
    let out = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    let err = tokio::io::BufReader::new(child.stderr.take().expect("piped")).lines();
    let mut lines = futures::stream::select(tokio_stream_lines(out), tokio_stream_lines(err));
    let mut last = String::new();
    while let Some(l) = lines.next().await {
        if !l.trim().is_empty() {
            last.clone_from(&l);
        }
        // The client went away: the build stops (kill on drop).
        if tx.send(line(&BuildEvent::Line(l))).await.is_err() {
            return failed("the client went away".into());
        }
    }
    let status = match child.wait().await {
        Ok(s) => s,
        Err(e) => return failed(format!("the builder: {e}")),
    };
    if !status.success() {
        return failed(if last.is_empty() {
            format!("the build failed ({status})")
        } else {
            last
        });
    }
    // Pushed: the tag names the digest once the push's write is applied
    // here too.
    for _ in 0..50 {
        let digest = sh.read(|s| {
            s.registry
                .get(&req.repo)
                .and_then(|r| r.tags.get(&req.tag).cloned())
        });
        if let Some(d) = digest {
            return BuildEvent::Done {
                image: format!("{}/{}@{d}", sh.reach, req.repo),
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    failed(format!(
        "built and pushed, but {image} is not in the registry's state"
    ))
}

fn tokio_stream_lines<R: tokio::io::AsyncBufRead + Unpin + Send + 'static>(
    l: tokio::io::Lines<R>,
) -> impl futures::Stream<Item = String> + Unpin + Send {
    Box::pin(futures::stream::unfold(l, |mut l| async move {
        match l.next_line().await {
            Ok(Some(s)) => Some((s, l)),
            _ => None,
        }
    }))
}

/// Streams the request body to `path` (up to [`CONTEXT_LIMIT`]).
async fn receive(body: Body, path: &PathBuf) -> std::io::Result<()> {
    let mut f = tokio::fs::File::create(path).await?;
    let mut stream = body.into_data_stream();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(std::io::Error::other)?;
        n += chunk.len() as u64;
        if n > CONTEXT_LIMIT {
            return Err(std::io::Error::other(format!(
                "the context is over {} GiB",
                CONTEXT_LIMIT >> 30
            )));
        }
        f.write_all(&chunk).await?;
    }
    f.flush().await
}

fn write_private(p: &Path, value: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(p)?;
    f.write_all(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_checked() {
        let r =
            parse_query("repo=shop%2Fweb&tag=1.2&arg=A%3D1&arg=B%3Dx%3Dy&target=run&no_cache=true")
                .ok()
                .unwrap();
        assert_eq!(r.repo, "shop/web");
        assert_eq!(r.tag, "1.2");
        assert_eq!(r.args, ["A=1", "B=x=y"]);
        assert_eq!(r.target.as_deref(), Some("run"));
        assert!(r.no_cache);
        assert_eq!(parse_query("repo=a").ok().unwrap().tag, "latest");
        for bad in [
            "repo=Shop",
            "repo=a&tag=.x",
            "repo=a&dockerfile=../Dockerfile",
            "repo=a&dockerfile=/etc/passwd",
            "repo=a&what=1",
            "tag=1",
        ] {
            assert!(parse_query(bad).is_err(), "{bad}");
        }
    }
}
