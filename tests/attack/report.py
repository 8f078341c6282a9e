#!/usr/bin/env python3
"""Summaries for tests/attack/run.sh (standard library only).

  report.py attack DIR        per-attack lines; writes DIR/summary.json
  report.py attack DIR        per-attack lines and one `CHECK ok|FAIL` line per check;
                              writes DIR/summary.json; exit 1 if any check failed
  report.py table DIR...      markdown table of every attack; exit 1 if any attack
                              failed a check or did not run

The checks of an attack (run.sh's header says why each exists):
  legit     made > 0, every one 200, and the last one within 3 s of the end of the attack
            (its length, or when the tool exited if sooner)
  attacker  the tool's exit status 0 and, for slowhttptest, an expected "Exit status:"
  held      the tool's peak of open connections and the server's peak of descriptors
            (less those open before the attack) both >= held_min (slowhttptest: its first
            run; a later run >= held_min / 4)
  cut       connection lifetimes (silent.py measures each one; for slowhttptest they are
            estimated from its per-second CSV by matching the k-th connection opened with
            the k-th closed) have a median within bound_s +-10 % (+-1 s more for
            slowhttptest's sampling), none closed before that window, and the server
            closed at least held_min of them
  cpu       the server's utime+stime over the attack / its length <= cpu_limit_pct

An attack DIR holds:
  meta.json      {"name", "kind": "slowhttptest" | "silent", "seconds", "conns",
                  "attack_rc", "bound_name", "bound_s", "held_min", "fd_base",
                  "cpu_limit_pct", "clk_tck", "legit_delay"}
  legit.tsv      one line per legitimate request:
                 t_s  proto  curl_rc  http_code  time_total_s  http_version  error
  attacker.out   the attack tool's output; sht.csv (slowhttptest) or silent.json
  server.tsv     samples of the server process: t_s  fds  threads  rss_kb  cpu_ticks
"""

import csv
import json
import math
import os
import re
import statistics
import sys

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def pct(sorted_ms, p):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_ms:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_ms)))
    return sorted_ms[rank - 1]


def fmt_ms(v):
    return "-" if v is None else f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def read_legit(path):
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 6:
                continue
            t, proto, rc, code, total, version = parts[:6]
            err = parts[6] if len(parts) > 6 else ""
            try:
                total_ms = float(total) * 1000
            except ValueError:
                total_ms = float("nan")
            rows.append({"t": float(t), "proto": proto, "rc": int(rc), "code": code,
                         "ms": total_ms, "version": version, "err": err})
    return rows


def legit_summary(rows):
    ok = [r for r in rows if r["rc"] == 0 and r["code"] == "200"]
    ms = sorted(r["ms"] for r in ok if not math.isnan(r["ms"]))
    by_proto = {}
    for r in rows:
        p = by_proto.setdefault(r["proto"], {"made": 0, "ok": 0, "versions": {}})
        p["made"] += 1
        p["ok"] += r in ok
        p["versions"][r["version"]] = p["versions"].get(r["version"], 0) + 1
    failures = [r for r in rows if r not in ok]
    return {
        "made": len(rows),
        "times": [r["t"] for r in rows],
        "ok": len(ok),
        "pct": 100.0 * len(ok) / len(rows) if rows else 0.0,
        "p50": pct(ms, 50),
        "p99": pct(ms, 99),
        "max": ms[-1] if ms else None,
        "by_proto": by_proto,
        "failures": [{"t": r["t"], "proto": r["proto"], "rc": r["rc"], "code": r["code"],
                      "ms": None if math.isnan(r["ms"]) else round(r["ms"]),
                      "err": r["err"]} for r in failures],
    }


def sht_summary(d):
    """Numbers from slowhttptest's CSV and its last status block."""
    out = {}
    text = ""
    if os.path.exists(os.path.join(d, "attacker.out")):
        with open(os.path.join(d, "attacker.out"), errors="replace") as f:
            text = ANSI.sub("", f.read())
    for key in ("initializing", "pending", "connected", "error", "closed"):
        found = re.findall(rf"^\s*{key}:\s*(\d+)", text, re.M)
        out["final_" + key] = int(found[-1]) if found else None
    m = re.findall(r"Exit status:\s*(.+)", text)
    out["exit_status"] = m[-1].strip() if m else "(no exit status in output)"
    m = re.findall(r"Test ended on (\d+)\w* second", text)
    out["ended_s"] = int(m[-1]) if m else None
    rows = []
    path = os.path.join(d, "sht.csv")
    if os.path.exists(path):
        with open(path) as f:
            for row in csv.DictReader(f):
                try:
                    rows.append({"s": int(row["Seconds"]), "closed": int(row["Closed"]),
                                 "pending": int(row["Pending"]),
                                 "connected": int(row["Connected"]),
                                 "available": int(row["Service Available"]) > 0})
                except (KeyError, ValueError):
                    continue
    if rows:  # the CSV's last second is later than the last status block printed
        for key in ("pending", "connected", "closed"):
            out["final_" + key] = rows[-1][key]
    out["peak_connected"] = max((r["connected"] for r in rows), default=None)
    out["peak_closed"] = max((r["closed"] for r in rows), default=None)
    out["first_close_s"] = next((r["s"] for r in rows if r["closed"] > 0), None)
    out["probe_unavailable_s"] = [r["s"] for r in rows if not r["available"]]
    out["timeline"] = [[r["s"], r["connected"], r["closed"], r["pending"]] for r in rows]
    out["lifetimes_s"] = sht_lifetimes(rows)
    return out


def sht_lifetimes(rows):
    """Lifetimes of the connections the server closed, to slowhttptest's 1 s resolution:
    the k-th connection to be closed is matched with the k-th to be opened (the attack
    treats every connection alike, so they close in the order they opened)."""
    lifetimes = []
    closed_final = rows[-1]["closed"] if rows else 0
    i_open = i_close = 0
    for k in range(1, closed_final + 1):
        while i_open < len(rows) and rows[i_open]["connected"] + rows[i_open]["closed"] < k:
            i_open += 1
        while i_close < len(rows) and rows[i_close]["closed"] < k:
            i_close += 1
        if i_open < len(rows) and i_close < len(rows):
            lifetimes.append(rows[i_close]["s"] - rows[i_open]["s"])
    return lifetimes


def server_summary(d):
    path = os.path.join(d, "server.tsv")
    samples = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                p = line.split()
                if len(p) == 5:
                    samples.append([float(p[0]), int(p[1]), int(p[2]), int(p[3]), int(p[4])])
    return samples


def every(timeline, step=5):
    """Keep the entries whose second is a multiple of step, plus the last one."""
    kept = [e for e in timeline if int(e[0]) % step == 0]
    if timeline and (not kept or kept[-1] is not timeline[-1]):
        kept.append(timeline[-1])
    return kept


def attack(d):
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    name, kind = meta["name"], meta["kind"]
    legit = legit_summary(read_legit(os.path.join(d, "legit.tsv")))
    samples = server_summary(d)
    s = {"name": name, "kind": kind, "legit": legit, "attack_rc": meta.get("attack_rc")}

    if kind == "slowhttptest":
        runs = []
        for entry in sorted(os.listdir(d)):
            m = re.fullmatch(r"round-(\d+)", entry)
            if m:
                rd = os.path.join(d, entry)
                r = sht_summary(rd)
                r["run"] = int(m.group(1))
                try:
                    with open(os.path.join(rd, "start_ms")) as f:
                        r["offset_s"] = int(f.read().strip()) / 1000
                except (OSError, ValueError):
                    r["offset_s"] = 0.0
                try:
                    with open(os.path.join(rd, "rc")) as f:
                        r["rc"] = int(f.read().strip())
                except (OSError, ValueError):
                    r["rc"] = None  # killed before it ended
                runs.append(r)
        runs.sort(key=lambda r: r["run"])
        a = {"runs": runs}
        s["attacker"] = a
        peak = max((r["peak_connected"] or r["final_connected"] or 0 for r in runs), default=0)
        closed = sum(r["final_closed"] or 0 for r in runs)
        errors = sum(r["final_error"] or 0 for r in runs)
        last = runs[-1] if runs else {}
        s["reached"] = peak
        if len(runs) == 1:
            s["attacker_cell"] = (f"{peak} connected (end: {last['final_connected']} "
                                  f"connected, {last['final_pending']} pending, "
                                  f"{last['final_closed']} closed, {last['final_error']} error)")
        else:
            s["attacker_cell"] = (f"{peak} connected at peak, {len(runs)} runs (closed "
                                  f"{closed} in all, {errors} error; last run's end: "
                                  f"{last.get('final_connected')} connected)")
        firsts = [r["offset_s"] + r["first_close_s"] for r in runs
                  if r["first_close_s"] is not None]
        if not runs:
            did = "slowhttptest did not run"
        elif not firsts:
            end = last["offset_s"] + (last["ended_s"] or meta["seconds"])
            did = f"closed none of them within {end:.0f} s"
        else:
            did = (f"closed {closed} by slowhttptest's last count (first "
                   f"{min(firsts):.0f} s after the attack began")
            lives = [r["first_close_s"] for r in runs if r["first_close_s"] is not None]
            if len(runs) > 1:
                did += (f"; in each of the {len(runs)} runs the first close came "
                        f"{'/'.join(str(x) for x in lives)} s after that run began")
            did += ")"
            ended = [r for r in runs if r["exit_status"].startswith("No open connections")]
            if ended:
                did += (f"; {len(ended)} of {len(runs)} slowhttptest run(s) ended because "
                        f"the server had closed every connection")
        unavailable = sum(len(r["probe_unavailable_s"]) for r in runs)
        if unavailable:
            did += (f"; slowhttptest's probe judged the server unavailable for "
                    f"{unavailable} s")
        s["server_did"] = did
    elif kind == "h2attack":
        a = {}
        path = os.path.join(d, "h2.json")
        if os.path.exists(path):
            with open(path) as f:
                a = json.load(f)
        s["attacker"] = a
        s["reached"] = a.get("peak_open")
        s["attacker_cell"] = (f"{a.get('peak_open')} h2 connections at peak "
                              f"({a.get('mode')}; {a.get('streams_opened')} streams opened, "
                              f"{(a.get('flood_bytes') or 0) >> 20} MiB of frames flooded)")
        if a.get("resets"):
            life = a.get("lifetimes_s") or []
            did = (f"reset {a['resets']} streams "
                   f"{min(life)}/{statistics.median(life)}/{max(life)} s after they were "
                   f"requested (min/median/max)")
        else:
            did = "reset no stream"
        did += f"; closed {a.get('closed_by_server') or 0} connections"
        s["server_did"] = did
    else:
        a = {}
        path = os.path.join(d, "silent.json")
        if os.path.exists(path):
            with open(path) as f:
                a = json.load(f)
        s["attacker"] = a
        s["reached"] = a.get("peak_open")
        s["attacker_cell"] = (f"{a.get('peak_open')} open at peak ({a.get('opened_total')} "
                              f"opened, {a.get('closed_by_server')} closed by server, "
                              f"connect errors {a.get('connect_errors') or 0})")
        if a.get("closed_by_server"):
            did = (f"closed {a['closed_by_server']} silent sockets after "
                   f"{a['lifetime_min_s']}/{a['lifetime_median_s']}/{a['lifetime_max_s']} s "
                   f"(min/median/max; replaced to keep {meta['conns']} open)")
        else:
            did = "closed none of the silent sockets"
        if a.get("server_sent_bytes_on"):
            did += f"; sent bytes on {a['server_sent_bytes_on']} (an alert before closing)"
        s["server_did"] = did

    if samples:
        s["server_fds_max"] = max(x[1] for x in samples)
        s["server_fds_end"] = samples[-1][1]
        s["server_threads_max"] = max(x[2] for x in samples)
        s["server_rss_max_mb"] = round(max(x[3] for x in samples) / 1024, 1)
    checks = run_checks(meta, s, legit, samples)
    s["checks"] = checks
    s["ok"] = all(c["ok"] for c in checks)

    # The per-attack lines.
    L = legit
    print(f"RESULT {name}: attacker {s['attacker_cell']}; legit {L['made']} made, "
          f"{L['ok']} ok ({L['pct']:.1f}%), p50 {fmt_ms(L['p50'])} ms, "
          f"p99 {fmt_ms(L['p99'])} ms, max {fmt_ms(L['max'])} ms")
    protos = ", ".join(f"{p}: {v['ok']}/{v['made']} ok (negotiated {v['versions']})"
                       for p, v in sorted(L["by_proto"].items()))
    print(f"  legit by protocol: {protos or 'none'}")
    print(f"  server vs attackers: {s['server_did']}")
    if kind == "h2attack":
        pass
    elif kind == "slowhttptest":
        for r in a["runs"]:
            tl = " ".join(f"{t}s:{c}/{cl}" for t, c, cl, _ in every(r["timeline"]))
            print(f"  slowhttptest run {r['run']} from {r['offset_s']:.0f} s "
                  f"(second of the run:connected/closed): {tl}")
            print(f"    exit: {r['exit_status']}, ended on second {r['ended_s']}")
    else:
        tl = " ".join(f"{t}s:{o}/{c}" for t, o, c in every(a.get("timeline", [])))
        print(f"  silent sockets (second:open/closed-by-server): {tl}")
    if samples:
        tl = " ".join(f"{t:.0f}s:{fd}" for t, fd, _, _ in every(
            [[round(x[0]), x[1], x[2], x[3]] for x in samples]))
        print(f"  server fds (second:fds): {tl}; max threads {s['server_threads_max']}, "
              f"max RSS {s['server_rss_max_mb']} MiB")
    for fail in L["failures"][:10]:
        print(f"  FAILED legit request at {fail['t']:.1f} s ({fail['proto']}): curl rc "
              f"{fail['rc']}, status {fail['code']}, {fail['ms']} ms, {fail['err']}")
    if len(L["failures"]) > 10:
        print(f"  ... and {len(L['failures']) - 10} more failed legitimate requests")
    if L["made"] == 0:
        print("  FAILED: no legitimate request was made during this attack")
    for c in checks:
        print(f"  CHECK {'ok  ' if c['ok'] else 'FAIL'} {name} {c['name']}: {c['detail']}")

    with open(os.path.join(d, "summary.json"), "w") as f:
        json.dump(s, f)
    return 0 if s["ok"] else 1


def lifetime_check(lifetimes, bound, slack):
    """(ok, detail, median) for the `cut` check: median within bound +-10 % +-slack, and
    nothing closed before that window."""
    lo, hi = 0.9 * bound - slack, 1.1 * bound + slack
    if not lifetimes:
        return False, f"no connection was closed by the server (bound {bound} s)", None
    srt = sorted(lifetimes)
    med = statistics.median(srt)
    early = sum(1 for x in srt if x < lo)
    inside = sum(1 for x in srt if lo <= x <= hi)
    ok = lo <= med <= hi and early == 0
    detail = (f"lifetimes min/median/max {srt[0]:.2f}/{med:.2f}/{srt[-1]:.2f} s, "
              f"{inside} of {len(srt)} within [{lo:.1f}, {hi:.1f}] s (bound {bound} s), "
              f"{early} closed early")
    return ok, detail, med


def server_fd_lifetimes(samples, fd_base):
    """(lifetimes, closed) from the server's descriptor count, for an attack that opens its
    connections, holds them, and has them all cut (no replacement): the time from the
    k-th opened to the k-th closed, for k at each decile of the peak, to the 1 s sampling."""
    if not samples:
        return [], 0
    above = [(x[0], x[1] - fd_base) for x in samples]
    p = max(range(len(above)), key=lambda i: above[i][1])
    peak = above[p][1]
    closed = peak - min(n for _, n in above[p:])
    lifetimes = []
    for q in range(1, 10):
        k = peak * q / 10
        t_up = next((t for t, n in above[:p + 1] if n >= k), None)
        t_down = next((t for t, n in above[p:] if peak - n >= k), None)
        if t_up is not None and t_down is not None:
            lifetimes.append(round(t_down - t_up, 2))
    return lifetimes, closed


def run_checks(meta, s, legit, samples):
    checks = []

    def check(name, ok, detail):
        checks.append({"name": name, "ok": bool(ok), "detail": detail})

    secs, held_min, bound = meta["seconds"], meta["held_min"], meta["bound_s"]
    a = s["attacker"]

    # legit: answered, and running as long as the attack did (the client stops when the
    # attack tool exits; a tool that exits early for a bad reason fails `attacker`).
    times = legit.get("times", [])
    last_t = max(times) if times else None
    ended = min(float(meta.get("attack_ended_s", secs)), secs)
    check("legit", legit["made"] > 0 and legit["ok"] == legit["made"]
          and last_t is not None and last_t >= ended - 3,
          f"{legit['ok']} of {legit['made']} answered 200, the last at "
          f"{'-' if last_t is None else f'{last_t:.1f}'} s; the attack ended at {ended:.1f} s "
          f"of {secs} s (must be >= {ended - 3:.1f})")

    # attacker: exit status, and what it said.
    if s["kind"] == "slowhttptest":
        runs = a["runs"]
        good = ("Hit test time limit", "No open connections left")
        bad = [f"run {r['run']}: rc {r['rc']}, {r['exit_status']}" for r in runs
               if r["rc"] != 0 or not r["exit_status"].startswith(good)]
        check("attacker", runs and not bad and meta["attack_rc"] == 0,
              f"{len(runs)} slowhttptest run(s), wrapper status {meta['attack_rc']}"
              + (f"; bad ends: {'; '.join(bad)}" if bad else
                 f"; ends: {', '.join(r['exit_status'] for r in runs)}"))
        # The first run must reach held_min; a later one (restarted with less time left)
        # at least a quarter of it, so that no run is an attack in name only.
        peaks = [r["peak_connected"] or 0 for r in runs]
        tool_held = peaks[0] if peaks else 0
        if any(p < held_min // 4 for p in peaks[1:]):
            tool_held = min(peaks)
        tool_detail = f"slowhttptest peak connected per run {peaks} (later runs >= {held_min // 4})"
    elif s["kind"] == "h2attack":
        tool_held = a.get("peak_open") or 0
        did_attack = ((a.get("flood_bytes") or 0) >= 8 << 20 if a.get("mode") == "flood"
                      else (a.get("streams_opened") or 0) >= held_min)
        check("attacker", meta["attack_rc"] == 0 and did_attack,
              f"h2_attack.py status {meta['attack_rc']}, {a.get('mode')}: "
              f"{a.get('streams_opened')} streams opened, {(a.get('flood_bytes') or 0) >> 20} "
              f"MiB flooded, connect errors {a.get('connect_errors') or 0}")
        tool_detail = f"h2_attack.py peak open {tool_held}"
        # held_min counts connections here; a connection of the stream attacks carries many
        # streams, so the server's descriptors show only the connections.
    else:
        tool_held = a.get("peak_open") or 0
        check("attacker", meta["attack_rc"] == 0 and "peak_open" in a,
              f"silent.py status {meta['attack_rc']}, "
              f"{'summary written' if 'peak_open' in a else 'no summary'}, "
              f"connect errors {a.get('connect_errors') or 0}")
        tool_detail = f"silent.py peak open {tool_held}"

    # held: from the tool and from the server's descriptors.
    fd_held = (max(x[1] for x in samples) - meta["fd_base"]) if samples else 0
    check("held", tool_held >= held_min and fd_held >= held_min,
          f"{tool_detail}; server descriptors peak {fd_held} above the {meta['fd_base']} "
          f"before the attack; need >= {held_min} of {meta['conns']} on both")

    # cut: at the documented bound.
    if meta.get("cut_from") == "none":
        # A flood is not cut (its frames are legal); what it must not do is slow the
        # others: the legitimate client's worst request stays under a second.
        worst = legit.get("max")
        check("fair", worst is not None and worst < 1000,
              f"legitimate requests' slowest {fmt_ms(worst)} ms beside the flood "
              f"(must be < 1000 ms)")
    elif s["kind"] == "h2attack":
        lifetimes = a.get("lifetimes_s") or []
        ok, detail, med = lifetime_check(lifetimes, bound, 0.5)
        s["cut_median_s"] = med
        check("cut", ok and len(lifetimes) >= held_min,
              f"{meta['bound_name']} {bound} s: streams {detail}; {len(lifetimes)} reset "
              f"(need >= {held_min})")
    elif meta.get("cut_from") == "server_fds":
        # The tool cannot see the closes (slowhttptest -X notices one only after reading
        # the buffered responses a few bytes at a time): the server's descriptors can.
        lifetimes, closed = server_fd_lifetimes(samples, meta["fd_base"])
        # A send timeout starts once the socket buffers are full, which takes the
        # handshake, the request and a few writes after the descriptor opened: 3 s slack.
        slack = 3.0 if meta["bound_name"] == "send_timeout" else 1.0
        ok, detail, med = lifetime_check(lifetimes, bound, slack)
        detail = "from the server's descriptors, deciles " + detail
        if med is not None:
            s["server_did"] = (f"closed {closed} (the server's descriptors) {med:.0f} s after "
                               f"they opened; slowhttptest saw {s['server_did']}")
    elif s["kind"] == "slowhttptest":
        lifetimes = [x for r in a["runs"] for x in r["lifetimes_s"]]
        # slowhttptest's last CSV row can lag its last closes by a second; the server's
        # descriptors count them too.
        closed = max(sum(r["final_closed"] or 0 for r in a["runs"]),
                     server_fd_lifetimes(samples, meta["fd_base"])[1])
        ok, detail, med = lifetime_check(lifetimes, bound, 1.0)
    else:
        lifetimes = a.get("lifetimes_s") or []
        closed = a.get("closed_by_server") or 0
        ok, detail, med = lifetime_check(lifetimes, bound, 0.0)
    if meta.get("cut_from") != "none" and s["kind"] != "h2attack":
        s["cut_median_s"] = med
        check("cut", ok and closed >= held_min,
              f"{meta['bound_name']} {bound} s: {detail}; server closed {closed} "
              f"(need >= {held_min})")

    # cpu: the server's own CPU time over the attack.
    if len(samples) >= 2 and samples[-1][0] > samples[0][0]:
        span = samples[-1][0] - samples[0][0]
        avg = 100.0 * (samples[-1][4] - samples[0][4]) / meta["clk_tck"] / span
        per_s = [100.0 * (b[4] - a_[4]) / meta["clk_tck"] / (b[0] - a_[0])
                 for a_, b in zip(samples, samples[1:]) if b[0] > a_[0]]
        s["cpu_avg_pct"] = round(avg, 1)
        s["cpu_max_pct"] = round(max(per_s), 1)
        check("cpu", avg <= meta["cpu_limit_pct"],
              f"server CPU {avg:.1f} % of a core on average over {span:.0f} s (highest "
              f"1 s sample {max(per_s):.0f} %), limit {meta['cpu_limit_pct']} %")
    else:
        check("cpu", False, f"only {len(samples)} samples of /proc/PID/stat")
    return checks


def table(dirs):
    print("| attack | attacker connections | legit requests | succeeded (200) | success % "
          "| p50 ms | p99 ms | max ms | server vs attackers | cut at (median / bound) "
          "| server fds max | server CPU avg / max 1 s | checks |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|")
    bad = 0
    for d in dirs:
        path = os.path.join(d, "summary.json")
        if not os.path.exists(path):
            name = os.path.basename(d.rstrip("/"))
            print(f"| {name} | (did not run) | 0 | 0 | 0.0 | - | - | - | - | - | - | - "
                  f"| FAIL: did not run |")
            bad += 1
            continue
        with open(path) as f:
            s = json.load(f)
        L = s["legit"]
        med = s.get("cut_median_s")
        bound = next((c["detail"].split(":")[0] for c in s["checks"] if c["name"] == "cut"),
                     "-")
        failed = [c["name"] for c in s["checks"] if not c["ok"]]
        verdict = "FAIL: " + ", ".join(failed) if failed else "all ok"
        print(f"| {s['name']} | {s['attacker_cell']} | {L['made']} | {L['ok']} "
              f"| {L['pct']:.1f} | {fmt_ms(L['p50'])} | {fmt_ms(L['p99'])} "
              f"| {fmt_ms(L['max'])} | {s['server_did']} "
              f"| {'-' if med is None else f'{med:.1f} s'} / {bound} "
              f"| {s.get('server_fds_max', '-')} "
              f"| {s.get('cpu_avg_pct', '-')} % / {s.get('cpu_max_pct', '-')} % | {verdict} |")
        bad += not s["ok"]
    return 1 if bad else 0


def main(argv):
    if len(argv) >= 3 and argv[1] == "attack":
        return attack(argv[2])
    if len(argv) >= 2 and argv[1] == "table":
        return table(argv[2:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
