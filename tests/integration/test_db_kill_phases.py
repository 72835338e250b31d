"""A restore killed at every phase boundary, both engines: the live database is all old or all new.

The restore stops at a named boundary (the module waits there while the backup directory holds
`.mayday-fault-point` naming it; see mayday_db_backups.BOUNDARIES), and the test then either
kills the controller (SIGKILL to ansible-playbook's process group; the module on the host goes on
once released, as it would) or restarts the database container (everything on it dies at that
point). Then every table of the live database is fingerprinted in full inside the container (each
row, sorted, hashed: nothing cuts it short), and must be entirely the old (bad) database or entirely
the restored one; a second `mayday restore` must end with the restored data live and the
application's own user able to write.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import (
    BACKUP_DIR,
    KEPT_DB_PREFIX,
    LAB_DBS,
    MAYDAY,
    ROOT,
    SHADOW_DB,
    LabDb,
    Mayday,
    docker,
    start_playbook,
    wait_booted,
    wait_db_answers,
)
from mayday_db_backups import BOUNDARIES, FAULT_POINT_FILE  # plugins/module_utils, on sys.path via lab_helpers

pytestmark = pytest.mark.usefixtures("lab_up")

FAULT = f"{BACKUP_DIR}/{FAULT_POINT_FILE}"
LOAD = {
    "mariadb": """
        DROP TABLE IF EXISTS kp_orders; DROP TABLE IF EXISTS kp_customers;
        CREATE TABLE kp_customers (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL) ENGINE=InnoDB;
        INSERT INTO kp_customers SELECT seq, CONCAT('customer-', seq) FROM seq_1_to_500;
        CREATE TABLE kp_orders (id INT PRIMARY KEY, customer_id INT NOT NULL, amount DECIMAL(12,2) NOT NULL,
            note VARCHAR(64)) ENGINE=InnoDB;
        INSERT INTO kp_orders SELECT seq, 1 + seq % 500, seq / 100, MD5(seq) FROM seq_1_to_20000;
    """,
    "postgresql": """
        DROP TABLE IF EXISTS kp_orders; DROP TABLE IF EXISTS kp_customers;
        CREATE TABLE kp_customers (id int PRIMARY KEY, name text NOT NULL);
        INSERT INTO kp_customers SELECT g, 'customer-' || g FROM generate_series(1, 500) g;
        CREATE TABLE kp_orders (id int PRIMARY KEY, customer_id int NOT NULL, amount numeric(12,2) NOT NULL,
            note text);
        INSERT INTO kp_orders SELECT g, 1 + g % 500, g / 100.0, md5(g::text) FROM generate_series(1, 20000) g;
    """,
}
# A migration gone wrong, in both tables: a column dropped, rows corrupted, a customer gone.
BAD = ("ALTER TABLE kp_orders DROP COLUMN note; UPDATE kp_orders SET amount = -amount WHERE id % 7 = 0; "
       "DELETE FROM kp_customers WHERE id = 1")
APP_PASSWORD = "lab-only-not-a-secret"  # inventories/lab: MAYDAY_LAB_DB_PASSWORD's default


@dataclass
class Prepared:
    db: LabDb
    good: dict[str, str]
    known_good: bool = True  # the live database is the restored one (the last case ended there)
    bad: dict[str, str] | None = None  # the bad migration's fingerprint: the same every case


FINGERPRINT = {
    "mariadb": r"""
        for t in $(mariadb -N -B -e "SELECT table_name FROM information_schema.tables
                                     WHERE table_schema = 'app' AND table_type = 'BASE TABLE' ORDER BY 1"); do
            cols=$(mariadb -N -B -e "SELECT GROUP_CONCAT(column_name ORDER BY ordinal_position)
                                     FROM information_schema.columns WHERE table_schema = 'app' AND table_name = '$t'")
            rows=$(mariadb -N -B app -e "SELECT * FROM \`$t\`" | LC_ALL=C sort | md5sum | cut -c1-32)
            echo "$t $cols $rows"
        done""",
    "postgresql": r"""
        psql() { runuser -u postgres -- psql -X -q -A -t -v ON_ERROR_STOP=1 -d app "$@"; }
        for t in $(psql -c "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"); do
            cols=$(psql -c "SELECT string_agg(column_name::text, ',' ORDER BY ordinal_position)
                            FROM information_schema.columns WHERE table_schema = 'public' AND table_name = '$t'")
            rows=$(psql -c "COPY public.\"$t\" TO STDOUT" | LC_ALL=C sort | md5sum | cut -c1-32)
            echo "$t $cols $rows"
        done""",
}


# The sample app writes its heartbeat on every health check, the restore's own last check included:
# live application writes, not the data under test.
APP_WRITES = {"web_heartbeats"}


def fingerprint(db: LabDb) -> dict[str, str]:
    """Every table of the live `app` database (but the app's heartbeats): its columns and an md5 over
    all its rows, sorted."""
    lines = db.bash(FINGERPRINT[db.engine], timeout=120).splitlines()
    found = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in lines if line.strip()}
    return {table: digest for table, digest in found.items() if table not in APP_WRITES}


def app_writes(db: LabDb) -> bool:
    """The application's own path accepts a write: MariaDB as the app user (no read_only bypass),
    PostgreSQL through pgbouncer (not paused) into the live database (connections allowed)."""
    if db.engine == "mariadb":
        script = (f"mariadb -u app -p{APP_PASSWORD} app -e \"INSERT INTO kp_customers VALUES (100000, 'probe'); "
                  "DELETE FROM kp_customers WHERE id = 100000\"")
    else:
        script = ("PGCONNECT_TIMEOUT=5 runuser -u postgres -- psql -X -q -h 127.0.0.1 -p 6432 -d app -c "
                  "\"INSERT INTO kp_customers VALUES (100000, 'probe'); DELETE FROM kp_customers WHERE id = 100000\"")
    return docker("exec", db.container, "timeout", "20", "bash", "-c", script, check=False,
                  timeout=30).returncode == 0


def open_connections(db: LabDb) -> None:
    """PostgreSQL keeps the database closed to connections while writes are stopped: open it to look."""
    if db.engine == "postgresql":
        db.sql("ALTER DATABASE app WITH ALLOW_CONNECTIONS true")


def drop_kept(db: LabDb) -> None:
    for name in db.databases():
        if name.startswith(KEPT_DB_PREFIX) or name == SHADOW_DB:
            db.sql(f"DROP DATABASE IF EXISTS `{name}`" if db.engine == "mariadb"
                   else f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module", params=sorted(LAB_DBS))
def prepared(request: pytest.FixtureRequest, lab_up: None, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Prepared]:
    db = LAB_DBS[request.param]
    wait_db_answers(db)
    files_before = set(db.bash(f"ls -1A {BACKUP_DIR} 2>/dev/null || true").split())
    db.sql(LOAD[db.engine], db="app", timeout=300)
    mayday = Mayday(tmp_path_factory.mktemp(f"kill-phases-{db.engine}"))
    result = mayday.run("backup", "--limit", db.host, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    good = fingerprint(db)
    assert {"kp_orders", "kp_customers"} <= set(good), good
    try:
        yield Prepared(db, good)
    finally:
        db.bash(f"rm -f {FAULT} {FAULT}.reached", check=False)
        open_connections(db)
        db.sql("DROP TABLE IF EXISTS kp_orders; DROP TABLE IF EXISTS kp_customers", db="app", check=False)
        drop_kept(db)
        # This module's backups and safety dumps: the next module takes its own.
        new = sorted(set(db.bash(f"ls -1A {BACKUP_DIR}").split()) - files_before)
        new = [f for f in new if not f.startswith(".")]
        if new:
            db.bash(f"cd {BACKUP_DIR} && rm -f -- " + " ".join(new))


def restore(mayday: Mayday, db: LabDb) -> subprocess.CompletedProcess[str]:
    return mayday.run("restore", "--limit", db.host, timeout=300)


def start_bad(prepared: Prepared, mayday: Mayday) -> dict[str, str]:
    """From the restored state, the bad migration; returns its fingerprint."""
    db = prepared.db
    # An earlier case that failed may have ended elsewhere: start from the backup. A case that passed
    # ended on the restored data (its last check), so its fingerprint need not be taken again.
    if not prepared.known_good and fingerprint(db) != prepared.good:
        assert restore(mayday, db).returncode == 0
    prepared.known_good = False
    drop_kept(db)  # keep the disk check honest: each case adds a kept copy
    db.sql(BAD, db="app", timeout=120)
    if prepared.bad is None:  # the same statements on the same rows: the same result every case
        prepared.bad = fingerprint(db)
        assert prepared.bad != prepared.good and set(prepared.bad) == set(prepared.good), prepared.bad
    return prepared.bad


def stop_at(db: LabDb, boundary: str, mayday: Mayday, log: Path) -> subprocess.Popen[bytes]:
    db.bash(f"rm -f {FAULT}.reached; printf %s {boundary} > {FAULT}")
    proc = start_playbook("db-restore.yml", mayday.env(), "--limit", db.host, log=log)
    deadline = time.monotonic() + 180
    while db.bash(f"cat {FAULT}.reached 2>/dev/null || true").strip() != boundary:
        if proc.poll() is not None or time.monotonic() > deadline:
            kill(proc)
            db.bash(f"rm -f {FAULT}", check=False)
            pytest.fail(f"the restore never reached {boundary} (rc={proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return proc


def kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.parametrize("how", ["controller-killed", "container-restarted"])
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_killed_at_a_phase_boundary_leaves_old_or_new_and_a_rerun_finishes(
        prepared: Prepared, boundary: str, how: str, tmp_path: Path, record_property: Any) -> None:
    db = prepared.db
    mayday = Mayday(tmp_path / "state")
    mayday.state_dir.mkdir()
    bad = start_bad(prepared, mayday)
    proc = stop_at(db, boundary, mayday, tmp_path / "restore.log")
    if how == "controller-killed":
        kill(proc)
        assert proc.returncode == -signal.SIGKILL
        db.bash(f"rm -f {FAULT}")  # the module on the host goes on, as after a real controller crash
        deadline = time.monotonic() + 180
        while db.restore_processes():
            assert time.monotonic() < deadline, f"the restore on {db.host} did not end"
            time.sleep(0.3)
    else:
        try:
            docker("restart", db.container, timeout=180)
        finally:
            kill(proc)
        wait_booted([db.host], timeout=120)
        wait_db_answers(db)
        db.bash(f"rm -f {FAULT}")
    open_connections(db)
    live = fingerprint(db)
    assert live in (bad, prepared.good), f"neither old nor new after {how} at {boundary}:\n{live}\nold {bad}\n" \
                                         f"new {prepared.good}"
    record_property("mayday_outcome", f"{db.engine} {how} at {boundary}: {'new' if live == prepared.good else 'old'}")

    result = restore(mayday, db)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert mayday.last_report()["outcome"] in ("RECOVERED", "NOOP"), mayday.last_report()
    assert fingerprint(db) == prepared.good
    prepared.known_good = True
    assert not db.exists(SHADOW_DB), f"{SHADOW_DB} left behind"
    assert app_writes(db), "the application cannot write after the re-run"
    assert db.bash(f"ls -A {BACKUP_DIR} | grep -c '^.mayday-write-stop' || true").strip() == "0", \
        "the write-stop marker is left behind"


def test_a_fault_point_file_left_on_a_host_stops_nothing(prepared: Prepared, tmp_path: Path) -> None:
    """The fault points are the tests' hook. A file left behind on a real host made every restore wait
    there up to 5 minutes, two of the boundaries with writes stopped. Without the tests' switch
    (MAYDAY_TEST_FAULT_POINTS on the controller) the file is ignored."""
    db = prepared.db
    mayday = Mayday(tmp_path / "state")
    mayday.state_dir.mkdir()
    start_bad(prepared, mayday)
    db.bash(f"rm -f {FAULT}.reached; printf %s writes-stopped > {FAULT}")
    env = mayday.env()
    del env["MAYDAY_TEST_FAULT_POINTS"]
    try:
        result = subprocess.run([MAYDAY, "restore", "--limit", db.host, "--json"], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False, timeout=150)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert db.bash(f"test -e {FAULT}.reached && echo stopped || echo went-on").strip() == "went-on"
        assert fingerprint(db) == prepared.good
        prepared.known_good = True
        assert app_writes(db), "the application cannot write after the restore"
    finally:
        db.bash(f"rm -f {FAULT} {FAULT}.reached", check=False)
