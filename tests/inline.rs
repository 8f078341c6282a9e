//! Handlers run inline by the reactor's leader thread (leader/followers): quick complete
//! requests need no worker, and a handler that blocks hands the reactor to another thread
//! so that every other connection is still served.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hyper::body::Bytes;
use hyper::{StatusCode, Version};
use portcullis::{Body, ConnectionInfo, Limits, Request, Response};

/// `/gate` waits at the gate, `/sleep/<ms>` sleeps, `/spin/<ms>` computes (never blocks)
/// for that long, `/thread` names the thread it ran on,
/// `/panic` panics, `/stream` streams 1 MiB, `/echo` echoes its body; else `quick`.
fn handler(gate: Gate) -> impl Fn(Request, ConnectionInfo) -> Response + Send + Sync {
    move |req, _info| {
        let path = req.uri().path().to_string();
        match path.as_str() {
            "/gate" => {
                gate.wait();
                Response::new(Body::from("gate passed"))
            }
            _ if path.starts_with("/thread/") => Response::new(Body::from(
                std::thread::current().name().unwrap_or("-").to_string(),
            )),
            "/panic" => panic!("inline test panics on purpose"),
            "/stream" => Response::new(Body::from_reader(std::io::repeat(b'z').take(1 << 20))),
            "/echo" => Response::new(req.into_body()),
            _ if path.starts_with("/spin/") => {
                let ms: u64 = path["/spin/".len()..].parse().unwrap();
                let until = Instant::now() + Duration::from_millis(ms);
                let mut spins = 0u64;
                while Instant::now() < until {
                    spins = std::hint::black_box(spins + 1);
                }
                Response::new(Body::from(format!("spun {spins}")))
            }
            _ => {
                if let Some(ms) = path.strip_prefix("/sleep/") {
                    std::thread::sleep(Duration::from_millis(ms.parse().unwrap()));
                }
                Response::new(Body::from("quick"))
            }
        }
    }
}

#[test]
fn quick_requests_run_on_the_reactor_thread_without_a_worker() {
    let handle = tls_server().spawn(handler(Gate::default())).expect("spawn");
    let addr = addr(&handle);
    let handle = Arc::new(handle);
    let stats = handle.clone();
    block_on(async move {
        assert_eq!(
            stats.worker_stats().threads,
            0,
            "a worker thread exists before any request"
        );
        let mut all_inline = true;
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let mut client = Client::connect_tls(addr, version).await;
            let mut elsewhere = Vec::new();
            for i in 0..50 {
                let reply = client
                    .get(&format!("/thread/{i}"))
                    .await
                    .expect("GET /thread");
                assert_eq!(reply.status, StatusCode::OK);
                if !reply.text().starts_with("pc-reactor-") {
                    elsewhere.push(reply.text());
                }
            }
            // A preempted run twice within 100 ms sends the route to the pool for a while
            // (the two-strike rule), so a very busy machine may move a few; a regression
            // that dispatches quick requests to the pool moves all of them.
            assert!(
                elsewhere.len() <= 5,
                "{version:?}: {} of 50 quick requests ran off the reactor, on {elsewhere:?}",
                elsewhere.len()
            );
            all_inline &= elsewhere.is_empty();
        }
        // Every request ran on the reactor: then no worker thread was ever started (an idle
        // worker lives for worker_idle_timeout, 10 s, longer than this test).
        if all_inline {
            assert_eq!(
                stats.worker_stats().threads,
                0,
                "every handler ran on the reactor, yet a worker thread was started"
            );
        } else {
            eprintln!(
                "note: some quick requests ran on a worker (busy machine); worker stats {:?}",
                stats.worker_stats()
            );
        }
    });
    let handle = Arc::into_inner(handle).expect("sole owner");
    stop(handle);
}

#[test]
fn streamed_responses_of_inline_handlers_start_no_worker() {
    // The handler runs on the leader, and so do the body's first fill and its refills: a
    // worker thread starting here means the first fill (or the refills) went to the pool,
    // waking a thread that competes with the reactor for its CPU.
    let handle = tls_server().spawn(handler(Gate::default())).expect("spawn");
    let addr = addr(&handle);
    let handle = Arc::new(handle);
    let stats = handle.clone();
    block_on(async move {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let mut client = Client::connect_tls(addr, version).await;
            for _ in 0..5 {
                let reply = client.get("/stream").await.expect("GET /stream");
                assert_eq!(reply.status, StatusCode::OK);
                assert_eq!(reply.body.len(), 1 << 20);
                assert!(reply.body.iter().all(|&b| b == b'z'));
            }
        }
        assert_eq!(
            stats.worker_stats().threads,
            0,
            "a streamed response started a worker thread"
        );
    });
    let handle = Arc::into_inner(handle).expect("sole owner");
    stop(handle);
}

/// Twenty quick requests on `client` while `beside` runs on the same server. The README says
/// about a millisecond each; the median allows a loaded 2-core machine 20 times that, and
/// the slowest one preemption, while anything that waits for the other handler (seconds)
/// or for a poll timeout crosses them.
async fn twenty_quick_requests(client: &mut Client, version: Version, beside: &str) {
    let mut took = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        let reply = within(
            Duration::from_secs(5),
            "a quick request beside another handler",
            client.get(&format!("/q/{i}")),
        )
        .await
        .expect("GET quick");
        assert_eq!(reply.status, StatusCode::OK);
        took.push(started.elapsed());
    }
    took.sort();
    let (median, slowest) = (took[took.len() / 2], took[took.len() - 1]);
    assert!(
        median < Duration::from_millis(20) && slowest < Duration::from_millis(500),
        "{version:?}: quick requests beside {beside} took median {median:?}, \
         slowest {slowest:?} (limits 20 ms, 500 ms)"
    );
}

/// A handler that blocks does not stop other connections: the reactor moves on to
/// another thread while it waits.
#[test]
fn a_blocked_handler_does_not_stall_other_connections() {
    let gate = Gate::default();
    let handle = tls_server().spawn(handler(gate.clone())).expect("spawn");
    let addr = addr(&handle);
    let waiter = gate.clone();
    block_on(async move {
        for (round, version) in [Version::HTTP_11, Version::HTTP_2].into_iter().enumerate() {
            let blocked = tokio::spawn(async move { get_tls(addr, version, "/gate").await });
            let w = waiter.clone();
            tokio::task::spawn_blocking(move || w.wait_for_waiters(round + 1))
                .await
                .unwrap();
            let mut client = Client::connect_tls(addr, version).await;
            twenty_quick_requests(&mut client, version, "a blocked handler").await;
            assert!(!blocked.is_finished(), "the gated handler did not wait");
            // The same connection's other streams (HTTP/2) are served too.
            if version == Version::HTTP_2 {
                let reply = client.get("/other").await.expect("GET /other");
                assert_eq!(reply.status, StatusCode::OK);
            }
        }
    });
    gate.open();
    stop(handle);
}

/// A handler that computes without ever blocking is taken over as well, once it has had
/// the CPU for about a millisecond (a thread merely waiting for a CPU is left the reactor):
/// with one reactor, quick requests from another connection flow while it computes.
#[test]
fn a_computing_handler_does_not_stall_other_connections() {
    let handle = tls_server()
        .reactors(1)
        .spawn(handler(Gate::default()))
        .expect("spawn");
    let addr = addr(&handle);
    block_on(async move {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let started = Instant::now();
            let spinning = tokio::spawn(async move { get_tls(addr, version, "/spin/3000").await });
            // Let it start computing on the reactor's leader thread.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut client = Client::connect_tls(addr, version).await;
            twenty_quick_requests(&mut client, version, "a computing handler").await;
            assert!(
                !spinning.is_finished() && started.elapsed() < Duration::from_millis(2500),
                "the quick requests waited for the computing handler"
            );
            let reply = spinning.await.unwrap();
            assert_eq!(reply.status, StatusCode::OK);
            assert!(String::from_utf8_lossy(&reply.body).starts_with("spun "));
        }
    });
    stop(handle);
}

/// The two guarantees, with the gate closed: a handler blocked on the reactor's leader
/// thread, then quick requests from several connections at once, then the gate opens and
/// every request completes.
#[test]
fn blocked_inline_handler_completes_and_quick_requests_flow_meanwhile() {
    let gate = Gate::default();
    let handle = tls_server().spawn(handler(gate.clone())).expect("spawn");
    let addr = addr(&handle);
    let waiter = gate.clone();
    block_on(async move {
        let blocked = tokio::spawn(async move { get_tls(addr, Version::HTTP_11, "/gate").await });
        let w = waiter.clone();
        tokio::task::spawn_blocking(move || w.wait_for_waiters(1))
            .await
            .unwrap();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..8 {
            let version = if i % 2 == 0 {
                Version::HTTP_11
            } else {
                Version::HTTP_2
            };
            set.spawn(async move {
                let mut client = Client::connect_tls(addr, version).await;
                for _ in 0..10 {
                    let reply = client.get("/quick").await.expect("GET /quick");
                    assert_eq!(reply.status, StatusCode::OK);
                }
            });
        }
        within(Duration::from_secs(10), "quick requests", async {
            while let Some(done) = set.join_next().await {
                done.expect("client task");
            }
        })
        .await;
        assert!(!blocked.is_finished());
        waiter.open();
        let reply = within(Duration::from_secs(10), "the gated request", blocked)
            .await
            .expect("task");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "gate passed");
    });
    stop(handle);
}

/// A handler that calls the very server it runs in would deadlock if its thread kept the
/// reactor: the inner request can only be served by the thread that takes it over.
#[test]
fn a_handler_may_call_its_own_server() {
    let server = plain_server();
    let inner_addr = server.local_addrs()[0];
    let handle = server
        .spawn(move |req: Request, _info: ConnectionInfo| {
            if req.uri().path() != "/outer" {
                return Response::new(Body::from("inner"));
            }
            let mut socket = std::net::TcpStream::connect(inner_addr).expect("connect");
            socket
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            socket
                .write_all(b"GET /inner HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut answer = String::new();
            let _ = socket.read_to_string(&mut answer);
            Response::new(Body::from(format!(
                "outer got: {}",
                answer.rsplit("\r\n").next().unwrap_or("")
            )))
        })
        .expect("spawn");
    let addr = addr(&handle);
    block_on(async move {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let mut client = Client::connect_plain(addr, version).await;
            for _ in 0..3 {
                let reply = within(
                    Duration::from_secs(10),
                    "a handler calling its own server",
                    client.get("/outer"),
                )
                .await
                .expect("GET /outer");
                assert_eq!(reply.text(), "outer got: inner");
            }
        }
    });
    stop(handle);
}

#[test]
fn inline_handlers_read_bodies_panic_and_stream() {
    let handle = tls_server().spawn(handler(Gate::default())).expect("spawn");
    let addr = addr(&handle);
    block_on(async move {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let mut client = Client::connect_tls(addr, version).await;
            // A small body is read whole before the handler runs (inline); a large one
            // streams to a worker.
            for len in [1000, 60_000, 3 << 20] {
                let body = Bytes::from(pseudo_random(len, len as u64));
                let reply = client.post("/echo", body.clone()).await.expect("POST");
                assert_eq!(reply.status, StatusCode::OK);
                assert_same_bytes(&reply.body, &body, "echo");
            }
            let reply = client.get("/stream").await.expect("GET /stream");
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.body.len(), 1 << 20);
            assert!(reply.body.iter().all(|&b| b == b'z'));
            let reply = client.get("/panic").await.expect("GET /panic");
            assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
            if version == Version::HTTP_11 {
                client = Client::connect_tls(addr, version).await;
            }
            let reply = client.get("/after").await.expect("GET after");
            assert_eq!(reply.text(), "quick");
        }
    });
    stop(handle);
}

/// With one worker place, a handler blocked inline holds it: the next request queues and
/// the one after is shed, exactly as on the pool.
#[test]
fn inline_handlers_count_against_max_workers() {
    let mut limits = Limits::default();
    limits.max_workers = 1;
    limits.max_queued_requests = 0;
    let gate = Gate::default();
    let handle = tls_server()
        .limits(limits)
        .spawn(handler(gate.clone()))
        .expect("spawn");
    let addr = addr(&handle);
    let handle = Arc::new(handle);
    let stats = handle.clone();
    let waiter = gate.clone();
    block_on(async move {
        let blocked = tokio::spawn(async move { get_tls(addr, Version::HTTP_11, "/gate").await });
        let w = waiter.clone();
        tokio::task::spawn_blocking(move || w.wait_for_waiters(1))
            .await
            .unwrap();
        assert_eq!(stats.worker_stats().busy, 1, "{:?}", stats.worker_stats());
        let reply = get_tls(addr, Version::HTTP_11, "/shed").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        waiter.open();
        let reply = within(Duration::from_secs(10), "the gated request", blocked)
            .await
            .expect("task");
        assert_eq!(reply.status, StatusCode::OK);
        let reply = get_tls(addr, Version::HTTP_11, "/after").await;
        assert_eq!(reply.status, StatusCode::OK);
    });
    let handle = Arc::into_inner(handle).expect("sole owner");
    stop(handle);
}

/// Shutdown while a handler is blocked inline: the request still completes, then the
/// server stops.
#[test]
fn shutdown_waits_for_a_handler_blocked_inline() {
    let gate = Gate::default();
    let handle = tls_server().spawn(handler(gate.clone())).expect("spawn");
    let addr = addr(&handle);
    let waiter = gate.clone();
    let runtime = runtime();
    let blocked = runtime.spawn(async move { get_tls(addr, Version::HTTP_2, "/gate").await });
    waiter.wait_for_waiters(1);
    handle.begin_shutdown();
    std::thread::sleep(Duration::from_millis(100));
    gate.open();
    let reply = runtime
        .block_on(async { within(Duration::from_secs(10), "gated request", blocked).await })
        .expect("task");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "gate passed");
    let took = shutdown_within(handle, Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
}

/// A route that blocked is sent to the pool for a while, so it stalls the reactor once,
/// not on every request: many concurrent sleeping requests finish in about one sleep.
#[test]
fn sleeping_handlers_run_in_parallel() {
    let handle = tls_server().spawn(handler(Gate::default())).expect("spawn");
    let addr = addr(&handle);
    block_on(async move {
        let started = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..32 {
            let version = if i % 2 == 0 {
                Version::HTTP_11
            } else {
                Version::HTTP_2
            };
            set.spawn(async move { get_tls(addr, version, "/sleep/200").await });
        }
        while let Some(reply) = set.join_next().await {
            assert_eq!(reply.expect("task").status, StatusCode::OK);
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_millis(1500),
            "32 × 200 ms took {elapsed:?}"
        );
    });
    stop(handle);
}
