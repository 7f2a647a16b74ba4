//! Which nodes hold which blobs, or are getting them, as far as this
//! manager knows: a node it is sending a whole blob to (that said on
//! which port it serves its blobs), and a node it sent to another for
//! one, is where the next node that asks may be sent. A node serves a
//! blob while it still arrives, so nodes that ask at the same moment
//! form a chain (or a tree), and the managers send each blob once. In
//! memory only (a restart forgets, and nodes fetch from the managers
//! again); an entry lasts [`HOLD`], and one whose transfer broke is
//! forgotten. A node that no longer has the blob costs the asking node
//! one failed request before it asks the managers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a node counts as holding a blob it fetched.
const HOLD: Duration = Duration::from_secs(600);
/// The most blobs and holders per blob remembered.
const MAX_BLOBS: usize = 10_000;
const MAX_HOLDERS: usize = 64;

#[derive(Debug, Clone)]
struct Holder {
    node: String,
    addr: SocketAddr,
    since: Instant,
    /// How many nodes were sent to it.
    sent: u32,
    /// The node it was sent to for the blob (none: the managers).
    from: Option<String>,
}

/// Blob digest to the nodes that fetched it.
#[derive(Default)]
pub(crate) struct Holders(Mutex<HashMap<String, Vec<Holder>>>);

impl Holders {
    /// `node` is getting `digest`, from the node `from` or (none) from
    /// the managers, and serves blobs at `addr`.
    pub(crate) fn record(&self, digest: &str, node: &str, addr: SocketAddr, from: Option<&str>) {
        let mut m = self.0.lock().expect("holders lock");
        if m.len() >= MAX_BLOBS && !m.contains_key(digest) {
            m.retain(|_, hs| {
                hs.retain(|h| h.since.elapsed() < HOLD);
                !hs.is_empty()
            });
            if m.len() >= MAX_BLOBS {
                return;
            }
        }
        let hs = m.entry(digest.to_owned()).or_default();
        hs.retain(|h| h.node != node && h.since.elapsed() < HOLD);
        if hs.len() < MAX_HOLDERS {
            hs.push(Holder {
                node: node.to_owned(),
                addr,
                since: Instant::now(),
                sent: 0,
                from: from.map(str::to_owned),
            });
        }
    }

    /// `node` does not have `digest` (it asks for it, or its transfer
    /// broke): it is no holder. With `failed_it`, the node it was sent to
    /// for it failed it: that one is no holder either.
    pub(crate) fn forget(&self, digest: &str, node: &str, failed_it: bool) {
        let mut m = self.0.lock().expect("holders lock");
        if let Some(hs) = m.get_mut(digest) {
            let source = hs
                .iter()
                .find(|h| h.node == node)
                .and_then(|h| h.from.clone())
                .filter(|_| failed_it);
            hs.retain(|h| h.node != node && Some(&h.node) != source.as_ref());
            if hs.is_empty() {
                m.remove(digest);
            }
        }
    }

    /// A node other than `asking` that holds `digest` and is up, the one
    /// sent the fewest so far (the load spreads over the holders), and
    /// not one that gets it through `asking` (no cycles: each would wait
    /// for the other).
    pub(crate) fn pick(
        &self,
        digest: &str,
        asking: &str,
        up: impl Fn(&str) -> bool,
    ) -> Option<(String, SocketAddr)> {
        let mut m = self.0.lock().expect("holders lock");
        let hs = m.get_mut(digest)?;
        hs.retain(|h| h.since.elapsed() < HOLD);
        let through_asking = |h: &Holder| {
            let mut from = h.from.as_deref();
            // Bounded: a chain is at most every holder long.
            for _ in 0..=hs.len() {
                match from {
                    None => return false,
                    Some(f) if f == asking => return true,
                    Some(f) => {
                        from = hs
                            .iter()
                            .find(|x| x.node == f)
                            .and_then(|x| x.from.as_deref())
                    }
                }
            }
            true
        };
        let i = hs
            .iter()
            .enumerate()
            .filter(|(_, h)| h.node != asking && up(&h.node) && !through_asking(h))
            .min_by_key(|(_, h)| h.sent)?
            .0;
        let h = &mut hs[i];
        h.sent += 1;
        Some((h.node.clone(), h.addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_spreads_over_the_holders_that_are_up() {
        let h = Holders::default();
        let a: SocketAddr = "10.0.0.1:4244".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:4244".parse().unwrap();
        assert_eq!(h.pick("d", "n3", |_| true), None);
        h.record("d", "n1", a, None);
        assert_eq!(h.pick("d", "n1", |_| true), None, "never itself");
        h.record("d", "n2", b, None);
        let first = h.pick("d", "n3", |_| true).unwrap();
        let second = h.pick("d", "n3", |_| true).unwrap();
        assert_ne!(first.0, second.0, "the least sent first");
        assert_eq!(h.pick("d", "n3", |n| n == "n2").unwrap().0, "n2");
        assert_eq!(
            h.pick("d", "n3", |_| false),
            None,
            "down nodes are not named"
        );
        // Fetched again: one entry per node.
        h.record("d", "n1", a, None);
        assert_eq!(h.0.lock().unwrap()["d"].len(), 2);
        h.forget("d", "n1", false);
        assert_eq!(h.pick("d", "n3", |_| true).unwrap().0, "n2");
        h.forget("d", "n2", false);
        assert!(h.0.lock().unwrap().is_empty());
    }

    #[test]
    fn nodes_asking_at_once_form_a_chain() {
        // The manager sends n1 the blob and counts it a holder at once;
        // n2 is sent to n1 and counted a holder in turn; n3 goes to n2,
        // the one sent the fewest, not to n1.
        let h = Holders::default();
        let addr = |i: u8| SocketAddr::from(([10, 0, 0, i], 4244));
        h.record("d", "n1", addr(1), None);
        let (to, _) = h.pick("d", "n2", |_| true).unwrap();
        assert_eq!(to, "n1");
        h.record("d", "n2", addr(2), Some("n1"));
        let (to, _) = h.pick("d", "n3", |_| true).unwrap();
        assert_eq!(to, "n2");
    }

    #[test]
    fn no_node_is_sent_to_one_that_gets_the_blob_through_it() {
        // n1 was sent to n2 (which has it no longer, say), n3 to n1: n2
        // asking must not go to n1 or n3, which wait on it.
        let h = Holders::default();
        let addr = |i: u8| SocketAddr::from(([10, 0, 0, i], 4244));
        h.record("d", "n2", addr(2), None);
        h.record("d", "n1", addr(1), Some("n2"));
        h.record("d", "n3", addr(3), Some("n1"));
        h.forget("d", "n2", false);
        assert_eq!(h.pick("d", "n2", |_| true), None);
        h.record("d", "n4", addr(4), None);
        assert_eq!(h.pick("d", "n2", |_| true).unwrap().0, "n4");
        // A loop in the records (never made, but bounded all the same).
        h.record("d", "n5", addr(5), Some("n6"));
        h.record("d", "n6", addr(6), Some("n5"));
        assert_eq!(h.pick("d", "n2", |n| n == "n5" || n == "n6"), None);
        // n3 asks the managers directly: n1, which it was sent to,
        // failed it, and is forgotten with it.
        h.forget("d", "n3", true);
        let left: Vec<String> = h.0.lock().unwrap()["d"]
            .iter()
            .map(|x| x.node.clone())
            .collect();
        assert_eq!(left, ["n4", "n5", "n6"]);
    }
}
