"""PostgreSQL backups and restores that can be trusted (issue 7): on pg1 of the lab, through the CLI.

- a backup taken while the app writes (pgbench through pgbouncer) restores and verifies;
- owners, grants, database settings and sequence values of an application role survive a restore;
- hostile table names (quotes, semicolons, newlines, `%`, `_`, an injection attempt) back up and restore.

The lab's `app` database is owned by the app's own role `app`; the tests add objects of that role, a
grant to another role and a database setting, and remove them again afterwards. Tables are small
(a restore takes seconds).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import lab_helpers
import pytest
from lab_helpers import (
    BACKUP_DIR,
    DOCKER,
    KEPT_DB_PREFIX,
    MODULE_UTILS,
    POSTGRES,
    SHADOW_DB,
    Mayday,
    docker,
    wait_db_answers,
)

pytestmark = pytest.mark.usefixtures("lab_up")

DB = POSTGRES
PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"
HOSTILE = ["it's", 'dq"uote', "semi;colon", "new\nline", "tab\tbed", "pct%_under", "back`tick",
           'x"; CREATE DATABASE pwned; --']
# The lab's `app` database is owned by the app's own role `app` (playbooks/lab/setup.yml), which owns
# web_heartbeats (written by the web hosts' health check). The tests add objects of that role.
SETUP = [
    "DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app_reader') "
    "THEN CREATE ROLE app_reader; END IF; END$$",
    "DROP DATABASE IF EXISTS pwned",
    "ALTER DATABASE app SET work_mem = '7MB'",
    "GRANT CONNECT ON DATABASE app TO app_reader",
]
TEARDOWN = [
    "ALTER DATABASE app RESET work_mem",
    "REVOKE CONNECT ON DATABASE app FROM app_reader",
    "DROP ROLE IF EXISTS app_reader",
]
APP_OBJECTS = """
DROP VIEW IF EXISTS big_orders;
DROP FUNCTION IF EXISTS order_total();
DROP TABLE IF EXISTS orders, load_events;
SET ROLE app;
CREATE TABLE orders (id serial PRIMARY KEY, amount int NOT NULL);
INSERT INTO orders (amount) SELECT g FROM generate_series(1, 3000) g;
CREATE VIEW big_orders AS SELECT id, amount FROM orders WHERE amount > 100;
CREATE FUNCTION order_total() RETURNS bigint LANGUAGE sql AS 'SELECT sum(amount) FROM orders';
CREATE TABLE load_events (id serial PRIMARY KEY, note text NOT NULL);
GRANT SELECT ON orders, big_orders TO app_reader;
RESET ROLE;
"""
DROP_OBJECTS = ("DROP VIEW IF EXISTS big_orders; DROP FUNCTION IF EXISTS order_total(); "
                "DROP TABLE IF EXISTS orders, load_events")
LOAD_SCRIPT = "INSERT INTO load_events (note) VALUES ('tick-' || :client_id);\n"


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"rc={result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"


def one(query: str, db: str = "app") -> str:
    return DB.sql(query, db=db).strip()


def hostile_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def backup_files() -> set[str]:
    return set(DB.bash(f"ls -1A {BACKUP_DIR} 2>/dev/null || true").split("\n")) - {""}


def take_backup(mayday: Mayday) -> dict[str, Any]:
    return lab_helpers.take_backup(mayday, DB)


def restore_recovered(mayday: Mayday, manifest: dict[str, Any]) -> dict[str, Any]:
    result = mayday.run("restore", "--limit", DB.host, timeout=600)
    report = mayday.last_report()
    assert result.returncode == 0 and report["outcome"] == "RECOVERED", f"{output(result)}\n{report}"
    detail = dict((report.get("results") or {}).get(DB.host) or {})
    detail.update(detail.pop("report", None) or {})
    assert detail.get("backup") == manifest["id"], detail
    assert not DB.exists(SHADOW_DB)
    assert DB.writable()
    return detail


# Written by the web hosts' health check, which the restore runs after the swap.
APP_WRITTEN = "public.web_heartbeats"


def manifest_counts(manifest: dict[str, Any]) -> dict[str, int]:
    return {key: v["rows"] for key, v in manifest["tables"].items() if not key.startswith("@") and key != APP_WRITTEN}


def live_counts(manifest: dict[str, Any]) -> dict[str, int]:
    """Row counts of the live database for every table the manifest holds (keys are quoted names)."""
    return {key: int(one(f"SELECT count(*) FROM {key}")) for key in manifest_counts(manifest)}


def catalog_state() -> dict[str, str]:
    """Owners, grants, settings and the sequence value, as pg_catalog says."""
    return {
        "db_owner": one("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'", db="postgres"),
        "db_acl": one("SELECT string_agg(a::text, ',' ORDER BY a::text) FROM pg_database, unnest(datacl) a "
                      "WHERE datname = 'app'", db="postgres"),
        "db_settings": one("SELECT string_agg(array_to_string(setconfig, ','), ';') FROM pg_db_role_setting s "
                           "JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = 'app'", db="postgres"),
        "relations": one("SELECT string_agg(c.relname || ':' || c.relkind::text || ':' "
                         "|| pg_get_userbyid(c.relowner) || ':' "
                         "|| coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text) "
                         "FROM unnest(c.relacl) a), '-'), ' ' "
                         "ORDER BY c.relname) FROM pg_class c "
                         "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'v', 'S')"),
        "function": one("SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'order_total'"),
        "sequence": one("SELECT last_value || ':' || is_called FROM orders_id_seq"),
    }


@pytest.fixture(scope="module")
def app_db() -> Iterator[None]:
    """`app` (owned by the role app) with more objects of that role, a grant and a setting."""
    wait_db_answers(DB)
    files_before = backup_files()
    databases_before = set(DB.databases())
    for statement in SETUP:
        DB.sql(statement)
    DB.sql(APP_OBJECTS, db="app")
    try:
        yield
    finally:
        for name in sorted(set(DB.databases()) - databases_before):
            if name.startswith(KEPT_DB_PREFIX):
                DB.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        DB.sql(DROP_OBJECTS + "".join(f"; DROP TABLE IF EXISTS {hostile_ident(n)}" for n in HOSTILE), db="app")
        for statement in TEARDOWN:
            DB.sql(statement)
        mine = sorted(backup_files() - files_before)
        if mine:
            DB.bash(f"cd {BACKUP_DIR} && rm -f -- " + " ".join(f"'{f}'" for f in mine))


def test_backup_under_write_load_restores(app_db: None, mayday: Mayday) -> None:
    docker("exec", "-i", DB.container, "sh", "-c", "cat > /tmp/mayday-load.sql", input_text=LOAD_SCRIPT)
    rows_before = int(one("SELECT count(*) FROM load_events"))
    load = subprocess.Popen([DOCKER, "exec", DB.container,
                             "runuser", "-u", "postgres", "--", PGBENCH, "-n", "-h", "127.0.0.1", "-p", "6432",
                             "-c", "2", "-T", "20", "-f", "/tmp/mayday-load.sql", "app"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while int(one("SELECT count(*) FROM load_events")) < rows_before + 50:  # the load is writing
            assert load.poll() is None and time.monotonic() < deadline, load.communicate()
            time.sleep(0.2)
        manifest = take_backup(mayday)
        assert load.poll() is None, "the write load ended before the backup did: the test proves nothing"
    finally:
        out, err = load.communicate(timeout=60)
    assert load.returncode == 0, f"pgbench failed:\n{out}\n{err}"
    rows_after = int(one("SELECT count(*) FROM load_events"))
    in_backup = manifest["tables"]["public.load_events"]["rows"]
    assert rows_before < in_backup < rows_after, (rows_before, in_backup, rows_after)

    restore_recovered(mayday, manifest)
    counts = live_counts(manifest)
    assert counts == manifest_counts(manifest)
    assert counts["public.load_events"] == in_backup


def test_owners_grants_settings_survive(app_db: None, mayday: Mayday) -> None:
    DB.sql("SELECT nextval('orders_id_seq') FROM generate_series(1, 17)", db="app")  # a gap: value != max(id)
    before = catalog_state()
    assert before["db_owner"] == "app" and "app_reader=c/app" in before["db_acl"], before
    assert "work_mem=7MB" in before["db_settings"] and "orders:r:app" in before["relations"], before
    assert "app_reader=r/app" in before["relations"] and before["function"] == "app", before
    manifest = take_backup(mayday)

    # What a bad day changes after the backup: rows and a sequence value (the restore must bring back both).
    DB.sql("DELETE FROM orders WHERE id % 3 = 0; SELECT setval('orders_id_seq', 99999)", db="app")
    restore_recovered(mayday, manifest)
    assert catalog_state() == before
    assert live_counts(manifest)["public.orders"] == 3000


def create_hostile_tables() -> None:
    for n, name in enumerate(HOSTILE):
        table = hostile_ident(name)
        DB.sql(f"DROP TABLE IF EXISTS {table}; SET ROLE app; CREATE TABLE {table} (id int PRIMARY KEY, note text); "
               f"INSERT INTO {table} SELECT g, {n} || ':' || g FROM generate_series(1, {100 + n}) g; RESET ROLE",
               db="app")


def test_hostile_table_names(app_db: None, mayday: Mayday) -> None:
    create_hostile_tables()  # dropped again by app_db's teardown
    manifest = take_backup(mayday)
    keys = {k for k in manifest["tables"] if not k.startswith("@")}
    assert {f"public.{hostile_ident(n)}" for n in HOSTILE} <= keys, keys
    for name in HOSTILE:
        DB.sql(f"DELETE FROM {hostile_ident(name)} WHERE id % 2 = 0", db="app")
    restore_recovered(mayday, manifest)
    counts = live_counts(manifest)
    for n, name in enumerate(HOSTILE):
        assert counts[f"public.{hostile_ident(name)}"] == 100 + n, name
    assert not DB.exists("pwned"), "a table name was run as SQL"


def on_host(script: str, timeout: float = 120) -> list[str]:
    """Runs a python3 script on pg1 with this checkout's engine importable (as the module ships it)."""
    DB.bash("mkdir -p /tmp/mayday-pf")
    for name in ("mayday_db_postgres.py", "mayday_db_common.py"):
        docker("cp", f"{MODULE_UTILS}/{name}", f"{DB.container}:/tmp/mayday-pf/{name}")
    prelude = ("import sys, time; sys.path.insert(0, '/tmp/mayday-pf')\n"
               "from mayday_db_postgres import Postgres; from mayday_db_common import DbError\n")
    return docker("exec", DB.container, "python3", "-c", prelude + script, timeout=timeout).stdout.splitlines()


def test_preflight_refuses_long_names(app_db: None) -> None:
    """The engine's own pre-flight: names over 63 bytes and a kept name in use are refused."""
    lines = on_host(
        "pg = Postgres({'database': 'app'})\n"
        "for args in (('a' * 60, 'a' * 60 + '__mayday_shadow', 'k'), ('app', 'app__mayday_shadow', 'app')):\n"
        "    try:\n        pg.preflight_restore(*args)\n        print('passed')\n"
        "    except DbError as exc:\n        print('refused', exc)\n"
        "pg.preflight_restore('app', 'app__mayday_shadow', 'app__mayday_pre_x'); print('ok')\n")
    assert [line.split()[0] for line in lines] == ["refused", "refused", "ok"], lines


def end_sleepers(proc: subprocess.Popen[str]) -> None:
    """Ends a holding session: its docker exec client and its server backend (still in pg_sleep)."""
    proc.kill()
    proc.wait()
    DB.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'SELECT pg\\_sleep(60)%'")


def test_swap_lock_wait_is_bounded() -> None:
    """A session holding a lock on the database: the swap gives up after the "lock" timeout, naming it."""
    DB.sql("DROP DATABASE IF EXISTS mayday_probe WITH (FORCE)")
    DB.sql("CREATE DATABASE mayday_probe")
    holder = subprocess.Popen([DOCKER, "exec", "-i", DB.container, "runuser", "-u", "postgres", "--", "psql", "-X",
                               "-q", "-d", "postgres"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdin is not None
        holder.stdin.write("BEGIN;\nCOMMENT ON DATABASE mayday_probe IS 'held';\nSELECT pg_sleep(60);\n")
        holder.stdin.flush()
        deadline = time.monotonic() + 15
        while one("SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.objid "
                  "WHERE l.locktype = 'object' AND d.datname = 'mayday_probe' AND l.granted", db="postgres") == "0":
            assert time.monotonic() < deadline, "the holder never took its lock"
            time.sleep(0.2)
        lines = on_host(
            "pg = Postgres({'database': 'mayday_probe', 'timeouts': {'lock': 2}})\n"
            "t = time.monotonic()\n"
            "try:\n    pg.swap('mayday_probe', 'mayday_probe_s', 'mayday_probe_k'); print('swapped')\n"
            "except DbError as exc:\n    print(round(time.monotonic() - t), exc)\n")
    finally:
        end_sleepers(holder)
        DB.sql("DROP DATABASE IF EXISTS mayday_probe WITH (FORCE)")
    assert len(lines) == 1 and lines[0] != "swapped", lines
    seconds, message = lines[0].split(" ", 1)
    assert int(seconds) <= 6 and "timed out" in message and "mayday_probe" in message, lines
    assert DB.exists("app") and not DB.exists("mayday_probe_k")


def test_pgbouncer_pause_is_bounded(app_db: None) -> None:
    """A client sitting in a transaction through pgbouncer: PAUSE gives up after the "pause" timeout."""
    client = subprocess.Popen([DOCKER, "exec", "-i", DB.container, "runuser", "-u", "postgres", "--", "psql", "-X",
                               "-q", "-h", "127.0.0.1", "-p", "6432", "-d", "app"], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    try:
        assert client.stdin is not None
        client.stdin.write("BEGIN;\nSELECT count(*) FROM orders;\nSELECT pg_sleep(60);\n")
        client.stdin.flush()
        deadline = time.monotonic() + 15
        while one("SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND query LIKE 'SELECT pg_sleep%'",
                  db="postgres") == "0":
            assert time.monotonic() < deadline, "the client never started its transaction"
            time.sleep(0.2)
        lines = on_host(
            "pg = Postgres({'database': 'app', 'pgbouncer': {'port': 6432}, 'timeouts': {'pause': 2}})\n"
            "t = time.monotonic()\n"
            "try:\n    pg.bouncer.pause('app'); print('paused')\n"
            "except DbError as exc:\n    print(round(time.monotonic() - t), exc)\n"
            "finally:\n    pg.bouncer.resume('app')\n")
    finally:
        end_sleepers(client)
    assert len(lines) == 1 and lines[0] != "paused", lines
    seconds, message = lines[0].split(" ", 1)
    assert int(seconds) <= 6 and "timed out" in message and "PAUSE" in message, lines
    show = DB.bash("runuser -u postgres -- psql -X -q -A -F '|' -h 127.0.0.1 -p 6432 -d pgbouncer -c 'SHOW DATABASES'")
    header, *rows = [line.split("|") for line in show.splitlines() if "|" in line]
    app = [dict(zip(header, row, strict=False)) for row in rows if row[0] == "app"]
    assert app and app[0]["paused"] == "0", f"app left paused in pgbouncer: {show}"
