"""`mayday backup`, `mayday restore` and the level-2 webhook rollback against the real lab databases.

MariaDB runs on db1, PostgreSQL (behind pgbouncer) on pg1; every database test runs once per engine.
A module-scoped fixture loads 100,000 rows into the engine's `app` database, takes a backup with
`mayday backup` and records the "good" fingerprint: the big table's columns, row count and md5
over all its rows in key order, computed inside the container. Each test then applies a "bad
migration" (a dropped column and corrupted rows: the "bad" fingerprint) and refuses a restore.
Restores interrupted at every phase boundary: test_db_kill_phases.py.

Only db1 and pg1 are touched (the web hosts are only probed, read-only, by the restore's own
post-restore app health check). Every test has its own MAYDAY_STATE_DIR.

A restore of the backup that is already live and unchanged since (same database by identity, same
rows) is a NOOP. Each test's bad migration changes the rows, so a restore after it restores again,
even right after an earlier restore of the same backup.
"""

from __future__ import annotations

import json
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import (
    BACKUP_DIR,
    KEPT_DB_PREFIX,
    LAB_DBS,
    MARIADB,
    SHADOW_DB,
    WEB_HOSTS,
    LabDb,
    Mayday,
    docker,
    health,
    wait_db_answers,
)

pytestmark = pytest.mark.usefixtures("lab_up")

ROWS = 100_000
LOAD = {
    "mariadb": f"""
        DROP TABLE IF EXISTS orders;
        DROP TABLE IF EXISTS customers;
        CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL, email VARCHAR(128) NOT NULL)
            ENGINE=InnoDB;
        INSERT INTO customers SELECT seq, CONCAT('customer-', seq), CONCAT('c', seq, '@example.test')
            FROM seq_1_to_10000;
        CREATE TABLE orders (id INT PRIMARY KEY, customer_id INT NOT NULL, amount DECIMAL(12,2) NOT NULL,
            status VARCHAR(16) NOT NULL, note VARCHAR(64) NOT NULL, INDEX (customer_id)) ENGINE=InnoDB;
        INSERT INTO orders SELECT seq, 1 + seq % 10000, ROUND((seq * 7919 % 100000) / 100, 2),
            ELT(1 + seq % 4, 'new', 'paid', 'shipped', 'refunded'), MD5(seq) FROM seq_1_to_{ROWS};
    """,
    "postgresql": f"runuser -u postgres -- /usr/lib/postgresql/15/bin/pgbench -i -s {ROWS // 100_000} -q app",
}
# A migration gone wrong: a column dropped, every 7th row corrupted.
BAD_MIGRATION = {
    "mariadb": "ALTER TABLE orders DROP COLUMN note; "
               "UPDATE orders SET amount = -amount - 1, status = 'corrupt' WHERE id % 7 = 0",
    "postgresql": "ALTER TABLE pgbench_accounts DROP COLUMN filler; "
                  "UPDATE pgbench_accounts SET abalance = -abalance - 1 WHERE aid % 7 = 0",
}
DROPPED = {"mariadb": "note", "postgresql": "filler"}


@dataclass(frozen=True)
class Loaded:
    db: LabDb
    backup: dict[str, Any]  # the manifest `mayday backup` wrote
    good: dict[str, Any]  # fingerprint of the live database when it was backed up


def flat(text: str) -> str:
    return " ".join(text.split())


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"rc={result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"


def backup_files(db: LabDb) -> set[str]:
    return set(db.bash(f"ls -1A {BACKUP_DIR} 2>/dev/null || true").split())


def regular_backups(db: LabDb) -> list[dict[str, Any]]:
    return [m for m in db.manifests()
            if m.get("engine") == db.engine and m.get("database") == db.database and m.get("kind") == "backup"]


def safety_backups(db: LabDb) -> list[str]:
    return [m["id"] for m in db.manifests() if m.get("kind") == "safety"]


def drop_database(db: LabDb, name: str) -> None:
    if db.engine == "mariadb":
        db.sql(f"DROP DATABASE IF EXISTS `{name}`")
    else:
        db.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def kept_fingerprint(db: LabDb, kept: str) -> dict[str, Any]:
    """Fingerprint of the database a restore replaced (kept, renamed). PostgreSQL keeps it with
    connections disallowed, as they were during the swap: allow them to look inside."""
    if db.engine == "postgresql":
        db.sql(f'ALTER DATABASE "{kept}" WITH ALLOW_CONNECTIONS true')
    return LabDb(db.engine, db.host, db.table, db.key, database=kept).fingerprint()


def web_healthy() -> bool:
    return all(health(host).get("status") == "healthy" for host in WEB_HOSTS)


def host_result(report: dict[str, Any], host: str) -> dict[str, Any]:
    """A host's result in report.json: outcome, changed, msg, summary and the restore's report keys,
    flattened (whether the report nests them under `report` or not)."""
    result = dict((report.get("results") or {}).get(host) or {})
    nested = result.pop("report", None)
    return {**(nested if isinstance(nested, dict) else {}), **result}


def assert_recovered(result: subprocess.CompletedProcess[str], mayday: Mayday, loaded: Loaded) -> dict[str, Any]:
    """The restore ran to its end from the fixture's backup; returns its per-host report.

    The restore finishes by checking that the web app answers healthy (web1, web2, read-only).
    Those hosts belong to another engineer's tests: when they are unhealthy on their own, the run
    is FAILED for that reason alone, which is the documented behaviour and is checked as such.
    """
    report = mayday.last_report()
    detail = host_result(report, loaded.db.host)
    assert detail.get("backup") == loaded.backup["id"], f"{output(result)}\nreport: {report}"
    assert detail.get("changed") is True, detail
    assert detail.get("rows_restored") == sum(t["rows"] for t in loaded.backup["tables"].values()), detail
    assert str(detail.get("previous_kept_as", "")).startswith(KEPT_DB_PREFIX), detail
    assert str(detail.get("safety_backup", "")).endswith("-safety"), detail
    if result.returncode == 0:
        assert report["outcome"] == "RECOVERED", report
        assert detail.get("outcome") == "RECOVERED", detail
        return detail
    said = flat(f"{detail.get('msg', '')} {detail.get('summary', '')}")
    app_down = (result.returncode == 1 and report["outcome"] == "FAILED" and detail.get("outcome") == "FAILED"
                and "app unhealthy after the restore" in said and not web_healthy())
    assert app_down, f"{output(result)}\nhost result: {detail}\nreport summary: {report.get('summary')}"
    warnings.warn(f"restore of {loaded.db.host} done, but the web app (not under test) is unhealthy: {said}",
                  stacklevel=2)
    return detail


def restore(mayday: Mayday, db: LabDb, *args: str) -> subprocess.CompletedProcess[str]:
    return mayday.run("restore", "--limit", db.host, *args, timeout=600)


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(LAB_DBS))
def loaded(request: pytest.FixtureRequest, lab_up: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    """100,000 rows in the engine's `app` database, a backup of it and its "good" fingerprint.
    Afterwards, drops the databases the restores kept and removes their safety backups."""
    db = LAB_DBS[request.param]
    wait_db_answers(db)
    databases_before = set(db.databases())
    files_before = backup_files(db)
    try:
        if db.engine == "mariadb":
            db.sql(LOAD["mariadb"], db=db.database, timeout=600)
        else:
            db.bash(LOAD["postgresql"], timeout=600)
        mayday = Mayday(tmp_path_factory.mktemp(f"state-{db.engine}-backup"))
        result = mayday.run("backup", "--limit", db.host, "--json", timeout=600)
        assert result.returncode == 0, output(result)
        taken = json.loads(result.stdout)["backups"]
        assert len(taken) == 1 and taken[0]["engine"] == db.engine, taken
        manifest = taken[0]
        assert manifest["tables"][f"public.{db.table}" if db.engine == "postgresql" else db.table]["rows"] == ROWS
        assert regular_backups(db)[-1]["id"] == manifest["id"], "the new backup should be the latest"
        good = db.fingerprint()
        assert good["rows"] == ROWS and DROPPED[db.engine] in good["columns"].split(","), good
        yield Loaded(db, manifest, good)
    finally:
        for name in sorted(set(db.databases()) - databases_before):
            if name.startswith(KEPT_DB_PREFIX):
                drop_database(db, name)
        safety = sorted(f for f in backup_files(db) - files_before if "-safety." in f)
        if safety:
            db.bash(f"cd {BACKUP_DIR} && rm -f -- " + " ".join(safety))


@pytest.fixture
def bad(loaded: Loaded, mayday: Mayday) -> dict[str, Any]:
    """Applies the bad migration to the live database (from the good state) and returns its fingerprint."""
    db = loaded.db
    if db.fingerprint() != loaded.good:  # an earlier test failed half-way: start from the backup again
        result = restore(mayday, db)
        assert_recovered(result, mayday, loaded)
        assert db.fingerprint() == loaded.good
    assert not db.exists(SHADOW_DB), "a shadow database is left over from an earlier run"
    if db.engine == "mariadb":
        db.sql(BAD_MIGRATION["mariadb"], db=db.database, timeout=300)
    else:
        db.sql(BAD_MIGRATION["postgresql"], db=db.database, timeout=300)
    fingerprint = db.fingerprint()
    assert fingerprint["rows"] == ROWS and fingerprint["md5"] != loaded.good["md5"], fingerprint
    assert DROPPED[db.engine] not in fingerprint["columns"].split(","), fingerprint
    return fingerprint


# --- interrupted restores: tests/integration/test_db_kill_phases.py (every phase boundary) ------

# --- refusals ------------------------------------------------------------------------------------


def other_engine_backup(db: LabDb, tmp_path: Path) -> dict[str, Any]:
    """The newest backup of the other engine's lab host (taken now when there is none)."""
    other = next(d for d in LAB_DBS.values() if d.engine != db.engine)
    if not regular_backups(other):
        result = Mayday(tmp_path / "other-state").run("backup", "--limit", other.host, timeout=600)
        assert result.returncode == 0, output(result)
    return regular_backups(other)[-1] | {"host": other.host}


def copy_backup(manifest: dict[str, Any], src: LabDb, dest: LabDb, tmp_path: Path) -> list[str]:
    """Copies a backup and its manifest from one host's backup directory to another's."""
    names = [manifest["file"], f"{manifest['id']}.manifest.json"]
    for name in names:
        docker("cp", f"{src.container}:{BACKUP_DIR}/{name}", str(tmp_path / name), timeout=300)
        docker("cp", str(tmp_path / name), f"{dest.container}:{BACKUP_DIR}/{name}", timeout=300)
    return names


def test_refusals_leave_the_live_database_alone(loaded: Loaded, bad: dict[str, Any], mayday: Mayday,
                                                tmp_path: Path) -> None:
    db = loaded.db
    latest = regular_backups(db)[-1]
    assert latest["id"] == loaded.backup["id"], "another backup was taken since the fixture's"
    databases = set(db.databases())
    safety = safety_backups(db)

    def assert_refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
        assert result.returncode == 2, output(result)
        message = flat(result.stderr)
        for word in words:
            assert word in message, f"{word!r} not in the message:\n{output(result)}"
        assert mayday.last_report()["outcome"] == "REFUSED"
        assert db.fingerprint() == bad, "a refused restore changed the live database"
        assert set(db.databases()) == databases, "a refused restore created or dropped a database"
        assert safety_backups(db) == safety, "a refused restore took a safety backup"
        assert db.writable()

    # An id that does not exist: refused, naming the valid ones.
    assert_refused(restore(mayday, db, "--backup", "no-such-id"), "no-such-id", "latest", latest["id"])

    # The latest backup corrupted (one byte appended): its sha256 no longer matches the manifest.
    path = f"{BACKUP_DIR}/{latest['file']}"
    db.bash(f"cp -p {path} {path}.orig && printf x >> {path}")
    try:
        assert_refused(restore(mayday, db), "corrupt", latest["id"])
    finally:
        db.bash(f"mv -f {path}.orig {path}")
    assert db.bash(f"sha256sum {path}").split()[0] == latest["sha256"]

    # A backup of the other engine, copied into this host's backup directory.
    foreign = other_engine_backup(db, tmp_path)
    copied = copy_backup(foreign, LAB_DBS[foreign["engine"]], db, tmp_path)
    try:
        assert_refused(restore(mayday, db, "--backup", foreign["id"]), foreign["id"], foreign["engine"])
    finally:
        db.bash(f"cd {BACKUP_DIR} && rm -f -- " + " ".join(copied))

    # Nothing was harmed: the backup restores as it should.
    result = restore(mayday, db)
    assert_recovered(result, mayday, loaded)
    assert db.fingerprint() == loaded.good


# --- level 2, webhook (MariaDB) ------------------------------------------------------------------


def test_webhook_rows_saved_then_deleted(mayday: Mayday) -> None:
    db = MARIADB
    wait_db_answers(db)
    db.sql("TRUNCATE TABLE webhook_events; "
           "INSERT INTO webhook_events (endpoint, payload, created_at) "
           "SELECT CONCAT('https://hooks.example.test/', seq), CONCAT('{\"seq\": ', seq, '}'), "
           "NOW() - INTERVAL seq MINUTE FROM seq_1_to_180", db=db.database)
    rows = {}
    for line in db.sql("SELECT id, endpoint, payload, created_at FROM webhook_events", db=db.database).splitlines():
        row_id, endpoint, payload, created_at = line.split("\t")
        rows[int(row_id)] = {"endpoint": endpoint, "payload": payload, "created_at": created_at,
                             "seq": int(endpoint.rsplit("/", 1)[1])}
    assert len(rows) == 180
    files_before = backup_files(db)

    try:
        check_webhook_purge(db, mayday, rows, files_before)
    finally:  # the saved rows are this test's: remove the file(s) the run wrote
        written = sorted(f for f in backup_files(db) - files_before if f.startswith("webhook-"))
        if written:
            db.bash(f"cd {BACKUP_DIR} && rm -f -- " + " ".join(written))


def check_webhook_purge(db: LabDb, mayday: Mayday, rows: dict[int, dict[str, Any]], files_before: set[str]) -> None:
    result = mayday.run("level2", "--component", "webhook", "--minutes", "60", "--limit", db.host)
    assert result.returncode == 0, output(result)
    report = mayday.last_report()
    assert report["outcome"] == "RECOVERED", report
    purge = host_result(report, db.host)
    assert purge["outcome"] == "RECOVERED" and purge["changed"] is True, purge

    young = {i for i, r in rows.items() if r["seq"] < 60}  # seq 60 is exactly 60 min old: kept
    assert {i for i, r in rows.items() if r["created_at"] > purge["since"]} == young, purge
    remaining = {int(i) for i in db.sql("SELECT id FROM webhook_events", db=db.database).split()}
    assert remaining == set(rows) - young, "rows younger than 60 minutes must go, older ones stay"
    assert purge["deleted"] == purge["tables"]["webhook_events"] == len(young) == 59, purge

    new_files = sorted(backup_files(db) - files_before)
    assert len(new_files) == 1 and new_files[0].startswith("webhook-app-webhook_events-"), new_files
    saved_path = f"{BACKUP_DIR}/{new_files[0]}"
    assert purge["files"] == [saved_path], purge
    assert db.bash(f"stat -c %a {saved_path}").strip() == "600"
    saved = [json.loads(line) for line in db.bash(f"cat {saved_path}").splitlines() if line.strip()]
    assert sorted(r["id"] for r in saved) == sorted(young), "the file must hold exactly the deleted rows"
    for row in saved:
        want = rows[row["id"]]
        assert (row["endpoint"], row["payload"], row["created_at"]) == (
            want["endpoint"], want["payload"], want["created_at"]), row
