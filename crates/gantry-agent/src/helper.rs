//! The single-threaded runtime helper: `gantry agent-helper start|stop|rm|exec`,
//! and the agent's side of calling it.

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use gantry_runtime::{ContainerConfig, ExecOptions, Runtime};
use tokio::io::AsyncWriteExt;

/// What `agent-helper start` reads on stdin: the container, and the bytes
/// of its secrets and configs (which reach the helper only through the
/// pipe, and the container only through its tmpfs).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct StartRequest {
    pub(crate) config: ContainerConfig,
    #[serde(default)]
    pub(crate) files: Vec<gantry_api::TaskFile>,
}

/// The helper's entry point, called by the `gantry` binary before any
/// thread starts. Returns the process's exit code.
///
/// - `start`: a [`StartRequest`] (JSON) on stdin; creates and starts the
///   container; on failure removes what it made and prints why;
/// - `stop ID SECONDS`: the stop signal, SIGKILL after the grace;
/// - `rm ID`: removes the container, killing it if needed;
/// - `exec ID CMD...`: runs a command in it (health checks); its exit code;
/// - `run ID`: runs a created container attached, its output on ours (a
///   build's RUN step, for a builder that runs stages side by side); its
///   exit code, or a line starting with [`RUN_FAILED`] on stderr.
pub fn helper_main(data_dir: &Path, args: &[String]) -> i32 {
    let rt = match Runtime::new(data_dir) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return 125;
        }
    };
    let r = match args.first().map(String::as_str) {
        Some("start") => {
            let mut input = zeroize::Zeroizing::new(Vec::new());
            let _ = std::io::stdin().read_to_end(&mut input);
            match serde_json::from_slice::<StartRequest>(&input) {
                Err(e) => Err(format!("bad container config: {e}")),
                Ok(StartRequest { config: cfg, files }) => rt
                    .create_with_files(
                        &cfg,
                        &files
                            .iter()
                            .map(|f| gantry_runtime::FileContent {
                                destination: &f.target,
                                uid: f.uid,
                                gid: f.gid,
                                mode: f.mode,
                                data: &f.data.0,
                            })
                            .collect::<Vec<_>>(),
                    )
                    .and_then(|()| rt.start(&cfg.id))
                    .map(|_| ())
                    .map_err(|e| {
                        let _ = rt.remove(&cfg.id, true);
                        e.to_string()
                    }),
            }
        }
        Some("stop") if args.len() == 3 => {
            let secs = args[2].parse().unwrap_or(10);
            rt.stop(&args[1], Duration::from_secs(secs))
                .map_err(|e| e.to_string())
        }
        Some("rm") if args.len() == 2 => rt.remove(&args[1], true).map_err(|e| e.to_string()),
        Some("run") if args.len() == 2 => {
            return match rt.run_attached(&args[1]) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("{}{e}", gantry_image::build::RUN_FAILED);
                    125
                }
            };
        }
        Some("exec") if args.len() >= 3 => {
            let opts = ExecOptions {
                args: args[2..].to_vec(),
                env: Vec::new(),
                user: None,
                workdir: None,
                tty: false,
                stdin: false,
            };
            return match rt.exec(&args[1], &opts) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("{e}");
                    126
                }
            };
        }
        _ => Err(format!(
            "usage: agent-helper start|stop ID SECS|rm ID|exec ID CMD...|run ID; got {args:?}"
        )),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// Runs the helper; returns its exit code and what it printed on stderr.
pub(crate) async fn call(
    helper: &Path,
    data_dir: &Path,
    args: &[&str],
    stdin: Option<zeroize::Zeroizing<Vec<u8>>>,
    timeout: Duration,
) -> Result<(i32, String), String> {
    let mut cmd = tokio::process::Command::new(helper);
    cmd.arg("--data-dir")
        .arg(data_dir)
        .arg("agent-helper")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("run {}: {e}", helper.display()))?;
    if let (Some(input), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(&input)
            .await
            .map_err(|e| format!("helper stdin: {e}"))?;
        drop(w);
    }
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok((
            out.status.code().unwrap_or(128),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )),
        Ok(Err(e)) => Err(format!("helper: {e}")),
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}
