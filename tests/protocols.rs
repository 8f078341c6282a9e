//! HTTP/1.1 and HTTP/2 over TLS chosen by ALPN, plain HTTP/1.1 and h2c, IPv6, and
//! `Protocols` restrictions — with the hyper client and with curl.

mod common;

use common::*;
use hyper::{StatusCode, Version};
use portcullis::{Protocols, Server};

#[test]
fn alpn_offering_both_negotiates_http2() {
    let handle = spawn_tls(info_handler);
    let addr = addr(&handle);
    block_on(async move {
        let stream = tls_connect(addr, ALPN_BOTH).await.expect("TLS connect");
        assert_eq!(negotiated_alpn(&stream).as_deref(), Some(&b"h2"[..]));
        let mut client = Client::h2(stream, &format!("localhost:{}", addr.port()), true)
            .await
            .expect("h2 handshake");
        let reply = client.get("/hello").await.expect("GET over h2");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.version, Version::HTTP_2);
        assert_eq!(
            reply.text(),
            "protocol=Http2 tls=Some(Tls13) sni=localhost alpn=h2 is_tls=true path=/hello"
        );
    });
    stop(handle);
}

#[test]
fn alpn_offering_only_http1_negotiates_http1() {
    let handle = spawn_tls(info_handler);
    let addr = addr(&handle);
    block_on(async move {
        let stream = tls_connect(addr, ALPN_H1).await.expect("TLS connect");
        assert_eq!(negotiated_alpn(&stream).as_deref(), Some(&b"http/1.1"[..]));
        let mut client = Client::h1(stream, &format!("localhost:{}", addr.port()), true)
            .await
            .expect("h1 handshake");
        let reply = client.get("/one").await.expect("GET over h1");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.version, Version::HTTP_11);
        assert_eq!(
            reply.text(),
            "protocol=Http1 tls=Some(Tls13) sni=localhost alpn=http/1.1 is_tls=true path=/one"
        );
        // Keep-alive: a second request on the same connection.
        let reply = client.get("/two").await.expect("second GET over h1");
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.text().ends_with("path=/two"), "{}", reply.text());
    });
    stop(handle);
}

#[test]
fn no_alpn_gets_http1() {
    let handle = spawn_tls(info_handler);
    let addr = addr(&handle);
    block_on(async move {
        let stream = tls_connect(addr, ALPN_NONE).await.expect("TLS connect");
        assert_eq!(negotiated_alpn(&stream), None);
        let mut client = Client::h1(stream, &format!("localhost:{}", addr.port()), true)
            .await
            .expect("h1 handshake");
        let reply = client.get("/").await.expect("GET");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.version, Version::HTTP_11);
        assert_eq!(
            reply.text(),
            "protocol=Http1 tls=Some(Tls13) sni=localhost alpn=- is_tls=true path=/"
        );
    });
    stop(handle);
}

#[test]
fn tls12_client_is_served_and_reported() {
    let handle = spawn_tls(info_handler);
    let addr = addr(&handle);
    block_on(async move {
        let stream = tls_connect_with(addr, client_config_tls12(ALPN_BOTH))
            .await
            .expect("TLS 1.2 connect");
        assert_eq!(negotiated_alpn(&stream).as_deref(), Some(&b"h2"[..]));
        let mut client = Client::h2(stream, &format!("localhost:{}", addr.port()), true)
            .await
            .expect("h2 handshake");
        let reply = client.get("/v12").await.expect("GET over TLS 1.2");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.version, Version::HTTP_2);
        assert_eq!(
            reply.text(),
            "protocol=Http2 tls=Some(Tls12) sni=localhost alpn=h2 is_tls=true path=/v12"
        );
    });
    stop(handle);
}

#[test]
fn curl_http1_and_http2_over_tls() {
    let handle = spawn_tls(info_handler);
    let addr = addr(&handle);

    let h1 = curl(addr, true, "/curl1", &["--http1.1"]);
    assert_eq!(h1.status, 200, "{h1:?}");
    assert_eq!(h1.version, "1.1");
    assert_eq!(
        String::from_utf8_lossy(&h1.body),
        "protocol=Http1 tls=Some(Tls13) sni=localhost alpn=http/1.1 is_tls=true path=/curl1"
    );

    let h2 = curl(addr, true, "/curl2", &["--http2"]);
    assert_eq!(h2.status, 200, "{h2:?}");
    assert_eq!(h2.version, "2");
    assert_eq!(
        String::from_utf8_lossy(&h2.body),
        "protocol=Http2 tls=Some(Tls13) sni=localhost alpn=h2 is_tls=true path=/curl2"
    );

    // curl forced to TLS 1.2 is reported as such.
    let v12 = curl(addr, true, "/v12", &["--http2", "--tls-max", "1.2"]);
    assert_eq!(v12.status, 200, "{v12:?}");
    assert_eq!(v12.version, "2");
    assert_eq!(
        String::from_utf8_lossy(&v12.body),
        "protocol=Http2 tls=Some(Tls12) sni=localhost alpn=h2 is_tls=true path=/v12"
    );

    stop(handle);
}

#[test]
fn plain_http1_and_h2c_prior_knowledge() {
    let handle = plain_server().spawn(info_handler).expect("spawn");
    let addr = addr(&handle);

    let h1 = curl(addr, false, "/plain1", &["--http1.1"]);
    assert_eq!(h1.status, 200, "{h1:?}");
    assert_eq!(h1.version, "1.1");
    assert_eq!(
        String::from_utf8_lossy(&h1.body),
        "protocol=Http1 tls=None sni=- alpn=- is_tls=false path=/plain1"
    );

    let h2c = curl(addr, false, "/plain2", &["--http2-prior-knowledge"]);
    assert_eq!(h2c.status, 200, "{h2c:?}");
    assert_eq!(h2c.version, "2");
    assert_eq!(
        String::from_utf8_lossy(&h2c.body),
        "protocol=Http2 tls=None sni=- alpn=- is_tls=false path=/plain2"
    );

    block_on(async move {
        let mut client = Client::connect_plain(addr, Version::HTTP_11).await;
        let reply = client.get("/hyper1").await.expect("plain h1 GET");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.version, Version::HTTP_11);
        assert_eq!(
            reply.text(),
            "protocol=Http1 tls=None sni=- alpn=- is_tls=false path=/hyper1"
        );

        let mut client = Client::connect_plain(addr, Version::HTTP_2).await;
        let reply = client.get("/hyper2").await.expect("h2c GET");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.version, Version::HTTP_2);
        assert_eq!(
            reply.text(),
            "protocol=Http2 tls=None sni=- alpn=- is_tls=false path=/hyper2"
        );
    });
    stop(handle);
}

#[test]
fn ipv6_loopback() {
    let server = match Server::bind("[::1]:0") {
        Ok(server) => server,
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
            // Counted by .ci/run (PORTCULLIS_SKIP_LOG), a failure with PORTCULLIS_NO_SKIP=1.
            skip(
                "ipv6_loopback",
                &format!("cannot bind [::1]:0 ({e}); no IPv6 loopback on this machine"),
            );
            return;
        }
        Err(e) => panic!("bind [::1]:0: {e}"),
    };
    let handle = server
        .tls(localhost_tls())
        .spawn(|req, info| {
            let text = format!(
                "{} peer_v6={}",
                describe(&req, &info),
                info.peer_addr().is_ipv6()
            );
            portcullis::Response::new(portcullis::Body::from(text))
        })
        .expect("spawn");
    let addr = addr(&handle);
    assert!(addr.is_ipv6(), "{addr}");
    block_on(async move {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let reply = get_tls(addr, version, "/v6").await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.version, version);
            assert!(
                reply.text().ends_with("path=/v6 peer_v6=true"),
                "{}",
                reply.text()
            );
        }
    });
    // curl to https://localhost:port resolved to ::1 (the certificate has IP:::1 and
    // DNS:localhost).
    let reply = curl(addr, true, "/curl6", &["--http2"]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.version, "2");
    stop(handle);
}

#[test]
fn http1_only_never_speaks_http2() {
    let handle = tls_server()
        .protocols(Protocols::Http1Only)
        .spawn(info_handler)
        .expect("spawn");
    let addr = addr(&handle);
    block_on(async move {
        let stream = tls_connect(addr, ALPN_BOTH).await.expect("TLS connect");
        assert_eq!(negotiated_alpn(&stream).as_deref(), Some(&b"http/1.1"[..]));
        let mut client = Client::h1(stream, &format!("localhost:{}", addr.port()), true)
            .await
            .expect("h1 handshake");
        let reply = client.get("/only1").await.expect("GET");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.version, Version::HTTP_11);
        assert_eq!(
            reply.text(),
            "protocol=Http1 tls=Some(Tls13) sni=localhost alpn=http/1.1 is_tls=true path=/only1"
        );

        // A client that insists on h2 shares no protocol with the server: handshake fails.
        // No common protocol: the handshake fails with the no_application_protocol alert.
        let refused = tls_connect(addr, ALPN_H2)
            .await
            .expect_err("h2-only client accepted by an Http1Only server");
        assert!(
            refused
                .to_string()
                .contains("received fatal alert: NoApplicationProtocol"),
            "h2-only client accepted by an Http1Only server: refused with {refused}"
        );
    });
    let reply = curl(addr, true, "/curl", &["--http2"]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.version, "1.1");
    stop(handle);
}

#[test]
fn http2_only_serves_http2_even_without_alpn() {
    let handle = tls_server()
        .protocols(Protocols::Http2Only)
        .spawn(info_handler)
        .expect("spawn");
    let addr = addr(&handle);
    block_on(async move {
        let stream = tls_connect(addr, ALPN_NONE).await.expect("TLS connect");
        let mut client = Client::h2(stream, &format!("localhost:{}", addr.port()), true)
            .await
            .expect("h2 handshake");
        let reply = client.get("/only2").await.expect("GET");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.version, Version::HTTP_2);
        assert!(
            reply.text().starts_with("protocol=Http2 "),
            "{}",
            reply.text()
        );

        // No common protocol: the handshake fails with the no_application_protocol alert.
        let refused = tls_connect(addr, ALPN_H1)
            .await
            .expect_err("http/1.1-only client accepted by an Http2Only server");
        assert!(
            refused
                .to_string()
                .contains("received fatal alert: NoApplicationProtocol"),
            "http/1.1-only client accepted by an Http2Only server: refused with {refused}"
        );
    });
    stop(handle);
}

#[test]
fn also_bind_and_from_listeners() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let first = listener.local_addr().expect("local addr");
    let handle = Server::from_listeners(vec![listener])
        .also_bind("127.0.0.1:0")
        .expect("also_bind")
        .tls(localhost_tls())
        .spawn(info_handler)
        .expect("spawn");
    let addrs = handle.local_addrs().to_vec();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert_eq!(addrs[0], first);
    assert_ne!(addrs[1].port(), 0);
    block_on(async move {
        for addr in addrs {
            let reply = get_tls(addr, Version::HTTP_2, "/multi").await;
            assert_eq!(reply.status, StatusCode::OK);
        }
    });
    stop(handle);
}
