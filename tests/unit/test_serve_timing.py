"""Time to detect, respond and recover: mayday_alert checked, the intervals computed in the incident
report (report.json and report.md) and shown by `mayday history`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mayday import records, timing
from mayday.history import history_lines, load_runs


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MAYDAY_STATE_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-26T03:00:00Z", "2026-11-26T03:00:00.000Z"),
    ("2026-11-26T03:00:00.123456789Z", "2026-11-26T03:00:00.123Z"),
    ("2026-11-26T04:30:00.5+01:30", "2026-11-26T03:00:00.500Z"),
    ("2026-11-26T01:00:00-02:00", "2026-11-26T03:00:00.000Z"),
])
def test_rfc3339_instants_as_alertmanager_writes_them(text: str, expected: str) -> None:
    assert timing.format_instant(timing.parse_instant(text)) == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-11-26", "2026-11-26T03:00:00", "", 17])
def test_other_times_are_refused_naming_the_valid_form(text: object) -> None:
    with pytest.raises(ValueError, match=r"valid: such as 2026-01-02T03:04:05\.123Z"):
        timing.parse_instant(text)


def test_check_alert_normalises_and_accepts_alertmanagers_own_names() -> None:
    clean, problems = timing.check_alert({"startsAt": "2026-11-26T03:00:00.123456Z", "labels": {"alertname": "A"},
                                          "fingerprint": "abc", "received_at": "2026-11-26T03:00:10Z"})
    assert problems == []
    assert clean == {"alertname": "A", "fingerprint": "abc", "starts_at": "2026-11-26T03:00:00.123Z",
                     "received_at": "2026-11-26T03:00:10.000Z"}
    assert timing.check_alert(None) == ({}, [])


@pytest.mark.parametrize(("alert", "expected"), [
    ("now", "mayday_alert must be a mapping"),
    ({"starts_at": "soon"}, "mayday_alert.starts_at: 'soon' is not an RFC 3339 time"),
    ({"alertname": "A"}, "mayday_alert has no time"),
    ({"alertname": "x\ny", "starts_at": "2026-11-26T03:00:00Z"}, "mayday_alert.alertname is longer"),
])
def test_a_bad_mayday_alert_is_refused(alert: object, expected: str) -> None:
    _, problems = timing.check_alert(alert)
    assert any(expected in p for p in problems), problems


def health(host: str, stamp: str, ok: bool) -> dict[str, object]:
    return {"host": host, "phase": "Verify", "step": "health", "started": stamp, "duration_s": 0.1, "result": "ok",
            "health": [{"checked_at": stamp, "ok": ok, "status": 200 if ok else 500, "latency_ms": 3}]}


ALERT = {"alertname": "HealthCheckFailing", "fingerprint": "abc", "starts_at": "2026-11-26T03:00:00.000Z",
         "received_at": "2026-11-26T03:00:31.500Z", "run_requested_at": "2026-11-26T03:00:31.520Z",
         "rule": "level1-production-down", "request": "req-1"}


def test_the_report_times_detection_response_and_recovery(state: Path) -> None:
    incident, path = records.open_incident({"scenario": "level1", "alert": ALERT})
    meta = json.loads((Path(path) / "incident.json").read_text())
    meta["opened"] = "2026-11-26T03:00:32.400Z"  # fixed instants, so the intervals are exact
    (Path(path) / "incident.json").write_text(json.dumps(meta))
    records.append_event(path, health("web1", "2026-11-26T03:00:33.000Z", False))
    records.append_event(path, health("web1", "2026-11-26T03:00:36.000Z", True))
    report = records.close_incident(path, "RECOVERED", "rolled back", {})
    found = report["alert_timing"]
    assert found == {"alert_firing_at": "2026-11-26T03:00:00.000Z", "received_at": "2026-11-26T03:00:31.500Z",
                     "run_started_at": "2026-11-26T03:00:31.520Z", "incident_opened_at": "2026-11-26T03:00:32.400Z",
                     "health_back_at": "2026-11-26T03:00:36.000Z", "time_to_detect_s": 31.5,
                     "time_to_respond_s": 0.02, "time_to_open_s": 0.88, "time_to_recover_s": 4.48,
                     "firing_to_recovered_s": 36.0}
    markdown = (Path(path) / "report.md").read_text()
    assert "## Detection and response" in markdown
    assert "| Time to detect | 31.5 s | alert firing to received by mayday |" in markdown
    assert "| Time to respond | 0.020 s | received to run started |" in markdown
    assert "| Health back | 2026-11-26T03:00:36.000Z |" in markdown
    assert f"# {incident}" in markdown


def test_a_run_started_by_hand_with_the_alert_starts_when_the_incident_opens(state: Path) -> None:
    alert = {"alertname": "A", "starts_at": "2026-11-26T03:00:00.000Z"}
    found = timing.alert_timing(alert, "2026-11-26T03:01:00.000Z", [], {"recovered_at": None}, "FAILED")
    assert found["run_started_at"] == "2026-11-26T03:01:00.000Z"
    assert found["time_to_detect_s"] is None and found["time_to_respond_s"] is None
    assert found["health_back_at"] is None and found["time_to_recover_s"] is None


def test_a_noop_is_healthy_since_its_last_good_probe() -> None:
    events = [health("web1", "2026-11-26T03:01:02.000Z", True)]
    found = timing.alert_timing(ALERT, "2026-11-26T03:01:00.000Z", events, {"recovered_at": None}, "NOOP")
    assert found["health_back_at"] == "2026-11-26T03:01:02.000Z"


def test_a_report_without_an_alert_has_no_timing_section(state: Path) -> None:
    _, path = records.open_incident({"scenario": "level1"})
    report = records.close_incident(path, "NOOP", "up", {})
    assert "alert_timing" not in report
    assert "Detection and response" not in (Path(path) / "report.md").read_text()


def test_history_shows_the_intervals_of_runs_an_alert_started(state: Path) -> None:
    from mayday.cli import cli

    incident, path = records.open_incident({"scenario": "level1", "alert": ALERT})
    records.close_incident(path, "RECOVERED", "rolled back", {})
    records.write_run("20261126T030032Z-aaaaaa", {
        "run_id": "20261126T030032Z-aaaaaa", "started": "2026-11-26T03:00:32Z", "scenario": "level1",
        "outcome": "RECOVERED", "duration_s": 4.1, "incident": incident})
    records.write_run("20261126T020000Z-bbbbbb", {
        "run_id": "20261126T020000Z-bbbbbb", "started": "2026-11-26T02:00:00Z", "scenario": "backup",
        "outcome": "DONE", "duration_s": 9.0, "incident": None})
    runs = load_runs()
    assert [r["run_id"] for r in runs] == ["20261126T020000Z-bbbbbb", "20261126T030032Z-aaaaaa"]
    assert runs[1]["alert_timing"]["time_to_detect_s"] == 31.5 and "alert_timing" not in runs[0]
    header, by_hand, by_alert = history_lines(runs)
    assert header.split()[-4:] == ["detect", "respond", "recover", "alert"]
    assert "  31.5 s  0.020 s        -  HealthCheckFailing" in by_alert  # no health probe: recovery unknown
    assert by_alert.endswith("HealthCheckFailing") and by_hand.endswith("-")
    shown = CliRunner().invoke(cli, ["history", "--json"], standalone_mode=False)
    assert json.loads(shown.output)[1]["alert_timing"]["time_to_respond_s"] == 0.02
