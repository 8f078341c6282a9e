//! The reactor's tiny executor: connection futures and hyper's HTTP/2 stream futures are
//! tasks, polled only on the reactor thread, woken from anywhere (worker threads included).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Wake, Waker};

use slab::Slab;

/// A task's future.
pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Tasks that want to be polled, and futures waiting to become tasks. Shared by the
/// reactor and every waker.
pub(crate) struct RunQueue {
    ready: Mutex<Vec<Arc<TaskId>>>,
    spawned: Mutex<Vec<BoxFuture>>,
    /// Set while the reactor is in (or about to enter) `poll`; wakes at other times need
    /// no system call, because the reactor looks at the queue before it sleeps.
    sleeping: AtomicBool,
    /// Set once a wake-up has been sent to the reactor's poll and not yet consumed, so
    /// that a burst of wakes costs one `eventfd` write.
    notified: AtomicBool,
    waker: mio::Waker,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing in this module panics while holding a lock; a poisoned one is still whole.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl RunQueue {
    pub(crate) fn new(waker: mio::Waker) -> Arc<RunQueue> {
        Arc::new(RunQueue {
            ready: Mutex::new(Vec::new()),
            spawned: Mutex::new(Vec::new()),
            sleeping: AtomicBool::new(false),
            notified: AtomicBool::new(false),
            waker,
        })
    }

    /// Makes the reactor's current or next `poll` return promptly. Callers have already
    /// published the work (queue push, timer insert) that the reactor should see.
    pub(crate) fn notify(&self) {
        // Pairs with the fence in `prepare_to_sleep`: either the reactor sees our work
        // there, or we see it sleeping here.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && !self.notified.swap(true, Ordering::AcqRel) {
            if let Err(error) = self.waker.wake() {
                tracing::error!(%error, "cannot wake the reactor");
            }
        }
    }

    /// Interrupts the reactor's `poll` unconditionally: for signals that `prepare_to_sleep`
    /// does not look at (shutdown).
    pub(crate) fn wake_now(&self) {
        self.notified.store(true, Ordering::Release);
        if let Err(error) = self.waker.wake() {
            tracing::error!(%error, "cannot wake the reactor");
        }
    }

    /// Called by the reactor just before `poll`: announces that it is going to sleep, then
    /// says whether work arrived meanwhile (then it must not sleep).
    pub(crate) fn prepare_to_sleep(&self) -> bool {
        self.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.has_work()
    }

    /// Called by the reactor right after its `poll` returns.
    pub(crate) fn clear_notified(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
        self.notified.store(false, Ordering::Release);
    }

    /// Queues a future to be run as a task on the reactor.
    pub(crate) fn spawn(&self, future: BoxFuture) {
        lock(&self.spawned).push(future);
        self.notify();
    }

    pub(crate) fn take_spawned(&self, into: &mut Vec<BoxFuture>) {
        std::mem::swap(&mut *lock(&self.spawned), into);
    }

    pub(crate) fn take_ready(&self, into: &mut Vec<Arc<TaskId>>) {
        std::mem::swap(&mut *lock(&self.ready), into);
    }

    pub(crate) fn has_work(&self) -> bool {
        !lock(&self.ready).is_empty() || !lock(&self.spawned).is_empty()
    }
}

/// A task's identity, and its waker: waking pushes it onto the run queue once.
pub(crate) struct TaskId {
    /// Index of the task in the reactor's task table.
    pub(crate) key: usize,
    queued: AtomicBool,
    run_queue: Weak<RunQueue>,
}

impl TaskId {
    pub(crate) fn new(key: usize, run_queue: &Arc<RunQueue>) -> Arc<TaskId> {
        Arc::new(TaskId {
            key,
            queued: AtomicBool::new(false),
            run_queue: Arc::downgrade(run_queue),
        })
    }

    /// Marks the task queued on behalf of the reactor itself (an I/O event); false if it
    /// already was.
    pub(crate) fn mark_queued(&self) -> bool {
        !self.queued.swap(true, Ordering::AcqRel)
    }

    /// Called by the reactor just before polling, so wakes during the poll queue it again.
    pub(crate) fn unqueue(&self) {
        self.queued.store(false, Ordering::Release);
    }
}

impl Wake for TaskId {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        if !caught_as_first_wake(self) {
            self.push_to_run_queue();
        }
    }
}

impl TaskId {
    /// Queues a task already marked queued.
    pub(crate) fn push_to_run_queue(self: &Arc<Self>) {
        if let Some(run_queue) = self.run_queue.upgrade() {
            lock(&run_queue.ready).push(self.clone());
            run_queue.notify();
        }
    }
}

/// While a reactor's leader runs an inline handler job: see [`catch_first_wake`].
struct FirstWake {
    /// That reactor's run queue.
    queue: *const RunQueue,
    /// The first of its tasks the job woke.
    woken: Option<Arc<TaskId>>,
}

thread_local! {
    static FIRST_WAKE: RefCell<Option<FirstWake>> = const { RefCell::new(None) };
}

fn caught_as_first_wake(id: &Arc<TaskId>) -> bool {
    FIRST_WAKE.with(|first| match &mut *first.borrow_mut() {
        Some(FirstWake {
            queue,
            woken: woken @ None,
        }) if *queue == id.run_queue.as_ptr() => {
            *woken = Some(id.clone());
            true
        }
        _ => false,
    })
}

/// Runs `job` (an inline handler job of the reactor whose run queue is `run_queue`) and
/// returns the first task of that reactor it woke — normally the connection waiting for
/// the job's response — kept out of the run queue, so that the leader can poll it next
/// ([`Executor::poll_next`]): the response goes out at once, while the connection's state
/// is still in the cache, instead of after every other ready task. A task caught here is
/// marked queued; if it cannot be polled by this thread, give it to
/// [`TaskId::push_to_run_queue`].
pub(crate) fn catch_first_wake(
    run_queue: &Arc<RunQueue>,
    job: impl FnOnce(),
) -> Option<Arc<TaskId>> {
    struct Disarm;
    impl Drop for Disarm {
        fn drop(&mut self) {
            let first = FIRST_WAKE.with(|first| first.borrow_mut().take());
            if let Some(FirstWake {
                woken: Some(id), ..
            }) = first
            {
                // Unwinding: nobody will poll it first.
                id.push_to_run_queue();
            }
        }
    }
    FIRST_WAKE.with(|first| {
        *first.borrow_mut() = Some(FirstWake {
            queue: Arc::as_ptr(run_queue),
            woken: None,
        })
    });
    let disarm = Disarm;
    job();
    std::mem::forget(disarm);
    FIRST_WAKE
        .with(|first| first.borrow_mut().take())
        .and_then(|first| first.woken)
}

/// How many task polls run before the reactor looks at the sockets again (tokio's
/// scheduler checks its I/O driver every 61 tasks; 16 measured best here). Bounded by
/// polls, not rounds: while workers keep finishing handlers every round finds tasks to
/// poll, and a bound in rounds let the reactor go milliseconds without seeing the next
/// requests already in the sockets (256 clients of a 10 ms handler waited ~4 ms extra).
const TASK_POLLS_PER_IO_CHECK: usize = 16;

/// How many times in a row a task woken by an inline job may be polled before the other
/// ready tasks (tokio limits its LIFO slot the same way): a connection pipelining requests
/// would otherwise keep the front of the queue.
const NEXT_POLLS_IN_A_ROW: usize = 3;

/// What [`Executor::run_ready`] did.
pub(crate) struct Ran {
    /// Connection tasks that ended.
    pub(crate) ended: usize,
    /// It stopped right after a poll that deferred handler jobs (see `leader::defer`), so
    /// that the leader runs them before it polls other tasks; the next call goes on where
    /// it stopped. Otherwise its polls are over until the reactor has looked at its sockets.
    pub(crate) deferred: bool,
}

struct Task {
    id: Arc<TaskId>,
    /// The readiness of the task's socket, for connection tasks.
    readiness: Option<Arc<super::Readiness>>,
    waker: Waker,
    future: BoxFuture,
    /// Connection tasks count against `max_connections` and keep a draining reactor alive.
    is_connection: bool,
}

/// The reactor's tasks: a table of futures keyed by the token their socket is registered
/// under, polled when an I/O event or a waker makes them ready.
pub(crate) struct Executor {
    tasks: Slab<Task>,
    run_queue: Arc<RunQueue>,
    /// Tasks made ready by I/O events, to poll next.
    ready: Vec<Arc<TaskId>>,
    /// Tasks whose last poll spent its budget (`coop`): polled again on the next call of
    /// [`Executor::run_ready`], after the tasks that I/O events made ready since.
    yielded: Vec<Arc<TaskId>>,
    /// The round being polled: the tasks that were ready when it began, in order.
    round: VecDeque<Arc<TaskId>>,
    /// Scratch buffers of `run_ready`, kept so that the hot path does not allocate.
    woken: Vec<Arc<TaskId>>,
    spawned: Vec<BoxFuture>,
    /// Polls since the reactor last looked at its sockets.
    polls_since_look: usize,
    /// The task to poll before any other (see [`Executor::poll_next`]).
    next: Option<Arc<TaskId>>,
    /// How many times in a row `next` was polled first.
    next_in_a_row: usize,
}

impl Executor {
    pub(crate) fn new(run_queue: Arc<RunQueue>) -> Executor {
        Executor {
            tasks: Slab::new(),
            run_queue,
            ready: Vec::new(),
            yielded: Vec::new(),
            round: VecDeque::new(),
            woken: Vec::new(),
            spawned: Vec::new(),
            polls_since_look: 0,
            next: None,
            next_in_a_row: 0,
        }
    }

    /// Polls `id` (marked queued, see [`catch_first_wake`]) before the other ready tasks
    /// at the next [`Executor::run_ready`] — unless it was polled first a few times in a
    /// row already: then it waits its turn at the back.
    pub(crate) fn poll_next(&mut self, id: Arc<TaskId>) {
        if self.next_in_a_row >= NEXT_POLLS_IN_A_ROW {
            self.next_in_a_row = 0;
            id.push_to_run_queue();
            return;
        }
        if let Some(previous) = self.next.replace(id) {
            self.ready.push(previous);
        }
    }

    /// The key (and socket token) the next started task gets.
    pub(crate) fn next_key(&self) -> usize {
        self.tasks.vacant_key()
    }

    /// Tasks alive.
    #[cfg_attr(not(feature = "fuzzing"), allow(dead_code))]
    pub(crate) fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Makes the task under `key` ready, as an I/O event would (the fuzz harness).
    #[cfg_attr(not(feature = "fuzzing"), allow(dead_code))]
    pub(crate) fn mark_ready(&mut self, key: usize) {
        if let Some(task) = self.tasks.get(key) {
            if task.id.mark_queued() {
                self.ready.push(task.id.clone());
            }
        }
    }

    /// An I/O event for the task under `key`; `readable` if it says the socket may read,
    /// `writable` if it may take writes, `closed` if it says the peer closed its side or
    /// the socket failed.
    pub(crate) fn mark_io_ready(
        &mut self,
        key: usize,
        readable: bool,
        writable: bool,
        closed: bool,
    ) {
        if let Some(task) = self.tasks.get(key) {
            if let Some(readiness) = &task.readiness {
                if readable {
                    readiness.set_readable(closed);
                }
                if writable {
                    readiness.set_writable();
                }
            }
            if task.id.mark_queued() {
                self.ready.push(task.id.clone());
            }
        }
    }

    /// Asks the connection that has been idle longest to close (see
    /// [`super::Evictable`]); false if none is idle.
    pub(crate) fn evict_longest_idle(&mut self) -> bool {
        let mut longest: Option<(std::time::Instant, &Arc<dyn super::Evictable>)> = None;
        for (_, task) in self.tasks.iter() {
            let Some(evictable) = task.readiness.as_ref().and_then(|r| r.evictable.get()) else {
                continue;
            };
            if let Some(since) = evictable.idle_since() {
                if longest.is_none_or(|(oldest, _)| since < oldest) {
                    longest = Some((since, evictable));
                }
            }
        }
        match longest {
            Some((_, evictable)) => {
                evictable.evict();
                true
            }
            None => false,
        }
    }

    /// Makes every task ready (shutdown: each connection begins to close).
    pub(crate) fn mark_all_ready(&mut self) {
        for (_, task) in self.tasks.iter() {
            if task.id.mark_queued() {
                self.ready.push(task.id.clone());
            }
        }
    }

    /// Whether tasks wait to be polled because of I/O events.
    pub(crate) fn has_ready(&self) -> bool {
        self.next.is_some()
            || !self.round.is_empty()
            || !self.ready.is_empty()
            || !self.yielded.is_empty()
    }

    /// Adds a task under [`Executor::next_key`] and polls it once. True if it was a
    /// connection and it has already ended.
    pub(crate) fn start(&mut self, future: BoxFuture, is_connection: bool) -> bool {
        self.insert(future, is_connection, None)
    }

    /// Like [`Executor::start`] for a connection task whose socket's readiness the reactor
    /// keeps up to date from its events.
    pub(crate) fn start_io(&mut self, future: BoxFuture, readiness: Arc<super::Readiness>) -> bool {
        self.insert(future, true, Some(readiness))
    }

    fn insert(
        &mut self,
        future: BoxFuture,
        is_connection: bool,
        readiness: Option<Arc<super::Readiness>>,
    ) -> bool {
        let key = self.tasks.vacant_key();
        let id = TaskId::new(key, &self.run_queue);
        self.tasks.insert(Task {
            waker: Waker::from(id.clone()),
            id,
            readiness,
            future,
            is_connection,
        });
        self.poll(key)
    }

    /// Polls every ready and newly spawned task, up to [`TASK_POLLS_PER_IO_CHECK`] polls
    /// between two looks at the sockets, stopping early after a poll that deferred handler
    /// jobs (see [`Ran`]).
    pub(crate) fn run_ready(&mut self) -> Ran {
        let mut ran = Ran {
            ended: 0,
            deferred: false,
        };
        if self.polls_since_look == 0 {
            // Tasks that gave up their last poll for want of budget come after those that
            // I/O events made ready meanwhile.
            self.ready.append(&mut self.yielded);
        }
        while self.polls_since_look < TASK_POLLS_PER_IO_CHECK {
            if let Some(id) = self.next.take() {
                self.next_in_a_row += 1;
                if self.poll_queued(&id, &mut ran) {
                    break;
                }
                continue;
            }
            if self.round.is_empty() && !self.begin_round(&mut ran) {
                break;
            }
            let Some(id) = self.round.pop_front() else {
                break;
            };
            self.next_in_a_row = 0;
            if self.poll_queued(&id, &mut ran) {
                break;
            }
        }
        if !ran.deferred {
            self.polls_since_look = 0;
        }
        ran
    }

    /// Starts the futures spawned since the last round, then gathers the tasks ready
    /// since (I/O events first, then wakes); false if there are none, or if a spawned
    /// task deferred handler jobs.
    fn begin_round(&mut self, ran: &mut Ran) -> bool {
        let mut spawned = std::mem::take(&mut self.spawned);
        self.run_queue.take_spawned(&mut spawned);
        for future in spawned.drain(..) {
            self.polls_since_look += 1;
            self.start(future, false);
        }
        self.spawned = spawned;
        // A spawned task's first poll may defer a job too (an HTTP/2 stream's collected
        // body).
        if super::leader::has_deferred() {
            ran.deferred = true;
            return false;
        }
        self.round.extend(self.ready.drain(..));
        self.run_queue.take_ready(&mut self.woken);
        self.round.extend(self.woken.drain(..));
        !self.round.is_empty()
    }

    /// Polls a task taken from a queue (if it is still the task under its key); true if
    /// the poll deferred handler jobs.
    fn poll_queued(&mut self, id: &Arc<TaskId>, ran: &mut Ran) -> bool {
        id.unqueue();
        let current = self
            .tasks
            .get(id.key)
            .is_some_and(|task| Arc::ptr_eq(&task.id, id));
        if current && self.poll(id.key) {
            ran.ended += 1;
        }
        self.polls_since_look += 1;
        ran.deferred = super::leader::has_deferred();
        ran.deferred
    }

    /// Polls one task; true if it was a connection and it ended.
    fn poll(&mut self, key: usize) -> bool {
        let Some(task) = self.tasks.get_mut(key) else {
            return false;
        };
        let mut cx = Context::from_waker(&task.waker);
        super::coop::reset();
        if task.future.as_mut().poll(&mut cx).is_pending() {
            if super::coop::take_yielded() && task.id.mark_queued() {
                self.yielded.push(task.id.clone());
            }
            return false;
        }
        self.tasks.remove(key).is_connection
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::AssertUnwindSafe;
    use std::task::Poll;

    fn run_queue() -> (mio::Poll, Arc<RunQueue>) {
        let poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).unwrap();
        (poll, RunQueue::new(waker))
    }

    /// An executor with `count` tasks that record the order they are polled in.
    fn recording(queue: &Arc<RunQueue>, count: usize) -> (Executor, Arc<Mutex<Vec<usize>>>) {
        let mut executor = Executor::new(queue.clone());
        let order = Arc::new(Mutex::new(Vec::new()));
        for name in 0..count {
            let order = order.clone();
            executor.start(
                Box::pin(std::future::poll_fn(move |_| {
                    order.lock().unwrap().push(name);
                    Poll::<()>::Pending
                })),
                false,
            );
        }
        order.lock().unwrap().clear();
        (executor, order)
    }

    fn waker(executor: &Executor, key: usize) -> Waker {
        executor.tasks[key].waker.clone()
    }

    #[test]
    fn the_task_an_inline_job_wakes_is_polled_before_the_other_ready_tasks() {
        let (_poll, queue) = run_queue();
        let (mut executor, order) = recording(&queue, 3);
        waker(&executor, 0).wake_by_ref();
        waker(&executor, 1).wake_by_ref();
        let job_wakes = waker(&executor, 2);
        let woken = catch_first_wake(&queue, || job_wakes.wake_by_ref());
        let woken = woken.expect("the job's wake is caught");
        assert_eq!(woken.key, 2);
        assert_eq!(
            lock(&queue.ready).len(),
            2,
            "only the other wakes are queued"
        );
        executor.poll_next(woken);
        assert!(!executor.run_ready().deferred);
        assert_eq!(*order.lock().unwrap(), [2, 0, 1]);
    }

    #[test]
    fn a_wake_of_another_reactors_task_goes_to_that_reactor() {
        let (_poll, queue) = run_queue();
        let (_other_poll, other_queue) = run_queue();
        let (executor, _) = recording(&other_queue, 1);
        let other_task = waker(&executor, 0);
        let woken = catch_first_wake(&queue, || other_task.wake_by_ref());
        assert!(woken.is_none());
        assert_eq!(lock(&other_queue.ready).len(), 1);
        assert!(lock(&queue.ready).is_empty());
    }

    #[test]
    fn a_caught_wake_is_queued_when_the_job_unwinds() {
        let (_poll, queue) = run_queue();
        let (executor, _) = recording(&queue, 1);
        let task = waker(&executor, 0);
        let unwound = std::panic::catch_unwind(AssertUnwindSafe(|| {
            catch_first_wake(&queue, || {
                task.wake_by_ref();
                panic!("the job panics after waking its connection");
            })
        }));
        assert!(unwound.is_err());
        assert_eq!(lock(&queue.ready).len(), 1, "the wake is not lost");
        // And the thread is no longer catching wakes.
        assert!(FIRST_WAKE.with(|first| first.borrow().is_none()));
    }

    #[test]
    fn a_task_polled_first_too_often_in_a_row_waits_its_turn() {
        let (_poll, queue) = run_queue();
        let (mut executor, order) = recording(&queue, 2);
        waker(&executor, 0).wake_by_ref();
        let job_wakes = waker(&executor, 1);
        let woken = catch_first_wake(&queue, || job_wakes.wake_by_ref()).unwrap();
        executor.next_in_a_row = NEXT_POLLS_IN_A_ROW;
        executor.poll_next(woken);
        executor.run_ready();
        assert_eq!(*order.lock().unwrap(), [0, 1]);
    }
}
