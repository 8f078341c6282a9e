#!/usr/bin/env python3
"""Server memory per idle TLS keep-alive connection (Python 3 standard library only).

Opens COUNT connections to the server, each completing a TLS handshake (ALPN http/1.1)
and one HTTP/1.1 keep-alive request `GET /`, keeps them all open, and compares the server
process's VmRSS (from /proc/PID/status) before and after.

    python3 benches/idle_conns.py --pid PID --port PORT [--count 5000] [--cafile certs/ca.crt]

Prints one line of key=value pairs; `kib_per_conn` is (rss_after - rss_before) / count.
The connections are opened one after the other as fast as possible; they must all be
open well within the servers' 30 s request-header (idle keep-alive) timeout, which the
`open_after` figure (server file descriptors opened) checks.
"""

import argparse
import os
import resource
import socket
import ssl
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return
        except (ValueError, OSError):
            want = hard
    if soft == resource.RLIM_INFINITY or soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def request(ctx, host, port):
    raw = socket.create_connection((host, port), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tls = ctx.wrap_socket(raw, server_hostname="localhost")
    tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(4096)
        if not chunk:
            raise RuntimeError("connection closed before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = tls.recv(4096)
        if not chunk:
            raise RuntimeError("connection closed before the response body")
        body += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected response: {head[:80]!r}")
    return tls


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pid", type=int, required=True, help="server process id")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--cafile", default=os.path.join(os.path.dirname(__file__), "..", "certs", "ca.crt"))
    p.add_argument("--settle", type=float, default=1.0, help="seconds to wait before each RSS reading")
    args = p.parse_args()

    raise_nofile(65536)
    ctx = ssl.create_default_context(cafile=args.cafile)
    ctx.set_alpn_protocols(["http/1.1"])

    # Warm up: the first request starts the server's lazily created parts (a worker
    # thread in portcullis, the blocking-free path in the peer); those are not per
    # connection.
    for _ in range(16):
        request(ctx, args.host, args.port).close()
    time.sleep(args.settle)
    rss_before = rss_kib(args.pid)
    fds_before = open_fds(args.pid)

    conns = []
    start = time.monotonic()
    for _ in range(args.count):
        conns.append(request(ctx, args.host, args.port))
    open_secs = time.monotonic() - start
    time.sleep(args.settle)
    rss_after = rss_kib(args.pid)
    fds_after = open_fds(args.pid)
    for c in conns:
        c.close()

    per_conn = (rss_after - rss_before) / args.count
    print(
        f"kib_per_conn={per_conn:.2f} rss_before_kib={rss_before} rss_after_kib={rss_after} "
        f"count={args.count} open_after={fds_after - fds_before} open_secs={open_secs:.1f}"
    )
    if fds_after - fds_before < args.count * 0.99:
        print(f"warning: only {fds_after - fds_before} of {args.count} connections open at the server",
              file=sys.stderr)


if __name__ == "__main__":
    main()
