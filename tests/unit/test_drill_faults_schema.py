"""Drill files with the new faults: their params checked with the field and the valid choices named,
and the data loss (RPO) of a restore judged against the drill's SLA (mayday.drills.schema, data_loss,
journal)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mayday.drills import data_loss, journal, schema
from mayday.errors import BadInput

BASE: dict[str, Any] = {
    "steady_state": [{"name": "health", "hosts": "web", "http": {"url": "http://127.0.0.1/health-check"}}],
    "recovery": {"scenario": "level2", "params": {"component": "database"}},
    "sla": {"detect": "30s", "recover": "15m", "rpo": "26h"},
}


def drill(fault: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**BASE, "fault": {"hosts": "db", **fault}, **extra}


def problems(doc: dict[str, Any]) -> str:
    with pytest.raises(BadInput) as err:
        schema.parse(doc, Path("drills/x.yml"))
    return str(err.value)


def test_shipped_drills_with_the_new_faults_parse() -> None:
    faults = {name: schema.load(name).plan()["fault"] for name in ("level2-database", "db-connections",
                                                                    "communication-failover",
                                                                    "level2-database-migration")}
    assert faults["level2-database-migration"]["type"] == "bad_migration"
    assert faults["level2-database"]["type"] == "drop_rows"
    assert schema.load("level2-database").sla["rpo"] == 26 * 3600
    assert faults["db-connections"]["params"]["through"] == "pgbouncer"
    assert faults["communication-failover"] == {"type": "fail_channel", "hosts": "",
                                                "params": {"channel": ["incident-log"]}}


@pytest.mark.parametrize("params, expected", [
    ({"engine": "mariadb", "database": "app"}, "drop_rows needs table"),
    ({"engine": "oracle", "database": "app", "table": "users"}, "fault.params.engine: 'oracle' unknown"),
    ({"engine": "mariadb", "database": "app", "table": "users; drop"}, "fault.params.table: 'users; drop' is not"),
    ({"engine": "mariadb", "database": "app", "table": "users", "rows": 0}, "fault.params.rows: 0; valid: 1..100000"),
    ({"engine": "mariadb", "database": "app", "table": "users", "rows": True}, "fault.params.rows: True"),
])
def test_drop_rows_params(params: dict[str, Any], expected: str) -> None:
    assert expected in problems(drill({"type": "drop_rows", "params": params}))


@pytest.mark.parametrize("values, expected", [
    (None, "corrupt_rows needs set"),
    ({}, "fault.params.set: a mapping"),
    ({"id": 0}, "fault.params.set: id is the key"),
    ({"name": "o'brien"}, "fault.params.set.name: \"o'brien\"; valid: null"),
    ({"bad col": 1}, "column 'bad col' is not a plain identifier"),
])
def test_corrupt_rows_params(values: Any, expected: str) -> None:
    params: dict[str, Any] = {"engine": "postgresql", "database": "app", "table": "users"}
    if values is not None:
        params["set"] = values
    assert expected in problems(drill({"type": "corrupt_rows", "params": params}))


def test_corrupt_rows_accepts_null_booleans_numbers_and_plain_text() -> None:
    params = {"engine": "postgresql", "database": "app", "table": "users", "rows": "all",
              "set": {"disabled": True, "name": None, "score": 1.5, "note": "corrupted by drill"}}
    assert schema.parse(drill({"type": "corrupt_rows", "params": params}), Path("x.yml")).fault["type"] == \
        "corrupt_rows"


@pytest.mark.parametrize("extra, expected", [
    ({"sessions": 0}, "fault.params.sessions: 0; valid: auto (the free connections) or 1..100"),
    ({"sessions": 101}, "1..100 (max_sessions)"),
    ({"max_sessions": 1001}, "fault.params.max_sessions: 1001; valid: 1..1000"),
    ({"through": "pgbouncer", "engine": "mariadb"}, "fault.params.through: 'pgbouncer'; valid: server, or pgbouncer"),
    ({"user": "app'--"}, "fault.params.user: \"app'--\" is not a plain identifier"),
])
def test_saturate_connections_params(extra: dict[str, Any], expected: str) -> None:
    params = {"engine": "postgresql", "database": "app", "user": "app", **extra}
    assert expected in problems(drill({"type": "saturate_connections", "params": params}))


@pytest.mark.parametrize("migration, expected", [
    ("ALTER TABLE users RENAME TO old_users", "fault.params.migration: renames the table"),
    ("ALTER TABLE tokens DROP COLUMN x", "fault.params.migration: 'ALTER TABLE tokens DROP COLUMN x'; valid: one "
                                         "ALTER TABLE users"),
    ("ALTER TABLE users DROP COLUMN x; DROP TABLE users", "valid: one ALTER TABLE users"),
])
def test_bad_migration_params(migration: str, expected: str) -> None:
    params = {"engine": "mariadb", "database": "app", "table": "users", "migration": migration}
    assert expected in problems(drill({"type": "bad_migration", "params": params}))
    assert "bad_migration needs migration" in problems(drill({"type": "bad_migration", "params": {
        "engine": "mariadb", "database": "app", "table": "users"}}))


def test_fail_channel_belongs_to_communication_drills() -> None:
    assert "fail_channel is a communication drill's fault" in problems(
        drill({"type": "fail_channel", "params": {"channel": "incident-log"}}))
    comm = {"kind": "communication", "fault": {"type": "fail_channel", "params": {}}}
    assert "fault.params.channel: the name" in problems(comm)
    comm["fault"] = {"type": "stop_service", "params": {"service": "x"}}
    assert "unknown in a communication drill; valid: fail_channel" in problems(comm)
    two = schema.parse({"kind": "communication", "fault": {"type": "fail_channel",
                                                           "params": {"channel": ["a", "b"]}}}, Path("x.yml"))
    assert two.fault["params"]["channel"] == ["a", "b"]


# -- data loss: the restore's backups against the fault's moment -----------------------------------
def test_backup_ids_give_their_time() -> None:
    assert data_loss.backup_time("mariadb-app-20261126T071915Z") == 1795677555.0
    assert data_loss.backup_time("mariadb-app-20261126T071925Z-safety") is None
    assert data_loss.backup_time(None) is None


def test_recovery_points_from_a_level2_report(tmp_path: Path) -> None:
    report = {"results": {"db1": {"backup": "mariadb-app-20261126T071915Z"},
                          "pg1": {"backup": "postgresql-app-20261126T071916Z"}, "web1": {"ok": True}}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    points = data_loss.recovery_points_of({"report_md": str(tmp_path / "report.md")})
    assert points == {"db1": 1795677555.0, "pg1": 1795677556.0}
    assert data_loss.rpo_s(1795677615.0, points) == 60.0  # the oldest backup's writes since are lost
    assert data_loss.recovery_points_of({"report_md": str(tmp_path / "nowhere" / "report.md")}) == {}
    assert data_loss.rpo_s(None, points) is None and data_loss.rpo_s(1.0, {}) is None


def fault_events(points: dict[str, float] | None) -> list[dict[str, Any]]:
    scenario = {"event": "scenario", "ok": True, "outcome": "RECOVERED", "elapsed_s": 8.0}
    if points:
        scenario["recovery_points"] = points
    return [{"event": "injected", "injected_at": 1000.0},
            {"event": "probe", "phase": "detect", "changed_at": 1001.0, "ok": False},
            scenario,
            {"event": "probe", "phase": "recover", "changed_at": 1010.0, "ok": True},
            {"event": "probe", "phase": "steady_after", "ok": True},
            {"event": "cleanup", "ok": True}]


@pytest.mark.parametrize("points, verdict, reason", [
    ({"db1": 900.0, "pg1": 950.0}, "PASSED", ""),
    ({"db1": 800.0}, "FAILED", "data written in the 200.0 s before the fault was lost, over the RPO of 150 s"),
    (None, "FAILED", "the data loss (RPO) was not measured"),
])
def test_a_fault_drill_with_an_rpo_is_judged_on_its_data_loss(points: dict[str, float] | None, verdict: str,
                                                             reason: str) -> None:
    facts = journal.facts_of(fault_events(points))
    got, reasons = journal.judge("fault", facts, {"detect": 30, "recover": 900, "rpo": 150})
    assert got == verdict
    assert (reason in "; ".join(reasons)) if reason else reasons == []
    if points:
        assert journal.figures(facts)["rpo_s"] == 1000.0 - min(points.values())


def test_a_fault_drill_without_rpo_ignores_data_loss() -> None:
    got, reasons = journal.judge("fault", journal.facts_of(fault_events(None)), {"detect": 30, "recover": 900})
    assert (got, reasons) == ("PASSED", [])

