//! The blocking worker pool: handlers run here, on ordinary OS threads.
//!
//! The pool starts empty, grows by one thread whenever a job arrives and no worker is
//! idle (up to `max_workers`), queues jobs beyond that up to `max_queued`, and refuses the
//! rest so that the caller can shed load with a 503 at once. A worker that has been idle
//! for `idle_timeout` exits. Jobs never unwind into the pool: the service glue catches
//! handler panics, so the pool stays at strength.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Workers (in the whole process) blocked until their connection moves: waiting for
/// request-body bytes or for room in a response pipe. The fuzz harness compares it with
/// the busy count to tell when nothing can happen until the client sends more.
#[cfg(feature = "fuzzing")]
pub(crate) static WAITING_ON_CONNECTION: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// The threads blocked on one condition variable, counted in `WAITING_ON_CONNECTION`.
/// Kept under the lock of the state they wait on. The side that wakes them stops counting
/// them at once ([`Waiters::release`]), before they get to run, so the count never shows
/// a thread that is about to move as waiting.
#[cfg(feature = "fuzzing")]
#[derive(Default)]
pub(crate) struct Waiters {
    counted: usize,
    generation: u64,
}

#[cfg(feature = "fuzzing")]
impl Waiters {
    /// A thread is about to wait; returns its ticket.
    pub(crate) fn enter(&mut self) -> u64 {
        self.counted += 1;
        WAITING_ON_CONNECTION.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.generation
    }

    /// A thread stopped waiting (woken, timed out or spuriously).
    pub(crate) fn leave(&mut self, ticket: u64) {
        if ticket == self.generation {
            self.counted -= 1;
            WAITING_ON_CONNECTION.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Every waiting thread is being woken.
    pub(crate) fn release(&mut self) {
        if self.counted > 0 {
            WAITING_ON_CONNECTION.fetch_sub(self.counted, std::sync::atomic::Ordering::SeqCst);
            self.counted = 0;
            self.generation += 1;
        }
    }
}

/// A unit of blocking work.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

/// How many times a worker that finished a job yields its CPU, looking for the next job,
/// before it parks (Go's scheduler spins the same way before it parks a thread). A job
/// submitted meanwhile costs no wake-up: the 10 ms blocking-handler benchmark (256
/// clients) went from ~23.2k to ~24.4k requests/s. While nothing else is runnable the
/// spin takes a few microseconds.
const SPIN_YIELDS: usize = 5;

/// Sizing of the pool.
#[derive(Clone, Debug)]
pub(crate) struct PoolConfig {
    pub(crate) max_workers: usize,
    pub(crate) max_queued: usize,
    pub(crate) idle_timeout: Duration,
}

/// A handle to the pool; cheap to clone.
#[derive(Clone)]
pub(crate) struct WorkerPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    /// The queue's length, for spinning workers to watch without the lock.
    queued: AtomicUsize,
    /// At most this many workers spin at once.
    max_spinning: usize,
    state: Mutex<PoolState>,
    work_available: Condvar,
    config: PoolConfig,
}

#[derive(Default)]
struct PoolState {
    queue: VecDeque<Job>,
    /// Threads alive.
    threads: usize,
    /// Threads waiting for a job.
    idle: usize,
    /// Threads looking for a job for a moment before they wait (see [`SPIN_YIELDS`]).
    spinning: usize,
    /// Jobs queued for a spinning worker without a wake-up (tests check the path is taken).
    #[cfg(test)]
    handed_to_spinner: usize,
    /// Handlers running: jobs on pool threads, plus handlers run inline by the thread that
    /// leads the reactor (see [`WorkerPool::try_inline`]). Never above `max_workers`.
    busy: usize,
    /// Of `busy`, the handlers running inline on a reactor thread rather than on the pool.
    inline: usize,
    shutdown: bool,
}

/// Every worker is busy and the queue is full: shed the request.
#[derive(Debug)]
pub(crate) struct PoolFull;

/// What the pool looks like right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    /// Worker threads alive.
    pub threads: usize,
    /// Workers currently running a handler or streaming its response.
    pub busy: usize,
    /// Requests waiting for a worker.
    pub queued: usize,
}

impl WorkerPool {
    pub(crate) fn new(config: PoolConfig) -> WorkerPool {
        WorkerPool {
            inner: Arc::new(PoolInner {
                queued: AtomicUsize::new(0),
                // As Go's scheduler: spinning threads at most half the CPUs, at least one.
                max_spinning: std::thread::available_parallelism()
                    .map_or(1, |n| (n.get() / 2).max(1)),
                state: Mutex::new(PoolState::default()),
                work_available: Condvar::new(),
                config,
            }),
        }
    }

    /// Runs `job` on a worker, or drops it unrun when every worker is busy and the queue
    /// is full (or no thread can be started).
    pub(crate) fn try_execute(&self, job: Job) -> Result<(), PoolFull> {
        let mut state = self.inner.lock();
        if state.shutdown {
            return Err(PoolFull);
        }
        let max_workers = self.inner.config.max_workers;
        // Handlers run inline count against `max_workers` too (they are in `busy`).
        if state.busy + state.queue.len() < max_workers {
            if state.spinning > state.queue.len() {
                // A worker that just finished a job is looking for the next one: no wake-up
                // (no system call here, no thread switch to a woken worker).
                state.queue.push_back(job);
                self.inner
                    .queued
                    .store(state.queue.len(), Ordering::Release);
                #[cfg(test)]
                {
                    state.handed_to_spinner += 1;
                }
                return Ok(());
            }
            if state.idle > state.queue.len() {
                state.queue.push_back(job);
                self.inner
                    .queued
                    .store(state.queue.len(), Ordering::Release);
                drop(state);
                self.inner.work_available.notify_one();
                return Ok(());
            }
            if state.threads < max_workers {
                state.threads += 1;
                state.busy += 1;
                drop(state);
                return self.inner.clone().start_worker(Some(job));
            }
        }
        if state.queue.len() < self.inner.config.max_queued {
            state.queue.push_back(job);
            self.inner
                .queued
                .store(state.queue.len(), Ordering::Release);
            return Ok(());
        }
        Err(PoolFull)
    }

    /// Reserves a worker's place for a handler that the calling thread (the reactor's
    /// leader) runs itself, so that `max_workers`, the queue and [`PoolStats::busy`] mean
    /// the same whether a handler runs inline or on a pool thread. `None` when the pool is
    /// saturated, has jobs waiting, or is shutting down: the job then goes the usual way.
    pub(crate) fn try_inline(&self) -> Option<InlineRun> {
        let mut state = self.inner.lock();
        if state.shutdown || !state.queue.is_empty() || state.busy >= self.inner.config.max_workers
        {
            return None;
        }
        state.busy += 1;
        state.inline += 1;
        Some(InlineRun { pool: self.clone() })
    }
    /// Current thread and queue counts.
    pub(crate) fn stats(&self) -> PoolStats {
        let state = self.inner.lock();
        PoolStats {
            threads: state.threads,
            busy: state.busy,
            queued: state.queue.len(),
        }
    }

    /// Lets idle workers exit at once; running jobs finish, queued jobs still run.
    pub(crate) fn shutdown(&self) {
        self.inner.lock().shutdown = true;
        self.inner.work_available.notify_all();
    }
}

/// A worker's place held by a handler running inline (see [`WorkerPool::try_inline`]);
/// released when dropped, on whichever thread the handler ends.
pub(crate) struct InlineRun {
    pool: WorkerPool,
}

impl Drop for InlineRun {
    fn drop(&mut self) {
        let inner = &self.pool.inner;
        let mut state = inner.lock();
        state.busy -= 1;
        state.inline -= 1;
        // Jobs queued while this handler held the last place can start now.
        if state.queue.is_empty() || state.busy >= inner.config.max_workers {
            return;
        }
        if state.idle > 0 {
            drop(state);
            inner.work_available.notify_one();
        } else if state.threads < inner.config.max_workers {
            state.threads += 1;
            drop(state);
            let _ = inner.clone().start_worker(None);
        }
    }
}

impl PoolInner {
    /// Starts a pool thread (already counted in `threads`, and in `busy` if it has a job).
    fn start_worker(self: Arc<Self>, first: Option<Job>) -> Result<(), PoolFull> {
        let inner = self.clone();
        let has_job = first.is_some();
        let spawned = std::thread::Builder::new()
            .name("portcullis-worker".into())
            .spawn(move || inner.work(first));
        match spawned {
            Ok(_) => {
                tracing::trace!("worker started");
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "cannot start a worker thread");
                let mut state = self.lock();
                state.threads -= 1;
                if has_job {
                    state.busy -= 1;
                }
                Err(PoolFull)
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // Jobs run outside the lock, so poisoning cannot leave the state half-updated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn work(&self, first: Option<Job>) {
        let mut state = match first {
            Some(first) => {
                first();
                let mut state = self.lock();
                state.busy -= 1;
                state
            }
            None => self.lock(),
        };
        loop {
            if state.busy < self.config.max_workers {
                if let Some(job) = state.queue.pop_front() {
                    self.queued.store(state.queue.len(), Ordering::Release);
                    state.busy += 1;
                    drop(state);
                    job();
                    state = self.lock();
                    state.busy -= 1;
                    continue;
                }
            }
            if state.shutdown && state.queue.is_empty() {
                break;
            }
            if state.queue.is_empty() && state.spinning < self.max_spinning {
                // Look for the next job for a moment before parking: under load one comes
                // soon, and taking it here spares its submitter a wake-up and this thread a
                // sleep and a wake. Yielding lets every other runnable thread go first.
                state.spinning += 1;
                drop(state);
                for _ in 0..SPIN_YIELDS {
                    std::thread::yield_now();
                    if self.queued.load(Ordering::Acquire) > 0 {
                        break;
                    }
                }
                state = self.lock();
                state.spinning -= 1;
                // Jobs queued meanwhile were not announced: take them (or, with the pool
                // at `max_workers`, park where the next free place wakes this thread).
                if !state.queue.is_empty() && state.busy < self.config.max_workers {
                    continue;
                }
            }
            state.idle += 1;
            let (next, wait) = self
                .work_available
                .wait_timeout(state, self.config.idle_timeout)
                .unwrap_or_else(|e| e.into_inner());
            state = next;
            state.idle -= 1;
            if wait.timed_out() && state.queue.is_empty() {
                break;
            }
        }
        state.threads -= 1;
        tracing::trace!(threads = state.threads, "worker exited");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    fn pool(max_workers: usize, max_queued: usize) -> WorkerPool {
        WorkerPool::new(PoolConfig {
            max_workers,
            max_queued,
            idle_timeout: Duration::from_millis(200),
        })
    }

    #[test]
    fn jobs_queued_for_spinning_workers_all_run() {
        // Jobs handed to a worker that is still spinning get no wake-up; none may be lost,
        // the last one included. Submitted in bursts with pauses, so that workers finish,
        // spin, and (some of the time) park.
        // Parked workers wake only when told (or after a minute): a stranded job shows.
        let pool = WorkerPool::new(PoolConfig {
            max_workers: 2,
            max_queued: 10_000,
            idle_timeout: Duration::from_secs(60),
        });
        let done = Arc::new(AtomicUsize::new(0));
        let total = 20_000;
        let deadline = Instant::now() + Duration::from_secs(10);
        for i in 0..total {
            loop {
                assert!(
                    Instant::now() < deadline,
                    "the queue stopped draining: jobs stranded"
                );
                let done = done.clone();
                let job = Box::new(move || {
                    done.fetch_add(1, Ordering::SeqCst);
                });
                if pool.try_execute(job).is_ok() {
                    break;
                }
                std::thread::yield_now();
            }
            if i % 100 == 0 {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        while done.load(Ordering::SeqCst) < total && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(done.load(Ordering::SeqCst), total, "jobs lost");
        assert!(
            pool.inner.lock().handed_to_spinner > 0,
            "no job went to a spinning worker: the test did not exercise that path"
        );
    }

    #[test]
    fn grows_to_max_then_queues_then_refuses() {
        let pool = pool(2, 1);
        let (release, wait) = mpsc::channel::<()>();
        let wait = Arc::new(Mutex::new(wait));
        let blocker = || {
            let wait = wait.clone();
            Box::new(move || {
                let _ = wait.lock().unwrap().recv();
            }) as Job
        };
        assert!(pool.try_execute(blocker()).is_ok());
        assert!(pool.try_execute(blocker()).is_ok());
        assert!(pool.try_execute(blocker()).is_ok()); // queued
        assert!(pool.try_execute(blocker()).is_err()); // refused
        let stats = pool.stats();
        assert_eq!((stats.threads, stats.queued), (2, 1));
        for _ in 0..3 {
            release.send(()).unwrap();
        }
        let start = Instant::now();
        while pool.stats().busy > 0 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "jobs never finished"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn idle_workers_exit() {
        let pool = pool(4, 0);
        let (done, finished) = mpsc::channel();
        for _ in 0..3 {
            let done = done.clone();
            pool.try_execute(Box::new(move || done.send(()).unwrap()))
                .unwrap();
        }
        for _ in 0..3 {
            finished.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        let start = Instant::now();
        while pool.stats().threads > 0 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "idle workers stayed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
