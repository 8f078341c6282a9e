//! How a real application is laid out: a router (the `matchit` crate) with path
//! parameters, shared state, a JSON API (`serde_json`), `404`/`405` answers, and a
//! `Strict-Transport-Security` header on every HTTPS response.
//!
//! ```text
//! cargo run --release --example routing
//! curl --cacert certs/ca.crt https://localhost:8443/hello/world
//! curl --cacert certs/ca.crt https://localhost:8443/api/notes -d '{"text":"buy milk"}'
//! curl --cacert certs/ca.crt https://localhost:8443/api/notes/1
//! curl --cacert certs/ca.crt https://localhost:8443/api/connection
//! ```
//!
//! Takes the same flags as `hello` (`--help`).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use portcullis::http::{header, HeaderValue, Method, StatusCode};
use portcullis::{Body, ConnectionInfo, Request, Response};
use serde_json::{json, Value};

/// Request bodies larger than this are refused with 413.
const MAX_JSON_BODY: u64 = 64 * 1024;

/// Two years, the value hstspreload.org asks for.
const HSTS: &str = "max-age=63072000; includeSubDomains";

/// Everything a handler may need: the application's state.
#[derive(Default)]
struct App {
    notes: Mutex<BTreeMap<u64, String>>,
    next_id: AtomicU64,
}

/// One request's context: the app, the request, the path parameters, the connection.
struct Ctx<'a> {
    app: &'a App,
    req: Request,
    params: HashMap<String, String>,
    info: ConnectionInfo,
}

impl Ctx<'_> {
    fn param(&self, name: &str) -> &str {
        self.params.get(name).map(String::as_str).unwrap_or("")
    }
}

type Handler = fn(Ctx<'_>) -> Response;

/// Path patterns to the handlers for each method.
struct Routes {
    router: matchit::Router<Vec<(Method, Handler)>>,
}

impl Routes {
    fn new() -> Result<Routes, matchit::InsertError> {
        let mut router = matchit::Router::new();
        router.insert("/", vec![(Method::GET, index as Handler)])?;
        router.insert("/hello/{name}", vec![(Method::GET, hello as Handler)])?;
        router.insert(
            "/api/notes",
            vec![
                (Method::GET, list_notes as Handler),
                (Method::POST, create_note as Handler),
            ],
        )?;
        router.insert(
            "/api/notes/{id}",
            vec![
                (Method::GET, get_note as Handler),
                (Method::DELETE, delete_note as Handler),
            ],
        )?;
        router.insert(
            "/api/connection",
            vec![(Method::GET, connection as Handler)],
        )?;
        Ok(Routes { router })
    }

    fn handle(&self, app: &App, req: Request, info: ConnectionInfo) -> Response {
        let is_tls = info.is_tls();
        let mut response = match self.router.at(req.uri().path()) {
            Err(_) => error(StatusCode::NOT_FOUND, "no such route"),
            Ok(matched) => {
                let method = if req.method() == Method::HEAD {
                    Method::GET
                } else {
                    req.method().clone()
                };
                match matched.value.iter().find(|(m, _)| *m == method) {
                    Some((_, handler)) => {
                        let params = matched
                            .params
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect();
                        handler(Ctx {
                            app,
                            req,
                            params,
                            info,
                        })
                    }
                    None => {
                        let allow: Vec<&str> =
                            matched.value.iter().map(|(m, _)| m.as_str()).collect();
                        let mut response =
                            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
                        if let Ok(value) = HeaderValue::from_str(&allow.join(", ")) {
                            response.headers_mut().insert(header::ALLOW, value);
                        }
                        response
                    }
                }
            }
        };
        // HSTS: browsers that saw this over HTTPS go straight to HTTPS from then on.
        if is_tls {
            response.headers_mut().insert(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static(HSTS),
            );
        }
        response
    }
}

fn index(_ctx: Ctx<'_>) -> Response {
    text(
        StatusCode::OK,
        "routes: GET /hello/{name}, GET|POST /api/notes, GET|DELETE /api/notes/{id}, GET /api/connection\n"
            .to_string(),
    )
}

fn hello(ctx: Ctx<'_>) -> Response {
    text(StatusCode::OK, format!("Hello, {}!\n", ctx.param("name")))
}

fn list_notes(ctx: Ctx<'_>) -> Response {
    let notes = lock(&ctx.app.notes);
    let list: Vec<Value> = notes
        .iter()
        .map(|(id, text)| json!({ "id": id, "text": text }))
        .collect();
    json_response(StatusCode::OK, &json!({ "notes": list }))
}

fn create_note(ctx: Ctx<'_>) -> Response {
    // The body is a blocking `Read`: take at most MAX_JSON_BODY + 1 bytes of it.
    let mut body = Vec::new();
    let read = ctx
        .req
        .into_body()
        .take(MAX_JSON_BODY + 1)
        .read_to_end(&mut body);
    if let Err(e) = read {
        return error(StatusCode::BAD_REQUEST, &format!("cannot read body: {e}"));
    }
    if body.len() as u64 > MAX_JSON_BODY {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    }
    let text = match serde_json::from_slice::<Value>(&body) {
        Ok(value) => match value.get("text").and_then(Value::as_str) {
            Some(text) => text.to_string(),
            None => return error(StatusCode::BAD_REQUEST, "expected {\"text\": string}"),
        },
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")),
    };
    let id = ctx.app.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    lock(&ctx.app.notes).insert(id, text.clone());
    let mut response = json_response(StatusCode::CREATED, &json!({ "id": id, "text": text }));
    if let Ok(location) = HeaderValue::from_str(&format!("/api/notes/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn get_note(ctx: Ctx<'_>) -> Response {
    let Ok(id) = ctx.param("id").parse::<u64>() else {
        return error(StatusCode::BAD_REQUEST, "the id is a number");
    };
    match lock(&ctx.app.notes).get(&id) {
        Some(text) => json_response(StatusCode::OK, &json!({ "id": id, "text": text })),
        None => error(StatusCode::NOT_FOUND, "no such note"),
    }
}

fn delete_note(ctx: Ctx<'_>) -> Response {
    let Ok(id) = ctx.param("id").parse::<u64>() else {
        return error(StatusCode::BAD_REQUEST, "the id is a number");
    };
    match lock(&ctx.app.notes).remove(&id) {
        Some(_) => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
        None => error(StatusCode::NOT_FOUND, "no such note"),
    }
}

fn connection(ctx: Ctx<'_>) -> Response {
    let info = &ctx.info;
    json_response(
        StatusCode::OK,
        &json!({
            "peer": info.peer_addr().to_string(),
            "protocol": info.protocol().to_string(),
            "tls": info.tls_version().map(|v| format!("{v:?}")),
            "server_name": info.server_name(),
            "client_certificate": info.peer_certificates().is_some(),
        }),
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn text(status: StatusCode, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut body = value.to_string();
    body.push('\n');
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({ "error": message }))
}

/// A start-up error (a certificate that cannot be read, an address in use) is printed as
/// its message: `portcullis::Error`'s `Debug` is its `Display`.
fn main() -> Result<(), portcullis::Error> {
    let _logs = support::init_logging();
    let args = support::Args::parse();
    let routes = Routes::new().map_err(std::io::Error::other)?;
    let app = Arc::new(App::default());
    let server = args.start(move |req, info| routes.handle(&app, req, info))?;
    server.join()?;
    Ok(())
}
