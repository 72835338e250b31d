"""The data-corruption logic that needs no server: the row-count rule and each host's result."""

from __future__ import annotations

import json
from pathlib import Path

from mayday_db_backups import prune, resolve
from mayday_db_integrity import findings_of, outcome, row_findings, state_text

BACKUP = {"public.orders": {"rows": 1000, "checksum": "a"}, "public.users": {"rows": 50, "checksum": "b"},
          "public.audit": {"rows": 10, "checksum": "c"}, "public.empty": {"rows": 0, "checksum": "d"},
          "@database": {"rows": 0, "items": 1, "checksum": "x"}}


def test_a_table_gone_or_shrunk_past_the_bound_is_a_finding_normal_writes_are_not() -> None:
    now = {"public.orders": {"rows": 899, "checksum": "z"},  # -10.1 %: over the bound
           "public.users": {"rows": 45, "checksum": "b2"},  # -10 % exactly: within
           "public.empty": {"rows": 7, "checksum": "e"},  # grew
           "public.new": {"rows": 3, "checksum": "n"},
           "@database": {"rows": 0, "items": 1, "checksum": "other"}}
    tables = row_findings(BACKUP, now, 10)
    assert "finding" in tables["public.orders"] and "-10%" in tables["public.orders"]["finding"]
    assert "finding" not in tables["public.users"] and tables["public.users"]["data"] == "changed since the backup"
    assert tables["public.audit"]["rows_now"] is None and tables["public.audit"]["finding"].startswith("gone")
    assert "finding" not in tables["public.empty"] and "finding" not in tables["public.new"]
    assert tables["public.new"]["data"] == "new since the backup"
    assert "@database" not in tables  # definitions are not tables
    checks = {"problems": {"public.users": ["index public.users_pkey: item order invariant violated"]}}
    lines = findings_of(tables, checks)
    assert lines[0].startswith("public.users: index") and len(lines) == 3


def test_unchanged_data_is_said_so_and_a_zero_bound_flags_any_loss() -> None:
    same = {k: v for k, v in BACKUP.items()}
    assert all("finding" not in e and e["data"] == "unchanged" for e in row_findings(BACKUP, same).values())
    one_less = dict(same, **{"public.orders": {"rows": 999, "checksum": "q"}})
    assert "finding" in row_findings(BACKUP, one_less, 0)["public.orders"]


def result(changed: bool = True, failed: bool = False, refused: bool = False, **report: object) -> dict:
    return {"changed": changed, "failed": failed, "refused": refused, "msg": "db1: boom", "report": report}


LEASED = {"read_only": "on", "lease": {"id": "read-only-x", "expires": "2026-01-01T00:30:00Z"}}


def test_corruption_found_without_restore_fails_with_the_database_frozen() -> None:
    phases = {"freeze": result(before={"read_only": "off"}), "backup": result(id="e1", verified=True),
              "assess": result(changed=False, findings=["t: rows fell"], reference={"id": "b1"})}
    doc = outcome("db1", phases, False, False, LEASED)
    assert doc["failed"] and doc["changed"] and not doc["refused"]
    assert "read-only-x" in doc["msg"] and "--restore" in doc["msg"] and "e1" in doc["msg"]
    assert doc["report"]["findings"] == ["t: rows fell"] and doc["report"]["before"] == {"read_only": "off"}
    clean = dict(phases, assess=result(changed=False, findings=[], reference={"id": "b1"}))
    assert not outcome("db1", clean, False, False, LEASED)["failed"]


def test_a_refused_switch_is_a_refusal_and_a_later_failure_names_its_phase() -> None:
    doc = outcome("db1", {"freeze": result(changed=False, failed=True, refused=True), "backup": {}}, False, False,
                  {"read_only": "off", "lease": None})
    assert doc["refused"] and doc["failed"] and not doc["changed"]
    phases = {"freeze": result(), "backup": result(id="e1"), "assess": result(changed=False, findings=["x"]),
              "renew": result(), "restore": result(failed=True)}
    doc = outcome("db1", phases, True, False, LEASED)
    assert doc["failed"] and not doc["refused"] and doc["msg"].startswith("db1: restore failed: boom")
    assert "read-only under lease read-only-x" in doc["msg"]


def test_a_restore_that_leaves_read_only_on_is_not_a_recovery() -> None:
    phases = {"freeze": result(), "backup": result(id="e1"), "assess": result(changed=False, findings=["x"]),
              "renew": result(), "restore": result(backup="b1", rows_restored=5, previous_kept_as="app__k"),
              "verify": result(changed=False, findings=[]), "release": result()}
    assert not outcome("db1", phases, True, False, {"read_only": "off", "lease": None})["failed"]
    assert outcome("db1", phases, True, False, {"read_only": "on", "lease": None})["failed"]
    assert "WITHOUT a lease" in state_text({"read_only": "on", "lease": None})


def write(backup_dir: Path, backup_id: str, kind: str, time: str) -> None:
    (backup_dir / f"{backup_id}.sql").write_text("x")
    (backup_dir / f"{backup_id}.manifest.json").write_text(json.dumps(
        {"id": backup_id, "kind": kind, "time": time, "engine": "mariadb", "database": "app",
         "file": f"{backup_id}.sql", "size": 1, "sha256": "0", "tables": {}}))


def test_an_emergency_copy_is_never_latest_and_never_pruned(tmp_path: Path) -> None:
    write(tmp_path, "mariadb-app-20260101T000000Z", "backup", "20260101T000000Z")
    write(tmp_path, "mariadb-app-20260102T000000Z-emergency", "emergency", "20260102T000000Z")
    params = {"backup_dir": str(tmp_path), "engine": "mariadb", "database": "app", "backup": "latest",
              "retention": 1}
    assert resolve(params)["id"] == "mariadb-app-20260101T000000Z"
    assert resolve(dict(params, backup="mariadb-app-20260102T000000Z-emergency"))["kind"] == "emergency"
    assert prune(params) == [] and (tmp_path / "mariadb-app-20260102T000000Z-emergency.sql").exists()
