# Drill faults: the faults mayday injects on purpose, each with inject, verify-injected and remove.
#
# A fault's state (what it changed and what it saved first) is written to
# /var/lib/mayday/drill-faults/<id>.json (0600) before anything changes. The fault is held by a
# lease (mayday_lease) whose revert runs this same file, installed as
# /usr/local/lib/mayday/mayday_fault.py, with `remove <id>`: the host removes the fault on its own
# when the controller dies mid-drill. Removal is idempotent and checks the fault is gone.
#
# No AnsibleModule and only the standard library: run on the host by systemd as a plain script.
from __future__ import annotations

import base64
import contextlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

STATE_DIR = "/var/lib/mayday/drill-faults"
HELPER = "/usr/local/lib/mayday/mayday_fault.py"
PYTHON = "/usr/bin/python3"
FAULT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
NFT_TABLE = "mayday_drill_{}"
CMD_TIMEOUT_S = 30


class FaultError(Exception):
    """A fault that cannot be injected, verified or removed."""


def sh(argv, check=True, timeout=CMD_TIMEOUT_S, env=None, stdin=None):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=env,
                             input=stdin)
    except subprocess.TimeoutExpired:
        raise FaultError(f"{' '.join(argv)} did not finish within {timeout} s") from None
    if check and out.returncode != 0:
        raise FaultError(f"{' '.join(argv)} failed: {(out.stderr or out.stdout).strip()[-300:]}")
    return out


def atomic_write(path, data, mode=0o644, uid=None, gid=None):
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".mayday-drill-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        if uid is not None:
            os.chown(tmp, uid, gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_bytes(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


# -- the faults -----------------------------------------------------------------------------------
class BrokenRelease:
    """A copy of the live release with one file broken, deployed (history line, symlink flip, reload)."""

    def inject(self, fid, p):
        root = p.get("root", "/var/www/app")
        link = os.path.join(root, p.get("current_link", "current"))
        releases = os.path.join(root, p.get("releases_dir", "releases"))
        previous = os.path.basename(os.readlink(link).rstrip("/"))
        release = f"drill-{fid}"
        target = os.path.join(releases, release)
        state = {"root": root, "link": link, "releases": releases, "previous": previous, "release": release,
                 "reload": p.get("reload", [])}
        save_state(fid, {"type": "broken_release", "state": state}, merge=True)
        shutil.copytree(os.path.join(releases, previous), target, symlinks=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(target, ".mayday-failed"))
        for edit in p.get("break", []):
            path = os.path.join(target, edit["file"])
            text = read_bytes(path).decode()
            if edit["find"] not in text:
                raise FaultError(f"{edit['file']} of release {previous} does not contain {edit['find']!r}")
            atomic_write(path, text.replace(edit["find"], edit["replace"]).encode())
        history = os.path.join(root, ".mayday-deploy-history")
        with open(history, "a", encoding="utf-8") as handle:
            handle.write(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + f"\t{release}\n")
        flip(link, os.path.relpath(target, root) if not os.path.isabs(os.readlink(link)) else target)
        for service in state["reload"]:
            sh(["systemctl", "reload", service])
        return state

    @staticmethod
    def live(s):
        return os.path.basename(os.readlink(s["link"]).rstrip("/"))

    def injected(self, s):
        return self.live(s) == s["release"]

    @staticmethod
    def deployed_during(s):
        """The last release deployed after the drill's own history line: a person's deploy on staging
        while the drill held its lease, which the drill's removal must not undo. None when there is none."""
        text = read_bytes(os.path.join(s["root"], ".mayday-deploy-history"))
        names = [line.split("\t")[-1] for line in (text or b"").decode().splitlines() if line.strip()]
        if s["release"] not in names:
            return None
        after = [name for name in names[names.index(s["release"]) + 1:] if name != s["release"]]
        return after[-1] if after else None

    def remove(self, s):
        if "deployed_during" not in s:
            # Decided once, before the history loses the drill's line, and kept for a retried removal.
            s["deployed_during"] = self.deployed_during(s)
            save_state(s["release"][len("drill-"):], {"state": s}, merge=True)
        live = self.live(s)
        # Also when a failed recovery left another release live: the drill leaves the release it found,
        # unless someone deployed since, whose release stays.
        if live == s["release"] or (live != s["previous"] and not s["deployed_during"]):
            back = os.path.join(s["releases"], s["previous"])
            if not os.path.isdir(back):
                raise FaultError(f"release {s['previous']} the drill replaced is gone: cannot switch back")
            flip(s["link"], back if os.path.isabs(os.readlink(s["link"])) else os.path.relpath(back, s["root"]))
            for service in s["reload"]:
                sh(["systemctl", "reload", service])
        shutil.rmtree(os.path.join(s["releases"], s["release"]), ignore_errors=True)
        history = os.path.join(s["root"], ".mayday-deploy-history")
        text = read_bytes(history)
        if text is not None:
            kept = [line for line in text.decode().splitlines(True)
                    if line.rstrip("\n").split("\t")[-1] != s["release"]]
            st = os.stat(history)
            atomic_write(history, "".join(kept).encode(), st.st_mode & 0o7777, st.st_uid, st.st_gid)

    def removed(self, s):
        live = self.live(s)
        in_place = live == s["release"] or os.path.exists(os.path.join(s["releases"], s["release"]))
        return not in_place and (live == s["previous"] or bool(s.get("deployed_during")))


def flip(link, target):
    tmp = f"{link}.mayday-drill-tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def service_active(name):
    return sh(["systemctl", "is-active", name], check=False).stdout.strip() == "active"


class StopService:
    def inject(self, fid, p):
        sh(["systemctl", "stop", p["service"]])
        return {"service": p["service"]}

    def injected(self, s):
        return not service_active(s["service"])

    def remove(self, s):
        if not service_active(s["service"]):
            sh(["systemctl", "start", s["service"]])

    def removed(self, s):
        return service_active(s["service"])


class KillService(StopService):
    """SIGKILL to the main process: systemd may restart it (Restart=), which is the point of the drill."""

    def inject(self, fid, p):
        pid = sh(["systemctl", "show", "-p", "MainPID", "--value", p["service"]]).stdout.strip()
        sh(["systemctl", "kill", "-s", "KILL", "--kill-whom=main", p["service"]])
        return {"service": p["service"], "pid": pid}

    def injected(self, s):
        now = sh(["systemctl", "show", "-p", "MainPID", "--value", s["service"]], check=False).stdout.strip()
        return now != s["pid"] or not service_active(s["service"])


class BreakFile:
    """A configuration or asset file replaced (or deleted); the original saved first, byte for byte."""

    def inject(self, fid, p):
        path = p["path"]
        original = read_bytes(path)
        st = os.stat(path) if original is not None else None
        broken = None if p.get("delete") else str(p.get("content", "")).encode()
        state = {"path": path, "original": base64.b64encode(original).decode() if original is not None else None,
                 "mode": st.st_mode & 0o7777 if st else 0o644, "uid": st.st_uid if st else 0,
                 "gid": st.st_gid if st else 0,
                 "broken": base64.b64encode(broken).decode() if broken is not None else None}
        save_state(fid, {"type": "break_file", "state": state}, merge=True)
        if broken is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        else:
            atomic_write(path, broken, state["mode"], state["uid"], state["gid"])
        return state

    def _broken(self, s):
        return base64.b64decode(s["broken"]) if s["broken"] is not None else None

    def injected(self, s):
        return read_bytes(s["path"]) == self._broken(s)

    def remove(self, s):
        # Only the drill's own content is undone: a file the scenario already put back is left alone.
        if self.injected(s) and s["original"] is not None:
            atomic_write(s["path"], base64.b64decode(s["original"]), s["mode"], s["uid"], s["gid"])

    def removed(self, s):
        return not self.injected(s)


class FillDisk:
    """A file filling the file system of `path` to `level_pct`, never more than `max_bytes`."""

    def inject(self, fid, p):
        path = os.path.join(p["path"], f".mayday-drill-fill-{fid}")
        vfs = os.statvfs(p["path"])
        total, free = vfs.f_blocks * vfs.f_frsize, vfs.f_bavail * vfs.f_frsize
        need = int(total * float(p["level_pct"]) / 100) - (total - free)
        if need > int(p.get("max_bytes", 1 << 30)):
            raise FaultError(f"filling {p['path']} to {p['level_pct']} % needs {need} bytes, over max_bytes")
        state = {"file": path, "bytes": max(need, 0), "level_pct": p["level_pct"], "dir": p["path"]}
        save_state(fid, {"type": "fill_disk", "state": state}, merge=True)
        if need > 0:
            sh(["fallocate", "-l", str(need), path])
        return state

    def injected(self, s):
        return s["bytes"] == 0 or os.path.exists(s["file"])

    def remove(self, s):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(s["file"])

    def removed(self, s):
        return not os.path.exists(s["file"])


class HoldLongQuery:
    """A session running a long sleep as the application's role, tagged with the drill's id."""

    def inject(self, fid, p):
        engine, tag, seconds = p["engine"], f"mayday-drill-{fid}", int(p.get("seconds", 600))
        unit = f"mayday-drill-{fid}-query"
        env_file = os.path.join(STATE_DIR, f"{fid}.env")
        if engine == "postgresql":
            env = {"PGPASSWORD": p.get("password", ""), "PGAPPNAME": tag}
            argv = ["psql", "-X", "-h", p.get("host", "127.0.0.1"), "-p", str(p.get("port", 5432)), "-U", p["user"],
                    "-d", p["database"], "-c", f"SELECT pg_sleep({seconds}) /* {tag} */"]
        else:
            env = {"MYSQL_PWD": p.get("password", "")}
            argv = ["mariadb", "-h", p.get("host", "127.0.0.1"), "-P", str(p.get("port", 3306)), "-u", p["user"],
                    p["database"], "-e", f"SELECT SLEEP({seconds}) /* {tag} */"]
        os.makedirs(STATE_DIR, mode=0o700, exist_ok=True)
        atomic_write(env_file, "".join(f"{k}={v}\n" for k, v in env.items()).encode(), 0o600)
        state = {"engine": engine, "unit": unit, "tag": tag, "env_file": env_file}
        save_state(fid, {"type": "hold_long_query", "state": state}, merge=True)
        sh(["systemd-run", "--unit", unit, "-p", f"EnvironmentFile={env_file}", "--collect", *argv])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not self._sessions(state):
            time.sleep(0.2)
        return state

    def _sessions(self, s):
        if s["engine"] == "postgresql":
            sql = f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{s['tag']}'"
            out = sh(["runuser", "-u", "postgres", "--", "psql", "-XAtqc", sql], check=False)
        else:
            sql = f"SELECT count(*) FROM information_schema.processlist WHERE info LIKE '%/* {s['tag']} */%'"
            out = sh(["mariadb", "-N", "-B", "-e", sql], check=False)
        # Anything unreadable counts as "still there": removal must prove the session is gone.
        return int(out.stdout.strip()) - (0 if s["engine"] == "postgresql" else 1) if out.returncode == 0 else 1

    def injected(self, s):
        return self._sessions(s) > 0

    def remove(self, s):
        sh(["systemctl", "stop", s["unit"]], check=False)
        if s["engine"] == "postgresql":
            sql = f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{s['tag']}'"
            sh(["runuser", "-u", "postgres", "--", "psql", "-XAtqc", sql], check=False)
        else:
            sql = (f"SELECT id FROM information_schema.processlist WHERE info LIKE '%/* {s['tag']} */%' "
                   "AND id <> CONNECTION_ID()")
            for pid in sh(["mariadb", "-N", "-B", "-e", sql], check=False).stdout.split():
                sh(["mariadb", "-e", f"KILL {int(pid)}"], check=False)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self._sessions(s) > 0:
            time.sleep(0.2)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(s["env_file"])

    def removed(self, s):
        return self._sessions(s) == 0 and not service_active(s["unit"])


class BlockPort:
    """An inet nftables table of the drill's own dropping new TCP connections to a port."""

    def inject(self, fid, p):
        table = NFT_TABLE.format(fid.replace("-", "_"))
        state = {"table": table, "port": int(p["port"])}
        save_state(fid, {"type": "block_port", "state": state}, merge=True)
        rules = (f"table inet {table} {{\n chain input {{\n  type filter hook input priority -5; policy accept;\n"
                 f"  tcp dport {int(p['port'])} {'iif != lo ' if not p.get('loopback') else ''}drop\n }}\n}}\n")
        with tempfile.NamedTemporaryFile("w", suffix=".nft", delete=False) as handle:
            handle.write(rules)
        try:
            sh(["nft", "-f", handle.name])
        finally:
            os.unlink(handle.name)
        return state

    def injected(self, s):
        return sh(["nft", "list", "table", "inet", s["table"]], check=False).returncode == 0

    def remove(self, s):
        if self.injected(s):
            sh(["nft", "delete", "table", "inet", s["table"]])

    def removed(self, s):
        return not self.injected(s)


IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
SAFE_VALUE = re.compile(r"^[A-Za-z0-9 _.:,{}\"/@+=-]{0,200}$")


def sql_client(engine, database):
    """argv of the engine's client as its superuser on this host, reading one statement after it."""
    if engine == "postgresql":
        return ["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", database, "-c"]
    return ["mariadb", "-N", "-B", database, "-e"]


class InsertRows:
    """Rows a bad client or a replayed webhook would add (a storm), tagged in one column with the
    drill's id so the removal deletes exactly them, whatever else was written meanwhile."""

    def inject(self, fid, p):
        table, tag_column = p["table"], p["tag_column"]
        values = {str(k): str(v) for k, v in (p.get("values") or {}).items()}
        for name in (table, tag_column, *values):
            if not IDENT.match(name):
                raise FaultError(f"{name!r} is not a plain identifier; valid: letters, digits and _")
        for value in values.values():
            if not SAFE_VALUE.match(value):
                raise FaultError(f"value {value!r} has characters outside letters, digits and {{}}\":,./@+=-")
        tag = f"mayday-drill-{fid}"
        count = int(p.get("rows", 100))
        if not 1 <= count <= 10000:
            raise FaultError(f"rows {count} out of range; valid: 1..10000")
        state = {"engine": p["engine"], "database": p["database"], "table": table, "tag_column": tag_column,
                 "tag": tag, "rows": count}
        save_state(fid, {"type": "insert_rows", "state": state}, merge=True)
        columns = [tag_column, *values]
        row = "(" + ", ".join(f"'{v}'" for v in [tag, *values.values()]) + ")"
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ", ".join([row] * count)
        sh([*sql_client(p["engine"], p["database"]), sql])
        return state

    def _count(self, s):
        out = sh([*sql_client(s["engine"], s["database"]),
                  f"SELECT count(*) FROM {s['table']} WHERE {s['tag_column']} = '{s['tag']}'"], check=False)
        return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip().isdigit() else -1

    def injected(self, s):
        return self._count(s) == s["rows"]

    def remove(self, s):
        sh([*sql_client(s["engine"], s["database"]),
            f"DELETE FROM {s['table']} WHERE {s['tag_column']} = '{s['tag']}'"])

    def removed(self, s):
        return self._count(s) == 0


# -- rows dropped or corrupted: saved first, put back row for row ---------------------------------
MAX_ROWS = 100000
SAVED_TABLE = "mayday_drill_saved"
DUMP_PREFIX = "INSERT INTO `{}` VALUES "


def quote_ident(engine, name):
    if not isinstance(name, str) or not IDENT.match(name):
        raise FaultError(f"{name!r} is not a plain identifier; valid: letters, digits and _")
    return f'"{name}"' if engine == "postgresql" else f"`{name}`"


def quote_value(value):
    """A corrupt value as a SQL literal: NULL, true/false, a number, or text without quotes to escape."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    if not SAFE_VALUE.match(str(value)):
        raise FaultError(f"value {value!r} has characters outside letters, digits and {{}}\":,./@+=-")
    return f"'{value}'"


def row_count_param(value):
    """rows: a count (1..MAX_ROWS) or "all" (every row, refused over MAX_ROWS)."""
    if value == "all":
        return "all"
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if not 1 <= count <= MAX_ROWS:
        raise FaultError(f"rows {value!r} out of range; valid: 1..{MAX_ROWS} or all")
    return count


def same_row(engine, columns):
    """t and s hold the same row: every column equal, NULLs included (text compared: json has no =)."""
    if engine == "postgresql":
        return " AND ".join(f"t.{c}::text IS NOT DISTINCT FROM s.{c}::text" for c in columns)
    return " AND ".join(f"t.{c} <=> s.{c}" for c in columns)


def rows_script(s, action):
    """The SQL run on the host for one step of a rows fault: the saved rows loaded into a temporary
    table, then `action`: drop, corrupt, restore (only the rows not back as they were) or check (how
    many saved rows have no identical row in the table). Pure text: unit-tested."""
    engine = s["engine"]
    table, key = quote_ident(engine, s["table"]), quote_ident(engine, s["key"])
    columns = [quote_ident(engine, c) for c in s["columns"]]
    saved = base64.b64decode(s["saved"]).decode()
    missing = f"SELECT count(*) FROM {SAVED_TABLE} s WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE " \
              f"{same_row(engine, columns)});"
    pg = engine == "postgresql"
    if pg:
        load = f"BEGIN;\nCREATE TEMP TABLE {SAVED_TABLE} (LIKE {table}) ON COMMIT DROP;\n" \
               f"COPY {SAVED_TABLE} FROM STDIN;\n{saved}\\.\n"
        delete = f"DELETE FROM {table} t USING {SAVED_TABLE} s WHERE t.{key} = s.{key};"
        assign = ", ".join(f"{quote_ident(engine, c)} = {quote_value(v)}" for c, v in s.get("set", {}).items())
        corrupt = f"UPDATE {table} t SET {assign} FROM {SAVED_TABLE} s WHERE t.{key} = s.{key};"
        end = "COMMIT;\n"
    else:
        rows = [DUMP_PREFIX.format(SAVED_TABLE) + line[len(DUMP_PREFIX.format(s["table"])):]
                for line in saved.splitlines() if line.startswith(DUMP_PREFIX.format(s["table"]))]
        load = "SET time_zone = '+00:00';\nSTART TRANSACTION;\n" \
               f"CREATE TEMPORARY TABLE {SAVED_TABLE} LIKE {table};\n" + "\n".join(rows) + "\n"
        delete = f"DELETE t FROM {table} t JOIN {SAVED_TABLE} s ON t.{key} = s.{key};"
        assign = ", ".join(f"t.{quote_ident(engine, c)} = {quote_value(v)}" for c, v in s.get("set", {}).items())
        corrupt = f"UPDATE {table} t JOIN {SAVED_TABLE} s ON t.{key} = s.{key} SET {assign};"
        end = f"COMMIT;\nDROP TEMPORARY TABLE {SAVED_TABLE};\n"
    # Restore: forget the rows already back as they were (the scenario put them back), then put the
    # others back whole: gone ones inserted, changed ones replaced.
    forget = (f"DELETE FROM {SAVED_TABLE} s WHERE EXISTS (SELECT 1 FROM {table} t WHERE "
              f"{same_row(engine, columns)});") if pg else \
        (f"DELETE s FROM {SAVED_TABLE} s WHERE EXISTS (SELECT 1 FROM {table} t WHERE "
         f"{same_row(engine, columns)});")
    steps = {"check": missing, "drop": delete, "corrupt": corrupt,
             "restore": f"{forget}\n{delete}\nINSERT INTO {table} SELECT * FROM {SAVED_TABLE};"}
    return load + steps[action] + "\n" + end


def run_sql(engine, database, script, check=True):
    """A script fed to the engine's client as its superuser (stdin: no size limit, nothing in argv)."""
    if engine == "postgresql":
        argv = ["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", database, "-f", "-"]
    else:
        argv = ["mariadb", "-N", "-B", database]
    return sh(argv, check=check, stdin=script, timeout=120)


class DamageRows:
    """Rows of an app table dropped (a DELETE without its WHERE) or corrupted (a bad UPDATE). The rows
    are dumped first (PostgreSQL COPY, mariadb-dump) into the fault's state; removal puts back exactly
    the saved rows that are not as they were, and proves every saved row is back, column for column."""

    action = "drop"

    def inject(self, fid, p):
        engine = p["engine"]
        if engine not in ("postgresql", "mariadb"):
            raise FaultError(f"engine {engine!r} unknown; valid: postgresql, mariadb")
        table, key = quote_ident(engine, p["table"]), quote_ident(engine, p.get("key", "id"))
        count = row_count_param(p.get("rows", 100))
        limit = MAX_ROWS + 1 if count == "all" else count
        values = dict(p.get("set") or {})
        if self.action == "corrupt" and not values:
            raise FaultError("corrupt_rows needs set: {column: value} (the corrupt values)")
        if p.get("key", "id") in values:
            raise FaultError(f"set must not change the key column {p.get('key', 'id')!r}: rows are matched by it")
        for column, value in values.items():
            quote_ident(engine, column)
            quote_value(value)
        columns = self._columns(engine, p["database"], p["table"])
        if p.get("key", "id") not in columns or any(c not in columns for c in values):
            raise FaultError(f"table {p['table']} has columns {', '.join(columns) or 'none (no such table)'}; "
                             f"key and set must name them")
        if self._referenced(engine, p["database"], p["table"]):
            raise FaultError(f"rows of {p['table']} are referenced by foreign keys: dropping or putting them back "
                             "would cascade or fail; valid: a table no foreign key references")
        # Only rows the corruption changes: a row already holding the value would not "take".
        differs = " OR ".join(
            (f"{quote_ident(engine, c)}::text IS DISTINCT FROM CAST({quote_value(v)} AS text)" if engine == "postgresql"
             else f"NOT ({quote_ident(engine, c)} <=> {quote_value(v)})") for c, v in values.items()) or "TRUE"
        saved, rows = self._dump(engine, p["database"], p["table"], table, key, differs, limit)
        if rows == 0:
            raise FaultError(f"table {p['table']} has no row to {self.action}")
        if count == "all" and rows > MAX_ROWS:
            raise FaultError(f"table {p['table']} has over {MAX_ROWS} rows; valid: rows 1..{MAX_ROWS}")
        state = {"engine": engine, "database": p["database"], "table": p["table"], "key": p.get("key", "id"),
                 "columns": columns, "set": values, "rows": rows, "action": self.action,
                 "saved": base64.b64encode(saved.encode()).decode()}
        save_state(fid, {"type": f"{self.action}_rows", "state": state}, merge=True)  # saved before the damage
        run_sql(engine, p["database"], rows_script(state, self.action))
        return {k: v for k, v in state.items()}

    def _columns(self, engine, database, table):
        if engine == "postgresql":
            sql = ("SELECT string_agg(column_name::text, ',' ORDER BY ordinal_position) "
                   f"FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = '{table}';")
        else:
            sql = ("SELECT GROUP_CONCAT(column_name ORDER BY ordinal_position) FROM information_schema.columns "
                   f"WHERE table_schema = DATABASE() AND table_name = '{table}';")
        out = run_sql(engine, database, sql).stdout.strip()
        return [c for c in out.split(",") if c and c != "NULL"]

    def _referenced(self, engine, database, table):
        if engine == "postgresql":
            sql = (f"SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND "
                   f"confrelid = to_regclass('{quote_ident(engine, table)}');")
        else:
            sql = ("SELECT count(*) FROM information_schema.referential_constraints WHERE "
                   f"constraint_schema = DATABASE() AND referenced_table_name = '{table}';")
        return run_sql(engine, database, sql).stdout.strip() not in ("0", "")

    def _dump(self, engine, database, name, table, key, differs, limit):
        if engine == "postgresql":
            sql = f"COPY (SELECT * FROM {table} WHERE {differs} ORDER BY {key} LIMIT {limit}) TO STDOUT"
            out = sh(["runuser", "-u", "postgres", "--", "psql", "-Xq", "-v", "ON_ERROR_STOP=1", "-d", database,
                      "-c", sql], timeout=120).stdout
            return out, len(out.splitlines())
        # One INSERT per row, binary as hex, TIMESTAMPs in UTC (the restore script sets UTC too).
        out = sh(["mariadb-dump", "--no-create-info", "--skip-triggers", "--compact", "--skip-extended-insert",
                  "--hex-blob", "--single-transaction", "--tz-utc", f"--where={differs} ORDER BY {key} LIMIT {limit}",
                  database, name], timeout=120).stdout
        return out, sum(1 for line in out.splitlines() if line.startswith(DUMP_PREFIX.format(name)))

    def _missing(self, s):
        out = run_sql(s["engine"], s["database"], rows_script(s, "check"), check=False)
        value = out.stdout.strip().splitlines()[-1:] if out.returncode == 0 else []
        return int(value[0]) if value and value[0].isdigit() else -1

    def injected(self, s):
        return self._missing(s) == s["rows"]

    def remove(self, s):
        if self._missing(s) != 0:
            run_sql(s["engine"], s["database"], rows_script(s, "restore"))

    def removed(self, s):
        return self._missing(s) == 0


class DropRows(DamageRows):
    action = "drop"


class CorruptRows(DamageRows):
    action = "corrupt"


# -- connections held open as the app's role, up to the limit -------------------------------------
MAX_SESSIONS = 1000


def session_limit_sql(engine, user):
    """Free connections for `user`: the server's limit minus the reserved ones and those in use, and
    the role's own limit (PostgreSQL rolconnlimit, MariaDB max_user_connections) minus its sessions."""
    quote_ident(engine, user)
    if engine == "postgresql":
        return ("SELECT least(current_setting('max_connections')::int "
                "- current_setting('superuser_reserved_connections')::int "
                "- coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0) "
                "- (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), "
                "CASE WHEN r.rolconnlimit >= 0 THEN r.rolconnlimit - (SELECT count(*) FROM pg_stat_activity "
                "WHERE usename = r.rolname) ELSE 2147483647 END) "
                f"FROM pg_roles r WHERE r.rolname = '{user}';")
    return ("SELECT LEAST(@@global.max_connections - (SELECT count(*) FROM information_schema.processlist "
            "WHERE command <> 'Daemon'), "
            "IF(@@global.max_user_connections > 0, @@global.max_user_connections - (SELECT count(*) FROM "
            f"information_schema.processlist WHERE user = '{user}'), 2147483647), "
            "IF(max(u.max_user_connections) > 0, max(u.max_user_connections) - (SELECT count(*) FROM "
            f"information_schema.processlist WHERE user = '{user}'), 2147483647)) "
            f"FROM mysql.user u WHERE u.user = '{user}';")


def pgbouncer_pool_size(text, database):
    """pool_size + reserve_pool of `database` from pgbouncer's SHOW DATABASES (psql -A output, with
    its header); None when the database is not listed."""
    lines = [line.split("|") for line in text.splitlines() if "|" in line]
    if not lines:
        return None
    header = lines[0]
    for row in lines[1:]:
        found = dict(zip(header, row, strict=False))
        if found.get("name") == database:
            return int(found.get("pool_size") or 0) + int(found.get("reserve_pool") or 0)
    return None


class SaturateConnections:
    """Sessions held open (idle, each having run one query) as the app's role, up to the free
    connections of the server and the role (or of pgbouncer's pool for the database, through: pgbouncer),
    bounded by max_sessions. One process holds them (a transient unit running this file's `hold`)."""

    def inject(self, fid, p):
        engine, user, database = p["engine"], p["user"], p["database"]
        through = p.get("through", "server")
        if engine not in ("postgresql", "mariadb") or through not in ("server", "pgbouncer"):
            raise FaultError("engine/through unknown; valid: engine postgresql or mariadb, through server or "
                             "pgbouncer (postgresql)")
        cap = int(p.get("max_sessions", 100))
        if not 1 <= cap <= MAX_SESSIONS:
            raise FaultError(f"max_sessions {cap} out of range; valid: 1..{MAX_SESSIONS}")
        wanted = p.get("sessions", "auto")
        limit = self._limit(engine, user, database, through, p) if wanted == "auto" else int(wanted)
        if limit < 1:
            raise FaultError(f"no free connection for {user}: nothing to saturate")
        if limit > cap:
            raise FaultError(f"saturating needs {limit} sessions, over max_sessions {cap}; valid: max_sessions "
                             f"up to {MAX_SESSIONS}, or sessions: N")
        default_port = 5432 if engine == "postgresql" else 3306
        tag, unit = f"mayday-drill-{fid}", f"mayday-drill-{fid}-sessions"
        env_file = os.path.join(STATE_DIR, f"{fid}.env")
        os.makedirs(STATE_DIR, mode=0o700, exist_ok=True)
        atomic_write(env_file, f"MAYDAY_DRILL_PASSWORD={p.get('password', '')}\n".encode(), 0o600)
        state = {"engine": engine, "user": user, "database": database, "through": through,
                 "host": p.get("host", "127.0.0.1"), "port": int(p.get("port", default_port)), "sessions": limit,
                 "seconds": int(p.get("seconds", 600)), "tag": tag, "unit": unit, "env_file": env_file,
                 "ids_file": os.path.join(STATE_DIR, f"{fid}.sessions")}
        save_state(fid, {"type": "saturate_connections", "state": state}, merge=True)
        sh(["systemd-run", "--unit", unit, "-p", f"EnvironmentFile={env_file}", "--collect", PYTHON, HELPER,
            "hold", fid])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self._count(state) < limit and service_active(unit):
            time.sleep(0.2)
        return state

    def _limit(self, engine, user, database, through, p):
        if through == "pgbouncer":
            admin = p.get("admin_user", "postgres")
            quote_ident(engine, admin)
            out = sh(["psql", "-XA", "-h", p.get("socket_dir", "/var/run/postgresql"), "-p", str(p.get("port", 6432)),
                      "-U", admin, "-d", "pgbouncer", "-c", "SHOW DATABASES"], check=False)
            size = pgbouncer_pool_size(out.stdout, database) if out.returncode == 0 else None
            if size is None:
                raise FaultError(f"pgbouncer's pool for {database} could not be read from its console as {admin}; "
                                 "valid: sessions: N")
            return size
        out = run_sql(engine, database, session_limit_sql(engine, user))
        value = out.stdout.strip()
        if not value.lstrip("-").isdigit():
            raise FaultError(f"role {user} not found: no connection limit to saturate")
        return int(value)

    def _count(self, s):
        if s["engine"] == "postgresql":
            out = run_sql("postgresql", "postgres",
                          f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{s['tag']}';", check=False)
        else:
            ids = (read_bytes(s["ids_file"]) or b"").decode().split()
            if not ids:
                return 0
            listed = ", ".join(str(int(i)) for i in ids)
            out = run_sql("mariadb", "mysql", "SELECT count(*) FROM information_schema.processlist "
                          f"WHERE id IN ({listed}) AND user = '{s['user']}';", check=False)
        value = out.stdout.strip()
        # Unreadable counts as "still there": removal must prove the sessions are gone.
        return int(value) if out.returncode == 0 and value.isdigit() else MAX_SESSIONS + 1

    def injected(self, s):
        return s["sessions"] <= self._count(s) <= MAX_SESSIONS

    def remove(self, s):
        sh(["systemctl", "stop", s["unit"]], check=False)
        if s["engine"] == "postgresql":
            run_sql("postgresql", "postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE application_name = '{s['tag']}';", check=False)
        else:
            for pid in (read_bytes(s["ids_file"]) or b"").decode().split():
                run_sql("mariadb", "mysql", f"KILL CONNECTION {int(pid)};", check=False)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self._count(s) > 0:
            time.sleep(0.2)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(s["env_file"])
        if self._count(s) == 0:  # the ids are what MariaDB's count reads: forgotten only once proven gone
            with contextlib.suppress(FileNotFoundError):
                os.unlink(s["ids_file"])

    def removed(self, s):
        return self._count(s) == 0 and not service_active(s["unit"])


def hold_sessions(fid):
    """The holder (`mayday_fault.py hold <id>`, in its transient unit): opens the sessions one after
    the other (each runs one query, so pgbouncer gives it a server connection), records their ids,
    then holds them until stopped or `seconds` pass. A session that cannot open ends the opening."""
    s = (load_state(fid) or {}).get("state") or {}
    password = os.environ.get("MAYDAY_DRILL_PASSWORD", "")
    held: list = []  # the open connections, kept referenced so they stay open
    ids: list[str] = []
    for _ in range(int(s.get("sessions", 0))):
        try:
            if s["engine"] == "postgresql":
                import psycopg2  # the engine's driver, there for Ansible's postgresql modules

                conn = psycopg2.connect(host=s["host"], port=s["port"], user=s["user"], password=password,
                                        dbname=s["database"], application_name=s["tag"], connect_timeout=10)
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_backend_pid()")
                    ids.append(str(cur.fetchone()[0]))
            else:
                import pymysql  # the engine's driver, there for Ansible's mysql modules

                conn = pymysql.connect(host=s["host"], port=s["port"], user=s["user"], password=password,
                                       database=s["database"], connect_timeout=10)
                with conn.cursor() as cur:
                    cur.execute("SELECT CONNECTION_ID()")
                    ids.append(str(cur.fetchone()[0]))
        except Exception as exc:  # the limit reached early, or the driver missing: hold what is open
            print(f"session {len(held) + 1} did not open: {type(exc).__name__}: {exc}", file=sys.stderr)
            break
        held.append(conn)
        atomic_write(s["ids_file"], "\n".join(ids).encode(), 0o600)
    time.sleep(int(s.get("seconds", 600)))
    return 0


# -- a bad migration: one ALTER TABLE, the table put back from its dump -----------------------------
MIGRATION = re.compile(r"^ALTER TABLE ([A-Za-z_][A-Za-z0-9_]{0,62}) [A-Za-z0-9_ ,().'=:+-]{1,300}$", re.IGNORECASE)
# RENAME TO / RENAME AS / MariaDB's bare RENAME name: the table itself (a column needs RENAME COLUMN).
RENAMES_TABLE = re.compile(r"\bRENAME\s+(?!COLUMN\b|INDEX\b|KEY\b|CONSTRAINT\b)", re.IGNORECASE)
RESTORING = ("mayday_drill_new", "mayday_drill_old")  # MariaDB: built beside the table, then swapped in


def check_migration(table, migration):
    """One ALTER TABLE on the drill's table, nothing that renames the table or ends the statement."""
    found = MIGRATION.match(str(migration or ""))
    if not found or found.group(1) != table or "--" in migration:
        raise FaultError(f"migration {migration!r}: valid: one ALTER TABLE {table} ... statement (letters, digits, "
                         "spaces and _ , ( ) . ' = : + -; no ';' or comments)")
    if RENAMES_TABLE.search(migration):
        raise FaultError(f"migration {migration!r} renames the table: its removal could not find it; valid: "
                         "RENAME COLUMN, DROP COLUMN, ALTER COLUMN ... TYPE, ADD ...")
    return migration


def schema_lines(text):
    """A dump's definition without what changes between two dumps of the same table (comments, the
    \restrict key, MariaDB's AUTO_INCREMENT counter)."""
    kept = []
    for line in text.splitlines():
        line = re.sub(r" AUTO_INCREMENT=\d+", "", line.rstrip())
        if line and not line.startswith(("--", "\\restrict", "\\unrestrict")):
            kept.append(line)
    return "\n".join(kept)


def mariadb_restore_script(s):
    """MariaDB has no transactional DDL: the table is rebuilt beside the live one from the saved
    definition and rows, then swapped in with one atomic RENAME TABLE."""
    table, new, old = (quote_ident("mariadb", n) for n in (s["table"], *RESTORING))
    definition = base64.b64decode(s["definition"]).decode()
    head = f"CREATE TABLE {quote_ident('mariadb', s['table'])} "
    if not definition.startswith(head):
        raise FaultError(f"the saved definition of {s['table']} does not start with {head!r}")
    prefix = DUMP_PREFIX.format(s["table"])
    rows = [DUMP_PREFIX.format(RESTORING[0]) + line[len(prefix):]
            for line in base64.b64decode(s["saved"]).decode().splitlines() if line.startswith(prefix)]
    return ("SET time_zone = '+00:00';\n"
            f"DROP TABLE IF EXISTS {new}, {old};\n"
            f"CREATE TABLE {new} {definition[len(head):]};\n" + "".join(r + "\n" for r in rows)
            + f"RENAME TABLE {table} TO {old}, {new} TO {table};\nDROP TABLE {old};\n")


class BadMigration:
    """A schema change that breaks the app (a column dropped, renamed or retyped): one ALTER TABLE on
    one table. The table is saved whole first (PostgreSQL: pg_dump of its definition, owner, grants,
    owned sequences and rows; MariaDB: its definition and its rows); removal puts it back from that
    unless its definition is already as it was (the scenario restored it), and proves the definition
    is back. Refused for tables others depend on (foreign keys, views) or, on MariaDB, with triggers or
    foreign keys of their own, which a rebuild beside the table cannot carry."""

    def inject(self, fid, p):
        engine, database, table = p["engine"], p["database"], p["table"]
        if engine not in ("postgresql", "mariadb"):
            raise FaultError(f"engine {engine!r} unknown; valid: postgresql, mariadb")
        quoted = quote_ident(engine, table)
        migration = check_migration(table, p.get("migration"))
        definition = self._schema(engine, database, table)
        if not definition:
            raise FaultError(f"table {table} not found in {database}")
        count = run_sql(engine, database, f"SELECT count(*) FROM {quoted};").stdout.strip()
        if not count.isdigit() or int(count) > MAX_ROWS:
            raise FaultError(f"table {table} has {count} rows; valid: at most {MAX_ROWS} (saved whole first)")
        blockers = self._dependents(engine, database, table)
        if blockers:
            raise FaultError(f"table {table} cannot be put back whole: {blockers}")
        state = {"engine": engine, "database": database, "table": table, "migration": migration,
                 "schema": definition}
        if engine == "postgresql":
            dump = sh(["runuser", "-u", "postgres", "--", "pg_dump", "-d", database, "-t", quoted], timeout=120).stdout
            state["saved"] = base64.b64encode(dump.encode()).decode()
        else:
            raw = sh(["mariadb", "-N", "-B", "-r", database, "-e", f"SHOW CREATE TABLE {quoted}"]).stdout
            state["definition"] = base64.b64encode(raw.split("\t", 1)[1].rstrip("\n").encode()).decode()
            rows = sh(["mariadb-dump", "--no-create-info", "--skip-triggers", "--compact", "--skip-extended-insert",
                       "--hex-blob", "--single-transaction", "--tz-utc", database, table], timeout=120).stdout
            state["saved"] = base64.b64encode(rows.encode()).decode()
        save_state(fid, {"type": "bad_migration", "state": state}, merge=True)  # saved before the change
        run_sql(engine, database, migration + ";")
        return state

    def _schema(self, engine, database, table):
        if engine == "postgresql":
            out = sh(["runuser", "-u", "postgres", "--", "pg_dump", "-s", "-d", database, "-t",
                      quote_ident(engine, table)], check=False)
        else:
            out = sh(["mariadb", "-N", "-B", "-r", database, "-e", f"SHOW CREATE TABLE {quote_ident(engine, table)}"],
                     check=False)
        return schema_lines(out.stdout) if out.returncode == 0 else ""

    def _dependents(self, engine, database, table):
        if DamageRows()._referenced(engine, database, table):
            return "other tables' foreign keys reference it"
        if engine == "postgresql":
            sql = ("SELECT count(*) FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid "
                   f"WHERE d.refobjid = to_regclass('{quote_ident(engine, table)}') AND r.ev_class <> d.refobjid;")
            return "views use it" if run_sql(engine, database, sql).stdout.strip() not in ("0", "") else ""
        sql = ("SELECT (SELECT count(*) FROM information_schema.triggers WHERE event_object_schema = DATABASE() "
               f"AND event_object_table = '{table}') + (SELECT count(*) FROM "
               "information_schema.referential_constraints "
               f"WHERE constraint_schema = DATABASE() AND table_name = '{table}');")
        return "it has triggers or foreign keys" if run_sql(engine, database, sql).stdout.strip() not in ("0", "") \
            else ""

    def injected(self, s):
        return self._schema(s["engine"], s["database"], s["table"]) != s["schema"]

    def remove(self, s):
        if not self.injected(s):
            return  # already as it was: whatever put it back (the scenario's restore) is left alone
        if s["engine"] == "postgresql":
            script = f"DROP TABLE IF EXISTS {quote_ident('postgresql', s['table'])};\n" + \
                base64.b64decode(s["saved"]).decode()
            sh(["runuser", "-u", "postgres", "--", "psql", "-Xq1", "-v", "ON_ERROR_STOP=1", "-d", s["database"],
                "-f", "-"], stdin=script, timeout=120)
        else:
            run_sql("mariadb", s["database"], mariadb_restore_script(s))

    def removed(self, s):
        return not self.injected(s)


FAULTS: dict = {"broken_release": BrokenRelease, "stop_service": StopService, "kill_service": KillService,
                "break_file": BreakFile, "fill_disk": FillDisk, "hold_long_query": HoldLongQuery,
                "block_port": BlockPort, "insert_rows": InsertRows, "drop_rows": DropRows,
                "corrupt_rows": CorruptRows, "saturate_connections": SaturateConnections,
                "bad_migration": BadMigration}


# -- state and the operations ---------------------------------------------------------------------
def check_id(fid):
    if not isinstance(fid, str) or not FAULT_ID.fullmatch(fid):
        raise FaultError(f"fault id {fid!r} is not an id; valid: lower-case letters, digits and '-'")
    return fid


def state_path(fid):
    return os.path.join(STATE_DIR, check_id(fid) + ".json")


def load_state(fid):
    data = read_bytes(state_path(fid))
    return json.loads(data) if data else None


def save_state(fid, doc, merge=False):
    os.makedirs(STATE_DIR, mode=0o700, exist_ok=True)
    if merge:
        doc = {**(load_state(fid) or {}), **doc}
    atomic_write(state_path(fid), json.dumps(doc, sort_keys=True).encode(), 0o600)


def all_states(run_id=None):
    if not os.path.isdir(STATE_DIR):
        return []
    found = []
    for name in sorted(os.listdir(STATE_DIR)):
        if name.endswith(".json") and FAULT_ID.fullmatch(name[:-5]):
            doc = load_state(name[:-5])
            if doc and (run_id is None or doc.get("run_id") == run_id):
                found.append(doc)
    return found


def inject(fid, fault_type, params, run_id, drill):
    if fault_type not in FAULTS:
        raise FaultError(f"fault {fault_type!r} unknown; valid: {', '.join(sorted(FAULTS))}")
    save_state(fid, {"id": fid, "type": fault_type, "run_id": run_id, "drill": drill, "injected_at": time.time()})
    fault = FAULTS[fault_type]()
    state = fault.inject(fid, params)
    save_state(fid, {"state": state}, merge=True)
    return state, fault.injected(state)


def remove(fid):
    """Undo the fault, prove it is gone, forget it. 'gone' when there was nothing to undo."""
    doc = load_state(fid)
    if doc is None:
        return "gone"
    if doc.get("state") is not None:
        fault = FAULTS[doc["type"]]()
        fault.remove(doc["state"])
        if not fault.removed(doc["state"]):
            raise FaultError(f"fault {fid} ({doc['type']}) is still in place after its removal")
    os.unlink(state_path(fid))
    return "removed"


def own_source():
    return inspect.getsource(sys.modules[__name__])


def install(check_mode=False):
    try:
        same = read_bytes(HELPER) == own_source().encode()
    except OSError:
        same = False
    if same or check_mode:
        return [] if same else [HELPER]
    os.makedirs(os.path.dirname(HELPER), mode=0o755, exist_ok=True)
    atomic_write(HELPER, own_source().encode(), 0o755)
    return [HELPER]


def main(argv):
    if len(argv) == 2 and argv[0] == "remove":
        try:
            print(remove(argv[1]))
        except FaultError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        return 0
    if len(argv) == 2 and argv[0] == "hold":
        return hold_sessions(check_id(argv[1]))
    print("usage: mayday_fault.py remove <id> | hold <id>", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
