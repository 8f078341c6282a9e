//! Leader/followers: the thread that polled a complete request runs its handler itself,
//! and another thread takes the reactor over only if that handler blocks.
//!
//! Handing every request from the reactor thread to a worker and the response back costs
//! two context switches per request, which on a busy core is most of the work of a small
//! request. So the reactor (its `mio::Poll`, tasks and timers: the [`Reactor`]) is a token
//! that one thread at a time holds, the *leader*. While the leader polls tasks, a request
//! that is complete (no body, or a small body already read whole) is not sent to the pool:
//! it is queued here ([`defer`]), and as soon as that task poll returns the leader runs it
//! *outside* any task's poll — so a handler never runs inside the poll that feeds its
//! body, and a streaming body never runs inline at all. The task the handler wakes (its
//! connection, with the response) is polled next, before the other ready tasks
//! ([`catch_first_wake`]).
//!
//! Before it runs a handler, the leader puts the reactor down, noting when, where the
//! server's one [`monitor`] thread can pick it up. While handlers run inline, the monitor
//! looks at every reactor each [`MONITOR_INTERVAL`](monitor::MONITOR_INTERVAL) (as Go's
//! `sysmon` does for goroutines stuck in system calls). When it finds a handler that has
//! run for [`BLOCKING_AFTER`] or longer and its thread is blocked (or has computed for
//! [`COMPUTE_GRACE`] since: a thread merely waiting for a CPU is left alone, no other
//! thread would do better), it hands the reactor to a follower thread, which leads from
//! then on. A quick handler therefore costs no context switch at all, and one that blocks
//! (sleeps, waits on a lock, reads a file, calls this very server) stalls the other
//! connections for at most about a millisecond, once: its route is then remembered as
//! blocking and goes straight to the pool for [`BLOCKING_ROUTE_MEMORY`]. (A handler slower
//! than [`BLOCKING_AFTER`] that blocked and that the monitor did not catch marks its route
//! when its next run is slow too, within [`SLOW_AGAIN_WITHIN`].)
//!
//! When the blocked handler ends, its thread finds the reactor gone and becomes an idle
//! follower. Inline handlers hold a place in the worker pool ([`WorkerPool::try_inline`]),
//! so `max_workers`, the queue and load shedding mean exactly what they meant before.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::task::catch_first_wake;
use super::Reactor;
use crate::worker::{InlineRun, WorkerPool};

mod monitor;

pub(crate) use monitor::Monitor;

/// A handler that the monitor finds running for this long, with its thread blocked, has
/// blocked (see [`monitor`]). A handler that ran inline longer than this, and blocked
/// meanwhile (its thread switched out voluntarily, not preempted), is slow; a route slow
/// at two runs in a row within [`SLOW_AGAIN_WITHIN`] is marked as blocking (the monitor
/// marks at once a route whose handler it had to take the reactor from).
const BLOCKING_AFTER: Duration = Duration::from_micros(100);

/// A single slow run may be a cold start (the first request of a route), the thread
/// preempted for a moment, or a wait for a lock whose holder was preempted; a handler that
/// really blocks is slow again at its next request. Marking a quick route on one slow run
/// sent `wrk`'s hello requests to the pool for half a second of every run (p99 1.06 ms
/// against the peer's 0.65); marking it on two slow runs within 100 ms with quick ones
/// between still did, six times in six seconds, with two reactors and `wrk` sharing two
/// CPUs (a leader waiting for the pool's lock while the other reactor, holding it, was
/// preempted).
const SLOW_AGAIN_WITHIN: Duration = Duration::from_millis(100);

/// How long a route that blocked goes straight to the pool before it is tried inline again.
const BLOCKING_ROUTE_MEMORY: Duration = Duration::from_millis(500);

/// CPU time a handler that the monitor finds runnable (on a CPU, or waiting for one) may
/// spend inline before it is taken over as one that blocks. A busy core preempts the
/// leader now and then (ksoftirqd, the load generator, other processes): under `wrk`, hello
/// handlers were seen "still running" 0.6–0.9 ms apart three times in 8 s, every time
/// runnable, and each take-over sent the route to the pool for half a second (a fifth of
/// the run). Waiting for a CPU is not blocking, and no other thread would do better; a
/// handler that computes is.
const COMPUTE_GRACE: Duration = Duration::from_millis(1);

/// How long an idle follower thread waits to lead again before it exits.
const FOLLOWER_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// A handler job that the leader may run itself. It is called with the pool place it holds
/// when it runs inline, or with `None` when it runs on a pool thread after all.
pub(crate) type InlineJob = Box<dyn FnOnce(Option<InlineRun>) + Send + 'static>;

/// A job deferred by a task poll, waiting for its leader to run it.
pub(super) struct Deferred {
    job: InlineJob,
    route: usize,
}

thread_local! {
    /// Jobs deferred by task polls on this thread; `Some` only while it leads a reactor.
    static DEFERRED: RefCell<Option<Deferral>> = const { RefCell::new(None) };
}

/// What a leading thread's task polls defer into.
struct Deferral {
    jobs: Vec<Deferred>,
    /// Jobs of these routes go to the pool at once instead.
    blocking_routes: Arc<BlockingRoutes>,
}

/// Offers a complete request's handler to run inline after the current task poll. `Err`
/// gives the job back when this thread does not lead a reactor (the fuzz harness, a worker)
/// or when the job's route blocked lately; the caller then gives it to the pool at once.
pub(crate) fn defer(route: usize, job: InlineJob) -> Result<(), InlineJob> {
    DEFERRED.with(|deferred| match deferred.borrow_mut().as_mut() {
        // A route that blocked lately: to the pool now, so that its handler starts without
        // waiting for the rest of this turn's task polls.
        Some(deferral) if !deferral.blocking_routes.blocks(route) => {
            deferral.jobs.push(Deferred { job, route });
            Ok(())
        }
        _ => Err(job),
    })
}

/// Whether task polls on this thread deferred jobs that the leader has yet to run: then
/// the executor stops polling so that the leader runs them first (`Executor::run_ready`).
pub(super) fn has_deferred() -> bool {
    DEFERRED.with(|deferred| {
        deferred
            .borrow()
            .as_ref()
            .is_some_and(|deferral| !deferral.jobs.is_empty())
    })
}

/// Runs `poll` (task polls) with deferral on for this thread, then runs the handlers it
/// deferred as a leader does — inline with a pool place, or on the pool without one — but
/// without a monitor: for a caller whose handlers never block (the fuzz harness).
#[cfg(feature = "fuzzing")]
pub(crate) fn poll_then_run_inline<T>(pool: &WorkerPool, poll: impl FnOnce() -> T) -> T {
    DEFERRED.with(|deferred| {
        *deferred.borrow_mut() = Some(Deferral {
            jobs: Vec::new(),
            blocking_routes: Arc::new(BlockingRoutes::new()),
        })
    });
    let out = poll();
    let deferral = DEFERRED.with(|deferred| deferred.borrow_mut().take());
    for Deferred { job, .. } in deferral.map(|d| d.jobs).unwrap_or_default() {
        match pool.try_inline() {
            Some(place) => job(Some(place)),
            None => {
                if pool.try_execute(Box::new(move || job(None))).is_err() {
                    tracing::warn!("all workers busy and the queue is full; answering 503");
                }
            }
        }
    }
    out
}

/// Routes (request paths, hashed into a small table) whose handler blocked lately. One
/// table serves every reactor of a server: a route that blocked on one goes to the pool on
/// all of them (read per request, written only when a handler ran slow).
pub(crate) struct BlockingRoutes {
    epoch: Instant,
    /// Per route, the instant until which it goes straight to the pool, in ms since
    /// `epoch` + 1; 0 if never.
    until: [AtomicU64; 64],
    /// Per route, when a handler of it last ran slow inline, in the same unit; 0 if never.
    slow_at: [AtomicU64; 64],
}

impl BlockingRoutes {
    pub(crate) fn new() -> BlockingRoutes {
        BlockingRoutes {
            epoch: Instant::now(),
            until: [const { AtomicU64::new(0) }; 64],
            slow_at: [const { AtomicU64::new(0) }; 64],
        }
    }

    fn millis_now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether `route` is marked. A mark found expired is cleared, so that the check of a
    /// route not marked since (the common case, twice per request) reads no clock.
    fn blocks(&self, route: usize) -> bool {
        let slot = &self.until[route % self.until.len()];
        let until = slot.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if self.millis_now() < until {
            return true;
        }
        // Unless another reactor marked it again meanwhile.
        let _ = slot.compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        false
    }

    fn mark(&self, route: usize) {
        let until = self.millis_now() + BLOCKING_ROUTE_MEMORY.as_millis() as u64;
        self.until[route % self.until.len()].store(until, Ordering::Relaxed);
    }

    /// A handler of `route` ran slow inline: marks the route if its last run was slow too,
    /// and lately.
    fn slow(&self, route: usize) {
        let now = self.millis_now();
        let last = self.slow_at[route % self.slow_at.len()].swap(now, Ordering::Relaxed);
        if last != 0 && now - last.min(now) <= SLOW_AGAIN_WITHIN.as_millis() as u64 {
            self.mark(route);
        }
    }

    /// A handler of `route` ran quick inline: its next slow run is a first one again.
    fn quick(&self, route: usize) {
        let slow_at = &self.slow_at[route % self.slow_at.len()];
        // Read first: the common case writes nothing to a line every reactor reads.
        if slow_at.load(Ordering::Relaxed) != 0 {
            slow_at.store(0, Ordering::Relaxed);
        }
    }
}

/// The route a request path belongs to, for [`defer`].
pub(crate) fn route_of(path: &str) -> usize {
    // FNV-1a.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in path.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash as usize
}

/// The CPU time so far of a thread of this process that is runnable (running, or waiting
/// for a CPU); `None` when it is blocked (sleeping, waiting on I/O or a lock) — or when
/// `/proc` cannot tell, which makes the monitor take the reactor over as it would without
/// this check.
fn runnable_cpu_time(thread: libc::pid_t) -> Option<Duration> {
    let stat = std::fs::read(format!("/proc/self/task/{thread}/stat")).ok()?;
    // `pid (comm) S ...`: the state follows the last `)` (comm may hold one).
    let close = stat.iter().rposition(|&b| b == b')')?;
    if stat.get(close + 2) != Some(&b'R') {
        return None;
    }
    // `schedstat`: nanoseconds on a CPU, nanoseconds waiting for one, time slices.
    let schedstat = std::fs::read_to_string(format!("/proc/self/task/{thread}/schedstat")).ok()?;
    let on_cpu = schedstat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(on_cpu))
}

/// Voluntary context switches of the calling thread so far: it blocked that many times.
fn voluntary_switches() -> i64 {
    // SAFETY: `usage` is a valid, writable `rusage`; RUSAGE_THREAD reads the caller's own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the call only writes `usage`.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return i64::MAX; // unknown: every slow run counts as blocked, as before
    }
    usage.ru_nvcsw
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock; a poisoned one is still whole.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct Followers {
    /// Threads waiting to lead.
    idle: usize,
    /// The reactor, handed to an idle follower.
    handoff: Option<Box<Reactor>>,
}

/// What the thread that called [`run`] waits for, besides the end.
#[derive(Default)]
struct Waiting {
    /// Set once the reactor has stopped, with its result.
    result: Option<io::Result<()>>,
    /// A reactor the monitor took from a stuck leader while no follower was idle: this
    /// thread starts one to lead it. The monitor runs at the lowest priority, which a
    /// thread it started would inherit (and could not give up).
    to_lead: Option<PutDown>,
}

/// The reactor, put down by its leader to run a handler.
struct PutDown {
    reactor: Box<Reactor>,
    /// Which put-down this is, so that the monitor can tell a reactor left there since its
    /// last look from one put down again meanwhile.
    number: u64,
    /// The route of the handler running meanwhile.
    route: usize,
    /// The thread running that handler (its leader), for [`runnable_cpu_time`].
    thread: libc::pid_t,
    /// When the handler started (or an instant just before).
    started: Instant,
}

/// What the leader, the monitor and the followers share.
struct Leadership {
    /// The reactor while its leader runs a handler inline: whoever takes it leads.
    available: Mutex<Option<PutDown>>,
    /// Put-downs so far: bumped each time a leader puts the reactor down to run a handler.
    put_downs: AtomicU64,
    /// The server's monitor, which watches this reactor among others.
    monitor: Arc<Monitor>,
    followers: Mutex<Followers>,
    follower_wake: Condvar,
    /// What the thread that called [`run`] waits for.
    finished: Mutex<Waiting>,
    finished_wake: Condvar,
    done: AtomicBool,
    blocking_routes: Arc<BlockingRoutes>,
    pool: WorkerPool,
    /// Which of the server's reactors this leads, for thread names.
    index: usize,
}

/// How a thread's time as leader ended.
enum Led {
    /// A handler it ran inline blocked, and another thread leads now.
    Lost,
    /// The reactor stopped (drained, or failed).
    Finished,
}

/// Runs the reactor on the calling thread, and on others when handlers block, until it
/// stops; returns its result. Its threads are named `pc-reactor-N` (leaders and
/// followers), N the reactor's index; `monitor` (the server's `pc-monitor` thread) watches
/// it meanwhile.
pub(crate) fn run(
    reactor: Box<Reactor>,
    pool: WorkerPool,
    blocking_routes: Arc<BlockingRoutes>,
    monitor: Arc<Monitor>,
) -> io::Result<()> {
    let index = reactor.handle.index;
    let shared = Arc::new(Leadership {
        available: Mutex::new(None),
        put_downs: AtomicU64::new(0),
        monitor: monitor.clone(),
        followers: Mutex::new(Followers::default()),
        follower_wake: Condvar::new(),
        finished: Mutex::new(Waiting::default()),
        finished_wake: Condvar::new(),
        done: AtomicBool::new(false),
        blocking_routes,
        pool,
        index,
    });
    if let Err(error) = monitor.watch(&shared) {
        // Handlers still run, on the pool: without a monitor nothing could take over.
        tracing::warn!(%error, "cannot start the reactor monitor; handlers run on the pool");
        return match shared.lead(reactor, false) {
            Led::Finished | Led::Lost => shared.result(),
        };
    }
    // The first leader is a thread of its own, like every later one: the calling thread
    // only waits for the end, so that it returns as soon as the reactor stops even while
    // a handler that blocked still runs on some former leader.
    let slot = Arc::new(Mutex::new(Some(reactor)));
    if let Err(error) = shared.spawn_follower(slot.clone()) {
        tracing::warn!(%error, "cannot start the reactor thread; handlers run on the pool");
        if let Some(reactor) = lock(&slot).take() {
            shared.lead(reactor, false);
        }
    }
    let mut waiting = lock(&shared.finished);
    loop {
        if let Some(put_down) = waiting.to_lead.take() {
            drop(waiting);
            shared.start_follower(put_down);
            waiting = lock(&shared.finished);
            continue;
        }
        if shared.done.load(Ordering::SeqCst) {
            break;
        }
        waiting = shared
            .finished_wake
            .wait(waiting)
            .unwrap_or_else(|e| e.into_inner());
    }
    drop(waiting);
    monitor.unwatch(&shared);
    shared.result()
}

impl Leadership {
    fn result(&self) -> io::Result<()> {
        lock(&self.finished).result.take().unwrap_or(Ok(()))
    }

    /// Leads until a handler run inline blocks (another thread leads then) or the reactor
    /// stops.
    fn lead(self: &Arc<Self>, mut reactor: Box<Reactor>, inline: bool) -> Led {
        // SAFETY: gettid has no preconditions and cannot fail.
        let thread = unsafe { libc::gettid() };
        let run_queue = reactor.handle.run_queue.clone();
        let mut jobs: VecDeque<Deferred> = std::mem::take(&mut reactor.inline_jobs);
        // What this thread's task polls defer into, lent to `DEFERRED` for each turn.
        let mut deferral = inline.then(|| Deferral {
            jobs: Vec::new(),
            blocking_routes: self.blocking_routes.clone(),
        });
        // The clock as last read here (the end of the last job run), for the next turn.
        let mut last_read: Option<Instant> = None;
        // Voluntary context switches of this thread, read after each look at the sockets
        // (a sleeping `poll` is one) and after each slow run: a slow run counts only if the
        // thread blocked since (it switched out voluntarily), not if it was preempted. (A
        // wait for a contended lock in between counts too; `SLOW_AGAIN_WITHIN` asks for two
        // slow runs in a row.) Read before every batch, it cost a system call per request.
        let mut switches = (u64::MAX, 0);
        loop {
            if jobs.is_empty() {
                if deferral.is_some() {
                    DEFERRED.with(|d| *d.borrow_mut() = deferral.take());
                }
                let finished = reactor.turn(last_read.take());
                if inline {
                    deferral = DEFERRED.with(|d| d.borrow_mut().take());
                    if let Some(deferral) = &mut deferral {
                        jobs.extend(deferral.jobs.drain(..));
                    }
                }
                if let Some(result) = finished {
                    // Jobs deferred in the last turn: their connections are gone with the
                    // reactor; dropping them answers nobody, as before.
                    drop(jobs);
                    self.finish(result);
                    return Led::Finished;
                }
                continue;
            }
            if switches.0 != reactor.looks {
                switches = (reactor.looks, voluntary_switches());
            }
            // One clock reading per job: a job's end is the next one's start (what lies
            // between is a few atomic operations, nothing against `BLOCKING_AFTER`).
            let mut started = Instant::now();
            while let Some(Deferred { job, route }) = jobs.pop_front() {
                let place = if self.blocking_routes.blocks(route) {
                    None
                } else {
                    self.pool.try_inline()
                };
                let Some(place) = place else {
                    // A route that blocked lately, or the pool is saturated (or shutting down):
                    // the pool runs, queues or sheds it as usual.
                    if self.pool.try_execute(Box::new(move || job(None))).is_err() {
                        tracing::warn!("all workers busy and the queue is full; answering 503");
                    }
                    continue;
                };
                // Put the reactor down where the monitor can hand it to a follower.
                reactor.inline_jobs = std::mem::take(&mut jobs);
                let put_down = self.put_downs.fetch_add(1, Ordering::SeqCst) + 1;
                *lock(&self.available) = Some(PutDown {
                    reactor,
                    number: put_down,
                    route,
                    thread,
                    started,
                });
                self.monitor.handler_started();
                // The task the job wakes (its connection, with the response) is polled
                // next, ahead of the other ready tasks.
                let woken = catch_first_wake(&run_queue, || {
                    if catch_unwind(AssertUnwindSafe(|| job(Some(place)))).is_err() {
                        tracing::error!("a handler job panicked outside the handler");
                    }
                });
                let ended = Instant::now();
                if ended.saturating_duration_since(started) >= BLOCKING_AFTER {
                    let now = voluntary_switches();
                    if now > switches.1 {
                        self.blocking_routes.slow(route);
                    } else {
                        self.blocking_routes.quick(route);
                    }
                    switches.1 = now;
                } else {
                    self.blocking_routes.quick(route);
                }
                started = ended;
                last_read = Some(ended);
                // The reactor, if no follower took it — possibly put down by another thread
                // that now runs a handler itself: this one is free, so it leads.
                let back = lock(&self.available).take();
                match back {
                    Some(PutDown { reactor: back, .. }) => {
                        reactor = back;
                        jobs = std::mem::take(&mut reactor.inline_jobs);
                        if let Some(id) = woken {
                            reactor.tasks.poll_next(id);
                        }
                    }
                    None => {
                        if let Some(id) = woken {
                            id.push_to_run_queue();
                        }
                        tracing::debug!("a handler blocked; another thread leads the reactor");
                        return Led::Lost;
                    }
                }
            }
        }
    }

    /// Stores the result and releases the monitor and every follower.
    fn finish(&self, result: io::Result<()>) {
        {
            let mut finished = lock(&self.finished);
            finished.result = Some(result);
            self.done.store(true, Ordering::SeqCst);
            self.finished_wake.notify_all();
        }
        {
            let _followers = lock(&self.followers);
            self.follower_wake.notify_all();
        }
    }

    /// Leads with `first`, then waits for the reactor to be handed over, leads, and waits
    /// again, until the reactor stops or no hand-over came for [`FOLLOWER_IDLE_TIMEOUT`].
    fn follow(self: &Arc<Self>, mut first: Option<Box<Reactor>>) {
        loop {
            if let Some(reactor) = first.take() {
                if let Led::Finished = self.lead(reactor, true) {
                    return;
                }
            }
            let mut followers = lock(&self.followers);
            followers.idle += 1;
            loop {
                if self.done.load(Ordering::SeqCst) {
                    followers.idle -= 1;
                    return;
                }
                if let Some(reactor) = followers.handoff.take() {
                    followers.idle -= 1;
                    first = Some(reactor);
                    break;
                }
                let (next, wait) = self
                    .follower_wake
                    .wait_timeout(followers, FOLLOWER_IDLE_TIMEOUT)
                    .unwrap_or_else(|e| e.into_inner());
                followers = next;
                if wait.timed_out() && followers.handoff.is_none() {
                    followers.idle -= 1;
                    return;
                }
            }
        }
    }

    /// Gives the reactor, taken from a leader stuck in a handler, to an idle follower, or
    /// has the thread that called [`run`] start a new one (called by the monitor).
    fn take_over(&self, put_down: PutDown) {
        let mut followers = lock(&self.followers);
        if followers.idle > 0 {
            followers.handoff = Some(put_down.reactor);
            self.follower_wake.notify_one();
            return;
        }
        drop(followers);
        lock(&self.finished).to_lead = Some(put_down);
        self.finished_wake.notify_all();
    }

    /// Starts a follower to lead the reactor the monitor took (on the thread that called
    /// [`run`]).
    fn start_follower(self: &Arc<Self>, put_down: PutDown) {
        let PutDown {
            reactor,
            route,
            thread,
            ..
        } = put_down;
        let slot = Arc::new(Mutex::new(Some(reactor)));
        if let Err(error) = self.spawn_follower(slot.clone()) {
            tracing::error!(%error, "cannot start a thread to take the reactor over");
            if let Some(reactor) = lock(&slot).take() {
                // Back where the monitor found it; its leader takes it when the handler ends.
                let put_down = self.put_downs.fetch_add(1, Ordering::SeqCst) + 1;
                *lock(&self.available) = Some(PutDown {
                    reactor,
                    number: put_down,
                    route,
                    thread,
                    // Tried again at the next look.
                    started: Instant::now(),
                });
            }
        }
    }

    /// Starts a follower thread that leads at once with the reactor in `slot`. The reactor
    /// travels through the slot so that it can be taken back if no thread can be started.
    fn spawn_follower(self: &Arc<Self>, slot: Arc<Mutex<Option<Box<Reactor>>>>) -> io::Result<()> {
        let shared = self.clone();
        std::thread::Builder::new()
            .name(format!("pc-reactor-{}", self.index))
            .spawn(move || {
                let reactor = lock(&slot).take();
                shared.follow(reactor);
            })
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_thread_is_runnable_and_a_sleeping_one_is_not() {
        // SAFETY: no preconditions.
        let me = unsafe { libc::gettid() };
        let before = runnable_cpu_time(me).expect("this thread runs, so it is runnable");
        let until = Instant::now() + Duration::from_millis(20);
        while Instant::now() < until {
            std::hint::black_box(0);
        }
        let after = runnable_cpu_time(me).expect("still runnable");
        assert!(
            after > before,
            "no CPU time counted: {before:?} then {after:?}"
        );

        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            // SAFETY: no preconditions.
            tx.send(unsafe { libc::gettid() }).unwrap();
            std::thread::sleep(Duration::from_millis(500));
        });
        let tid = rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            runnable_cpu_time(tid),
            None,
            "a sleeping thread counted as runnable"
        );
        sleeper.join().unwrap();
        assert_eq!(
            runnable_cpu_time(tid),
            None,
            "an exited thread counted as runnable"
        );
    }

    #[test]
    fn blocking_counts_as_a_voluntary_switch_and_computing_does_not() {
        let start = voluntary_switches();
        let until = Instant::now() + Duration::from_millis(5);
        while Instant::now() < until {
            std::hint::black_box(0);
        }
        let computed = voluntary_switches();
        std::thread::sleep(Duration::from_millis(2));
        let slept = voluntary_switches();
        assert!(slept > computed, "a sleep was not a voluntary switch");
        // Computing may be preempted (involuntary), never switched out voluntarily.
        assert_eq!(computed, start, "computing counted as blocking");
    }

    #[test]
    fn a_blocking_route_is_remembered() {
        let routes = BlockingRoutes::new();
        let route = route_of("/leader-test/blocking");
        assert!(!routes.blocks(route));
        routes.mark(route);
        assert!(routes.blocks(route));
        // One slow run is not enough (a cold start, a preemption); a second soon after is.
        let slow = route_of("/leader-test/slow");
        routes.slow(slow);
        assert!(!routes.blocks(slow));
        routes.slow(slow);
        assert!(routes.blocks(slow));
        assert!(
            !routes.blocks(route_of("/leader-test/other"))
                || route_of("/leader-test/other") % 64 == route % 64
        );
    }

    #[test]
    fn an_expired_mark_is_forgotten() {
        let routes = BlockingRoutes::new();
        let route = route_of("/leader-test/expired");
        let slot = &routes.until[route % routes.until.len()];
        // Marked until the epoch's first millisecond: long past.
        slot.store(1, Ordering::Relaxed);
        assert!(!routes.blocks(route));
        assert_eq!(slot.load(Ordering::Relaxed), 0, "the expired mark stayed");
        routes.mark(route);
        assert!(routes.blocks(route));
        assert_ne!(slot.load(Ordering::Relaxed), 0, "a live mark was cleared");
    }

    #[test]
    fn slow_runs_with_quick_ones_between_do_not_mark_a_route() {
        let routes = BlockingRoutes::new();
        let route = route_of("/leader-test/mostly-quick");
        // A quick route now and then waits for a lock whose holder was preempted.
        for _ in 0..3 {
            routes.slow(route);
            routes.quick(route);
            routes.quick(route);
        }
        assert!(!routes.blocks(route));
        routes.slow(route);
        routes.slow(route);
        assert!(routes.blocks(route), "slow at two runs in a row");
    }

    #[test]
    fn a_blocking_route_is_not_deferred() {
        let routes = Arc::new(BlockingRoutes::new());
        let blocking = route_of("/leader-test/sleeps");
        let quick = route_of("/leader-test/quick");
        assert_ne!(blocking % 64, quick % 64);
        routes.mark(blocking);
        let job = || -> InlineJob { Box::new(|_| {}) };
        // Not leading: every job is given back.
        assert!(defer(quick, job()).is_err());
        DEFERRED.with(|d| {
            *d.borrow_mut() = Some(Deferral {
                jobs: Vec::new(),
                blocking_routes: routes.clone(),
            })
        });
        assert!(defer(quick, job()).is_ok());
        assert!(has_deferred());
        // The route that blocked goes to the pool at once, not after the turn.
        assert!(defer(blocking, job()).is_err());
        let deferral = DEFERRED.with(|d| d.borrow_mut().take());
        assert_eq!(deferral.map(|d| d.jobs.len()), Some(1));
    }
}
