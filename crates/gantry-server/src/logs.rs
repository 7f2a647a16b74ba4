//! The log broker, as Swarm's: a client's `GET /v1/logs` becomes a
//! subscription sent to every connected agent on its `GET /v1/agent/logs`
//! stream; each agent answers with a streamed `POST /v1/agent/logs/ID`
//! (its lines in time order, `CaughtUp`, then new lines when following),
//! and the manager merges the nodes' streams in time order for the client.
//! Nothing is buffered beyond a few chunks a node: a slow client slows the
//! agents down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::Extension;
use futures::{FutureExt, StreamExt};
use gantry_api::{LogFrame, LogQuery, LogSubscription};
use tokio::sync::mpsc;

use crate::api::{Fail, Peer};
use crate::Shared;

type Sh = State<Arc<Shared>>;

/// How long a node may take to start answering before the client is told
/// its logs are missing.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// An open follow: what it asked, and where a newly connected node's
/// stream goes.
type Following = (
    LogSubscription,
    mpsc::UnboundedSender<mpsc::Receiver<Frame>>,
);

#[derive(Default)]
pub(crate) struct Broker {
    /// Each connected agent's subscription stream, by node id.
    agents: Mutex<HashMap<String, mpsc::Sender<LogSubscription>>>,
    /// Open subscriptions: for each node that has not yet posted its
    /// answer, where its frames go.
    subs: Mutex<HashMap<u64, HashMap<String, mpsc::Sender<Frame>>>>,
    /// Subscriptions that follow: an agent that connects while one is open
    /// is asked too (a node that joined, or an agent that restarted), and
    /// its stream handed to the merge.
    following: Mutex<HashMap<u64, Following>>,
    next: AtomicU64,
}

/// A frame from an agent, passed on as it came: only an entry's time is
/// read (the merge needs it).
struct Frame {
    kind: Kind,
    raw: Bytes,
}

enum Kind {
    /// An entry, with its time (RFC 3339, UTC, nanoseconds: the agent
    /// writes them so, and they compare as strings).
    Entry(Box<str>),
    CaughtUp,
    Warning,
}

/// The head of an agent's frame, borrowed.
#[derive(serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Head<'a> {
    Entry(#[serde(borrow)] EntryTime<'a>),
    CaughtUp,
    Warning(#[allow(dead_code)] serde::de::IgnoredAny),
}

#[derive(serde::Deserialize)]
struct EntryTime<'a> {
    #[serde(borrow)]
    time: &'a str,
}

/// `GET /v1/agent/logs`: the agent's subscription stream.
pub(crate) async fn agent_stream(
    State(sh): Sh,
    Extension(peer): Extension<Peer>,
) -> Result<Body, Fail> {
    let id = peer.node()?;
    let (sub_tx, mut sub_rx) = mpsc::channel::<LogSubscription>(16);
    sh.logs
        .agents
        .lock()
        .expect("logs lock")
        .insert(id.clone(), sub_tx.clone());
    // Open follows take this node in from now on: what it writes from now
    // (lines from before could repeat what an earlier connection sent).
    let open: Vec<(
        LogSubscription,
        mpsc::UnboundedSender<mpsc::Receiver<Frame>>,
    )> = sh
        .logs
        .following
        .lock()
        .expect("logs lock")
        .values()
        .cloned()
        .collect();
    for (mut sub, add) in open {
        let (tx, rx) = mpsc::channel::<Frame>(256);
        sh.logs
            .subs
            .lock()
            .expect("logs lock")
            .entry(sub.id)
            .or_default()
            .insert(id.clone(), tx);
        if add.send(rx).is_ok() {
            sub.query.tail = None;
            sub.query.since = Some(chrono::Utc::now());
            let _ = sub_tx.try_send(sub);
        }
    }
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let sh2 = sh.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                s = sub_rx.recv() => match s {
                    Some(s) => if tx.send(crate::api::json_line(&s)).await.is_err() { break },
                    None => break,
                },
                _ = tokio::time::sleep(Duration::from_secs(2)) => {
                    if tx.send(Bytes::from_static(b"\n")).await.is_err() {
                        break;
                    }
                }
            }
        }
        let mut agents = sh2.logs.agents.lock().expect("logs lock");
        if agents.get(&id).is_some_and(|t| t.same_channel(&sub_tx)) {
            agents.remove(&id);
        }
    });
    Ok(crate::api::lines(rx))
}

/// `POST /v1/agent/logs/ID`: an agent's answer, JSON lines of `LogFrame`
/// (blank lines keep it alive and let it notice a client that left).
pub(crate) async fn agent_answer(
    State(sh): Sh,
    Extension(peer): Extension<Peer>,
    Path(id): Path<u64>,
    req: Body,
) -> Result<(), Fail> {
    let node = peer.node()?;
    let tx = {
        let mut subs = sh.logs.subs.lock().expect("logs lock");
        subs.get_mut(&id).and_then(|s| s.remove(&node))
    };
    let Some(tx) = tx else {
        return Err(Fail(
            axum::http::StatusCode::GONE,
            format!("no log subscription {id} for this node"),
        ));
    };
    let mut stream = req.into_data_stream();
    // A line begun in an earlier chunk.
    let mut partial: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', &chunk) {
            // Whole lines within the chunk travel on as slices of it.
            let line = if partial.is_empty() {
                chunk.slice(start..=nl)
            } else {
                partial.extend_from_slice(&chunk[start..=nl]);
                Bytes::from(std::mem::take(&mut partial))
            };
            start = nl + 1;
            if line.len() == 1 {
                if tx.is_closed() {
                    return Err(Fail(axum::http::StatusCode::GONE, "client left".into()));
                }
                continue;
            }
            let frame = Frame {
                kind: kind_of(&line[..line.len() - 1])?,
                raw: line,
            };
            if tx.send(frame).await.is_err() {
                return Err(Fail(axum::http::StatusCode::GONE, "client left".into()));
            }
        }
        partial.extend_from_slice(&chunk[start..]);
    }
    Ok(())
}

/// What a frame is, and an entry's time. The agent writes an entry as
/// `{"entry":{"node":..,"task":..,"service":..,"slot":N,"time":"T",...`,
/// so its time is found without parsing the line; anything else is parsed.
fn kind_of(l: &[u8]) -> Result<Kind, Fail> {
    const ENTRY: &[u8] = b"{\"entry\":{";
    const TIME: &[u8] = b"\"time\":\"";
    if l.starts_with(ENTRY) {
        if let Some(i) = memchr::memmem::find(l, TIME) {
            let t = &l[i + TIME.len()..];
            if let Some(end) = memchr::memchr(b'"', t) {
                if let Ok(t) = std::str::from_utf8(&t[..end]) {
                    return Ok(Kind::Entry(t.into()));
                }
            }
        }
    }
    let head: Head<'_> = serde_json::from_slice(l).map_err(|e| {
        Fail(
            axum::http::StatusCode::BAD_REQUEST,
            format!("bad log frame: {e}"),
        )
    })?;
    Ok(match head {
        Head::Entry(e) => Kind::Entry(e.time.into()),
        Head::CaughtUp => Kind::CaughtUp,
        Head::Warning(_) => Kind::Warning,
    })
}

/// `GET /v1/logs`: the logs of a service's or a task's every replica on
/// every node, merged in time order, as JSON lines of `LogFrame`.
pub(crate) async fn logs(
    State(sh): Sh,
    Extension(peer): Extension<Peer>,
    Query(q): Query<LogQuery>,
) -> Result<Body, Fail> {
    peer.admin()?;
    let (services, tasks, with_tasks) = sh.read(|s| {
        let (services, tasks): (Vec<String>, Vec<String>) = match (&q.service, &q.task) {
            (Some(name), None) => {
                let found: Vec<String> = crate::edge::resolve(s, name)
                    .into_iter()
                    .map(|r| r.name.clone())
                    .collect();
                if found.is_empty() {
                    return Err(crate::api::not_found(format!("no such service: {name}")));
                }
                (found, Vec::new())
            }
            (None, Some(t)) => {
                let found: Vec<&String> = s
                    .tasks
                    .keys()
                    .filter(|k| k.starts_with(t.as_str()))
                    .collect();
                match found.as_slice() {
                    [one] => (Vec::new(), vec![(*one).clone()]),
                    [] => return Err(crate::api::not_found(format!("no such task: {t}"))),
                    _ => return Err(crate::api::bad(format!("task id prefix {t} is ambiguous"))),
                }
            }
            _ => return Err(crate::api::bad("give a service or a task")),
        };
        // Nodes that ran some of them, to warn about when not connected.
        let with_tasks: Vec<(String, String)> = s
            .tasks
            .values()
            .filter(|t| services.contains(&t.service) || tasks.contains(&t.id))
            .filter_map(|t| t.node.clone())
            .filter_map(|n| s.nodes.get(&n).map(|r| (n, r.hostname.clone())))
            .collect();
        Ok((services, tasks, with_tasks))
    })?;
    let id = sh.logs.next.fetch_add(1, Ordering::Relaxed);
    let sub = LogSubscription {
        id,
        services,
        tasks,
        query: q.clone(),
    };
    let agents: Vec<(String, mpsc::Sender<LogSubscription>)> = sh
        .logs
        .agents
        .lock()
        .expect("logs lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut warnings: Vec<String> = Vec::new();
    for (node, host) in &with_tasks {
        if !agents.iter().any(|(n, _)| n == node) {
            let w = format!("node {host} is not connected: its logs are missing");
            if !warnings.contains(&w) {
                warnings.push(w);
            }
        }
    }
    let mut streams = Vec::new();
    {
        let mut subs = sh.logs.subs.lock().expect("logs lock");
        let entry = subs.entry(id).or_default();
        for (node, _) in &agents {
            let (tx, rx) = mpsc::channel::<Frame>(256);
            entry.insert(node.clone(), tx);
            streams.push((node.clone(), rx));
        }
    }
    for (node, agent) in &agents {
        if agent.send(sub.clone()).await.is_err() {
            sh.logs.drop_node(id, node);
        }
    }
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let sh2 = sh.clone();
    let (add_tx, add_rx) = mpsc::unbounded_channel();
    if q.follow {
        sh.logs
            .following
            .lock()
            .expect("logs lock")
            .insert(id, (sub.clone(), add_tx));
    }
    tokio::spawn(async move {
        for w in warnings {
            if tx
                .send(crate::api::json_line(&LogFrame::Warning(w)))
                .await
                .is_err()
            {
                return;
            }
        }
        merge(streams, add_rx, &tx, q.follow).await;
        sh2.logs.following.lock().expect("logs lock").remove(&id);
        sh2.logs.subs.lock().expect("logs lock").remove(&id);
    });
    Ok(crate::api::lines(rx))
}

impl Broker {
    fn drop_node(&self, id: u64, node: &str) {
        if let Some(s) = self.subs.lock().expect("logs lock").get_mut(&id) {
            s.remove(node);
        }
    }
}

/// One node's stream while merging.
struct Source {
    node: String,
    rx: mpsc::Receiver<Frame>,
    head: Option<(Box<str>, Bytes)>,
    caught_up: bool,
    done: bool,
    started: bool,
}

/// Frames to the client, batched while more are at hand.
struct Out<'a> {
    tx: &'a mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

/// The client left.
struct Gone;

impl Out<'_> {
    async fn frame(&mut self, f: &LogFrame) -> Result<(), Gone> {
        self.raw(&crate::api::json_line(f)).await
    }

    async fn raw(&mut self, f: &[u8]) -> Result<(), Gone> {
        self.buf.extend_from_slice(f);
        if self.buf.len() >= 64 * 1024 {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends what is batched (before waiting for more).
    async fn flush(&mut self) -> Result<(), Gone> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let b = Bytes::from(std::mem::take(&mut self.buf));
        self.tx.send(b).await.map_err(|_| Gone)
    }
}

/// The next frame of one node: at once when there is one, else after
/// sending what is batched.
async fn next_frame(s: &mut Source, out: &mut Out<'_>) -> Result<Result<Option<Frame>, ()>, Gone> {
    match s.rx.try_recv() {
        Ok(f) => return Ok(Ok(Some(f))),
        Err(mpsc::error::TryRecvError::Disconnected) => return Ok(Ok(None)),
        Err(mpsc::error::TryRecvError::Empty) => {}
    }
    out.flush().await?;
    // Keep the client's stream alive while a node is slow to start.
    let mut waited = Duration::ZERO;
    let tick = Duration::from_secs(2);
    loop {
        match tokio::time::timeout(tick, s.rx.recv()).await {
            Ok(f) => return Ok(Ok(f)),
            Err(_) => {
                waited += tick;
                if !s.started && waited >= ANSWER_WITHIN {
                    return Ok(Err(()));
                }
                out.tx
                    .send(Bytes::from_static(b"\n"))
                    .await
                    .map_err(|_| Gone)?;
            }
        }
    }
}

/// Sends the nodes' lines to the client: first every node's backlog in
/// time order (each node sends its own in order, so the smallest head is
/// next), then, when following, new lines as they come.
async fn merge(
    streams: Vec<(String, mpsc::Receiver<Frame>)>,
    added: mpsc::UnboundedReceiver<mpsc::Receiver<Frame>>,
    tx: &mpsc::Sender<Bytes>,
    follow: bool,
) {
    let mut out = Out {
        tx,
        buf: Vec::new(),
    };
    let _ = merge_into(streams, added, &mut out, follow).await;
}

fn frames(rx: mpsc::Receiver<Frame>) -> futures::stream::BoxStream<'static, Frame> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) }).boxed()
}

async fn merge_into(
    streams: Vec<(String, mpsc::Receiver<Frame>)>,
    mut added: mpsc::UnboundedReceiver<mpsc::Receiver<Frame>>,
    out: &mut Out<'_>,
    follow: bool,
) -> Result<(), Gone> {
    let mut srcs: Vec<Source> = streams
        .into_iter()
        .map(|(node, rx)| Source {
            node,
            rx,
            head: None,
            caught_up: false,
            done: false,
            started: false,
        })
        .collect();
    loop {
        for s in srcs.iter_mut() {
            while s.head.is_none() && !s.caught_up && !s.done {
                match next_frame(s, out).await? {
                    Ok(Some(Frame {
                        kind: Kind::Entry(t),
                        raw,
                    })) => s.head = Some((t, raw)),
                    Ok(Some(Frame {
                        kind: Kind::CaughtUp,
                        ..
                    })) => s.caught_up = true,
                    Ok(Some(Frame {
                        kind: Kind::Warning,
                        raw,
                    })) => out.raw(&raw).await?,
                    Ok(None) => s.done = true,
                    Err(()) => {
                        s.done = true;
                        let w = LogFrame::Warning(format!(
                            "node {} did not answer within {}s: its logs are missing",
                            s.node,
                            ANSWER_WITHIN.as_secs()
                        ));
                        out.frame(&w).await?;
                    }
                }
                s.started = true;
            }
        }
        let mut next: Option<usize> = None;
        for (i, s) in srcs.iter().enumerate() {
            if let Some((t, _)) = &s.head {
                if next.is_none_or(|n| srcs[n].head.as_ref().is_some_and(|(b, _)| t < b)) {
                    next = Some(i);
                }
            }
        }
        match next {
            Some(i) => {
                let (_, raw) = srcs[i].head.take().expect("a head");
                out.raw(&raw).await?;
            }
            None => break,
        }
    }
    if !follow {
        return out.flush().await;
    }
    out.frame(&LogFrame::CaughtUp).await?;
    let mut live =
        futures::stream::select_all(srcs.into_iter().filter(|s| !s.done).map(|s| frames(s.rx)));
    let mut adding = true;
    loop {
        let f = match live.next().now_or_never() {
            Some(Some(f)) => Some(f),
            // Nothing at hand (or no node left): send what is batched and
            // wait for a frame, a node that connects, or the keep-alive.
            _ => {
                out.flush().await?;
                let none_left = live.is_empty();
                tokio::select! {
                    f = live.next(), if !none_left => f,
                    rx = added.recv(), if adding => {
                        match rx {
                            Some(rx) => live.push(frames(rx)),
                            None => adding = false,
                        }
                        continue;
                    }
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {
                        out.tx.send(Bytes::from_static(b"\n")).await.map_err(|_| Gone)?;
                        continue;
                    }
                }
            }
        };
        match f {
            Some(Frame {
                kind: Kind::CaughtUp,
                ..
            }) => {}
            Some(f) => out.raw(&f.raw).await?,
            // Every node's stream ended: keep waiting for one to connect.
            None => {}
        }
    }
}
