"""mayday.records: incident ids, downtime measurement, reports and locks on a real state directory."""

from __future__ import annotations

import json
import os
import re

import pytest

from mayday import records


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("MAYDAY_STATE_DIR", str(tmp_path))
    return tmp_path


def test_state_dir_follows_env(state):
    assert records.state_dir() == str(state)


def test_open_incident_id_and_metadata(state):
    incident_id, path = records.open_incident({"scenario": "bad-deploy", "severity": "SEV2"})
    assert re.fullmatch(r"INC-\d{8}-\d{6}", incident_id)
    assert path == os.path.join(str(state), "incidents", incident_id)
    meta = json.loads((state / "incidents" / incident_id / "incident.json").read_text())
    assert meta["incident"] == incident_id
    assert meta["scenario"] == "bad-deploy"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", meta["opened"])


def test_open_incident_suffixes_ids_in_same_second(state):
    for _ in range(5):  # retry if the two calls straddle a second boundary
        first, _ = records.open_incident({})
        second, second_path = records.open_incident({})
        if second.startswith(first):
            break
    else:
        pytest.fail("could not open two incidents within one second")
    assert second == f"{first}-2"
    assert os.path.isdir(second_path)
    third, _ = records.open_incident({})
    if third.startswith(first):
        assert third == f"{first}-3"


def health_event(host, *probes, phase="verify", step="health"):
    return {
        "host": host,
        "phase": phase,
        "step": step,
        "result": "ok",
        "health": [
            {
                "checked_at": f"2025-01-01T00:00:{sec}Z",
                "ok": ok,
                "status": 200 if ok else 500,
                "latency_ms": 3.0,
                "problems": [] if ok else ["status 500, expected 200"],
            }
            for sec, ok in probes
        ],
    }


def test_measure_downtime_two_hosts():
    events = [
        health_event("web1", ("00.000", True), ("10.500", False)),
        health_event("web2", ("12.000", False)),
        health_event("web1", ("20.000", True)),
        health_event("web2", ("25.300", True)),
    ]
    down = records.measure_downtime(events)
    assert down["seconds"] == pytest.approx(14.8)
    assert down["detected_at"] == "2025-01-01T00:00:10.500Z"
    assert down["recovered_at"] == "2025-01-01T00:00:25.300Z"


def test_measure_downtime_relapse_counts_until_final_recovery():
    events = [health_event("web1", ("10.000", False), ("20.000", True), ("30.000", False), ("40.000", True))]
    down = records.measure_downtime(events)
    assert down["seconds"] == pytest.approx(30.0)
    assert down["recovered_at"] == "2025-01-01T00:00:40.000Z"


def test_measure_downtime_zero_when_never_unhealthy():
    events = [health_event("web1", ("01.000", True)), health_event("web2", ("02.000", True)), {"host": "x"}]
    down = records.measure_downtime(events)
    assert down["seconds"] == 0
    assert down["detected_at"] is None
    assert records.measure_downtime([])["seconds"] == 0


def test_measure_downtime_none_when_a_host_never_recovers():
    events = [
        health_event("web1", ("10.000", False), ("20.000", True)),
        health_event("web2", ("11.000", False), ("21.000", False)),
    ]
    down = records.measure_downtime(events)
    assert down["seconds"] is None
    assert down["detected_at"] == "2025-01-01T00:00:10.000Z"
    assert "web2" in down["basis"]
    assert "web1" not in down["basis"]


def test_close_incident_writes_reports_with_sub_steps(state):
    incident_id, path = records.open_incident(
        {"scenario": "bad-deploy", "title": "Bad deploy on web", "severity": "SEV1", "hosts": ["web9"]}
    )
    records.append_event(path, health_event("web1", ("10.000", False), phase="detect", step="probe"))
    records.append_event(
        path,
        {
            "host": "web1",
            "phase": "rollback",
            "step": "rollback_host",
            "result": "changed",
            "started": "2025-01-01T00:00:12.000Z",
            "duration_s": 3.2,
            "steps": [
                {
                    "step": "switch release",
                    "started": "2025-01-01T00:00:12.100Z",
                    "duration_s": 0.01,
                    "result": "ok",
                    "detail": "v10 -> v2",
                },
                {
                    "step": "restart service",
                    "started": "2025-01-01T00:00:12.200Z",
                    "duration_s": 2.5,
                    "result": "ok",
                    "detail": {"status": 200, "latency_ms": 4.2, "ok": True},
                },
            ],
        },
    )
    records.append_event(path, health_event("web1", ("16.000", True), phase="verify", step="probe"))
    assert len(records.read_timeline(path)) == 3

    report = records.close_incident(path, "RECOVERED", "Rolled back web1 to v2", {"operator": "alice"})

    on_disk = json.loads((state / "incidents" / incident_id / "report.json").read_text())
    assert on_disk["outcome"] == "RECOVERED"
    assert on_disk["operator"] == "alice"
    assert on_disk["hosts"] == ["web1", "web9"]
    assert on_disk["downtime"]["seconds"] == pytest.approx(6.0)
    assert on_disk == json.loads(json.dumps(report, default=str))
    steps = [s["step"] for s in on_disk["steps"]]
    assert steps == ["probe", "rollback_host", "  switch release", "  restart service", "probe"]
    sub = on_disk["steps"][2]
    assert sub["host"] == "web1" and sub["phase"] == "rollback" and sub["detail"] == "v10 -> v2"
    assert on_disk["steps"][3]["detail"] == "HTTP 200 in 4.2 ms"
    assert "HTTP 500 in 3.0 ms (status 500, expected 200)" in on_disk["steps"][0]["detail"]

    md = (state / "incidents" / incident_id / "report.md").read_text()
    assert md.startswith(f"# {incident_id}: Bad deploy on web")
    assert "| Outcome | **RECOVERED** |" in md
    assert "| Downtime | 6.0 s (2025-01-01T00:00:10.000Z to 2025-01-01T00:00:16.000Z)" in md
    assert "| web1 | rollback |   switch release | ok | v10 -> v2 |" in md
    assert "| Operator | alice |" in md
    assert "Rolled back web1 to v2" in md


def test_interrupt_mark_first_signal_counts_and_only_for_its_run(state):
    assert records.interrupted("run-a") is None
    assert records.interrupted(None) is None
    records.mark_interrupted("run-a", "SIGINT")
    records.mark_interrupted("run-a", "SIGTERM")
    assert records.interrupted("run-a")["signal"] == "SIGINT"
    assert records.interrupted("run-b") is None
    assert oct(os.stat(records.interrupt_path("run-a")).st_mode & 0o777) == "0o600"


def test_incident_of_run_finds_the_first_incident_the_run_opened(state):
    assert records.incident_of_run("run-a") is None
    _, first = records.open_incident({"run_id": "run-a", "scenario": "performance"})
    records.open_incident({"run_id": "run-b"})
    _, handed = records.open_incident({"run_id": "run-a", "scenario": "level1"})
    assert handed != first
    assert records.incident_of_run("run-a") == first


def test_report_names_the_lock_a_run_replaced(state):
    _, path = records.open_incident({"scenario": "level1"})
    gone = {"incident": "INC-20261125-080000", "operator": "alice", "controller": "awx-job-7f", "pid": 4242}
    records.append_event(path, {"started": records.utc_now(), "duration_s": 0.1, "host": "db1",
                                "phase": "Pre-flight", "step": "inspect", "result": "ok", "stale_replaced": gone})
    records.append_event(path, {"started": records.utc_now(), "duration_s": 0.1, "host": "web1",
                                "phase": "Pre-flight", "step": "inspect", "result": "ok", "stale_replaced": None})
    report = records.close_incident(path, "RECOVERED", "done", {})
    details = {s["host"]: s["detail"] for s in report["steps"]}
    assert "replacing that of incident INC-20261125-080000 by alice on awx-job-7f" in details["db1"]
    assert not details["web1"]
