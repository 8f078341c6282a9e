//! Socket activation: listening sockets handed over by a supervisor (systemd's
//! `LISTEN_FDS` protocol, also spoken by `systemd-socket-activate`, s6 and others).

use std::io;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The first descriptor passed (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// Set once the descriptors have been taken: they have one owner.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes the listening TCP sockets a supervisor passed to this process, as systemd's
/// socket activation does: `LISTEN_FDS` descriptors numbered from 3, meant for the process
/// whose id is in `LISTEN_PID`. Used by [`Server::from_listen_fds`](crate::Server::from_listen_fds).
///
/// Returns an empty list when `LISTEN_FDS` is not set, or when `LISTEN_PID` names another
/// process (the variables were inherited from a parent). Otherwise it removes the
/// variables (so that child processes do not take the sockets too), marks the descriptors
/// close-on-exec, and checks each one: a descriptor that is not a listening TCP socket is
/// an error naming it. The descriptors can be taken once per process; a second call is an
/// error.
///
/// ```no_run
/// let listeners = portcullis::listen_fds()?;
/// let server = if listeners.is_empty() {
///     portcullis::Server::bind("127.0.0.1:8443")? // started by hand
/// } else {
///     portcullis::Server::from_listeners(listeners) // started by systemd
/// };
/// # let _ = server;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn listen_fds() -> io::Result<Vec<TcpListener>> {
    let count = match passed_count(
        std::env::var("LISTEN_PID").ok().as_deref(),
        std::env::var("LISTEN_FDS").ok().as_deref(),
        std::process::id(),
    )? {
        Some(count) => count,
        None => return Ok(Vec::new()),
    };
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Err(io::Error::other(
            "the LISTEN_FDS sockets were already taken by this process",
        ));
    }
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    let mut listeners = Vec::with_capacity(count);
    for fd in FIRST_FD..FIRST_FD + count as RawFd {
        check_listening_tcp(fd)?;
        // SAFETY: `fd` is open (checked above) and, by the LISTEN_FDS protocol, was passed
        // to this process for it to own; `TAKEN` makes sure it is wrapped only once.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        // SAFETY: `fcntl` on an open descriptor with these commands only reads and sets
        // its flags.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
        listeners.push(listener);
    }
    Ok(listeners)
}

/// How many descriptors were passed to process `pid`, from `LISTEN_PID` and `LISTEN_FDS`.
fn passed_count(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    pid: u32,
) -> io::Result<Option<usize>> {
    let Some(fds) = listen_fds else {
        return Ok(None);
    };
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    // systemd always sets LISTEN_PID; without it the variables are not for us to trust.
    let Some(listen_pid) = listen_pid else {
        return Ok(None);
    };
    let for_pid: u32 = listen_pid
        .parse()
        .map_err(|_| invalid(format!("LISTEN_PID={listen_pid:?} is not a process id")))?;
    if for_pid != pid {
        return Ok(None);
    }
    let count: usize = fds
        .parse()
        .ok()
        .filter(|&n: &usize| n <= 1024)
        .ok_or_else(|| invalid(format!("LISTEN_FDS={fds:?} is not a count of descriptors")))?;
    Ok(Some(count))
}

/// An error unless `fd` is a listening TCP (IPv4 or IPv6) socket.
fn check_listening_tcp(fd: RawFd) -> io::Result<()> {
    let get = |level, name| -> io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are valid for writes and `len` is `value`'s size.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            let error = io::Error::last_os_error();
            return Err(io::Error::new(
                error.kind(),
                format!("LISTEN_FDS descriptor {fd} is not a usable socket: {error}"),
            ));
        }
        Ok(value)
    };
    let domain = get(libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let kind = get(libc::SOL_SOCKET, libc::SO_TYPE)?;
    let listening = get(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)?;
    if !matches!(domain, libc::AF_INET | libc::AF_INET6)
        || kind != libc::SOCK_STREAM
        || listening == 0
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("LISTEN_FDS descriptor {fd} is not a listening TCP socket"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variables_are_for_this_process_only() {
        assert_eq!(passed_count(None, None, 7).unwrap(), None);
        assert_eq!(passed_count(Some("7"), None, 7).unwrap(), None);
        assert_eq!(passed_count(None, Some("1"), 7).unwrap(), None);
        assert_eq!(passed_count(Some("8"), Some("1"), 7).unwrap(), None);
        assert_eq!(passed_count(Some("7"), Some("2"), 7).unwrap(), Some(2));
        assert_eq!(passed_count(Some("7"), Some("0"), 7).unwrap(), Some(0));
        let error = passed_count(Some("7"), Some("two"), 7).unwrap_err();
        assert!(error.to_string().contains("LISTEN_FDS=\"two\""), "{error}");
        let error = passed_count(Some("x"), Some("1"), 7).unwrap_err();
        assert!(error.to_string().contains("LISTEN_PID"), "{error}");
    }

    #[test]
    fn a_descriptor_that_is_not_a_listener_is_named() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let error = check_listening_tcp(std::os::fd::AsRawFd::as_raw_fd(&file)).unwrap_err();
        assert!(error.to_string().contains("descriptor"), "{error}");
        let connected = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let error = check_listening_tcp(std::os::fd::AsRawFd::as_raw_fd(&connected)).unwrap_err();
        assert!(
            error.to_string().contains("not a listening TCP socket"),
            "{error}"
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        check_listening_tcp(std::os::fd::AsRawFd::as_raw_fd(&listener)).unwrap();
    }
}
