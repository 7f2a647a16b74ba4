//! Failed joins by client address, and the wait each address must keep
//! before it may try again: a few mistakes are free, then the wait doubles
//! with each failure up to a minute. An address that guesses tokens gets
//! one guess a minute instead of thousands a second; a node with the right
//! token is never slowed by someone else's guesses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures before any wait.
const FREE: u32 = 5;
/// The first wait after the free ones.
const FIRST: Duration = Duration::from_millis(250);
/// The longest wait.
const MAX: Duration = Duration::from_secs(60);
/// An address unseen this long is forgotten.
const FORGET: Duration = Duration::from_secs(15 * 60);
/// Addresses tracked at most (the oldest are forgotten past it).
const TRACKED: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Strikes {
    failures: u32,
    /// No try before this.
    until: Instant,
    last: Instant,
}

/// Join failures by client (IPv6 clients by their /64, which one host
/// usually holds whole).
#[derive(Default)]
pub(crate) struct JoinLimiter {
    by: Mutex<HashMap<IpAddr, Strikes>>,
}

fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// The wait after `failures` failures.
fn backoff(failures: u32) -> Duration {
    match failures.checked_sub(FREE + 1) {
        None => Duration::ZERO,
        Some(n) => FIRST.saturating_mul(1u32 << n.min(16)).min(MAX),
    }
}

impl JoinLimiter {
    /// How long `ip` must still wait before it may try, if at all.
    pub(crate) fn wait(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let by = self.by.lock().expect("limiter lock");
        let s = by.get(&key(ip))?;
        (s.until > now).then(|| s.until - now)
    }

    /// Records a failed join from `ip`.
    pub(crate) fn failed(&self, ip: IpAddr, now: Instant) {
        let mut by = self.by.lock().expect("limiter lock");
        if by.len() >= TRACKED {
            by.retain(|_, s| now.duration_since(s.last) < FORGET);
            if by.len() >= TRACKED {
                // Still full: forget the address seen longest ago.
                if let Some(oldest) = by.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| *k) {
                    by.remove(&oldest);
                }
            }
        }
        let s = by.entry(key(ip)).or_insert(Strikes {
            failures: 0,
            until: now,
            last: now,
        });
        if now.duration_since(s.last) >= FORGET {
            s.failures = 0;
        }
        s.failures = s.failures.saturating_add(1);
        s.last = now;
        s.until = now + backoff(s.failures);
    }

    /// A join from `ip` succeeded: its failures are forgotten.
    pub(crate) fn succeeded(&self, ip: IpAddr) {
        self.by.lock().expect("limiter lock").remove(&key(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_mistakes_are_free_then_the_wait_doubles_to_a_minute() {
        let l = JoinLimiter::default();
        let ip: IpAddr = "192.168.1.9".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..FREE {
            assert_eq!(l.wait(ip, t0), None);
            l.failed(ip, t0);
        }
        assert_eq!(l.wait(ip, t0), None, "{FREE} failures cost nothing");
        l.failed(ip, t0);
        assert_eq!(l.wait(ip, t0), Some(FIRST));
        l.failed(ip, t0);
        assert_eq!(l.wait(ip, t0), Some(FIRST * 2));
        for _ in 0..40 {
            l.failed(ip, t0);
        }
        assert_eq!(l.wait(ip, t0), Some(MAX));
        assert_eq!(l.wait(ip, t0 + MAX), None, "the wait ends");
        // Another address is not slowed; success forgets.
        assert_eq!(l.wait("192.168.1.10".parse().unwrap(), t0), None);
        l.succeeded(ip);
        assert_eq!(l.wait(ip, t0), None);
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_memory_is_bounded() {
        let l = JoinLimiter::default();
        let t0 = Instant::now();
        for i in 0..=FREE {
            l.failed(format!("2001:db8::{i:x}").parse().unwrap(), t0);
        }
        assert!(l.wait("2001:db8::ffff".parse().unwrap(), t0).is_some());
        for i in 0..(TRACKED as u32 + 50) {
            l.failed(IpAddr::V4(std::net::Ipv4Addr::from(i)), t0);
        }
        assert!(l.by.lock().unwrap().len() <= TRACKED);
    }
}
