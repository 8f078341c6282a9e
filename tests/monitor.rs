//! The monitor of leader/followers: one thread (`pc-monitor`, at nice 19) watches every
//! reactor of a server, sleeps while no handler runs inline, wakes for the next one, has
//! followers started at the normal priority, and ends with the server. Alone in its test
//! binary, so that the threads it counts are its server's only.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use hyper::{StatusCode, Version};
use portcullis::{Body, ConnectionInfo, Request, Response};

/// Answers the reactor's index; `/block` first waits at the gate.
fn handler(gate: Gate) -> impl Fn(Request, ConnectionInfo) -> Response + Send + Sync {
    move |req, info| {
        if req.uri().path() == "/block" {
            gate.wait();
        }
        Response::new(Body::from(info.reactor().to_string()))
    }
}

/// This process's threads whose names start with `prefix`: name and nice value.
fn threads(prefix: &str) -> Vec<(String, i64)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        // `tid (comm) state ...`: the nice value is field 19, the 17th after the `)`.
        let Ok(stat) = std::fs::read_to_string(task.expect("a task").path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        let (open, close) = (stat.find('(').unwrap(), stat.rfind(')').unwrap());
        let name = &stat[open + 1..close];
        if name.starts_with(prefix) {
            let nice = stat[close + 2..]
                .split(' ')
                .nth(16)
                .unwrap()
                .parse()
                .unwrap();
            found.push((name.to_string(), nice));
        }
    }
    found
}

fn threads_named(prefix: &str) -> Vec<String> {
    threads(prefix).into_iter().map(|(name, _)| name).collect()
}

#[test]
fn one_monitor_watches_every_reactor_wakes_from_idle_and_ends_with_the_server() {
    let gate = Gate::default();
    let handle = tls_server()
        .reactors(4)
        .spawn(handler(gate.clone()))
        .expect("spawn");
    let addr = addr(&handle);
    block_on(async move {
        // Connections on every reactor, each serving a few inline requests.
        let mut by_reactor: BTreeMap<usize, Vec<Client>> = BTreeMap::new();
        for _ in 0..32 {
            let mut client = Client::connect_tls(addr, Version::HTTP_11).await;
            let mut reactor = 0;
            for _ in 0..5 {
                let reply = client.get("/").await.expect("GET /");
                assert_eq!(reply.status, StatusCode::OK);
                reactor = reply.text().parse::<usize>().expect("a reactor index");
            }
            by_reactor.entry(reactor).or_default().push(client);
        }
        assert_eq!(
            by_reactor.keys().copied().collect::<Vec<_>>(),
            [0, 1, 2, 3],
            "32 connections did not reach all 4 reactors"
        );
        assert_eq!(
            threads("pc-monitor"),
            [("pc-monitor".to_string(), 19)],
            "4 reactors serving inline handlers: one monitor thread, not one per reactor, \
             at the lowest priority (nice 19), so that its looks do not preempt a reactor"
        );

        // Quiet for a while: the monitor parks (after about 100 ms without inline
        // handlers). The next handler must wake it, or a blocking one would stall its
        // reactor's other connections until it returns (the gate's 10 s).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (reactor, clients) = by_reactor
            .iter_mut()
            .find(|(_, clients)| clients.len() >= 2)
            .expect("two connections on one reactor");
        let reactor = *reactor;
        let mut blocked = clients.pop().expect("a connection");
        let mut beside = clients.pop().expect("another connection");
        let blocking = tokio::spawn(async move {
            let reply = blocked.get("/block").await.expect("GET /block");
            (reply.status, reply.text())
        });
        let waiter = gate.clone();
        tokio::task::spawn_blocking(move || waiter.wait_for_waiters(1))
            .await
            .unwrap();
        let mut took = Vec::new();
        for _ in 0..20 {
            let started = Instant::now();
            let reply = within(
                Duration::from_secs(5),
                "a quick request beside a blocked handler",
                beside.get("/"),
            )
            .await
            .expect("GET / beside the blocked handler");
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(
                reply.text(),
                reactor.to_string(),
                "moved to another reactor"
            );
            took.push(started.elapsed());
        }
        assert!(!blocking.is_finished(), "the gated handler did not wait");
        // The monitor took the reactor over: the follower that leads it now was started
        // at the normal priority, not with the monitor's.
        let leaders = threads(&format!("pc-reactor-{reactor}"));
        assert!(
            leaders.len() >= 2,
            "no follower took the reactor over: {leaders:?}"
        );
        assert!(
            leaders.iter().all(|&(_, nice)| nice == 0),
            "a reactor thread runs at the monitor's low priority: {leaders:?}"
        );
        gate.open();
        let (status, text) = within(Duration::from_secs(10), "the blocked handler", blocking)
            .await
            .expect("blocked request task");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(text, reactor.to_string());
        took.sort();
        let (median, slowest) = (took[took.len() / 2], took[took.len() - 1]);
        // A stall would be the gate's 10 s; the bounds leave room for a loaded machine.
        assert!(
            median < Duration::from_millis(20) && slowest < Duration::from_secs(1),
            "requests beside a handler blocked after a quiet spell took median {median:?}, \
             slowest {slowest:?}"
        );
    });
    stop(handle);
    assert_eq!(
        threads_named("pc-monitor"),
        Vec::<String>::new(),
        "the monitor thread outlived its server"
    );
}
