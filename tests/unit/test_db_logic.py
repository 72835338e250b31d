"""The parts of the database module that need no server: names, manifests, comparisons, bounds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from mayday_db_backups import compare, list_backups, prune, resolve, verify_backup
from mayday_db_engines import DbError, check_name
from mayday_db_webhook import MINUTES_MAX, check_minutes

TABLES = {"orders": {"rows": 3, "checksum": "11"}, "customers": {"rows": 2, "checksum": "22"}}


def write_backup(backup_dir: Path, engine: str, db: str, time: str, kind: str = "backup",
                 body: bytes = b"-- dump\n-- Dump completed\n") -> dict[str, Any]:
    backup_id = f"{engine}-{db}-{time}" + ("-safety" if kind == "safety" else "")
    ext = "sql" if engine == "mariadb" else "pgdump"
    (backup_dir / f"{backup_id}.{ext}").write_bytes(body)
    manifest = {"id": backup_id, "kind": kind, "time": time, "engine": engine, "database": db,
                "file": f"{backup_id}.{ext}", "size": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                "tables": TABLES}
    (backup_dir / f"{backup_id}.manifest.json").write_text(json.dumps(manifest))
    return manifest


def params(backup_dir: Path, **extra: Any) -> dict[str, Any]:
    return {"engine": "mariadb", "database": "app", "backup_dir": str(backup_dir), **extra}


@pytest.fixture
def backups(tmp_path: Path) -> Path:
    # Written out of time order: listing sorts by the manifest's time, not by file name or mtime.
    write_backup(tmp_path, "mariadb", "app", "20260102T000000Z")
    write_backup(tmp_path, "mariadb", "app", "20260101T000000Z")
    write_backup(tmp_path, "mariadb", "app", "20260103T000000Z", kind="safety")
    write_backup(tmp_path, "postgresql", "app", "20260104T000000Z")
    write_backup(tmp_path, "mariadb", "other", "20260105T000000Z")
    (tmp_path / "broken.manifest.json").write_text("{not json")
    (tmp_path / "list.manifest.json").write_text("[1, 2]")
    (tmp_path / "mariadb-app-20260106T000000Z.manifest.json.partial").write_text("{}")
    return tmp_path


@pytest.mark.parametrize("name", ["app", "_x", "App_2", "a" * 48])
def test_check_name_accepts_plain_identifiers(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", None, "2app", "app-db", "app;drop", 'a"b', "a`b", "a b", "a" * 49, "app\n"])
def test_check_name_refuses_anything_else(name: Any) -> None:
    with pytest.raises(DbError, match=r"table name .* is not a plain identifier"):
        check_name(name, "table")


def test_compare_equal_is_empty() -> None:
    assert compare(TABLES, json.loads(json.dumps(TABLES))) == []


def test_compare_names_every_difference() -> None:
    actual = {"orders": {"rows": 2, "checksum": "x"}, "customers": {"rows": 2, "checksum": "x"},
              "extra": {"rows": 1, "checksum": "1"}}
    assert compare(TABLES, actual) == ["orders: rows 2 vs 3, checksum differs", "customers: checksum differs",
                                       "extra not in the backup"]
    assert compare(TABLES, {}) == ["orders missing", "customers missing"]


def test_compare_counts_only() -> None:
    counts = {t: {"rows": v["rows"]} for t, v in TABLES.items()}
    assert compare(counts, {"orders": {"rows": 3}, "customers": {"rows": 2}}) == []
    assert compare(counts, {"orders": {"rows": 4}, "customers": {"rows": 2}}) == [
        "orders: rows 4 vs 3, checksum differs"]


def test_list_backups_oldest_first_filtered_and_skipping_junk(backups: Path) -> None:
    ids = [m["id"] for m in list_backups(str(backups), "mariadb", "app")]
    assert ids == ["mariadb-app-20260101T000000Z", "mariadb-app-20260102T000000Z",
                   "mariadb-app-20260103T000000Z-safety"]
    assert len(list_backups(str(backups))) == 5
    assert list_backups(str(backups / "missing")) == []


def test_resolve_latest_is_the_newest_regular_backup(backups: Path) -> None:
    assert resolve(params(backups))["id"] == "mariadb-app-20260102T000000Z"
    assert resolve(params(backups, backup="latest"))["id"] == "mariadb-app-20260102T000000Z"


def test_resolve_by_id_including_a_safety_backup(backups: Path) -> None:
    assert resolve(params(backups, backup="mariadb-app-20260101T000000Z"))["time"] == "20260101T000000Z"
    assert resolve(params(backups, backup="mariadb-app-20260103T000000Z-safety"))["kind"] == "safety"


def test_resolve_refuses_unknown_naming_valid_ones(backups: Path) -> None:
    with pytest.raises(DbError, match=r"unknown backup 'nope'; valid: latest, mariadb-app-20260101T000000Z, "
                                      r"mariadb-app-20260102T000000Z$"):
        resolve(params(backups, backup="nope"))


def test_resolve_refuses_another_engines_or_databases_backup(backups: Path) -> None:
    with pytest.raises(DbError, match="is of postgresql database 'app', not mariadb database 'app'"):
        resolve(params(backups, backup="postgresql-app-20260104T000000Z"))
    with pytest.raises(DbError, match="is of mariadb database 'other', not mariadb database 'app'"):
        resolve(params(backups, backup="mariadb-other-20260105T000000Z"))


def test_resolve_latest_without_backups(tmp_path: Path) -> None:
    with pytest.raises(DbError, match="no backup of mariadb database 'app'"):
        resolve(params(tmp_path))
    with pytest.raises(DbError, match="no backup of mariadb database 'app'"):
        resolve(params(tmp_path / "missing"))


def test_verify_backup_checks_sha256_and_the_dump_trailer(tmp_path: Path) -> None:
    good = write_backup(tmp_path, "mariadb", "app", "20260101T000000Z")
    assert verify_backup(params(tmp_path), good) == str(tmp_path / good["file"])
    (tmp_path / good["file"]).write_bytes(b"-- dump\n-- tampered\n")
    with pytest.raises(DbError, match=f"backup {good['id']} is corrupt: sha256"):
        verify_backup(params(tmp_path), good)
    truncated = write_backup(tmp_path, "mariadb", "app", "20260102T000000Z", body=b"-- dump\nINSERT")
    with pytest.raises(DbError, match="is truncated"):
        verify_backup(params(tmp_path), truncated)
    (tmp_path / truncated["file"]).unlink()
    with pytest.raises(DbError, match="is missing"):
        verify_backup(params(tmp_path), truncated)


def test_prune_keeps_the_newest_and_every_safety_backup(tmp_path: Path) -> None:
    for day in range(1, 6):
        write_backup(tmp_path, "mariadb", "app", f"2026010{day}T000000Z")
    write_backup(tmp_path, "mariadb", "app", "20260100T000000Z", kind="safety")
    before = sorted(p.name for p in tmp_path.iterdir())
    changes: list[str] = []
    would = prune(params(tmp_path, retention=2), check_mode=True, changes=changes)
    assert would == [f"mariadb-app-2026010{day}T000000Z" for day in (1, 2, 3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == before and changes == []  # check mode: dry
    assert prune(params(tmp_path, retention=2), changes=changes) == would
    assert changes == [f"remove backup {i}" for i in would]
    left = [m["id"] for m in list_backups(str(tmp_path))]
    assert left == ["mariadb-app-20260100T000000Z-safety", "mariadb-app-20260104T000000Z",
                    "mariadb-app-20260105T000000Z"]
    assert prune(params(tmp_path, retention=0)) == ["mariadb-app-20260104T000000Z"]  # never below one


@pytest.mark.parametrize("minutes", [1, 60, MINUTES_MAX])
def test_minutes_within_a_week(minutes: int) -> None:
    assert check_minutes(minutes) == minutes


@pytest.mark.parametrize("minutes", [0, -5, MINUTES_MAX + 1, None, "60", 1.5, True])
def test_minutes_outside_refused_naming_the_range(minutes: Any) -> None:
    with pytest.raises(DbError, match=f"from 1 to {MINUTES_MAX}"):
        check_minutes(minutes)
