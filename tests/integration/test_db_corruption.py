"""Data corruption (`mayday db corruption`, playbooks/data-corruption.yml) on the lab: db1 (MariaDB)
and pg1 (PostgreSQL behind pgbouncer), both engines in every run.

The databases are the small ones of `small_dbs` (400 rows in `dryrun_items`, backed up by the
fixture: the last good backup), with the amcheck extension installed in pg1's `app` before that
backup so the PostgreSQL checks run. Corruption is made behind the app's back: most rows of
`dryrun_items` deleted. Every assertion is on host state (read-only settings, a write as the app's
role, lease records and timers, backup files and manifests, databases, rows) or on the incident
record's per-host data; never on log text.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import (
    ANSIBLE_PLAYBOOK,
    BACKUP_DIR,
    DB_HOST,
    KEPT_DB_PREFIX,
    LAB_DBS,
    MAYDAY,
    PG_HOST,
    ROOT,
    LabDb,
    Mayday,
    clear_host_locks,
    interrupted_cli,
    lab_inventory_args,
    start_playbook,
)
from mayday_db_backups import FAULT_POINT_FILE  # plugins/module_utils, on sys.path via lab_helpers
from test_db_emergencies import back_to_normal, leases, my_read_only, pg_read_only, sh, wait_for
from test_scenario_dry_runs import (
    TABLE,
    SmallDatabases,
    assert_same,
    backup_files,
    lab_snapshot,
    output,
    table_rows,
)

HOSTS = (DB_HOST, PG_HOST)
DBS = {db.host: db for db in LAB_DBS.values()}
FAULT = f"{BACKUP_DIR}/{FAULT_POINT_FILE}"
KEEP_ROWS = 40  # of 400: a 90 % loss, far over the 10 % bound
READ_ONLY_CODE = {DB_HOST: "1290", PG_HOST: "25006"}


@pytest.fixture(scope="module")
def amcheck(lab_up: None) -> Generator[None, None, None]:
    """amcheck in pg1's app before small_dbs takes its backup (requested first), dropped afterwards."""
    DBS[PG_HOST].sql("CREATE EXTENSION IF NOT EXISTS amcheck", db="app")
    yield
    DBS[PG_HOST].sql("ALTER DATABASE app RESET default_transaction_read_only")
    DBS[PG_HOST].sql("DROP EXTENSION IF EXISTS amcheck", db="app")


@pytest.fixture
def clean(amcheck: None, small_dbs: SmallDatabases, mayday: Mayday) -> Generator[Mayday, None, None]:
    back_to_normal()
    yield mayday
    for db in DBS.values():
        db.bash(f"rm -f {FAULT} {FAULT}.reached {BACKUP_DIR}/*.partial")
    back_to_normal()
    clear_host_locks(HOSTS)


# --- host state ---------------------------------------------------------------------------------
def app_write(host: str) -> str:
    """A write as the application's role (PostgreSQL through pgbouncer): '' when it went through (the
    row is removed by back_to_normal), else the error code."""
    if host == PG_HOST:
        out = sh(host, "psql -X -q -v VERBOSITY=verbose -h 127.0.0.1 -p 6432 -U app -d app -c "
                       "\"INSERT INTO web_heartbeats (host, release) VALUES ('corruption-probe', 'emg')\" 2>&1; true")
        found = re.search(r"ERROR:\s+([0-9A-Z]{5})", out)
    else:
        out = sh(host, "mariadb -h 127.0.0.1 --protocol=TCP -u app app -e \"INSERT INTO webhook_events "
                       "(endpoint, payload) VALUES ('corruption-probe', 'emg')\" 2>&1; true")
        found = re.search(r"ERROR (\d+)", out)
    return found.group(1) if found else ""


def read_only(host: str) -> bool:
    return pg_read_only() == "default_transaction_read_only=on" if host == PG_HOST else my_read_only() == "1"


def manifests(db: LabDb, kind: str) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in db.manifests() if m.get("kind") == kind}


def corrupt(db: LabDb) -> None:
    """Most of the table deleted behind the app's back."""
    db.sql(f"DELETE FROM {TABLE} WHERE id > {KEEP_ROWS}", db=db.database)


def kept_databases(db: LabDb) -> list[str]:
    return [name for name in db.databases() if name.startswith(KEPT_DB_PREFIX)]


def host_snapshot() -> dict[str, Any]:
    """Everything a dry run or a refused run must leave as it was (test_scenario_dry_runs' snapshot of
    the database hosts, plus PostgreSQL's read-only setting and the leases)."""
    snap = lab_snapshot(HOSTS)
    snap[PG_HOST]["pg_read_only"] = pg_read_only()
    for host in HOSTS:
        snap[host]["leases"] = leases(host)
    return snap


def playbook(m: Mayday, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ANSIBLE_PLAYBOOK, str(ROOT / "playbooks" / "data-corruption.yml"), *lab_inventory_args(),
                           *extra], cwd=ROOT, env=m.env(), capture_output=True, text=True, check=False,
                          timeout=timeout)


# --- the runs -----------------------------------------------------------------------------------
def test_assess_leaves_read_only_with_the_evidence_then_restore_repairs(clean: Mayday,
                                                                        small_dbs: SmallDatabases) -> None:
    good = {h: small_dbs.backups[h]["id"] for h in HOSTS}
    emergency_before = {h: set(manifests(DBS[h], "emergency")) for h in HOSTS}
    for db in DBS.values():
        corrupt(db)
    corrupt_rows = {h: table_rows(DBS[h]) for h in HOSTS}

    # Without restore, through plain ansible-playbook: frozen, a verified copy, the findings.
    out = playbook(clean, "-e", "for=10m")
    assert out.returncode == 2, out.stdout[-3000:]  # ansible-playbook's "a host failed"
    report = clean.last_report()
    assert report["outcome"] == "FAILED"  # corruption found and not repaired: escalated, a person decides
    for host, db in DBS.items():
        assert read_only(host) and app_write(host) == READ_ONLY_CODE[host], f"{host} is not read-only"
        result = report["results"][host]
        lease = result["after"]["lease"]
        found = leases(host)
        assert list(found["records"]) == [lease["id"] + ".json"], found
        assert f"mayday-lease-{lease['id']}.timer" in found["timers"]
        assert found["records"][lease["id"] + ".json"]["doc"]["incident"] == report["incident"]
        # A new emergency backup, verified (file and manifest on the host), never `latest`.
        new = set(manifests(db, "emergency")) - emergency_before[host]
        assert new == {result["emergency_backup"]["id"]} and result["emergency_backup"]["verified"], new
        manifest = manifests(db, "emergency")[result["emergency_backup"]["id"]]
        assert manifest["id"].endswith("-emergency")
        sha = db.bash(f"sha256sum {BACKUP_DIR}/{manifest['file']}").split()[0]
        assert sha == manifest["sha256"]
        table = f"public.{TABLE}" if host == PG_HOST else TABLE
        assert manifest["tables"][table]["rows"] == KEEP_ROWS  # the evidence holds the corrupt state
        # The findings name the table, with the counts of the last good backup and now.
        assert result["reference_backup"]["id"] == good[host]
        seen = result["assessment"]["tables"][table]
        assert (seen["rows_backup"], seen["rows_now"]) == (400, KEEP_ROWS) and seen["finding"]
        assert [f for f in result["findings"] if f.startswith(f"{table}:")], result["findings"]
        assert len(result["findings"]) == 1, result["findings"]  # the other tables are fine
        assert result["assessment"]["integrity"]["available"] and not result["assessment"]["integrity"]["problems"]
        assert result["before"]["read_only"].startswith("off") and result["after"]["read_only"] == "on"
    assert report["results"][PG_HOST]["assessment"]["integrity"]["tool"] == "amcheck"
    assert report["results"][PG_HOST]["assessment"]["integrity"]["checked"] >= 2  # heap and index of the table

    # With restore, through the CLI, held at the restore's "writes resumed" boundary: the database
    # must still refuse the app's writes there (read-only until the consistency check is done).
    kept_before = {h: kept_databases(DBS[h]) for h in HOSTS}
    for db in DBS.values():
        db.bash(f"rm -f {FAULT}.reached; printf %s writes-resumed > {FAULT}")
    proc = subprocess.Popen([MAYDAY, "db", "corruption", "--restore", "--json"], cwd=ROOT, env=clean.env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for db in DBS.values():
            wait_for(f"{db.host} at writes-resumed",
                     lambda db=db: db.bash(f"cat {FAULT}.reached 2>/dev/null || true").strip() == "writes-resumed",
                     120, every=0.3)
        for host in HOSTS:
            assert app_write(host) == READ_ONLY_CODE[host], f"{host} writable before the consistency check"
            assert table_rows(DBS[host]) == small_dbs.rows[host]  # swapped: the backup's rows are live
    finally:
        for db in DBS.values():
            db.bash(f"rm -f {FAULT}")
        stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, f"{stdout[-3000:]}\n{stderr[-3000:]}"
    report = clean.last_report()
    assert report["outcome"] == "RECOVERED"
    for host, db in DBS.items():
        result = report["results"][host]
        assert table_rows(db) == small_dbs.rows[host] != corrupt_rows[host]
        assert not read_only(host) and app_write(host) == "", f"{host} is not writable again"
        assert leases(host) == {"records": {}, "timers": []}, f"{host}: a lease is left"
        kept = result["restore"]["previous_kept_as"]
        assert kept in set(kept_databases(db)) - set(kept_before[host])
        assert result["restore"]["backup"] == good[host]
        # Before and after, in the record: the corruption seen, then the consistency check.
        assert result["findings"] and result["verify"]["findings"] == []
        assert result["verify"]["tables"][f"public.{TABLE}" if host == PG_HOST else TABLE]["rows_now"] == 400
        assert result["after"] == {"read_only": "off", "lease": None}
        assert db.exists(kept) and result["emergency_backup"]["id"] in manifests(db, "emergency")


def test_ctrl_c_after_the_verdict_stops_before_the_restore(clean: Mayday) -> None:
    """The operator asked for --restore, then pressed Ctrl-C during the assessment: the restore, the
    run's biggest change, does not start; the databases stay read-only under their lease, with the
    evidence, as without --restore (the findings escalate: a person decides)."""
    for db in DBS.values():
        corrupt(db)
    corrupt_rows = {h: table_rows(DBS[h]) for h in HOSTS}
    kept_before = {h: kept_databases(DBS[h]) for h in HOSTS}
    rc, text = interrupted_cli(clean, ["db", "corruption", "--restore", "--for", "10m"], "] Assess")
    assert rc == 1, text[-3000:]
    report = clean.last_report()
    assert report["outcome"] == "FAILED", report  # corruption found and not repaired
    assert any("interrupted by the operator (SIGINT)" in (s.get("detail") or "") for s in report["steps"])
    for host, db in DBS.items():
        assert table_rows(db) == corrupt_rows[host], f"{host} was restored after the interrupt"
        assert kept_databases(db) == kept_before[host], f"{host}: a restore swapped databases"
        assert read_only(host) and app_write(host) == READ_ONLY_CODE[host], f"{host} is not read-only"
        assert leases(host)["records"], f"{host}: no lease holds read-only"
        assert report["results"][host]["restore"] is None and report["results"][host]["findings"]


def test_killed_controller_leaves_the_lease_to_the_host(clean: Mayday, tmp_path: Path) -> None:
    proc = start_playbook("data-corruption.yml", clean.env(), *lab_inventory_args(), "-e", "for=8s",
                          "-e", "mayday_lease_min=1s", log=tmp_path / "run.log")
    try:
        wait_for("both databases read-only under a lease",
                 lambda: all(read_only(h) and leases(h)["records"] for h in HOSTS), 90, every=0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    killed_at = time.monotonic()
    assert all(app_write(h) == READ_ONLY_CODE[h] for h in HOSTS)
    wait_for("the hosts revert read-only on their own", lambda: not any(read_only(h) for h in HOSTS), 40)
    assert time.monotonic() - killed_at < 40
    for host in HOSTS:
        wait_for(f"{host}: the expired lease is removed", lambda host=host: leases(host)["records"] == {}, 15)
        assert app_write(host) == "", f"{host} not writable after the lease expired"


def test_dry_run_and_bad_input_change_nothing(clean: Mayday) -> None:
    for db in DBS.values():
        corrupt(db)
    before = host_snapshot()
    files = {h: backup_files(DBS[h]) for h in HOSTS}

    out = clean.run("db", "corruption", "--backup", "../x")
    assert out.returncode == 2, output(out)
    out = playbook(clean, "-e", "backup=../x")
    assert out.returncode == 2, out.stdout[-2000:]
    assert clean.last_report()["outcome"] == "REFUSED"
    # A well-formed id that is no backup: refused by the pre-flight, before any host is frozen.
    out = clean.run("db", "corruption", "--restore", "--backup", "postgresql-app-20000101T000000Z", "--json")
    assert out.returncode == 2, output(out)
    report = clean.last_report()
    assert report["outcome"] == "REFUSED" and len(report["refusals"]) == 2, report["refusals"]

    out = clean.run("db", "corruption", "--restore", "--check", "--json")
    assert out.returncode == 0, output(out)
    report = clean.last_report()
    assert report["outcome"] == "DRY-RUN"
    for host in HOSTS:
        result = report["results"][host]
        assert result["findings"], result  # the dry run assessed the live database
        assert result["emergency_backup"] is None and result["after"]["read_only"] == "off"
        assert any("restore" in w for w in result["would"]), result["would"]

    assert_same(before, host_snapshot(), "refused runs and `mayday db corruption --restore --check`")
    assert {h: backup_files(DBS[h]) for h in HOSTS} == files
