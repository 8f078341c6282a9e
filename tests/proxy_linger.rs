//! Lingering close, which rolling restarts behind a balancer depend on: when the server
//! closes a connection (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY) while the client has
//! sent bytes it will never read, closing the socket at once would make the kernel send
//! RST and throw away the end of the response still in the send buffer. The server
//! instead closes its side (FIN), reads and drops until the client closes, then closes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use portcullis::{Body, Response, Server};

/// More than the client's receive window, less than what the two sockets can buffer: the
/// server finishes writing while the end still waits in its send queue.
const BODY_BYTES: usize = 1 << 20;

#[test]
fn the_end_of_a_response_survives_bytes_the_server_never_reads() {
    let server = Server::bind("127.0.0.1:0")
        .unwrap()
        .spawn(|_req, _info| Response::new(Body::from(vec![b'x'; BODY_BYTES])))
        .unwrap();
    let addr = server.local_addrs()[0];
    for round in 0..3 {
        let mut socket = TcpStream::connect(addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        socket
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        // The response has begun: the server is past reading the request.
        let mut first = [0; 1];
        socket.read_exact(&mut first).unwrap();
        // Bytes the server will never read (a client that pipelined, or a body it ignored).
        socket.write_all(&[b'z'; 4096]).unwrap();
        // Let the server write all it can and close while we are not reading.
        std::thread::sleep(Duration::from_millis(500));
        let mut rest = Vec::new();
        let start = Instant::now();
        let result = socket.read_to_end(&mut rest);
        let text = String::from_utf8_lossy(&rest[..rest.len().min(200)]).into_owned();
        let body_at = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |at| at + 4);
        assert!(
            result.is_ok(),
            "round {round}: {result:?} after {} of {BODY_BYTES} body bytes ({:?}): {text}",
            rest.len() - body_at,
            start.elapsed()
        );
        assert_eq!(rest.len() - body_at, BODY_BYTES, "round {round}: {text}");
    }
    server.shutdown().unwrap();
}
