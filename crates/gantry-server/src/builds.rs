//! Builds on the cluster (`gantry deploy` of a service with `build:`,
//! `POST /v1/builds`). The context comes as a tar stream (the CLI applied
//! `.dockerignore`), and the build runs:
//! - on a builder node (labelled `gantry.builder=true`, up and active)
//!   when there is one: the manager sends the request on to that node's
//!   agent (its peer port, the cluster's mutual TLS), which builds into
//!   its own image store; the manager then copies the image's blobs from
//!   the node, by digest and checked, into the cluster's registry and
//!   records its manifest at the leader, as a push would;
//! - else on this manager: `gantry image build --push` into the manager's
//!   host store, pushed with the manager host's admin credential.
//!
//! The answer streams the build's output as JSON lines and ends with the
//! image by digest, or why it failed; a failed build pushes nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::Extension;
use futures::StreamExt;
use gantry_api::{BuildEvent, BuildParams};
use gantry_store::{NodeRecord, State as ClusterState};
use sha2::Digest as _;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::api::{bad, Fail, Peer};
use crate::Shared;

type Secrets = Vec<(String, Zeroizing<Vec<u8>>)>;

fn line(e: &BuildEvent) -> Bytes {
    crate::api::json_line(e)
}

/// Builds this manager sent to each node and not yet ended.
static SENT: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

/// A builder node to send a build to: one labelled
/// [`gantry_api::BUILDER_LABEL`]`=true`, up, active and serving its peer
/// port, with the fewest builds from this manager under way (then by id).
fn pick_builder<'a>(s: &'a ClusterState, busy: &HashMap<String, u32>) -> Option<&'a NodeRecord> {
    s.nodes
        .values()
        .filter(|n| {
            n.labels.get(gantry_api::BUILDER_LABEL).map(String::as_str) == Some("true")
                && n.up
                && n.availability == gantry_sched::Availability::Active
                && n.peer_port.is_some()
                && n.addr.parse::<std::net::IpAddr>().is_ok()
        })
        .min_by_key(|n| (busy.get(&n.id).copied().unwrap_or(0), n.id.clone()))
}

/// Counts a build sent to a node while it lasts.
struct Sent(String);

impl Sent {
    fn new(node: &str) -> Self {
        *SENT
            .lock()
            .expect("builds lock")
            .get_or_insert_with(HashMap::new)
            .entry(node.to_owned())
            .or_default() += 1;
        Sent(node.to_owned())
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        if let Some(m) = SENT.lock().expect("builds lock").as_mut() {
            if let Some(n) = m.get_mut(&self.0) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.0);
                }
            }
        }
    }
}

/// `POST /v1/builds?repo=&tag=[&dockerfile=&target=&arg=K=V&no_cache=true&cache_from=IMAGE]`:
/// see [`BuildParams`].
pub(crate) async fn build(
    State(sh): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Body, Fail> {
    peer.admin()?;
    let mut params = BuildParams::parse(query.as_deref().unwrap_or("")).map_err(bad)?;
    crate::registry::check_name(&params.repo).map_err(bad)?;
    crate::registry::check_tag(&params.tag).map_err(bad)?;
    // A cache source the cluster's registry holds is read from it; the
    // image being built, before its first push, is no source.
    params.cache_from.retain_mut(|c| {
        if c.contains('@') {
            return true;
        }
        let (repo, tag) = gantry_api::cluster_name(c);
        if sh.read(|s| {
            s.registry
                .get(&repo)
                .is_some_and(|r| r.tags.contains_key(&tag))
        }) {
            *c = format!("{}/{repo}:{tag}", sh.reach);
            true
        } else {
            repo != params.repo || tag != params.tag
        }
    });
    let mut secrets = Vec::new();
    for v in headers.get_all(gantry_api::BUILD_SECRET_HEADER) {
        secrets.push(gantry_api::parse_build_secret(v.as_bytes()).map_err(bad)?);
    }
    let builder = {
        let sent = SENT.lock().expect("builds lock");
        let empty = HashMap::new();
        let busy = sent.as_ref().unwrap_or(&empty);
        sh.read(|s| pick_builder(s, busy).cloned())
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    match builder {
        Some(node) => {
            let sent = Sent::new(&node.id);
            tokio::spawn(async move {
                let ended = on_node(&sh, &peer, &node, &params, &secrets, body, &tx).await;
                drop(sent);
                let _ = tx.send(line(&ended)).await;
            });
        }
        None => {
            let dir = sh.cfg.data_dir.join("manager/builds").join(crate::new_id());
            crate::private_dir(&dir).map_err(|e| {
                Fail(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    format!("build dir: {e}"),
                )
            })?;
            tokio::spawn(async move {
                let ended = here(&sh, &dir, &params, &secrets, body, &tx).await;
                let _ = tokio::fs::remove_dir_all(&dir).await;
                let _ = tx.send(line(&ended)).await;
            });
        }
    }
    Ok(crate::api::lines(rx))
}

/// Sends each line of output on as a [`BuildEvent::Line`]; ends when the
/// build's output does or the client goes.
fn relay(tx: &mpsc::Sender<Bytes>) -> (mpsc::Sender<String>, tokio::task::JoinHandle<()>) {
    let (out, mut lines) = mpsc::channel::<String>(64);
    let tx = tx.clone();
    let task = tokio::spawn(async move {
        while let Some(l) = lines.recv().await {
            if tx.send(line(&BuildEvent::Line(l))).await.is_err() {
                return;
            }
        }
    });
    (out, task)
}

/// Builds on this manager and pushes to the cluster's registry.
async fn here(
    sh: &Shared,
    dir: &std::path::Path,
    params: &BuildParams,
    secrets: &Secrets,
    body: Body,
    tx: &mpsc::Sender<Bytes>,
) -> BuildEvent {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            return BuildEvent::Failed {
                message: format!("this program's path: {e}"),
            }
        }
    };
    let mut global: Vec<std::ffi::OsString> = Vec::new();
    for r in &sh.cfg.insecure_registries {
        global.extend(["--insecure-registry".into(), r.into()]);
    }
    global.extend(["--data-dir".into(), sh.cfg.data_dir.clone().into()]);
    let job = gantry_image::job::Job {
        exe,
        global,
        env: vec![("GANTRY_CONFIG_DIR".into(), sh.cfg.config_dir.clone().into())],
        image: format!("{}/{}:{}", sh.reach, params.repo, params.tag),
        push: true,
        dockerfile: params.dockerfile.clone(),
        target: params.target.clone(),
        args: params.args.clone(),
        no_cache: params.no_cache,
        cache_from: params.cache_from.clone(),
    };
    let (out, relayed) = relay(tx);
    let built = job.run(dir, body.into_data_stream(), secrets, &out).await;
    drop(out);
    let _ = relayed.await;
    if let Err(message) = built {
        return BuildEvent::Failed { message };
    }
    // Pushed: the tag names the digest once the push's write is applied
    // here too.
    match tagged(sh, params).await {
        Some(image) => BuildEvent::Done { image },
        None => BuildEvent::Failed {
            message: format!(
                "built and pushed, but {}:{} is not in the registry's state",
                params.repo, params.tag
            ),
        },
    }
}

/// `REACH/REPO@DIGEST` once the state here has the tag (5 s at most).
async fn tagged(sh: &Shared, params: &BuildParams) -> Option<String> {
    for _ in 0..50 {
        let digest = sh.read(|s| {
            s.registry
                .get(&params.repo)
                .and_then(|r| r.tags.get(&params.tag).cloned())
        });
        if let Some(d) = digest {
            return Some(format!("{}/{}@{d}", sh.reach, params.repo));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// A client for `node`'s peer port, with this manager's certificate.
pub(crate) fn node_client(
    sh: &Shared,
    node: &NodeRecord,
) -> Result<(reqwest::Client, String), String> {
    let tls = sh
        .peers
        .tls()
        .ok_or("this manager has no certificate yet")?;
    let port = node.peer_port.ok_or("the node serves no peer port")?;
    let ip: std::net::IpAddr = node
        .addr
        .parse()
        .map_err(|_| format!("the node's address {:?} is not an IP", node.addr))?;
    let c = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .resolve(&node.id, SocketAddr::new(ip, port))
        .http1_only()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        // A build may be silent for long; a node that died is found by
        // its connection's keepalives.
        .tcp_keepalive(Duration::from_secs(10))
        .tcp_keepalive_interval(Duration::from_secs(5))
        .tcp_keepalive_retries(3)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    Ok((c, format!("https://{}:{port}", node.id)))
}

/// Builds on `node`, then copies the image into the cluster's registry.
async fn on_node(
    sh: &Arc<Shared>,
    peer: &Peer,
    node: &NodeRecord,
    params: &BuildParams,
    secrets: &Secrets,
    body: Body,
    tx: &mpsc::Sender<Bytes>,
) -> BuildEvent {
    let failed = |message: String| BuildEvent::Failed {
        message: format!("on builder node {}: {message}", node.hostname),
    };
    let _ = tx
        .send(line(&BuildEvent::Line(format!(
            "building on node {} ({})",
            node.hostname, node.id
        ))))
        .await;
    let (client, base) = match node_client(sh, node) {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let mut req = client
        .post(format!("{base}/builds?{}", params.to_query()))
        .body(reqwest::Body::wrap_stream(body.into_data_stream()));
    for (id, value) in secrets {
        req = req.header(
            gantry_api::BUILD_SECRET_HEADER,
            gantry_api::build_secret_header(id, value),
        );
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            return failed(format!(
                "unreachable: {}",
                gantry_image::registry::error_chain(&e)
            ))
        }
    };
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        return failed(format!("answered {status}: {}", text.trim()));
    }
    // Its lines go on as they come; its end says what it built.
    let mut stream = resp.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    let mut ended = None;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return failed(format!("the build's answer broke: {e}")),
        };
        pending.extend_from_slice(&chunk);
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let l: Vec<u8> = pending.drain(..=i).collect();
            match serde_json::from_slice::<BuildEvent>(&l) {
                Ok(BuildEvent::Line(t)) => {
                    if tx.send(line(&BuildEvent::Line(t))).await.is_err() {
                        // The client went away: dropping the answer stops
                        // the node's build.
                        return failed("the client went away".into());
                    }
                }
                Ok(e) => ended = Some(e),
                Err(_) => {}
            }
        }
        if pending.len() > 1 << 20 {
            return failed("a line of the build's answer is over 1 MiB".into());
        }
    }
    let digest = match ended {
        Some(BuildEvent::Done { image }) => image,
        Some(BuildEvent::Failed { message }) => return failed(message),
        _ => return failed("its answer ended before the build did".into()),
    };
    let _ = tx
        .send(line(&BuildEvent::Line(format!(
            "copying {digest} from node {} into the cluster's registry",
            node.hostname
        ))))
        .await;
    if let Err(e) = import(sh, peer, &client, &base, &digest, params).await {
        return failed(format!("copying the image from the node: {e}"));
    }
    match tagged(sh, params).await {
        Some(image) => BuildEvent::Done { image },
        None => failed(format!(
            "built, but {}:{} is not in the registry's state",
            params.repo, params.tag
        )),
    }
}

/// The descriptors a manifest names.
#[derive(serde::Deserialize)]
struct Named {
    config: Desc,
    layers: Vec<Desc>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
}

#[derive(serde::Deserialize)]
struct Desc {
    digest: String,
}

/// Copies the image `digest` names from the node into this manager's
/// registry blobs (each checked against its digest), then records its
/// manifest under `params`' repository and tag, at the leader.
async fn import(
    sh: &Arc<Shared>,
    peer: &Peer,
    client: &reqwest::Client,
    base: &str,
    digest: &str,
    params: &BuildParams,
) -> Result<(), String> {
    crate::registry::route::check_digest(digest).map_err(|e| e.message)?;
    let get = |d: String| async move {
        let r = client
            .get(format!("{base}/blobs/{d}"))
            .send()
            .await
            .map_err(|e| format!("{d}: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("{d}: the node answered {}", r.status()));
        }
        Ok(r)
    };
    let resp = get(digest.to_owned()).await?;
    if resp
        .content_length()
        .is_some_and(|n| n > crate::registry::MANIFEST_WIRE_LIMIT as u64)
    {
        return Err("the manifest is too large".into());
    }
    let manifest = resp.bytes().await.map_err(|e| e.to_string())?;
    let actual = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&manifest)));
    if actual != digest {
        return Err(format!("the node sent {actual} for {digest}"));
    }
    let named: Named =
        serde_json::from_slice(&manifest).map_err(|e| format!("the manifest: {e}"))?;
    for d in std::iter::once(&named.config).chain(&named.layers) {
        crate::registry::route::check_digest(&d.digest).map_err(|e| e.message)?;
        if sh.blobs.size(&d.digest).is_some() {
            continue;
        }
        let r = get(d.digest.clone()).await?;
        sh.blobs
            .put_stream(&d.digest, r.bytes_stream().boxed())
            .await
            .map_err(|e| format!("{}: {e:?}", d.digest))?;
    }
    let media_type = named
        .media_type
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_owned());
    crate::registry::put_manifest_as(sh, peer, &params.repo, &params.tag, &media_type, manifest)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_store::Command;

    fn node(id: &str, labels: &[(&str, &str)], up: bool, peer_port: Option<u16>) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            hostname: format!("h-{id}"),
            addr: "10.0.0.1".into(),
            manager: false,
            arch: "x86_64".into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            availability: gantry_sched::Availability::Active,
            up,
            capacity: Default::default(),
            disk: 0,
            block: None,
            vtep_mac: None,
            last_addr: None,
            held: false,
            volumes: Default::default(),
            peer_port,
        }
    }

    #[test]
    fn builds_go_to_builder_nodes_that_can_take_them_the_least_busy_first() {
        let mut s = ClusterState::default();
        let b = [(gantry_api::BUILDER_LABEL, "true")];
        for n in [
            node("a", &[], true, Some(4244)),
            node("b", &b, false, Some(4244)),
            node("c", &b, true, None),
            node(
                "d",
                &[(gantry_api::BUILDER_LABEL, "false")],
                true,
                Some(4244),
            ),
        ] {
            s.apply(&Command::PutNode(n)).unwrap();
        }
        let none = HashMap::new();
        // Not labelled, down, no peer port, labelled false: none is one.
        assert!(pick_builder(&s, &none).is_none());
        s.apply(&Command::PutNode(node("e", &b, true, Some(4244))))
            .unwrap();
        s.apply(&Command::PutNode(node("f", &b, true, Some(4244))))
            .unwrap();
        assert_eq!(pick_builder(&s, &none).unwrap().id, "e");
        let busy = HashMap::from([("e".to_owned(), 1)]);
        assert_eq!(pick_builder(&s, &busy).unwrap().id, "f");
        let mut drained = node("f", &b, true, Some(4244));
        drained.availability = gantry_sched::Availability::Drain;
        s.apply(&Command::PutNode(drained)).unwrap();
        assert_eq!(pick_builder(&s, &busy).unwrap().id, "e");
    }
}
