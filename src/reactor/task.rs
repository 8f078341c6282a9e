//! The reactor's tiny executor: connection futures and hyper's HTTP/2 stream futures are
//! tasks, polled only on the reactor thread, woken from anywhere (worker threads included).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Wake;

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

/// hyper's executor for HTTP/2 stream futures: they run as tasks on the reactor that
/// drives their connection, inside the connection's tracing span.
#[derive(Clone)]
pub(crate) struct Spawner {
    pub(crate) run_queue: Arc<RunQueue>,
}

impl<F> hyper::rt::Executor<F> for Spawner
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        use tracing::Instrument;
        self.run_queue
            .spawn(Box::pin(future.instrument(tracing::Span::current())));
    }
}
