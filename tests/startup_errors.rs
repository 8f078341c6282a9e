//! Start-up errors as a user sees them from `main`: the message, not a `Debug` dump, and
//! an unreadable static-files root refused at start instead of answering 403 to
//! everything.

mod common;
mod tlsutil;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tlsutil::*;

/// Runs the command, which must fail at start: killed (and the test failed) if it is
/// still running after 20 s.
fn run(command: &mut Command) -> Output {
    let mut child = command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the example");
    let started = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "still running after 20 s instead of failing at start; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    assert!(
        !output.status.success(),
        "expected a start-up failure, got {}",
        output.status
    );
    output
}

#[test]
fn a_missing_certificate_is_reported_by_its_message() {
    let output = run(Command::new(example_binary("hello")).args([
        "--addr",
        "127.0.0.1:0",
        "--cert",
        "/no/such/cert.pem",
    ]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Error: ") && stderr.contains("/no/such/cert.pem"),
        "{stderr}"
    );
    assert!(!stderr.contains("Custom {"), "Debug form printed: {stderr}");
    assert!(!stderr.contains("kind:"), "Debug form printed: {stderr}");
}

#[test]
fn an_address_in_use_is_reported_by_its_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let output = run(Command::new(example_binary("hello")).args(["--plain", "--addr", &addr]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("Error: cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(!stderr.contains("Os {"), "Debug form printed: {stderr}");
}

/// `file_server --root DIR` where DIR cannot be read by the server's user fails at start
/// and says why. As root (which reads anything) the server runs as `nobody` (setpriv).
#[test]
fn an_unreadable_static_root_fails_at_start() {
    let dir = std::env::temp_dir().join(format!("portcullis-unreadable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("index.html"), "hi").expect("write");
    let set_mode = |mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    set_mode(0o000);
    let binary = example_binary("file_server");
    let root = dir.to_str().expect("UTF-8 path");
    let args = ["--plain", "--addr", "127.0.0.1:0", "--root", root];
    // SAFETY: `geteuid` takes no arguments and cannot fail.
    let output = if unsafe { libc::geteuid() } == 0 {
        run(Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&binary)
            .args(args))
    } else {
        run(Command::new(&binary).args(args))
    };
    set_mode(0o755);
    std::fs::remove_dir_all(&dir).expect("clean up");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "Error: static files root {root} is not readable by this process"
        )) && stderr.contains("Permission denied"),
        "{stderr}"
    );
}
