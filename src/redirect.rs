//! The plain-HTTP side of an HTTPS site: redirect every request to HTTPS, and answer ACME
//! http-01 challenges (Let's Encrypt) from a directory.

use std::fmt;
use std::io;
use std::path::PathBuf;

use http::uri::Authority;
use http::{header, HeaderValue, Method, StatusCode};

use crate::service::{Request, Response, Service};
use crate::{Body, ConnectionInfo};

/// Where ACME http-01 challenges are asked for (RFC 8555, section 8.3).
const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// Longest ACME token accepted; Let's Encrypt's are 43 characters.
const MAX_TOKEN_LEN: usize = 256;

/// A [`Service`] for a plain-HTTP listener that sends every client to HTTPS: `308
/// Permanent Redirect` to the same host, path and query on `https://`, at the HTTPS port
/// given (left out of the URL when it is 443). 308 keeps the method and body, unlike 301.
///
/// The host comes from the `Host` header (HTTP/1.1) or `:authority` (HTTP/2), without its
/// port; a request without one, or with one that is not a plain host name or IP address,
/// gets `400 Bad Request`.
///
/// With [`acme_challenge_dir`](HttpsRedirect::acme_challenge_dir) it also serves ACME
/// http-01 challenge files, which certificate authorities fetch over plain HTTP: `GET
/// /.well-known/acme-challenge/TOKEN` answers the file `TOKEN` from that directory (`404`
/// if there is none). A token must be 1 to 256 base64url characters (`A–Z a–z 0–9 - _`),
/// so no request can name a file outside the directory; anything else is `400`.
///
/// ```no_run
/// use portcullis::{Body, HttpsRedirect, Response, Server, TlsConfig};
///
/// fn main() -> std::io::Result<()> {
///     // Port 80: redirects, and the challenge files a renewal client (certbot --webroot,
///     // lego --http.webroot, ...) writes into /var/www/acme/.well-known/acme-challenge.
///     let redirect = Server::bind("[::]:80")?.spawn_service(
///         HttpsRedirect::new(443).acme_challenge_dir("/var/www/acme/.well-known/acme-challenge"),
///     )?;
///     let tls = TlsConfig::from_pem_files("/etc/ssl/site.crt", "/etc/ssl/site.key")?;
///     Server::bind("[::]:443")?
///         .tls(tls)
///         .serve(|_req, _info| Response::new(Body::from("Hello over HTTPS\n")))?;
///     redirect.shutdown()
/// }
/// ```
#[derive(Clone)]
pub struct HttpsRedirect {
    https_port: u16,
    acme_dir: Option<PathBuf>,
}

impl HttpsRedirect {
    /// Redirects to HTTPS on `https_port` (443 in production).
    ///
    /// ```
    /// let redirect = portcullis::HttpsRedirect::new(8443);
    /// // http://example.com:8080/a?b  ->  308, Location: https://example.com:8443/a?b
    /// # let _ = redirect;
    /// ```
    pub fn new(https_port: u16) -> HttpsRedirect {
        HttpsRedirect {
            https_port,
            acme_dir: None,
        }
    }

    /// Also serves ACME http-01 challenge files from `dir` (the directory the tokens are
    /// written to, not its `.well-known` parent).
    ///
    /// ```
    /// let redirect = portcullis::HttpsRedirect::new(443)
    ///     .acme_challenge_dir("/var/www/acme/.well-known/acme-challenge");
    /// # let _ = redirect;
    /// ```
    pub fn acme_challenge_dir(mut self, dir: impl Into<PathBuf>) -> HttpsRedirect {
        self.acme_dir = Some(dir.into());
        self
    }

    /// The `Location` for a request, or why there is none.
    fn location(&self, req: &Request) -> Result<String, &'static str> {
        let host = request_host(req)?;
        let path = match req.uri().path_and_query() {
            Some(pq) if pq.as_str().starts_with('/') => pq.as_str(),
            // `OPTIONS *` and the like: send the client to the root.
            _ => "/",
        };
        Ok(if self.https_port == 443 {
            format!("https://{host}{path}")
        } else {
            format!("https://{host}:{}{path}", self.https_port)
        })
    }

    fn acme(&self, dir: &std::path::Path, req: &Request, token: &str) -> Response {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        if !is_acme_token(token) {
            return text(
                StatusCode::BAD_REQUEST,
                "400 Bad Request: not an ACME token\n",
            );
        }
        match std::fs::read(dir.join(token)) {
            Ok(contents) => {
                let mut response = Response::new(Body::from(contents));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                response
            }
            // A directory named like a token is not a challenge either.
            Err(error)
                if error.kind() == io::ErrorKind::NotFound
                    || error.raw_os_error() == Some(libc::EISDIR) =>
            {
                text(StatusCode::NOT_FOUND, "404 Not Found\n")
            }
            Err(error) => {
                tracing::error!(%error, dir = %dir.display(), token, "cannot read ACME challenge");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "500 Internal Server Error\n",
                )
            }
        }
    }
}

impl Service for HttpsRedirect {
    fn call(&self, req: Request, _info: ConnectionInfo) -> Response {
        if let Some(dir) = &self.acme_dir {
            if let Some(token) = req.uri().path().strip_prefix(ACME_PREFIX) {
                return self.acme(dir, &req, token);
            }
        }
        match self.location(&req) {
            Ok(location) => match HeaderValue::try_from(location.as_str()) {
                Ok(value) => {
                    let mut response = text(
                        StatusCode::PERMANENT_REDIRECT,
                        &format!("Moved to {location}\n"),
                    );
                    response.headers_mut().insert(header::LOCATION, value);
                    response
                }
                Err(_) => text(StatusCode::BAD_REQUEST, "400 Bad Request: bad target\n"),
            },
            Err(reason) => text(StatusCode::BAD_REQUEST, reason),
        }
    }
}

impl fmt::Debug for HttpsRedirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpsRedirect")
            .field("https_port", &self.https_port)
            .field("acme_challenge_dir", &self.acme_dir)
            .finish()
    }
}

fn text(status: StatusCode, body: &str) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The host the client asked for, without port: from `Host`, or from the request target's
/// authority (HTTP/2 `:authority`, HTTP/1.1 absolute-form). Only DNS-style names and IP
/// addresses pass.
fn request_host(req: &Request) -> Result<String, &'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let authority = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err("400 Bad Request: more than one Host header\n"),
        (Some(value), None) => value
            .to_str()
            .map_err(|_| "400 Bad Request: invalid Host header\n")?
            .to_string(),
        (None, _) => match req.uri().authority() {
            Some(authority) => authority.as_str().to_string(),
            None => return Err("400 Bad Request: missing Host header\n"),
        },
    };
    let parsed: Authority = authority
        .parse()
        .map_err(|_| "400 Bad Request: invalid Host header\n")?;
    let has_port = parsed.as_str().len() > parsed.host().len();
    if parsed.as_str().contains('@') || (has_port && parsed.port_u16().is_none()) {
        return Err("400 Bad Request: invalid Host header\n");
    }
    let host = parsed.host();
    if is_host_name(host) || is_ipv6_literal(host) {
        Ok(host.to_ascii_lowercase())
    } else {
        Err("400 Bad Request: invalid Host header\n")
    }
}

/// A DNS name or IPv4 address: labels of letters, digits, `-` and `_`, split by dots.
fn is_host_name(host: &str) -> bool {
    // One trailing dot ("example.com.") is allowed.
    let name = host.strip_suffix('.').unwrap_or(host);
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `[v6 address]`, as `Authority::host` returns it.
fn is_ipv6_literal(host: &str) -> bool {
    host.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .is_some_and(|addr| addr.parse::<std::net::Ipv6Addr>().is_ok())
}

/// RFC 8555 tokens are base64url without padding.
fn is_acme_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, host: Option<&str>) -> Request {
        let mut builder = http::Request::builder().uri(uri);
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        builder.body(Body::empty()).expect("request")
    }

    #[test]
    fn locations() {
        let r = HttpsRedirect::new(443);
        let cases = [
            (
                "/a/b?x=1&y=%20",
                Some("Example.com:80"),
                Ok("https://example.com/a/b?x=1&y=%20"),
            ),
            ("/", Some("127.0.0.1"), Ok("https://127.0.0.1/")),
            ("/p", Some("[::1]:8080"), Ok("https://[::1]/p")),
            ("/p", Some("example.com."), Ok("https://example.com./p")),
            ("http://h.example/q?z", None, Ok("https://h.example/q?z")),
            ("*", Some("h"), Ok("https://h/")),
        ];
        for (uri, host, want) in cases {
            assert_eq!(
                r.location(&request(uri, host)).as_deref(),
                want.map(|s: &str| s),
                "{uri} {host:?}"
            );
        }
        assert_eq!(
            HttpsRedirect::new(8443).location(&request("/x?y", Some("h:80"))),
            Ok("https://h:8443/x?y".to_string())
        );
        for bad in [
            "", "a b", "a/b", "user@h", "h:port", "..", ".h", "a..b", "[::1", "[zz]", "h\\x",
        ] {
            assert!(
                r.location(&request("/", Some(bad))).is_err(),
                "{bad:?} should be refused"
            );
        }
        assert!(r.location(&request("/", None)).is_err());
    }

    #[test]
    fn tokens() {
        assert!(is_acme_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        for bad in ["", "..", "a/b", "a.b", "%2e%2e", "a b", &"a".repeat(257)] {
            assert!(!is_acme_token(bad), "{bad:?}");
        }
    }
}
