//! A build sent over the network (compose `build:` through `gantry
//! deploy`), run where it arrives: on a manager, or on a builder node a
//! manager sent it on to. The context comes as a tar stream (the CLI
//! applied `.dockerignore`); it is kept whole in a private directory,
//! unpacked there, and built by `gantry image build` (this program, so
//! RUN steps run in its single-threaded helper), with the build's secrets
//! written 0600 for the build only. Its output goes out line by line.

use std::ffi::OsString;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};

/// Builds at once on one host (each takes the CPU it can).
static RUNNING: Semaphore = Semaphore::const_new(2);

/// Builds on one host running, waiting or receiving their context: one
/// more is refused, so that contexts arriving at once cannot fill the disk.
pub const QUEUE_LIMIT: usize = 6;
static QUEUED: Semaphore = Semaphore::const_new(QUEUE_LIMIT);

/// A context stops arriving when its disk has less free than this.
const DISK_RESERVE: u64 = 1 << 30;

/// Set in the environment of a build a node's agent runs: the build
/// reaches the cluster's registry with the node's identity.
pub const NODE_REGISTRY_ENV: &str = "GANTRY_NODE_REGISTRY";

/// The largest context accepted.
pub const CONTEXT_LIMIT: u64 = 8 << 30;

/// One build.
#[derive(Debug, Clone, Default)]
pub struct Job {
    /// This program.
    pub exe: PathBuf,
    /// The flags that come before `image build` (`--data-dir`,
    /// `--insecure-registry`).
    pub global: Vec<OsString>,
    /// Environment for the builder (`GANTRY_CONFIG_DIR`).
    pub env: Vec<(OsString, OsString)>,
    /// The name the image gets.
    pub image: String,
    /// Whether it is pushed to that name's registry once built.
    pub push: bool,
    /// The Dockerfile, a path inside the context.
    pub dockerfile: Option<String>,
    /// The stage to build.
    pub target: Option<String>,
    /// `KEY=VALUE` build arguments.
    pub args: Vec<String>,
    /// Build without the cache.
    pub no_cache: bool,
    /// Images whose recorded steps serve as cache.
    pub cache_from: Vec<String>,
}

impl Job {
    /// Receives `context` into `dir` (which the caller made private and
    /// removes afterwards), then builds it, sending every line of the
    /// builder's output to `out`. An error says why the build failed (its
    /// last line of output, when it ran); nothing is pushed then.
    pub async fn run<S, E>(
        &self,
        dir: &Path,
        context: S,
        secrets: &[(String, zeroize::Zeroizing<Vec<u8>>)],
        out: &mpsc::Sender<String>,
    ) -> Result<(), String>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let _queued = QUEUED.try_acquire().map_err(|_| {
            format!("this host has {QUEUE_LIMIT} builds under way or waiting: try again later")
        })?;
        // The context, whole, before anything runs.
        let tar = dir.join("context.tar");
        receive(context, &tar)
            .await
            .map_err(|e| format!("receiving the context: {e}"))?;
        let ctx = dir.join("context");
        {
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
            .map_err(|e| format!("unpacking the context: {e}"))?
            .map_err(|e| format!("unpacking the context: {e}"))?;
        }
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.args(&self.global)
            .args(["image", "build", "-t", &self.image]);
        if self.push {
            cmd.arg("--push");
        }
        if !secrets.is_empty() {
            let secret_dir = dir.join("secrets");
            std::fs::create_dir(&secret_dir).map_err(|e| format!("secrets: {e}"))?;
            for (i, (id, value)) in secrets.iter().enumerate() {
                let p = secret_dir.join(i.to_string());
                write_private(&p, value).map_err(|e| format!("secret {id}: {e}"))?;
                cmd.arg("--secret")
                    .arg(format!("id={id},src={}", p.display()));
            }
        }
        if let Some(d) = &self.dockerfile {
            cmd.arg("-f").arg(ctx.join(d));
        }
        if let Some(t) = &self.target {
            cmd.arg(format!("--target={t}"));
        }
        // `--flag=value`: a value that starts with `-` stays a value.
        for a in &self.args {
            cmd.arg(format!("--build-arg={a}"));
        }
        if self.no_cache {
            cmd.arg("--no-cache");
        }
        for c in &self.cache_from {
            cmd.arg(format!("--cache-from={c}"));
        }
        cmd.arg(&ctx)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("GANTRY_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let _turn = RUNNING.acquire().await.map_err(|_| "stopping".to_owned())?;
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting the builder: {e}"))?;
        let stdout = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
        let stderr = tokio::io::BufReader::new(child.stderr.take().expect("piped")).lines();
        let mut lines = futures::stream::select(stream_lines(stdout), stream_lines(stderr));
        let mut last = String::new();
        while let Some(l) = lines.next().await {
            if !l.trim().is_empty() {
                last.clone_from(&l);
            }
            // The client went away: the build stops (kill on drop).
            if out.send(l).await.is_err() {
                return Err("the client went away".into());
            }
        }
        let status = child
            .wait()
            .await
            .map_err(|e| format!("the builder: {e}"))?;
        if !status.success() {
            return Err(if last.is_empty() {
                format!("the build failed ({status})")
            } else {
                last
            });
        }
        Ok(())
    }
}

fn stream_lines<R: tokio::io::AsyncBufRead + Unpin + Send + 'static>(
    l: tokio::io::Lines<R>,
) -> impl Stream<Item = String> + Unpin + Send {
    Box::pin(futures::stream::unfold(l, |mut l| async move {
        match l.next_line().await {
            Ok(Some(s)) => Some((s, l)),
            _ => None,
        }
    }))
}

/// Streams `body` to `path` (up to [`CONTEXT_LIMIT`], and while its disk
/// keeps [`DISK_RESERVE`] free).
async fn receive<S, E>(mut body: S, path: &Path) -> std::io::Result<()>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Display,
{
    let f = tokio::fs::File::create(path).await?;
    let mut f = tokio::io::BufWriter::with_capacity(1 << 20, f);
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()))?;
        let before = n;
        n += chunk.len() as u64;
        if before >> 26 != n >> 26 || before == 0 {
            let free = nix::sys::statvfs::statvfs(path)
                .map(|s| s.blocks_available() * s.fragment_size())
                .map_err(std::io::Error::other)?;
            if free < DISK_RESERVE {
                return Err(std::io::Error::other(format!(
                    "the disk under {} has less than {} GiB free",
                    path.display(),
                    DISK_RESERVE >> 30
                )));
            }
        }
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

    /// Contexts that keep arriving hold their places; one build more is
    /// refused at once, before it receives anything.
    #[tokio::test]
    async fn builds_beyond_the_queue_are_refused_before_their_context() {
        let dir = tempfile::tempdir().unwrap();
        let (out, _rx) = mpsc::channel(16);
        let mut waiting = Vec::new();
        for i in 0..QUEUE_LIMIT {
            let d = dir.path().join(i.to_string());
            std::fs::create_dir(&d).unwrap();
            let out = out.clone();
            waiting.push(tokio::spawn(async move {
                let never = futures::stream::pending::<Result<Bytes, String>>();
                Job::default().run(&d, never, &[], &out).await
            }));
        }
        // Each has taken its place once its context file exists.
        for i in 0..QUEUE_LIMIT {
            let tar = dir.path().join(i.to_string()).join("context.tar");
            for _ in 0..100 {
                if tar.exists() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            assert!(tar.exists(), "build {i} is receiving");
        }
        let d = dir.path().join("extra");
        std::fs::create_dir(&d).unwrap();
        let one = futures::stream::iter([Ok::<_, String>(Bytes::from_static(b"x"))]);
        let e = Job::default().run(&d, one, &[], &out).await.unwrap_err();
        assert!(e.contains("builds under way or waiting"), "{e}");
        assert!(!d.join("context.tar").exists(), "nothing was received");
        for w in waiting {
            w.abort();
        }
    }
}
