"""Dry runs (`--check`) of every Level 2 component, of `mayday backup` and of `mayday restore`, on the lab.

Each test first breaks the thing for real (as molecule/level2-components/prepare.yml does: an API
configuration with a syntax error, a frontend file removed and a stray one added, recent webhook
rows; for the databases, rows changed since the backup and, for the backup, old backups due for
retention), then takes a snapshot of every lab host, runs the dry run and takes the snapshot again.
A dry run must change nothing: the two snapshots are equal (live release, API configuration
directory with names, sha256, modes and owners, frontend tree, service main PIDs, and on the
database hosts the databases, PostgreSQL `datallowconn`, pgbouncer's pause, MariaDB
`@@global.read_only`, the app tables' row counts and the files in /var/backups/mayday); no run lock
is left on any host nor on the controller; nothing is sent; the outcome is DRY-RUN with exit 0.
And the dry run saw what was broken (its per-host report says what a real run would do).

A dry-run restore after an interrupted one (writes left stopped, a shadow left over) keeps both as
they are; the real restore that follows resumes writes and drops the shadow.

The app databases are kept small here (a few hundred rows in `dryrun_items`): the big tables
test_db_restore.py loads are dropped first, so each backup and restore takes a second or two.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import (
    APP,
    BACKUP_DIR,
    DB_HOST,
    KEPT_DB_PREFIX,
    LAB_DBS,
    LAB_HOSTS,
    MAYDAY,
    PG_HOST,
    POSTGRES,
    PREFIX,
    ROOT,
    SHADOW_DB,
    WEB_HOSTS,
    LabDb,
    Mayday,
    base_env,
    dexec,
    docker,
    health,
    wait_db_answers,
)
from mayday_db_backups import LAST_RESTORE_FILE, STATE_FILE  # plugins/module_utils, on sys.path via lab_helpers

pytestmark = pytest.mark.usefixtures("lab_up")

HOST_LOCK = "/var/lib/mayday/run.lock"
SHARED = f"{APP}/shared"
API_CONFIG = f"{SHARED}/config"
FRONTEND = f"{SHARED}/frontend"
API_COPIES = f"{BACKUP_DIR}/api-config"
FRONTEND_COPIES = f"{BACKUP_DIR}/frontend"
TABLE = "dryrun_items"
ROWS = 400
WEBHOOK_MARK = "https://dryrun.example.test/"
# Tables test_db_restore.py loads with a million rows: dropped here so a restore takes a second.
BIG_TABLES = {"mariadb": ["orders", "customers"],
              "postgresql": ["pgbench_accounts", "pgbench_branches", "pgbench_history", "pgbench_tellers"]}

# Runs on every lab host (python3 is there for Ansible) and prints one JSON document: everything a
# dry run must leave as it was. `kind` is web, mariadb or postgresql.
SNAPSHOT = r'''
import hashlib, json, os, pwd, grp, stat, subprocess, sys

kind = sys.argv[1]

def run(*argv):
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{argv[:6]} failed: {out.stderr}")
    return out.stdout

def owner(st):
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group}"

def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

def node(path, content=True):
    st = os.lstat(path)
    doc = {"mode": stat.filemode(st.st_mode), "owner": owner(st)}
    if stat.S_ISREG(st.st_mode):
        doc["size"] = st.st_size
        doc["mtime_ns"] = st.st_mtime_ns
        if content:
            doc["sha256"] = sha256(path)
    elif stat.S_ISLNK(st.st_mode):
        doc["target"] = os.readlink(path)
    return doc

def tree(root, content=True):
    if not os.path.lexists(root):
        return None
    found = {".": dict(node(root, content), inode=os.lstat(root).st_ino)}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, root)] = node(path, content)
    return found

def main_pid(unit):
    return run("systemctl", "show", "-p", "MainPID", "--value", unit).strip()

snap = {"run_lock": os.path.lexists("/var/lib/mayday/run.lock")}
if kind == "web":
    snap["current"] = os.readlink("/var/www/app/current") if os.path.islink("/var/www/app/current") else None
    shared = "/var/www/app/shared"
    snap["shared"] = sorted(os.listdir(shared)) if os.path.isdir(shared) else None
    snap["api_config"] = tree(shared + "/config")
    frontend = tree(shared + "/frontend")
    snap["frontend_sha256"] = hashlib.sha256(json.dumps(frontend, sort_keys=True).encode()).hexdigest()
    snap["frontend"] = frontend
    snap["copies"] = {name: sorted(os.listdir("/var/backups/mayday/" + name))
                      for name in ("api-config", "frontend") if os.path.isdir("/var/backups/mayday/" + name)}
    snap["pids"] = {unit: main_pid(unit) for unit in ("nginx", "php8.2-fpm")}
else:
    # Backups can be large: their size and mtime, not their sha256.
    snap["backup_files"] = tree("/var/backups/mayday", content=False)
    if kind == "mariadb":
        sql = lambda q, db="": run("mariadb", "--batch", "--skip-column-names", *([db] if db else []), "-e", q)
        snap["databases"] = sql("SELECT schema_name FROM information_schema.schemata ORDER BY 1").split()
        snap["read_only"] = sql("SELECT @@global.read_only").strip()
        tables = sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'app' "
                     "AND table_type = 'BASE TABLE' ORDER BY 1").split()
        snap["rows"] = {t: int(sql(f"SELECT COUNT(*) FROM `{t}`", "app")) for t in tables}
        snap["pids"] = {"mariadb": main_pid("mariadb")}
    else:
        def sql(q, db="postgres", port=None):
            argv = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t", "-F", "\t",
                    "-v", "ON_ERROR_STOP=1", "-d", db, "-c", q]
            if port:
                argv[5:5] = ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
            return run(*argv)
        listed = sql("SELECT datname, datallowconn FROM pg_database ORDER BY 1")
        rows = [line.split("\t") for line in listed.splitlines()]
        snap["databases"] = [name for name, _ in rows]
        snap["datallowconn"] = dict(rows)
        if snap["datallowconn"].get("app") == "t":
            tables = sql("SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables "
                         "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1", "app").split()
            snap["rows"] = {t: int(sql(f"SELECT count(*) FROM {t}", "app")) for t in tables}
        else:  # writes stopped: no one may connect to it, superusers included
            snap["rows"] = "app does not allow connections"
        bouncer = [line.split("\t") for line in sql("SHOW DATABASES", "pgbouncer", 6432).splitlines() if line]
        snap["pgbouncer_paused"] = {line[0]: line[-2] for line in bouncer}
        snap["pids"] = {unit: main_pid(unit) for unit in ("postgresql@15-main", "pgbouncer")}
print(json.dumps(snap, sort_keys=True))
'''
KINDS = {"web1": "web", "web2": "web", DB_HOST: "mariadb", PG_HOST: "postgresql"}


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"rc={result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"


def host_snapshot(host: str) -> dict[str, Any]:
    out = docker("exec", PREFIX + host, "python3", "-c", SNAPSHOT, KINDS[host], timeout=120).stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


def lab_snapshot(hosts: tuple[str, ...] = LAB_HOSTS) -> dict[str, dict[str, Any]]:
    return {host: host_snapshot(host) for host in hosts}


def assert_same(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]], what: str) -> None:
    """Equal snapshots, with the differing keys named when they are not."""
    differences = {f"{host}.{key}": {"before": before[host].get(key), "after": after[host].get(key)}
                   for host in before for key in sorted(set(before[host]) | set(after[host]))
                   if before[host].get(key) != after[host].get(key)}
    assert not differences, f"{what} changed the hosts:\n{json.dumps(differences, indent=1)[:6000]}"


def host_result(report: dict[str, Any], host: str) -> dict[str, Any]:
    """A host's result in report.json: outcome, changed, msg, summary and the component's report keys,
    flattened (whether the report nests them under `report` or not)."""
    result = dict((report.get("results") or {}).get(host) or {})
    nested = result.pop("report", None)
    return {**(nested if isinstance(nested, dict) else {}), **result}


def controller_locks(mayday: Mayday) -> list[str]:
    locks = mayday.state_dir / "locks"
    return sorted(p.name for p in locks.iterdir()) if locks.is_dir() else []


def notification_lines(mayday: Mayday) -> int:
    path = mayday.state_dir / "notifications.jsonl"
    return len([line for line in path.read_text().splitlines() if line.strip()]) if path.exists() else 0


# --- databases -----------------------------------------------------------------------------------


def small_table_sql(db: LabDb) -> str:
    if db.engine == "mariadb":
        return (f"DROP TABLE IF EXISTS {', '.join([*BIG_TABLES['mariadb'], TABLE])}; "
                f"CREATE TABLE {TABLE} (id INT PRIMARY KEY, label VARCHAR(64) NOT NULL, "
                "amount INT NOT NULL) ENGINE=InnoDB; "
                f"INSERT INTO {TABLE} SELECT seq, CONCAT('item-', seq), seq * 3 FROM seq_1_to_{ROWS}")
    return (f"DROP TABLE IF EXISTS {', '.join([*BIG_TABLES['postgresql'], TABLE])}; "
            f"CREATE TABLE {TABLE} (id int PRIMARY KEY, label text NOT NULL, amount int NOT NULL); "
            f"INSERT INTO {TABLE} SELECT g, 'item-' || g, g * 3 FROM generate_series(1, {ROWS}) g")


def resume_writes_by_hand(db: LabDb) -> None:
    """Undoes what an interrupted restore (or an earlier failed test) left: writes stopped, a shadow."""
    if db.engine == "postgresql":
        db.sql(f"ALTER DATABASE {db.database} WITH ALLOW_CONNECTIONS true")
        pgbouncer(f"RESUME {db.database}", check=False)
    else:
        db.sql("SET GLOBAL read_only = OFF")
    db.bash(f"rm -f {BACKUP_DIR}/{STATE_FILE}")
    if db.exists(SHADOW_DB):
        drop_database(db, SHADOW_DB)


def pgbouncer(command: str, check: bool = True) -> str:
    return docker("exec", POSTGRES.container, "runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t",
                  "-h", "127.0.0.1", "-p", "6432", "-U", "postgres", "-d", "pgbouncer", "-c", command,
                  check=check, timeout=30).stdout


def drop_database(db: LabDb, name: str) -> None:
    if db.engine == "mariadb":
        db.sql(f"DROP DATABASE IF EXISTS `{name}`")
    else:
        db.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def table_rows(db: LabDb) -> dict[int, tuple[str, str]]:
    out = db.sql(f"SELECT id, label, amount FROM {TABLE} ORDER BY id", db=db.database)
    rows = {}
    for line in out.splitlines():
        key, label, amount = line.split("\t")
        rows[int(key)] = (label, amount)
    return rows


def backup_files(db: LabDb) -> set[str]:
    return set(db.bash(f"ls -1A {BACKUP_DIR} 2>/dev/null || true").split())


def forget_last_restore(db: LabDb) -> None:
    """A restore of the backup already live is a NOOP (writes made since are kept): forgetting the
    host's record of the last restore makes the live database one mayday did not restore."""
    db.bash(f"rm -f {BACKUP_DIR}/{LAST_RESTORE_FILE}")


def break_data(db: LabDb) -> None:
    """Rows changed since the backup: some deleted, some corrupted, some added."""
    forget_last_restore(db)
    db.sql(f"DELETE FROM {TABLE} WHERE id % 5 = 0 OR id = 100001; UPDATE {TABLE} SET amount = -1 WHERE id % 7 = 0; "
           f"INSERT INTO {TABLE} (id, label, amount) VALUES (100001, 'stray', 0)", db=db.database)


@dataclass
class SmallDatabases:
    backups: dict[str, dict[str, Any]]  # host -> manifest of the backup taken by the fixture
    rows: dict[str, dict[int, tuple[str, str]]]  # host -> dryrun_items when it was backed up


def prepare_databases(state_dir: Path) -> SmallDatabases:
    """Small app databases on db1 and pg1 (writes allowed, no shadow) and a fresh backup of each."""
    for db in LAB_DBS.values():
        wait_db_answers(db)
        resume_writes_by_hand(db)
        db.sql(small_table_sql(db), db=db.database, timeout=300)
    result = Mayday(state_dir).run("backup", "--json", timeout=600)
    assert result.returncode == 0, output(result)
    taken = {m["id"].split("-", 1)[0]: m for m in json.loads(result.stdout)["backups"]}
    backups = {db.host: taken[db.engine] for db in LAB_DBS.values()}
    return SmallDatabases(backups, {db.host: table_rows(db) for db in LAB_DBS.values()})


def cleanup_databases(before: dict[str, tuple[set[str], set[str]]]) -> None:
    """Drops the databases restores kept and removes the backup files written since `before`."""
    for db in LAB_DBS.values():
        databases, files = before[db.host]
        for name in sorted(set(db.databases()) - databases):
            if name.startswith(KEPT_DB_PREFIX):
                drop_database(db, name)
        new = sorted(f for f in backup_files(db) - files if not f.startswith("."))
        if new:
            db.bash(f"cd {BACKUP_DIR} && rm -f -- " + " ".join(new))


# --- web hosts -----------------------------------------------------------------------------------


def ensure_web_ready() -> None:
    """Both web hosts healthy, each with the deploy-time copies level 2 api and frontend restore."""
    def ready(host: str) -> bool:
        missing = dexec(host, f"for d in {API_COPIES} {FRONTEND_COPIES}; do "
                              "[ -n \"$(ls -A \"$d\" 2>/dev/null)\" ] || echo \"$d\"; done")
        return health(host).get("status") == "healthy" and not missing.strip()

    if not all(ready(host) for host in WEB_HOSTS):
        deploy = subprocess.run([MAYDAY, "lab", "deploy", "--release", "v1"], cwd=ROOT, env=base_env(),
                                capture_output=True, text=True, check=False, timeout=600)
        assert deploy.returncode == 0, output(deploy)
    assert all(ready(host) for host in WEB_HOSTS), "web hosts not healthy with deploy-time copies after a deploy"


# --- breaking things for real --------------------------------------------------------------------

Repair = Callable[[], None]


def break_api() -> Repair:
    """A hotfix leaves the API configuration with a syntax error (molecule's level2-components)."""
    for host in WEB_HOSTS:
        dexec(host, f"cp -a {API_CONFIG}/api.php /root/api.php.dryrun && "
                    f"echo \"<?php return ['enabled' => true,\" > {API_CONFIG}/api.php && "
                    f"! php -l {API_CONFIG}/api.php >/dev/null")

    def repair() -> None:
        for host in WEB_HOSTS:
            dexec(host, f"cp -a /root/api.php.dryrun {API_CONFIG}/api.php && rm -f /root/api.php.dryrun")
    return repair


def break_frontend() -> Repair:
    for host in WEB_HOSTS:
        dexec(host, f"mv {FRONTEND}/app.css /root/app.css.dryrun && echo 'alert(1)' > {FRONTEND}/stray.js")

    def repair() -> None:
        for host in WEB_HOSTS:
            dexec(host, f"mv /root/app.css.dryrun {FRONTEND}/app.css && rm -f {FRONTEND}/stray.js")
    return repair


def break_webhook() -> Repair:
    db = LAB_DBS["mariadb"]
    db.sql("INSERT INTO webhook_events (endpoint, payload, created_at) "
           f"SELECT CONCAT('{WEBHOOK_MARK}', seq), '{{}}', NOW() - INTERVAL seq MINUTE FROM seq_1_to_30",
           db=db.database)

    def repair() -> None:
        db.sql(f"DELETE FROM webhook_events WHERE endpoint LIKE '{WEBHOOK_MARK}%'", db=db.database)
    return repair


def break_databases() -> Repair:
    for db in LAB_DBS.values():
        break_data(db)
    return lambda: None  # later tests restore or re-create the rows themselves


def forge_old_backups(count: int = 8) -> Repair:
    """Old regular backups beyond the retention (7): a real `mayday backup` would prune them."""
    forged: dict[str, list[str]] = {}
    for db in LAB_DBS.values():
        ext = "sql" if db.engine == "mariadb" else "pgdump"
        names = []
        for i in range(count):
            when = f"20000101T0000{i:02d}Z"
            backup_id = f"{db.engine}-{db.database}-{when}"
            manifest = {"id": backup_id, "kind": "backup", "time": when, "engine": db.engine,
                        "database": db.database, "file": f"{backup_id}.{ext}", "size": 0,
                        "sha256": "0" * 64, "tables": {}}
            db.bash(f"cd {BACKUP_DIR} && : > {backup_id}.{ext} && "
                    f"printf '%s' '{json.dumps(manifest)}' > {backup_id}.manifest.json")
            names += [f"{backup_id}.{ext}", f"{backup_id}.manifest.json"]
        forged[db.host] = names

    def repair() -> None:
        for db in LAB_DBS.values():
            db.bash(f"cd {BACKUP_DIR} && rm -f -- " + " ".join(forged[db.host]))
    return repair


def break_for_backup() -> Repair:
    break_databases()
    return forge_old_backups()


# --- the dry runs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DryRun:
    name: str
    args: tuple[str, ...]
    breaks: Callable[[], Repair]
    hosts: tuple[str, ...]  # the hosts the scenario acts on (each has a result)
    saw: Callable[[dict[str, Any]], bool]  # the host's report shows what was broken


def would_restore(detail: dict[str, Any]) -> bool:
    plan = detail.get("would") or []
    return detail.get("changed") is True and detail.get("dry_run") is True and any("swap" in str(x) for x in plan)


DRY_RUNS = [
    DryRun("database", ("level2", "--component", "database"), break_databases, (DB_HOST, PG_HOST), would_restore),
    DryRun("api", ("level2", "--component", "api"), break_api, WEB_HOSTS,
           lambda d: d.get("changed") is True and "api.php" in (d.get("files_changed") or [])),
    DryRun("frontend", ("level2", "--component", "frontend"), break_frontend, WEB_HOSTS,
           lambda d: d.get("changed") is True and int(d.get("changes") or 0) >= 2),
    DryRun("webhook", ("level2", "--component", "webhook"), break_webhook, (DB_HOST,),
           lambda d: d.get("changed") is True and d.get("deleted") == 0
           and int((d.get("tables") or {}).get("webhook_events", 0)) >= 30),
    DryRun("backup", ("backup",), break_for_backup, (DB_HOST, PG_HOST),
           lambda d: d.get("changed") is True and d.get("dry_run") is True),
    DryRun("restore", ("restore",), break_databases, (DB_HOST, PG_HOST), would_restore),
]


@pytest.mark.parametrize("dry", DRY_RUNS, ids=[d.name for d in DRY_RUNS])
def test_dry_run_changes_nothing(dry: DryRun, small_dbs: SmallDatabases, web_ready: None, mayday: Mayday) -> None:
    repair = dry.breaks()
    try:
        before = lab_snapshot()
        notified = notification_lines(mayday)
        result = mayday.run(*dry.args, "--check", timeout=600)
        after = lab_snapshot()

        assert_same(before, after, f"`mayday {' '.join(dry.args)} --check`")
        assert not any(snap["run_lock"] for snap in after.values()), "a run lock is left on a host"
        assert controller_locks(mayday) == [], "a lock is left on the controller"
        assert notification_lines(mayday) == notified, "a dry run sent a notification"
        assert result.returncode == 0, output(result)
        report = mayday.last_report()
        assert report["outcome"] == "DRY-RUN", f"{output(result)}\n{report.get('summary')}"
        # `changed` says what a real run would do (roles/scenario/README.md), so the summary does too.
        assert not str(report.get("summary")).startswith("Nothing to do"), report.get("summary")
        for host in dry.hosts:
            detail = host_result(report, host)
            assert detail.get("outcome") != "FAILED" and detail.get("outcome") != "REFUSED", detail
            assert dry.saw(detail), f"the dry run on {host} did not see what was broken: {detail}"
    finally:
        repair()


REPORTED = [d for d in DRY_RUNS if d.name in ("api", "webhook")]


@pytest.mark.parametrize("dry", REPORTED, ids=[d.name for d in REPORTED])
def test_dry_run_does_not_report_hosts_recovered(dry: DryRun, small_dbs: SmallDatabases, web_ready: None,
                                                 mayday: Mayday) -> None:
    """Nothing was recovered in a dry run: no host's outcome in its report may say so."""
    repair = dry.breaks()
    try:
        result = mayday.run(*dry.args, "--check", timeout=600)
        assert result.returncode == 0, output(result)
        report = mayday.last_report()
        assert report["outcome"] == "DRY-RUN"
        for host in dry.hosts:
            detail = host_result(report, host)
            assert dry.saw(detail), detail  # the host would change: the premise of this test
            assert detail.get("outcome") != "RECOVERED", f"{host}: RECOVERED in a dry run: {detail}"
    finally:
        repair()


# --- a dry-run restore after an interrupted one --------------------------------------------------


def stop_writes_by_hand(db: LabDb) -> None:
    """What an interrupted restore leaves after `stop writes`: the module's marker, writes stopped
    (PostgreSQL: pgbouncer paused and no new connections; MariaDB: read_only)."""
    marker = json.dumps({"engine": db.engine, "database": db.database, "since": "20260101T000000Z"})
    db.bash(f"printf '%s' '{marker}' > {BACKUP_DIR}/{STATE_FILE}")
    if db.engine == "postgresql":
        pgbouncer(f"PAUSE {db.database}")
        db.sql(f"ALTER DATABASE {db.database} WITH ALLOW_CONNECTIONS false")
    else:
        db.sql("SET GLOBAL read_only = ON")


def leave_shadow(db: LabDb) -> None:
    """A shadow database half-filled by the interrupted run."""
    if db.engine == "postgresql":
        db.sql(f'CREATE DATABASE "{SHADOW_DB}"')
    else:
        db.sql(f"CREATE DATABASE `{SHADOW_DB}`")
    db.sql(f"CREATE TABLE {TABLE} (id INT PRIMARY KEY); INSERT INTO {TABLE} VALUES (1), (2), (3)", db=SHADOW_DB)


def writes_stopped(db: LabDb) -> bool:
    if db.engine == "postgresql":
        paused = [line.split("|") for line in pgbouncer("SHOW DATABASES").splitlines()]
        app_paused = [row for row in paused if row and row[0] == db.database]
        return not db.writable() and bool(app_paused) and app_paused[0][-2] == "1"
    return not db.writable()


@pytest.mark.parametrize("engine", sorted(LAB_DBS))
def test_dry_run_restore_after_an_interrupted_one(engine: str, small_dbs: SmallDatabases, web_ready: None,
                                                  mayday: Mayday) -> None:
    db = LAB_DBS[engine]
    break_data(db)
    broken_rows = table_rows(db)
    try:
        stop_writes_by_hand(db)
        leave_shadow(db)
        assert writes_stopped(db) and db.exists(SHADOW_DB)

        before = lab_snapshot((db.host,))
        dry = mayday.run("restore", "--limit", db.host, "--check", timeout=600)
        after = lab_snapshot((db.host,))
        assert dry.returncode == 0, output(dry)
        assert mayday.last_report()["outcome"] == "DRY-RUN", mayday.last_report().get("summary")
        assert_same(before, after, "`mayday restore --check` after an interrupted restore")
        assert writes_stopped(db), "the dry run resumed writes"
        assert db.exists(SHADOW_DB), "the dry run dropped the leftover shadow"
        assert db.bash(f"test -e {BACKUP_DIR}/{STATE_FILE} && echo yes || true").strip() == "yes"
        plan = " ".join(host_result(mayday.last_report(), db.host).get("would") or [])
        assert "resume writes left stopped" in plan and f"drop leftover shadow {SHADOW_DB}" in plan, plan

        real = mayday.run("restore", "--limit", db.host, timeout=600)
        assert real.returncode == 0, output(real)
        report = mayday.last_report()
        detail = host_result(report, db.host)
        assert report["outcome"] == "RECOVERED" and detail.get("outcome") == "RECOVERED", report
        assert detail.get("backup") == small_dbs.backups[db.host]["id"], detail
        assert db.writable(), "writes still stopped after the real restore"
        assert not writes_stopped(db)
        assert not db.exists(SHADOW_DB), "the leftover shadow is still there"
        assert db.bash(f"test -e {BACKUP_DIR}/{STATE_FILE} && echo yes || true").strip() == "", "marker left"
        assert table_rows(db) == small_dbs.rows[db.host] != broken_rows, "the live rows are not the backup's"
    finally:
        resume_writes_by_hand(db)
