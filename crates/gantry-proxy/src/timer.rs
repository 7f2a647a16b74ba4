//! A coarse timer for the deadlines every request sets (reading a request
//! head, waiting for a backend's answer). These are seconds long and
//! almost never pass, so they need no precision: a [`Deadline`] is a slot
//! in a list that one ticker task looks over every [`TICK`]. A connection
//! keeps one deadline and moves it for each request: no allocation, lock
//! or system call per request.
//!
//! tokio's own timer wakes its driver through an eventfd whenever a new
//! deadline comes before the one it sleeps to, which on a proxy under
//! load was one `write` system call a request.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;

/// How late a deadline may be noticed.
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// A slot's deadline when it has none.
const UNSET: u64 = u64::MAX;
/// A slot's deadline once the ticker saw it pass.
const PASSED: u64 = 0;

/// The timer: cheap to clone, shared by a proxy's connections.
#[derive(Clone)]
pub(crate) struct Coarse(Arc<Inner>);

struct Inner {
    /// Deadlines are kept as milliseconds from here.
    epoch: Instant,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The slots of live deadlines; one only held here is gone.
    slots: Vec<Arc<Slot>>,
    /// The ticker task runs (it stops when no slot is left).
    ticking: bool,
}

struct Slot {
    /// Milliseconds from the epoch, or [`UNSET`] or [`PASSED`].
    at: AtomicU64,
    waker: AtomicWaker,
}

impl Default for Coarse {
    fn default() -> Self {
        Self(Arc::new(Inner {
            epoch: Instant::now(),
            state: Mutex::new(State::default()),
        }))
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        // At least 1: 0 is PASSED.
        (self.epoch.elapsed().as_millis() as u64).max(1)
    }
}

impl Coarse {
    /// A deadline of this timer, not set yet.
    pub(crate) fn deadline(&self) -> Deadline {
        Deadline {
            timer: self.clone(),
            slot: Arc::new(Slot {
                at: AtomicU64::new(UNSET),
                waker: AtomicWaker::new(),
            }),
            listed: false,
        }
    }

    fn list(&self, slot: Arc<Slot>) {
        let mut st = self.0.state.lock().expect("timer lock");
        st.slots.push(slot);
        if !st.ticking {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    st.ticking = true;
                    rt.spawn(tick(Arc::downgrade(&self.0)));
                }
                Err(_) => tracing::error!("coarse timer used outside a tokio runtime"),
            }
        }
    }
}

/// Wakes the deadlines that passed, every [`TICK`], while any is listed.
async fn tick(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(TICK).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let now = inner.now_ms();
        let mut st = inner.state.lock().expect("timer lock");
        st.slots.retain(|s| {
            if Arc::strong_count(s) == 1 {
                return false; // its deadline is gone
            }
            let at = s.at.load(Ordering::Acquire);
            if at != UNSET && at != PASSED && at <= now {
                s.at.store(PASSED, Ordering::Release);
                s.waker.wake();
            }
            true
        });
        if st.slots.is_empty() {
            st.ticking = false;
            return;
        }
    }
}

/// A point in time that can be moved, and awaited (as a future it is
/// done once the point has passed, up to [`TICK`] late).
pub(crate) struct Deadline {
    timer: Coarse,
    slot: Arc<Slot>,
    /// In the timer's list (from its first wait on).
    listed: bool,
}

impl Deadline {
    /// Sets it `d` from now.
    pub(crate) fn set(&mut self, d: Duration) {
        let at = self.timer.0.now_ms().saturating_add(d.as_millis() as u64);
        self.slot.at.store(at, Ordering::Release);
    }

    /// Sets it at `when`.
    fn set_at(&mut self, when: Instant) {
        let at = when
            .saturating_duration_since(self.timer.0.epoch)
            .as_millis() as u64;
        self.slot.at.store(at.max(1), Ordering::Release);
    }

    /// `f`, or `None` if the deadline passes first.
    pub(crate) fn within<F: Future>(&mut self, f: F) -> Within<'_, F> {
        Within { f, deadline: self }
    }

    /// Done once the ticker saw the deadline pass (no clock read here:
    /// this runs on every wait of every request).
    fn poll_passed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.slot.at.load(Ordering::Acquire) {
            UNSET => return Poll::Pending,
            PASSED => return Poll::Ready(()),
            _ => {}
        }
        self.slot.waker.register(cx.waker());
        if !self.listed {
            self.listed = true;
            self.timer.list(self.slot.clone());
        }
        // The ticker may have passed it between the load and the register.
        if self.slot.at.load(Ordering::Acquire) == PASSED {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_passed(cx)
    }
}

pin_project_lite::pin_project! {
    /// A future with a deadline: its output, or `None` once the deadline
    /// passed. A struct rather than an `async fn`, so as not to hold the
    /// future twice (it is nested in every request's future).
    pub(crate) struct Within<'d, F> {
        #[pin]
        f: F,
        deadline: &'d mut Deadline,
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.f.poll(cx) {
            return Poll::Ready(Some(out));
        }
        this.deadline.poll_passed(cx).map(|()| None)
    }
}

impl hyper::rt::Sleep for Deadline {}

impl hyper::rt::Timer for Coarse {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let mut d = self.deadline();
        d.set(duration);
        Box::pin(d)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let mut d = self.deadline();
        d.set_at(deadline);
        Box::pin(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deadlines_pass_late_by_at_most_a_tick_and_move() {
        let t = Coarse::default();
        let mut d = t.deadline();
        let t0 = Instant::now();
        d.set(Duration::from_millis(150));
        (&mut d).await;
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(150), "{took:?}");
        assert!(took < Duration::from_millis(150) + TICK * 3, "{took:?}");

        // Moved, the same deadline serves again.
        d.set(Duration::from_secs(5));
        assert_eq!(d.within(async { 7 }).await, Some(7));
        d.set(Duration::from_millis(50));
        let slow = tokio::time::sleep(Duration::from_secs(5));
        assert_eq!(d.within(slow).await, None);
        d.set(Duration::from_secs(60));
        let mut w = Box::pin(d.within(std::future::pending::<()>()));
        assert!(futures::poll!(w.as_mut()).is_pending());
        drop(w);

        // A deadline dropped leaves the list at the next tick, and the
        // ticker stops when none is left.
        drop(d);
        tokio::time::sleep(TICK * 3).await;
        let st = t.0.state.lock().unwrap();
        assert!(st.slots.is_empty());
        assert!(!st.ticking);
    }

    #[tokio::test]
    async fn hyper_sleeps() {
        let t = Coarse::default();
        let t0 = Instant::now();
        hyper::rt::Timer::sleep(&t, Duration::from_millis(120)).await;
        assert!(t0.elapsed() >= Duration::from_millis(120));
        let t0 = Instant::now();
        hyper::rt::Timer::sleep_until(&t, t0 + Duration::from_millis(120)).await;
        assert!(t0.elapsed() >= Duration::from_millis(120));
    }
}
