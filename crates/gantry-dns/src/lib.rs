//! Service discovery, as Swarm's embedded DNS: every node runs a DNS server
//! on its overlay gateway, the containers' only resolver. It answers
//! `SERVICE`, `SERVICE.STACK` and `STACK_SERVICE` with the addresses of the
//! service's running (healthy) tasks, in rotating order, and
//! `tasks.SERVICE` with every live task's; any other name is forwarded to
//! the host's resolvers.
//!
//! The records come whole from the manager with each assignment message
//! ([`Table::set`]), so they follow tasks within the time that message
//! takes.
//!
//! **Architecture invariant:** [`answer`] is pure (query bytes and a table
//! in, an answer or "forward" out); only [`serve`] does I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

/// Seconds a cluster answer may be cached: short, tasks move.
pub const TTL: u32 = 5;

/// The networks an alias names a service on, each with the addresses it
/// answers there.
type AliasNets = Vec<(String, Vec<Ipv4Addr>)>;

/// The cluster's names and their addresses, and the stack networks that
/// scope them.
#[derive(Debug, Default)]
pub struct Table {
    names: RwLock<HashMap<String, Vec<Ipv4Addr>>>,
    /// Network aliases: each to the networks it is a name on, with the
    /// addresses it answers there.
    aliases: RwLock<HashMap<String, AliasNets>>,
    networks: RwLock<HashMap<String, BTreeSet<Ipv4Addr>>>,
    turn: AtomicUsize,
    counts: [std::sync::atomic::AtomicU64; 4],
}

/// What became of the queries served so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Answered from the cluster's names.
    pub answered: u64,
    /// Forwarded to the host's resolvers, and answered by them.
    pub forwarded: u64,
    /// Forwarded, with no answer from upstream (SERVFAIL sent).
    pub failed: u64,
    /// Not DNS queries: dropped.
    pub dropped: u64,
}

const ANSWERED: usize = 0;
const FORWARDED: usize = 1;
const FAILED: usize = 2;
const DROPPED: usize = 3;

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Table {
    fn count(&self, what: usize) {
        self.counts[what].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// What became of the queries served so far.
    pub fn counts(&self) -> Counts {
        let c = |i: usize| self.counts[i].load(std::sync::atomic::Ordering::Relaxed);
        Counts {
            answered: c(ANSWERED),
            forwarded: c(FORWARDED),
            failed: c(FAILED),
            dropped: c(DROPPED),
        }
    }

    /// Replaces every record (names are case-insensitive).
    pub fn set(&self, records: &BTreeMap<String, Vec<Ipv4Addr>>) {
        let map = records.iter().map(|(k, v)| (key(k), v.clone())).collect();
        *self.names.write().expect("dns table") = map;
    }

    /// Replaces the network aliases: each alias to the networks it names
    /// a service on, with the addresses it answers there (names are
    /// case-insensitive).
    pub fn set_aliases(&self, aliases: &BTreeMap<String, BTreeMap<String, Vec<Ipv4Addr>>>) {
        let map = aliases
            .iter()
            .map(|(k, nets)| {
                let nets = nets.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
                (key(k), nets)
            })
            .collect();
        *self.aliases.write().expect("dns table") = map;
    }

    /// Replaces the networks: sets of task addresses that may talk.
    pub fn set_networks(&self, networks: &BTreeMap<String, Vec<Ipv4Addr>>) {
        *self.networks.write().expect("dns table") = networks
            .iter()
            .map(|(n, v)| (n.clone(), v.iter().copied().collect()))
            .collect();
    }

    /// The addresses of a name, rotated by one on every lookup (none: not
    /// a cluster name).
    pub fn lookup(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        self.lookup_from(name, None)
    }

    /// The addresses of a name as a task at `from` sees them: only tasks
    /// that share a network with it (a querier on no network, the host,
    /// sees all).
    ///
    /// A network alias answers only on its network: to a task on it, or
    /// to a querier on no network.
    pub fn lookup_from(&self, name: &str, from: Option<Ipv4Addr>) -> Option<Vec<Ipv4Addr>> {
        let name = key(name);
        let nets = self.networks.read().expect("dns table");
        let mine: Vec<(&String, &BTreeSet<Ipv4Addr>)> = match from {
            Some(from) => nets.iter().filter(|(_, n)| n.contains(&from)).collect(),
            None => Vec::new(),
        };
        let names = self.names.read().expect("dns table");
        let mut v = names.get(&name).cloned();
        if let Some(v) = v.as_mut().filter(|_| !mine.is_empty()) {
            v.retain(|a| mine.iter().any(|(_, n)| n.contains(a)));
        }
        // An alias of another network is not a name here: it goes to the
        // host's resolvers, as any name would.
        if let Some(on) = self.aliases.read().expect("dns table").get(&name) {
            for (net, addrs) in on {
                if mine.is_empty() || mine.iter().any(|(n, _)| *n == net) {
                    let v = v.get_or_insert_with(Vec::new);
                    v.extend(addrs);
                    v.sort_unstable();
                    v.dedup();
                }
            }
        }
        let mut v = v?;
        if !v.is_empty() {
            let k = self.turn.fetch_add(1, Ordering::Relaxed) % v.len();
            v.rotate_left(k);
        }
        Some(v)
    }
}

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not a cluster name: ask the host's resolvers.
    Forward,
    /// Not a DNS query at all: drop it.
    Drop,
}

/// How a query arrived: over UDP an answer must fit the client's payload
/// size (512 bytes without EDNS) or come back truncated, so that the client
/// asks again over TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A datagram.
    Udp,
    /// A stream.
    Tcp,
}

/// Answers a query from the table, as the querier at `from` sees it.
pub fn answer(table: &Table, query: &[u8], transport: Transport, from: Option<Ipv4Addr>) -> Answer {
    let Ok(q) = Message::from_vec(query) else {
        return Answer::Drop;
    };
    if q.message_type() != MessageType::Query {
        return Answer::Drop;
    }
    let mut r = Message::new();
    r.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_op_code(q.op_code())
        .set_recursion_desired(q.recursion_desired())
        .set_recursion_available(true);
    r.add_queries(q.queries().to_vec());
    let [question] = q.queries() else {
        r.set_response_code(ResponseCode::FormErr);
        return Answer::Reply(r.to_vec().unwrap_or_default());
    };
    if q.op_code() != OpCode::Query {
        r.set_response_code(ResponseCode::NotImp);
        return Answer::Reply(r.to_vec().unwrap_or_default());
    }
    let name = question.name().to_ascii();
    let Some(addrs) = table.lookup_from(&name, from) else {
        return Answer::Forward;
    };
    r.set_authoritative(true);
    // A known name: A records, or no data for other types (not NXDOMAIN,
    // which would make resolvers give up on the A query too).
    if question.query_type() == RecordType::A {
        for a in addrs {
            r.add_answer(Record::from_rdata(
                question.name().clone(),
                TTL,
                RData::A(A(a)),
            ));
        }
    }
    let bytes = r.to_vec().unwrap_or_default();
    if transport == Transport::Udp && bytes.len() > usize::from(q.max_payload().max(512)) {
        // Too big for the datagram: no answers, the TC bit, ask over TCP.
        r.take_answers();
        r.set_truncated(true);
        return Answer::Reply(r.to_vec().unwrap_or_default());
    }
    Answer::Reply(bytes)
}

fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let mut r = Message::new();
    r.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_op_code(q.op_code())
        .set_recursion_desired(q.recursion_desired())
        .set_response_code(ResponseCode::ServFail);
    r.add_queries(q.queries().to_vec());
    r.to_vec().ok()
}

async fn forward(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstreams {
        let Ok(sock) = tokio::net::UdpSocket::bind(("0.0.0.0", 0)).await else {
            continue;
        };
        if sock.send_to(query, up).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await
        {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

/// The host's resolvers, from `/etc/resolv.conf` (loopback ones too: the
/// agent runs on the host, unlike the containers).
pub fn host_resolvers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

fn v4(a: SocketAddr) -> Option<Ipv4Addr> {
    match a.ip() {
        std::net::IpAddr::V4(v) => Some(v),
        std::net::IpAddr::V6(v) => v.to_ipv4_mapped(),
    }
}

/// Answers DNS over TCP: length-prefixed messages, several per connection.
async fn serve_tcp(l: tokio::net::TcpListener, table: Arc<Table>, upstreams: Arc<Vec<SocketAddr>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut conn, peer)) = l.accept().await else {
            continue;
        };
        let (table, ups) = (table.clone(), upstreams.clone());
        tokio::spawn(async move {
            loop {
                let read = async {
                    let n = conn.read_u16().await? as usize;
                    let mut q = vec![0u8; n];
                    conn.read_exact(&mut q).await?;
                    Ok::<_, std::io::Error>(q)
                };
                let Ok(Ok(query)) = tokio::time::timeout(Duration::from_secs(10), read).await
                else {
                    return;
                };
                let reply = match answer(&table, &query, Transport::Tcp, v4(peer)) {
                    Answer::Reply(r) => {
                        table.count(ANSWERED);
                        Some(r)
                    }
                    Answer::Drop => {
                        table.count(DROPPED);
                        return;
                    }
                    Answer::Forward => forward_counted(&table, &query, &ups).await,
                };
                let Some(r) = reply else { return };
                let Ok(len) = u16::try_from(r.len()) else {
                    return;
                };
                if conn.write_u16(len).await.is_err() || conn.write_all(&r).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Forwards a query upstream, or makes a SERVFAIL, and counts which.
async fn forward_counted(table: &Table, query: &[u8], ups: &[SocketAddr]) -> Option<Vec<u8>> {
    match forward(query, ups).await {
        Some(r) => {
            table.count(FORWARDED);
            Some(r)
        }
        None => {
            table.count(FAILED);
            servfail(query)
        }
    }
}

/// Serves DNS over UDP and TCP on `addr` until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    table: Arc<Table>,
    upstreams: Vec<SocketAddr>,
) -> std::io::Result<()> {
    let sock = Arc::new(tokio::net::UdpSocket::bind(addr).await?);
    let tcp = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "DNS server listening");
    let upstreams = Arc::new(upstreams);
    tokio::spawn(serve_tcp(tcp, table.clone(), upstreams.clone()));
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("dns: {e}");
                continue;
            }
        };
        let query = buf[..n].to_vec();
        match answer(&table, &query, Transport::Udp, v4(from)) {
            Answer::Reply(r) => {
                table.count(ANSWERED);
                let _ = sock.send_to(&r, from).await;
            }
            Answer::Drop => table.count(DROPPED),
            Answer::Forward => {
                let (sock, ups, table) = (sock.clone(), upstreams.clone(), table.clone());
                tokio::spawn(async move {
                    let reply = forward_counted(&table, &query, &ups).await;
                    if let Some(r) = reply {
                        let _ = sock.send_to(&r, from).await;
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(7).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn addrs(reply: Answer) -> Vec<Ipv4Addr> {
        let Answer::Reply(b) = reply else {
            panic!("no reply: {reply:?}")
        };
        let m = Message::from_vec(&b).unwrap();
        assert_eq!(m.id(), 7);
        m.answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    fn answer_udp(t: &Table, q: &[u8]) -> Answer {
        answer(t, q, Transport::Udp, None)
    }

    #[test]
    fn answers_too_big_for_udp_are_truncated_and_whole_over_tcp() {
        let t = Table::default();
        let many: Vec<Ipv4Addr> = (0..200u32)
            .map(|i| Ipv4Addr::from(0x0a20_0000 + i))
            .collect();
        t.set(&BTreeMap::from([("tasks.big".to_owned(), many)]));
        let Answer::Reply(udp) = answer(
            &t,
            &query("tasks.big.", RecordType::A),
            Transport::Udp,
            None,
        ) else {
            panic!("no reply")
        };
        let m = Message::from_vec(&udp).unwrap();
        assert!(m.truncated() && m.answers().is_empty() && udp.len() <= 512);
        let tcp = addrs(answer(
            &t,
            &query("tasks.big.", RecordType::A),
            Transport::Tcp,
            None,
        ));
        assert_eq!(tcp.len(), 200);
    }

    fn table() -> Table {
        let t = Table::default();
        let a = Ipv4Addr::new(10, 32, 0, 2);
        let b = Ipv4Addr::new(10, 32, 1, 2);
        t.set(&BTreeMap::from([
            ("web".to_owned(), vec![a, b]),
            (
                "tasks.web".to_owned(),
                vec![a, b, Ipv4Addr::new(10, 32, 2, 2)],
            ),
            ("empty".to_owned(), vec![]),
        ]));
        t
    }

    #[test]
    fn cluster_names_answer_in_rotating_order() {
        let t = table();
        let first = addrs(answer_udp(&t, &query("web.", RecordType::A)));
        let second = addrs(answer_udp(&t, &query("WEB.", RecordType::A)));
        assert_eq!(first.len(), 2);
        assert_eq!(second.len(), 2);
        assert_ne!(first, second, "the order rotates");
        assert_eq!(
            addrs(answer_udp(&t, &query("tasks.web.", RecordType::A))).len(),
            3
        );
        // A service without healthy tasks: an empty answer, not NXDOMAIN.
        assert!(addrs(answer_udp(&t, &query("empty.", RecordType::A))).is_empty());
        // Known name, other type: no data.
        assert!(addrs(answer_udp(&t, &query("web.", RecordType::AAAA))).is_empty());
    }

    #[test]
    fn an_alias_answers_on_its_network_only() {
        let t = table();
        let (a, b) = (Ipv4Addr::new(10, 32, 0, 2), Ipv4Addr::new(10, 32, 1, 2));
        let (red, blue) = (Ipv4Addr::new(10, 32, 0, 9), Ipv4Addr::new(10, 32, 1, 9));
        t.set_networks(&BTreeMap::from([
            ("s_red".to_owned(), vec![a, b, red]),
            ("s_blue".to_owned(), vec![a, b, blue]),
        ]));
        t.set_aliases(&BTreeMap::from([
            (
                "Database".to_owned(),
                BTreeMap::from([("s_red".to_owned(), vec![a])]),
            ),
            // An alias that is also a service's name adds to it.
            (
                "web".to_owned(),
                BTreeMap::from([("s_red".to_owned(), vec![Ipv4Addr::new(10, 32, 0, 3)])]),
            ),
        ]));
        let q = query("database.", RecordType::A);
        assert_eq!(addrs(answer(&t, &q, Transport::Udp, Some(red))), vec![a]);
        // Not a name on blue: asked of the host's resolvers.
        assert_eq!(answer(&t, &q, Transport::Udp, Some(blue)), Answer::Forward);
        // The host sees it.
        assert_eq!(addrs(answer(&t, &q, Transport::Udp, None)), vec![a]);
        let w = addrs(answer(
            &t,
            &query("web.", RecordType::A),
            Transport::Udp,
            Some(red),
        ));
        assert_eq!(w.len(), 3, "{w:?}");
        let w = addrs(answer(
            &t,
            &query("web.", RecordType::A),
            Transport::Udp,
            Some(blue),
        ));
        assert_eq!(w.len(), 2, "{w:?}");
    }

    #[test]
    fn a_task_sees_only_the_tasks_of_its_networks() {
        let t = table();
        let (a, b) = (Ipv4Addr::new(10, 32, 0, 2), Ipv4Addr::new(10, 32, 1, 2));
        let me = Ipv4Addr::new(10, 32, 0, 9);
        t.set_networks(&BTreeMap::from([
            ("red_default".to_owned(), vec![a, me]),
            ("blue_default".to_owned(), vec![b]),
        ]));
        let q = query("web.", RecordType::A);
        assert_eq!(addrs(answer(&t, &q, Transport::Udp, Some(me))), vec![a]);
        // The host (on no network) sees every task.
        let host = Ipv4Addr::new(10, 32, 0, 1);
        assert_eq!(addrs(answer(&t, &q, Transport::Udp, Some(host))).len(), 2);
    }

    #[test]
    fn other_names_are_forwarded_and_garbage_dropped() {
        let t = table();
        assert_eq!(
            answer_udp(&t, &query("example.com.", RecordType::A)),
            Answer::Forward
        );
        assert_eq!(answer_udp(&t, b"\x00\x01garbage"), Answer::Drop);
        assert_eq!(answer_udp(&t, &[]), Answer::Drop);
        let sf = servfail(&query("example.com.", RecordType::A)).unwrap();
        let m = Message::from_vec(&sf).unwrap();
        assert_eq!(m.response_code(), ResponseCode::ServFail);
    }
}
