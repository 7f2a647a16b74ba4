//! Ingress-mode published ports: every node listens on the port and
//! forwards each connection over the overlay to a running task of the
//! service, wherever it runs, picking tasks in turn from the service
//! discovery records. A userland forwarder for now (the client's address
//! is not preserved: the task sees the node's overlay address); kernel
//! DNAT through nftables replaces it later.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use gantry_api::IngressPort;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The listeners of this node, by published port.
#[derive(Default)]
pub(crate) struct Ingress {
    ports: Mutex<BTreeMap<u16, (IngressPort, JoinHandle<()>)>>,
}

impl Ingress {
    /// Makes the listeners match `wanted`.
    pub(crate) fn set(&self, wanted: &[IngressPort], dns: &Arc<gantry_dns::Table>) {
        let mut ports = self.ports.lock().expect("ingress lock");
        ports.retain(|port, (p, task)| {
            let keep = wanted.contains(p);
            if !keep {
                tracing::info!(port, "ingress port closed");
                task.abort();
            }
            keep
        });
        for p in wanted {
            if ports.contains_key(&p.published) {
                continue;
            }
            let (p2, dns) = (p.clone(), dns.clone());
            let task = tokio::spawn(async move {
                if let Err(e) = listen(p2.clone(), dns).await {
                    tracing::error!(port = p2.published, "ingress: {e}");
                }
            });
            ports.insert(p.published, (p.clone(), task));
        }
    }
}

async fn listen(p: IngressPort, dns: Arc<gantry_dns::Table>) -> std::io::Result<()> {
    let l = TcpListener::bind(("0.0.0.0", p.published)).await?;
    tracing::info!(port = p.published, service = %p.service, "ingress port open");
    loop {
        let (mut client, from) = l.accept().await?;
        let (p, dns) = (p.clone(), dns.clone());
        tokio::spawn(async move {
            // Each running task at most once, starting with the next in turn.
            let tasks = dns.lookup(&p.service).unwrap_or_default();
            for addr in tasks {
                match TcpStream::connect((addr, p.target)).await {
                    Ok(mut up) => {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                        return;
                    }
                    Err(e) => tracing::debug!(%addr, "ingress backend: {e}"),
                }
            }
            tracing::info!(%from, service = %p.service, "ingress: no running task answers");
        });
    }
}
