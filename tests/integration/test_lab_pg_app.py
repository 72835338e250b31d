"""The lab's sample app uses PostgreSQL too: through pgbouncer on pg1, as its own role.

Every /health-check writes and reads the web host's row in `web_heartbeats` (a table the app's role
created and owns) through pgbouncer, besides its MariaDB query, and answers healthy only when both
databases answer; its JSON names the part that failed. A PostgreSQL regression the app would see
(the server down, pgbouncer refusing or holding the app, a restore that loses the app's ownership)
shows as unhealthy. A fleet whose inventory has no PostgreSQL host gets an app config without it,
and its health check leaves PostgreSQL out.

Touches pg1 (services, pgbouncer state, backups and restores of `app`) and web1's app config; puts
everything back as it found it. Every test has its own MAYDAY_STATE_DIR.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import (
    ANSIBLE_PLAYBOOK,
    BACKUP_DIR,
    DB_HOST,
    DB_INI,
    KEPT_DB_PREFIX,
    LAB_HOSTS,
    PG_HOST,
    POSTGRES,
    PREFIX,
    ROOT,
    WEB_HOSTS,
    Mayday,
    base_env,
    dexec,
    docker,
    health,
    lab_inventory_args,
)

pytestmark = pytest.mark.usefixtures("lab_up")

APP_ROLE = "app"
TABLE = "web_heartbeats"
PG_UNIT = "postgresql@15-main"
ANSWER_WITHIN = 8.0  # seconds: connect_timeout 2 s and a 2 s query deadline, plus PHP, nginx and a busy machine


def pgbouncer(command: str) -> list[list[str]]:
    """A command on pgbouncer's admin console (loopback on pg1); rows split on tabs, no header."""
    out = docker("exec", PREFIX + PG_HOST, "runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t",
                 "-F", "\t", "-h", "127.0.0.1", "-p", "6432", "-U", "postgres", "-d", "pgbouncer", "-c", command,
                 timeout=30).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def pgbouncer_servers() -> list[dict[str, str]]:
    out = docker("exec", PREFIX + PG_HOST, "runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-F", "\t",
                 "-P", "footer=off", "-h", "127.0.0.1", "-p", "6432", "-U", "postgres", "-d", "pgbouncer",
                 "-c", "SHOW SERVERS", timeout=30).stdout.splitlines()
    header = out[0].split("\t") if out else []
    return [dict(zip(header, line.split("\t"), strict=False)) for line in out[1:] if line]


def heartbeat(host: str) -> tuple[str, int] | None:
    """(release, hits) of a web host's heartbeat row, read on pg1 as the superuser; None without one."""
    out = POSTGRES.sql(f"SELECT release, hits FROM {TABLE} WHERE host = '{host}'", db="app").strip()
    if not out:
        return None
    release, hits = out.split("\t")
    return release, int(hits)


def assert_wrote_heartbeat(host: str, before: tuple[str, int] | None, doc: dict[str, Any]) -> None:
    """The health check just answered wrote the host's row: its release, one hit more at least (mon1's
    Prometheus, when an earlier file configured it, probes the same URL every 5 s)."""
    after = heartbeat(host)
    assert after is not None and after[0] == doc["version"], (before, after)
    assert after[1] >= (before[1] if before else 0) + 1, (before, after)


def owners() -> dict[str, str]:
    return {
        "database": POSTGRES.sql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'").strip(),
        TABLE: POSTGRES.sql(f"SELECT tableowner FROM pg_tables WHERE schemaname = 'public' AND tablename = '{TABLE}'",
                            db="app").strip(),
    }


def timed_health(host: str) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    doc = health(host)
    return doc, time.monotonic() - started


def wait_health(host: str, status: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc = health(host)
        if doc.get("status") == status:
            return doc
        assert time.monotonic() < deadline, f"{host} not {status} within {timeout:.0f} s: {doc}"
        time.sleep(0.3)


def assert_only_postgresql_failed(doc: dict[str, Any]) -> None:
    assert doc.get("status") == "unhealthy", doc
    assert doc.get("failed") == ["postgresql"], doc
    assert doc.get("checks", {}).get("mariadb") == "ok", doc


def put_back_postgresql() -> None:
    """PostgreSQL and pgbouncer running, the app database enabled and resumed in pgbouncer."""
    dexec(PG_HOST, f"systemctl reset-failed; systemctl start {PG_UNIT} pgbouncer")
    for command in ("RESUME app", "ENABLE app"):
        docker("exec", PREFIX + PG_HOST, "runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-h", "127.0.0.1",
               "-p", "6432", "-U", "postgres", "-d", "pgbouncer", "-c", command, check=False, timeout=30)


@pytest.fixture(autouse=True)
def healthy_app(lab_up: None) -> Iterator[None]:
    """Every web host healthy with PostgreSQL in use, before and after each test."""
    put_back_postgresql()
    for host in WEB_HOSTS:
        doc = wait_health(host, "healthy")
        assert doc.get("checks", {}).get("postgresql") == "ok", f"{host} does not use PostgreSQL: {doc}"
    yield
    put_back_postgresql()
    for host in WEB_HOSTS:
        wait_health(host, "healthy")


def test_app_writes_postgresql_through_pgbouncer_as_its_own_role() -> None:
    assert owners() == {"database": APP_ROLE, TABLE: APP_ROLE}
    assert POSTGRES.sql(f"SELECT rolsuper FROM pg_roles WHERE rolname = '{APP_ROLE}'").strip() == "f"
    count = f"SELECT count(*) FROM {TABLE}"
    rows_before = POSTGRES.sql(count, db="app").strip()
    # Earlier files on this lab went through pgbouncer as postgres (pgbench, restores' write probes), and
    # pgbouncer keeps such idle server connections for minutes: closed first, so only the app's are seen.
    pgbouncer("RECONNECT app")
    deadline = time.monotonic() + 15
    while any(s.get("user") != APP_ROLE for s in pgbouncer_servers() if s.get("database") == "app"):
        assert time.monotonic() < deadline, pgbouncer_servers()
        time.sleep(0.3)
    for host in WEB_HOSTS:
        before = heartbeat(host)
        doc = health(host)
        assert doc.get("status") == "healthy" and doc["checks"]["postgresql"] == "ok", doc
        assert_wrote_heartbeat(host, before, doc)
    # One row per web host, there since the lab's set-up: probes update it (a restore's row counts hold).
    assert POSTGRES.sql(count, db="app").strip() == rows_before == str(len(WEB_HOSTS))
    # pgbouncer logs in to PostgreSQL as the app's role, not as a superuser standing in for it.
    servers = [(s.get("user"), s.get("database")) for s in pgbouncer_servers()]
    assert (APP_ROLE, "app") in servers, servers
    assert all(user == APP_ROLE for user, database in servers if database == "app"), servers


def test_pgbouncer_lets_only_the_app_role_in_from_the_lab_network() -> None:
    # Run on web1 with the app's own credentials file (the password is never printed).
    probe = r"""
        $cfg = parse_ini_file('DB_INI');
        function attempt(string $user, string $password): string {
            $c = @pg_connect("host=pg1 port=6432 dbname=app connect_timeout=2 user=$user password='$password'",
                             PGSQL_CONNECT_FORCE_NEW);
            if ($c === false) { return 'refused'; }
            $r = @pg_query($c, 'SELECT current_user');
            return $r === false ? 'refused' : pg_fetch_result($r, 0, 0);
        }
        echo json_encode(['app' => attempt($cfg['pg_user'], $cfg['pg_password']),
                          'app_wrong_password' => attempt($cfg['pg_user'], 'wrong'),
                          'postgres' => attempt('postgres', '')]);
    """.replace("DB_INI", DB_INI)
    out = docker("exec", PREFIX + "web1", "php", "-r", probe, timeout=30).stdout
    assert json.loads(out) == {"app": APP_ROLE, "app_wrong_password": "refused", "postgres": "refused"}


def test_backup_directory_is_root_only() -> None:
    for host in LAB_HOSTS:
        assert dexec(host, f"stat -c '%a %U %G' {BACKUP_DIR}").strip() == "700 root root", host


def test_unhealthy_while_postgresql_is_down_healthy_when_back() -> None:
    dexec(PG_HOST, f"systemctl stop {PG_UNIT}")
    for host in WEB_HOSTS:
        doc, took = timed_health(host)
        assert_only_postgresql_failed(doc)
        assert took < ANSWER_WITHIN, f"{host} took {took:.1f} s to answer"
    dexec(PG_HOST, f"systemctl start {PG_UNIT}")
    for host in WEB_HOSTS:
        assert wait_health(host, "healthy")["checks"]["postgresql"] == "ok"


@pytest.mark.parametrize(("refuse", "allow"), [
    ("psql:DISABLE app", "psql:ENABLE app"),  # new connections to the app database rejected
    ("psql:PAUSE app", "psql:RESUME app"),  # connections held without an answer, as a restore's swap does
    ("systemctl stop pgbouncer", "systemctl start pgbouncer"),
], ids=["disabled", "paused", "stopped"])
def test_unhealthy_when_pgbouncer_refuses_the_app(refuse: str, allow: str) -> None:
    def run(action: str) -> None:
        if action.startswith("psql:"):
            pgbouncer(action.removeprefix("psql:"))
        else:
            dexec(PG_HOST, action)

    run(refuse)
    try:
        for host in WEB_HOSTS:
            doc, took = timed_health(host)
            assert_only_postgresql_failed(doc)
            assert took < ANSWER_WITHIN, f"{host} took {took:.1f} s to answer"
    finally:
        run(allow)
    for host in WEB_HOSTS:
        assert wait_health(host, "healthy")["checks"]["postgresql"] == "ok"


def test_backup_then_restore_leaves_the_app_healthy(mayday: Mayday) -> None:
    kept_before = {name for name in POSTGRES.databases() if name.startswith(KEPT_DB_PREFIX)}
    try:
        backup = mayday.run("backup", "--limit", PG_HOST, timeout=300)
        assert backup.returncode == 0, backup.stdout + backup.stderr
        health("web1")  # a write after the backup: the restore has rows to put back
        restore = mayday.run("restore", "--limit", PG_HOST, timeout=300)
        assert restore.returncode == 0, restore.stdout + restore.stderr
        assert mayday.last_report()["outcome"] == "RECOVERED", mayday.last_report()
        assert owners() == {"database": APP_ROLE, TABLE: APP_ROLE}
        for host in WEB_HOSTS:
            before = heartbeat(host)
            doc = health(host)
            assert doc.get("status") == "healthy" and doc["checks"]["postgresql"] == "ok", doc
            assert_wrote_heartbeat(host, before, doc)
    finally:
        for name in set(POSTGRES.databases()) - kept_before:
            if name.startswith(KEPT_DB_PREFIX):
                POSTGRES.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_fleet_without_postgresql_leaves_it_out_of_the_health_check(tmp_path: Path) -> None:
    """bench/level1's fleets: web hosts and db1, no pg host. Set up so, web1 answers healthy on MariaDB
    alone; the lab's own set-up brings PostgreSQL back into its config."""
    inventory = tmp_path / "fleet"
    inventory.mkdir()
    (inventory / "hosts.yml").write_text(
        "all:\n  children:\n"
        f"    web:\n      hosts:\n        web1:\n          ansible_host: {PREFIX}web1\n"
        f"    db:\n      hosts:\n        {DB_HOST}:\n          ansible_host: {PREFIX}{DB_HOST}\n")
    (inventory / "group_vars").symlink_to(ROOT / "inventories" / "lab" / "group_vars")
    try:
        out = subprocess.run([ANSIBLE_PLAYBOOK, "-i", str(inventory), str(ROOT / "playbooks" / "lab" / "setup.yml")],
                             cwd=ROOT, env=base_env(tmp_path / "state"), capture_output=True, text=True, check=False,
                             timeout=300)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
        assert dexec("web1", f"grep -c '^pg_' {DB_INI}", check=False).strip() == "0"
        doc = health("web1")
        assert doc.get("status") == "healthy", doc
        assert doc["checks"] == {"api": "ok", "mariadb": "ok", "postgresql": "not used"}, doc
    finally:  # the lab's own set-up, on web1 alone
        out = subprocess.run([ANSIBLE_PLAYBOOK, str(ROOT / "playbooks" / "lab" / "setup.yml"), "--limit", "web1",
                              *lab_inventory_args()], cwd=ROOT, env=base_env(), capture_output=True, text=True,
                             check=False, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert dexec("web1", f"grep -c '^pg_' {DB_INI}").strip() == "5"
    assert health("web1")["checks"]["postgresql"] == "ok"
