//! The `routing` example as a black box: path parameters, the JSON API, 404 and 405, and
//! HSTS on every HTTPS response.

mod common;
mod tlsutil;

use common::*;
use hyper::{StatusCode, Version};
use tlsutil::*;

#[test]
fn routing_example_routes_and_speaks_json() {
    let routing = Example::start("routing", &[]);
    let addr = routing.addr;
    block_on(async move {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let mut client = Client::connect_tls(addr, version).await;

            let reply = client.get("/hello/portcullis").await.expect("GET");
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.text(), "Hello, portcullis!\n");
            assert_eq!(
                reply
                    .headers
                    .get("strict-transport-security")
                    .map(|v| v.as_bytes()),
                Some(&b"max-age=63072000; includeSubDomains"[..])
            );

            let reply = client
                .post("/api/notes", &br#"{"text":"buy milk"}"#[..])
                .await
                .expect("POST");
            assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
            let created: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
            assert_eq!(created["text"], "buy milk");
            let id = created["id"].as_u64().expect("numeric id");
            assert_eq!(
                reply.headers.get("location").map(|v| v.as_bytes()),
                Some(format!("/api/notes/{id}").as_bytes())
            );

            let reply = client.get(&format!("/api/notes/{id}")).await.expect("GET");
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(
                reply.headers.get("content-type").map(|v| v.as_bytes()),
                Some(&b"application/json"[..])
            );
            let note: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
            assert_eq!(note, serde_json::json!({ "id": id, "text": "buy milk" }));

            let reply = client.get("/api/notes").await.expect("GET list");
            let list: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
            assert!(
                list["notes"]
                    .as_array()
                    .is_some_and(|n| n.iter().any(|n| n["id"] == id)),
                "{list}"
            );

            let reply = client.post("/api/notes", "not json").await.expect("POST");
            assert_eq!(reply.status, StatusCode::BAD_REQUEST);
            assert!(reply.text().contains("invalid JSON"), "{}", reply.text());

            let reply = client.get("/api/notes/abc").await.expect("GET");
            assert_eq!(reply.status, StatusCode::BAD_REQUEST);
            let reply = client.get("/api/notes/999999").await.expect("GET");
            assert_eq!(reply.status, StatusCode::NOT_FOUND);
            let reply = client.get("/no/such/route").await.expect("GET");
            assert_eq!(reply.status, StatusCode::NOT_FOUND);

            let req = client.request("PUT", "/api/notes", Default::default());
            let reply = client.send(req).await.expect("PUT");
            assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(
                reply.headers.get("allow").map(|v| v.as_bytes()),
                Some(&b"GET, POST"[..])
            );

            let req = client.request("DELETE", &format!("/api/notes/{id}"), Default::default());
            assert_eq!(
                client.send(req).await.expect("DELETE").status,
                StatusCode::NO_CONTENT
            );
            let reply = client.get(&format!("/api/notes/{id}")).await.expect("GET");
            assert_eq!(reply.status, StatusCode::NOT_FOUND);

            let reply = client.get("/api/connection").await.expect("GET");
            let info: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
            assert_eq!(info["server_name"], "localhost");
            assert_eq!(info["tls"], "Tls13");
            assert_eq!(info["client_certificate"], false);
            let want = if version == Version::HTTP_2 {
                "HTTP/2"
            } else {
                "HTTP/1.1"
            };
            assert_eq!(info["protocol"], want);
        }
    });
}
