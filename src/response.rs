//! Building responses: [`IntoResponse`] and the helpers that implement it.
//!
//! A handler may return anything that is [`IntoResponse`]: a [`Response`], a string, bytes,
//! a [`StatusCode`], `(StatusCode, body)`, [`Html`], `Json` (feature `json`), a
//! [`Redirect`], or a `Result` of two such types — so `?` works inside handlers (see
//! [`Error`](crate::Error) for how errors answer).
//!
//! ```no_run
//! use portcullis::http::StatusCode;
//! use portcullis::response::{Html, Redirect};
//! use portcullis::{ConnectionInfo, IntoResponse, Request, Response, Server};
//!
//! fn route(req: Request, _info: ConnectionInfo) -> Response {
//!     match req.uri().path() {
//!         "/" => Html("<h1>Welcome</h1>").into_response(),
//!         "/old" => Redirect::permanent("/").into_response(),
//!         path => (StatusCode::NOT_FOUND, format!("no page at {path}\n")).into_response(),
//!     }
//! }
//!
//! fn main() -> Result<(), portcullis::Error> {
//!     Server::bind("127.0.0.1:8080")?.serve(route)?;
//!     Ok(())
//! }
//! ```
//!
//! For anything else, the `http` crate's builder ([`builder`]) takes any body that converts
//! into a [`Body`] and the result is itself [`IntoResponse`], `http::Error` included, so no
//! `unwrap` is needed.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::StatusCode;

use crate::body::Body;
use crate::service::Response;

/// Converts a handler's return value into a [`Response`].
///
/// | type | status | `Content-Type` |
/// |---|---|---|
/// | [`Response`], `http::Response<T>` for any `T: Into<Body>` | as built | as built |
/// | `&str`, `String` | 200 | `text/plain; charset=utf-8` |
/// | `&[u8]`, `Vec<u8>`, [`Bytes`] | 200 | `application/octet-stream` |
/// | [`Body`] | 200 | none |
/// | `()` | 200, empty | none |
/// | [`StatusCode`] | that status, empty | none |
/// | `(StatusCode, T)` | that status | `T`'s |
/// | [`Html<T>`] | 200 | `text/html; charset=utf-8` |
/// | `Json<T>` (feature `json`) | 200 (500 if it cannot be serialized) | `application/json` |
/// | [`Redirect`] | 303, 307 or 308 | none (`Location` set) |
/// | `Result<T, E>` | `T`'s or `E`'s | `T`'s or `E`'s |
/// | [`Error`](crate::Error), [`std::io::Error`], [`http::Error`] | see [`Error`](crate::Error) | `text/plain; charset=utf-8` |
///
/// Borrowed strings and bytes are copied, so `req.uri().path()` works as a body.
///
/// ```
/// use portcullis::http::StatusCode;
/// use portcullis::IntoResponse;
///
/// let response = (StatusCode::CREATED, String::from("made\n")).into_response();
/// assert_eq!(response.status(), StatusCode::CREATED);
/// assert_eq!(response.headers()["content-type"], "text/plain; charset=utf-8");
/// ```
pub trait IntoResponse {
    /// The response.
    fn into_response(self) -> Response;
}

fn with_type(body: Body, content_type: &'static str) -> Response {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

const TEXT: &str = "text/plain; charset=utf-8";
const BINARY: &str = "application/octet-stream";

impl<T: Into<Body>> IntoResponse for http::Response<T> {
    fn into_response(self) -> Response {
        self.map(Into::into)
    }
}

impl IntoResponse for Body {
    fn into_response(self) -> Response {
        Response::new(self)
    }
}

impl IntoResponse for &str {
    fn into_response(self) -> Response {
        with_type(Body::from(self), TEXT)
    }
}

impl IntoResponse for String {
    fn into_response(self) -> Response {
        with_type(Body::from(self), TEXT)
    }
}

impl IntoResponse for &[u8] {
    fn into_response(self) -> Response {
        with_type(Body::from(self), BINARY)
    }
}

impl IntoResponse for Vec<u8> {
    fn into_response(self) -> Response {
        with_type(Body::from(self), BINARY)
    }
}

impl IntoResponse for Bytes {
    fn into_response(self) -> Response {
        with_type(Body::from(self), BINARY)
    }
}

impl IntoResponse for () {
    fn into_response(self) -> Response {
        Response::new(Body::empty())
    }
}

impl IntoResponse for StatusCode {
    /// The status with an empty body.
    ///
    /// ```
    /// use portcullis::{http::StatusCode, IntoResponse};
    ///
    /// let response = StatusCode::NO_CONTENT.into_response();
    /// assert_eq!(response.status(), 204);
    /// ```
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = self;
        response
    }
}

impl<T: IntoResponse> IntoResponse for (StatusCode, T) {
    fn into_response(self) -> Response {
        let mut response = self.1.into_response();
        *response.status_mut() = self.0;
        response
    }
}

impl<T: IntoResponse, E: IntoResponse> IntoResponse for Result<T, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(ok) => ok.into_response(),
            Err(error) => error.into_response(),
        }
    }
}

/// An HTML page: `200` with `Content-Type: text/html; charset=utf-8`.
///
/// ```
/// use portcullis::{response::Html, IntoResponse};
///
/// let name = "world";
/// let response = Html(format!("<p>Hello, {name}</p>")).into_response();
/// assert_eq!(response.headers()["content-type"], "text/html; charset=utf-8");
/// ```
///
/// The text is sent as it is: escape what comes from users.
#[derive(Clone, Debug)]
pub struct Html<T>(pub T);

impl<T: Into<Body>> IntoResponse for Html<T> {
    fn into_response(self) -> Response {
        with_type(self.0.into(), "text/html; charset=utf-8")
    }
}

/// A value sent as JSON: `200` with `Content-Type: application/json` (feature `json`).
///
/// A value that cannot be serialized (a map with non-string keys, say) answers `500` and
/// is logged.
///
/// ```
/// # #[cfg(feature = "json")] {
/// use portcullis::{response::Json, IntoResponse};
///
/// #[derive(serde::Serialize)]
/// struct Note {
///     id: u64,
///     text: String,
/// }
///
/// let response = Json(Note { id: 1, text: "milk".into() }).into_response();
/// assert_eq!(response.headers()["content-type"], "application/json");
/// # }
/// ```
#[cfg(feature = "json")]
#[derive(Clone, Debug)]
pub struct Json<T>(pub T);

#[cfg(feature = "json")]
impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(bytes) => with_type(Body::from(bytes), "application/json"),
            Err(error) => crate::Error::internal(format!("cannot serialize the response: {error}"))
                .into_response(),
        }
    }
}

/// A redirect: an empty body with `Location`.
///
/// ```
/// use portcullis::{response::Redirect, IntoResponse};
///
/// let response = Redirect::see_other("/notes/7").into_response();
/// assert_eq!(response.status(), 303);
/// assert_eq!(response.headers()["location"], "/notes/7");
/// ```
///
/// A location that is not a valid header value (a control character, say) answers `500`
/// and is logged.
#[derive(Clone, Debug)]
pub struct Redirect {
    status: StatusCode,
    location: String,
}

impl Redirect {
    /// `303 See Other`: the client follows with a `GET` (after a form `POST`, say).
    pub fn see_other(location: impl Into<String>) -> Redirect {
        Redirect {
            status: StatusCode::SEE_OTHER,
            location: location.into(),
        }
    }

    /// `307 Temporary Redirect`: same method and body, this time only.
    ///
    /// ```
    /// use portcullis::{response::Redirect, IntoResponse};
    ///
    /// assert_eq!(Redirect::temporary("/b").into_response().status(), 307);
    /// ```
    pub fn temporary(location: impl Into<String>) -> Redirect {
        Redirect {
            status: StatusCode::TEMPORARY_REDIRECT,
            location: location.into(),
        }
    }

    /// `308 Permanent Redirect`: same method and body, and clients may remember it.
    ///
    /// ```
    /// use portcullis::{response::Redirect, IntoResponse};
    ///
    /// assert_eq!(Redirect::permanent("/b").into_response().status(), 308);
    /// ```
    pub fn permanent(location: impl Into<String>) -> Redirect {
        Redirect {
            status: StatusCode::PERMANENT_REDIRECT,
            location: location.into(),
        }
    }
}

impl IntoResponse for Redirect {
    fn into_response(self) -> Response {
        match HeaderValue::try_from(self.location) {
            Ok(location) => {
                let mut response = self.status.into_response();
                response.headers_mut().insert(header::LOCATION, location);
                response
            }
            Err(error) => crate::Error::internal(format!("invalid redirect location: {error}"))
                .into_response(),
        }
    }
}

/// The `http` crate's response builder, from portcullis (`portcullis::Response::builder()`
/// does not exist, because [`Response`] is an alias of `http::Response<Body>`).
///
/// Its `body(..)` takes any type: a string, bytes or a [`Body`]. The `Result` it returns
/// is itself [`IntoResponse`] (a builder error answers `500`), so a handler can return it
/// as it is:
///
/// ```
/// use portcullis::{response, ConnectionInfo, IntoResponse, Request};
///
/// fn gone(req: Request, _info: ConnectionInfo) -> impl IntoResponse {
///     response::builder()
///         .status(410)
///         .header("cache-control", "max-age=3600")
///         .body(format!("{} is gone\n", req.uri().path()))
/// }
/// # let _ = gone;
/// ```
pub fn builder() -> http::response::Builder {
    http::Response::builder()
}
