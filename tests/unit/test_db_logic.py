"""The parts of the database module that need no server: names, manifests, comparisons, bounds."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from mayday_db_backups import (
    PRE_INFIX,
    _write_private,
    check_database_name,
    compare,
    derived_names,
    disk_shortfalls,
    ensure_dir,
    expired,
    human_size,
    inventory,
    kept_name_time,
    list_backups,
    max_database_name,
    prune,
    resolve,
    restore_retention,
    stamp_epoch,
    verification,
    verify_backup,
    with_headroom,
)
from mayday_db_engines import DbError, check_name
from mayday_db_webhook import MINUTES_MAX, check_minutes

TABLES = {"orders": {"rows": 3, "checksum": "11"}, "customers": {"rows": 2, "checksum": "22"}}


def write_backup(backup_dir: Path, engine: str, db: str, time: str, kind: str = "backup",
                 body: bytes = b"-- dump\n-- Dump completed\n") -> dict[str, Any]:
    backup_id = f"{engine}-{db}-{time}" + ("" if kind == "backup" else f"-{kind}")
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


@pytest.mark.parametrize("name", ["app", "_x", "App_2", "a" * 64])
def test_check_name_accepts_plain_identifiers(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", None, "2app", "app-db", "app;drop", 'a"b', "a`b", "a b", "a" * 65, "app\n"])
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


# --- name lengths: what fits with <db>__mayday_pre_<stamp> ------------------------------------

@pytest.mark.parametrize(("engine", "max_name", "longest"), [("postgresql", 63, 34), ("mariadb", 64, 35)])
def test_database_names_up_to_what_fits_with_the_suffixes(engine: str, max_name: int, longest: int) -> None:
    assert max_database_name(max_name) == longest
    name = "d" * longest
    assert check_database_name(name, max_name, engine) == name
    shadow, keep_as = derived_names(name, max_name, now="20260101T000000Z")
    assert keep_as == f"{name}{PRE_INFIX}20260101T000000Z" and len(keep_as) == max_name
    assert shadow == name + "__mayday_shadow" and len(shadow) < max_name
    with pytest.raises(DbError, match=rf"has {longest + 1} characters; mayday handles at most {longest}: "
                                      rf"{engine} names take {max_name}"):
        check_database_name(name + "d", max_name, engine)
    with pytest.raises(DbError, match=rf"over the limit of {max_name}; database names of at most {longest}"):
        derived_names(name + "d", max_name, now="20260101T000000Z")


def test_a_thirty_character_name_fits_both_engines() -> None:
    name = "a" * 30
    for max_name in (63, 64):
        assert check_database_name(name, max_name) == name
        assert all(len(n) <= max_name for n in derived_names(name, max_name))


@pytest.mark.parametrize("name", ["", None, "2app", "app-db", "a;b", "a`b", 'a"b', "app\n", "a b"])
def test_database_name_must_be_plain(name: Any) -> None:
    with pytest.raises(DbError, match="is not a plain identifier"):
        check_database_name(name)


def test_kept_names_and_their_time() -> None:
    assert kept_name_time("app", "app__mayday_pre_20260101T010000Z") == stamp_epoch("20260101T010000Z")
    assert stamp_epoch("20260101T010000Z") - stamp_epoch("20260101T000000Z") == 3600
    for other in ("app", "app__mayday_shadow", "app2__mayday_pre_20260101T010000Z", "app__mayday_pre_2026",
                  "app__mayday_pre_20261301T010000Z", "xapp__mayday_pre_20260101T010000Z"):
        assert kept_name_time("app", other) is None, other


# --- retention of what restores leave -----------------------------------------------------------

HOUR = 3600
NOW = 1_800_000_000


def aged(*hours: float) -> list[tuple[str, float]]:
    return [(f"copy-{h}h", NOW - h * HOUR) for h in hours]


def test_retention_keeps_the_newest_and_removes_only_old_ones() -> None:
    items = aged(0.1, 5, 3, 10)  # out of order: sorted by time, not by position
    assert expired(items, 2, 60, NOW) == ["copy-5h", "copy-10h"]
    assert expired(items, 3, 60, NOW) == ["copy-10h"]


def test_retention_never_removes_one_younger_than_min_age() -> None:
    items = aged(0.1, 0.2, 0.5, 0.9, 2)
    assert expired(items, 2, 60, NOW) == ["copy-2h"]
    assert expired(items, 2, 0, NOW) == ["copy-0.5h", "copy-0.9h", "copy-2h"]


def test_retention_never_removes_the_last_one_or_a_protected_one() -> None:
    assert expired(aged(5), 0, 0, NOW) == []
    assert expired(aged(5, 6), 0, 0, NOW) == ["copy-6h"]
    assert expired(aged(5, 6, 7), 1, 0, NOW, protect={"copy-7h"}) == ["copy-6h"]
    assert expired([], 2, 0, NOW) == []


def test_retention_policy_defaults_and_refusals() -> None:
    assert restore_retention({}) == {"keep": 2, "min_age_minutes": 60}
    assert restore_retention({"restore_retention": {"keep": "3"}}) == {"keep": 3, "min_age_minutes": 60}
    with pytest.raises(DbError, match="unknown restore_retention keys keeep"):
        restore_retention({"restore_retention": {"keeep": 3}})
    with pytest.raises(DbError, match="keep must be at least 1"):
        restore_retention({"restore_retention": {"keep": 0}})


# --- disk arithmetic ------------------------------------------------------------------------------

def test_headroom_rounds_up() -> None:
    assert with_headroom(1000, 20) == 1200
    assert with_headroom(1001, 20) == 1202
    assert with_headroom(1000, 0) == 1000
    assert with_headroom(1000, -5) == 1000


def test_needs_on_one_device_add_up() -> None:
    needs = [("shadow database", "/var/lib/mysql", 1, 2000, 1200), ("safety dump", "/var/backups", 1, 2000, 1200)]
    [problem] = disk_shortfalls(needs)
    assert problem.startswith("not enough free disk: 2000 bytes free, 2400 needed")
    assert disk_shortfalls([(*needs[0][:3], 2400, 1200), (*needs[1][:3], 2400, 1200)]) == []


def test_needs_on_separate_devices_are_checked_apart() -> None:
    needs = [("shadow database", "/data", 1, 1500, 1200), ("safety dump", "/backups", 2, 1000, 1200)]
    [problem] = disk_shortfalls(needs)
    assert "1000 bytes free, 1200 needed (safety dump in /backups" in problem
    assert disk_shortfalls([needs[0], ("safety dump", "/backups", 2, 1200, 1200)]) == []


def test_human_sizes() -> None:
    assert [human_size(n) for n in (0, 1023, 1024, 1536, 5 * 1024**3)] == ["0 B", "1023 B", "1.0 KiB", "1.5 KiB",
                                                                           "5.0 GiB"]


# --- private files --------------------------------------------------------------------------------

def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_backup_dir_is_created_0700_and_a_loose_one_tightened(tmp_path: Path) -> None:
    new = tmp_path / "new" / "backups"
    changes: list[str] = []
    ensure_dir(str(new), changes)
    assert mode(new) == 0o700 and changes == [f"create {new}"]
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    (loose / "a.sql").write_text("x")
    os.chmod(loose / "a.sql", 0o644)
    (loose / "b.sql").write_text("x")
    os.chmod(loose / "b.sql", 0o600)
    (loose / "link").symlink_to(tmp_path / "elsewhere")
    changes = []
    ensure_dir(str(loose), changes, check_mode=True)
    assert changes == [] and mode(loose) == 0o755 and mode(loose / "a.sql") == 0o644  # check mode: dry
    ensure_dir(str(loose), changes)
    assert changes == [f"tighten {loose} from 0755 to 0700", f"tighten 1 files in {loose} to 0600"]
    assert mode(loose) == 0o700 and mode(loose / "a.sql") == 0o600 and mode(loose / "b.sql") == 0o600
    changes = []
    ensure_dir(str(loose), changes)
    assert changes == []  # already private: no change


def test_private_files_are_0600_new_and_never_through_a_symlink(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        _write_private(str(tmp_path / "m.json"), {"a": 1})
    finally:
        os.umask(old)
    assert mode(tmp_path / "m.json") == 0o600 and json.loads((tmp_path / "m.json").read_text()) == {"a": 1}
    with pytest.raises(FileExistsError):
        _write_private(str(tmp_path / "m.json"), {})
    (tmp_path / "victim").write_text("keep")
    (tmp_path / "evil.json").symlink_to(tmp_path / "victim")
    with pytest.raises(FileExistsError):
        _write_private(str(tmp_path / "evil.json"), {})
    assert (tmp_path / "victim").read_text() == "keep"


def test_a_manifest_of_the_current_format_is_held_in_full() -> None:
    tables = {"t": {"rows": 3, "checksum": "9"}, "@owners ": {"rows": 0, "checksum": "1"}}
    expected, reduce, warning = verification({"id": "b1", "format": 2, "tables": tables})
    assert expected == tables and warning is None
    assert compare(expected, reduce({"t": {"rows": 3, "checksum": "9"}})) == ["@owners  missing"]


def test_an_older_manifest_is_held_by_row_counts_only_and_says_so() -> None:
    old = {"id": "b0", "tables": {"t": {"rows": 3, "checksum": "CHECKSUM TABLE value"}}}
    expected, reduce, warning = verification(old)
    assert expected == {"t": {"rows": 3}}
    assert warning and "b0" in warning and "row counts only" in warning
    restored = {"t": {"rows": 3, "checksum": "new"}, "@owners ": {"rows": 0, "checksum": "1"}}
    assert compare(expected, reduce(restored)) == []
    assert compare(expected, reduce({"t": {"rows": 2, "checksum": "new"}})) != []


def test_backups_listing_names_emergency_copies_apart_and_never_resolves_them(tmp_path: Path) -> None:
    write_backup(tmp_path, "mariadb", "app", "20260101T000000Z")
    write_backup(tmp_path, "mariadb", "app", "20260102T000000Z", kind="safety")
    write_backup(tmp_path, "mariadb", "app", "20260103T000000Z", kind="emergency")
    listed = inventory(params(tmp_path, socket=str(tmp_path / "no-server.sock")))
    assert [(i["kind"], i["name"]) for i in listed["items"]] == [
        ("backup", "mariadb-app-20260101T000000Z"), ("safety", "mariadb-app-20260102T000000Z-safety"),
        ("emergency", "mariadb-app-20260103T000000Z-emergency")]
    assert [i["name"] for i in listed["emergency_backups"]] == ["mariadb-app-20260103T000000Z-emergency"]
    assert "kept_error" in listed  # no server here: the files are listed all the same
    assert resolve(params(tmp_path))["id"] == "mariadb-app-20260101T000000Z"  # latest is never an emergency copy
