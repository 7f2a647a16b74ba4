//! A linearizability checker for a register, in the manner of Knossos and
//! Porcupine (Wing and Gong's search, with a cache of visited states as
//! Lowe's): is there one order of the operations, each taking effect
//! at some instant between its call and its answer, in which every read
//! returns the last value written?
//!
//! Written values are unique. A write whose outcome is unknown (an error
//! that does not say it was not applied, a timeout) has no answer: it may
//! take effect at any instant after its call, or never.

use std::collections::HashSet;

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Wrote this value.
    Write(String),
    /// Read this value (none: never written).
    Read(Option<String>),
}

/// One operation of the history.
#[derive(Debug, Clone)]
pub struct Event {
    /// Who called (for messages).
    pub client: usize,
    /// When it was called (any monotonic unit).
    pub call: u64,
    /// When it was answered; none for a write whose outcome is unknown.
    pub ret: Option<u64>,
    /// What it did.
    pub op: Op,
}

/// The search's position: which operations took effect, and the value.
#[derive(Hash, PartialEq, Eq)]
struct Key {
    done: Vec<u64>,
    value: Option<String>,
}

/// Checks that `history` is linearizable for a register; the error says
/// how far an order could be found.
pub fn check_register(history: &[Event]) -> Result<(), String> {
    let n = history.len();
    let mut done = vec![false; n];
    let mut seen = HashSet::new();
    let mut best = 0;
    if search(history, &mut done, 0, None, &mut seen, &mut best) {
        Ok(())
    } else {
        Err(format!(
            "no linearization: at most {best} of {n} operations could be ordered; the history:\n{}",
            history
                .iter()
                .map(|e| format!(
                    "  client {} [{} .. {}] {:?}",
                    e.client,
                    e.call,
                    e.ret.map_or("?".to_owned(), |r| r.to_string()),
                    e.op
                ))
                .collect::<Vec<_>>()
                .join("\n")
        ))
    }
}

fn search(
    h: &[Event],
    done: &mut Vec<bool>,
    ndone: usize,
    value: Option<String>,
    seen: &mut HashSet<Key>,
    best: &mut usize,
) -> bool {
    *best = (*best).max(ndone);
    // Every operation with an answer has taken effect: the others are
    // writes of unknown outcome, which may never have.
    let open: Vec<usize> = (0..h.len()).filter(|i| !done[*i]).collect();
    if open.iter().all(|i| h[*i].ret.is_none()) {
        return true;
    }
    // Whatever comes next was called before the first answer of those
    // left (that one cannot come after an operation called later).
    let horizon = open
        .iter()
        .filter_map(|i| h[*i].ret)
        .min()
        .unwrap_or(u64::MAX);
    for &i in &open {
        if h[i].call > horizon {
            continue;
        }
        let next = match &h[i].op {
            Op::Write(v) => Some(v.clone()),
            Op::Read(r) if *r == value => value.clone(),
            Op::Read(_) => continue,
        };
        done[i] = true;
        let key = Key {
            done: pack(done),
            value: next.clone(),
        };
        if seen.insert(key) && search(h, done, ndone + 1, next, seen, best) {
            return true;
        }
        done[i] = false;
    }
    false
}

fn pack(done: &[bool]) -> Vec<u64> {
    let mut out = vec![0u64; done.len().div_ceil(64)];
    for (i, d) in done.iter().enumerate() {
        if *d {
            out[i / 64] |= 1 << (i % 64);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(client: usize, call: u64, ret: Option<u64>, v: &str) -> Event {
        Event {
            client,
            call,
            ret,
            op: Op::Write(v.into()),
        }
    }

    fn r(client: usize, call: u64, ret: u64, v: Option<&str>) -> Event {
        Event {
            client,
            call,
            ret: Some(ret),
            op: Op::Read(v.map(str::to_owned)),
        }
    }

    #[test]
    fn sequential_and_overlapping_histories_pass() {
        check_register(&[
            r(0, 0, 1, None),
            w(0, 2, Some(3), "a"),
            r(1, 4, 5, Some("a")),
        ])
        .unwrap();
        // A read overlapping a write may see either value.
        check_register(&[
            w(0, 0, Some(10), "a"),
            r(1, 1, 2, None),
            r(2, 3, 4, Some("a")),
        ])
        .unwrap();
        // Two overlapping writes, read in either order by later reads
        // that agree.
        check_register(&[
            w(0, 0, Some(5), "a"),
            w(1, 1, Some(6), "b"),
            r(2, 7, 8, Some("a")),
            r(2, 9, 10, Some("a")),
        ])
        .unwrap();
    }

    #[test]
    fn a_write_of_unknown_outcome_may_or_may_not_have_happened() {
        check_register(&[w(0, 0, None, "a"), r(1, 5, 6, Some("a"))]).unwrap();
        check_register(&[w(0, 0, None, "a"), r(1, 5, 6, None)]).unwrap();
    }

    #[test]
    fn stale_reads_and_lost_writes_fail() {
        // The write was acknowledged, then a read missed it: lost.
        assert!(check_register(&[w(0, 0, Some(1), "a"), r(1, 2, 3, None)]).is_err());
        // A read went back in time.
        assert!(check_register(&[
            w(0, 0, Some(1), "a"),
            w(0, 2, Some(3), "b"),
            r(1, 4, 5, Some("b")),
            r(2, 6, 7, Some("a")),
        ])
        .is_err());
        // Two readers saw the values of two writes in opposite orders,
        // after both were done.
        assert!(check_register(&[
            w(0, 0, Some(5), "a"),
            w(1, 0, Some(5), "b"),
            r(2, 6, 7, Some("a")),
            r(3, 8, 9, Some("b")),
            r(2, 10, 11, Some("a")),
        ])
        .is_err());
        // A value nobody wrote.
        assert!(check_register(&[r(0, 0, 1, Some("x"))]).is_err());
    }
}
