//! The `json_api` example as a black box, over HTTP/1.1 and HTTP/2: handlers with `?`,
//! the error -> response mapping, `Json`/`Html`/status-only responses, and its 1 MiB
//! body limit.

mod common;
mod tlsutil;

use common::*;
use hyper::{StatusCode, Version};
use tlsutil::*;

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[test]
fn json_api_example_answers_with_the_documented_statuses() {
    let example = Example::start("json_api", &[]);
    let addr = example.addr;
    block_on(async move {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let mut client = Client::connect_tls(addr, version).await;

            let reply = client.get("/").await.expect("GET /");
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(header(&reply, "content-type"), "text/html; charset=utf-8");

            let reply = client
                .post("/notes", &br#"{"text":"buy milk"}"#[..])
                .await
                .expect("POST");
            assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
            assert_eq!(header(&reply, "content-type"), "application/json");
            let note: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
            assert_eq!(note["text"], "buy milk");
            let id = note["id"].as_u64().expect("numeric id");
            assert_eq!(header(&reply, "location"), format!("/notes/{id}"));

            let reply = client.get(&format!("/notes/{id}")).await.expect("GET");
            assert_eq!(reply.status, StatusCode::OK);
            let got: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
            assert_eq!(got, serde_json::json!({ "id": id, "text": "buy milk" }));

            let reply = client.get("/notes").await.expect("GET list");
            let list: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
            assert!(
                list.as_array()
                    .is_some_and(|notes| notes.iter().any(|n| n["id"] == id)),
                "{list}"
            );

            // Errors from `?`: bad JSON is 400 with the parser's reason, as text.
            let reply = client.post("/notes", "{not json").await.expect("POST");
            assert_eq!(reply.status, StatusCode::BAD_REQUEST);
            assert_eq!(header(&reply, "content-type"), "text/plain; charset=utf-8");
            assert!(reply.text().starts_with("invalid JSON"), "{}", reply.text());
            let reply = client
                .post("/notes", &br#"{"title":"x"}"#[..])
                .await
                .expect("POST");
            assert_eq!(reply.status, StatusCode::BAD_REQUEST);
            assert!(
                reply.text().contains("missing field `text`"),
                "{}",
                reply.text()
            );
            // Errors built by the handler.
            let reply = client
                .post("/notes", &br#"{"text":"  "}"#[..])
                .await
                .expect("POST");
            assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
            assert_eq!(reply.text(), "a note needs some text\n");
            let reply = client.get("/notes/abc").await.expect("GET");
            assert_eq!(reply.status, StatusCode::BAD_REQUEST);
            let reply = client.get("/notes/999999").await.expect("GET");
            assert_eq!(reply.status, StatusCode::NOT_FOUND);
            assert_eq!(reply.text(), "no note 999999\n");
            let reply = client.get("/nowhere").await.expect("GET");
            assert_eq!(reply.status, StatusCode::NOT_FOUND);
            let req = client.request("PUT", "/notes", Default::default());
            let reply = client.send(req).await.expect("PUT");
            assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);

            // Status-only: 204 with an empty body.
            let req = client.request("DELETE", &format!("/notes/{id}"), Default::default());
            let reply = client.send(req).await.expect("DELETE");
            assert_eq!(reply.status, StatusCode::NO_CONTENT);
            assert!(reply.body.is_empty());
            let reply = client.get(&format!("/notes/{id}")).await.expect("GET");
            assert_eq!(reply.status, StatusCode::NOT_FOUND);
        }

        // The example's 1 MiB limit: a larger declared body is 413 before the handler.
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let mut client = Client::connect_tls(addr, version).await;
            let big = format!(r#"{{"text":"{}"}}"#, "x".repeat(2 * 1024 * 1024));
            let reply = client.post("/notes", big).await.expect("POST big");
            assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{version:?}");
        }
    });
}
