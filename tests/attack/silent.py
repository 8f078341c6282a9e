#!/usr/bin/env python3
"""Silent-connection attack: hold N TCP connections open that never send a byte.

Opens --conns connections to HOST:PORT at --rate per second, never writes to them,
and keeps the number open at --conns for --seconds: a socket the server closes is
counted (with how long it lived) and replaced, so the pressure stays at full strength
for the whole test. Stops by itself after --seconds.

Writes a JSON summary to --json and prints a status line every 5 s.
Standard library only (Python 3.11).
"""

import argparse
import errno
import json
import resource
import selectors
import socket
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--rate", type=int, default=200, help="new connections per second")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--json", required=True, help="where to write the summary")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.conns + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    sel = selectors.DefaultSelector()  # epoll: no FD_SETSIZE limit
    opened_at = {}  # socket -> monotonic time it connected
    lifetimes = []  # seconds each server-closed socket lived
    server_sent = 0  # sockets on which the server sent bytes (it should not)
    connect_errors = {}
    opened_total = 0
    closed_by_server = 0
    peak_open = 0
    timeline = []  # [second, open, closed_by_server_cumulative]

    start = time.monotonic()
    end = start + args.seconds
    budget = 0.0  # connections we may open now under --rate
    last = start
    next_report = start + 1.0

    def close(sock):
        sel.unregister(sock)
        opened_at.pop(sock, None)
        sock.close()

    while True:
        now = time.monotonic()
        if now >= end:
            break
        budget = min(budget + (now - last) * args.rate, float(args.rate))
        last = now
        # Top up to --conns open sockets, at most --rate per second.
        while len(opened_at) < args.conns and budget >= 1.0:
            budget -= 1.0
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(3.0)
            try:
                s.connect((args.host, args.port))
            except OSError as e:
                name = errno.errorcode.get(e.errno, str(e)) if e.errno else type(e).__name__
                connect_errors[name] = connect_errors.get(name, 0) + 1
                s.close()
                continue
            s.setblocking(False)
            opened_at[s] = time.monotonic()
            opened_total += 1
            sel.register(s, selectors.EVENT_READ)
        peak_open = max(peak_open, len(opened_at))

        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""  # reset by the server
            if data:
                server_sent += 1  # e.g. a TLS alert before closing; keep reading
                continue
            lifetimes.append(time.monotonic() - opened_at[s])
            closed_by_server += 1
            close(s)

        if time.monotonic() >= next_report:
            second = round(next_report - start)
            timeline.append([second, len(opened_at), closed_by_server])
            if second % 5 == 0:
                print(f"t={second:>3}s open={len(opened_at)} closed_by_server={closed_by_server}"
                      f" opened_total={opened_total}", flush=True)
            next_report += 1.0

    final_open = len(opened_at)
    for s in list(opened_at):
        close(s)

    summary = {
        "opened_total": opened_total,
        "peak_open": peak_open,
        "final_open": final_open,
        "closed_by_server": closed_by_server,
        "server_sent_bytes_on": server_sent,
        "connect_errors": connect_errors,
        "lifetime_min_s": round(min(lifetimes), 2) if lifetimes else None,
        "lifetime_median_s": round(statistics.median(lifetimes), 2) if lifetimes else None,
        "lifetime_max_s": round(max(lifetimes), 2) if lifetimes else None,
        "timeline": timeline,
        "lifetimes_s": [round(x, 3) for x in lifetimes],
    }
    with open(args.json, "w") as f:
        json.dump(summary, f)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("timeline", "lifetimes_s")}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
