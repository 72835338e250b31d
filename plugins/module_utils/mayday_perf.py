# Performance recovery on a web host: latency samples of the health endpoints, php-fpm's status page
# (asked over FastCGI on the pool's socket: no web server route needed), the app cache directory
# emptied without following symlinks, a graceful php-fpm reload (which also empties opcache), and
# the verdict against the latency threshold. Pure helpers are unit-tested (tests/unit/test_perf.py).
from __future__ import annotations

import os
import socket
import stat
import statistics
import struct
import subprocess
import time

try:
    from ansible.module_utils.mayday_http import probe_once
except ImportError:  # unit tests import module_utils directly
    from mayday_http import probe_once  # type: ignore[no-redef]

FCGI_BEGIN, FCGI_END, FCGI_PARAMS, FCGI_STDIN, FCGI_STDOUT, FCGI_STDERR = 1, 3, 4, 5, 6, 7


# --- latency -------------------------------------------------------------------------------------
def sample_latency(checks, samples, pause=0.05):
    """Each health endpoint probed `samples` times in a row; median and worst per endpoint.

    A probe that fails (timeout, wrong status) counts with the time it took: a timeout is slow.
    """
    out = []
    for check in checks:
        probes = []
        for n in range(max(1, samples)):
            if n:
                time.sleep(pause)
            probes.append(probe_once(dict(check, max_latency_ms=None)))
        latencies = [p["latency_ms"] for p in probes]
        out.append({"url": check["url"], "median_ms": round(statistics.median(latencies), 1),
                    "max_ms": max(latencies), "samples_ms": latencies,
                    "statuses": [p["status"] for p in probes],
                    "ok": all(p["ok"] for p in probes), "problems": sorted({x for p in probes for x in p["problems"]})})
    return out


def slowest(latency):
    """The worst endpoint median, the figure judged against the threshold (0 with no endpoint)."""
    return max((e["median_ms"] for e in latency), default=0.0)


def verdict(before, after, threshold_ms):
    """{recovered, still_slow, before_ms, after_ms}: recovered when every endpoint's median is under the threshold."""
    before_ms, after_ms = slowest(before), slowest(after)
    healthy = all(e.get("ok") for e in after)
    still_slow = after_ms > threshold_ms
    return {"before_ms": before_ms, "after_ms": after_ms, "threshold_ms": threshold_ms,
            "still_slow": still_slow, "healthy": healthy, "recovered": healthy and not still_slow}


# --- FastCGI: php-fpm's status page ----------------------------------------------------------------
def _record(kind, content, request_id=1):
    return struct.pack("!BBHHBx", 1, kind, request_id, len(content), 0) + content


def _pair(name, value):
    def size(n):
        return struct.pack("!B", n) if n < 128 else struct.pack("!I", n | 0x80000000)

    name_b, value_b = name.encode(), value.encode()
    return size(len(name_b)) + size(len(value_b)) + name_b + value_b


def fcgi_request(params):
    """The bytes of one FastCGI GET request with these params (no body)."""
    body = b"".join(_pair(k, v) for k, v in params.items())
    return (_record(FCGI_BEGIN, struct.pack("!HB5x", 1, 0)) + _record(FCGI_PARAMS, body)
            + _record(FCGI_PARAMS, b"") + _record(FCGI_STDIN, b""))


def fcgi_parse(data):
    """(stdout, stderr, complete) from the records of one response."""
    out, err, pos, done = b"", b"", 0, False
    while pos + 8 <= len(data):
        _, kind, _, length, padding = struct.unpack("!BBHHB", data[pos:pos + 7])
        content = data[pos + 8:pos + 8 + length]
        if len(content) < length:
            break
        pos += 8 + length + padding
        if kind == FCGI_STDOUT:
            out += content
        elif kind == FCGI_STDERR:
            err += content
        elif kind == FCGI_END:
            done = True
            break
    return out, err, done


def fpm_status(sock_path, status_path="/status", timeout=3.0):
    """php-fpm's status page as JSON (pm.status_path must be set on the pool); {"error": ...} when not."""
    import json

    params = {"SCRIPT_NAME": status_path, "SCRIPT_FILENAME": status_path, "REQUEST_URI": status_path,
              "QUERY_STRING": "json", "REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "HTTP/1.1",
              "GATEWAY_INTERFACE": "CGI/1.1", "REMOTE_ADDR": "127.0.0.1"}
    data = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(sock_path)
            conn.sendall(fcgi_request(params))
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
                if fcgi_parse(data)[2]:
                    break
    except OSError as exc:
        return {"error": f"php-fpm socket {sock_path}: {exc}"}
    out, _, _ = fcgi_parse(data)
    head, _, body = out.partition(b"\r\n\r\n")
    try:
        doc = json.loads(body.decode(errors="replace"))
    except ValueError:
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        return {"error": f"no status page at {status_path} (pm.status_path not set on the pool?): {status}"}
    keep = ("pool", "process manager", "start since", "accepted conn", "listen queue", "max listen queue",
            "idle processes", "active processes", "total processes", "max active processes", "max children reached",
            "slow requests")
    return {k.replace(" ", "_"): doc[k] for k in keep if k in doc}


# --- the app cache directory -------------------------------------------------------------------------
def clear_dir(path, delete=True):
    """Remove everything inside `path`, not `path` itself; never follows a symlink.

    The directory is opened with O_NOFOLLOW and walked by file descriptor, so a symlink at the path
    or inside it is refused or removed as a link, never followed. Returns {entries, bytes, removed}.
    """
    import shutil

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        entries, size, removed = 0, 0, 0
        with os.scandir(fd) as items:
            names = [(e.name, e.is_dir(follow_symlinks=False)) for e in items]
        for name, is_dir in names:
            entries += 1
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                size += st.st_size if stat.S_ISREG(st.st_mode) else 0
            except FileNotFoundError:
                continue  # the app removed it meanwhile
            if not delete:
                continue
            try:
                if is_dir:
                    shutil.rmtree(name, dir_fd=fd)  # fd-based walk on Linux: symlink-attack safe
                else:
                    os.unlink(name, dir_fd=fd)
                removed += 1
            except FileNotFoundError:
                continue
        return {"path": path, "entries": entries, "bytes": size, "removed": removed}
    finally:
        os.close(fd)


# --- php-fpm -------------------------------------------------------------------------------------------
def main_pid(service):
    out = subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", service], capture_output=True, text=True,
                         check=False, timeout=15)
    return int(out.stdout.strip() or 0)


def reload_fpm(service, sock_path, status_path, timeout=30.0):
    """`systemctl reload` (SIGUSR2: workers finish their requests, the master re-executes in place,
    the listening socket stays open so requests queue instead of failing; opcache starts empty).
    Waits until the pool answers again. Returns {pid_before, pid_after, seconds, answers}."""
    before = main_pid(service)
    started = time.monotonic()
    out = subprocess.run(["systemctl", "reload", service], capture_output=True, text=True, check=False, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"systemctl reload {service}: {(out.stderr or out.stdout).strip()}")
    answers = False
    start_since = None
    while time.monotonic() - started < timeout:
        doc = fpm_status(sock_path, status_path)
        # A fresh master restarts its "start since" counter: the reload is done when it is low.
        if "error" not in doc:
            start_since = doc.get("start_since")
            if start_since is not None and start_since <= time.monotonic() - started + 1:
                answers = True
                break
        elif "no status page" in doc["error"] and os.path.exists(sock_path):
            answers = True  # no status page to tell: the socket is back
            break
        time.sleep(0.1)
    return {"pid_before": before, "pid_after": main_pid(service), "seconds": round(time.monotonic() - started, 3),
            "answers": answers}


# --- top queries on a database host ---------------------------------------------------------------------
MARIADB_TOP = ("SELECT ID, USER, DB, COMMAND, TIME, STATE, LEFT(REPLACE(INFO, '\\n', ' '), 200) "
               "FROM information_schema.PROCESSLIST WHERE COMMAND <> 'Sleep' AND ID <> CONNECTION_ID() "
               "ORDER BY TIME DESC LIMIT {limit}")
PG_HAS_STATEMENTS = "SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'"
PG_STATEMENTS = ("SELECT calls, round(total_exec_time::numeric, 1), round(mean_exec_time::numeric, 2), "
                 "left(regexp_replace(query, '\\s+', ' ', 'g'), 200) FROM pg_stat_statements "
                 "ORDER BY total_exec_time DESC LIMIT {limit}")
PG_ACTIVITY = ("SELECT pid, usename, datname, state, coalesce(extract(epoch FROM now() - query_start)::int, 0), "
               "left(regexp_replace(query, '\\s+', ' ', 'g'), 200) FROM pg_stat_activity "
               "WHERE state IS NOT NULL AND state <> 'idle' AND pid <> pg_backend_pid() "
               "ORDER BY query_start LIMIT {limit}")
COLUMNS = {
    "processlist": ("id", "user", "db", "command", "time_s", "state", "query"),
    "pg_stat_statements": ("calls", "total_ms", "mean_ms", "query"),
    "pg_stat_activity": ("pid", "user", "db", "state", "running_s", "query"),
}


def rows(text, columns):
    return [dict(zip(columns, line.split("\t"), strict=False)) for line in text.splitlines() if line.strip()]


def top_queries(engine, limit=10):
    """The busiest queries on this database host, read with the engine's own client as its admin."""
    def run(argv):
        out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(out.stderr.strip()[:300] or f"{argv[0]} failed")
        return out.stdout

    if engine == "mariadb":
        text = run(["mariadb", "--batch", "--skip-column-names", "-e", MARIADB_TOP.format(limit=int(limit))])
        return {"source": "processlist", "rows": rows(text, COLUMNS["processlist"])}
    psql = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t", "-F", "\t", "-d", "postgres", "-c"]
    source = "pg_stat_statements" if run([*psql, PG_HAS_STATEMENTS]).strip() not in ("", "0") else "pg_stat_activity"
    query = (PG_STATEMENTS if source == "pg_stat_statements" else PG_ACTIVITY).format(limit=int(limit))
    return {"source": source, "rows": rows(run([*psql, query]), COLUMNS[source])}
