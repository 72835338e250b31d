"""Drills and the alert path (issue 11 on issue 10) without the lab: recovery `by: alert` in the drill
schema, which alerts concern a drill's hosts, where Alertmanager sends its webhook, how serve's audit
log names the run it started, the detection by alert in the verdict, and the receiver's /healthz check
against a real `mayday serve` receiver on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mayday import audit, receiver
from mayday import policy as pol
from mayday.drills import hooks, journal, schema
from mayday.errors import BadInput

REPO = Path(__file__).resolve().parents[2]
BY_ALERT = {
    "steady_state": [{"name": "health", "hosts": "web", "http": {"url": "http://127.0.0.1/health-check"}},
                     {"name": "quiet", "hosts": "web", "alerts_quiet": ["*"]}],
    "fault": {"type": "broken_release", "hosts": "web", "params": {}},
    "recovery": {"by": "alert", "alerts": ["HealthCheckFailing"], "scenario": "level1"},
    "sla": {"detect": "1m", "recover": "15m"},
}


def load(tmp_path: Path, doc: dict[str, Any]) -> schema.Drill:
    path = tmp_path / "by-alert.yml"
    path.write_text(yaml.safe_dump(doc))
    return schema.load(str(path))


def alert(name: str, host: str | None = None) -> dict[str, Any]:
    return {"labels": {"alertname": name, **({"host": host} if host else {})}, "startsAt": "2026-11-26T04:00:00Z"}


# -- schema ------------------------------------------------------------------------------------------
def test_by_alert_plan_carries_the_alerts(tmp_path: Path) -> None:
    plan = load(tmp_path, BY_ALERT).plan()
    assert plan["recovery"]["by"] == "alert" and plan["recovery"]["alerts"] == ["HealthCheckFailing"]
    assert plan["alerts_quiet"] == [["*"]]
    assert schema.load("level1-alert").plan()["recovery"]["alerts"] == ["HealthCheckFailing"]


@pytest.mark.parametrize(("recovery", "expected"), [
    ({"by": "alert", "scenario": "level1"}, "recovery.alerts: required with by: alert"),
    ({"by": "alert", "alerts": [], "scenario": "level1"}, "recovery.alerts: required with by: alert"),
    ({"by": "scenario", "alerts": ["X"], "scenario": "level1"}, "recovery.alerts: only with by: alert"),
    ({"by": "alert", "alerts": ["X"], "scenario": "level1", "wait": 3}, "recovery: unknown field(s) wait"),
])
def test_by_alert_errors(tmp_path: Path, recovery: dict[str, Any], expected: str) -> None:
    with pytest.raises(BadInput) as caught:
        load(tmp_path, {**BY_ALERT, "recovery": recovery})
    assert expected in str(caught.value)


# -- which alerts -----------------------------------------------------------------------------------
def test_matching_by_name_and_host() -> None:
    alerts = [alert("HealthCheckFailing", "web1"), alert("HealthCheckFailing", "web3"), alert("DiskFull"),
              alert("Other", "web2")]
    assert hooks.matching(alerts, {"HealthCheckFailing"}, ["web1", "web2"]) == [alerts[0]]
    # An alert naming no host concerns every host; '*' is any name.
    assert hooks.matching(alerts, {"*"}, ["web1", "web2"]) == [alerts[0], alerts[2], alerts[3]]
    assert hooks.matching(alerts, {"*"}, None) == alerts


def test_no_alertmanager_means_no_alert_and_no_alert_path() -> None:
    assert hooks.firing_alerts([["*"]], {}) == []
    assert "mayday_alertmanager_url" in hooks.serve_problem({})


def test_alertmanager_not_answering_is_a_refusal_reason() -> None:
    found = hooks.firing_alerts([["*"]], {"mayday_alertmanager_url": "http://127.0.0.1:9"})
    assert len(found) == 1 and "did not answer" in found[0]
    assert "did not answer" in hooks.serve_problem({"mayday_alertmanager_url": "http://127.0.0.1:9"})


def test_receiver_urls_from_alertmanager_config() -> None:
    config = yaml.safe_dump({"route": {"receiver": "mayday"}, "receivers": [
        {"name": "mayday", "webhook_configs": [{"url": "http://172.29.0.1:9753/alertmanager",
                                                "http_config": {"authorization": {"credentials": "<secret>"}}}]},
        {"name": "mail", "email_configs": [{"to": "x@example.com"}]}]})
    assert hooks.receiver_urls(config) == ["http://172.29.0.1:9753/alertmanager"]
    assert hooks.health_url("http://172.29.0.1:9753/alertmanager?x=1") == "http://172.29.0.1:9753/healthz"
    assert hooks.receiver_urls("not: [valid") == [] and hooks.receiver_urls("") == []


@pytest.fixture
def serve_receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The real `mayday serve` HTTP receiver on loopback (its policy never asked: only /healthz is used)."""
    monkeypatch.setenv("MAYDAY_STATE_DIR", str(tmp_path / "state"))
    live = receiver.Receiver(pol.Policy([], ["f.yml"], 6), REPO / "inventories" / "lab", {"web1"}, b"t" * 32, [])
    server = receiver.make_server(live, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_serve_health_checked_on_its_healthz(serve_receiver: str) -> None:
    given = {"mayday_alertmanager_url": "http://127.0.0.1:9", "mayday_serve_url": serve_receiver + "/alertmanager"}
    assert hooks.serve_problem(given) == ""
    wrong = dict(given, mayday_serve_url="http://127.0.0.1:9/alertmanager")
    assert "does not answer" in hooks.serve_problem(wrong)


# -- serve's run, from its audit log ----------------------------------------------------------------
def test_serve_runs_picks_the_run_after_the_injection() -> None:
    t0 = time.time()
    entries = [
        {"event": "run-started", "at": audit.now_utc(t0 - 60), "request": "R-old", "alertname": "HealthCheckFailing"},
        {"event": "run-started", "at": audit.now_utc(t0 + 12), "request": "R-other", "alertname": "DiskFull"},
        {"event": "run-started", "at": audit.now_utc(t0 + 15), "request": "R-1", "alertname": "HealthCheckFailing"},
    ]
    started, finished = hooks.serve_runs({"HealthCheckFailing"}, t0, entries)
    assert started and started["request"] == "R-1" and finished is None
    entries.append({"event": "run-finished", "at": audit.now_utc(t0 + 30), "request": "R-1", "outcome": "RECOVERED",
                    "exit_code": 0})
    assert hooks.serve_runs({"HealthCheckFailing"}, t0, entries)[1] == entries[-1]
    refused = [{"event": "run-not-started", "at": audit.now_utc(t0 + 1), "request": "R-2", "reason": "OSError"}]
    assert hooks.serve_runs({"HealthCheckFailing"}, t0, refused) == (refused[0], None)


def test_await_stops_at_the_kill_switch_and_times_out_undetected() -> None:
    recorded: list[dict[str, Any]] = []
    tv = {"mayday_alertmanager_url": "http://127.0.0.1:9"}
    call = {"by": "alert", "alerts": ["HealthCheckFailing"], "scenario": "level1"}
    out = hooks.await_alert_recovery(call, tv, ["web1"], time.time(), 30, 900, lambda: "kill switch", recorded.append)
    assert out["outcome"] == "STOPPED" and not out["ok"]
    out = hooks.await_alert_recovery(call, tv, ["web1"], time.time() - 31, 30, 900, lambda: "", recorded.append)
    assert out["outcome"] == "NOT-DETECTED" and "HealthCheckFailing not firing for web1" in out["msg"]
    assert recorded == []
    out = hooks.await_alert_recovery(call, {}, ["web1"], time.time(), 30, 900, lambda: "", recorded.append)
    assert out["outcome"] == "NOT-WIRED"


# -- the verdict ------------------------------------------------------------------------------------
def events_by_alert(detect_after: float, recovered_after: float, outcome: str = "RECOVERED") -> list[dict[str, Any]]:
    t = 1_000_000.0
    return [
        {"event": "open", "at": t},
        {"event": "injected", "injected_at": t, "host": "web1"},
        {"event": "alert", "phase": "detect", "detected_at": t + detect_after, "alertname": "HealthCheckFailing",
         "host": "web1"},
        {"event": "scenario", "phase": "recover", "by": "alert", "outcome": outcome, "ok": outcome == "RECOVERED",
         "elapsed_s": recovered_after - detect_after},
        {"event": "probe", "phase": "recover", "host": "web1", "ok": True, "changed_at": t + recovered_after},
        {"event": "probe", "phase": "steady_after", "host": "web1", "ok": True},
        {"event": "cleanup", "ok": True},
    ]


def test_detection_by_alert_is_the_time_to_detect() -> None:
    facts = journal.facts_of(events_by_alert(14.5, 20.0))
    assert facts.detected_by == "alert HealthCheckFailing (web1)"
    assert journal.figures(facts)["time_to_detect_s"] == 14.5 and journal.figures(facts)["time_to_recover_s"] == 20.0
    assert journal.judge("fault", facts, {"detect": 60, "recover": 900}) == ("PASSED", [])
    late = journal.facts_of(events_by_alert(75, 80))
    assert journal.judge("fault", late, {"detect": 60, "recover": 900})[1] == [
        "detected in 75.0 s, over the SLA of 60 s"]
    failed = journal.facts_of(events_by_alert(14.5, 20.0, outcome="NOT-STARTED"))
    assert journal.judge("fault", failed, {"detect": 60, "recover": 900}) == (
        "FAILED", ["the recovery scenario ended NOT-STARTED"])
