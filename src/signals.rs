//! Graceful shutdown on `SIGINT` and `SIGTERM`.
//!
//! The first signal begins a graceful shutdown of every server registered here; a second
//! one ends the process at once with status `128 + signal` (130 for Ctrl-C, 143 for
//! `SIGTERM`), as shells report a process killed by that signal.
//!
//! A real handler (`sigaction`), not `sigwait` with the signals blocked: a mask only
//! covers the threads started after it, and a process-directed signal goes to any thread
//! that does not block it — a logging thread started earlier would take it and the default
//! action would kill the process. The handler does only async-signal-safe things: an atomic
//! counter, `write` to a self-pipe, and `_exit` on the second signal. A thread reads the
//! pipe and begins the shutdowns.

use std::io;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Write end of the self-pipe, or -1 before installation.
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);
/// Signals received so far.
static RECEIVED: AtomicUsize = AtomicUsize::new(0);
/// The result of installing the handlers, once (`Err` holds the OS error code).
static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
/// Begins one server's shutdown (nothing if that server is gone already).
type Subscriber = Box<dyn Fn() + Send>;
static SUBSCRIBERS: Mutex<Vec<Subscriber>> = Mutex::new(Vec::new());

extern "C" fn on_signal(signal: libc::c_int) {
    if RECEIVED.fetch_add(1, Ordering::SeqCst) > 0 {
        // SAFETY: `_exit` is async-signal-safe and ends the process without running
        // anything else.
        unsafe { libc::_exit(128 + signal) };
    }
    let fd = PIPE_WRITE.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = signal as u8;
        #[cfg(target_os = "linux")]
        // SAFETY: `__errno_location` returns this thread's errno slot, valid for the
        // thread's life; saving it keeps the interrupted code's errno intact.
        let saved = unsafe { *libc::__errno_location() };
        // SAFETY: `write` is async-signal-safe; `byte` is a valid one-byte buffer and a
        // failed write (a full pipe: a shutdown is already pending) is harmless.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
        #[cfg(target_os = "linux")]
        // SAFETY: as above.
        unsafe {
            *libc::__errno_location() = saved
        };
    }
}

/// Calls `begin_shutdown` on the first `SIGINT` or `SIGTERM`. Installs the handlers on
/// first use.
pub(crate) fn on_shutdown_signal(begin_shutdown: Subscriber) -> io::Result<()> {
    INSTALLED
        .get_or_init(install)
        .map_err(io::Error::from_raw_os_error)?;
    let mut subscribers = SUBSCRIBERS.lock().unwrap_or_else(|e| e.into_inner());
    if RECEIVED.load(Ordering::SeqCst) > 0 {
        // A signal came before this server started: it stops at once.
        begin_shutdown();
    } else {
        subscribers.push(begin_shutdown);
    }
    Ok(())
}

fn install() -> Result<(), i32> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for `pipe2` to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    let [read, write] = fds;
    PIPE_WRITE.store(write, Ordering::SeqCst);
    let watcher = std::thread::Builder::new()
        .name("portcullis-signals".into())
        .spawn(move || watch(read));
    if let Err(error) = watcher {
        return Err(error.raw_os_error().unwrap_or(0));
    }
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `sigaction` is plain data; zeroed is a valid starting point and every
        // field used is set below.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: `sa_mask` is a valid signal set owned by `action`.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: `action` is initialised and `on_signal` only does async-signal-safe work;
        // the old action is not wanted (null is allowed).
        if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
    }
    Ok(())
}

/// The watcher thread: waits for the handler's byte, then begins every shutdown.
fn watch(read: libc::c_int) {
    let mut byte = 0u8;
    loop {
        // SAFETY: `byte` is a valid one-byte buffer; `read` is our pipe's read end.
        let n = unsafe { libc::read(read, (&mut byte as *mut u8).cast(), 1) };
        if n == 1 {
            break;
        }
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        tracing::error!("the signal pipe failed; SIGINT/SIGTERM no longer stop the server");
        return;
    }
    let name = match byte as libc::c_int {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    };
    tracing::warn!(
        signal = name,
        "shutting down gracefully; signal again to exit at once"
    );
    let mut subscribers = SUBSCRIBERS.lock().unwrap_or_else(|e| e.into_inner());
    for begin_shutdown in subscribers.drain(..) {
        begin_shutdown();
    }
}
