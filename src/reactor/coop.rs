//! The per-poll work budget (tokio's cooperative budget is the model).
//!
//! mio is edge-triggered and hyper and h2 keep processing until their transport says
//! `Pending`, so a client that always has bytes waiting (a flood of HTTP/2 PING, PRIORITY
//! or WINDOW_UPDATE frames, pipelined HTTP/1 requests) would keep its task inside one poll
//! for as long as it keeps sending. The executor gives every task poll a budget
//! ([`reset`]); reading from the socket and starting a request spend it, and once it is
//! spent the transport answers `Pending` and the executor puts the task at the back of the
//! run queue, behind the tasks that the next look at the sockets makes ready.
//!
//! The budget is a thread-local counter: spending it costs no system call and no
//! allocation, and outside a task poll (unit tests) it is effectively unlimited.

use std::cell::Cell;
use std::task::{Context, Poll};

/// Bytes of peer input one task poll may read (TLS plaintext or plain TCP bytes). At most
/// a few thousand small HTTP/2 frames (a PING is 17 bytes), which h2 processes in well
/// under a millisecond, and two full TLS records, so a bulk upload still reads in large
/// chunks.
pub(crate) const READ_BUDGET: usize = 64 * 1024;

/// What starting a request costs, in budget bytes: a poll starts at most 16 requests
/// (pipelined HTTP/1 requests already in hyper's buffer cost no read).
pub(crate) const REQUEST_COST: usize = READ_BUDGET / 16;

thread_local! {
    static LEFT: Cell<usize> = const { Cell::new(usize::MAX) };
    /// Set when the current poll ran out of budget and returned `Pending` because of it.
    static YIELDED: Cell<bool> = const { Cell::new(false) };
}

/// A task poll begins: the full budget again.
#[inline]
pub(crate) fn reset() {
    LEFT.with(|left| left.set(READ_BUDGET));
    YIELDED.with(|yielded| yielded.set(false));
}

/// Whether the poll that just ended gave up because its budget was spent: the executor
/// then polls the task again only after it has looked at the sockets (the task is not
/// woken, which would let it run again before them).
#[inline]
pub(crate) fn take_yielded() -> bool {
    YIELDED.with(|yielded| yielded.replace(false))
}

/// Ready while budget is left; otherwise `Pending`, and the executor polls the task again
/// after the others ([`take_yielded`]). Outside the executor (budget never reset) it is
/// always ready.
#[inline]
pub(crate) fn poll_proceed(cx: &mut Context<'_>) -> Poll<()> {
    let _ = cx;
    if LEFT.with(Cell::get) == 0 {
        YIELDED.with(|yielded| yielded.set(true));
        return Poll::Pending;
    }
    Poll::Ready(())
}

/// Spends `amount` of the budget.
#[inline]
pub(crate) fn spend(amount: usize) {
    LEFT.with(|left| left.set(left.get().saturating_sub(amount)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn a_spent_budget_is_pending_and_marks_the_poll_yielded() {
        let mut cx = Context::from_waker(Waker::noop());
        reset();
        assert!(poll_proceed(&mut cx).is_ready());
        spend(READ_BUDGET - 1);
        assert!(poll_proceed(&mut cx).is_ready());
        assert!(!take_yielded());
        spend(10);
        assert!(poll_proceed(&mut cx).is_pending());
        assert!(take_yielded());
        assert!(!take_yielded());
        reset();
        assert!(poll_proceed(&mut cx).is_ready());
    }
}
