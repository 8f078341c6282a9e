//! Several reactors (`Server::reactors`): connections spread over all of them, each
//! connection stays on one, and a handler that blocks one reactor's leader does not stall
//! the connections of another.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use hyper::{StatusCode, Version};
use portcullis::{Body, ConnectionInfo, Request, Response};

/// Answers `<reactor> <thread name>`; `/block` first waits at the gate, `/work` first
/// spins for 200 µs (protocol work alone is too little load on a fast machine).
fn handler(gate: Gate) -> impl Fn(Request, ConnectionInfo) -> Response + Send + Sync {
    move |req, info| {
        match req.uri().path() {
            "/block" => gate.wait(),
            "/work" => {
                let start = Instant::now();
                while start.elapsed() < Duration::from_micros(200) {
                    std::hint::spin_loop();
                }
            }
            _ => {}
        }
        let thread = std::thread::current().name().unwrap_or("-").to_string();
        Response::new(Body::from(format!("{} {thread}", info.reactor())))
    }
}

/// `(reactor, thread name)` from a reply of [`handler`].
fn parse(text: &str) -> (usize, String) {
    let (reactor, thread) = text
        .split_once(' ')
        .expect("reactor and thread in the reply");
    (reactor.parse().expect("reactor index"), thread.to_string())
}

/// An inline handler runs on its own reactor's leader: a thread named after that reactor.
fn assert_thread_matches(reactor: usize, thread: &str) {
    if let Some(index) = thread.strip_prefix("pc-reactor-") {
        assert_eq!(
            index,
            reactor.to_string(),
            "a request of reactor {reactor} ran on the leader of another"
        );
    }
}

#[test]
fn two_reactors_both_serve_connections_under_load() {
    let handle = tls_server()
        .reactors(2)
        .spawn(handler(Gate::default()))
        .expect("spawn");
    assert_eq!(handle.reactors(), 2);
    let addr = addr(&handle);
    let (connections, requests) = block_on(async move {
        // 12 clients at once, each with 4 connections (HTTP/1.1 and HTTP/2) kept open
        // while it sends 10 requests on each, then a new connection per request for 10.
        let mut clients = Vec::new();
        for client in 0..12 {
            clients.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut kept = Vec::new();
                for i in 0..4 {
                    let version = if (client + i) % 2 == 0 {
                        Version::HTTP_11
                    } else {
                        Version::HTTP_2
                    };
                    kept.push(Client::connect_tls(addr, version).await);
                }
                for _ in 0..10 {
                    for (i, conn) in kept.iter_mut().enumerate() {
                        let reply = conn.get("/work").await.expect("GET /work");
                        assert_eq!(reply.status, StatusCode::OK);
                        let (reactor, thread) = parse(&reply.text());
                        assert_thread_matches(reactor, &thread);
                        seen.push((i, reactor));
                    }
                }
                // A connection never moves: all its replies name one reactor.
                for i in 0..kept.len() {
                    let on: Vec<_> = seen.iter().filter(|s| s.0 == i).map(|s| s.1).collect();
                    assert!(
                        on.windows(2).all(|w| w[0] == w[1]),
                        "a connection moved: {on:?}"
                    );
                }
                let mut connections: Vec<usize> = (0..kept.len())
                    .map(|i| seen.iter().find(|s| s.0 == i).map_or(usize::MAX, |s| s.1))
                    .collect();
                let mut requests: Vec<usize> = seen.iter().map(|s| s.1).collect();
                drop(kept);
                for _ in 0..10 {
                    let reply = get_tls(addr, Version::HTTP_11, "/work").await;
                    assert_eq!(reply.status, StatusCode::OK);
                    let (reactor, thread) = parse(&reply.text());
                    assert_thread_matches(reactor, &thread);
                    connections.push(reactor);
                    requests.push(reactor);
                }
                (connections, requests)
            }));
        }
        let mut connections = BTreeMap::<usize, usize>::new();
        let mut requests = BTreeMap::<usize, usize>::new();
        for client in clients {
            let (c, r) = within(Duration::from_secs(60), "the clients", client)
                .await
                .expect("client task");
            c.into_iter()
                .for_each(|x| *connections.entry(x).or_default() += 1);
            r.into_iter()
                .for_each(|x| *requests.entry(x).or_default() += 1);
        }
        (connections, requests)
    });
    stop(handle);
    eprintln!("connections per reactor: {connections:?}, requests per reactor: {requests:?}");
    let total: usize = connections.values().sum();
    assert_eq!(total, 12 * 14);
    assert_eq!(connections.keys().copied().collect::<Vec<_>>(), [0, 1]);
    for (reactor, count) in &connections {
        // Balanced by count within a few connections (see BALANCE_SLACK); a quarter
        // leaves room for a loaded machine, one reactor taking everything fails.
        assert!(
            *count >= total / 4,
            "reactor {reactor} served only {count} of {total} connections: {connections:?}"
        );
    }
    for (reactor, count) in &requests {
        assert!(
            *count >= 12 * 50 / 5,
            "reactor {reactor} served only {count} requests: {requests:?}"
        );
    }
}

#[test]
fn a_handler_blocking_one_reactor_does_not_stall_the_other() {
    let gate = Gate::default();
    let handle = tls_server()
        .reactors(2)
        .max_workers(8)
        .spawn(handler(gate.clone()))
        .expect("spawn");
    let addr = addr(&handle);
    block_on(async move {
        // Open connections until there is one on each reactor (new connections go to the
        // reactor with fewer, within a few).
        let mut on: BTreeMap<usize, Client> = BTreeMap::new();
        let mut spare = Vec::new();
        for _ in 0..24 {
            let mut client = Client::connect_tls(addr, Version::HTTP_11).await;
            let (reactor, _) = parse(&client.get("/").await.expect("GET /").text());
            if let std::collections::btree_map::Entry::Vacant(slot) = on.entry(reactor) {
                slot.insert(client);
            } else {
                spare.push(client);
            }
            if on.len() == 2 {
                break;
            }
        }
        assert_eq!(
            on.keys().copied().collect::<Vec<_>>(),
            [0, 1],
            "24 connections did not reach both reactors"
        );
        let mut blocked = on.remove(&0).expect("a connection on reactor 0");
        let mut other = on.remove(&1).expect("a connection on reactor 1");
        // Reactor 0's leader runs the handler inline (a route never seen before) and
        // blocks in it until the gate opens.
        let blocking = tokio::spawn(async move {
            let reply = blocked.get("/block").await.expect("GET /block");
            (reply.status, reply.text())
        });
        gate.wait_for_waiters(1);
        let mut worst = Duration::ZERO;
        let mut times = Vec::new();
        for _ in 0..100 {
            let start = Instant::now();
            let reply = other.get("/").await.expect("GET / on reactor 1");
            let took = start.elapsed();
            assert_eq!(reply.status, StatusCode::OK);
            let (reactor, thread) = parse(&reply.text());
            assert_eq!(reactor, 1);
            // Served inline by reactor 1's own leader, which nothing on reactor 0 touches.
            assert_eq!(thread, "pc-reactor-1");
            worst = worst.max(took);
            times.push(took);
        }
        gate.open();
        let (status, text) = within(Duration::from_secs(10), "the blocked handler", blocking)
            .await
            .expect("blocked request task");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(parse(&text), (0, "pc-reactor-0".to_string()));
        times.sort();
        let median = times[times.len() / 2];
        eprintln!(
            "reactor 1 while reactor 0's leader was blocked: median {median:?}, worst {worst:?}"
        );
        // A stall would be the gate's 10 s; the bounds leave room for a loaded machine.
        assert!(median < Duration::from_millis(20), "median {median:?}");
        assert!(worst < Duration::from_secs(1), "worst {worst:?}");
        drop(spare);
    });
    stop(handle);
}

#[test]
fn connections_opened_while_idle_spread_over_the_reactors() {
    // EPOLLEXCLUSIVE alone wakes the first reactor found asleep: one after another on an
    // idle server, every connection would land on reactor 0, and a keep-alive pool opened
    // at a quiet moment would later load one core only.
    let handle = tls_server()
        .reactors(2)
        .spawn(handler(Gate::default()))
        .expect("spawn");
    let addr = addr(&handle);
    let counts = block_on(async move {
        let mut kept = Vec::new();
        let mut counts = BTreeMap::<usize, usize>::new();
        for _ in 0..24 {
            let mut client = Client::connect_tls(addr, Version::HTTP_11).await;
            let (reactor, _) = parse(&client.get("/").await.expect("GET /").text());
            *counts.entry(reactor).or_default() += 1;
            kept.push(client);
            // Idle between connections: every reactor is asleep when the next arrives.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        counts
    });
    stop(handle);
    eprintln!("24 connections opened one by one: {counts:?}");
    for reactor in 0..2 {
        let count = counts.get(&reactor).copied().unwrap_or(0);
        // Within BALANCE_SLACK (4) + 1/8 of each other (15 and 9), and one to spare.
        assert!(
            count >= 8,
            "reactor {reactor} holds {count} of 24: {counts:?}"
        );
    }
}

/// Connections that never start their handshake: counted from accept, and never idle
/// keep-alive connections that could be closed to make room.
async fn silent_connections(addr: std::net::SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut open = Vec::new();
    for _ in 0..n {
        open.push(tcp(addr).await.expect("connect"));
        // One at a time, so that the reactors balance them (a burst may land on one).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    open
}

#[test]
fn connection_limits_count_across_reactors() {
    // max_connections: 8 silent connections (spread over both reactors, neither holds 8)
    // fill the server; a ninth waits until one closes.
    let mut limits = portcullis::Limits::default();
    limits.max_connections = 8;
    let handle = tls_server()
        .reactors(2)
        .limits(limits)
        .spawn(handler(Gate::default()))
        .expect("spawn");
    let addr = common::addr(&handle);
    block_on(async move {
        let mut open = silent_connections(addr, 8).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let waiting = tokio::spawn(async move {
            let mut client = Client::connect_tls(addr, Version::HTTP_11).await;
            client.get("/").await.expect("GET").status
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !waiting.is_finished(),
            "a ninth connection was served with max_connections = 8 over 2 reactors"
        );
        drop(open.remove(0));
        let status = within(Duration::from_secs(5), "the waiting connection", waiting)
            .await
            .expect("waiting task");
        assert_eq!(status, StatusCode::OK);
    });
    stop(handle);

    // max_connections_per_ip: 6 from 127.0.0.1 over both reactors; a seventh is closed.
    let mut limits = portcullis::Limits::default();
    limits.max_connections_per_ip = 6;
    let handle = tls_server()
        .reactors(2)
        .limits(limits)
        .spawn(handler(Gate::default()))
        .expect("spawn");
    let addr = common::addr(&handle);
    block_on(async move {
        let open = silent_connections(addr, 6).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let refused = within(
            Duration::from_secs(5),
            "the seventh connection",
            tls_connect(addr, ALPN_H1),
        )
        .await;
        assert!(
            refused.is_err(),
            "a seventh connection from one address got through over 2 reactors"
        );
        drop(open);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let reply = get_tls(addr, Version::HTTP_11, "/").await;
        assert_eq!(reply.status, StatusCode::OK);
    });
    stop(handle);
}

#[test]
fn shutdown_drains_every_reactor() {
    let gate = Gate::default();
    let handle = tls_server()
        .reactors(2)
        .spawn(handler(gate.clone()))
        .expect("spawn");
    let addr = common::addr(&handle);
    let runtime = runtime();
    // One connection on each reactor with a request in flight (blocked at the gate).
    let (clients, in_flight) = runtime.block_on(async move {
        let mut on: BTreeMap<usize, Client> = BTreeMap::new();
        let mut spare = Vec::new();
        for _ in 0..24 {
            let mut client = Client::connect_tls(addr, Version::HTTP_2).await;
            let (reactor, _) = parse(&client.get("/").await.expect("GET /").text());
            if let std::collections::btree_map::Entry::Vacant(slot) = on.entry(reactor) {
                slot.insert(client);
            } else {
                spare.push(client);
            }
            if on.len() == 2 {
                break;
            }
        }
        assert_eq!(on.len(), 2, "24 connections did not reach both reactors");
        let mut in_flight = Vec::new();
        for (reactor, client) in &on {
            let mut client = client.clone_h2();
            let reactor = *reactor;
            in_flight.push(tokio::spawn(async move {
                let reply = client.get("/block").await.expect("GET /block");
                (reactor, reply.status, parse(&reply.text()).0)
            }));
        }
        (on, in_flight)
    });
    gate.wait_for_waiters(2);
    // Shutdown begins while both handlers run; it returns once both reactors drained.
    let opener = {
        let gate = gate.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            gate.open();
        })
    };
    let took = shutdown_within(handle, Duration::from_secs(10));
    opener.join().unwrap();
    assert!(
        took >= Duration::from_millis(250),
        "shutdown did not wait: {took:?}"
    );
    runtime.block_on(async move {
        for task in in_flight {
            let (reactor, status, served_by) = task.await.expect("in-flight task");
            assert_eq!(status, StatusCode::OK, "reactor {reactor} lost its request");
            assert_eq!(served_by, reactor);
        }
        drop(clients);
    });
    // Both reactors closed the listener: a new connection is refused.
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting"
    );
}
