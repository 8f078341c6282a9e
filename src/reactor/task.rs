//! The reactor's tiny executor: connection futures and hyper's HTTP/2 stream futures are
//! tasks, polled only on the reactor thread, woken from anywhere (worker threads included).

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
        if let Some(run_queue) = self.run_queue.upgrade() {
            lock(&run_queue.ready).push(self.clone());
            run_queue.notify();
        }
    }
}

/// How many task polls run before the reactor looks at the sockets again (tokio's
/// scheduler checks its I/O driver every 61 tasks; 16 measured best here). Bounded by
/// polls, not rounds: while workers keep finishing handlers every round finds tasks to
/// poll, and a bound in rounds let the reactor go milliseconds without seeing the next
/// requests already in the sockets (256 clients of a 10 ms handler waited ~4 ms extra).
const TASK_POLLS_PER_IO_CHECK: usize = 16;

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
    /// Scratch buffers of `run_ready`, kept so that the hot path does not allocate.
    polling: Vec<Arc<TaskId>>,
    spawned: Vec<BoxFuture>,
}

impl Executor {
    pub(crate) fn new(run_queue: Arc<RunQueue>) -> Executor {
        Executor {
            tasks: Slab::new(),
            run_queue,
            ready: Vec::new(),
            yielded: Vec::new(),
            polling: Vec::new(),
            spawned: Vec::new(),
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
    /// `closed` if it says the peer closed its side or the socket failed.
    pub(crate) fn mark_io_ready(&mut self, key: usize, readable: bool, closed: bool) {
        if let Some(task) = self.tasks.get(key) {
            if readable {
                if let Some(readiness) = &task.readiness {
                    readiness.set_readable(closed);
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
        !self.ready.is_empty() || !self.yielded.is_empty()
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

    /// Polls every ready and newly spawned task, a bounded number of rounds. Returns how
    /// many connection tasks ended.
    pub(crate) fn run_ready(&mut self) -> usize {
        let mut ended = 0;
        let mut ready = std::mem::take(&mut self.polling);
        let mut spawned = std::mem::take(&mut self.spawned);
        let mut polls = 0;
        // Tasks that gave up their last poll for want of budget come after those that
        // I/O events made ready meanwhile.
        self.ready.append(&mut self.yielded);
        while polls < TASK_POLLS_PER_IO_CHECK {
            self.run_queue.take_spawned(&mut spawned);
            for future in spawned.drain(..) {
                polls += 1;
                self.start(future, false);
            }
            std::mem::swap(&mut ready, &mut self.ready);
            self.run_queue.take_ready(&mut self.ready);
            ready.append(&mut self.ready);
            if ready.is_empty() {
                break;
            }
            let mut round = ready.drain(..);
            for id in round.by_ref() {
                id.unqueue();
                let current = self
                    .tasks
                    .get(id.key)
                    .is_some_and(|task| Arc::ptr_eq(&task.id, &id));
                if current && self.poll(id.key) {
                    ended += 1;
                }
                polls += 1;
                if polls >= TASK_POLLS_PER_IO_CHECK {
                    break;
                }
            }
            // Tasks left over stay queued for the next call, after the sockets.
            self.ready.extend(round);
        }
        ready.clear();
        self.polling = ready;
        self.spawned = spawned;
        ended
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
