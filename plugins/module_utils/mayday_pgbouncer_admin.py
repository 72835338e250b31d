# pgbouncer's admin console (psql on loopback) and the pgbouncer reset: PAUSE bounded by a timeout,
# RECONNECT (or a restart when the console does not answer), RESUME that always runs; or KILL and
# RESUME. No AnsibleModule: shipped to the host as ansible.module_utils.mayday_pgbouncer_admin.
from __future__ import annotations

import os
import re
import subprocess
import time

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
SHOWABLE = ("DATABASES", "POOLS", "CLIENTS", "SERVERS", "STATS", "VERSION")
NOT_PAUSED = "is not paused"
# What psql says when nothing (or a wedged process) answers; anything else, a login turned down
# included, is a refusal that a restart would not fix.
DOWN = ("Connection refused", "timeout expired", "server closed the connection", "could not receive data",
        "No such file or directory")


class ConsoleError(Exception):
    """The console did not answer, or refused a command."""


class ConsoleTimeout(ConsoleError):
    """A command (PAUSE) did not finish within its bound."""


def check_name(name):
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConsoleError(f"database name {name!r} is not a plain identifier (letters, digits, _)")
    return name


class Console:
    """The console as `admin_user` on 127.0.0.1:`port`; with `password` (from the inventory) through
    PGPASSWORD, never on a command line; without one, the current trust/peer access."""

    def __init__(self, port=6432, admin_user="postgres", password=None, host="127.0.0.1", connect_timeout=5):
        self.port = str(int(port))
        self.admin_user = admin_user
        self.password = password or None
        self.host = host
        self.connect_timeout = connect_timeout

    def argv(self, command):
        return ["psql", "-X", "-w", "-q", "-A", "-F", "\t", "-P", "footer=off", "-h", self.host, "-p", self.port,
                "-U", self.admin_user, "-d", "pgbouncer", "-c", command]

    def env(self):
        env = dict(os.environ, PGCONNECT_TIMEOUT=str(self.connect_timeout))
        env.pop("PGPASSWORD", None)
        if self.password:
            env["PGPASSWORD"] = self.password
        return env

    def run(self, command, timeout=30.0):
        # coreutils timeout bounds psql on the host itself: if this process is killed mid-way, no
        # psql is left waiting on the console (a PAUSE would wait there for ever).
        argv = ["timeout", "-k", "2", f"{timeout:g}s", *self.argv(command)]
        try:
            out = subprocess.run(argv, env=self.env(), capture_output=True, timeout=timeout + 5, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ConsoleTimeout(f"{command.split()[0]} did not finish within {timeout:g} s") from exc
        if out.returncode in (124, 137):
            raise ConsoleTimeout(f"{command.split()[0]} did not finish within {timeout:g} s")
        if out.returncode != 0:
            raise ConsoleError(f"{command}: {out.stderr.decode(errors='replace').strip()[-300:]}")
        return out.stdout.decode(errors="replace")

    def show(self, what):
        if what.upper() not in SHOWABLE:
            raise ConsoleError(f"SHOW {what!r} is not supported; valid: {', '.join(SHOWABLE)}")
        lines = [line for line in self.run(f"SHOW {what.upper()}", timeout=10).splitlines() if line]
        if not lines:
            return []
        header = lines[0].split("\t")
        return [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:]]

    def status(self):
        """(ok | refused | down, detail). refused: pgbouncer answered but turned the login down (wrong
        password, not an admin user): a restart would not help. down: nothing answered in time."""
        try:
            self.show("VERSION")
            return "ok", ""
        except ConsoleTimeout as exc:
            return "down", str(exc)
        except ConsoleError as exc:
            return ("down" if any(m in str(exc) for m in DOWN) else "refused"), str(exc)

    def answers(self):
        return self.status()[0] == "ok"

    def pause(self, db, timeout):
        self.run(f"PAUSE {check_name(db)}", timeout=timeout)

    def resume(self, db):
        """RESUME; a database that is not paused is fine."""
        try:
            self.run(f"RESUME {check_name(db)}", timeout=10)
        except ConsoleTimeout:
            raise
        except ConsoleError as exc:
            if NOT_PAUSED not in str(exc):
                raise

    def reconnect(self, db):
        self.run(f"RECONNECT {check_name(db)}", timeout=10)

    def kill(self, db):
        self.run(f"KILL {check_name(db)}", timeout=10)

    def resume_argv(self, db):
        """A command for a lease: RESUME `db`, succeeding also when it is not paused (any more)."""
        quoted = " ".join("'" + a.replace("'", "'\"'\"'") + "'" for a in self.argv(f"RESUME {check_name(db)}"))
        return ["/bin/sh", "-c", f'out=$({quoted} 2>&1) || case "$out" in *"{NOT_PAUSED}"*) ;; '
                                 '*) echo "$out" >&2; exit 1 ;; esac']


def now_utc():
    """The timeline's timestamp format (cli/mayday/records.py)."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def _count(rows, key, value):
    return sum(1 for r in rows if r.get(key) == value)


def snapshot(console, db):
    """What the report shows of one database: paused, pool counters, clients and servers by state."""
    state, detail = console.status()
    if state != "ok":
        return {"answers": False, "console": state, "detail": detail}
    databases = {r.get("name"): r for r in console.show("DATABASES")}
    pools = [r for r in console.show("POOLS") if r.get("database") == db]
    clients = [r for r in console.show("CLIENTS") if r.get("database") == db]
    servers = [r for r in console.show("SERVERS") if r.get("database") == db]
    row = databases.get(db) or {}
    return {
        "answers": True,
        "known": bool(row),
        "paused": row.get("paused") == "1",
        "disabled": row.get("disabled") == "1",
        "pool_mode": row.get("pool_mode") or "",
        "pools": [{k: r.get(k) for k in ("user", "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used",
                                         "maxwait", "pool_mode")} for r in pools],
        "clients": {"total": len(clients), "active": _count(clients, "state", "active"),
                    "waiting": _count(clients, "state", "waiting")},
        "servers": {"total": len(servers), "active": _count(servers, "state", "active"),
                    "idle": _count(servers, "state", "idle")},
    }


def holders(console, db):
    """Clients of `db` holding a server connection (linked), i.e. what a PAUSE waits for."""
    rows = [r for r in console.show("CLIENTS") if r.get("database") == db]
    linked = [r for r in rows if r.get("link")]
    return [{k: r.get(k) for k in ("user", "state", "addr", "port", "connect_time", "request_time",
                                   "application_name", "remote_pid")} for r in (linked or [])]


def wait_answers(console, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not console.answers():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def resume_surely(console, db, attempts=5):
    """RESUME, retried: it is the step that must happen. Returns an error text or ''."""
    last = ""
    for attempt in range(attempts):
        try:
            console.resume(db)
            return ""
        except ConsoleError as exc:
            last = str(exc)
            time.sleep(0.5 * (attempt + 1))
    return last


def reset(console, db, mode, timeout, restart, steps):
    """The reset itself. `restart()` restarts the pgbouncer service (when the console is wedged);
    `steps` is a list the steps are appended to ({step, result, duration_s, detail}).

    Returns a dict: done (bool), how (reconnect, restart, kill), dropped (hard), holders (on a pause
    timeout), error. RESUME always runs before returning, also when a step raised."""
    check_name(db)
    out: dict = {"done": False, "how": "", "dropped": 0, "holders": [], "error": ""}

    def step(name, func, *args):
        at, started = now_utc(), time.monotonic()
        try:
            value = func(*args)
            steps.append({"started": at, "step": name, "result": "ok",
                          "duration_s": round(time.monotonic() - started, 3)})
            return value
        except Exception as exc:
            steps.append({"started": at, "step": name, "result": "failed",
                          "duration_s": round(time.monotonic() - started, 3), "detail": str(exc)})
            raise

    try:
        state, detail = console.status()
        if state == "refused":  # a restart would not fix a login the console turns down
            raise ConsoleError(f"pgbouncer refused the admin login: {detail}")
        if state == "down":
            step("restart pgbouncer (console does not answer)", restart)
            if not wait_answers(console):
                raise ConsoleError("pgbouncer does not answer its console after a restart")
            out.update(done=True, how="restart")
        elif mode == "hard":
            before = [r for r in console.show("CLIENTS") if r.get("database") == db]
            step(f"KILL {db}", console.kill, db)
            out.update(done=True, how="kill", dropped=len(before))
        else:
            try:
                step(f"PAUSE {db} (at most {timeout:g} s)", console.pause, db, timeout)
            except ConsoleTimeout:
                out["holders"] = holders(console, db)
                raise
            step(f"RECONNECT {db}", console.reconnect, db)
            out.update(done=True, how="reconnect")
    except ConsoleTimeout as exc:
        out["error"] = f"pause timed out after {timeout:g} s: {len(out['holders'])} clients held it ({exc})"
    except ConsoleError as exc:
        out["error"] = str(exc)
    finally:
        at, started = now_utc(), time.monotonic()
        problem = resume_surely(console, db)
        steps.append({"started": at, "step": f"RESUME {db}", "result": "failed" if problem else "ok",
                      "duration_s": round(time.monotonic() - started, 3), **({"detail": problem} if problem else {})})
        if problem:
            out["done"] = False
            out["error"] = (out["error"] + "; " if out["error"] else "") + f"RESUME failed: {problem}"
    return out
