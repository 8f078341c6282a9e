//! Running out of file descriptors (EMFILE): the server backs off instead of spinning on
//! its readable listener, keeps serving the connections it has, and accepts again as soon
//! as descriptors are free.
//!
//! The server runs in a child process — this test binary re-executed with
//! `PORTCULLIS_EMFILE_CHILD=1` — whose `RLIMIT_NOFILE` is lowered, soft and hard, by
//! `prlimit` (or the shell's `ulimit` where `prlimit` is missing), so that the server cannot
//! raise it back. The parent measures the child's CPU time through `/proc`.

mod common;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hyper::{StatusCode, Version};
use portcullis::{Body, ConnectionInfo, Limits, Request, Response};

const CHILD_ENV: &str = "PORTCULLIS_EMFILE_CHILD";
const PORT_PREFIX: &str = "PORTCULLIS_EMFILE_PORT=";
/// The child's descriptor limit, soft and hard.
const NOFILE: u32 = 64;
/// Connections the parent opens: well beyond what the child can accept.
const FLOOD: usize = 100;
/// What the server logs when `accept` fails with EMFILE (src/reactor/mod.rs).
const ACCEPT_FAILED: &str = "accept failed; pausing accepts";

/// The server side, run only in the child process.
#[test]
fn emfile_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("portcullis=warn"))
        .with_writer(io::stderr)
        .with_ansi(false)
        .init();
    let mut limits = Limits::default();
    // The parent's silent connections must not time out during the test.
    limits.handshake_timeout = Duration::from_secs(30);
    let handle = tls_server()
        .limits(limits)
        .spawn(|req: Request, _info: ConnectionInfo| {
            Response::new(Body::from(format!("ok {}", req.uri().path())))
        })
        .expect("spawn server");
    println!("{PORT_PREFIX}{}", addr(&handle).port());
    io::stdout().flush().expect("flush stdout");
    // Serve until the parent closes our stdin (or a minute passes).
    let (done, wait) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = io::stdin().read_to_end(&mut Vec::new());
        let _ = done.send(());
    });
    let _ = wait.recv_timeout(Duration::from_secs(60));
    handle.begin_shutdown();
    std::process::exit(0);
}

/// The child process, killed (by its own handle) if the test ends early.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn has_command(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Clock ticks per second, for `/proc/<pid>/stat`.
fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100)
}

/// utime + stime of a process (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/pid/stat");
    // The command name may hold spaces; the fields after it are: state (3) … utime (14),
    // stime (15).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

/// The soft and hard "Max open files" of a process.
fn nofile_limits(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .map(|line| {
            line.split_whitespace()
                .skip(3)
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn accept_failures(stderr: &Mutex<String>) -> usize {
    stderr.lock().unwrap().matches(ACCEPT_FAILED).count()
}

#[test]
fn emfile_backs_off_without_spinning_and_recovers() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut command = if has_command("prlimit") {
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={NOFILE}:{NOFILE}"))
            .arg("--")
            .arg(&exe);
        command
    } else {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                "ulimit -Sn {NOFILE} && ulimit -Hn {NOFILE} && exec \"$0\" \"$@\""
            ))
            .arg(&exe);
        command
    };
    command
        .args(["--exact", "emfile_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard(command.spawn().expect("start the child server"));
    let pid = child.0.id();

    // The child's stdout gives its port; its stderr is its log.
    let (port_tx, port_rx) = mpsc::channel();
    let stdout = child.0.stdout.take().expect("child stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest may have printed "test emfile_child ... " on the same line.
            if let Some(at) = line.find(PORT_PREFIX) {
                let port = line[at + PORT_PREFIX.len()..].trim();
                let _ = port_tx.send(port.parse::<u16>().expect("port"));
            }
        }
    });
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.0.stderr.take().expect("child stderr");
    std::thread::spawn({
        let log = log.clone();
        move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        }
    });
    let port = port_rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            panic!(
                "the child server did not report its port; its log:\n{}",
                log.lock().unwrap()
            )
        });
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let limits = nofile_limits(pid);
    assert_eq!(
        limits,
        format!("{NOFILE} {NOFILE}"),
        "the child's open-file limit (soft hard)"
    );

    let runtime = runtime();
    // A keep-alive connection opened before the descriptors run out.
    let mut early = runtime.block_on(async {
        let mut client = Client::connect_tls(addr, Version::HTTP_11).await;
        let reply = client.get("/early").await.expect("GET /early");
        assert_eq!(reply.status, StatusCode::OK);
        client
    });

    // Far more connections than the child has descriptors for. The kernel completes them
    // all (the backlog is 1024); the server accepts until EMFILE.
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        flood.push(TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("TCP connect"));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while accept_failures(&log) == 0 {
        assert!(
            Instant::now() < deadline,
            "no \"{ACCEPT_FAILED}\" in the child's log after {FLOOD} connections:\n{}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Out of descriptors, with connections waiting in the backlog: the listener stays
    // readable, so a server that retried accept at once would spin at 100% CPU.
    let ticks_per_second = clock_ticks();
    let failures_before = accept_failures(&log);
    let cpu_before = cpu_ticks(pid);
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let cpu_after = cpu_ticks(pid);
    let window = window.elapsed();
    let failures_during = accept_failures(&log) - failures_before;
    let cpu = (cpu_after - cpu_before) as f64 / ticks_per_second as f64;
    let share = cpu / window.as_secs_f64();
    eprintln!(
        "EMFILE: child used {cpu:.3} s of CPU in {window:?} ({:.1}% of a core); \
         {failures_during} accept failures logged in that window",
        share * 100.0
    );
    assert!(
        share < 0.30,
        "the child used {:.1}% of a core while out of descriptors: accept is spinning",
        share * 100.0
    );
    // The back-off is 100 ms: about 20 failed retries in 2 s, not thousands.
    assert!(
        failures_during <= 60,
        "{failures_during} accept failures in {window:?}: no back-off"
    );
    assert!(
        log.lock().unwrap().contains("Too many open files"),
        "the accept failure is not EMFILE:\n{}",
        log.lock().unwrap()
    );

    runtime.block_on(async {
        // The connection the server already had is still served.
        let reply = within(
            Duration::from_secs(3),
            "a request on an existing connection while out of descriptors",
            early.get("/during"),
        )
        .await
        .expect("GET /during");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "ok /during");
    });

    // Descriptors come back: the server accepts again.
    drop(flood);
    let recovered = Instant::now();
    runtime.block_on(async {
        let reply = within(
            Duration::from_secs(3),
            "a new connection after the descriptors were freed",
            get_tls(addr, Version::HTTP_2, "/after"),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "ok /after");
    });
    eprintln!(
        "EMFILE: a new connection was served {:?} after the flood closed; {} accept failures \
         logged in all",
        recovered.elapsed(),
        accept_failures(&log)
    );
    drop(early);
    drop(runtime);

    // The child exits when its stdin closes.
    drop(child.0.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.0.try_wait().expect("wait for the child") {
            Some(status) => {
                assert!(status.success(), "the child server exited with {status}");
                break;
            }
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            None => panic!("the child server did not exit after its stdin closed"),
        }
    }
}

/// At start the server raises its soft `RLIMIT_NOFILE` to the hard limit (as Go does), so
/// that a soft limit of 1024 does not cap it at ~1000 connections: a child started with
/// soft 64 and hard 256 runs with 256 once it listens.
#[test]
fn soft_nofile_limit_is_raised_to_the_hard_limit_at_start() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    const SOFT: u32 = 64;
    const HARD: u32 = 256;
    let exe = std::env::current_exe().expect("current exe");
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!(
            "ulimit -Sn {SOFT} && ulimit -Hn {HARD} && \
             echo \"before: $(ulimit -Sn) $(ulimit -Hn)\" >&2 && exec \"$0\" \"$@\""
        ))
        .arg(&exe)
        .args(["--exact", "emfile_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard(command.spawn().expect("start the child server"));
    let pid = child.0.id();
    let stdout = child.0.stdout.take().expect("child stdout");
    let (port_tx, port_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(PORT_PREFIX) {
                let _ = port_tx.send(());
            }
        }
    });
    let mut stderr = child.0.stderr.take().expect("child stderr");
    let (log_tx, log_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log);
        let _ = log_tx.send(log);
    });
    let listening = port_rx.recv_timeout(Duration::from_secs(30));
    let limits = nofile_limits(pid);
    drop(child.0.stdin.take());
    let _ = child.0.wait();
    let log = log_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_default();
    assert!(
        listening.is_ok(),
        "the child server did not start; its log:\n{log}"
    );
    assert!(
        log.contains(&format!("before: {SOFT} {HARD}")),
        "the child did not start with soft {SOFT}, hard {HARD}:\n{log}"
    );
    assert_eq!(
        limits,
        format!("{HARD} {HARD}"),
        "the server's open-file limit (soft hard) once listening"
    );
}
