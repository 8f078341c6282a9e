//! How should connections be spread over several reactors? A probe that measures the three
//! candidates on the machine at hand, without TLS or HTTP so that only the spreading shows:
//!
//! - `reuseport`: one listening socket per reactor, bound with `SO_REUSEPORT` (the kernel
//!   hashes each new connection's addresses to one of them);
//! - `exclusive`: one listening socket, registered in every reactor's epoll with
//!   `EPOLLEXCLUSIVE` (a new connection wakes one reactor asleep in `epoll_wait`; busy ones
//!   find it at their next poll); what portcullis does, plus its count balancing;
//! - `handoff`: one acceptor thread that hands each accepted socket to the reactors in
//!   turn (a queue and a `mio::Waker`).
//!
//! Each reactor answers a connection's one-byte request after `--work-us` of spinning (a
//! stand-in for a TLS handshake) with its own index, and keeps the connection open. Three
//! patterns, each with fresh reactors: `idle` (connections opened one at a time, 2 ms
//! apart), `burst` (8 clients opening connections as fast as they can), `busy` (the burst,
//! while reactor 0 spins 2 ms in each of its loop turns, as if one of its connections were
//! heavy). Printed: connections per reactor, and the time from `connect` to the answer
//! (p50 / p99).
//!
//! `cargo run --release --bin spread -- [--reactors N] [--conns N] [--work-us N]`

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::{TcpListener as MioListener, TcpStream as MioStream};
use mio::{Events, Interest, Poll, Token, Waker};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

#[derive(Clone, Copy, PartialEq, Debug)]
enum Strategy {
    ReusePort,
    Exclusive,
    Handoff,
}

struct Reactor {
    index: usize,
    poll: Poll,
    listener: Option<MioListener>,
    inbox: Arc<Mutex<Vec<TcpStream>>>,
    busy: bool,
    work: Duration,
}

fn spin(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

impl Reactor {
    fn run(mut self, stop: Arc<AtomicBool>) {
        let mut events = Events::with_capacity(256);
        let mut conns: Vec<Option<MioStream>> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if self.busy {
                spin(Duration::from_millis(2));
            }
            let _ = self
                .poll
                .poll(&mut events, Some(Duration::from_millis(20)));
            let mut fresh = Vec::new();
            for event in events.iter() {
                match event.token() {
                    LISTENER => {
                        if let Some(listener) = &self.listener {
                            while let Ok((s, _)) = listener.accept() {
                                fresh.push(s);
                            }
                        }
                    }
                    WAKER => {
                        let taken = std::mem::take(&mut *self.inbox.lock().unwrap());
                        for s in taken {
                            s.set_nonblocking(true).unwrap();
                            fresh.push(MioStream::from_std(s));
                        }
                    }
                    Token(i) => {
                        if let Some(Some(s)) = conns.get_mut(i) {
                            self.serve(s);
                        }
                    }
                }
            }
            for mut s in fresh {
                let token = Token(conns.len());
                self.poll
                    .registry()
                    .register(&mut s, token, Interest::READABLE)
                    .unwrap();
                self.serve(&mut s);
                conns.push(Some(s));
            }
        }
    }

    fn serve(&self, s: &mut MioStream) {
        let mut buf = [0u8; 16];
        if let Ok(n) = s.read(&mut buf) {
            if n > 0 {
                spin(self.work);
                let _ = s.write_all(&[b'0' + self.index as u8]);
            }
        }
    }
}

fn register_exclusive(poll: &Poll, l: &MioListener) {
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLET | libc::EPOLLEXCLUSIVE) as u32,
        u64: LISTENER.0 as u64,
    };
    // SAFETY: both descriptors are open and `ev` is a valid epoll_event.
    let r = unsafe { libc::epoll_ctl(poll.as_raw_fd(), libc::EPOLL_CTL_ADD, l.as_raw_fd(), &mut ev) };
    assert_eq!(r, 0, "epoll_ctl: {}", std::io::Error::last_os_error());
}

fn reuseport_listener(addr: SocketAddr) -> TcpListener {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_reuse_port(true).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&addr.into()).unwrap();
    s.listen(1024).unwrap();
    s.into()
}

/// Starts `n` reactors with `strategy`; returns the address and the stopper.
fn start(strategy: Strategy, n: usize, work: Duration, busy: bool) -> (SocketAddr, Arc<AtomicBool>) {
    let stop = Arc::new(AtomicBool::new(false));
    let first = match strategy {
        Strategy::ReusePort => reuseport_listener("127.0.0.1:0".parse().unwrap()),
        _ => TcpListener::bind("127.0.0.1:0").unwrap(),
    };
    let addr = first.local_addr().unwrap();
    let mut inboxes = Vec::new();
    for index in 0..n {
        let poll = Poll::new().unwrap();
        let waker = Waker::new(poll.registry(), WAKER).unwrap();
        let inbox = Arc::new(Mutex::new(Vec::new()));
        inboxes.push((inbox.clone(), waker));
        let listener = match strategy {
            Strategy::ReusePort => {
                let l = if index == 0 {
                    first.try_clone().unwrap()
                } else {
                    reuseport_listener(addr)
                };
                l.set_nonblocking(true).unwrap();
                let mut l = MioListener::from_std(l);
                poll.registry()
                    .register(&mut l, LISTENER, Interest::READABLE)
                    .unwrap();
                Some(l)
            }
            Strategy::Exclusive => {
                let l = first.try_clone().unwrap();
                l.set_nonblocking(true).unwrap();
                let l = MioListener::from_std(l);
                register_exclusive(&poll, &l);
                Some(l)
            }
            Strategy::Handoff => None,
        };
        let reactor = Reactor {
            index,
            poll,
            listener,
            inbox,
            busy: busy && index == 0,
            work,
        };
        let stop = stop.clone();
        std::thread::spawn(move || reactor.run(stop));
    }
    if strategy == Strategy::Handoff {
        let stop = stop.clone();
        first.set_nonblocking(false).unwrap();
        std::thread::spawn(move || {
            let mut next = 0;
            for s in first.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(s) = s else { continue };
                let (inbox, waker) = &inboxes[next % inboxes.len()];
                inbox.lock().unwrap().push(s);
                waker.wake().unwrap();
                next += 1;
            }
        });
    } else {
        // `first` stays open through the clones; this one closes.
        drop(first);
    }
    (addr, stop)
}

/// One connection: connect, send a byte, wait for the reactor's index.
fn connect(addr: SocketAddr) -> (TcpStream, usize, Duration) {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    (s, (b[0] - b'0') as usize, start.elapsed())
}

fn measure(strategy: Strategy, pattern: &str, n: usize, conns: usize, work: Duration) {
    let (addr, stop) = start(strategy, n, work, pattern == "busy");
    std::thread::sleep(Duration::from_millis(50));
    let results: Vec<(TcpStream, usize, Duration)> = if pattern == "idle" {
        (0..conns)
            .map(|_| {
                let r = connect(addr);
                std::thread::sleep(Duration::from_millis(2));
                r
            })
            .collect()
    } else {
        let clients: Vec<_> = (0..8)
            .map(|_| {
                let per = conns / 8;
                std::thread::spawn(move || (0..per).map(|_| connect(addr)).collect::<Vec<_>>())
            })
            .collect();
        clients.into_iter().flat_map(|c| c.join().unwrap()).collect()
    };
    let mut counts = vec![0; n];
    let mut times: Vec<Duration> = Vec::new();
    for (_, r, t) in &results {
        counts[*r] += 1;
        times.push(*t);
    }
    times.sort();
    let p = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!(
        "| {strategy:?} | {pattern} | {counts:?} | {:.2} | {:.2} |",
        p(0.5),
        p(0.99)
    );
    stop.store(true, Ordering::Relaxed);
    drop(results);
    std::thread::sleep(Duration::from_millis(50));
}

fn main() {
    let mut n = 2;
    let mut conns = 400;
    let mut work_us = 100;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let v: usize = args.next().and_then(|v| v.parse().ok()).expect("a number");
        match flag.as_str() {
            "--reactors" => n = v,
            "--conns" => conns = v,
            "--work-us" => work_us = v,
            _ => panic!("flags: --reactors N --conns N --work-us N"),
        }
    }
    let work = Duration::from_micros(work_us as u64);
    println!("{n} reactors, {conns} connections per pattern, {work_us} µs of work per connection");
    println!();
    println!("| strategy | pattern | connections per reactor | connect→answer p50 ms | p99 ms |");
    println!("| --- | --- | --- | ---: | ---: |");
    for pattern in ["idle", "burst", "busy"] {
        for strategy in [Strategy::ReusePort, Strategy::Exclusive, Strategy::Handoff] {
            let c = if pattern == "idle" { conns / 4 } else { conns };
            measure(strategy, pattern, n, c, work);
        }
    }
}
