"""One httpx (HTTP/2) check for tests/interop/run.sh; prints one detail line, exits 0 if it passed.

    python httpx_check.py --cafile CA version    URL   negotiated protocol is HTTP/2
    python httpx_check.py --cafile CA concurrent URL   50 requests at once from one client
    python httpx_check.py --cafile CA upload     URL   streamed (generator) upload, echoed back
"""

import argparse
import hashlib
import os
import ssl
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx


def client(cafile):
    context = ssl.create_default_context(cafile=cafile)
    return httpx.Client(http2=True, verify=context, timeout=60)


def check_version(c, url):
    r = c.get(url)
    print(f"{r.status_code} {r.http_version}, body {r.text.strip()!r}")
    return r.status_code == 200 and r.http_version == "HTTP/2"


def check_concurrent(c, url, n=50):
    c.get(url)  # open the connection first, so that all 50 share it

    def one(i):
        r = c.get(url, params={"i": i})
        return r.status_code, r.http_version

    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(one, range(n)))
    ok = sum(1 for status, version in results if status == 200 and version == "HTTP/2")
    print(f"{ok}/{n} answered 200 over HTTP/2")
    return ok == n


# httpx (httpcore) is half duplex on HTTP/2: it sends the whole request body before it reads
# any of the response, and opens a 16 MiB receive window per stream (2**24). The echo
# route streams the response while the upload is still arriving, so the echo must fit
# in that window: with more than ~16 MiB in flight both sides wait on each other until
# the server's send timeout (60 s) cuts the connection. 8 MiB stays well inside it.
def check_upload(c, url, chunks=128, chunk_size=64 * 1024):
    sent = hashlib.sha256()

    def body():
        for _ in range(chunks):
            chunk = os.urandom(chunk_size)
            sent.update(chunk)
            yield chunk

    got = hashlib.sha256()
    size = 0
    with c.stream("POST", url, content=body()) as r:
        for chunk in r.iter_bytes():
            got.update(chunk)
            size += len(chunk)
    same = got.hexdigest() == sent.hexdigest()
    print(
        f"{r.status_code} {r.http_version}, streamed {chunks * chunk_size >> 20} MiB from a generator, "
        f"echoed {size} bytes, sha256 {'matches' if same else 'DIFFERS'}"
    )
    return r.status_code == 200 and r.http_version == "HTTP/2" and same


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cafile", required=True)
    parser.add_argument("check", choices=["version", "concurrent", "upload"])
    parser.add_argument("url")
    args = parser.parse_args()
    checks = {"version": check_version, "concurrent": check_concurrent, "upload": check_upload}
    try:
        with client(args.cafile) as c:
            ok = checks[args.check](c, args.url)
    except Exception as e:  # any client error is a failed check, reported in one line
        print(f"{type(e).__name__}: {e}")
        ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
