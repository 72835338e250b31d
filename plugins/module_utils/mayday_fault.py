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


def sh(argv, check=True, timeout=CMD_TIMEOUT_S, env=None):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=env)
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

    def injected(self, s):
        return os.path.basename(os.readlink(s["link"]).rstrip("/")) == s["release"]

    def remove(self, s):
        if self.injected(s):
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
        return not self.injected(s) and not os.path.exists(os.path.join(s["releases"], s["release"]))


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


FAULTS: dict = {"broken_release": BrokenRelease, "stop_service": StopService, "kill_service": KillService,
                "break_file": BreakFile, "fill_disk": FillDisk, "hold_long_query": HoldLongQuery,
                "block_port": BlockPort, "insert_rows": InsertRows}


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
    print("usage: mayday_fault.py remove <id>", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
