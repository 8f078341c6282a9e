//! The worker pool: idle connections hold no worker, concurrency up to `max_workers`,
//! handler panics, and load shedding with 503 when the queue is full.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hyper::{StatusCode, Version};
use portcullis::{Body, ConnectionInfo, Limits, Request, Response, ServerHandle};
use tokio::task::JoinSet;

/// `/sleep/<ms>` sleeps, `/panic` panics, `/blocking-panic` blocks for 20 ms and then
/// panics (a blocking route: the reactor hands it to pool workers), anything else answers
/// at once.
fn worker_handler(req: Request, _info: ConnectionInfo) -> Response {
    let path = req.uri().path().to_string();
    if path == "/panic" {
        panic!("handler panicked on purpose (test)");
    }
    if path == "/blocking-panic" {
        std::thread::sleep(Duration::from_millis(20));
        panic!("handler panicked on purpose (test)");
    }
    if let Some(ms) = path.strip_prefix("/sleep/") {
        let ms: u64 = ms.parse().expect("sleep milliseconds");
        std::thread::sleep(Duration::from_millis(ms));
    }
    Response::new(Body::from(format!("done {path}")))
}

/// Polls `cond` every few milliseconds for up to `limit`.
async fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn idle_keep_alive_connections_hold_no_worker() {
    const IDLE: usize = 300;
    let handle = tls_server()
        .max_workers(2)
        .spawn(worker_handler)
        .expect("spawn");
    let addr = addr(&handle);
    let handle = std::sync::Arc::new(handle);
    let stats_handle = handle.clone();
    block_on(async move {
        // Open the idle connections, 25 handshakes at a time; each completes one request.
        let mut idle = Vec::with_capacity(IDLE);
        let mut set = JoinSet::new();
        for i in 0..IDLE {
            set.spawn(async move {
                let mut client = Client::connect_tls(addr, Version::HTTP_11).await;
                let reply = client.get(&format!("/first/{i}")).await.expect("first GET");
                assert_eq!(reply.status, StatusCode::OK);
                client
            });
            if set.len() >= 25 {
                idle.push(set.join_next().await.expect("task").expect("connect task"));
            }
        }
        while let Some(client) = set.join_next().await {
            idle.push(client.expect("connect task"));
        }
        assert_eq!(idle.len(), IDLE);
        let stats = stats_handle.worker_stats();
        assert!(stats.threads <= 2, "{stats:?}");
        wait_for(Duration::from_secs(2), "workers to be idle", || {
            stats_handle.worker_stats().busy == 0
        })
        .await;

        // Every worker is free even though 300 connections are open.
        let started = Instant::now();
        let reply = get_tls(addr, Version::HTTP_11, "/fresh").await;
        let elapsed = started.elapsed();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "done /fresh");
        assert!(
            elapsed < Duration::from_secs(2),
            "a fresh request took {elapsed:?} with {IDLE} idle connections open"
        );
        // Over HTTP/2 too.
        let started = Instant::now();
        let reply = get_tls(addr, Version::HTTP_2, "/fresh2").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );

        // The idle connections were really kept open: each serves a second request.
        for (i, client) in idle.iter_mut().enumerate() {
            assert!(!client.is_closed(), "idle connection {i} was closed");
            let reply = client
                .get("/second")
                .await
                .expect("second GET on idle conn");
            assert_eq!(reply.status, StatusCode::OK);
        }
    });
    let handle = std::sync::Arc::into_inner(handle).expect("sole owner of the handle");
    stop(handle);
}

fn concurrent_sleep_server() -> ServerHandle {
    tls_server()
        .max_workers(64)
        .spawn(worker_handler)
        .expect("spawn")
}

#[test]
fn sixty_four_concurrent_sleeping_requests_http1() {
    let handle = concurrent_sleep_server();
    let addr = addr(&handle);
    let elapsed = block_on(async move {
        let started = Instant::now();
        let mut set = JoinSet::new();
        for i in 0..64 {
            set.spawn(
                async move { get_tls(addr, Version::HTTP_11, &format!("/sleep/200?{i}")).await },
            );
        }
        let mut done = 0;
        while let Some(reply) = set.join_next().await {
            let reply = reply.expect("request task");
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.text(), "done /sleep/200");
            done += 1;
        }
        assert_eq!(done, 64);
        started.elapsed()
    });
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    // Serial would be 64 × 200 ms = 12.8 s.
    assert!(
        elapsed < Duration::from_secs(4),
        "64 concurrent 200 ms requests took {elapsed:?}"
    );
    stop(handle);
}

#[test]
fn sixty_four_concurrent_sleeping_requests_http2_streams() {
    let handle = concurrent_sleep_server();
    let addr = addr(&handle);
    let elapsed = block_on(async move {
        let client = Client::connect_tls(addr, Version::HTTP_2).await;
        let started = Instant::now();
        let mut set = JoinSet::new();
        for i in 0..64 {
            let mut stream = client.clone_h2();
            set.spawn(async move { stream.get(&format!("/sleep/200?{i}")).await });
        }
        let mut done = 0;
        while let Some(reply) = set.join_next().await {
            let reply = reply.expect("request task").expect("h2 GET");
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.version, Version::HTTP_2);
            done += 1;
        }
        assert_eq!(done, 64);
        started.elapsed()
    });
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(4),
        "64 concurrent 200 ms streams took {elapsed:?}"
    );
    stop(handle);
}

#[test]
fn handler_panic_gives_500_on_http1_and_server_recovers() {
    let handle = spawn_tls(worker_handler);
    let addr = addr(&handle);
    block_on(async move {
        let mut client = Client::connect_tls(addr, Version::HTTP_11).await;
        let reply = client.get("/panic").await.expect("GET /panic");
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(reply.version, Version::HTTP_11);

        // The same connection, if it was kept alive.
        if client.is_closed() {
            eprintln!("the server closed the HTTP/1.1 connection after the 500");
        } else {
            let reply = client.get("/ok").await.expect("GET on the same connection");
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.text(), "done /ok");
        }

        // A new connection.
        let reply = get_tls(addr, Version::HTTP_11, "/ok2").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "done /ok2");
    });
    // curl sees the 500 too.
    let reply = curl(addr, true, "/panic", &["--http1.1"]);
    assert_eq!(reply.status, 500);
    assert_eq!(reply.version, "1.1");
    stop(handle);
}

#[test]
fn handler_panic_gives_500_on_http2_and_connection_survives() {
    let handle = spawn_tls(worker_handler);
    let addr = addr(&handle);
    block_on(async move {
        let mut client = Client::connect_tls(addr, Version::HTTP_2).await;
        // No response head went out before the panic, so the client gets a 500, not a
        // reset stream it cannot tell from a network failure.
        let reply = client
            .get("/panic")
            .await
            .unwrap_or_else(|e| panic!("no response: {}", error_chain(&e)));
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(reply.version, Version::HTTP_2);
        assert!(
            !client.is_closed(),
            "the h2 connection closed after a handler panic"
        );
        let reply = client
            .get("/ok")
            .await
            .expect("GET on the same h2 connection");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.version, Version::HTTP_2);
        assert_eq!(reply.text(), "done /ok");
    });
    // curl sees the 500 too.
    let reply = curl(addr, true, "/panic", &["--http2"]);
    assert_eq!(reply.status, 500);
    assert_eq!(reply.version, "2");
    stop(handle);
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Panics on pool workers leave every worker alive. The route blocks before it panics, so
/// that the reactor sends it to the pool (a quick handler that panics runs inline on the
/// reactor's leader thread and involves no worker at all; `/panic` above covers that).
#[test]
fn twenty_panics_leave_the_pool_at_strength() {
    let handle = tls_server()
        .max_workers(2)
        .spawn(worker_handler)
        .expect("spawn");
    let addr = addr(&handle);
    let handle = std::sync::Arc::new(handle);
    let stats_handle = handle.clone();
    block_on(async move {
        let mut h1 = Client::connect_tls(addr, Version::HTTP_11).await;
        let mut h2 = Client::connect_tls(addr, Version::HTTP_2).await;
        for i in 0..20 {
            if i % 2 == 0 {
                if h1.is_closed() {
                    h1 = Client::connect_tls(addr, Version::HTTP_11).await;
                }
                let reply = h1.get("/blocking-panic").await.expect("GET h1");
                assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
            } else {
                let reply = h2.get("/blocking-panic").await.expect("GET h2");
                assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
            }
        }
        let stats = stats_handle.worker_stats();
        assert!(
            stats.threads >= 1,
            "workers died with the panics: {stats:?}"
        );
        assert!(stats.threads <= 2, "{stats:?}");
        wait_for(Duration::from_secs(2), "workers to be idle", || {
            stats_handle.worker_stats().busy == 0
        })
        .await;

        // Requests still work, and both workers still run in parallel: 4 × 300 ms on two
        // workers takes about 600 ms (1.2 s if only one were left).
        let started = Instant::now();
        let mut set = JoinSet::new();
        for _ in 0..4 {
            set.spawn(async move { get_tls(addr, Version::HTTP_11, "/sleep/300").await });
        }
        while let Some(reply) = set.join_next().await {
            assert_eq!(reply.expect("task").status, StatusCode::OK);
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_millis(1150),
            "4 × 300 ms on 2 workers took {elapsed:?}"
        );
        let reply = h2.get("/ok").await.expect("GET after panics");
        assert_eq!(reply.status, StatusCode::OK);
        let stats = stats_handle.worker_stats();
        assert!(stats.threads >= 1 && stats.threads <= 2, "{stats:?}");
    });
    let handle = std::sync::Arc::into_inner(handle).expect("sole owner of the handle");
    stop(handle);
}

#[test]
fn full_queue_sheds_load_with_503_and_retry_after() {
    let mut limits = Limits::default();
    limits.max_workers = 1;
    limits.max_queued_requests = 1;
    let handle = tls_server()
        .limits(limits)
        .spawn(worker_handler)
        .expect("spawn");
    let addr = addr(&handle);
    let handle = std::sync::Arc::new(handle);
    let stats_handle = handle.clone();
    block_on(async move {
        // A occupies the only worker.
        let a = tokio::spawn(async move { get_tls(addr, Version::HTTP_11, "/sleep/1500").await });
        wait_for(Duration::from_secs(3), "A to occupy the worker", || {
            stats_handle.worker_stats().busy == 1
        })
        .await;
        // B waits in the queue.
        let b = tokio::spawn(async move { get_tls(addr, Version::HTTP_11, "/sleep/10").await });
        wait_for(Duration::from_secs(3), "B to be queued", || {
            stats_handle.worker_stats().queued == 1
        })
        .await;

        // C (HTTP/1.1) and D (HTTP/2) are refused at once.
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let mut client = Client::connect_tls(addr, version).await;
            let started = Instant::now();
            let reply = client.get("/c").await.expect("GET C");
            let elapsed = started.elapsed();
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{version:?}");
            assert!(
                reply.headers.contains_key("retry-after"),
                "no Retry-After: {:?}",
                reply.headers
            );
            assert!(
                elapsed < Duration::from_secs(1),
                "503 took {elapsed:?} over {version:?}"
            );
        }
        let stats = stats_handle.worker_stats();
        assert_eq!((stats.busy, stats.queued), (1, 1), "{stats:?}");

        // A and B are served in the end.
        let a = a.await.expect("A task");
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.text(), "done /sleep/1500");
        let b = b.await.expect("B task");
        assert_eq!(b.status, StatusCode::OK);
        assert_eq!(b.text(), "done /sleep/10");

        // With the worker free again, requests are accepted.
        let reply = get_tls(addr, Version::HTTP_11, "/after").await;
        assert_eq!(reply.status, StatusCode::OK);
    });
    let handle = std::sync::Arc::into_inner(handle).expect("sole owner of the handle");
    stop(handle);
}

#[test]
fn connection_limit_pauses_accepting_until_one_closes() {
    let mut limits = Limits::default();
    limits.max_connections = 2;
    let handle = tls_server()
        .limits(limits)
        .spawn(worker_handler)
        .expect("spawn");
    let addr = addr(&handle);
    block_on(async move {
        // Two connections that never start their handshake: counted from accept, and not
        // idle keep-alive connections, which would be closed to make room (that case is
        // tests/hostile.rs `at_the_connection_limit_the_longest_idle_connection_makes_room`).
        let first = tcp(addr).await.expect("connect 1");
        let _second = tcp(addr).await.expect("connect 2");
        tokio::time::sleep(Duration::from_millis(200)).await;

        // A third connection waits in the kernel's backlog: its handshake does not finish.
        let third = tokio::spawn(async move { Client::connect_tls(addr, Version::HTTP_11).await });
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            !third.is_finished(),
            "a third connection was served with max_connections = 2"
        );

        // When one closes, the waiting connection is accepted and served.
        drop(first);
        let mut third = within(Duration::from_secs(3), "the third connection", third)
            .await
            .expect("connect task");
        let reply = third.get("/3").await.expect("GET 3");
        assert_eq!(reply.status, StatusCode::OK);
    });
    stop(handle);
}

/// At `max_connections` an idle connection makes room (as nginx), but only for a
/// connection that waits: reaching the limit alone closes nothing. (Pausing while no
/// connection can make room is `tests/limits.rs`
/// `connection_limit_is_enforced_and_recovers_repeatedly`.)
#[test]
fn connection_limit_closes_an_idle_connection_only_for_one_that_waits() {
    let mut limits = Limits::default();
    limits.max_connections = 2;
    let handle = tls_server()
        .limits(limits)
        .spawn(worker_handler)
        .expect("spawn");
    let addr = addr(&handle);
    block_on(async move {
        let mut first = Client::connect_tls(addr, Version::HTTP_11).await;
        let mut second = Client::connect_tls(addr, Version::HTTP_11).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The limit is reached, nobody waits: both are still served.
        assert_eq!(first.get("/1").await.expect("GET 1").status, StatusCode::OK);
        assert_eq!(
            second.get("/2").await.expect("GET 2").status,
            StatusCode::OK
        );

        // A third connection makes one of the two idle ones close, and is served.
        let mut third = within(
            Duration::from_secs(3),
            "the third connection",
            Client::connect_tls(addr, Version::HTTP_11),
        )
        .await;
        let reply = third.get("/3").await.expect("GET 3");
        assert_eq!(reply.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let served = [
            first.get("/1b").await.is_ok(),
            second.get("/2b").await.is_ok(),
        ];
        assert_eq!(
            served.iter().filter(|ok| **ok).count(),
            1,
            "exactly one idle connection should have made room: {served:?}"
        );
    });
    stop(handle);
}
