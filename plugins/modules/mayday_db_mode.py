#!/usr/bin/python
# Read-only with a lease: switch a database read-only (or back), recycle the sessions that would keep
# writing, prove it with a write as the application's role, and put the switch under a lease.
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_db_mode
short_description: Switch a database read-only under a lease, or back to read-write, and prove it
description:
  - PostgreSQL, I(state=on) - C(ALTER DATABASE <db> SET default_transaction_read_only = on), then
    sessions opened before the switch are recycled - pgbouncer C(RECONNECT <db>) and
    C(pg_terminate_backend) of the database's other client sessions (superusers' sessions, the
    operator's, are kept) - so none keeps writing.
  - MariaDB, I(state=on) - C(SET GLOBAL read_only = ON) (bounded by C(lock_wait_timeout)); it
    applies to every session of a user without READ ONLY ADMIN at once.
  - The switch is put under a lease (M(mayday_lease), key C(db-read-only:<engine>:<db>)) of
    I(duration), whose revert is the switch back (for PostgreSQL followed by the same recycling), run
    by a systemd timer on the host at expiry. Switching on again moves the expiry.
  - I(state=off) releases that lease (its revert runs now); without a lease a read-only database is
    switched back all the same.
  - Proven, not assumed - after the switch a write as the application's role (I(app_user),
    I(app_password); PostgreSQL through pgbouncer when it is configured) is tried and its result
    reported - on, it must fail with SQLSTATE 25006 (PostgreSQL) or error 1290 (MariaDB); off, it
    must succeed. The write is C(CREATE TEMP TABLE) rolled back (PostgreSQL) and
    C(DELETE ... WHERE 1 = 0) (MariaDB), so nothing is written either way.
  - A lease length outside I(lease_min)..I(lease_max) is refused before anything changes.
  - Check mode only reads and says what would change.
options:
  engine: {type: str, choices: [mariadb, postgresql], required: true, description: Database engine.}
  database: {type: str, required: true, description: The application's database.}
  state: {type: str, choices: ["on", "off"], required: true, description: "on - read-only; off - read-write."}
  duration: {type: str, default: 30m, description: "on - the lease, e.g. 30m, 2h."}
  lease_min: {type: str, default: 1m, description: Shortest lease (inventory mayday_lease_min).}
  lease_max: {type: str, default: 4h, description: Longest lease (inventory mayday_lease_max).}
  app_user: {type: str, required: true, description: The application's role, for the proof.}
  app_password: {type: str, no_log: true, description: Its password (PGPASSWORD / MYSQL_PWD, never on a command line).}
  pgbouncer:
    type: dict
    description: "PostgreSQL - {port, admin_user} of pgbouncer in front of the database."
  pgbouncer_admin_password:
    type: str
    no_log: true
    description: "pgbouncer's admin password (default none: trust/peer access)."
  incident: {type: str, default: "", description: The incident, on the lease.}
  host_label: {type: str, description: "Name of the host in the summary (inventory_hostname)."}
author: mayday
"""

RETURN = r"""
report:
  description: >-
    engine, database, state, before and after (read_only, pgbouncer pool state for PostgreSQL,
    sessions), recycled (sessions ended), probe (as, blocked, code), lease (id, expires) or
    released (the lease ended), warnings.
  type: dict
  returned: always
summary: {description: One line naming the host., type: str, returned: always}
"""

import os
import re
import socket
import subprocess

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.mayday_lease import (
    LEASED_CHANGE_ARGS,
    LeaseError,
    Leases,
    check_bounds,
    format_duration,
    install,
    parse_duration,
)
from ansible.module_utils.mayday_pgbouncer_admin import Console, ConsoleError, check_name, snapshot

PG_READ_ONLY = "25006"
MARIADB_READ_ONLY = "1290"
AS_POSTGRES = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
MARIADB = ["mariadb", "--batch", "--skip-column-names"]


class ModeError(Exception):
    pass


def run(argv, env=None, timeout=30):
    try:
        out = subprocess.run(argv, capture_output=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ModeError(f"{' '.join(argv[:6])} timed out after {timeout} s") from exc
    return out.returncode, out.stdout.decode(errors="replace"), out.stderr.decode(errors="replace")


def sql(argv, env=None, timeout=30):
    rc, out, err = run(argv, env, timeout)
    if rc != 0:
        raise ModeError(f"{' '.join(a for a in argv[:8] if a != '--')} failed: {err.strip()[-300:]}")
    return out.strip()


# -- PostgreSQL --------------------------------------------------------------------------------
def pg(query, db="postgres"):
    return [*AS_POSTGRES, "-d", db, "-c", query]


def pg_read_only(db):
    """The database-level default_transaction_read_only: 'on', 'off' or '' (not set)."""
    out = sql(pg("SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                 f"WHERE d.datname = '{db}' AND s.setrole = 0"))
    found = re.search(r"default_transaction_read_only=(\w+)", out)
    return found.group(1) if found else ""


def pg_sessions(db):
    """The database's client sessions other than superusers' (the ones recycling ends)."""
    out = sql(pg("SELECT count(*) FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid "
                 f"WHERE a.datname = '{db}' AND a.backend_type = 'client backend' AND NOT r.rolsuper"))
    return int(out or 0)


def pg_terminate_sql(db):
    return ("SELECT count(pg_terminate_backend(a.pid)) FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid "
            f"WHERE a.datname = '{db}' AND a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() "
            "AND NOT r.rolsuper")


def pg_recycle_argv(db, console):
    """After a switch: pooled server connections reconnect, other sessions end (they keep the old default)."""
    steps = [console.argv(f"RECONNECT {db}")] if console else []
    return [*steps, pg(pg_terminate_sql(db))]


def pg_probe(db, user, password, pgb):
    """A write as the application's role that leaves nothing behind: (blocked, code, detail)."""
    env = dict(os.environ, PGCONNECT_TIMEOUT="10")
    env.pop("PGPASSWORD", None)
    if password:
        env["PGPASSWORD"] = password
    where = ["-h", "127.0.0.1", "-p", str(int(pgb.get("port") or 6432))] if pgb else ["-h", "/var/run/postgresql"]
    rc, _, err = run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", *where, "-U", user,
                      "-d", db, "-c", "BEGIN", "-c", "CREATE TEMP TABLE mayday_write_probe (x int)",
                      "-c", "ROLLBACK"], env=env)
    if rc == 0:
        return False, "", "the write went through"
    code = re.search(r"ERROR:\s+([0-9A-Z]{5}):", err)
    return True, code.group(1) if code else "", err.strip().splitlines()[0][:200] if err.strip() else f"rc {rc}"


# -- MariaDB -----------------------------------------------------------------------------------
def my_read_only():
    return "on" if sql([*MARIADB, "-e", "SELECT @@global.read_only"]) == "1" else "off"


def my_sessions(db):
    """Sessions using the database (read_only applies to each at its next statement)."""
    return int(sql([*MARIADB, "-e", "SELECT COUNT(*) FROM information_schema.processlist "
                                    f"WHERE db = '{db}' AND id <> CONNECTION_ID()"]) or 0)


def my_probe(db, user, password):
    env = dict(os.environ)
    env.pop("MYSQL_PWD", None)
    if password:
        env["MYSQL_PWD"] = password
    client = ["mariadb", "--batch", "--skip-column-names", "--connect-timeout=10", "-h", "127.0.0.1",
              "--protocol=TCP", "-u", user, db]
    tables = ("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() "
              "AND table_type = 'BASE TABLE' ORDER BY 1 LIMIT 1")
    rc, out, err = run([*client, "-e", tables], env=env)
    if rc != 0:
        return True, (re.findall(r"ERROR (\d+)", err) or [""])[0], f"could not connect as {user}: {err.strip()[:200]}"
    table = out.strip()
    write = (f"DELETE FROM `{table.replace('`', '``')}` WHERE 1 = 0" if table
             else "DROP TABLE IF EXISTS mayday_write_probe_never_created")
    rc, _, err = run([*client, "-e", write], env=env)
    if rc == 0:
        return False, "", "the write went through"
    return True, (re.findall(r"ERROR (\d+)", err) or [""])[0], err.strip().splitlines()[-1][:200]


# -- the switch --------------------------------------------------------------------------------
def main():
    module = AnsibleModule(
        argument_spec={
            "engine": {"type": "str", "choices": ["mariadb", "postgresql"], "required": True},
            "database": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["on", "off"], "required": True},
            "app_user": {"type": "str", "required": True},
            "app_password": {"type": "str", "no_log": True},
            "pgbouncer": {"type": "dict"},
            "pgbouncer_admin_password": {"type": "str", "no_log": True},
            **LEASED_CHANGE_ARGS,
        },
        supports_check_mode=True,
    )
    p = module.params
    host = p["host_label"] or socket.gethostname()
    engine, db, state = p["engine"], p["database"], p["state"]
    key = f"db-read-only:{engine}:{db}"
    leases = Leases()
    report = {"engine": engine, "database": db, "state": state, "warnings": []}
    changed = False

    def refuse(why):
        module.fail_json(msg=f"{host}: {why}", refused=True, changed=False, report=dict(report, error=why),
                         summary=f"{host}: refused, nothing changed: {why}")

    try:
        check_name(db)
        if not p["app_user"]:
            raise ModeError("no application role to prove the switch with (db_read_only_app_user)")
        seconds = 0
        if state == "on":
            seconds = check_bounds(parse_duration(p["duration"]), parse_duration(p["lease_min"]),
                                   parse_duration(p["lease_max"]))
        pgb = dict(p["pgbouncer"] or {}) if engine == "postgresql" else {}
        console = Console(pgb.get("port") or 6432, pgb.get("admin_user") or "postgres",
                          p["pgbouncer_admin_password"]) if pgb else None

        def seen():
            doc = {}
            if engine == "postgresql":
                doc["read_only"] = pg_read_only(db) or "off (not set)"
                doc["sessions"] = pg_sessions(db)
                if console:
                    doc["pgbouncer"] = snapshot(console, db)
            else:
                doc["read_only"] = my_read_only()
                doc["sessions"] = my_sessions(db)
            lease = leases.by_key(key)
            doc["lease"] = {k: lease[k] for k in ("id", "expires", "incident")} if lease else None
            return doc

        before = seen()
        report["before"] = before
    except (ModeError, LeaseError, ConsoleError) as exc:
        refuse(str(exc))

    is_on = before["read_only"] == "on"
    if module.check_mode:
        if state == "on":
            would = ("read-only already; " if is_on else "switch read-only, recycle sessions; ") + (
                f"move lease {before['lease']['id']} to {format_duration(seconds)} from now" if before["lease"]
                else f"lease of {format_duration(seconds)}")
        else:
            would = ("release lease " + before["lease"]["id"] if before["lease"] else
                     "switch read-write" if is_on else "nothing (read-write, no lease)")
        report["would"] = would
        module.exit_json(changed=state == "on" or is_on or bool(before["lease"]), report=report, msg=would,
                         summary=f"{host}: would {would}")

    if engine == "postgresql":
        undo = [pg(f'ALTER DATABASE "{db}" RESET default_transaction_read_only'), *pg_recycle_argv(db, console)]
    else:
        undo = [[*MARIADB, "-e", "SET GLOBAL read_only = OFF"]]
    password = p["pgbouncer_admin_password"] if engine == "postgresql" and pgb else None
    env = {"PGPASSWORD": password} if password else {}
    try:
        if state == "on":
            # The lease first: whatever happens next, the host reverts the switch at expiry.
            install()
            lease, _ = leases.grant(key, p["incident"], f"{engine} database {db} read-only", undo, seconds,
                                    env=env, kind="read-only")
            changed = True
            report["lease"] = {k: lease[k] for k in ("id", "expires", "incident")}
            if engine == "postgresql":
                sql(pg(f'ALTER DATABASE "{db}" SET default_transaction_read_only = on'))
                if console:
                    try:
                        console.reconnect(db)
                    except ConsoleError as exc:
                        report["warnings"].append(f"pgbouncer RECONNECT {db}: {exc}")
                report["recycled"] = int(sql(pg(pg_terminate_sql(db))) or 0)
            else:
                sql([*MARIADB, "-e", "SET SESSION lock_wait_timeout = 10; SET GLOBAL read_only = ON"], timeout=30)
        else:
            lease = leases.by_key(key)
            if lease:
                leases.release(lease["id"], revert=True)
                report["released"] = {k: lease[k] for k in ("id", "expires", "incident")}
                changed = True
            elif is_on:
                record = {"revert": undo, "env": env}
                ok, detail = leases.run_revert(record, attempts=1)
                if not ok:
                    raise ModeError(f"switching back failed: {detail}")
                changed = True
        blocked, code, detail = (pg_probe(db, p["app_user"], p["app_password"], pgb) if engine == "postgresql"
                                 else my_probe(db, p["app_user"], p["app_password"]))
        expected = PG_READ_ONLY if engine == "postgresql" else MARIADB_READ_ONLY
        report["probe"] = {"as": p["app_user"], "blocked": blocked, "code": code, "detail": detail}
        report["after"] = seen()
    except (ModeError, LeaseError, ConsoleError) as exc:
        report["error"] = str(exc)
        module.fail_json(msg=f"{host}: {exc}", changed=changed, report=report,
                         summary=f"{host}: read-{'only' if state == 'on' else 'write'} switch failed: {exc}"
                         + (f"; lease {report['lease']['id']} still reverts it" if report.get("lease") else ""))

    if state == "on":
        if not (blocked and code == expected):
            outcome = f"failed with {code or '?'}" if blocked else "went through"
            module.fail_json(msg=f"{host}: {db} not proven read-only: a write as {p['app_user']} {outcome} "
                                 f"(expected {expected})",
                             changed=changed, report=report,
                             summary=f"{host}: read-only NOT proven ({detail}); lease {lease['id']} reverts at "
                                     f"{lease['expires']}")
        msg = (f"{engine} {db} read-only, proven (a write as {p['app_user']} fails with {code}); lease {lease['id']} "
               f"reverts it at {lease['expires']}")
    else:
        if blocked:
            module.fail_json(msg=f"{host}: {db} still refuses a write as {p['app_user']} ({code}: {detail})",
                             changed=changed, report=report, summary=f"{host}: read-write NOT proven ({detail})")
        msg = (f"{engine} {db} read-write, proven (a write as {p['app_user']} goes through)"
               + (f"; lease {report['released']['id']} released" if report.get("released") else
                  "" if changed else "; it already was, no lease"))
    module.exit_json(changed=changed, report=report, msg=msg, summary=f"{host}: {msg}")


if __name__ == "__main__":
    main()
