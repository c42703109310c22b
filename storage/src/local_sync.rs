//! Runtime-agnostic async primitives for one thread: a fair mutex, a
//! notification, a count of slots and a bounded join. The log uses them so
//! it runs on glommio and on the test executor alike.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct MutexState {
    next_ticket: u64,
    serving: u64,
    wakers: BTreeMap<u64, Waker>,
    /// Tickets whose futures were dropped before their turn.
    abandoned: BTreeSet<u64>,
}

impl MutexState {
    /// Passes the lock to the next live ticket and wakes it.
    fn advance(&mut self) {
        self.serving += 1;
        while self.abandoned.remove(&self.serving) {
            self.serving += 1;
        }
        if let Some(waker) = self.wakers.remove(&self.serving) {
            waker.wake();
        }
    }
}

/// A FIFO async mutex for tasks on one thread. Waiters are served in the
/// order they asked; a waiter that gives up (its future dropped) is skipped.
#[derive(Clone, Default)]
pub struct LocalMutex {
    state: Rc<RefCell<MutexState>>,
}

impl LocalMutex {
    /// Whether anyone else (a clone, a holder, a waiter) has this mutex.
    pub fn is_shared(&self) -> bool {
        Rc::strong_count(&self.state) > 1
    }
}

pub struct LocalMutexGuard {
    state: Rc<RefCell<MutexState>>,
}

impl Drop for LocalMutexGuard {
    fn drop(&mut self) {
        self.state.borrow_mut().advance();
    }
}

struct LockFuture {
    state: Rc<RefCell<MutexState>>,
    ticket: u64,
    acquired: bool,
}

impl Future for LockFuture {
    type Output = LocalMutexGuard;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<LocalMutexGuard> {
        let ticket = self.ticket;
        let mut st = self.state.borrow_mut();
        if st.serving == ticket {
            st.wakers.remove(&ticket);
            drop(st);
            self.acquired = true;
            return Poll::Ready(LocalMutexGuard {
                state: self.state.clone(),
            });
        }
        st.wakers.insert(ticket, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for LockFuture {
    fn drop(&mut self) {
        if self.acquired {
            return;
        }
        let mut st = self.state.borrow_mut();
        st.wakers.remove(&self.ticket);
        if st.serving == self.ticket {
            // Our turn came but we never took it: pass it on.
            st.advance();
        } else {
            st.abandoned.insert(self.ticket);
        }
    }
}

impl LocalMutex {
    pub fn new() -> LocalMutex {
        LocalMutex::default()
    }

    pub async fn lock(&self) -> LocalMutexGuard {
        let ticket = {
            let mut st = self.state.borrow_mut();
            let t = st.next_ticket;
            st.next_ticket += 1;
            t
        };
        LockFuture {
            state: self.state.clone(),
            ticket,
            acquired: false,
        }
        .await
    }

    pub fn is_locked(&self) -> bool {
        let st = self.state.borrow();
        st.serving != st.next_ticket
    }
}

#[derive(Default)]
struct NotifyState {
    generation: u64,
    wakers: Vec<Waker>,
}

/// Wakes every task listening when something happens. A listener created
/// before a `notify_all` completes; one created after waits for the next.
#[derive(Default)]
pub struct LocalNotify {
    state: RefCell<NotifyState>,
}

impl LocalNotify {
    pub fn notify_all(&self) {
        let wakers = {
            let mut st = self.state.borrow_mut();
            st.generation += 1;
            std::mem::take(&mut st.wakers)
        };
        for w in wakers {
            w.wake();
        }
    }

    pub fn listen(&self) -> impl Future<Output = ()> + '_ {
        let seen = self.state.borrow().generation;
        poll_fn(move |cx| {
            let mut st = self.state.borrow_mut();
            if st.generation != seen {
                return Poll::Ready(());
            }
            if !st.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                st.wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

/// A count of slots shared by tasks on one thread: at most `total` holders
/// at once, the others waiting. The log's writes take one each, so the
/// writes ahead of a sync and the sync's own share one depth at the device.
pub struct Slots {
    free: std::cell::Cell<usize>,
    released: LocalNotify,
}

/// One slot, given back on drop.
pub struct SlotGuard<'a> {
    slots: &'a Slots,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.slots.free.set(self.slots.free.get() + 1);
        self.slots.released.notify_all();
    }
}

impl Slots {
    pub fn new(total: usize) -> Slots {
        assert!(total > 0);
        Slots {
            free: std::cell::Cell::new(total),
            released: LocalNotify::default(),
        }
    }

    pub async fn acquire(&self) -> SlotGuard<'_> {
        loop {
            let released = self.released.listen();
            if self.free.get() > 0 {
                self.free.set(self.free.get() - 1);
                return SlotGuard { slots: self };
            }
            released.await;
        }
    }
}

/// Runs all `futures` with at most `in_flight_max` polled at once; returns
/// their outputs in order.
pub async fn join_bounded<F: Future>(futures: Vec<F>, in_flight_max: usize) -> Vec<F::Output> {
    assert!(in_flight_max > 0);
    let count = futures.len();
    let mut pending: Vec<Option<Pin<Box<F>>>> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = (0..count).map(|_| None).collect();
    let mut done = 0usize;
    poll_fn(|cx| {
        // Poll the earliest unfinished futures, up to the in-flight limit.
        let mut polled = 0usize;
        let mut finished_now = 0usize;
        for i in 0..count {
            if polled == in_flight_max {
                break;
            }
            let Some(fut) = pending[i].as_mut() else {
                continue;
            };
            polled += 1;
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                outputs[i] = Some(out);
                pending[i] = None;
                done += 1;
                finished_now += 1;
            }
        }
        if done == count {
            return Poll::Ready(());
        }
        if finished_now > 0 && polled == in_flight_max {
            // Slots freed during this pass while futures past the window
            // wait unpolled: come back at once to start them.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::block_on;
    use std::cell::Cell;

    #[test]
    fn mutex_serves_in_order_and_skips_abandoned_waiters() {
        let m = LocalMutex::new();
        block_on(async {
            let g = m.lock().await;
            assert!(m.is_locked());
            let waiter = m.lock();
            drop(waiter); // never polled: abandoned
            drop(g);
            let g2 = m.lock().await;
            drop(g2);
            assert!(!m.is_locked());
        });
    }

    #[test]
    fn notify_wakes_listeners_created_before_it() {
        let n = LocalNotify::default();
        let early = n.listen();
        n.notify_all();
        block_on(early);
        let mut late = Box::pin(n.listen());
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(late.as_mut().poll(&mut cx).is_pending());
        n.notify_all();
        assert!(late.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn slots_hold_back_the_holder_past_the_count_until_one_is_given_back() {
        let slots = Slots::new(2);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        block_on(async {
            let a = slots.acquire().await;
            let _b = slots.acquire().await;
            let mut third = Box::pin(slots.acquire());
            assert!(third.as_mut().poll(&mut cx).is_pending());
            drop(a);
            assert!(third.as_mut().poll(&mut cx).is_ready());
        });
    }

    #[test]
    fn join_bounded_keeps_order_and_limit() {
        let running = Rc::new(Cell::new(0usize));
        let peak = Rc::new(Cell::new(0usize));
        let futures: Vec<_> = (0..10)
            .map(|i| {
                let running = running.clone();
                let peak = peak.clone();
                async move {
                    running.set(running.get() + 1);
                    peak.set(peak.get().max(running.get()));
                    // Yield once so several are in flight together.
                    let mut yielded = false;
                    poll_fn(|cx| {
                        if yielded {
                            Poll::Ready(())
                        } else {
                            yielded = true;
                            cx.waker().wake_by_ref();
                            Poll::Pending
                        }
                    })
                    .await;
                    running.set(running.get() - 1);
                    i * 2
                }
            })
            .collect();
        let out = block_on(join_bounded(futures, 3));
        assert_eq!(out, (0..10).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(peak.get(), 3);
    }
}
