//! The agent's side of `gantry logs`: answers the manager's log
//! subscriptions with its tasks' lines (live containers' logs and those
//! kept after a task's container was removed), and keeps the logs of
//! ended tasks under a retention by age and size.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use gantry_api::{Client, LogFrame, LogSubscription};
use gantry_runtime::logs::{Cursor, LOG_FILE};
use gantry_runtime::Runtime;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::tasks::{SERVICE_LABEL, SLOT_LABEL, TASK_LABEL};

/// How long and how much of ended tasks' logs a node keeps.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Logs of tasks that ended longer ago are removed.
    pub max_age: Duration,
    /// The oldest are removed while all kept logs are bigger.
    pub max_size: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_size: 1 << 30,
        }
    }
}

/// Whose log a directory holds (`meta.json` of a kept log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Source {
    task: String,
    service: String,
    slot: u32,
}

fn kept_root(data_dir: &Path) -> PathBuf {
    data_dir.join("agent").join("logs")
}

fn source_of(labels: &BTreeMap<String, String>) -> Option<Source> {
    Some(Source {
        task: labels.get(TASK_LABEL)?.clone(),
        service: labels.get(SERVICE_LABEL)?.clone(),
        slot: labels
            .get(SLOT_LABEL)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
    })
}

/// Moves a task container's log files aside before the container is
/// removed, then applies the retention.
pub(crate) fn keep(rt: &Runtime, data_dir: &Path, cid: &str, r: Retention) -> io::Result<()> {
    let cfg = rt.config(cid).map_err(io::Error::other)?;
    let Some(src) = source_of(&cfg.labels) else {
        return Ok(());
    };
    let dest = kept_root(data_dir).join(&src.task);
    std::fs::create_dir_all(&dest)?;
    let from = rt.container_dir(cid);
    for e in std::fs::read_dir(&from)?.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with(LOG_FILE) {
            std::fs::rename(e.path(), dest.join(&name))?;
        }
    }
    std::fs::write(
        dest.join("meta.json"),
        serde_json::to_vec(&src).map_err(io::Error::other)?,
    )?;
    prune(&kept_root(data_dir), r);
    Ok(())
}

/// Removes kept logs older than the retention's age, then the oldest
/// while the rest are bigger than its size.
pub(crate) fn prune(root: &Path, r: Retention) {
    let now = SystemTime::now();
    let mut kept: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let dir = e.path();
        let Ok(meta) = std::fs::metadata(dir.join("meta.json")) else {
            continue;
        };
        let ended = meta.modified().unwrap_or(now);
        let size: u64 = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum();
        kept.push((ended, size, dir));
    }
    kept.sort();
    let mut total: u64 = kept.iter().map(|k| k.1).sum();
    for (ended, size, dir) in kept {
        let old = now.duration_since(ended).unwrap_or_default() > r.max_age;
        if old || total > r.max_size {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), "log retention: {e}");
            }
            total -= size;
        }
    }
}

/// Applies the retention now and every hour.
pub(crate) async fn retain(data_dir: PathBuf, r: Retention) {
    let root = kept_root(&data_dir);
    loop {
        let root = root.clone();
        let _ = tokio::task::spawn_blocking(move || prune(&root, r)).await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// Every log on the node a subscription asks for: live containers first,
/// then kept logs of tasks with no container left.
fn sources(rt: &Runtime, data_dir: &Path, sub: &LogSubscription) -> Vec<(Source, PathBuf)> {
    let wanted = |s: &Source| sub.services.contains(&s.service) || sub.tasks.contains(&s.task);
    let mut out: Vec<(Source, PathBuf)> = Vec::new();
    for c in rt.list() {
        if let Some(s) = source_of(&c.config.labels).filter(wanted) {
            out.push((s, rt.container_dir(&c.config.id)));
        }
    }
    for e in std::fs::read_dir(kept_root(data_dir))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(meta) = std::fs::read(e.path().join("meta.json")) else {
            continue;
        };
        let Ok(s) = serde_json::from_slice::<Source>(&meta) else {
            continue;
        };
        if wanted(&s) && !out.iter().any(|(o, _)| o.task == s.task) {
            out.push((s, e.path()));
        }
    }
    out
}

/// The client left.
struct Gone;

/// Frames batched into chunks of the answer's body.
struct Out {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
    sent: Instant,
}

impl Out {
    fn frame(&mut self, f: &LogFrame) -> Result<(), Gone> {
        serde_json::to_writer(&mut self.buf, f).map_err(|_| Gone)?;
        self.buf.push(b'\n');
        if self.buf.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(())
    }

    /// An encoded frame (with its newline).
    fn raw(&mut self, f: &[u8]) -> Result<(), Gone> {
        self.buf.extend_from_slice(f);
        if self.buf.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Gone> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.buf);
        self.tx.blocking_send(chunk).map_err(|_| Gone)?;
        self.sent = Instant::now();
        Ok(())
    }

    /// A blank line now and then, so that the manager notices a client
    /// that left even when there is nothing to send.
    fn keep_alive(&mut self) -> Result<(), Gone> {
        if self.buf.is_empty() && self.sent.elapsed() > Duration::from_secs(2) {
            self.buf.push(b'\n');
        }
        self.flush()
    }
}

/// A line of a container's log, as written (fields borrowed; the text
/// stays JSON, so it is copied out without unescaping).
#[derive(Deserialize)]
struct RawLine<'a> {
    #[serde(borrow)]
    log: &'a serde_json::value::RawValue,
    #[serde(borrow)]
    stream: &'a str,
    #[serde(borrow)]
    time: &'a str,
}

/// A line as Gantry's log writer writes it, `{"log":"..","stream":"..",
/// "time":".."}`, split without parsing: the text (still a JSON string),
/// the stream and the time. Inside a JSON string every quote is escaped,
/// so `","stream":"` can only be the field separator; anything else is
/// left to serde.
fn split_line(raw: &[u8]) -> Option<(&[u8], &str, &str)> {
    const LOG: &[u8] = b"{\"log\":";
    const STREAM: &[u8] = b",\"stream\":\"";
    const TIME: &[u8] = b"\",\"time\":\"";
    let body = raw.strip_prefix(LOG)?.strip_suffix(b"\"}\n")?;
    let s = memchr::memmem::rfind(body, STREAM)?;
    let (log, rest) = (&body[..s], &body[s + STREAM.len()..]);
    let t = memchr::memmem::find(rest, TIME)?;
    let stream = std::str::from_utf8(&rest[..t]).ok()?;
    let time = std::str::from_utf8(&rest[t + TIME.len()..]).ok()?;
    (log.len() >= 2 && log[0] == b'"' && !stream.contains('"') && !time.contains('"'))
        .then_some((log, stream, time))
}

/// RFC 3339 in UTC with nanoseconds, so that times compare as strings.
fn normal_time(t: &str) -> Option<String> {
    if t.len() == 30 && t.ends_with('Z') {
        return Some(t.to_owned());
    }
    let d = chrono::DateTime::parse_from_rfc3339(t).ok()?;
    Some(
        d.with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
    )
}

/// One task's log while answering.
struct Reading {
    /// `{"entry":{"node":..,"task":..,"service":..,"slot":N,` for its lines.
    prefix: Vec<u8>,
    task: String,
    cursor: Cursor,
    /// Lines read ahead, with their times: the last N with `--tail`,
    /// else one.
    ahead: VecDeque<(String, Vec<u8>)>,
}

/// The time window asked for, as comparable strings.
struct Window {
    since: Option<String>,
    until: Option<String>,
    tail: Option<usize>,
}

impl Window {
    fn of(sub: &LogSubscription) -> Self {
        let f = |t: &chrono::DateTime<chrono::Utc>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
        };
        Self {
            since: sub.query.since.as_ref().map(f),
            until: sub.query.until.as_ref().map(f),
            tail: sub.query.tail,
        }
    }

    fn holds(&self, t: &str) -> bool {
        self.since.as_deref().is_none_or(|s| t >= s) && self.until.as_deref().is_none_or(|u| t < u)
    }
}

impl Reading {
    fn new(node: &str, src: &Source, cursor: Cursor) -> Self {
        let mut prefix = b"{\"entry\":{\"node\":".to_vec();
        let _ = serde_json::to_writer(&mut prefix, node);
        prefix.extend_from_slice(b",\"task\":");
        let _ = serde_json::to_writer(&mut prefix, &src.task);
        prefix.extend_from_slice(b",\"service\":");
        let _ = serde_json::to_writer(&mut prefix, &src.service);
        prefix.extend_from_slice(format!(",\"slot\":{},", src.slot).as_bytes());
        Self {
            prefix,
            task: src.task.clone(),
            cursor,
            ahead: VecDeque::new(),
        }
    }

    fn open(node: &str, src: &Source, dir: &Path, w: &Window) -> io::Result<Self> {
        let mut r = Self::new(node, src, Cursor::open(dir)?);
        if let Some(n) = w.tail {
            while let Some(l) = r.next(w)? {
                if r.ahead.len() == n {
                    r.ahead.pop_front();
                }
                if n > 0 {
                    r.ahead.push_back(l);
                }
            }
        }
        Ok(r)
    }

    /// The next line in the window from the cursor, encoded as an entry
    /// frame, with its time.
    fn next(&mut self, w: &Window) -> io::Result<Option<(String, Vec<u8>)>> {
        while let Some(raw) = self.cursor.next_raw()? {
            let parsed;
            let (log, stream, time) = match split_line(raw) {
                Some(parts) => parts,
                None => {
                    let Ok(l) = serde_json::from_slice::<RawLine<'_>>(raw) else {
                        continue;
                    };
                    parsed = l;
                    (parsed.log.get().as_bytes(), parsed.stream, parsed.time)
                }
            };
            let Some(time) = normal_time(time) else {
                continue;
            };
            if !w.holds(&time) {
                continue;
            }
            let mut f = Vec::with_capacity(self.prefix.len() + raw.len() + 64);
            f.extend_from_slice(&self.prefix);
            f.extend_from_slice(b"\"time\":\"");
            f.extend_from_slice(time.as_bytes());
            f.extend_from_slice(b"\",\"stream\":");
            let _ = serde_json::to_writer(&mut f, stream);
            f.extend_from_slice(b",\"line\":");
            f.extend_from_slice(log);
            f.extend_from_slice(b"}}\n");
            return Ok(Some((time, f)));
        }
        Ok(None)
    }

    /// Reads the next line of the backlog ahead (from the cursor, when not
    /// tailing).
    fn fill(&mut self, w: &Window) -> io::Result<()> {
        if self.ahead.is_empty() && w.tail.is_none() {
            if let Some(l) = self.next(w)? {
                self.ahead.push_back(l);
            }
        }
        Ok(())
    }
}

/// Answers a subscription (in a blocking thread): the backlog of every
/// matching task merged in time order, `CaughtUp`, then, when following,
/// new lines of those tasks and of tasks that start later.
fn produce(
    rt: &Runtime,
    data_dir: &Path,
    node: &str,
    sub: &LogSubscription,
    out: &mut Out,
) -> Result<(), Gone> {
    let w = Window::of(sub);
    let mut reading: Vec<Reading> = Vec::new();
    for (src, dir) in sources(rt, data_dir, sub) {
        match Reading::open(node, &src, &dir, &w) {
            Ok(r) => reading.push(r),
            Err(e) => out.frame(&LogFrame::Warning(format!(
                "{node}: reading {}: {e}",
                dir.display()
            )))?,
        }
    }
    loop {
        for r in reading.iter_mut() {
            if let Err(e) = r.fill(&w) {
                tracing::warn!("log of task {}: {e}", r.task);
            }
        }
        // The task whose next line is the oldest.
        let best = reading
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.ahead.front().map(|(t, _)| (i, t)))
            .min_by(|a, b| a.1.cmp(b.1));
        let Some((b, _)) = best else { break };
        let (_, f) = reading[b].ahead.pop_front().expect("a line");
        out.raw(&f)?;
    }
    out.frame(&LogFrame::CaughtUp)?;
    out.flush()?;
    if !sub.query.follow {
        return Ok(());
    }
    let mut looked = Instant::now();
    loop {
        for r in reading.iter_mut() {
            loop {
                match r.next(&w) {
                    Ok(Some((_, f))) => out.raw(&f)?,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("log of task {}: {e}", r.task);
                        break;
                    }
                }
            }
        }
        out.keep_alive()?;
        if looked.elapsed() >= Duration::from_millis(500) {
            looked = Instant::now();
            for (src, dir) in sources(rt, data_dir, sub) {
                if reading.iter().any(|r| r.task == src.task) {
                    continue;
                }
                if let Ok(cursor) = Cursor::open(&dir) {
                    reading.push(Reading::new(node, &src, cursor));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Holds the subscription stream to the manager and answers each
/// subscription with a streamed `POST /v1/agent/logs/ID`.
pub(crate) async fn serve(rt: Arc<Runtime>, data_dir: PathBuf, node: String, client: Client) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let (rt2, d2, n2, c2) = (rt.clone(), data_dir.clone(), node.clone(), client.clone());
        let r = client
            .watch("/v1/agent/logs", move |sub: LogSubscription| {
                tokio::spawn(answer(rt2.clone(), d2.clone(), n2.clone(), c2.clone(), sub));
                true
            })
            .await;
        match r {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => tracing::debug!("log subscription stream: {e}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

async fn answer(
    rt: Arc<Runtime>,
    data_dir: PathBuf,
    node: String,
    client: Client,
    sub: LogSubscription,
) {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
    let path = format!("/v1/agent/logs/{}", sub.id);
    let id = sub.id;
    tokio::task::spawn_blocking(move || {
        let mut out = Out {
            tx,
            buf: Vec::new(),
            sent: Instant::now(),
        };
        if produce(&rt, &data_dir, &node, &sub, &mut out).is_ok() {
            let _ = out.flush();
        }
    });
    if let Err(e) = client.post_stream(&path, rx).await {
        tracing::debug!(subscription = id, "log answer: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(root: &Path, task: &str, bytes: usize, age: Duration) {
        let d = root.join(task);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(LOG_FILE), vec![b'x'; bytes]).unwrap();
        let m = d.join("meta.json");
        std::fs::write(&m, b"{}").unwrap();
        let t = SystemTime::now() - age;
        std::fs::File::options()
            .write(true)
            .open(&m)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn lines_split_as_serde_reads_them() {
        let w_dir = tempfile::tempdir().unwrap();
        let mut w = gantry_runtime::logs::LogWriter::open(w_dir.path(), 1 << 20, 1).unwrap();
        w.write(0, "plain\n".as_bytes()).unwrap();
        w.write(1, "quote \" and \\\",\"stream\":\"x\n".as_bytes())
            .unwrap();
        w.write(0, "ünïcode\ttab\n".as_bytes()).unwrap();
        let text = std::fs::read(w_dir.path().join(LOG_FILE)).unwrap();
        let mut n = 0;
        for line in text.split_inclusive(|b| *b == b'\n') {
            let (log, stream, time) = split_line(line).expect("splits");
            let l: RawLine<'_> = serde_json::from_slice(line).unwrap();
            assert_eq!(log, l.log.get().as_bytes());
            assert_eq!((stream, time), (l.stream, l.time));
            n += 1;
        }
        assert_eq!(n, 3);
        assert!(
            split_line(b"{\"log\":\"x\",\"stream\":\"stdout\",\"time\":\"t\",\"more\":1}\n")
                .is_none()
        );
    }

    #[test]
    fn retention_drops_old_then_oldest_over_size() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let hour = Duration::from_secs(3600);
        kept(root, "ancient", 10, hour * 24 * 30);
        kept(root, "a", 1000, hour * 3);
        kept(root, "b", 1000, hour * 2);
        kept(root, "c", 1000, hour);
        prune(
            root,
            Retention {
                max_age: hour * 24,
                max_size: 2100,
            },
        );
        let mut left: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["b", "c"]);
    }
}
