//! `gantry logs` and `gantry service logs`: a local container's log, or
//! every replica of a service (or one task) on every node of the cluster,
//! merged in time order by the manager.

use std::io::Write;

use clap::Args;
use gantry_api::{ApiError, LogQuery};

use crate::output::Format;
use crate::Ctx;

#[derive(Args)]
pub(crate) struct LogsArgs {
    /// Follow new output (and, for a service, replicas that start later).
    #[arg(short, long)]
    pub(crate) follow: bool,
    /// Lines from the end of each task's log (a number or "all").
    #[arg(short = 'n', long, default_value = "all")]
    pub(crate) tail: String,
    /// Only lines since this time (RFC 3339) or this long ago (10m).
    #[arg(long)]
    pub(crate) since: Option<String>,
    /// Only lines before this time (RFC 3339) or this long ago (10m).
    #[arg(long)]
    pub(crate) until: Option<String>,
    /// Show timestamps.
    #[arg(short, long)]
    pub(crate) timestamps: bool,
    /// Leave task ids out of the prefix.
    #[arg(long)]
    pub(crate) no_task_ids: bool,
    /// Full task ids.
    #[arg(long)]
    pub(crate) no_trunc: bool,
    /// Output: plain lines, or one JSON object a line.
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: Format,
    /// A service, a task or a container.
    pub(crate) target: String,
}

/// A point in time, as the API takes it.
pub(crate) type Time = chrono::DateTime<chrono::Utc>;

impl LogsArgs {
    pub(crate) fn tail(&self) -> anyhow::Result<Option<usize>> {
        match self.tail.as_str() {
            "all" | "-1" => Ok(None),
            n => n
                .parse()
                .map(Some)
                .map_err(|_| anyhow::anyhow!("invalid --tail {n:?}: a number or all")),
        }
    }

    pub(crate) fn window(&self) -> anyhow::Result<(Option<Time>, Option<Time>)> {
        let t = |s: &Option<String>, what: &str| {
            s.as_deref()
                .map(|s| crate::cluster::time_arg(s, what))
                .transpose()
        };
        Ok((t(&self.since, "--since")?, t(&self.until, "--until")?))
    }
}

/// `gantry logs`: a container on this host if there is one of that name,
/// else a service or task of the cluster.
pub(crate) fn logs(ctx: &Ctx, a: LogsArgs) -> anyhow::Result<u8> {
    let local = ctx.runtime().ok().and_then(|rt| rt.find(&a.target).ok());
    if local.is_some() || !gantry_api::AdminConfig::path_in(&ctx.config_dir).exists() {
        return crate::containers::logs(ctx, &a);
    }
    cluster_logs(ctx, &a, true)
}

/// `gantry service logs`.
pub(crate) fn service_logs(ctx: &Ctx, a: LogsArgs) -> anyhow::Result<u8> {
    cluster_logs(ctx, &a, false)
}

fn cluster_logs(ctx: &Ctx, a: &LogsArgs, or_task: bool) -> anyhow::Result<u8> {
    let c = crate::cluster::client(ctx)?;
    let (since, until) = a.window()?;
    let mut q = LogQuery {
        service: Some(a.target.clone()),
        task: None,
        tail: a.tail()?,
        since,
        until,
        follow: a.follow,
    };
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, std::io::stdout().lock());
    let mut err = std::io::stderr().lock();
    let mut failed: Option<anyhow::Error> = None;
    let mut print = |lines: &[u8]| -> bool {
        let r = (|| -> anyhow::Result<()> {
            for l in lines.split(|b| *b == b'\n') {
                if l.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match serde_json::from_slice::<RawFrame<'_>>(l)? {
                    RawFrame::Entry(raw) => {
                        if a.format == Format::Json {
                            out.write_all(raw.get().as_bytes())?;
                            out.write_all(b"\n")?;
                            continue;
                        }
                        let e: EntryRef<'_> = serde_json::from_str(raw.get())?;
                        if e.stream == "stderr" {
                            out.flush()?;
                            write_entry(&mut err, &e, a)?;
                        } else {
                            write_entry(&mut out, &e, a)?;
                        }
                    }
                    RawFrame::Warning(w) => {
                        out.flush()?;
                        writeln!(err, "warning: {w}")?;
                    }
                    RawFrame::CaughtUp => {}
                }
            }
            Ok(out.flush()?)
        })();
        match r {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    };
    let first = crate::images::block_on(c.watch_raw(&path(&q)?, &mut print))?;
    match first {
        Err(ApiError::Status { status: 404, .. }) if or_task => {
            q.service = None;
            q.task = Some(a.target.clone());
            match crate::images::block_on(c.watch_raw(&path(&q)?, &mut print))? {
                Err(ApiError::Status { status: 404, .. }) => {
                    anyhow::bail!("no such service, task or container: {}", a.target)
                }
                r => r?,
            }
        }
        r => r?,
    }
    match failed {
        // A closed pipe (`| head`) ends the command quietly.
        Some(e)
            if e.downcast_ref::<std::io::Error>()
                .is_none_or(|io| io.kind() != std::io::ErrorKind::BrokenPipe) =>
        {
            Err(e)
        }
        _ => Ok(0),
    }
}

fn path(q: &LogQuery) -> anyhow::Result<String> {
    let mut p = vec![];
    if let Some(s) = &q.service {
        p.push(("service", s.clone()));
    }
    if let Some(t) = &q.task {
        p.push(("task", t.clone()));
    }
    if let Some(n) = q.tail {
        p.push(("tail", n.to_string()));
    }
    let time =
        |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    if let Some(t) = &q.since {
        p.push(("since", time(t)));
    }
    if let Some(t) = &q.until {
        p.push(("until", time(t)));
    }
    p.push(("follow", q.follow.to_string()));
    Ok(format!("/v1/logs?{}", serde_urlencoded::to_string(p)?))
}

/// A frame as the manager sends it, borrowed.
#[derive(serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawFrame<'a> {
    Entry(#[serde(borrow)] &'a serde_json::value::RawValue),
    CaughtUp,
    Warning(String),
}

/// A [`gantry_api::LogEntry`], borrowed.
#[derive(serde::Deserialize)]
struct EntryRef<'a> {
    time: &'a str,
    node: &'a str,
    task: &'a str,
    service: &'a str,
    slot: u32,
    stream: &'a str,
    #[serde(borrow)]
    line: std::borrow::Cow<'a, str>,
}

fn write_entry(w: &mut impl Write, e: &EntryRef<'_>, a: &LogsArgs) -> std::io::Result<()> {
    if a.timestamps {
        write!(w, "{} ", e.time)?;
    }
    let id = if a.no_trunc {
        e.task
    } else {
        &e.task[..e.task.len().min(12)]
    };
    if a.no_task_ids {
        write!(w, "{}.{}@{}    | ", e.service, e.slot, e.node)?;
    } else {
        write!(w, "{}.{}.{}@{}    | ", e.service, e.slot, id, e.node)?;
    }
    w.write_all(e.line.as_bytes())?;
    if !e.line.ends_with('\n') {
        w.write_all(b"\n")?;
    }
    Ok(())
}
