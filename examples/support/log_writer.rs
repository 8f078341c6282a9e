//! A log writer for a busy server: the logging thread only appends to a buffer; a thread
//! of its own writes the buffer to stderr every 100 ms, or as soon as 256 KiB are waiting.
//!
//! Why not `tracing_appender::non_blocking`: its writer thread parks whenever its queue is
//! empty and is woken by the next line, so a server that logs a line per request pays a
//! thread wake-up (and, pinned to one core, a context switch) per request. Here a line
//! costs a mutex and a copy; a system call and a wake-up are shared by thousands of lines.
//! Nothing is dropped: past 8 MiB waiting (stderr stuck), the logging thread writes
//! itself, which slows it down rather than losing lines.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

const FLUSH_EVERY: Duration = Duration::from_millis(100);
const WAKE_AT: usize = 256 * 1024;
const WRITE_INLINE_AT: usize = 8 * 1024 * 1024;

struct Shared {
    buffer: Mutex<Vec<u8>>,
    wake: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writing end, cloned for every log event (`tracing_subscriber`'s `MakeWriter`).
#[derive(Clone)]
pub struct BufferedStderr {
    shared: Arc<Shared>,
}

/// Writes what is waiting and stops the writer thread when dropped: keep it until `main`
/// returns.
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// The writer and its guard; starts the writer thread.
pub fn buffered_stderr() -> (BufferedStderr, FlushGuard) {
    let shared = Arc::new(Shared {
        buffer: Mutex::new(Vec::with_capacity(WAKE_AT * 2)),
        wake: Condvar::new(),
        stop: AtomicBool::new(false),
    });
    let for_thread = shared.clone();
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_out(&for_thread))
        .expect("start the log writer thread");
    (
        BufferedStderr {
            shared: shared.clone(),
        },
        FlushGuard {
            shared,
            thread: Some(thread),
        },
    )
}

fn write_out(shared: &Shared) {
    let mut spare = Vec::with_capacity(WAKE_AT * 2);
    loop {
        let stopping = {
            let mut buffer = shared.lock();
            if buffer.len() < WAKE_AT && !shared.stop.load(Ordering::Acquire) {
                buffer = shared
                    .wake
                    .wait_timeout(buffer, FLUSH_EVERY)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            std::mem::swap(&mut *buffer, &mut spare);
            shared.stop.load(Ordering::Acquire)
        };
        if !spare.is_empty() {
            // Nowhere to report a failed write to: the log itself is what failed.
            let _ = io::stderr().lock().write_all(&spare);
            spare.clear();
        }
        if stopping && shared.lock().is_empty() {
            return;
        }
    }
}

impl Write for BufferedStderr {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut buffer = self.shared.lock();
        buffer.extend_from_slice(bytes);
        if buffer.len() >= WRITE_INLINE_AT {
            // The writer thread cannot keep up: write here rather than grow or drop.
            let result = io::stderr().lock().write_all(&buffer);
            buffer.clear();
            result?;
        } else if buffer.len() >= WAKE_AT {
            self.shared.wake.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
