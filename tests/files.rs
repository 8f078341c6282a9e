//! `portcullis::files::StaticFiles` over real sockets: content types, HEAD, single ranges
//! (206 bytes exact), 416, conditional requests (304 by ETag and by date, 412), index and
//! listing, 405, every path-traversal attempt as a raw request target, and a 32 MiB file
//! streamed intact with bounded memory.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http_body_util::BodyExt;
use hyper::body::Bytes;
use hyper::{StatusCode, Version};
use portcullis::files::StaticFiles;
use portcullis::ServerHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const VERSIONS: [Version; 2] = [Version::HTTP_11, Version::HTTP_2];

/// A temporary directory tree, removed on drop: `outside/` holds a secret file and the
/// served `outside/root/`.
struct Site {
    base: PathBuf,
}

impl Site {
    fn new(name: &str) -> Site {
        let base =
            std::env::temp_dir().join(format!("portcullis-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("root")).expect("create site");
        std::fs::write(base.join("secret.txt"), SECRET).expect("write secret");
        Site { base }
    }

    fn root(&self) -> PathBuf {
        self.base.join("root")
    }

    fn write(&self, path: &str, contents: &[u8]) -> PathBuf {
        let path = self.root().join(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create dir");
        }
        std::fs::write(&path, contents).expect("write file");
        path
    }

    fn serve(&self) -> ServerHandle {
        let files = StaticFiles::new(self.root()).expect("StaticFiles::new");
        tls_server().spawn_service(files).expect("spawn server")
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

const SECRET: &str = "TOP-SECRET-OUTSIDE-THE-ROOT\n";

/// Sends `method path` with extra headers over a new TLS connection speaking `version`.
async fn request(
    addr: std::net::SocketAddr,
    version: Version,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut client = Client::connect_tls(addr, version).await;
    let mut req = client.request(method, path, Bytes::new());
    for (name, value) in headers {
        req.headers_mut().insert(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            value.parse().expect("header value"),
        );
    }
    client.send(req).await.expect("request")
}

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {:?}", reply.headers))
        .to_str()
        .expect("ASCII header")
}

/// Sends one raw HTTP/1.1 request line over TLS and returns (status, whole response text).
async fn raw_request(addr: std::net::SocketAddr, target: &str) -> (u16, String) {
    let mut stream = tls_connect(addr, ALPN_H1).await.expect("TLS connect");
    let head = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .expect("write request");
    let mut response = Vec::new();
    within(TIMEOUT, "raw response", stream.read_to_end(&mut response))
        .await
        .expect("read response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line for {target:?}: {text:?}"));
    (status, text)
}

#[test]
fn content_types_and_bodies_over_http1_and_http2() {
    let site = Site::new("types");
    let files = [
        ("index.html", "text/html; charset=utf-8"),
        ("style.CSS", "text/css; charset=utf-8"),
        ("app.js", "text/javascript; charset=utf-8"),
        ("data.json", "application/json"),
        ("logo.svg", "image/svg+xml"),
        ("photo.png", "image/png"),
        ("font.woff2", "font/woff2"),
        ("notes.txt", "text/plain; charset=utf-8"),
        ("blob", "application/octet-stream"),
        ("dir with space/caf\u{e9}.txt", "text/plain; charset=utf-8"),
    ];
    for (i, (name, _)) in files.iter().enumerate() {
        site.write(name, format!("file {i}: {name}\n").as_bytes());
    }
    let handle = site.serve();
    let addr = addr(&handle);
    block_on(async move {
        for version in VERSIONS {
            for (i, (name, kind)) in files.iter().enumerate() {
                let path = format!("/{}", name.replace(' ', "%20").replace('\u{e9}', "%C3%A9"));
                let reply = request(addr, version, "GET", &path, &[]).await;
                assert_eq!(reply.status, StatusCode::OK, "{path} {version:?}");
                assert_eq!(reply.version, version);
                assert_eq!(header(&reply, "content-type"), *kind, "{path}");
                assert_eq!(reply.text(), format!("file {i}: {name}\n"));
                assert_eq!(
                    header(&reply, "content-length"),
                    reply.body.len().to_string()
                );
                assert_eq!(header(&reply, "accept-ranges"), "bytes");
                assert_eq!(header(&reply, "x-content-type-options"), "nosniff");
                assert!(header(&reply, "etag").starts_with('"'));
                assert!(header(&reply, "last-modified").ends_with(" GMT"));
            }
            let missing = request(addr, version, "GET", "/nope.txt", &[]).await;
            assert_eq!(missing.status, StatusCode::NOT_FOUND);
        }
    });
    stop(handle);
}

#[test]
fn head_has_the_get_headers_and_no_body() {
    let site = Site::new("head");
    site.write("big.bin", &pseudo_random(300_000, 3));
    site.write("small.txt", b"twelve bytes");
    let handle = site.serve();
    let addr = addr(&handle);
    block_on(async move {
        for version in VERSIONS {
            for (path, len) in [("/big.bin", "300000"), ("/small.txt", "12")] {
                let get = request(addr, version, "GET", path, &[]).await;
                let head = request(addr, version, "HEAD", path, &[]).await;
                assert_eq!(head.status, StatusCode::OK, "{path} {version:?}");
                assert!(head.body.is_empty(), "HEAD {path} has a body");
                assert_eq!(header(&head, "content-length"), len, "{path} {version:?}");
                for name in ["content-type", "etag", "last-modified", "accept-ranges"] {
                    assert_eq!(header(&head, name), header(&get, name), "{name}");
                }
            }
            // HEAD ignores Range (RFC 9110 defines it for GET only).
            let head = request(addr, version, "HEAD", "/big.bin", &[("range", "bytes=0-9")]).await;
            assert_eq!(head.status, StatusCode::OK);
            assert_eq!(header(&head, "content-length"), "300000");
        }
    });
    // And with curl, which checks Content-Length against what arrives.
    for proto in ["--http1.1", "--http2"] {
        let reply = curl(addr, true, "/big.bin", &["--head", proto]);
        assert_eq!(reply.status, 200);
        let text = String::from_utf8_lossy(&reply.body).to_ascii_lowercase();
        assert!(text.contains("content-length: 300000"), "{text}");
    }
    stop(handle);
}

#[test]
fn single_ranges_are_206_with_exact_bytes() {
    let site = Site::new("ranges");
    let data = pseudo_random(200_000, 4);
    site.write("data.bin", &data);
    let handle = site.serve();
    let addr = addr(&handle);
    let len = data.len();
    let expected = data.clone();
    block_on(async move {
        let data = expected;
        for version in VERSIONS {
            for (range, start, end) in [
                ("bytes=0-0", 0, 0),
                ("bytes=0-99", 0, 99),
                ("bytes=1000-70000", 1000, 70000),
                ("bytes=199990-", 199_990, len - 1),
                ("bytes=-10", len - 10, len - 1),
                ("bytes=-500000", 0, len - 1),
                ("bytes=150000-999999", 150_000, len - 1),
                ("bytes=0-1,900000-", 0, 1),
            ] {
                let reply = request(addr, version, "GET", "/data.bin", &[("range", range)]).await;
                assert_eq!(
                    reply.status,
                    StatusCode::PARTIAL_CONTENT,
                    "{range} {version:?}"
                );
                assert_eq!(
                    header(&reply, "content-range"),
                    format!("bytes {start}-{end}/{len}"),
                    "{range}"
                );
                assert_eq!(
                    header(&reply, "content-length"),
                    (end - start + 1).to_string()
                );
                assert_same_bytes(&reply.body, &data[start..=end], range);
            }
            // Several ranges: the whole file (multipart is not implemented).
            let reply = request(
                addr,
                version,
                "GET",
                "/data.bin",
                &[("range", "bytes=0-1,5-6")],
            )
            .await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_same_bytes(&reply.body, &data, "multi-range");
            // Malformed or foreign-unit ranges are ignored.
            for ignored in ["bytes=5-1", "lines=1-2", "bytes=x-"] {
                let reply = request(addr, version, "GET", "/data.bin", &[("range", ignored)]).await;
                assert_eq!(reply.status, StatusCode::OK, "{ignored}");
                assert_eq!(reply.body.len(), len);
            }
        }
    });
    // curl's own range support agrees.
    let reply = curl(addr, true, "/data.bin", &["--range", "10-19"]);
    assert_eq!(reply.status, 206);
    assert_eq!(reply.body, &data[10..20]);
    stop(handle);
}

#[test]
fn unsatisfiable_ranges_are_416() {
    let site = Site::new("416");
    site.write("ten.txt", b"0123456789");
    site.write("empty.txt", b"");
    let handle = site.serve();
    let addr = addr(&handle);
    block_on(async move {
        for version in VERSIONS {
            for (path, range, len) in [
                ("/ten.txt", "bytes=10-", 10),
                ("/ten.txt", "bytes=100-200", 10),
                ("/ten.txt", "bytes=-0", 10),
                ("/ten.txt", "bytes=20-30,40-", 10),
                ("/empty.txt", "bytes=0-", 0),
            ] {
                let reply = request(addr, version, "GET", path, &[("range", range)]).await;
                assert_eq!(
                    reply.status,
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "{path} {range}"
                );
                assert_eq!(header(&reply, "content-range"), format!("bytes */{len}"));
            }
        }
    });
    stop(handle);
}

#[test]
fn conditional_requests_give_304_and_412() {
    let site = Site::new("conditional");
    site.write("page.html", b"<p>cached</p>");
    let handle = site.serve();
    let addr = addr(&handle);
    block_on(async move {
        for version in VERSIONS {
            let first = request(addr, version, "GET", "/page.html", &[]).await;
            let etag = header(&first, "etag").to_string();
            let modified = header(&first, "last-modified").to_string();

            // If-None-Match: exact, in a list, weak, and `*`.
            let weak = format!("W/{etag}");
            let listed = format!("\"other\", {etag}");
            for inm in [etag.as_str(), listed.as_str(), weak.as_str(), "*"] {
                for method in ["GET", "HEAD"] {
                    let reply = request(
                        addr,
                        version,
                        method,
                        "/page.html",
                        &[("if-none-match", inm)],
                    )
                    .await;
                    assert_eq!(reply.status, StatusCode::NOT_MODIFIED, "{method} {inm}");
                    assert!(reply.body.is_empty());
                    assert_eq!(header(&reply, "etag"), etag);
                    assert_eq!(header(&reply, "last-modified"), modified);
                }
            }
            let changed = request(
                addr,
                version,
                "GET",
                "/page.html",
                &[("if-none-match", "\"something-else\"")],
            )
            .await;
            assert_eq!(changed.status, StatusCode::OK);

            // If-Modified-Since: the same date, or later (but not in the future), is 304.
            let reply = request(
                addr,
                version,
                "GET",
                "/page.html",
                &[("if-modified-since", &modified)],
            )
            .await;
            assert_eq!(reply.status, StatusCode::NOT_MODIFIED);
            assert!(reply.body.is_empty());
            let old = "Sun, 06 Nov 1994 08:49:37 GMT";
            let reply = request(
                addr,
                version,
                "GET",
                "/page.html",
                &[("if-modified-since", old)],
            )
            .await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.text(), "<p>cached</p>");
            // A failing If-None-Match wins over a matching If-Modified-Since.
            let reply = request(
                addr,
                version,
                "GET",
                "/page.html",
                &[("if-none-match", "\"x\""), ("if-modified-since", &modified)],
            )
            .await;
            assert_eq!(reply.status, StatusCode::OK);
            // Garbage dates are ignored.
            let reply = request(
                addr,
                version,
                "GET",
                "/page.html",
                &[("if-modified-since", "yesterday")],
            )
            .await;
            assert_eq!(reply.status, StatusCode::OK);

            // If-Match / If-Unmodified-Since.
            let reply = request(addr, version, "GET", "/page.html", &[("if-match", "\"x\"")]).await;
            assert_eq!(reply.status, StatusCode::PRECONDITION_FAILED);
            let reply = request(addr, version, "GET", "/page.html", &[("if-match", &etag)]).await;
            assert_eq!(reply.status, StatusCode::OK);
            let reply = request(
                addr,
                version,
                "GET",
                "/page.html",
                &[("if-unmodified-since", old)],
            )
            .await;
            assert_eq!(reply.status, StatusCode::PRECONDITION_FAILED);

            // If-Range: honoured only when it matches.
            let reply = request(
                addr,
                version,
                "GET",
                "/page.html",
                &[("range", "bytes=0-2"), ("if-range", &etag)],
            )
            .await;
            assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
            assert_eq!(reply.text(), "<p>");
            let reply = request(
                addr,
                version,
                "GET",
                "/page.html",
                &[("range", "bytes=0-2"), ("if-range", "\"stale\"")],
            )
            .await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.text(), "<p>cached</p>");
        }
    });
    // curl's own revalidation: -z DATE sends If-Modified-Since.
    let reply = curl(
        addr,
        true,
        "/page.html",
        &["-z", "Sun, 06 Nov 1994 08:49:37 GMT"],
    );
    assert_eq!(reply.status, 200);
    stop(handle);
}

#[test]
fn directories_index_listing_and_redirect() {
    let site = Site::new("dirs");
    site.write("with-index/index.html", b"<h1>the index</h1>");
    site.write("with-index/other.txt", b"other");
    site.write("plain/a.txt", b"a");
    site.write("plain/<script>alert(\"x\")&'.txt", b"evil name");
    site.write("plain/sub dir/b.txt", b"b");
    let handle = site.serve();
    let addr = addr(&handle);
    block_on(async move {
        for version in VERSIONS {
            let reply = request(addr, version, "GET", "/with-index/", &[]).await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.text(), "<h1>the index</h1>");
            assert_eq!(header(&reply, "content-type"), "text/html; charset=utf-8");

            let reply = request(addr, version, "GET", "/with-index", &[]).await;
            assert_eq!(reply.status, StatusCode::MOVED_PERMANENTLY);
            assert_eq!(header(&reply, "location"), "/with-index/");
            // The redirect never points off the server, whatever the request looked like.
            let reply = request(addr, version, "GET", "//plain/.//sub%20dir", &[]).await;
            assert_eq!(reply.status, StatusCode::MOVED_PERMANENTLY);
            assert_eq!(header(&reply, "location"), "/plain/sub%20dir/");

            let reply = request(addr, version, "GET", "/plain/", &[]).await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(header(&reply, "content-type"), "text/html; charset=utf-8");
            let page = reply.text();
            assert!(page.contains("<title>Index of /plain/</title>"), "{page}");
            assert!(page.contains("<a href=\"./a.txt\">a.txt</a>"), "{page}");
            assert!(
                page.contains("<a href=\"./sub%20dir/\">sub dir/</a>"),
                "{page}"
            );
            assert!(page.contains("<a href=\"../\">../</a>"), "{page}");
            assert!(!page.contains("<script>"), "unescaped name in {page}");
            assert!(
                page.contains("&lt;script&gt;alert(&quot;x&quot;)&amp;&#39;.txt"),
                "{page}"
            );
            // The escaped link leads to the file.
            let href = page
                .split("href=\"./")
                .find(|s| s.starts_with("%3Cscript"))
                .and_then(|s| s.split('"').next())
                .expect("link to the oddly named file")
                .replace("&#39;", "'")
                .replace("&amp;", "&");
            let reply = request(addr, version, "GET", &format!("/plain/{href}"), &[]).await;
            assert_eq!(reply.status, StatusCode::OK, "{href}");
            assert_eq!(reply.text(), "evil name");

            let reply = request(addr, version, "GET", "/", &[]).await;
            assert_eq!(reply.status, StatusCode::OK);
            assert!(!reply.text().contains("../"), "the root has no parent link");
        }
    });
    stop(handle);

    // Listing switched off: 404.
    let files = StaticFiles::new(site.root())
        .expect("StaticFiles::new")
        .directory_listing(false);
    let handle = tls_server().spawn_service(files).expect("spawn server");
    let addr = common::addr(&handle);
    block_on(async move {
        let reply = request(addr, Version::HTTP_2, "GET", "/plain/", &[]).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        let reply = request(addr, Version::HTTP_2, "GET", "/with-index/", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
    });
    stop(handle);
}

#[test]
fn other_methods_are_405_with_allow() {
    let site = Site::new("405");
    site.write("a.txt", b"a");
    let handle = site.serve();
    let addr = addr(&handle);
    block_on(async move {
        for version in VERSIONS {
            for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"] {
                let reply = request(addr, version, method, "/a.txt", &[]).await;
                assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
                assert_eq!(header(&reply, "allow"), "GET, HEAD");
            }
        }
        // With a body too: the body is never read, the connection stays usable.
        let mut client = Client::connect_tls(addr, Version::HTTP_11).await;
        let reply = client
            .post("/a.txt", vec![7u8; 100_000])
            .await
            .expect("POST");
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
        let reply = client.get("/a.txt").await.expect("GET after POST");
        assert_eq!(reply.status, StatusCode::OK);
    });
    stop(handle);
}

#[test]
fn path_traversal_is_refused_with_404() {
    let site = Site::new("traversal");
    site.write("inside.txt", b"inside");
    site.write("sub/file.txt", b"sub file");
    let root = site.root();
    std::os::unix::fs::symlink(site.base.join("secret.txt"), root.join("link-out.txt"))
        .expect("symlink");
    std::os::unix::fs::symlink(&site.base, root.join("link-out-dir")).expect("symlink");
    std::os::unix::fs::symlink("/etc", root.join("etc-link")).expect("symlink");
    std::os::unix::fs::symlink(root.join("inside.txt"), root.join("link-in.txt")).expect("symlink");
    // A FIFO: must be refused without being opened (opening would block the worker).
    let fifo = root.join("fifo");
    let fifo_c = std::ffi::CString::new(fifo.to_str().expect("UTF-8 path")).expect("path");
    // SAFETY: fifo_c is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o644) }, 0, "mkfifo");

    let handle = site.serve();
    let addr = addr(&handle);
    block_on(async move {
        for target in [
            "/../secret.txt",
            "/sub/../../secret.txt",
            "/%2e%2e/secret.txt",
            "/%2E%2E/secret.txt",
            "/.%2e/secret.txt",
            "/%2e%2e%2fsecret.txt",
            "/sub%2f..%2f..%2fsecret.txt",
            "/sub/..%2f..%2fsecret.txt",
            "/..%5csecret.txt",
            "/%2fetc%2fpasswd",
            "//etc/passwd",
            "/etc/passwd",
            "https://localhost/../secret.txt",
            "/inside.txt%00.html",
            "/%00",
            "/link-out.txt",
            "/link-out-dir/secret.txt",
            "/link-out-dir/",
            "/etc-link/passwd",
            "/etc-link/",
            "/fifo",
            "/%ff%fe",
            "/inside.txt/",
            "/inside.txt/x",
        ] {
            let (status, text) = raw_request(addr, target).await;
            assert_eq!(status, 404, "{target}: {text}");
            assert!(!text.contains("TOP-SECRET"), "{target} leaked the secret");
            assert!(!text.contains("root:"), "{target} leaked /etc/passwd");
        }
        // Malformed escapes are a client error.
        for target in ["/%", "/%zz", "/a%2"] {
            let (status, _) = raw_request(addr, target).await;
            assert_eq!(status, 400, "{target}");
        }
        // Links and dot segments that stay inside the root are fine.
        for target in ["/link-in.txt", "/./inside.txt", "//inside.txt"] {
            let (status, text) = raw_request(addr, target).await;
            assert_eq!(status, 200, "{target}: {text}");
            assert!(text.ends_with("inside"), "{target}: {text}");
        }
        let (status, _) = raw_request(addr, "/sub/%2e%2e/inside.txt").await;
        assert_eq!(
            status, 404,
            "encoded dot-dot is refused even when it stays inside"
        );
    });
    // curl sends the target as is with --path-as-is, over both protocols.
    for proto in ["--http1.1", "--http2"] {
        for target in [
            "/../secret.txt",
            "/%2e%2e/secret.txt",
            "/sub/../../secret.txt",
        ] {
            let reply = curl(addr, true, target, &["--path-as-is", proto]);
            assert_eq!(reply.status, 404, "curl {proto} {target}");
            assert!(!String::from_utf8_lossy(&reply.body).contains("TOP-SECRET"));
        }
    }
    stop(handle);
}

/// The resident set size of process `pid`, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    // No silent 0: a memory bound checked against a failed read would pass vacuously.
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("{path} has no readable VmRSS line:\n{status}"));
    assert!(kib > 0, "{path}: VmRSS is 0 kB");
    kib * 1024
}

const PROBE_ROOT: &str = "PORTCULLIS_FILES_PROBE_ROOT";

/// Not a test on its own: with `PORTCULLIS_FILES_PROBE_ROOT` set it is the server process
/// of `large_file_streams_intact_with_bounded_memory` (this test binary run again with
/// only this test), so that the server's memory is measured apart from other tests.
/// It serves that directory, prints `probe-listening ADDR` and runs until stdin closes.
#[test]
fn memory_probe_server() {
    let Ok(root) = std::env::var(PROBE_ROOT) else {
        return;
    };
    let files = StaticFiles::new(root).expect("StaticFiles::new");
    let handle = tls_server().spawn_service(files).expect("spawn server");
    println!("probe-listening {}", addr(&handle));
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    stop(handle);
}

/// The probe server child, killed when dropped.
struct Probe(std::process::Child);

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn large_file_streams_intact_with_bounded_memory() {
    const LEN: usize = 32 * 1024 * 1024;
    let site = Site::new("large");
    let path = site.write("large.bin", &pseudo_random(LEN, 5));

    // The server runs in a child process (see `memory_probe_server`) whose resident size
    // is sampled while the file streams over HTTP/1.1 and then HTTP/2.
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "memory_probe_server",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROBE_ROOT, site.root())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the probe server");
    let stdout = child.stdout.take().expect("child stdout");
    let pid = child.id();
    let probe = Probe(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { break };
            // libtest prints `test memory_probe_server ... ` first, on the same line.
            if let Some((_, addr)) = line.split_once("probe-listening ") {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    let addr: std::net::SocketAddr = rx
        .recv_timeout(TIMEOUT)
        .expect("the probe server did not start")
        .parse()
        .expect("probe address");

    let check = path.clone();
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let baseline = block_on(async move {
        // Warm up both protocols (worker threads, TLS sessions) before the baseline.
        for version in VERSIONS {
            let reply = request(addr, version, "GET", "/", &[]).await;
            assert_eq!(reply.status, StatusCode::OK);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss_bytes(pid)
    });
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            let mut samples = 0u64;
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                samples += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            samples
        })
    };
    block_on(async move {
        for version in VERSIONS {
            let mut file = std::fs::File::open(&check).expect("open large file");
            let mut client = Client::connect_tls(addr, version).await;
            let req = client.request("GET", "/large.bin", Bytes::new());
            let response = match &mut client {
                Client::H1 { sender, .. } => sender.send_request(req).await,
                Client::H2 { sender, .. } => sender.send_request(req).await,
            }
            .expect("response head");
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                response.headers()["content-length"],
                LEN.to_string().as_str()
            );
            let mut body = response.into_body();
            let mut offset = 0usize;
            let mut want = Vec::new();
            while let Some(frame) = within(TIMEOUT, "large body frame", body.frame()).await {
                let frame = frame.expect("body frame");
                let Ok(chunk) = frame.into_data() else {
                    continue;
                };
                want.resize(chunk.len(), 0);
                file.seek(SeekFrom::Start(offset as u64)).expect("seek");
                file.read_exact(&mut want).expect("read expected bytes");
                assert!(
                    chunk[..] == want[..],
                    "{version:?}: bytes differ near {offset}"
                );
                offset += chunk.len();
            }
            assert_eq!(offset, LEN, "{version:?}: whole file");
        }
    });
    done.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("sampler");
    assert!(
        samples >= 10,
        "only {samples} RSS samples while streaming: the memory bound is unchecked"
    );
    let grew = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    eprintln!(
        "server RSS: {} KiB before, grew by at most {} KiB while streaming 2 x 32 MiB \
         ({samples} samples)",
        baseline / 1024,
        grew / 1024
    );
    assert!(
        grew < 8 * 1024 * 1024,
        "server memory grew by {} KiB while streaming a 32 MiB file",
        grew / 1024
    );
    // And curl: the whole file, byte for byte.
    let reply = curl(addr, true, "/large.bin", &["--http2"]);
    assert_eq!(reply.status, 200);
    let mut data = Vec::new();
    std::fs::File::open(&path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .expect("read large file");
    assert_same_bytes(&reply.body, &data, "curl download");
    drop(probe);
}

#[test]
fn root_must_be_a_directory() {
    let file = TempFile::new("not-a-dir.txt", b"x");
    let err = StaticFiles::new(&file.path).expect_err("a file is not a root");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("not a directory"), "{err}");
    let err = StaticFiles::new(Path::new("/no/such/dir")).expect_err("missing root");
    assert!(err.to_string().contains("/no/such/dir"), "{err}");
}
