#!/usr/bin/python
# Applies one rotated credential on a host and proves it: the old password rejected, the new one
# accepted. Secrets go to the clients through stdin or the environment, never a command line.
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_credential
short_description: Apply a rotated database credential on a host and prove it
description:
  - I(target=mariadb) - C(ALTER USER) for every account of I(user), given as its
    mysql_native_password hash (the plain password reaches no server log), as root over the socket.
    Proven by logging in as I(user) over TCP - I(old_password) must be refused (error 1045), I(password) accepted.
  - I(target=postgresql) - C(ALTER ROLE ... PASSWORD) given as a SCRAM-SHA-256 verifier computed
    here, as postgres. Proven over the socket the same way (the old one refused with
    "password authentication failed").
  - I(target=pgbouncer) - the user's line of pgbouncer's auth file (I(path)) replaced atomically
    (owner, group and mode kept), then pgbouncer reloaded. Proven through pgbouncer from this
    host's own address (loopback is trusted in the lab, the network is not).
  - I(target=app) - each key of I(values) set to its password in the app's INI file (I(path)),
    atomically, the other lines kept; the app reads the file on every request, so nothing restarts.
    Proven by the app's health check at I(health_url) answering 200 and healthy (waits up to
    I(health_timeout) seconds).
  - Check mode reads only and says what would change.
options:
  target: {type: str, required: true, choices: [mariadb, postgresql, pgbouncer, app], description: What to change.}
  user: {type: str, required: true, description: The application's database role.}
  password: {type: str, no_log: true, description: "The new password (required but for app)."}
  old_password:
    type: str
    no_log: true
    description: "The password it replaces, for the proof (none - not proven rejected)."
  database: {type: str, default: app, description: The application's database.}
  path: {type: path, description: "pgbouncer - its auth file; app - its INI file."}
  values: {type: dict, no_log: true, default: {}, description: "app - INI key to its new password."}
  port: {type: int, default: 6432, description: pgbouncer's port.}
  health_url: {type: str, description: "app - the health check to prove the app answers with the new password."}
  health_timeout: {type: float, default: 20, description: "app - how long to wait for it, seconds."}
  host_label: {type: str, description: "Name of the host in the summary (inventory_hostname)."}
author: mayday
"""

RETURN = r"""
report:
  description: "target, changed, proof (old_rejected, new_accepted, detail), took_ms, health (app)."
  type: dict
  returned: always
summary: {description: One line naming the host., type: str, returned: always}
"""

import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from ansible.module_utils.basic import AnsibleModule

AS_POSTGRES = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
               "-d", "postgres"]
MARIADB_ROOT = ["mariadb", "--batch", "--skip-column-names"]


class CredentialError(Exception):
    pass


def run(argv, stdin="", env=None, timeout=30):
    try:
        out = subprocess.run(argv, input=stdin.encode(), capture_output=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CredentialError(f"{argv[0]} timed out after {timeout} s") from exc
    return out.returncode, out.stdout.decode(errors="replace"), out.stderr.decode(errors="replace")


def sql_literal(value):
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


# -- MariaDB ---------------------------------------------------------------------------------------
def native_hash(password):
    return "*" + hashlib.sha1(hashlib.sha1(password.encode()).digest()).hexdigest().upper()


def my_accounts(user):
    rc, out, err = run(MARIADB_ROOT, f"SELECT host FROM mysql.user WHERE user = {sql_literal(user)};")
    if rc != 0:
        raise CredentialError(f"mariadb as root failed: {err.strip()[-200:]}")
    return [h for h in out.splitlines() if h]


def my_login(user, password, database):
    env = dict(os.environ, MYSQL_PWD=password)
    rc, _, err = run(["mariadb", "--no-defaults", "--batch", "--connect-timeout=10", "--protocol=TCP",
                      "-h", "127.0.0.1", "-u", user, database, "-e", "SELECT 1"], env=env)
    code = (re.findall(r"ERROR (\d+)", err) or [""])[0]
    return rc == 0, code == "1045", code or err.strip()[:120]


def apply_mariadb(p, check):
    accounts = my_accounts(p["user"])
    if not accounts:
        raise CredentialError(f"MariaDB has no account {p['user']}")
    if not check:
        stmt = "".join(f"ALTER USER {sql_literal(p['user'])}@{sql_literal(h)} IDENTIFIED VIA mysql_native_password "
                       f"USING {sql_literal(native_hash(p['password']))};" for h in accounts)
        rc, _, err = run(MARIADB_ROOT, stmt)
        if rc != 0:
            raise CredentialError(f"ALTER USER failed: {err.strip()[-200:]}")
    return {"accounts": [f"{p['user']}@{h}" for h in accounts]}, lambda pw: my_login(p["user"], pw, p["database"])


# -- PostgreSQL ------------------------------------------------------------------------------------
def scram_verifier(password, iterations=4096):
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return (f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
            f"${b64(hashlib.sha256(client_key).digest()).decode()}:{b64(server_key).decode()}")


def pg_login(user, password, database, host, port=5432):
    env = dict(os.environ, PGPASSWORD=password, PGCONNECT_TIMEOUT="10")
    env.pop("PGPASSFILE", None)
    rc, _, err = run(["psql", "-X", "-w", "-q", "-A", "-t", "-h", host, "-p", str(port), "-U", user, "-d", database,
                      "-c", "SELECT 1"], env=env)
    rejected = "password authentication failed" in err or "SASL authentication failed" in err
    return rc == 0, rejected, "accepted" if rc == 0 else (err.strip().splitlines() or [f"rc {rc}"])[-1][:160]


def apply_postgresql(p, check):
    rc, out, err = run(AS_POSTGRES, f"SELECT count(*) FROM pg_roles WHERE rolname = {sql_literal(p['user'])};")
    if rc != 0 or out.strip() != "1":
        raise CredentialError(f"PostgreSQL has no role {p['user']}: {err.strip()[-200:]}")
    if not check:
        ident = '"' + p["user"].replace('"', '""') + '"'
        rc, _, err = run(AS_POSTGRES, f"ALTER ROLE {ident} PASSWORD {sql_literal(scram_verifier(p['password']))};")
        if rc != 0:
            raise CredentialError(f"ALTER ROLE failed: {err.strip()[-200:]}")
    return {}, lambda pw: pg_login(p["user"], pw, p["database"], "/var/run/postgresql")


# -- files (pgbouncer's auth file, the app's INI) ----------------------------------------------------
def replace_file(path, text):
    st = os.stat(path)
    fd, tmp = tempfile.mkstemp(prefix=".mayday-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, st.st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_file(path):
    try:
        with open(path) as src:
            return src.read()
    except OSError as exc:
        raise CredentialError(f"cannot read {path}: {exc.strerror}") from exc


def own_address():
    rc, out, _ = run(["hostname", "-I"])
    addresses = out.split() if rc == 0 else []
    if not addresses:
        raise CredentialError("this host has no network address to prove pgbouncer from")
    return addresses[0]


def apply_pgbouncer(p, check):
    path = p["path"] or "/etc/pgbouncer/userlist.txt"
    lines = read_file(path).splitlines()
    quoted = '"' + p["user"].replace('"', '""') + '"'
    entry = f'{quoted} "{p["password"].replace(chr(34), chr(34) * 2)}"'
    kept = [line for line in lines if not line.strip().startswith(quoted + " ")]
    if not check:
        replace_file(path, "\n".join([*kept, entry]) + "\n")
        rc, _, err = run(["systemctl", "reload", "pgbouncer"])
        if rc != 0:
            raise CredentialError(f"pgbouncer reload failed: {err.strip()[-200:]}")
        time.sleep(0.2)  # SIGHUP: pgbouncer rereads its files asynchronously
    address = own_address()
    return {"auth_file": path, "proved_from": address}, \
        lambda pw: pg_login(p["user"], pw, p["database"], address, p["port"])


INI_LINE = r'^(\s*{key}\s*=\s*).*$'


def health(url):
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:  # the inventory's own URL
            body = resp.read().decode(errors="replace")
            status = resp.status
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return False, {"error": str(exc)[:120]}
    try:
        doc = json.loads(body)
    except ValueError:
        doc = {}
    return status == 200 and doc.get("status") == "healthy", {"status": status, "checks": doc.get("checks")}


def quoted_value(value):
    def sub(match):
        return match.group(1) + '"' + value + '"'
    return sub


def apply_app(p, check):
    path = p["path"] or "/etc/mayday-app/db.ini"
    values = {str(k): str(v) for k, v in (p["values"] or {}).items()}
    if not values:
        raise CredentialError("app - no keys given")
    text = read_file(path)
    for key, value in values.items():
        if '"' in value or "\n" in value:
            raise CredentialError(f"app - the password for {key} holds a quote or a newline (the INI file cannot)")
        pattern = re.compile(INI_LINE.format(key=re.escape(key)), re.M)
        if not pattern.search(text):
            raise CredentialError(f"app - {path} has no key {key}")
        text = pattern.sub(quoted_value(value), text)
    if not check:
        replace_file(path, text)
    return {"file": path, "keys": sorted(values)}, None


APPLY = {"mariadb": apply_mariadb, "postgresql": apply_postgresql, "pgbouncer": apply_pgbouncer, "app": apply_app}


def main():
    module = AnsibleModule(
        argument_spec={
            "target": {"type": "str", "required": True, "choices": list(APPLY)},
            "user": {"type": "str", "required": True},
            "password": {"type": "str", "no_log": True},
            "old_password": {"type": "str", "no_log": True},
            "database": {"type": "str", "default": "app"},
            "path": {"type": "path"},
            "values": {"type": "dict", "default": {}, "no_log": True},
            "port": {"type": "int", "default": 6432},
            "health_url": {"type": "str"},
            "health_timeout": {"type": "float", "default": 20},
            "host_label": {"type": "str"},
        },
        required_if=[("target", t, ["password"]) for t in ("mariadb", "postgresql", "pgbouncer")],
        supports_check_mode=True,
    )
    p = module.params
    host = p["host_label"] or "host"
    target = p["target"]
    started = time.monotonic()
    report = {"target": target, "changed": not module.check_mode}
    try:
        details, login = APPLY[target](p, module.check_mode)
    except CredentialError as exc:
        module.fail_json(msg=f"{host}: {target} not rotated: {exc}", changed=False, refused=True,
                         summary=f"{host}: {target} not rotated: {exc}", report=report)
    report.update(details)
    report["took_ms"] = int((time.monotonic() - started) * 1000)
    if module.check_mode:
        module.exit_json(changed=True, report=report, summary=f"{host}: {target} would get the new password")
    problems = []
    if login is not None:
        new_ok, _, new_detail = login(p["password"])
        old_rejected = None
        old_detail = ""
        if p["old_password"] and p["old_password"] != p["password"]:
            old_ok, old_rejected, old_detail = login(p["old_password"])
            old_rejected = bool(old_rejected and not old_ok)
        report["proof"] = {"new_accepted": new_ok, "old_rejected": old_rejected, "old": old_detail, "new": new_detail}
        if not new_ok:
            problems.append(f"the new password is not accepted ({new_detail})")
        if old_rejected is False:
            problems.append(f"the old password is not rejected ({old_detail or 'accepted'})")
    if target == "app" and p["health_url"]:
        deadline = time.monotonic() + p["health_timeout"]
        while True:
            ok, seen = health(p["health_url"])
            if ok or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        report["health"] = dict(seen, healthy=ok, after_ms=int((time.monotonic() - started) * 1000))
        if not ok:
            problems.append(f"the app is not healthy with it ({seen})")
    if problems:
        module.fail_json(msg=f"{host}: {target} changed but " + "; ".join(problems), changed=True, report=report,
                         summary=f"{host}: {target} changed but " + "; ".join(problems))
    proof = " (old rejected, new accepted)" if login is not None else " (app healthy)" if p["health_url"] else ""
    what = f"app's {', '.join(sorted(p['values']))}" if target == "app" else target
    module.exit_json(changed=True, report=report, summary=f"{host}: {what} has the new password{proof}")


if __name__ == "__main__":
    main()
