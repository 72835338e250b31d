#!/usr/bin/python
# A compromised account contained, its evidence gathered, and later put back exactly: what the first
# run changed is recorded on the host (0600) before each change, so --restore undoes that and only that.
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_account
short_description: Contain a compromised OS or app account, gather its evidence, or restore it exactly
description:
  - I(op=probe) reads only - whether the OS account and the app account exist, whether the account is
    protected (the operator's own user, a break-glass account or group member, a uid 0 account) and
    whether a record of an earlier containment is on the host.
  - I(op=contain) first gathers the account's evidence (its SSH logins and web requests of the last
    I(since_hours), its groups, sudo rules and database grants, with what looks unusual flagged), then
    records on the host (C(/var/lib/mayday/accounts/USER.json), 0600) what it is about to change, then
    locks the password (C(usermod -L), only when not locked already), expires the account
    (C(usermod -e 1)), moves its authorized keys files aside (copies kept byte for byte), ends its
    processes (TERM, then KILL), and in the app database disables its user row, deletes its sessions and
    revokes its tokens (the deleted rows kept in the record).
  - I(op=restore) puts back exactly what the record says was changed - the key files byte for byte with
    their owner and mode, the password unlocked only if this module locked it, the earlier expiry, the
    user row's earlier disabled flag, the deleted rows - and keeps the record as USER.restored-TIME.json.
  - Check mode only reads and says what would change.
options:
  op: {type: str, choices: [probe, contain, restore], default: probe, description: What to do.}
  user: {type: str, required: true, description: The account.}
  protected_users: {type: list, elements: str, default: [], description: Never contained (operator, break-glass).}
  protected_groups: {type: list, elements: str, default: [], description: Members are never contained.}
  app_engine: {type: str, choices: ["", mariadb, postgresql], default: "", description: The app database on this host.}
  app_database: {type: str, default: app, description: The app database.}
  app_users_table: {type: str, default: users, description: "Table of app accounts (id, name, disabled)."}
  app_sessions_table: {type: str, default: sessions, description: Table of app sessions (user_id).}
  app_tokens_table: {type: str, default: tokens, description: Table of app API tokens (user_id).}
  logs: {type: list, elements: str, default: [/var/log/nginx/access.log, /var/log/nginx/access.log.1],
         description: Request logs searched for the account's name.}
  since_hours: {type: int, default: 24, description: How far back the evidence looks.}
  host_label: {type: str, description: "Name of the host in the summary (inventory_hostname)."}
author: mayday
"""

EXAMPLES = r"""
- name: Account | contain intruder
  mayday_account:
    op: contain
    user: intruder
    protected_users: [mayday, breakglass]
    protected_groups: [mayday-breakglass]
    app_engine: mariadb
"""

RETURN = r"""
report: {description: "probe, changes, evidence, proof.", type: dict, returned: always}
summary: {description: One line naming the host., type: str, returned: always}
"""

import contextlib
import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from ansible.module_utils.basic import AnsibleModule

ROOT = "/var/lib/mayday/accounts"
NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
KEY_FILES = (".ssh/authorized_keys", ".ssh/authorized_keys2")
UNUSUAL_GROUPS = {"root", "sudo", "wheel", "admin", "adm", "docker", "lxd", "disk", "shadow", "systemd-journal"}
UNUSUAL_DB_PRIVS = ("ALL PRIVILEGES ON *.*", "SUPER", "GRANT OPTION", "FILE", "CREATE USER", "SHUTDOWN")
EVIDENCE_LINES = 200
TIMEOUT_S = 60
KILL_WAIT_S = 5.0
TOUCHED = {"any": False}  # set before the first change: a failure after it is not a refusal


class AccountError(Exception):
    pass


def run(argv, check=True, stdin=None):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False, input=stdin)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AccountError(f"{argv[0]} could not run: {exc}") from None
    if check and out.returncode != 0:
        raise AccountError(f"{' '.join(argv[:3])} ... failed: {(out.stderr or out.stdout).strip()[-400:]}")
    return out


def utc_now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# -- the OS account ------------------------------------------------------------------------------
def os_account(user):
    try:
        return pwd.getpwnam(user)
    except KeyError:
        return None


def shadow(user):
    """The account's /etc/shadow fields (name, hash, ..., expire at index 7)."""
    with open("/etc/shadow", encoding="utf-8") as handle:
        for line in handle:
            fields = line.rstrip("\n").split(":")
            if fields[0] == user:
                return fields + [""] * (9 - len(fields))
    raise AccountError(f"{user} has no entry in /etc/shadow")


def passwd_status(user):
    return run(["passwd", "-S", user]).stdout.strip()


def groups_of(pw):
    return sorted({grp.getgrgid(g).gr_name for g in os.getgrouplist(pw.pw_name, pw.pw_gid)
                   if _group_exists(g)})


def _group_exists(gid):
    try:
        grp.getgrgid(gid)
        return True
    except KeyError:
        return False


def processes(uid):
    """{pid: command line} of every process whose real or effective uid is the account's."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
                uids = next(line for line in handle if line.startswith("Uid:")).split()[1:3]
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmd = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, StopIteration):
            continue
        if str(uid) in uids:
            found[int(pid)] = cmd[:300]
    return found


def end_processes(user, uid):
    """Its sessions (logind, when it runs) and every process, TERM then KILL; returns what was ended."""
    before = processes(uid)
    if not before:
        return {}
    if run(["systemctl", "is-active", "systemd-logind"], check=False).stdout.strip() == "active":
        run(["loginctl", "terminate-user", user], check=False)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes(uid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + KILL_WAIT_S
        while processes(uid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not processes(uid):
            break
    left = processes(uid)
    if left:
        raise AccountError(f"{len(left)} processes of {user} survived KILL: {sorted(left)[:10]}")
    return before


def key_files(pw):
    """Authorized keys files sshd reads for the account (sshd -T's authorizedkeysfile, else the defaults)."""
    out = run(["sshd", "-T", "-C", f"user={pw.pw_name},host=mayday-probe,addr=192.0.2.1"], check=False)
    patterns = []
    for line in out.stdout.splitlines():
        if line.startswith("authorizedkeysfile "):
            patterns = line.split()[1:]
    patterns = patterns or list(KEY_FILES)
    paths = []
    for pattern in patterns:
        path = pattern.replace("%%", "\0").replace("%h", pw.pw_dir).replace("%u", pw.pw_name).replace("\0", "%")
        paths.append(path if path.startswith("/") else os.path.join(pw.pw_dir, path))
    return list(dict.fromkeys(paths))


def sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


# -- the app account ------------------------------------------------------------------------------
class AppDb:
    def __init__(self, engine, database, users, sessions, tokens):
        for name in (database, users, sessions, tokens):
            if not IDENT.match(name):
                raise AccountError(f"{name!r} is not a plain SQL name")
        self.engine, self.database = engine, database
        self.users, self.sessions, self.tokens = users, sessions, tokens

    def lit(self, value):
        """A string literal no input can break out of (hex)."""
        data = str(value).encode().hex()
        if self.engine == "mariadb":
            return f"CONVERT(X'{data}' USING utf8mb4)" if data else "''"
        return f"convert_from(decode('{data}', 'hex'), 'UTF8')"

    def sql(self, query, db=True):
        if self.engine == "mariadb":
            argv = ["mariadb", "--batch", "--skip-column-names", "--raw", *([self.database] if db else []),
                    "-e", query]
        else:
            argv = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t", "-F", "\t",
                    "-v", "ON_ERROR_STOP=1", "-d", self.database if db else "postgres", "-c", query]
        return run(argv).stdout

    def has_table(self, table):
        if self.engine == "mariadb":
            query = ("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() "
                     f"AND table_name = {self.lit(table)}")
        else:
            query = f"SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = {self.lit(table)}"
        return self.sql(query).strip() == "1"

    def account(self, user):
        """(id, disabled) of the app user, or None."""
        if not self.has_table(self.users):
            return None
        flag = "disabled" if self.engine == "mariadb" else "disabled::int"
        out = self.sql(f"SELECT id, {flag} FROM {self.users} WHERE name = {self.lit(user)}").split()
        return (int(out[0]), int(out[1])) if out else None

    def columns(self, table):
        if self.engine == "mariadb":
            query = ("SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() "
                     f"AND table_name = {self.lit(table)} ORDER BY ordinal_position")
        else:
            query = ("SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                     f"AND table_name = {self.lit(table)} ORDER BY ordinal_position")
        return self.sql(query).split()

    def rows(self, table, user_id):
        """The account's rows of `table`, each as a JSON object (column: value)."""
        if not self.has_table(table):
            return []
        if self.engine == "mariadb":
            pairs = ", ".join(f"'{c}', `{c}`" for c in self.columns(table))
            out = self.sql(f"SELECT JSON_OBJECT({pairs}) FROM {table} WHERE user_id = {int(user_id)}")
        else:
            out = self.sql(f"SELECT row_to_json(t) FROM {table} t WHERE user_id = {int(user_id)}")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def delete_rows(self, table, user_id):
        if self.has_table(table):
            self.sql(f"DELETE FROM {table} WHERE user_id = {int(user_id)}")

    def insert_rows(self, table, rows):
        """Rows put back as they were (a row whose key is there again is left as it is)."""
        for row in rows:
            if self.engine == "mariadb":
                cols = ", ".join(f"`{c}`" for c in row if IDENT.match(c))
                vals = ", ".join("NULL" if row[c] is None else self.lit(row[c]) for c in row if IDENT.match(c))
                self.sql(f"INSERT IGNORE INTO {table} ({cols}) VALUES ({vals})")
            else:
                doc = self.lit(json.dumps(row))
                self.sql(f"INSERT INTO {table} SELECT * FROM json_populate_record(NULL::{table}, {doc}::json) "
                         "ON CONFLICT DO NOTHING")

    def set_disabled(self, user_id, disabled):
        value = ("1" if disabled else "0") if self.engine == "mariadb" else ("TRUE" if disabled else "FALSE")
        self.sql(f"UPDATE {self.users} SET disabled = {value} WHERE id = {int(user_id)}")

    def grants(self, user):
        """The account's own database login, if any, and what looks unusual about it."""
        flags = []
        if self.engine == "mariadb":
            hosts = self.sql(f"SELECT host FROM mysql.user WHERE user = {self.lit(user)}", db=False).split()
            grants = []
            for host in hosts:
                grants += self.sql(f"SHOW GRANTS FOR {self.lit(user)}@{self.lit(host)}", db=False).splitlines()
            flags = [f"database grant: {g}" for g in grants if any(p in g.upper() for p in UNUSUAL_DB_PRIVS)]
            return {"grants": grants, "unusual": flags}
        out = self.sql("SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls FROM pg_roles "
                       f"WHERE rolname = {self.lit(user)}", db=False).strip()
        if not out:
            return {"grants": [], "unusual": []}
        names = ("superuser", "createrole", "createdb", "replication", "bypassrls")
        attrs = dict(zip(names, [v == "t" for v in out.split("\t")], strict=False))
        flags = [f"database role attribute: {n}" for n, v in attrs.items() if v]
        return {"grants": [f"role {user}: " + ", ".join(n for n, v in attrs.items() if v) or "role " + user],
                "unusual": flags}


# -- evidence ------------------------------------------------------------------------------------
def logins(user, since_hours):
    """sshd's journal lines that name the account (accepted, failed, invalid user, session)."""
    word = re.compile(rf"(?<![\w.-]){re.escape(user)}(?![\w.-])")
    out = run(["journalctl", "--no-pager", "-o", "json", "--since", f"-{since_hours}h", "SYSLOG_IDENTIFIER=sshd"],
              check=False)
    found = []
    for line in out.stdout.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("MESSAGE")
        if isinstance(message, str) and word.search(message):
            stamp = int(entry.get("__REALTIME_TIMESTAMP", "0")) / 1e6
            found.append(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(stamp))} {message}")
    if os.path.exists("/var/log/auth.log"):
        with open("/var/log/auth.log", encoding="utf-8", errors="replace") as handle:
            found += [line.rstrip("\n") for line in handle if "sshd" in line and word.search(line)]
    return found[-EVIDENCE_LINES:]


NGINX_TIME = re.compile(r"\[(\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\]")


def requests(user, logs, since_hours):
    """Request log lines naming the account (remote user, a query or path), within the window."""
    word = re.compile(rf"(?<![\w.-]){re.escape(user)}(?![\w.-])")
    since = datetime.now(UTC) - timedelta(hours=since_hours)
    found = []
    for path in logs:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    if not word.search(line):
                        continue
                    stamp = NGINX_TIME.search(line)
                    if stamp and datetime.strptime(stamp.group(1), "%d/%b/%Y:%H:%M:%S %z") < since:
                        continue
                    found.append(f"{path}: {line.rstrip()}")
        except OSError:
            continue
    return found[-EVIDENCE_LINES:]


def privileges(pw):
    """Groups, sudo rules and login shell, with what looks unusual flagged."""
    groups = groups_of(pw)
    unusual = [f"member of {g}" for g in groups if g in UNUSUAL_GROUPS]
    if pw.pw_uid == 0:
        unusual.append("uid 0 (root's powers)")
    if pw.pw_gid == 0:
        unusual.append("primary group 0 (root)")
    sudo = run(["sudo", "-n", "-l", "-U", pw.pw_name], check=False).stdout
    # Only the commands part: the "Matching Defaults entries" part is indented the same way.
    commands = sudo.split("may run the following commands", 1)[1] if "may run the following commands" in sudo else ""
    rules = [line.strip() for line in commands.splitlines() if line.startswith("    ")]
    if any("NOPASSWD" in r for r in rules):
        unusual.append("sudo without a password (NOPASSWD)")
    if any(r.startswith("(ALL") or r.startswith("(root") for r in rules):
        unusual.append("sudo to root")
    return {"uid": pw.pw_uid, "gid": pw.pw_gid, "home": pw.pw_dir, "shell": pw.pw_shell, "groups": groups,
            "sudo": rules, "unusual": unusual}


def keys_evidence(paths):
    found = {}
    for path in paths:
        if os.path.isfile(path):
            out = run(["ssh-keygen", "-l", "-f", path], check=False)
            found[path] = out.stdout.strip().splitlines()
    return found


# -- the record ----------------------------------------------------------------------------------
def record_path(user):
    return os.path.join(ROOT, f"{user}.json")


def saved_dir(user):
    return os.path.join(ROOT, user)


def read_record(user):
    try:
        with open(record_path(user), encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


def write_record(record):
    os.makedirs(ROOT, mode=0o700, exist_ok=True)
    os.chmod(ROOT, 0o700)
    fd, tmp = tempfile.mkstemp(dir=ROOT, prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, record_path(record["user"]))


# -- the operations -------------------------------------------------------------------------------
def probe(p, app):
    user = p["user"]
    pw = os_account(user)
    found = {"os_account": pw is not None, "app_account": None, "protected": "",
             "record": read_record(user) is not None}
    if app:
        found["app_account"] = app.account(user) is not None
    if user in p["protected_users"] or user == "root":
        found["protected"] = f"{user} is the operator's own or a break-glass account"
    elif pw and pw.pw_uid == 0:
        found["protected"] = f"{user} has uid 0: ending its processes would end root's; contain it by hand"
    elif pw:
        shared = sorted(set(groups_of(pw)) & set(p["protected_groups"]))
        if shared:
            found["protected"] = f"{user} is in the break-glass group {', '.join(shared)}"
    return found


def contain(p, app, found, check_mode):
    user = p["user"]
    pw = os_account(user)
    record = read_record(user) or {"user": user, "contained": utc_now(), "os": None, "app": None}
    report: dict[str, Any] = {"evidence": {"logins": [], "requests": [], "privileges": None, "keys": {},
                                           "processes": {}, "database": None, "unusual": []}}
    evidence: dict[str, Any] = report["evidence"]
    if pw:
        paths = key_files(pw)
        evidence.update(privileges=privileges(pw), keys=keys_evidence(paths),
                        processes={str(k): v for k, v in processes(pw.pw_uid).items()},
                        logins=logins(user, p["since_hours"]))
        evidence["unusual"] += evidence["privileges"]["unusual"]
    evidence["requests"] = requests(user, p["logs"], p["since_hours"])
    if app:
        evidence["database"] = app.grants(user)
        evidence["unusual"] += evidence["database"]["unusual"]
    todo = []
    if pw:
        fields = shadow(user)
        if not fields[1].startswith("!"):
            todo.append("lock")
        if fields[7] != "1":
            todo.append("expire")
        todo += [f"move {path}" for path in paths if os.path.lexists(path)]
        if processes(pw.pw_uid):
            todo.append("end processes")
    app_user = app.account(user) if app else None
    if app_user:
        if not app_user[1]:
            todo.append("disable app user")
        if app.rows(app.sessions, app_user[0]) or app.rows(app.tokens, app_user[0]):
            todo.append("revoke app sessions and tokens")
    report["would" if check_mode else "did"] = todo
    if check_mode or not todo:
        return bool(todo), report, ("would " + ", ".join(todo)) if todo else "already contained"
    if pw:
        fields = shadow(user)
        os_rec = record["os"] or {"passwd_status": passwd_status(user), "locked_by_mayday": False,
                                  "expire_before": fields[7], "keys": {}}
        record["os"] = os_rec
        TOUCHED["any"] = True
        os_rec["locked_by_mayday"] = os_rec["locked_by_mayday"] or "lock" in todo
        write_record(record)  # first what will change, then the change
        if "lock" in todo:
            run(["usermod", "-L", user])
        if "expire" in todo:
            run(["usermod", "-e", "1", user])
        os.makedirs(saved_dir(user), mode=0o700, exist_ok=True)
        for index, path in enumerate(p for p in paths if os.path.lexists(p)):
            if path in os_rec["keys"]:
                raise AccountError(f"{path} is back since the first containment and a copy of the first is kept; "
                                   "restore first, or move it aside by hand")
            st = os.lstat(path)
            if not os.path.isfile(path) or os.path.islink(path):
                raise AccountError(f"{path} is not a plain file; moved aside by hand only")
            copy = os.path.join(saved_dir(user), f"{index}-{os.path.basename(path)}")
            shutil.copyfile(path, copy)
            os.chmod(copy, 0o600)
            os_rec["keys"][path] = {"copy": copy, "sha256": sha256(copy), "mode": st.st_mode & 0o7777,
                                    "uid": st.st_uid, "gid": st.st_gid}
            write_record(record)
            if sha256(path) != os_rec["keys"][path]["sha256"]:
                raise AccountError(f"{path} changed while it was copied; nothing removed")
            os.unlink(path)
        report["ended"] = {str(k): v for k, v in end_processes(user, pw.pw_uid).items()}
    if app_user:
        app_rec = record["app"] or {"engine": app.engine, "user_id": app_user[0], "disabled_before": app_user[1],
                                    "rows": {app.sessions: [], app.tokens: []}}
        record["app"] = app_rec
        TOUCHED["any"] = True
        for table in (app.sessions, app.tokens):
            app_rec["rows"].setdefault(table, [])
            app_rec["rows"][table] += app.rows(table, app_user[0])
        write_record(record)
        app.set_disabled(app_user[0], True)
        for table in (app.sessions, app.tokens):
            app.delete_rows(table, app_user[0])
        report["revoked"] = {t: len(v) for t, v in app_rec["rows"].items()}
    # Proof: what the change was meant to leave, read back.
    proof: dict[str, Any] = {}
    if pw:
        proof.update(passwd_status=passwd_status(user), expire=shadow(user)[7],
                     keys_left=[path for path in paths if os.path.lexists(path)],
                     processes_left=len(processes(pw.pw_uid)))
        if not proof["passwd_status"].split()[1].startswith("L") or proof["expire"] != "1" or proof["keys_left"] \
                or proof["processes_left"]:
            raise AccountError(f"{user} is not contained as intended: {proof}")
    if app_user:
        proof["app"] = {"user": app.account(user), "sessions": len(app.rows(app.sessions, app_user[0])),
                        "tokens": len(app.rows(app.tokens, app_user[0]))}
        if proof["app"]["user"][1] != 1 or proof["app"]["sessions"] or proof["app"]["tokens"]:
            raise AccountError(f"app account {user} is not contained as intended: {proof['app']}")
    report["proof"] = proof
    return True, report, ", ".join(todo)


def restore(p, app, found, check_mode):
    user = p["user"]
    record = read_record(user)
    if record is None:
        return False, {"did": []}, "no containment recorded: nothing to restore"
    os_rec, app_rec = record.get("os"), record.get("app")
    todo = []
    if os_rec:
        todo += [f"put back {path}" for path in os_rec["keys"]]
        todo.append("account lock and expiry as before")
    if app_rec:
        todo.append("app user and its rows as before")
    if check_mode:
        return True, {"would": todo}, "would " + ", ".join(todo)
    proof: dict[str, Any] = {}
    if os_rec:
        pw = os_account(user)
        if pw is None:
            raise AccountError(f"{user} has no OS account any more: nothing of it can be put back")
        for path, saved in os_rec["keys"].items():
            if os.path.lexists(path) and (os.path.islink(path) or sha256(path) != saved["sha256"]):
                raise AccountError(f"{path} exists again with other content; left as it is, nothing restored")
        TOUCHED["any"] = True
        for path, saved in os_rec["keys"].items():
            if sha256(saved["copy"]) != saved["sha256"]:
                raise AccountError(f"the kept copy of {path} ({saved['copy']}) changed; nothing restored")
            parent = os.path.dirname(path)
            if not os.path.isdir(parent):
                os.makedirs(parent, mode=0o700)
                os.chown(parent, pw.pw_uid, pw.pw_gid)
            tmp = path + ".mayday-tmp"
            shutil.copyfile(saved["copy"], tmp)
            os.chown(tmp, saved["uid"], saved["gid"])
            os.chmod(tmp, saved["mode"])
            os.replace(tmp, path)
        if os_rec["locked_by_mayday"] and shadow(user)[1].startswith("!"):
            run(["usermod", "-U", user])
        run(["chage", "-E", os_rec["expire_before"] or "-1", user])
        proof.update(passwd_status=passwd_status(user), passwd_status_before=os_rec["passwd_status"],
                     keys={path: sha256(path) == saved["sha256"] for path, saved in os_rec["keys"].items()})
        if proof["passwd_status"].split()[1] != os_rec["passwd_status"].split()[1] \
                or shadow(user)[7] != os_rec["expire_before"] or not all(proof["keys"].values()):
            raise AccountError(f"{user} is not as before: {proof}")
    if app_rec:
        if app is None:
            raise AccountError("the record holds app rows but this host has no app database configured")
        TOUCHED["any"] = True
        for table, rows in app_rec["rows"].items():
            app.insert_rows(table, rows)
        app.set_disabled(app_rec["user_id"], bool(app_rec["disabled_before"]))
        proof["app"] = {t: len(app.rows(t, app_rec["user_id"])) for t in app_rec["rows"]}
    # The record stays for the incident's history, no longer the current one.
    os.replace(record_path(user), os.path.join(ROOT, f"{user}.restored-{time.strftime('%Y%m%dT%H%M%SZ')}.json"))
    shutil.rmtree(saved_dir(user), ignore_errors=True)
    return True, {"did": todo, "proof": proof}, "restored: " + ", ".join(todo)


def main():
    module = AnsibleModule(
        argument_spec={
            "op": {"type": "str", "choices": ["probe", "contain", "restore"], "default": "probe"},
            "user": {"type": "str", "required": True},
            "protected_users": {"type": "list", "elements": "str", "default": []},
            "protected_groups": {"type": "list", "elements": "str", "default": []},
            "app_engine": {"type": "str", "choices": ["", "mariadb", "postgresql"], "default": ""},
            "app_database": {"type": "str", "default": "app"},
            "app_users_table": {"type": "str", "default": "users"},
            "app_sessions_table": {"type": "str", "default": "sessions"},
            "app_tokens_table": {"type": "str", "default": "tokens"},
            "logs": {"type": "list", "elements": "str",
                     "default": ["/var/log/nginx/access.log", "/var/log/nginx/access.log.1"]},
            "since_hours": {"type": "int", "default": 24},
            "host_label": {"type": "str"},
        },
        supports_check_mode=True,
    )
    p = module.params
    host = p["host_label"] or socket.gethostname()
    report: dict[str, Any] = {"user": p["user"], "op": p["op"]}
    try:
        if not NAME.match(p["user"]):
            raise AccountError(f"{p['user']!r} is not an account name")
        app = AppDb(p["app_engine"], p["app_database"], p["app_users_table"], p["app_sessions_table"],
                    p["app_tokens_table"]) if p["app_engine"] else None
        found = probe(p, app)
        report["probe"] = found
        if p["op"] == "probe":
            module.exit_json(changed=False, report=report, msg=f"{host}: {found}", summary=f"{host}: probed")
        if found["protected"]:
            raise AccountError(f"refused: {found['protected']}; nothing changed")
        step = contain if p["op"] == "contain" else restore
        changed, done, text = step(p, app, found, module.check_mode)
        report.update(done)
        msg = f"{p['user']}: {text}"
        module.exit_json(changed=changed, report=report, msg=f"{host}: {msg}", summary=f"{host}: {msg}")
    except (AccountError, OSError, ValueError) as exc:
        changed = TOUCHED["any"]
        module.fail_json(msg=f"{host}: {exc}", changed=changed, refused=not changed, report=report,
                         summary=f"{host}: {exc}")


if __name__ == "__main__":
    main()
