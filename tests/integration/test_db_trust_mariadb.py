"""MariaDB backups and restores that can be trusted (issue 7, MariaDB half), on the lab's db1.

- A backup taken while the database is being written restores and verifies: its manifest
  describes exactly the dump's snapshot, not the live database a moment later.
- Hostile table and column names never reach SQL unquoted: backups and restores work, and the
  table named ``x`;CREATE DATABASE pwned;#`` never creates a database.
- A table with a trigger cannot be swapped atomically: the restore is REFUSED before writes stop
  and nothing changes.
- Views and routines identical in the backup and the live database keep working after a restore.

Small tables (thousands of rows) in the `app` database; every object a test creates is dropped
again, and the databases kept by its restores and the backup files it wrote are removed.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lab_helpers
import pytest
from lab_helpers import BACKUP_DIR, KEPT_DB_PREFIX, MARIADB, Mayday, docker, wait_db_answers

pytestmark = pytest.mark.usefixtures("lab_up")

DB = MARIADB
PWNED = "pwned"
HOSTILE_TABLES = (
    "x`;CREATE DATABASE pwned;#",
    "it's \"quoted\"",
    "semi;colon",
    "new\nline",
    "tab\there",
    "pct%",
    "under_score",
    "underXscore",  # `_` as a LIKE wildcard would match this one too
)
HOSTILE_COLUMNS = ("c`ol", "c'ol", "c;ol", "c\nol", "c%ol", "c_ol")
ROWS = 3000


def ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def literal(text: str) -> str:
    return "0x" + text.encode().hex() if text else "''"


def run_sql(script: str, db: str | None = "app", timeout: float = 120) -> str:
    """SQL through the client's stdin (names with newlines and quotes stay intact)."""
    return docker("exec", "-i", DB.container, *DB.client(db), input_text=script, timeout=timeout).stdout


def databases() -> set[str]:
    return set(json.loads(run_sql("SELECT JSON_ARRAYAGG(schema_name) FROM information_schema.schemata", None)))


def count(table: str) -> int:
    return int(run_sql(f"SELECT COUNT(*) FROM {ident(table)}").strip())


def table_digest(table: str, key: str = "id") -> str:
    """md5 over every row in key order, computed inside the container."""
    query = shlex.quote(f"SELECT * FROM {ident(table)} ORDER BY {ident(key)}")
    return DB.bash(f"mariadb -N -B app -e {query} | md5sum").split()[0]


def read_only() -> bool:
    return run_sql("SELECT @@global.read_only", None).strip() == "1"


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"rc={result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"


def take_backup(mayday: Mayday) -> dict[str, Any]:
    return lab_helpers.take_backup(mayday, DB)


def restore(mayday: Mayday) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    result = mayday.run("restore", "--limit", DB.host, timeout=600)
    return result, mayday.last_report()


def host_result(report: dict[str, Any]) -> dict[str, Any]:
    result = dict((report.get("results") or {}).get(DB.host) or {})
    nested = result.pop("report", None)
    return {**(nested if isinstance(nested, dict) else {}), **result}


def assert_recovered(result: subprocess.CompletedProcess[str], report: dict[str, Any],
                     manifest: dict[str, Any]) -> None:
    assert result.returncode == 0 and report["outcome"] == "RECOVERED", f"{output(result)}\n{report}"
    assert host_result(report).get("backup") == manifest["id"], host_result(report)


def table_entries(manifest: dict[str, Any]) -> dict[str, int]:
    """The manifest's tables (not its definition entries) and their row counts."""
    return {name: entry["rows"] for name, entry in manifest["tables"].items() if not name.startswith("@")}


@pytest.fixture(scope="module")
def clean_db1(lab_up: None) -> Iterator[None]:
    """db1 writable, no `pwned` database; afterwards: the kept databases and the backup files the
    tests made are removed, writes allowed."""
    wait_db_answers(DB)
    run_sql("SET GLOBAL read_only = OFF", None)
    assert PWNED not in databases(), "a database named pwned exists already: the injection test would prove nothing"
    before = databases()
    files = set(DB.bash(f"ls -1A {BACKUP_DIR} 2>/dev/null || true").split("\n"))
    try:
        yield
    finally:
        run_sql("SET GLOBAL read_only = OFF", None)
        for name in sorted(databases() - before):
            if name.startswith(KEPT_DB_PREFIX):
                run_sql(f"DROP DATABASE IF EXISTS {ident(name)}", None)
        new = sorted(f for f in set(DB.bash(f"ls -1A {BACKUP_DIR} 2>/dev/null || true").split("\n")) - files
                     if f and not f.startswith("."))
        if new:
            DB.bash(f"cd {BACKUP_DIR} && rm -f -- " + " ".join(f"'{f}'" for f in new))


@pytest.fixture
def tables(clean_db1: None) -> Iterator[list[str]]:
    """Names of tables (and views, routines) a test creates in `app`: dropped afterwards."""
    made: list[str] = []
    yield made
    for statement in made:
        run_sql(statement)


# --- a backup under writes -------------------------------------------------------------------------


def test_backup_taken_during_writes_restores_and_verifies(tables: list[str], tmp_path: Path) -> None:
    tables.append("DROP TABLE IF EXISTS trust_load")
    run_sql(f"""
        DROP TABLE IF EXISTS trust_load;
        CREATE TABLE trust_load (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(32), n INT NOT NULL) ENGINE=InnoDB;
        INSERT INTO trust_load (v, n) SELECT MD5(seq), 0 FROM seq_1_to_{ROWS};
    """)
    # About 15 s of transactions (an insert and an update of row 1 each), then the loop ends by itself.
    load = subprocess.Popen(
        ["/usr/bin/docker", "exec", DB.container, "bash", "-c",
         "end=$((SECONDS + 15)); while [ $SECONDS -lt $end ]; do "
         "echo 'START TRANSACTION; INSERT INTO trust_load (v, n) VALUES (MD5(RAND()), 1); "
         "UPDATE trust_load SET n = n + 1 WHERE id = 1; COMMIT; DO SLEEP(0.002);'; done | mariadb app"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        before = count("trust_load")
        manifest = take_backup(Mayday(tmp_path / "backup"))
        after = count("trust_load")
    finally:
        _, err = load.communicate(timeout=120)
    assert load.returncode == 0, err
    assert before < after, "no writes while the backup ran: the test proves nothing"
    backed_up = table_entries(manifest)["trust_load"]
    assert before <= backed_up <= after, (before, backed_up, after)
    # The dump's snapshot: the update counter equals the inserts of the same transactions.
    assert manifest["tables"]["trust_load"]["checksum"]
    result, report = restore(Mayday(tmp_path / "restore"))
    assert_recovered(result, report, manifest)
    assert {t: count(t) for t in table_entries(manifest)} == table_entries(manifest)
    inserted, counter = run_sql(f"SELECT COUNT(*) - {ROWS}, MAX(CASE WHEN id = 1 THEN n END) FROM trust_load").split()
    assert int(inserted) == int(counter), "the restored table is not one transaction-consistent snapshot"


# --- hostile names ---------------------------------------------------------------------------------


def test_hostile_table_and_column_names(tables: list[str], tmp_path: Path) -> None:
    columns = ", ".join(f"{ident(c)} VARCHAR(20)" for c in HOSTILE_COLUMNS)
    values = ", ".join(f"CONCAT({literal(c)}, seq)" for c in HOSTILE_COLUMNS)
    script = []
    for i, name in enumerate(HOSTILE_TABLES):
        tables.append(f"DROP TABLE IF EXISTS {ident(name)}")
        script.append(f"DROP TABLE IF EXISTS {ident(name)}; CREATE TABLE {ident(name)} (id INT PRIMARY KEY, {columns}) "
                      f"ENGINE=InnoDB; INSERT INTO {ident(name)} SELECT seq, {values} FROM seq_1_to_{100 + i};")
    run_sql("\n".join(script))
    digests = {name: table_digest(name) for name in HOSTILE_TABLES}

    manifest = take_backup(Mayday(tmp_path / "backup"))
    assert PWNED not in databases()
    got = table_entries(manifest)
    assert {name: got.get(name) for name in HOSTILE_TABLES} == {n: 100 + i for i, n in enumerate(HOSTILE_TABLES)}

    for name in HOSTILE_TABLES:  # a bad migration, so the restore has something to undo
        run_sql(f"DELETE FROM {ident(name)} WHERE id % 2 = 0")
    result, report = restore(Mayday(tmp_path / "restore"))
    assert PWNED not in databases()
    assert_recovered(result, report, manifest)
    assert {name: table_digest(name) for name in HOSTILE_TABLES} == digests


# --- a table with a trigger ------------------------------------------------------------------------


def test_table_with_trigger_is_refused_before_writes_stop(tables: list[str], tmp_path: Path) -> None:
    tables.append("DROP TABLE IF EXISTS trust_trig")
    run_sql(f"""
        DROP TABLE IF EXISTS trust_trig;
        CREATE TABLE trust_trig (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB;
        INSERT INTO trust_trig SELECT seq, seq FROM seq_1_to_{ROWS};
        CREATE TRIGGER trust_trig_bi BEFORE INSERT ON trust_trig FOR EACH ROW SET NEW.v = NEW.v + 1;
    """)
    take_backup(Mayday(tmp_path / "backup"))
    run_sql("UPDATE trust_trig SET v = -v WHERE id % 7 = 0")  # a change the restore would undo
    dbs, rows, triggers = databases(), table_digest("trust_trig"), run_sql("SHOW TRIGGERS")

    seen: list[bool] = []
    done = threading.Event()

    def watch() -> None:  # read_only, sampled for the whole run
        while not done.is_set():
            seen.append(read_only())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result, report = restore(Mayday(tmp_path / "restore"))
    finally:
        done.set()
        watcher.join()
    assert result.returncode == 2 and report["outcome"] == "REFUSED", f"{output(result)}\n{report}"
    assert seen and not any(seen), "writes were stopped during a refused restore"
    assert not read_only()
    assert databases() == dbs
    assert table_digest("trust_trig") == rows
    assert run_sql("SHOW TRIGGERS") == triggers


def test_sequence_is_refused_before_writes_stop(tables: list[str], tmp_path: Path) -> None:
    tables.append("DROP TABLE IF EXISTS trust_seq_use")
    tables.append("DROP SEQUENCE IF EXISTS trust_seq")
    run_sql("""
        DROP SEQUENCE IF EXISTS trust_seq; DROP TABLE IF EXISTS trust_seq_use;
        CREATE SEQUENCE trust_seq START WITH 100;
        CREATE TABLE trust_seq_use (id INT PRIMARY KEY DEFAULT (NEXT VALUE FOR trust_seq), v INT) ENGINE=InnoDB;
        INSERT INTO trust_seq_use (v) VALUES (1), (2), (3);
    """)
    take_backup(Mayday(tmp_path / "backup"))
    run_sql("INSERT INTO trust_seq_use (v) VALUES (4)")  # a change the restore would undo
    # Its state as stored (the backup's FLUSH TABLES already dropped its cache: gaps are allowed).
    dbs, rows, state = databases(), table_digest("trust_seq_use"), run_sql("SELECT * FROM trust_seq")
    result, report = restore(Mayday(tmp_path / "restore"))
    assert result.returncode == 2 and report["outcome"] == "REFUSED", f"{output(result)}\n{report}"
    assert "trust_seq" in host_result(report).get("msg", ""), host_result(report)
    assert not read_only()
    assert databases() == dbs
    assert table_digest("trust_seq_use") == rows
    assert run_sql("SELECT * FROM trust_seq") == state, "the sequence was touched"


# --- views and routines ----------------------------------------------------------------------------


def test_identical_view_and_routine_keep_working(tables: list[str], tmp_path: Path) -> None:
    tables.extend(["DROP VIEW IF EXISTS trust_view", "DROP FUNCTION IF EXISTS trust_fn",
                   "DROP PROCEDURE IF EXISTS trust_proc", "DROP TABLE IF EXISTS trust_base"])
    run_sql(f"""
        DROP TABLE IF EXISTS trust_base;
        CREATE TABLE trust_base (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB;
        INSERT INTO trust_base SELECT seq, seq FROM seq_1_to_{ROWS};
        CREATE OR REPLACE VIEW trust_view AS SELECT id, v * 2 AS v2 FROM trust_base;
        CREATE OR REPLACE FUNCTION trust_fn(x INT) RETURNS INT DETERMINISTIC RETURN x * 3;
        CREATE OR REPLACE PROCEDURE trust_proc() SELECT COUNT(*), SUM(v) FROM trust_base;
    """)
    manifest = take_backup(Mayday(tmp_path / "backup"))
    assert {"@view `trust_view` ", "@function `trust_fn` ", "@procedure `trust_proc` "} <= set(manifest["tables"])
    run_sql("UPDATE trust_base SET v = 0 WHERE id % 3 = 0")  # a bad change the restore undoes

    result, report = restore(Mayday(tmp_path / "restore"))
    assert_recovered(result, report, manifest)
    want = ROWS * (ROWS + 1) // 2
    assert run_sql("SELECT COUNT(*), SUM(v2) FROM trust_view").split() == [str(ROWS), str(2 * want)]
    assert run_sql("SELECT trust_fn(14)").strip() == "42"
    assert run_sql("CALL trust_proc()").split() == [str(ROWS), str(want)]


def test_view_differing_from_the_backup_is_refused(tables: list[str], tmp_path: Path) -> None:
    tables.extend(["DROP VIEW IF EXISTS trust_view2", "DROP TABLE IF EXISTS trust_base2"])
    run_sql(f"""
        DROP TABLE IF EXISTS trust_base2;
        CREATE TABLE trust_base2 (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB;
        INSERT INTO trust_base2 SELECT seq, seq FROM seq_1_to_{ROWS};
        CREATE OR REPLACE VIEW trust_view2 AS SELECT id FROM trust_base2;
    """)
    take_backup(Mayday(tmp_path / "backup"))
    # The view changed since the backup: it would stay, the restored tables would run with it.
    run_sql("CREATE OR REPLACE VIEW trust_view2 AS SELECT id, v FROM trust_base2; UPDATE trust_base2 SET v = 0")
    dbs, rows, view = databases(), table_digest("trust_base2"), run_sql("SHOW CREATE VIEW trust_view2")

    result, report = restore(Mayday(tmp_path / "restore"))
    assert result.returncode == 2 and report["outcome"] == "REFUSED", f"{output(result)}\n{report}"
    assert not read_only()
    assert databases() == dbs
    assert table_digest("trust_base2") == rows
    assert run_sql("SHOW CREATE VIEW trust_view2") == view
