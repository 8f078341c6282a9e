//! Deadlines kept by the reactor: the poll timeout is always the next deadline.
//!
//! [`ReactorTimer`] implements [`hyper::rt::Timer`], which switches on hyper's own HTTP/1
//! header-read timeout and HTTP/2 keep-alive pings, and [`Deadline`] is the future that
//! portcullis' own timeouts (handshake, drain, ...) are built from.

use std::cell::Cell;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::task::RunQueue;

/// The time every deadline is measured on: the system's monotonic clock, or a manual one
/// that moves only when told to, so that a recorded input (a fuzz case) replays exactly.
#[derive(Clone, Default)]
pub(crate) struct Clock {
    manual: Option<Arc<ManualClock>>,
}

/// The hands of a manual [`Clock`].
pub(crate) struct ManualClock {
    start: Instant,
    elapsed_nanos: AtomicU64,
}

impl Clock {
    /// A clock that moves only by [`ManualClock::advance`].
    #[cfg_attr(not(feature = "fuzzing"), allow(dead_code))]
    pub(crate) fn manual() -> (Clock, Arc<ManualClock>) {
        let hands = Arc::new(ManualClock {
            start: Instant::now(),
            elapsed_nanos: AtomicU64::new(0),
        });
        let clock = Clock {
            manual: Some(hands.clone()),
        };
        (clock, hands)
    }

    /// The current instant; while the reactor polls its tasks, the instant that polling
    /// began ([`TurnTime`]).
    pub(crate) fn now(&self) -> Instant {
        match &self.manual {
            None => TURN_NOW.with(Cell::get).unwrap_or_else(Instant::now),
            Some(hands) => hands.now(),
        }
    }
}

thread_local! {
    /// Set while this thread's reactor polls its tasks: see [`TurnTime`].
    static TURN_NOW: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// While it lives, [`Clock::now`] on this thread answers the instant it was made rather
/// than reading the clock. The reactor holds one while it polls its tasks: a request's
/// deadlines (hyper's header timeout, the connection's idle and rate watches) read the
/// clock several times per request, and one reading per turn serves them all; a turn is
/// short (every task poll has a budget, `coop`), and deadlines are whole milliseconds at
/// the least. Handlers never run inside a task poll, so they see the real clock.
pub(crate) struct TurnTime(());

impl TurnTime {
    pub(crate) fn start(now: Instant) -> TurnTime {
        TURN_NOW.with(|cell| cell.set(Some(now)));
        TurnTime(())
    }
}

impl Drop for TurnTime {
    fn drop(&mut self) {
        TURN_NOW.with(|cell| cell.set(None));
    }
}

impl ManualClock {
    fn now(&self) -> Instant {
        self.start + Duration::from_nanos(self.elapsed_nanos.load(Ordering::Acquire))
    }

    /// Moves the clock forward.
    #[cfg_attr(not(feature = "fuzzing"), allow(dead_code))]
    pub(crate) fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.elapsed_nanos.fetch_add(nanos, Ordering::AcqRel);
    }
}

/// Key of one registered deadline: its place in the queue's table, and which use of that
/// place it is (a place freed and taken again gets the next generation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TimerKey {
    index: u32,
    generation: u32,
}

/// All pending deadlines of one reactor.
///
/// Most deadlines never fire: hyper's header timeout starts when a keep-alive connection
/// waits for its next request and is dropped when the request comes, so every request
/// registers one and cancels it. Registering pushes onto a binary heap (O(log n), in
/// practice a comparison or two: new deadlines are late ones); cancelling only frees the
/// deadline's place in a table, and the heap forgets it when it surfaces, or in a sweep
/// once forgotten entries outnumber live ones (amortized O(1) per cancel). A `BTreeMap`
/// before this cost a node rebalance and its memmoves on both ends of every request.
pub(crate) struct TimerQueue {
    state: Mutex<TimerState>,
    run_queue: Arc<RunQueue>,
    clock: Clock,
}

/// A place in the table: the waker of the deadline registered there, `None` when free.
struct Entry {
    generation: u32,
    waker: Option<Waker>,
}

/// A heap item: when, and the place (with its generation) it was registered at. Ordered
/// earliest first.
type HeapItem = std::cmp::Reverse<(Instant, u32, u32)>;

struct TimerState {
    entries: Vec<Entry>,
    /// Free places in `entries`.
    free: Vec<u32>,
    /// Every registered deadline, and cancelled ones not yet forgotten.
    heap: BinaryHeap<HeapItem>,
    /// Places in use: the registered deadlines.
    live: usize,
}

/// Forgotten entries the heap may hold beyond twice the live ones before a sweep.
const SWEEP_SLACK: usize = 256;

/// Whether the deadline registered at `index` in its `generation` is still pending.
fn is_live(entries: &[Entry], index: u32, generation: u32) -> bool {
    entries
        .get(index as usize)
        .is_some_and(|entry| entry.generation == generation && entry.waker.is_some())
}

impl TimerState {
    fn is_live(&self, index: u32, generation: u32) -> bool {
        is_live(&self.entries, index, generation)
    }

    /// Frees a place, giving back its waker.
    fn free(&mut self, index: u32) -> Option<Waker> {
        let entry = self.entries.get_mut(index as usize)?;
        let waker = entry.waker.take()?;
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(index);
        self.live -= 1;
        Some(waker)
    }

    /// The earliest live deadline, forgetting cancelled ones on top of the heap.
    fn earliest(&mut self) -> Option<Instant> {
        while let Some(&std::cmp::Reverse((at, index, generation))) = self.heap.peek() {
            if self.is_live(index, generation) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }
}

impl TimerQueue {
    pub(crate) fn new(run_queue: Arc<RunQueue>, clock: Clock) -> Arc<TimerQueue> {
        Arc::new(TimerQueue {
            state: Mutex::new(TimerState {
                entries: Vec::new(),
                free: Vec::new(),
                heap: BinaryHeap::new(),
                live: 0,
            }),
            run_queue,
            clock,
        })
    }

    /// The current instant on this queue's clock.
    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }

    /// The clock this queue's deadlines are measured on.
    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The earliest pending deadline.
    #[cfg_attr(not(feature = "fuzzing"), allow(dead_code))]
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.lock().earliest()
    }

    fn lock(&self) -> MutexGuard<'_, TimerState> {
        // A panic while holding this lock cannot leave the table inconsistent (every
        // change is a single step), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long the reactor may sleep before the next deadline, rounded up to whole
    /// milliseconds so that it never wakes a hair too early and spins.
    pub(crate) fn next_timeout(&self, now: Instant) -> Option<Duration> {
        let deadline = self.lock().earliest()?;
        let left = deadline.saturating_duration_since(now);
        let millis = left.as_micros().div_ceil(1000);
        Some(Duration::from_millis(millis as u64))
    }

    /// Wakes every deadline at or before `now`.
    pub(crate) fn fire_expired(&self, now: Instant) {
        // Called every turn, mostly with nothing expired: no allocation then.
        let mut expired = Vec::new();
        {
            let mut state = self.lock();
            while let Some(&std::cmp::Reverse((at, index, generation))) = state.heap.peek() {
                if at > now {
                    break;
                }
                state.heap.pop();
                if state.is_live(index, generation) {
                    expired.extend(state.free(index));
                }
            }
        }
        for waker in expired {
            waker.wake();
        }
    }

    fn register(&self, key: Option<TimerKey>, deadline: Instant, waker: &Waker) -> TimerKey {
        let mut state = self.lock();
        if let Some(key) = key {
            if state.is_live(key.index, key.generation) {
                if let Some(registered) = &mut state.entries[key.index as usize].waker {
                    if !registered.will_wake(waker) {
                        registered.clone_from(waker);
                    }
                }
                return key;
            }
        }
        let index = match state.free.pop() {
            Some(index) => index,
            None => {
                state.entries.push(Entry {
                    generation: 0,
                    waker: None,
                });
                // More than 4 billion deadlines at once cannot be: each belongs to a
                // connection or a request, and memory runs out long before.
                u32::try_from(state.entries.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let entry = &mut state.entries[index as usize];
        entry.waker = Some(waker.clone());
        let key = TimerKey {
            index,
            generation: entry.generation,
        };
        state.live += 1;
        state
            .heap
            .push(std::cmp::Reverse((deadline, index, key.generation)));
        // The top of the heap is never later than the deadline the reactor sleeps
        // towards (forgotten entries above the earliest live one are popped before it
        // sleeps), so only a new top can be earlier.
        let earliest =
            state.heap.peek() == Some(&std::cmp::Reverse((deadline, index, key.generation)));
        drop(state);
        if earliest {
            // The reactor may be asleep with a longer timeout.
            self.run_queue.notify();
        }
        key
    }

    fn cancel(&self, key: TimerKey) {
        let mut state = self.lock();
        if !state.is_live(key.index, key.generation) {
            return;
        }
        // Dropped after the lock: a waker's drop may run arbitrary code.
        let waker = state.free(key.index);
        if state.heap.len() > 2 * state.live + SWEEP_SLACK {
            let TimerState { entries, heap, .. } = &mut *state;
            heap.retain(|&std::cmp::Reverse((_, index, generation))| {
                is_live(entries, index, generation)
            });
        }
        drop(state);
        drop(waker);
    }
}

/// A future that completes at a fixed instant, woken by the reactor.
pub(crate) struct Deadline {
    at: Instant,
    key: Option<TimerKey>,
    /// The waker registered with `key`.
    waker: Option<Waker>,
    queue: Arc<TimerQueue>,
}

impl Deadline {
    pub(crate) fn new(queue: &Arc<TimerQueue>, at: Instant) -> Deadline {
        Deadline {
            at,
            key: None,
            waker: None,
            queue: queue.clone(),
        }
    }

    /// When it fires.
    pub(crate) fn at(&self) -> Instant {
        self.at
    }

    /// The current instant on this deadline's clock.
    pub(crate) fn now(&self) -> Instant {
        self.queue.now()
    }

    /// Moves the deadline; the next poll registers the new instant.
    pub(crate) fn reset(&mut self, at: Instant) {
        if let Some(key) = self.key.take() {
            self.queue.cancel(key);
        }
        self.at = at;
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.queue.now() >= this.at {
            if let Some(key) = this.key.take() {
                this.queue.cancel(key);
            }
            return Poll::Ready(());
        }
        // Registered already, with this waker: nothing to do, and no lock to take (a
        // connection polls its deadline at every poll). Its entry cannot have fired
        // meanwhile: the queue fires a deadline only at an instant at or past it, and the
        // clock never goes back, so a fired deadline is `Ready` above.
        if this.key.is_some()
            && this
                .waker
                .as_ref()
                .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        this.key = Some(this.queue.register(this.key, this.at, cx.waker()));
        this.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.queue.cancel(key);
        }
    }
}

impl hyper::rt::Sleep for Deadline {}

/// hyper's view of the reactor's deadlines.
#[derive(Clone)]
pub(crate) struct ReactorTimer {
    queue: Arc<TimerQueue>,
}

impl ReactorTimer {
    pub(crate) fn new(queue: Arc<TimerQueue>) -> ReactorTimer {
        ReactorTimer { queue }
    }

    /// A deadline `after` from now.
    pub(crate) fn deadline_in(&self, after: Duration) -> Deadline {
        Deadline::new(&self.queue, self.queue.now() + after)
    }

    /// The current instant on the reactor's clock.
    pub(crate) fn now(&self) -> Instant {
        self.queue.now()
    }
}

impl hyper::rt::Timer for ReactorTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.deadline_in(duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Deadline::new(&self.queue, deadline))
    }

    fn now(&self) -> Instant {
        self.queue.now()
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<Deadline>() {
            Some(deadline) => deadline.get_mut().reset(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// Runs `future` until it completes or `deadline` passes, whichever is first.
pub(crate) async fn with_deadline<F: Future>(deadline: Deadline, future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut deadline = std::pin::pin!(deadline);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        deadline.as_mut().poll(cx).map(|()| None)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn queue() -> Arc<TimerQueue> {
        let poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).unwrap();
        TimerQueue::new(RunQueue::new(waker), Clock::default())
    }

    #[test]
    fn next_timeout_is_the_earliest_deadline_and_fires_in_order() {
        let queue = queue();
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let now = Instant::now();
        let mut late = Deadline::new(&queue, now + Duration::from_secs(60));
        let mut soon = Deadline::new(&queue, now + Duration::from_millis(30));
        assert!(Pin::new(&mut late).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut soon).poll(&mut cx).is_pending());
        let timeout = queue.next_timeout(now).unwrap();
        assert!(timeout >= Duration::from_millis(30) && timeout <= Duration::from_millis(31));
        queue.fire_expired(now + Duration::from_millis(31));
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        drop(late);
        assert_eq!(
            queue.next_timeout(now),
            None,
            "a dropped deadline is forgotten"
        );
    }

    #[test]
    fn cancelled_deadlines_never_fire_and_are_forgotten() {
        let queue = queue();
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let now = Instant::now();
        let mut kept = Deadline::new(&queue, now + Duration::from_secs(30));
        assert!(Pin::new(&mut kept).poll(&mut cx).is_pending());
        // As hyper's header timeout does: one deadline registered and dropped per request.
        for i in 0..10_000u64 {
            let mut header = Deadline::new(&queue, now + Duration::from_millis(10 + i % 7));
            assert!(Pin::new(&mut header).poll(&mut cx).is_pending());
        }
        {
            let state = queue.lock();
            assert_eq!(state.live, 1);
            assert!(
                state.heap.len() <= 2 * state.live + SWEEP_SLACK + 1,
                "cancelled entries are swept: {} in the heap",
                state.heap.len()
            );
            assert!(state.entries.len() <= 2, "places are reused");
        }
        assert_eq!(queue.next_deadline(), Some(now + Duration::from_secs(30)));
        queue.fire_expired(now + Duration::from_secs(29));
        assert_eq!(counter.0.load(Ordering::SeqCst), 0, "none of them fired");
        queue.fire_expired(now + Duration::from_secs(30));
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(queue.next_deadline(), None);
    }

    #[test]
    fn a_stale_key_does_not_touch_the_deadline_that_reused_its_place() {
        let queue = queue();
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let now = Instant::now();
        let old = queue.register(None, now + Duration::from_millis(5), &waker);
        queue.cancel(old);
        let new = queue.register(None, now + Duration::from_millis(50), &waker);
        assert_eq!(new.index, old.index, "the freed place is taken again");
        queue.cancel(old);
        assert_eq!(queue.register(Some(old), now, &waker), {
            // A stale key registers afresh rather than taking over the new deadline.
            TimerKey {
                index: 1,
                generation: 0,
            }
        });
        queue.fire_expired(now + Duration::from_millis(10));
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "only the fresh one at `now`"
        );
        assert_eq!(queue.next_deadline(), Some(now + Duration::from_millis(50)));
        queue.fire_expired(now + Duration::from_millis(50));
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn reset_moves_a_deadline() {
        let queue = queue();
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let now = Instant::now();
        let mut deadline = Deadline::new(&queue, now + Duration::from_secs(60));
        assert!(Pin::new(&mut deadline).poll(&mut cx).is_pending());
        deadline.reset(now);
        assert!(Pin::new(&mut deadline).poll(&mut cx).is_ready());
        assert_eq!(queue.next_timeout(now), None);
    }
}
