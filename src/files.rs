//! Static files: a directory tree served over `GET` and `HEAD`, with content types,
//! single byte ranges, conditional requests, directory indexes and listings.
//!
//! [`StaticFiles`] is a [`Service`], so a file server is one line:
//!
//! ```no_run
//! use portcullis::files::StaticFiles;
//! use portcullis::{Server, TlsConfig};
//!
//! fn main() -> std::io::Result<()> {
//!     let tls = TlsConfig::from_pem_files("certs/localhost.crt", "certs/localhost.key")?;
//!     Server::bind("127.0.0.1:8443")?
//!         .tls(tls)
//!         .serve_service(StaticFiles::new("public")?)
//! }
//! ```
//!
//! What it answers:
//!
//! | request | answer |
//! |---|---|
//! | a regular file | `200` with `Content-Type` (by extension), `Content-Length`, `ETag`, `Last-Modified`, `Accept-Ranges: bytes`, `X-Content-Type-Options: nosniff`; the body streams from the file in 16 KiB reads (files up to 64 KiB are read whole, so the worker is freed at once) |
//! | `HEAD` | the same headers, no body |
//! | `Range: bytes=A-B`, `A-` or `-N` (one range, `GET` only) | `206` with `Content-Range: bytes A-B/LEN` and just those bytes |
//! | several ranges | `200` with the whole file (multipart/byteranges is not implemented; RFC 9110 lets a server ignore `Range`) |
//! | a range that starts past the end, or `-0` | `416` with `Content-Range: bytes */LEN` |
//! | a malformed `Range`, another unit, or an `If-Range` that does not match | `200` with the whole file (RFC 9110 §14.2: ignore it) |
//! | `If-None-Match` matching the `ETag` (weak comparison, or `*`), else `If-Modified-Since` not older than the file | `304` with `ETag` and `Last-Modified` |
//! | `If-Match` with no strong match, else `If-Unmodified-Since` older than the file | `412` |
//! | a directory, path ending in `/` | its `index.html` if there is one, else an HTML listing (names escaped; off with [`StaticFiles::directory_listing`]) |
//! | a directory, path without the final `/` | `301` to the same path with `/` (so relative links work) |
//! | a path that could leave the root: any `..` segment (also as `%2e%2e`, even where it would stay inside), an encoded `/` or `\` (`%2f`, `%5c`), a NUL byte, a name that is not UTF-8, or a symbolic link that resolves outside the root | `404`, exactly as for a file that does not exist: nothing tells a client what lies outside |
//! | a malformed percent escape (`%zz`), a request target that is not a path | `400` |
//! | a file the server may not read | `403` |
//! | anything but a regular file or directory (a FIFO, a device), or a file named with a final `/` | `404`, without opening it |
//! | a method other than `GET` and `HEAD` | `405` with `Allow: GET, HEAD` |
//!
//! Every path is resolved with symbolic links followed ([`std::fs::canonicalize`]) and must
//! land under the (canonical) root; links that stay inside the root are served. Names
//! starting with a dot are served and listed like any other.

mod httpdate;

use std::fs::{self, File, Metadata};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use crate::{Body, ConnectionInfo, Request, Response, Service};

/// Files up to this size are read into memory, so the response frees its worker at once;
/// larger ones stream from the file.
const READ_WHOLE_LIMIT: u64 = 64 * 1024;

/// A directory served over HTTP: see the [module documentation](self) for every answer.
///
/// ```
/// use portcullis::files::StaticFiles;
/// use portcullis::{http, Body};
///
/// let dir = std::env::temp_dir().join(format!("portcullis-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// std::fs::write(dir.join("hello.txt"), "Hello, files!\n")?;
///
/// let files = StaticFiles::new(&dir)?;
/// let request = http::Request::get("/hello.txt").body(Body::empty()).unwrap();
/// let response = files.respond(&request);
/// assert_eq!(response.status(), 200);
/// assert_eq!(response.headers()["content-type"], "text/plain; charset=utf-8");
/// assert_eq!(response.headers()["content-length"], "14");
///
/// let outside = http::Request::get("/../etc/passwd").body(Body::empty()).unwrap();
/// assert_eq!(files.respond(&outside).status(), 404);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct StaticFiles {
    root: PathBuf,
    listing: bool,
}

impl StaticFiles {
    /// Serves the directory `root`. Fails if it does not exist, is not a directory, or
    /// cannot be read by this process (it would answer `403` to everything).
    /// The root is resolved once, here (symbolic links followed); every request must stay
    /// under that resolved path.
    ///
    /// ```
    /// use portcullis::files::StaticFiles;
    ///
    /// let files = StaticFiles::new(".")?;
    /// assert!(files.root().is_absolute());
    /// assert!(StaticFiles::new("/no/such/directory").is_err());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new(root: impl AsRef<Path>) -> io::Result<StaticFiles> {
        let given = root.as_ref();
        let root = fs::canonicalize(given).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("static files root {}: {e}", given.display()),
            )
        })?;
        if !fs::metadata(&root)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("static files root {} is not a directory", given.display()),
            ));
        }
        // A root this process cannot read would answer 403 to every request: say so now.
        if let Err(e) = fs::read_dir(&root) {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "static files root {} is not readable by this process: {e}",
                    given.display()
                ),
            ));
        }
        Ok(StaticFiles {
            root,
            listing: true,
        })
    }

    /// Whether a directory without an `index.html` gets an HTML listing of its entries
    /// (the default) or `404`.
    ///
    /// ```
    /// use portcullis::files::StaticFiles;
    /// use portcullis::{http, Body};
    ///
    /// let files = StaticFiles::new(".")?.directory_listing(false);
    /// let request = http::Request::get("/src/").body(Body::empty()).unwrap();
    /// assert_eq!(files.respond(&request).status(), 404);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn directory_listing(mut self, on: bool) -> StaticFiles {
        self.listing = on;
        self
    }

    /// The directory served, as resolved by [`StaticFiles::new`].
    ///
    /// ```
    /// let files = portcullis::files::StaticFiles::new(".")?;
    /// assert_eq!(files.root(), std::fs::canonicalize(".")?);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Answers one request: only its method, path and headers are looked at, so a handler
    /// may route a prefix here by passing a request with a rewritten URI (any body type).
    ///
    /// ```
    /// use portcullis::files::StaticFiles;
    /// use portcullis::{http, Body, ConnectionInfo, Request, Response};
    ///
    /// let files = StaticFiles::new(".")?;
    /// // `/static/...` comes from the directory, everything else from the handler.
    /// let handler = move |req: Request, _info: ConnectionInfo| -> Response {
    ///     let Some(rest) = req.uri().path().strip_prefix("/static/") else {
    ///         return Response::new(Body::from("not static\n"));
    ///     };
    ///     let mut inner = http::Request::new(());
    ///     *inner.method_mut() = req.method().clone();
    ///     *inner.headers_mut() = req.headers().clone();
    ///     match format!("/{rest}").parse() {
    ///         Ok(uri) => *inner.uri_mut() = uri,
    ///         Err(_) => return Response::new(Body::from("bad path\n")),
    ///     }
    ///     files.respond(&inner)
    /// };
    /// # let _ = handler;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn respond<B>(&self, request: &http::Request<B>) -> Response {
        let method = request.method();
        let head = match *method {
            Method::GET => false,
            Method::HEAD => true,
            _ => {
                let mut response = text_response(StatusCode::METHOD_NOT_ALLOWED, false);
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                return response;
            }
        };
        let segments = match decode_path(request.uri().path()) {
            Ok(segments) => segments,
            Err(status) => return text_response(status, head),
        };
        let mut path = self.root.clone();
        path.extend(&segments);
        // Follow every symbolic link, then make sure we are still under the root.
        let path = match fs::canonicalize(&path) {
            Ok(path) if path.starts_with(&self.root) => path,
            Ok(_) => return text_response(StatusCode::NOT_FOUND, head),
            Err(e) => return error_response(&e, head),
        };
        let metadata = match fs::metadata(&path) {
            Ok(metadata) => metadata,
            Err(e) => return error_response(&e, head),
        };
        if metadata.is_dir() {
            if !request.uri().path().ends_with('/') {
                return redirect_to_directory(&segments, head);
            }
            let index = path.join("index.html");
            if let Ok(index_meta) = fs::metadata(&index) {
                if index_meta.is_file() {
                    return self.file(request, &index, &index_meta, head);
                }
            }
            if !self.listing {
                return text_response(StatusCode::NOT_FOUND, head);
            }
            return listing(&path, &segments, head);
        }
        // A final `/` names a directory; a file there (`/a.txt/`) is not found.
        if !metadata.is_file() || request.uri().path().ends_with('/') {
            return text_response(StatusCode::NOT_FOUND, head);
        }
        self.file(request, &path, &metadata, head)
    }

    fn file<B>(
        &self,
        request: &http::Request<B>,
        path: &Path,
        metadata: &Metadata,
        head: bool,
    ) -> Response {
        let len = metadata.len();
        let modified = metadata.modified().ok();
        let validators = Validators::new(len, modified);
        let headers = request.headers();

        if let Some(status) = validators.preconditions(headers) {
            let mut response = empty_response(status);
            validators.insert(response.headers_mut());
            return response;
        }

        let range = if head {
            ByteRange::Whole
        } else {
            match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
                Some(range) if validators.if_range_matches(headers) => parse_range(range, len),
                _ => ByteRange::Whole,
            }
        };
        let (status, start, count) = match range {
            ByteRange::Whole => (StatusCode::OK, 0, len),
            ByteRange::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
            ByteRange::Unsatisfiable => {
                let mut response = text_response(StatusCode::RANGE_NOT_SATISFIABLE, false);
                insert(
                    response.headers_mut(),
                    header::CONTENT_RANGE,
                    format!("bytes */{len}"),
                );
                return response;
            }
        };

        let body = if head {
            Body::empty()
        } else {
            match open_part(path, start, count) {
                Ok(body) => body,
                Err(e) => return error_response(&e, head),
            }
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(path)),
        );
        insert(h, header::CONTENT_LENGTH, count.to_string());
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if status == StatusCode::PARTIAL_CONTENT {
            insert(
                h,
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{len}", start + count - 1),
            );
        }
        validators.insert(h);
        response
    }
}

impl Service for StaticFiles {
    fn call(&self, request: Request, _info: ConnectionInfo) -> Response {
        self.respond(&request)
    }
}

/// `count` bytes of the file from `start`: read whole when small, else a streaming body.
fn open_part(path: &Path, start: u64, count: u64) -> io::Result<Body> {
    let mut file = File::open(path)?;
    if start > 0 {
        file.seek(SeekFrom::Start(start))?;
    }
    let mut part = file.take(count);
    if count <= READ_WHOLE_LIMIT {
        let mut bytes = Vec::with_capacity(count as usize);
        part.read_to_end(&mut bytes)?;
        if bytes.len() as u64 != count {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while being read", path.display()),
            ));
        }
        return Ok(Body::from(bytes));
    }
    Ok(Body::from_reader(part))
}

/// The request path as file-name segments under the root, or the status that refuses it.
///
/// Each `/`-separated segment is percent-decoded on its own, so an encoded slash can never
/// become a separator; empty and `.` segments are dropped; `..`, encoded `/` or `\`, NUL
/// and names that are not UTF-8 are refused with `404`.
fn decode_path(path: &str) -> Result<Vec<String>, StatusCode> {
    if !path.starts_with('/') {
        return Err(StatusCode::BAD_REQUEST);
    }
    let mut segments = Vec::new();
    for raw in path.split('/') {
        let bytes = percent_decode(raw).ok_or(StatusCode::BAD_REQUEST)?;
        let name = String::from_utf8(bytes).map_err(|_| StatusCode::NOT_FOUND)?;
        match name.as_str() {
            "" | "." => continue,
            ".." => return Err(StatusCode::NOT_FOUND),
            _ if name.contains(['/', '\\', '\0']) => return Err(StatusCode::NOT_FOUND),
            _ => segments.push(name),
        }
    }
    Ok(segments)
}

/// Decodes `%XX` escapes; `None` for a `%` not followed by two hex digits.
fn percent_decode(raw: &str) -> Option<Vec<u8>> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let high = (hex[0] as char).to_digit(16)?;
            let low = (hex[1] as char).to_digit(16)?;
            out.push((high * 16 + low) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Escapes `name` for use in a URL path segment (everything but unreserved characters).
fn percent_encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Escapes text for HTML element content and attribute values.
fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `301` to the directory's path with a final `/`. The location is rebuilt from the
/// decoded segments, so it is always a path on this server (never `//host/`).
fn redirect_to_directory(segments: &[String], head: bool) -> Response {
    let mut location = String::from("/");
    for segment in segments {
        location.push_str(&percent_encode(segment));
        location.push('/');
    }
    let mut response = text_response(StatusCode::MOVED_PERMANENTLY, head);
    insert(response.headers_mut(), header::LOCATION, location);
    response
}

/// An HTML page listing the directory's entries, sorted by name, directories with a
/// final `/`. Entries whose names are not UTF-8 are left out (they could not be requested).
fn listing(dir: &Path, segments: &[String], head: bool) -> Response {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return error_response(&e, head),
    };
    let mut names: Vec<(String, bool)> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            // Follows links, so a link to a directory is listed as one.
            let is_dir = fs::metadata(entry.path()).is_ok_and(|m| m.is_dir());
            Some((name, is_dir))
        })
        .collect();
    names.sort();

    let mut shown = String::from("/");
    for segment in segments {
        shown.push_str(segment);
        shown.push('/');
    }
    let title = html_escape(&shown);
    let mut page = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}</title></head>\n\
         <body><h1>Index of {title}</h1>\n<ul>\n"
    );
    if !segments.is_empty() {
        page.push_str("<li><a href=\"../\">../</a></li>\n");
    }
    for (name, is_dir) in &names {
        let slash = if *is_dir { "/" } else { "" };
        page.push_str(&format!(
            "<li><a href=\"./{}{slash}\">{}{slash}</a></li>\n",
            html_escape(&percent_encode(name)),
            html_escape(name),
        ));
    }
    page.push_str("</ul></body></html>\n");

    let len = page.len();
    let mut response = Response::new(if head {
        Body::empty()
    } else {
        Body::from(page)
    });
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    insert(h, header::CONTENT_LENGTH, len.to_string());
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// A file's validators: its `ETag` and `Last-Modified`.
struct Validators {
    etag: String,
    modified: Option<SystemTime>,
}

impl Validators {
    /// A strong entity tag from the size and the modification time to the nanosecond.
    fn new(len: u64, modified: Option<SystemTime>) -> Validators {
        let stamp = modified
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        Validators {
            etag: format!(
                "\"{:x}.{:x}-{len:x}\"",
                stamp.as_secs(),
                stamp.subsec_nanos()
            ),
            modified,
        }
    }

    fn insert(&self, headers: &mut HeaderMap) {
        insert(headers, header::ETAG, self.etag.clone());
        if let Some(modified) = self.modified {
            insert(headers, header::LAST_MODIFIED, httpdate::format(modified));
        }
    }

    /// The conditional headers in RFC 9110 §13.2.2 order: `412` or `304`, or `None` to
    /// answer normally.
    fn preconditions(&self, headers: &HeaderMap) -> Option<StatusCode> {
        if let Some(if_match) = header_text(headers, header::IF_MATCH) {
            if !self.matches(if_match, true) {
                return Some(StatusCode::PRECONDITION_FAILED);
            }
        } else if let Some(date) =
            header_text(headers, header::IF_UNMODIFIED_SINCE).and_then(httpdate::parse)
        {
            if self.modified_after(date) {
                return Some(StatusCode::PRECONDITION_FAILED);
            }
        }
        if let Some(if_none_match) = header_text(headers, header::IF_NONE_MATCH) {
            if self.matches(if_none_match, false) {
                return Some(StatusCode::NOT_MODIFIED);
            }
        } else if let Some(date) =
            header_text(headers, header::IF_MODIFIED_SINCE).and_then(httpdate::parse)
        {
            // A date in the future is invalid (RFC 9110 §13.1.3): ignore it.
            if date <= SystemTime::now() && self.modified.is_some() && !self.modified_after(date) {
                return Some(StatusCode::NOT_MODIFIED);
            }
        }
        None
    }

    /// Whether the file changed after `date`, at the one-second resolution of HTTP dates.
    /// An unknown modification time counts as changed.
    fn modified_after(&self, date: SystemTime) -> bool {
        match self.modified {
            Some(modified) => httpdate::unix_seconds(modified) > httpdate::unix_seconds(date),
            None => true,
        }
    }

    /// Whether a list of entity tags (or `*`) names this file's tag; `strong` comparison
    /// lets no weak tag match.
    fn matches(&self, list: &str, strong: bool) -> bool {
        if list.trim() == "*" {
            return true;
        }
        list.split(',')
            .map(str::trim)
            .any(|tag| match tag.strip_prefix("W/") {
                Some(weak) => !strong && weak == self.etag,
                None => tag == self.etag,
            })
    }

    /// Whether `Range` may be honoured: no `If-Range`, or one that strongly matches the
    /// entity tag or equals the modification date.
    fn if_range_matches(&self, headers: &HeaderMap) -> bool {
        let Some(value) = header_text(headers, header::IF_RANGE) else {
            return true;
        };
        let value = value.trim();
        if value.starts_with('"') || value.starts_with("W/") {
            return value == self.etag;
        }
        match (httpdate::parse(value), self.modified) {
            (Some(date), Some(modified)) => {
                httpdate::unix_seconds(date) == httpdate::unix_seconds(modified)
            }
            _ => false,
        }
    }
}

/// What a `Range` header asks of a file of a given length.
#[derive(Debug, PartialEq, Eq)]
enum ByteRange {
    /// No usable range (ignored, several ranges): the whole file.
    Whole,
    /// One satisfiable range, `end` inclusive and inside the file.
    Part { start: u64, end: u64 },
    /// Every range lies outside the file.
    Unsatisfiable,
}

/// Parses `Range` (RFC 9110 §14.1.2) against a file of `len` bytes.
fn parse_range(value: &str, len: u64) -> ByteRange {
    let Some((unit, specs)) = value.split_once('=') else {
        return ByteRange::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return ByteRange::Whole;
    }
    let mut satisfiable = Vec::new();
    let mut any = false;
    for spec in specs.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((first, last)) = spec.split_once('-') else {
            return ByteRange::Whole;
        };
        let (first, last) = (first.trim(), last.trim());
        any = true;
        if first.is_empty() {
            // Suffix range: the last N bytes.
            let Some(n) = digits(last) else {
                return ByteRange::Whole;
            };
            if n > 0 && len > 0 {
                satisfiable.push((len.saturating_sub(n), len - 1));
            }
            continue;
        }
        let Some(start) = digits(first) else {
            return ByteRange::Whole;
        };
        let end = if last.is_empty() {
            u64::MAX
        } else {
            match digits(last) {
                Some(end) if end >= start => end,
                _ => return ByteRange::Whole,
            }
        };
        if start < len {
            satisfiable.push((start, end.min(len - 1)));
        }
    }
    match satisfiable.as_slice() {
        _ if !any => ByteRange::Whole,
        [] => ByteRange::Unsatisfiable,
        [(start, end)] => ByteRange::Part {
            start: *start,
            end: *end,
        },
        _ => ByteRange::Whole,
    }
}

/// ASCII digits as a number; more than `u64::MAX` saturates (it is past any file's end).
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse().unwrap_or(u64::MAX))
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Inserts a header value built from text this module made (always valid).
fn insert(headers: &mut HeaderMap, name: header::HeaderName, value: String) {
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.insert(name, value);
    }
}

/// The content type for a file name's extension; `application/octet-stream` if unknown.
fn content_type(path: &Path) -> &'static str {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match extension.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" | "text" | "log" => "text/plain; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "tar" => "application/x-tar",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        _ => "application/octet-stream",
    }
}

/// A response with no body and no `Content-Length` of its own (`304`, `412`).
fn empty_response(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

/// A short plain-text error page such as `404 Not Found`, empty for `HEAD`.
fn text_response(status: StatusCode, head: bool) -> Response {
    let text = format!(
        "{} {}\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    );
    let len = text.len();
    let mut response = Response::new(if head {
        Body::empty()
    } else {
        Body::from(text)
    });
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    insert(h, header::CONTENT_LENGTH, len.to_string());
    response
}

/// `404` for a missing path (or one that is not a directory where one was needed), `403`
/// for one the server may not read, `500` otherwise (logged).
fn error_response(error: &io::Error, head: bool) -> Response {
    let status = match error.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::InvalidInput => StatusCode::NOT_FOUND,
        io::ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        _ if matches!(
            error.raw_os_error(),
            Some(libc::ENOTDIR | libc::ENAMETOOLONG | libc::ELOOP)
        ) =>
        {
            StatusCode::NOT_FOUND
        }
        _ => {
            tracing::warn!(%error, "static file error");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    text_response(status, head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use ByteRange::*;
        let part = |start, end| Part { start, end };
        assert_eq!(parse_range("bytes=0-9", 100), part(0, 9));
        assert_eq!(parse_range("bytes=10-", 100), part(10, 99));
        assert_eq!(parse_range("bytes=-10", 100), part(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), part(0, 99));
        assert_eq!(parse_range("bytes=90-1000", 100), part(90, 99));
        assert_eq!(parse_range("Bytes = 5-5 ", 100), part(5, 5));
        assert_eq!(parse_range("bytes=5-5,", 100), part(5, 5));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), Unsatisfiable);
        assert_eq!(
            parse_range("bytes=99999999999999999999999-", 100),
            Unsatisfiable
        );
        assert_eq!(parse_range("bytes=200-300,400-", 100), Unsatisfiable);
        // Several satisfiable ranges: the whole file.
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Whole);
        // One satisfiable among unsatisfiable ones: that one.
        assert_eq!(parse_range("bytes=0-1,500-600", 100), part(0, 1));
        // Malformed or other units: ignored.
        for ignored in [
            "bytes=",
            "bytes=a-b",
            "bytes=5",
            "bytes=9-5",
            "bytes=--5",
            "bytes=1-2-3",
            "items=0-5",
            "0-5",
            "bytes=+1-5",
        ] {
            assert_eq!(parse_range(ignored, 100), Whole, "{ignored}");
        }
    }

    #[test]
    fn paths() {
        assert_eq!(decode_path("/"), Ok(vec![]));
        assert_eq!(
            decode_path("/a//./b%20c/"),
            Ok(vec!["a".to_string(), "b c".to_string()])
        );
        assert_eq!(decode_path("/caf%C3%A9"), Ok(vec!["café".to_string()]));
        for refused in [
            "/..",
            "/a/../..",
            "/%2e%2e/x",
            "/%2E%2E/x",
            "/.%2e/x",
            "/a%2f..%2f..%2fetc",
            "/a%5c..",
            "/a%00b",
            "/%ff",
        ] {
            assert_eq!(
                decode_path(refused),
                Err(StatusCode::NOT_FOUND),
                "{refused}"
            );
        }
        for bad in ["/%", "/%2", "/%zz", "*", "", "example.com:443"] {
            assert_eq!(decode_path(bad), Err(StatusCode::BAD_REQUEST), "{bad}");
        }
    }

    #[test]
    fn escaping() {
        assert_eq!(
            html_escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(percent_encode("a b/ü?#"), "a%20b%2F%C3%BC%3F%23");
    }

    #[test]
    fn entity_tags() {
        let v = Validators::new(10, Some(UNIX_EPOCH + std::time::Duration::new(5, 7)));
        assert_eq!(v.etag, "\"5.7-a\"");
        assert!(v.matches("\"x\", \"5.7-a\"", true));
        assert!(v.matches("W/\"5.7-a\"", false));
        assert!(!v.matches("W/\"5.7-a\"", true));
        assert!(v.matches(" * ", true));
        assert!(!v.matches("\"5.7-b\"", false));
    }

    #[test]
    fn content_types() {
        assert_eq!(
            content_type(Path::new("a/INDEX.HTML")),
            "text/html; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("x.svg")), "image/svg+xml");
        assert_eq!(content_type(Path::new("noext")), "application/octet-stream");
    }
}
