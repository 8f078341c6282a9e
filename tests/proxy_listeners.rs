//! Listeners for running several processes on one port: `SO_REUSEPORT`
//! (`Server::reuse_port`) and socket activation (`LISTEN_FDS`, `Server::from_listen_fds`)
//! with a child process that inherits the listening socket, as systemd starts one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use portcullis::{Body, Response, Server};

/// Set in the child process of the socket-activation test.
const CHILD_ENV: &str = "PORTCULLIS_ACTIVATION_CHILD";

/// A plain HTTP/1.1 GET on a new connection; the response body.
fn get(addr: SocketAddr) -> std::io::Result<String> {
    let mut socket = TcpStream::connect(addr)?;
    socket.set_read_timeout(Some(Duration::from_secs(20)))?;
    socket.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    socket.read_to_string(&mut text)?;
    if !text.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("not a 200: {text:?}")));
    }
    Ok(text
        .rsplit("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string())
}

#[test]
fn two_servers_share_a_port_with_reuse_port_and_one_can_leave() {
    let named = |name: &'static str, addr: &str| {
        Server::new()
            .reuse_port(true)
            .also_bind(addr)
            .expect("bind with SO_REUSEPORT")
            .spawn(move |_req, _info| Response::new(Body::from(name)))
            .expect("spawn")
    };
    let first = named("first", "127.0.0.1:0");
    let addr = first.local_addrs()[0];
    let second = named("second", &addr.to_string());
    assert_eq!(second.local_addrs()[0], addr);
    assert!(
        Server::bind(addr).is_err(),
        "a listener without SO_REUSEPORT must not join the port"
    );

    // The kernel spreads connections by their addresses: 64 connections all landing on one
    // of the two has a chance of 2^-63.
    let mut seen = Vec::new();
    for _ in 0..64 {
        seen.push(get(addr).expect("GET on the shared port"));
    }
    let on_first = seen.iter().filter(|s| *s == "first").count();
    assert!(
        on_first > 0 && on_first < 64,
        "{on_first} of 64 went to the first server: {seen:?}"
    );

    // The first one shuts down: every new connection goes to the second.
    first.shutdown().expect("shut down the first server");
    for i in 0..32 {
        assert_eq!(
            get(addr).expect("GET after the first left"),
            "second",
            "#{i}"
        );
    }
}

/// The child: serves one request on the socket systemd (here, the test) passed.
#[test]
fn activation_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let server = Server::from_listen_fds().expect("take the LISTEN_FDS socket");
    for var in ["LISTEN_PID", "LISTEN_FDS"] {
        assert!(
            std::env::var_os(var).is_none(),
            "{var} was left for children"
        );
    }
    assert!(
        portcullis::listen_fds().expect("nothing left").is_empty(),
        "the sockets can be taken once"
    );
    let (served, requests) = mpsc::channel();
    let handle = server
        .spawn(move |_req, _info| {
            let _ = served.send(());
            Response::new(Body::from(format!("pid={}", std::process::id())))
        })
        .expect("spawn on the inherited socket");
    requests
        .recv_timeout(Duration::from_secs(30))
        .expect("a request within 30 s");
    handle.shutdown().expect("shutdown");
}

#[test]
fn a_child_serves_on_an_inherited_socket_and_a_connection_made_before_it_started() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    // The "supervisor" holds the socket; a client connects before any server runs.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    let early = std::thread::spawn(move || get(addr));
    std::thread::sleep(Duration::from_millis(100));

    let fd = listener.as_raw_fd();
    let exe = std::env::current_exe().expect("current exe");
    let mut command = Command::new("sh");
    command
        // LISTEN_PID is the process that will run: `exec` keeps the shell's pid.
        .args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
        .arg(&exe)
        .args([
            "--exact",
            "activation_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .env("LISTEN_FDS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: `dup2` and `fcntl` are async-signal-safe and touch only the child's
    // descriptor table; they put the listener on descriptor 3 without close-on-exec, as
    // systemd does (`dup2` onto itself would keep the flag, hence `fcntl`).
    unsafe {
        command.pre_exec(move || {
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().expect("start the child");
    let child_pid = child.id();
    drop(listener);

    let reply = early.join().expect("client thread");
    let output = child.wait_with_output().expect("child exit");
    let reply = reply.unwrap_or_else(|e| {
        panic!(
            "the connection made before the child started was not served: {e}\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(reply, format!("pid={child_pid}"));
    assert!(
        output.status.success(),
        "child failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("test activation_child ... ok"),
        "the child did not run its test"
    );
}
