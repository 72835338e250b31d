"""Drills (issue 11) without the lab: the drill schema and its errors, the verdict (SLA, cleanup,
kill switch), the reports, the schedule's units, and the file faults on a temporary directory."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import mayday_fault
import pytest
import yaml
from click.testing import CliRunner

from mayday.drills import journal, report, runs, schedule, schema
from mayday.drills.cli import drill_group
from mayday.errors import BadInput

GOOD = {
    "steady_state": [{"name": "health", "hosts": "web", "http": {"url": "http://127.0.0.1/health-check"}}],
    "fault": {"type": "broken_release", "hosts": "web", "params": {}},
    "recovery": {"scenario": "level1"},
    "sla": {"detect": "30s", "recover": "15m"},
}


def write(tmp_path: Path, doc: dict[str, Any], name: str = "my-drill") -> Path:
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def problems_of(tmp_path: Path, **changes: Any) -> str:
    doc = {**GOOD, **changes}
    with pytest.raises(BadInput) as caught:
        schema.load(str(write(tmp_path, doc)))
    return str(caught.value)


# -- schema -----------------------------------------------------------------------------------------
def test_every_shipped_drill_checks() -> None:
    names = schema.known()
    assert {"level1", "level2-api", "level2-frontend", "level2-webhook", "db-long-query", "restore-test",
            "security-lockdown", "communication"} <= set(names)
    for name in names:
        drill = schema.load(name)
        assert drill.name == name
        json.dumps(drill.plan())  # plain data for the playbook


def test_backup_probe_needs_max_age_and_plans_seconds(tmp_path: Path) -> None:
    probe = {"name": "backup", "hosts": "db", "backup": {"max_age": "26h"}}
    drill = schema.load(str(write(tmp_path, {**GOOD, "steady_state": [*GOOD["steady_state"], probe]})))
    checks = [c for p in drill.plan()["probes"] for c in p["checks"] if "backup" in c]
    assert checks == [{"name": "backup", "backup": {"dir": "/var/backups/mayday", "max_age_s": 93600}}]
    bad = problems_of(tmp_path, steady_state=[{"name": "b", "hosts": "db", "backup": {"dir": "rel"}}])
    assert "backup.max_age: required" in bad
    bad = problems_of(tmp_path, steady_state=[{"name": "b", "hosts": "db", "backup": {"max_age": "soon"}}])
    assert "'soon' is not a duration" in bad


def test_good_drill_plan(tmp_path: Path) -> None:
    drill = schema.load(str(write(tmp_path, GOOD)))
    plan = drill.plan()
    assert plan["sla"] == {"detect": 30, "recover": 900}
    assert plan["probes"] == [{"hosts": "web", "checks": [{"name": "health", "http": GOOD["steady_state"][0]["http"]}]}]
    assert plan["recovery"]["scenario"] == "level1" and plan["recovery"]["by"] == "scenario"


@pytest.mark.parametrize(("changes", "expected"), [
    ({"fault": {"type": "unplug", "hosts": "web"}},
     "fault.type: 'unplug' unknown; valid: bad_migration, block_port, break_file"),
    ({"recovery": {"scenario": "level9"}}, "recovery.scenario: 'level9' unknown; valid:"),
    ({"recovery": {"scenario": "level2", "params": {"component": "disk"}}},
     "recovery.params: unknown component 'disk'; valid: api"),
    ({"recovery": {"scenario": "level1", "params": {"colour": "red"}}},
     "recovery.params: colour not an input of level1; valid: force, release"),
    ({"recovery": {"scenario": "level1", "by": "magic"}}, "recovery.by: 'magic' unknown; valid: scenario, alert"),
    ({"sla": {"detect": "soon", "recover": "15m"}}, "sla.detect: 'soon' is not a duration"),
    ({"sla": {"recover": "15m"}}, "sla.detect: required for a fault drill"),
    ({"sla": {"detect": "1m", "recover": "1m", "mttr": "1m"}}, "sla: mttr unknown; valid: detect, recover, rpo"),
    ({"colour": "red"}, "colour: unknown field(s); valid:"),
    ({"kind": "party"}, "kind: 'party' unknown; valid: fault, response, restore_test, communication"),
    ({"lease": "5s"}, "lease: 5s out of range; valid: 10s..4h"),
    ({"steady_state": [{"name": "x", "hosts": "web", "ftp": {}}]}, "needs exactly one probe kind; valid: http"),
    ({"steady_state": [{"name": "x", "hosts": "pg", "sql": {"query": "SELECT 1", "engine": "oracle"}}]},
     "sql.engine: 'oracle' unknown; valid: postgresql, mariadb"),
    ({"fault": {"type": "stop_service", "hosts": "web", "params": {}}},
     "fault.params: stop_service needs service"),
    ({"fault": {"type": "block_port", "hosts": "web", "params": {"port": 70000}}}, "fault.params.port: a TCP port"),
])
def test_errors_name_file_field_and_choices(tmp_path: Path, changes: dict[str, Any], expected: str) -> None:
    said = problems_of(tmp_path, **changes)
    assert expected in said, said
    assert said.startswith(str(tmp_path / "my-drill.yml") + ": "), said


def test_unknown_drill_names_the_valid_ones() -> None:
    with pytest.raises(BadInput, match=r"drill 'nope' not found; valid: .*level1"):
        schema.load("nope")


def test_check_command_exits_2_on_errors(tmp_path: Path) -> None:
    bad = write(tmp_path, {**GOOD, "fault": {"type": "unplug", "hosts": "web"}})
    result = CliRunner().invoke(drill_group, ["check", str(bad)])
    assert result.exit_code == 2
    ok = CliRunner().invoke(drill_group, ["check", str(write(tmp_path, GOOD, "fine"))])
    assert ok.exit_code == 0, ok.output


# -- verdict ----------------------------------------------------------------------------------------
SLA = {"detect": 30, "recover": 900}


def events(**over: Any) -> list[dict[str, Any]]:
    evs: list[dict[str, Any]] = [
        {"event": "injected", "phase": "inject", "host": "web1", "injected_at": 100.0},
        {"event": "probe", "phase": "detect", "host": "web1", "ok": False, "changed_at": 102.0},
        {"event": "scenario", "phase": "recover", "ok": True, "outcome": "RECOVERED", "elapsed_s": 8},
        {"event": "probe", "phase": "recover", "host": "web1", "ok": True, "changed_at": 112.0},
        {"event": "probe", "phase": "steady_after", "host": "web1", "ok": True},
        {"event": "cleanup", "phase": "cleanup", "host": "web1", "ok": True, "faults": []},
    ]
    for kind, change in over.items():
        for e in evs:
            if e["event"] == kind or f"{e['event']}_{e['phase']}" == kind:
                e.update(change)
    return evs


def test_passed_with_figures() -> None:
    facts = journal.facts_of(events())
    assert journal.figures(facts)["time_to_detect_s"] == 2.0
    assert journal.figures(facts)["time_to_recover_s"] == 12.0
    assert journal.judge("fault", facts, SLA) == ("PASSED", [])


def test_sla_missed_is_failed() -> None:
    verdict, reasons = journal.judge("fault", journal.facts_of(events(probe_detect={"changed_at": 140.0})), SLA)
    assert verdict == "FAILED" and "over the SLA of 30 s" in reasons[0]


def test_failed_cleanup_fails_a_perfect_drill() -> None:
    verdict, reasons = journal.judge("fault", journal.facts_of(events(cleanup={"ok": False})), SLA)
    assert verdict == "FAILED" and any("cleanup failed" in r for r in reasons)


def test_steady_state_not_back_fails() -> None:
    evs = [*events(), {"event": "probe", "phase": "recover", "host": "web2", "ok": False, "changed_at": None}]
    verdict, reasons = journal.judge("fault", journal.facts_of(evs), SLA)
    assert verdict == "FAILED" and any("did not come back" in r for r in reasons)


def test_failed_scenario_fails_even_when_probes_recover() -> None:
    evs = events(scenario={"ok": False, "outcome": "FAILED"})
    assert journal.judge("fault", journal.facts_of(evs), SLA)[0] == "FAILED"


def test_refusals_and_kill_switch() -> None:
    refused = [{"event": "refused", "phase": "open", "reason": "production"}]
    assert journal.judge("fault", journal.facts_of(refused), SLA) == ("REFUSED", ["production"])
    stopped_early = [{"event": "stopped", "phase": "steady_before", "reason": "kill switch"}]
    assert journal.judge("fault", journal.facts_of(stopped_early), SLA)[0] == "REFUSED"
    stopped_late = [*events()[:2], {"event": "stopped", "phase": "detect", "reason": "kill switch"},
                    events()[-1]]
    verdict, reasons = journal.judge("fault", journal.facts_of(stopped_late), SLA)
    assert verdict == "FAILED" and "kill switch" in reasons[0]
    assert journal.EXIT == {"PASSED": 0, "FAILED": 1, "REFUSED": 2}


def test_restore_test_rpo() -> None:
    evs = [{"event": "restore_test", "ok": True, "data_age_s": 7200, "restore_s": 4.0}]
    assert journal.judge("restore_test", journal.facts_of(evs), {"rpo": 3600})[0] == "FAILED"
    assert journal.judge("restore_test", journal.facts_of(evs), {"rpo": 93600}) == ("PASSED", [])


# -- reports ----------------------------------------------------------------------------------------
def built(tmp_path: Path, evs: list[dict[str, Any]]) -> dict[str, Any]:
    for e in evs:
        journal.append(tmp_path, e)
    plan = schema.load("level1").plan()
    return journal.build(tmp_path, plan, {"run_id": "DRILL-level1-20260101T000000Z-abcd", "inventory": "lab",
                                          "environment": "lab"})


def test_junit_is_well_formed_with_a_case_per_phase_and_probe(tmp_path: Path) -> None:
    evs = events()
    evs[3]["results"] = [{"name": "health-check", "ok": True}]
    doc = built(tmp_path, evs)
    root = ET.fromstring(report.junit(doc).split("?>", 1)[1])
    names = {(c.get("classname"), c.get("name")) for c in root.iter("testcase")}
    assert ("drill.level1.phase", "detect") in names and ("drill.level1.probe.recover", "web1: health-check") in names
    assert ("drill.level1.sla", "recover") in names
    assert root.get("failures") == "0"


def test_junit_and_markdown_show_a_failure(tmp_path: Path) -> None:
    doc = built(tmp_path, events(cleanup={"ok": False}))
    root = ET.fromstring(report.junit(doc).split("?>", 1)[1])
    assert int(root.get("failures") or 0) >= 1
    text = report.markdown(doc)
    assert "## Verdict: FAILED" in text and "cleanup failed" in text
    assert doc["format"] == "mayday-drill-journal" and doc["format_version"] == 1


def test_trend_and_sparkline() -> None:
    runs_ = [{"drill": "level1", "verdict": v, "started": i, "figures": {"time_to_recover_s": t}}
             for i, (v, t) in enumerate([("PASSED", 10.0), ("PASSED", 20.0), ("FAILED", 40.0)])]
    (row,) = report.trend(runs_)
    assert row["verdicts"] == "++x" and row["passed"] == 2 and row["ttr_s"] == 40.0
    assert row["recover_trend"] == "▁▃█"


# -- runs ---------------------------------------------------------------------------------------------
def test_hosts_and_scenario_commands() -> None:
    groups = {"all": ["web1", "web2", "db1"], "web": ["web1", "web2"], "db": ["db1"]}
    assert runs.hosts_of("web:db", groups) == ["web1", "web2", "db1"]
    assert runs.hosts_of("db1,nope", groups) == ["db1"]
    assert runs.scenario_argv("lockdown", {"rate_limit": True, "for": "10m"}, "lab")[3:] == \
        ["lockdown", "--rate-limit", "--for", "10m", "-i", "lab", "--yes", "--json"]
    assert runs.scenario_argv("kill-long", {"older_than": "10s"}, "")[3:6] == ["db", "kill-long", "--older-than"]
    assert runs.refusal("lab", ("lab", "staging")) == ""
    assert "production" in runs.refusal("production", ("lab", "staging"))


# -- schedule -----------------------------------------------------------------------------------------
# Units and bad input: tests/unit/test_drill_schedule.py.
def test_seed_002_rotation_names_shipped_drills() -> None:
    entries = schedule.rotation(schema.drills_dir() / "schedules" / "seed-002-rotation.yml")
    assert len(entries) >= 4
    for drill, every in entries:
        schema.load(drill)
        schedule.on_calendar(every)


# -- file faults (host side) on a temporary directory -----------------------------------------------
@pytest.fixture
def fault_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(mayday_fault, "STATE_DIR", str(tmp_path / "state"))
    return tmp_path


def test_break_file_restores_byte_for_byte(fault_dir: Path) -> None:
    target = fault_dir / "api.php"
    target.write_bytes(b"<?php return ['enabled' => true];\n")
    target.chmod(0o640)
    _state, took = mayday_fault.inject("f1", "break_file", {"path": str(target), "content": "<?php oops"}, "R", "d")
    assert took and target.read_bytes() == b"<?php oops"
    assert mayday_fault.remove("f1") == "removed"
    assert target.read_bytes() == b"<?php return ['enabled' => true];\n"
    assert target.stat().st_mode & 0o777 == 0o640
    assert mayday_fault.remove("f1") == "gone"  # idempotent: the lease's revert may come second


def test_break_file_leaves_what_the_scenario_put_back(fault_dir: Path) -> None:
    target = fault_dir / "app.css"
    target.write_text("body {}")
    mayday_fault.inject("f2", "break_file", {"path": str(target), "delete": True}, "R", "d")
    assert not target.exists()
    target.write_text("body { restored }")  # the scenario's own copy
    mayday_fault.remove("f2")
    assert target.read_text() == "body { restored }"


def test_broken_release_deployed_and_removed(fault_dir: Path) -> None:
    root = fault_dir / "app"
    (root / "releases" / "v1" / "lib").mkdir(parents=True)
    (root / "releases" / "v1" / "lib" / "db.php").write_text("read /etc/db.ini")
    (root / "current").symlink_to("releases/v1")
    history = root / ".mayday-deploy-history"
    history.write_text("2026-01-01T00:00:00Z\tv1\n")
    params = {"root": str(root), "break": [{"file": "lib/db.php", "find": "/etc/db.ini", "replace": "/nope"}]}
    _state, took = mayday_fault.inject("f3", "broken_release", params, "R", "d")
    assert took and os.readlink(root / "current") == "releases/drill-f3"
    assert (root / "releases" / "drill-f3" / "lib" / "db.php").read_text() == "read /nope"
    assert history.read_text().endswith("\tdrill-f3\n")
    mayday_fault.remove("f3")
    assert os.readlink(root / "current") == "releases/v1"
    assert sorted(p.name for p in (root / "releases").iterdir()) == ["v1"]
    assert history.read_text() == "2026-01-01T00:00:00Z\tv1\n"


def test_broken_release_removal_puts_back_the_release_it_found(fault_dir: Path) -> None:
    """A recovery that failed onto another release (v0 here) is no reason to leave the host there."""
    root = fault_dir / "app"
    for release in ("v0", "v1"):
        (root / "releases" / release).mkdir(parents=True)
    (root / "current").symlink_to("releases/v1")
    (root / ".mayday-deploy-history").write_text("2026-01-01T00:00:00Z\tv0\n2026-01-02T00:00:00Z\tv1\n")
    mayday_fault.inject("f4", "broken_release", {"root": str(root)}, "R", "d")
    (root / "current").unlink()
    (root / "current").symlink_to("releases/v0")  # the failed rollback's choice
    assert mayday_fault.remove("f4") == "removed"
    assert os.readlink(root / "current") == "releases/v1"
    assert sorted(p.name for p in (root / "releases").iterdir()) == ["v0", "v1"]


def test_broken_release_removal_keeps_a_release_deployed_during_the_drill(fault_dir: Path) -> None:
    """Someone deployed v2 on staging while the drill held its lease: v2 stays live, the drill's own
    release and history line go, and a second removal (a retry) changes nothing."""
    root = fault_dir / "app"
    for release in ("v1", "v2"):
        (root / "releases" / release).mkdir(parents=True)
    (root / "current").symlink_to("releases/v1")
    history = root / ".mayday-deploy-history"
    history.write_text("2026-01-01T00:00:00Z\tv1\n")
    state, _ = mayday_fault.inject("f8", "broken_release", {"root": str(root)}, "R", "d")
    with history.open("a") as handle:
        handle.write("2026-01-02T00:00:00Z\tv2\n")
    (root / "current").unlink()
    (root / "current").symlink_to("releases/v2")  # the person's deploy
    fault = mayday_fault.FAULTS["broken_release"]()
    fault.remove(state)
    assert fault.removed(state)
    assert os.readlink(root / "current") == "releases/v2"
    assert history.read_text() == "2026-01-01T00:00:00Z\tv1\n2026-01-02T00:00:00Z\tv2\n"
    assert sorted(p.name for p in (root / "releases").iterdir()) == ["v1", "v2"]
    # The decision survives in the host's fault state: a retried removal still keeps v2.
    assert mayday_fault.remove("f8") == "removed"
    assert os.readlink(root / "current") == "releases/v2"


def test_broken_release_still_live_is_switched_back_whatever_came_after(fault_dir: Path) -> None:
    root = fault_dir / "app"
    (root / "releases" / "v1").mkdir(parents=True)
    (root / "current").symlink_to("releases/v1")
    history = root / ".mayday-deploy-history"
    history.write_text("2026-01-01T00:00:00Z\tv1\n")
    mayday_fault.inject("f9", "broken_release", {"root": str(root)}, "R", "d")
    with history.open("a") as handle:
        handle.write("2026-01-02T00:00:00Z\tv9\n")  # a deploy that never switched the link
    assert mayday_fault.remove("f9") == "removed"
    assert os.readlink(root / "current") == "releases/v1"


def test_unknown_fault_is_refused(fault_dir: Path) -> None:
    with pytest.raises(mayday_fault.FaultError, match="valid: bad_migration, block_port, break_file, broken_release"):
        mayday_fault.inject("f4", "unplug", {}, "R", "d")


def test_insert_rows_refuses_what_is_not_plain_sql(fault_dir: Path) -> None:
    base = {"engine": "mariadb", "database": "app", "table": "webhook_events", "tag_column": "endpoint"}
    with pytest.raises(mayday_fault.FaultError, match="not a plain identifier"):
        mayday_fault.inject("f5", "insert_rows", {**base, "table": "x`; DROP TABLE users; #"}, "R", "d")
    with pytest.raises(mayday_fault.FaultError, match="has characters outside"):
        mayday_fault.inject("f6", "insert_rows", {**base, "values": {"payload": "'); DROP TABLE users; --"}}, "R", "d")
    with pytest.raises(mayday_fault.FaultError, match=r"valid: 1\.\.10000"):
        mayday_fault.inject("f7", "insert_rows", {**base, "rows": 0}, "R", "d")
