//! A small JSON API written the everyday way: handlers return `Result<_, portcullis::Error>`
//! and use `?`, bodies are read with `into_json` under a 1 MiB limit, and responses are
//! built with `Json`, `(StatusCode, ..)` and `Html` (feature `json`).
//!
//! ```text
//! cargo run --release --example json_api
//! curl --cacert certs/ca.crt https://localhost:8443/notes -d '{"text":"buy milk"}'
//! curl --cacert certs/ca.crt https://localhost:8443/notes/1
//! curl --cacert certs/ca.crt https://localhost:8443/notes
//! curl --cacert certs/ca.crt -X DELETE https://localhost:8443/notes/1
//! ```
//!
//! Takes the same flags as `hello` (`--help`); `--max-body-bytes` defaults to 1 MiB here.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use portcullis::http::{Method, StatusCode};
use portcullis::response::{Html, Json};
use portcullis::{ConnectionInfo, Error, IntoResponse, Request, Response};
use serde::{Deserialize, Serialize};

/// What a client sends to create or replace a note.
#[derive(Deserialize)]
struct NewNote {
    text: String,
}

/// A stored note, as the API returns it.
#[derive(Clone, Serialize)]
struct Note {
    id: u64,
    text: String,
}

#[derive(Default)]
struct Notes {
    by_id: BTreeMap<u64, Note>,
    last_id: u64,
}

#[derive(Default)]
struct App {
    notes: Mutex<Notes>,
}

impl App {
    fn notes(&self) -> std::sync::MutexGuard<'_, Notes> {
        self.notes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Routes a request; every error, from `?` or built here, becomes its response.
    fn handle(&self, req: Request, _info: ConnectionInfo) -> Result<Response, Error> {
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (req.method().clone(), segments.as_slice()) {
            (Method::GET, [""]) => Ok(Html(INDEX).into_response()),
            (Method::GET, ["notes"]) => {
                let notes: Vec<Note> = self.notes().by_id.values().cloned().collect();
                Ok(Json(notes).into_response())
            }
            (Method::POST, ["notes"]) => {
                let new: NewNote = req.into_body().into_json()?; // 400, or 413 past 1 MiB
                let note = self.create(new)?;
                let mut response = (StatusCode::CREATED, Json(&note)).into_response();
                let location = format!("/notes/{}", note.id).parse()?;
                response.headers_mut().insert("location", location);
                Ok(response)
            }
            (Method::GET, ["notes", id]) => {
                let id = parse_id(id)?;
                let note = self.notes().by_id.get(&id).cloned();
                let note = note.ok_or_else(|| Error::not_found(format!("no note {id}")))?;
                Ok(Json(note).into_response())
            }
            (Method::DELETE, ["notes", id]) => {
                let id = parse_id(id)?;
                match self.notes().by_id.remove(&id) {
                    Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
                    None => Err(Error::not_found(format!("no note {id}"))),
                }
            }
            (_, ["notes"] | ["notes", _]) => Err(Error::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET, POST or DELETE",
            )),
            _ => Err(Error::not_found(format!("nothing at {path}"))),
        }
    }

    fn create(&self, new: NewNote) -> Result<Note, Error> {
        let text = new.text.trim();
        if text.is_empty() {
            return Err(Error::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "a note needs some text",
            ));
        }
        let mut notes = self.notes();
        notes.last_id += 1;
        let note = Note {
            id: notes.last_id,
            text: text.to_owned(),
        };
        notes.by_id.insert(note.id, note.clone());
        Ok(note)
    }
}

fn parse_id(id: &str) -> Result<u64, Error> {
    id.parse()
        .map_err(|_| Error::bad_request(format!("{id:?} is not a note id")))
}

const INDEX: &str = "<!doctype html><title>notes</title>\
<p>A JSON API: <code>GET /notes</code>, <code>POST /notes</code>, \
<code>GET /notes/ID</code>, <code>DELETE /notes/ID</code>.</p>\n";

fn main() -> Result<(), Error> {
    let _logs = support::init_logging();
    let mut args = support::Args::parse();
    if !args.max_body_bytes_set {
        // JSON documents are small: refuse anything over 1 MiB (nginx's default) with 413.
        args.limits.max_request_body_bytes = 1024 * 1024;
    }
    let app = Arc::new(App::default());
    let server = args.start(move |req, info| app.handle(req, info))?;
    server.join()?;
    Ok(())
}
