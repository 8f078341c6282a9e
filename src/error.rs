//! [`Error`]: what a handler returns with `?`, and what `main` reports at start.

use std::borrow::Cow;
use std::fmt;
use std::io;

use http::StatusCode;

use crate::body::BodyTooLarge;
use crate::response::IntoResponse;
use crate::service::Response;

/// An error with the HTTP status it answers with: for handlers that use `?`, and for
/// `main` at start-up.
///
/// **In a handler**, return `Result<T, portcullis::Error>` (any `T` that is
/// [`IntoResponse`]) and use `?`: the error becomes a response with its status. A client
/// error (4xx) sends its message as `text/plain`; a server error (5xx) sends only the
/// status line's text, and the message goes to the log (`tracing` `error`), so internals
/// never reach the client. Conversions with `?`:
///
/// | from | status |
/// |---|---|
/// | [`io::Error`] of kind `NotFound` | `404 Not Found` |
/// | [`io::Error`] of kind `PermissionDenied` | `403 Forbidden` |
/// | [`io::Error`] of kind `InvalidInput`, `InvalidData`, `UnexpectedEof` | `400 Bad Request` |
/// | [`io::Error`] of kind `TimedOut` | `408 Request Timeout` |
/// | a request body over [`Limits::max_request_body_bytes`](crate::Limits::max_request_body_bytes) | `413 Content Too Large` |
/// | any other [`io::Error`], [`http::Error`], [`InvalidHeaderValue`](http::header::InvalidHeaderValue), [`TlsError`](crate::TlsError) | `500 Internal Server Error` |
/// | [`std::str::Utf8Error`], [`std::string::FromUtf8Error`] | `400 Bad Request` |
/// | `serde_json::Error` (feature `json`) | `400 Bad Request` (`invalid JSON: ...`) |
///
/// Build one yourself with [`Error::new`] or a shorthand ([`Error::bad_request`],
/// [`Error::not_found`], ...).
///
/// ```
/// use portcullis::{ConnectionInfo, Error, Request};
///
/// fn show(req: Request, _info: ConnectionInfo) -> Result<String, Error> {
///     let name = req.uri().path().trim_start_matches('/');
///     if name.is_empty() {
///         return Err(Error::bad_request("which file?"));
///     }
///     // A missing file answers 404, an unreadable one 403.
///     Ok(std::fs::read_to_string(format!("/srv/notes/{name}.txt"))?)
/// }
/// # let _ = show;
/// ```
///
/// **In `main`**, `fn main() -> Result<(), portcullis::Error>` prints a start-up error as
/// its message (`Error: cannot listen on 127.0.0.1:443: Permission denied (os error 13)`),
/// where `std::io::Result` would print its `Debug` form. `?` converts [`io::Error`] and
/// [`TlsError`](crate::TlsError).
///
/// ```no_run
/// use portcullis::{Body, Response, Server, TlsConfig};
///
/// fn main() -> Result<(), portcullis::Error> {
///     let tls = TlsConfig::from_pem_files("certs/localhost.crt", "certs/localhost.key")?;
///     Server::bind("127.0.0.1:8443")?
///         .tls(tls)
///         .serve(|_req, _info| Response::new(Body::from("hi\n")))?;
///     Ok(())
/// }
/// ```
pub struct Error {
    status: StatusCode,
    message: Cow<'static, str>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// An error answering with `status` and `message`.
    ///
    /// ```
    /// use portcullis::{http::StatusCode, Error};
    ///
    /// let error = Error::new(StatusCode::CONFLICT, "that name is taken");
    /// assert_eq!(error.status(), StatusCode::CONFLICT);
    /// assert_eq!(error.to_string(), "that name is taken");
    /// ```
    pub fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Error {
        Error {
            status,
            message: message.into(),
            source: None,
        }
    }

    /// `400 Bad Request` with `message`.
    ///
    /// ```
    /// assert_eq!(portcullis::Error::bad_request("no name").status(), 400);
    /// ```
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Error {
        Error::new(StatusCode::BAD_REQUEST, message)
    }

    /// `404 Not Found` with `message`.
    ///
    /// ```
    /// assert_eq!(portcullis::Error::not_found("no such note").status(), 404);
    /// ```
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Error {
        Error::new(StatusCode::NOT_FOUND, message)
    }

    /// `403 Forbidden` with `message`.
    ///
    /// ```
    /// assert_eq!(portcullis::Error::forbidden("not yours").status(), 403);
    /// ```
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Error {
        Error::new(StatusCode::FORBIDDEN, message)
    }

    /// `500 Internal Server Error`; `message` is logged, not sent.
    ///
    /// ```
    /// let error = portcullis::Error::internal("the database is down");
    /// assert_eq!(error.status(), 500);
    /// ```
    pub fn internal(message: impl Into<Cow<'static, str>>) -> Error {
        Error::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// Keeps `source` as the cause ([`std::error::Error::source`]).
    ///
    /// ```
    /// use std::error::Error as _;
    ///
    /// let cause = std::io::Error::other("disk on fire");
    /// let error = portcullis::Error::internal("cannot save").with_source(cause);
    /// assert_eq!(error.source().map(|s| s.to_string()), Some("disk on fire".into()));
    /// ```
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.source = Some(Box::new(source));
        self
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message (without the source's).
    ///
    /// ```
    /// assert_eq!(portcullis::Error::not_found("gone").message(), "gone");
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }

    fn caused(status: StatusCode, error: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::new(status, error.to_string()).with_source(error)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The message, not the fields: `main` returning `Err` prints this.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<io::Error> for Error {
    fn from(error: io::Error) -> Error {
        let too_large = error
            .get_ref()
            .is_some_and(|inner| inner.is::<BodyTooLarge>());
        let status = if too_large {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            match error.kind() {
                io::ErrorKind::NotFound => StatusCode::NOT_FOUND,
                io::ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
                io::ErrorKind::InvalidInput
                | io::ErrorKind::InvalidData
                | io::ErrorKind::UnexpectedEof => StatusCode::BAD_REQUEST,
                io::ErrorKind::TimedOut => StatusCode::REQUEST_TIMEOUT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            }
        };
        Error::caused(status, error)
    }
}

impl From<crate::TlsError> for Error {
    fn from(error: crate::TlsError) -> Error {
        Error::caused(StatusCode::INTERNAL_SERVER_ERROR, error)
    }
}

impl From<http::Error> for Error {
    fn from(error: http::Error) -> Error {
        Error::caused(StatusCode::INTERNAL_SERVER_ERROR, error)
    }
}

impl From<http::header::InvalidHeaderValue> for Error {
    fn from(error: http::header::InvalidHeaderValue) -> Error {
        Error::caused(StatusCode::INTERNAL_SERVER_ERROR, error)
    }
}

impl From<std::str::Utf8Error> for Error {
    fn from(error: std::str::Utf8Error) -> Error {
        Error::new(
            StatusCode::BAD_REQUEST,
            format!("the request is not UTF-8: {error}"),
        )
    }
}

impl From<std::string::FromUtf8Error> for Error {
    fn from(error: std::string::FromUtf8Error) -> Error {
        Error::new(
            StatusCode::BAD_REQUEST,
            format!("the request is not UTF-8: {}", error.utf8_error()),
        )
    }
}

#[cfg(feature = "json")]
impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Error {
        let status = if error.is_io() {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::BAD_REQUEST
        };
        Error::new(status, format!("invalid JSON: {error}"))
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let text = if self.status.is_server_error() {
            match &self.source {
                Some(source) => tracing::error!(
                    status = self.status.as_u16(),
                    error = %self.message,
                    source = %source,
                    "handler failed"
                ),
                None => tracing::error!(
                    status = self.status.as_u16(),
                    error = %self.message,
                    "handler failed"
                ),
            }
            format!(
                "{} {}\n",
                self.status.as_u16(),
                self.status.canonical_reason().unwrap_or("")
            )
        } else {
            format!("{}\n", self.message)
        };
        (self.status, text).into_response()
    }
}

impl IntoResponse for io::Error {
    /// As [`Error::from`] maps it (see [`Error`]).
    fn into_response(self) -> Response {
        Error::from(self).into_response()
    }
}

impl IntoResponse for http::Error {
    /// `500 Internal Server Error`, logged.
    fn into_response(self) -> Response {
        Error::from(self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn body_text(response: Response) -> String {
        let mut text = String::new();
        response
            .into_body()
            .read_to_string(&mut text)
            .expect("in-memory body");
        text
    }

    #[test]
    fn io_errors_map_to_the_documented_statuses() {
        let cases = [
            (io::ErrorKind::NotFound, 404),
            (io::ErrorKind::PermissionDenied, 403),
            (io::ErrorKind::InvalidInput, 400),
            (io::ErrorKind::InvalidData, 400),
            (io::ErrorKind::UnexpectedEof, 400),
            (io::ErrorKind::TimedOut, 408),
            (io::ErrorKind::ConnectionReset, 500),
            (io::ErrorKind::Other, 500),
        ];
        for (kind, status) in cases {
            let error = Error::from(io::Error::new(kind, "x"));
            assert_eq!(error.status(), status, "{kind:?}");
        }
        let too_large = io::Error::new(io::ErrorKind::InvalidData, BodyTooLarge { limit: 10 });
        assert_eq!(Error::from(too_large).status(), 413);
    }

    #[test]
    fn client_errors_show_their_message_and_server_errors_hide_it() {
        let response = Error::not_found("no note 7").into_response();
        assert_eq!(response.status(), 404);
        assert_eq!(body_text(response), "no note 7\n");
        let response = Error::internal("password=hunter2 rejected by the database").into_response();
        assert_eq!(response.status(), 500);
        assert_eq!(body_text(response), "500 Internal Server Error\n");
    }

    #[test]
    fn debug_is_the_message_so_main_prints_it() {
        let error = Error::from(io::Error::new(
            io::ErrorKind::AddrInUse,
            "cannot listen on 127.0.0.1:443: Address already in use",
        ));
        assert_eq!(
            format!("{error:?}"),
            "cannot listen on 127.0.0.1:443: Address already in use"
        );
    }
}
