//! The monitor: one thread per server that looks at every reactor now and then and hands
//! the reactor of a leader stuck in a handler to a follower (see the [parent](super)).
//!
//! One thread serves every reactor, as Go's single `sysmon` serves every `P`: each look
//! is a wake-up, and a wake-up on a busy CPU preempts whatever runs there — a reactor, most
//! likely. With a monitor per reactor, two reactors meant two wake-ups per millisecond
//! (2 250 a second under `wrk`, and about three context switches each); sixteen would mean
//! sixteen. A look costs a lock and a read per reactor.
//!
//! A look does not need a second one to tell a blocked handler from a quick one: the
//! leader notes when it put the reactor down (it reads the clock there anyway), so a
//! handler found running for [`BLOCKING_AFTER`] or longer is a candidate at once. Every
//! look is therefore [`MONITOR_INTERVAL`] after the last, and a handler that blocks
//! stalls its reactor for at most about that plus [`BLOCKING_AFTER`].
//!
//! The thread runs at the lowest priority ([`lower_priority`]), so that its looks wait for
//! a free CPU instead of preempting a reactor; it therefore starts no thread itself (a
//! follower would inherit that priority): a reactor it takes over goes to an idle
//! follower, or to the thread waiting in [`run`](super::run), which starts one.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{lock, runnable_cpu_time, Leadership, BLOCKING_AFTER, COMPUTE_GRACE};

/// How long the monitor sleeps between two looks while handlers run inline. Each look is
/// a wake-up that may preempt a reactor; a handler that blocks stalls its reactor for at
/// most about this plus [`BLOCKING_AFTER`], once per route and
/// [`BLOCKING_ROUTE_MEMORY`](super::BLOCKING_ROUTE_MEMORY).
pub(super) const MONITOR_INTERVAL: Duration = Duration::from_millis(1);

/// The monitor thread's nice value (the lowest priority; see [`lower_priority`]).
const MONITOR_NICE: libc::c_int = 19;

/// Looks in a row that found no handler run inline on any reactor, after which the monitor
/// sleeps until the next one starts (about a tenth of a second).
const MONITOR_IDLE_LOOKS: u32 = 100;

/// The monitor of a server's reactors. Each reactor's [`run`](super::run) registers its
/// leadership ([`watch`](Monitor::watch)) and withdraws it when the reactor has stopped
/// ([`unwatch`](Monitor::unwatch)); the thread runs while at least one is registered.
pub(crate) struct Monitor {
    state: Mutex<State>,
    wake: Condvar,
    /// Set while the thread sleeps until a handler runs inline: read by every leader per
    /// inline handler, written only when the thread parks or is woken.
    parked: AtomicBool,
}

#[derive(Default)]
struct State {
    /// The reactors watched.
    watched: Vec<Arc<Leadership>>,
    /// Bumped whenever `watched` changes, so that the thread refreshes its copy.
    changes: u64,
    /// The thread, with the number it was started under.
    thread: Option<(u64, JoinHandle<()>)>,
    /// The number of the thread that should run (bumped per start and per stop): a
    /// thread whose number this is not exits.
    current: u64,
    /// The thread sleeps until woken (mirrors `Monitor::parked`, under the lock).
    parked: bool,
}

impl Monitor {
    pub(crate) fn new() -> Arc<Monitor> {
        Arc::new(Monitor {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            parked: AtomicBool::new(false),
        })
    }

    /// Watches `leadership`'s reactor from now on, starting the thread if none runs.
    pub(super) fn watch(self: &Arc<Self>, leadership: &Arc<Leadership>) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.watched.push(leadership.clone());
        state.changes += 1;
        if state.thread.is_none() {
            state.current += 1;
            let number = state.current;
            let monitor = self.clone();
            let spawned = std::thread::Builder::new()
                .name("pc-monitor".into())
                .spawn(move || monitor.run(number));
            match spawned {
                Ok(thread) => state.thread = Some((number, thread)),
                Err(error) => {
                    state.watched.pop();
                    return Err(error);
                }
            }
        }
        self.unpark(&mut state);
        Ok(())
    }

    /// Stops watching `leadership`'s reactor (it has stopped); the last one stops the
    /// thread and waits for it.
    pub(super) fn unwatch(&self, leadership: &Arc<Leadership>) {
        let mut state = lock(&self.state);
        state.watched.retain(|l| !Arc::ptr_eq(l, leadership));
        state.changes += 1;
        let thread = if state.watched.is_empty() {
            state.current += 1;
            state.thread.take()
        } else {
            None
        };
        self.unpark(&mut state);
        drop(state);
        if let Some((_, thread)) = thread {
            let _ = thread.join();
        }
    }

    /// A leader has put its reactor down to run a handler: wakes the thread if it sleeps.
    pub(super) fn handler_started(&self) {
        if self.parked.load(Ordering::SeqCst) {
            self.unpark(&mut lock(&self.state));
        }
    }

    fn unpark(&self, state: &mut State) {
        state.parked = false;
        self.parked.store(false, Ordering::SeqCst);
        self.wake.notify_all();
    }

    /// The thread: looks at every watched reactor each [`MONITOR_INTERVAL`] while handlers
    /// run inline, and sleeps until the next one after [`MONITOR_IDLE_LOOKS`] quiet looks.
    fn run(&self, number: u64) {
        lower_priority();
        let mut watches: Vec<Watch> = Vec::new();
        let mut seen_changes = None;
        let mut quiet_looks = 0;
        loop {
            {
                let mut state = lock(&self.state);
                if state.current != number {
                    return;
                }
                if quiet_looks >= MONITOR_IDLE_LOOKS {
                    // No handler ran inline for a while: sleep until the next one starts.
                    state.parked = true;
                    self.parked.store(true, Ordering::SeqCst);
                    // A put-down between the last look and `parked` did not wake us.
                    if watches.iter_mut().any(Watch::put_down_since) {
                        state.parked = false;
                        self.parked.store(false, Ordering::SeqCst);
                    }
                    while state.parked && state.current == number {
                        state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
                    }
                    quiet_looks = 0;
                    if state.current != number {
                        return;
                    }
                }
                if seen_changes != Some(state.changes) {
                    seen_changes = Some(state.changes);
                    watches = refresh(watches, &state.watched);
                }
            }
            std::thread::sleep(MONITOR_INTERVAL);
            let now = Instant::now();
            let mut ran = false;
            for watch in &mut watches {
                ran |= watch.look(now);
            }
            quiet_looks = if ran { 0 } else { quiet_looks + 1 };
        }
    }
}

/// Gives the calling thread (the monitor) the lowest priority short of `SCHED_IDLE`: its
/// wake-ups then wait for a CPU to be free, or for the running thread's time slice to
/// end, instead of preempting a reactor at each look. A blocked leader frees its CPU, so
/// the look that catches it still comes at once; with every CPU busy it comes within a
/// time slice (a few milliseconds). `SCHED_IDLE` could wait far longer on a saturated
/// machine.
fn lower_priority() {
    // SAFETY: gettid has no preconditions and cannot fail.
    let me = unsafe { libc::gettid() };
    // SAFETY: on Linux, PRIO_PROCESS with a thread id sets that one thread's nice value;
    // no memory is passed. A failure leaves the default priority, as before.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, me as libc::id_t, MONITOR_NICE) } != 0 {
        tracing::debug!(
            error = %io::Error::last_os_error(),
            "cannot lower the monitor's priority"
        );
    }
}

/// The thread's view of one reactor between looks.
struct Watch {
    leadership: Arc<Leadership>,
    /// The reactor's put-down count at the last look.
    put_downs: u64,
    /// The put-down whose handler was last found runnable, and its thread's CPU time then.
    runnable_since: Option<(u64, Duration)>,
}

/// The watches for `watched`, keeping what was known of reactors watched before.
fn refresh(mut old: Vec<Watch>, watched: &[Arc<Leadership>]) -> Vec<Watch> {
    watched
        .iter()
        .map(|leadership| {
            match old
                .iter()
                .position(|w| Arc::ptr_eq(&w.leadership, leadership))
            {
                Some(at) => old.swap_remove(at),
                None => Watch {
                    leadership: leadership.clone(),
                    put_downs: leadership.put_downs.load(Ordering::SeqCst),
                    runnable_since: None,
                },
            }
        })
        .collect()
}

impl Watch {
    /// Whether the reactor was put down since the last look (not updating the count).
    fn put_down_since(&mut self) -> bool {
        self.leadership.put_downs.load(Ordering::SeqCst) != self.put_downs
    }

    /// Looks at the reactor once; hands it to a follower when its leader has run one
    /// handler for [`BLOCKING_AFTER`] or longer and is blocked (or has computed for
    /// [`COMPUTE_GRACE`] since it was first found runnable). Returns whether a handler ran
    /// inline since the last look.
    fn look(&mut self, now: Instant) -> bool {
        let leadership = &self.leadership;
        let count = leadership.put_downs.load(Ordering::SeqCst);
        let ran = count != self.put_downs;
        self.put_downs = count;
        let seen = lock(&leadership.available)
            .as_ref()
            .map(|put_down| (put_down.number, put_down.thread, put_down.started));
        let Some((number, thread, started)) = seen else {
            self.runnable_since = None;
            return ran;
        };
        if now.saturating_duration_since(started) < BLOCKING_AFTER {
            return true;
        }
        // Preempted, or computing for a moment, rather than blocked: the reactor stays.
        // /proc is read only here, for a handler that has run a while.
        let computing = runnable_cpu_time(thread).is_some_and(|cpu| {
            let since = match self.runnable_since {
                Some((seen, since)) if seen == number => since,
                _ => {
                    self.runnable_since = Some((number, cpu));
                    cpu
                }
            };
            cpu.saturating_sub(since) < COMPUTE_GRACE
        });
        if computing {
            return true;
        }
        let stuck = {
            let mut available = lock(&leadership.available);
            match &*available {
                Some(put_down) if put_down.number == number => available.take(),
                _ => None,
            }
        };
        if let Some(put_down) = stuck {
            // Later requests for this route go to the pool at once, even those already
            // queued behind this one.
            leadership.blocking_routes.mark(put_down.route);
            leadership.take_over(put_down);
        }
        true
    }
}
