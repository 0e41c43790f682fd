//! How a calling thread sleeps until the driver has news for it.
//!
//! The pattern is gVisor's: try the operation under the stack's lock; if it would block,
//! register a [`Waker`] with the smoltcp socket *while still holding the lock*, release
//! the lock, then sleep until woken, the deadline passes, or the stack stops. The driver
//! can only wake a registered waker after taking the same lock, so no wake-up is lost.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};
use std::thread::{self, Thread};
use std::time::Instant;

/// One blocked caller: a flag and the thread to unpark.
pub(crate) struct Waiter {
    signal: Arc<Signal>,
    waker: Waker,
}

struct Signal {
    woken: AtomicBool,
    thread: Thread,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

/// Why [`Waiter::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woke {
    /// The waker fired: try again.
    Notified,
    /// The deadline passed first.
    TimedOut,
}

impl Waiter {
    /// A waiter for the calling thread.
    pub(crate) fn new() -> Waiter {
        let signal = Arc::new(Signal {
            woken: AtomicBool::new(false),
            thread: thread::current(),
        });
        let waker = Waker::from(signal.clone());
        Waiter { signal, waker }
    }

    /// The waker to register with a socket (or with the stack, for stop).
    pub(crate) fn waker(&self) -> &Waker {
        &self.waker
    }

    /// Sleeps until woken or until `deadline`. Spurious unparks are absorbed.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> Woke {
        loop {
            if self.signal.woken.swap(false, Ordering::Acquire) {
                return Woke::Notified;
            }
            match deadline {
                None => thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Woke::TimedOut;
                    }
                    thread::park_timeout(deadline - now);
                }
            }
        }
    }
}

/// The calls blocked on one side of one connection (or on one listener). smoltcp holds a
/// single waker per socket direction; it holds this list's waker, which wakes every call
/// on the list, so two threads reading one connection, or a deadline moved by a third,
/// each reach every blocked call.
#[derive(Default)]
pub(crate) struct WaitList {
    wakers: Mutex<Vec<Waker>>,
}

impl WaitList {
    pub(crate) fn new() -> Arc<WaitList> {
        Arc::new(WaitList::default())
    }

    /// Adds a blocked call's waker (once, however often it tries again).
    pub(crate) fn add(&self, waker: &Waker) {
        let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }

    /// Wakes and forgets every waiting call; each re-registers if it blocks again. On a
    /// thread that is [`Deferred`], the wake-ups wait until it lets the lock go.
    pub(crate) fn wake_all(&self) {
        let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|e| e.into_inner()));
        if wakers.is_empty() {
            return;
        }
        let wakers = DEFERRED.with_borrow_mut(|deferred| match deferred {
            Some(later) => {
                later.extend(wakers);
                None
            }
            None => Some(wakers),
        });
        for waker in wakers.into_iter().flatten() {
            waker.wake();
        }
    }
}

thread_local! {
    /// Wake-ups held back on this thread, while it holds the stack's lock.
    static DEFERRED: RefCell<Option<Vec<Waker>>> = const { RefCell::new(None) };
}

/// Holds back the wake-ups [`WaitList::wake_all`] makes on this thread until
/// [`Deferred::wake`]: the driver wakes blocked calls after it lets the lock go, so a
/// woken call does not at once sleep again, waiting for that lock.
pub(crate) struct Deferred(());

impl Deferred {
    pub(crate) fn start() -> Deferred {
        DEFERRED.with_borrow_mut(|d| d.get_or_insert_with(Vec::new).clear());
        Deferred(())
    }

    /// Makes the held-back wake-ups, and stops holding them back.
    pub(crate) fn wake(self) {}
}

impl Drop for Deferred {
    fn drop(&mut self) {
        let wakers = DEFERRED.with_borrow_mut(|d| d.take()).unwrap_or_default();
        for waker in wakers {
            waker.wake();
        }
    }
}

impl Wake for WaitList {
    fn wake(self: Arc<Self>) {
        self.wake_all();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_wake_before_the_wait_is_not_lost() {
        let waiter = Waiter::new();
        waiter.waker().wake_by_ref();
        assert_eq!(waiter.wait(Some(Instant::now())), Woke::Notified);
    }

    #[test]
    fn wakes_from_another_thread_and_times_out_alone() {
        let waiter = Waiter::new();
        let waker = waiter.waker().clone();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            waker.wake();
        });
        let start = Instant::now();
        assert_eq!(
            waiter.wait(Some(start + Duration::from_secs(5))),
            Woke::Notified
        );
        t.join().unwrap();
        let start = Instant::now();
        assert_eq!(
            waiter.wait(Some(start + Duration::from_millis(30))),
            Woke::TimedOut
        );
        assert!(start.elapsed() >= Duration::from_millis(30));
    }
}
