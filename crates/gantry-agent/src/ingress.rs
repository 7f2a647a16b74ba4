//! Ingress-mode published ports: every node listens on the port (on the
//! address the port names, or on all of them) and forwards each TCP
//! connection, or each UDP client's datagrams, over the overlay to a
//! running task of the service, wherever it runs, picking tasks in turn
//! from the service discovery records. A userland forwarder for now (the
//! client's address is not preserved: the task sees the node's overlay
//! address); kernel DNAT through nftables replaces it later.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_api::IngressPort;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// A listener's key: [`IngressPort::key`].
type Key = (bool, u16, Option<IpAddr>);

/// The listeners of this node, by protocol, port and address.
#[derive(Default)]
pub(crate) struct Ingress {
    ports: Mutex<BTreeMap<Key, (IngressPort, JoinHandle<()>)>>,
}

impl Ingress {
    /// Makes the listeners match `wanted`.
    pub(crate) fn set(&self, wanted: &[IngressPort], dns: &Arc<gantry_dns::Table>) {
        let mut ports = self.ports.lock().expect("ingress lock");
        ports.retain(|_, (p, task)| {
            let keep = wanted.contains(p);
            if !keep {
                tracing::info!(port = p.published, udp = p.udp, "ingress port closed");
                task.abort();
            }
            keep
        });
        for p in wanted {
            if ports.contains_key(&p.key()) {
                continue;
            }
            let (p2, dns) = (p.clone(), dns.clone());
            let task = tokio::spawn(async move {
                let r = if p2.udp {
                    relay_udp(p2.clone(), dns).await
                } else {
                    listen(p2.clone(), dns).await
                };
                if let Err(e) = r {
                    tracing::error!(port = p2.published, udp = p2.udp, "ingress: {e}");
                }
            });
            ports.insert(p.key(), (p.clone(), task));
        }
    }
}

fn bind_addr(p: &IngressPort) -> SocketAddr {
    SocketAddr::new(
        p.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        p.published,
    )
}

async fn listen(p: IngressPort, dns: Arc<gantry_dns::Table>) -> std::io::Result<()> {
    let l = TcpListener::bind(bind_addr(&p)).await?;
    tracing::info!(addr = %bind_addr(&p), service = %p.service, "ingress port open");
    loop {
        let (mut client, from) = l.accept().await?;
        let (p, dns) = (p.clone(), dns.clone());
        tokio::spawn(async move {
            // Each running task at most once, starting with the next in turn.
            let tasks = dns
                .lookup(&gantry_api::addrs::ingress_name(&p.service))
                .unwrap_or_default();
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

/// UDP clients tracked at once; the longest idle one makes room.
const UDP_CLIENTS: usize = 4096;
/// A UDP client's mapping ends after this long without a datagram.
const UDP_IDLE: Duration = Duration::from_secs(60);

struct UdpClient {
    up: Arc<UdpSocket>,
    last: Instant,
    replies: JoinHandle<()>,
}

impl Drop for UdpClient {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

/// Relays UDP as a NAT would: each client gets its own socket to one task
/// (picked in turn), and that task's replies go back to the client from
/// the published port.
async fn relay_udp(p: IngressPort, dns: Arc<gantry_dns::Table>) -> std::io::Result<()> {
    let front = Arc::new(UdpSocket::bind(bind_addr(&p)).await?);
    tracing::info!(addr = %bind_addr(&p), service = %p.service, "ingress udp port open");
    let mut clients: HashMap<SocketAddr, UdpClient> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = front.recv_from(&mut buf).await?;
        let now = Instant::now();
        let fresh = clients
            .get(&from)
            .is_some_and(|c| now.duration_since(c.last) < UDP_IDLE && !c.replies.is_finished());
        if !fresh {
            clients
                .retain(|_, c| now.duration_since(c.last) < UDP_IDLE && !c.replies.is_finished());
            if clients.len() >= UDP_CLIENTS {
                if let Some(oldest) = clients.iter().min_by_key(|(_, c)| c.last).map(|(a, _)| *a) {
                    clients.remove(&oldest);
                }
            }
            let Some(addr) = dns
                .lookup(&gantry_api::addrs::ingress_name(&p.service))
                .unwrap_or_default()
                .into_iter()
                .next()
            else {
                tracing::debug!(%from, service = %p.service, "ingress udp: no running task");
                continue;
            };
            let up = Arc::new(UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?);
            if let Err(e) = up.connect((addr, p.target)).await {
                tracing::debug!(%addr, "ingress udp backend: {e}");
                continue;
            }
            let (up2, front2) = (up.clone(), front.clone());
            let replies = tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                loop {
                    match tokio::time::timeout(UDP_IDLE, up2.recv(&mut buf)).await {
                        Ok(Ok(n)) => {
                            let _ = front2.send_to(&buf[..n], from).await;
                        }
                        // Idle, or the task refused (ICMP): the next
                        // datagram of this client picks a task afresh.
                        _ => return,
                    }
                }
            });
            clients.insert(
                from,
                UdpClient {
                    up,
                    last: now,
                    replies,
                },
            );
        }
        if let Some(c) = clients.get_mut(&from) {
            c.last = now;
            if let Err(e) = c.up.send(&buf[..n]).await {
                tracing::debug!(%from, "ingress udp send: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP echo task on loopback, reached through an ingress UDP port
    /// bound to 127.0.0.1: two clients each get their own answers.
    #[tokio::test]
    async fn udp_ports_relay_each_clients_datagrams_and_replies() {
        let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let (n, from) = echo.recv_from(&mut buf).await.unwrap();
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                echo.send_to(&reply, from).await.unwrap();
            }
        });
        let dns = Arc::new(gantry_dns::Table::default());
        let name = gantry_api::addrs::ingress_name("s_udp");
        dns.set(&[(name, vec![Ipv4Addr::LOCALHOST])].into());
        // A free port for the front: bind, note, release.
        let published = UdpSocket::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ingress = Ingress::default();
        let port = IngressPort {
            published,
            target,
            service: "s_udp".into(),
            udp: true,
            host_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        };
        ingress.set(std::slice::from_ref(&port), &dns);
        for who in ["a", "b"] {
            let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            c.connect(("127.0.0.1", published)).await.unwrap();
            let mut buf = [0u8; 64];
            let mut got = None;
            // The listener starts on its own task: retry until it answers.
            for _ in 0..50 {
                c.send(who.as_bytes()).await.unwrap();
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(100), c.recv(&mut buf)).await
                {
                    got = Some(buf[..n].to_vec());
                    break;
                }
            }
            assert_eq!(got.as_deref(), Some(format!("echo:{who}").as_bytes()));
        }
        // Closed when no longer wanted.
        ingress.set(&[], &dns);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(UdpSocket::bind(("127.0.0.1", published)).await.is_ok());
    }
}
