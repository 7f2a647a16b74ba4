//! Learning that a task's container ended, at a cost per exit rather than
//! per container and tick: each container that is up has its monitor
//! process watched through a pidfd (readable once the process is gone,
//! whoever its parent is), and the agent reads the state of the containers
//! whose monitor ended. A slow full check backs it (a pid reused before
//! its pidfd was opened, a state the monitor left without exiting).
//!
//! Until this, the agent read every container's state file every 200 ms:
//! with a few hundred containers on a node that was most of its work, and
//! made each start slower the more containers the node already ran.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;

/// Between full checks of every container that is up.
pub(crate) const FULL_CHECK: Duration = Duration::from_secs(5);

/// The containers being watched, and the exits their watchers reported.
pub(crate) struct Exits {
    watched: BTreeMap<String, tokio::task::AbortHandle>,
    tx: mpsc::UnboundedSender<String>,
    rx: mpsc::UnboundedReceiver<String>,
    checked: Instant,
}

impl Exits {
    pub(crate) fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            watched: BTreeMap::new(),
            tx,
            rx,
            checked: Instant::now(),
        }
    }

    /// Watches the containers of `up` not yet watched (`monitor_of` gives
    /// a container's monitor pid: asked once per container), forgets those
    /// no longer up, and returns the containers whose state to read now:
    /// those whose monitor ended, or all of `up` when a full check is due.
    pub(crate) fn due(
        &mut self,
        up: &BTreeSet<String>,
        monitor_of: impl Fn(&str) -> Option<i32>,
    ) -> BTreeSet<String> {
        self.watched.retain(|cid, h| {
            let keep = up.contains(cid);
            if !keep {
                h.abort();
            }
            keep
        });
        let mut out = BTreeSet::new();
        for cid in up {
            if self.watched.contains_key(cid) {
                continue;
            }
            let Some(pid) = monitor_of(cid) else {
                out.insert(cid.clone()); // no monitor recorded: read it
                continue;
            };
            let (tx, id) = (self.tx.clone(), cid.clone());
            let h = tokio::spawn(async move {
                // An error (no such process, no pidfd) reads as an exit:
                // the state read then tells.
                let _ = exited(pid).await;
                let _ = tx.send(id);
            });
            self.watched.insert(cid.clone(), h.abort_handle());
        }
        while let Ok(cid) = self.rx.try_recv() {
            if up.contains(&cid) {
                out.insert(cid);
            }
        }
        if self.checked.elapsed() >= FULL_CHECK {
            self.checked = Instant::now();
            out.extend(up.iter().cloned());
        }
        out
    }
}

/// Returns once process `pid` has ended.
async fn exited(pid: i32) -> std::io::Result<()> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the OwnedFd is moved into the AsyncFd, which keeps it open
    // and unchanged until it is dropped.
    let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let _ready = fd.readable().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first containers reported due, within two seconds.
    async fn first_due(
        exits: &mut Exits,
        up: &BTreeSet<String>,
        pid: impl Fn(&str) -> Option<i32> + Copy,
    ) -> BTreeSet<String> {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let due = exits.due(up, pid);
            if !due.is_empty() {
                return due;
            }
        }
        BTreeSet::new()
    }

    #[tokio::test]
    async fn an_ended_process_is_reported_and_a_running_one_is_not() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut quick = std::process::Command::new("true").spawn().unwrap();
        let mut exits = Exits::new();
        let pids: BTreeMap<String, i32> = [
            ("long".to_owned(), child.id() as i32),
            ("quick".to_owned(), quick.id() as i32),
        ]
        .into();
        let pid = |c: &str| pids.get(c).copied();
        let up: BTreeSet<String> = pids.keys().cloned().collect();
        assert!(exits.due(&up, pid).is_empty());
        quick.wait().unwrap();
        let seen = first_due(&mut exits, &up, pid).await;
        assert_eq!(seen, BTreeSet::from(["quick".to_owned()]));
        // A container no longer up is forgotten; its watcher is dropped.
        let up = BTreeSet::from(["long".to_owned()]);
        assert!(exits.due(&up, pid).is_empty());
        assert_eq!(exits.watched.len(), 1);
        child.kill().unwrap();
        child.wait().unwrap();
        let seen = first_due(&mut exits, &up, pid).await;
        assert_eq!(seen, BTreeSet::from(["long".to_owned()]));
    }
}
