"""`mayday serve` as a real process on the lab network's gateway, called as Alertmanager calls it.

A broken release is live (the broken_lab fixture: v2, deployed by `mayday lab deploy --release v2
--broken`). A wrong token and a resolved alert start nothing; a firing Level 1 alert starts a real
rollback through the receiver; the receiver is killed mid-run and started again, Alertmanager's
repeat of the same group runs nothing twice; the hosts answer healthy again from inside; the audit
log and the incident report carry the decisions and the timing. Plain ansible-playbook takes the
same alert with -e @alert.json.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import ANSIBLE_PLAYBOOK, MAYDAY, ROOT, WEB_HOSTS, Mayday, dexec, health, snapshot

from mayday.serve import lab_gateway
from mayday.timing import format_instant, parse_instant

pytestmark = pytest.mark.usefixtures("broken_lab")
TOKEN = "integration-" + os.urandom(16).hex()


@dataclass
class Serve:
    process: subprocess.Popen[str]
    url: str

    def post(self, doc: Any, token: str = TOKEN) -> tuple[int, dict[str, Any], float]:
        request = urllib.request.Request(self.url + "/alertmanager", data=json.dumps(doc).encode(), method="POST",
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/json"})
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read()), time.monotonic() - started
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}"), time.monotonic() - started

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def start_serve(mayday: Mayday, token_file: Path, port: int) -> Serve:
    """`mayday serve` with its defaults (the lab's gateway; MAYDAY_SERVE_PORT), ready when /healthz answers."""
    env = dict(mayday.env(), MAYDAY_SERVE_PORT=str(port))
    env.pop("MAYDAY_SERVE_TOKEN", None)
    log = token_file.parent / f"serve-{port}.log"  # a file, not a pipe nobody reads while it serves
    with open(log, "w") as output:
        process = subprocess.Popen([MAYDAY, "serve", "--token-file", str(token_file)], cwd=ROOT, env=env,
                                   stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, text=True)
    url = f"http://{lab_gateway()}:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, f"mayday serve exited {process.returncode}: {log.read_text()[-2000:]}"
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as answer:
                if answer.status == 200:
                    return Serve(process, url)
        except OSError:
            pass
        assert time.monotonic() < deadline, "mayday serve did not answer within 60 s"
        time.sleep(0.2)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "serve-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def serves() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for serve in started:
        serve.stop(signal.SIGKILL)


def alert(fingerprint: str, starts_at: str, status: str = "firing", **labels: str) -> dict[str, Any]:
    return {"status": status, "labels": {"alertname": "HealthCheckFailing", "scenario": "level1", "severity": "P0",
                                         "job": "blackbox", **labels},
            "annotations": {"summary": "the health check fails for more than 30 s"}, "startsAt": starts_at,
            "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://mon1:9090/graph", "fingerprint": fingerprint}


def group(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {"version": "4", "groupKey": '{}:{alertname="HealthCheckFailing"}', "truncatedAlerts": 0,
            "status": "firing", "receiver": "mayday", "groupLabels": {"alertname": "HealthCheckFailing"},
            "commonLabels": {"alertname": "HealthCheckFailing"}, "commonAnnotations": {},
            "externalURL": "http://mon1:9093", "alerts": list(alerts)}


def audit(mayday: Mayday) -> list[dict[str, Any]]:
    path = mayday.state_dir / "serve" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(mayday: Mayday, event: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in audit(mayday) if e["event"] == event]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no {event} in the audit log within {timeout:.0f} s: {audit(mayday)}"
        time.sleep(0.3)


def http_code_inside(host: str) -> str:
    return dexec(host, "curl -s -o /dev/null -w '%{http_code}' --max-time 10 http://127.0.0.1/health-check").strip()


def test_an_alert_recovers_the_broken_release_once_across_a_receiver_restart(
        mayday: Mayday, token_file: Path, serves: list[Serve], record_property: Any) -> None:
    gateway = lab_gateway()
    serves.append(start_serve(mayday, token_file, free_port(gateway)))
    before = snapshot()
    # The alert started firing 35 s ago: the rule's 30 s window plus a scrape and an evaluation.
    starts_at = format_instant(time.time() - 35).replace("Z", "123456Z")
    firing = alert("a1b2c3d4e5f60001", starts_at)

    # A wrong token, and a resolved alert on its own: nothing starts, nothing changes.
    status, answer, _ = serves[0].post(group(firing), token="not-" + TOKEN)
    assert status == 401 and answer["error"].startswith("unauthorized"), answer
    status, answer, _ = serves[0].post(group(alert("a1b2c3d4e5f60000", starts_at, status="resolved")))
    assert status == 200 and [a["decision"] for a in answer["alerts"]] == ["resolved"], answer
    time.sleep(1)
    assert snapshot() == before and not (mayday.state_dir / "serve" / "runs").exists()

    # One group, three alerts: each decided on its own; only the firing one for a known target runs.
    sent = group(alert("a1b2c3d4e5f60000", starts_at, status="resolved"), firing,
                 alert("a1b2c3d4e5f60002", starts_at, scenario="level2", component="api", host="web9"))
    status, answer, took = serves[0].post(sent)
    assert status == 200 and took < 1.0, (took, answer)
    assert [a["decision"] for a in answer["alerts"]] == ["resolved", "run", "rejected"], answer
    assert "host 'web9' (label host) is not in the inventory" in answer["alerts"][2]["reason"]
    started = wait_for(mayday, "run-started", 5)
    assert started["received_to_started_s"] < 1.0, started

    # The receiver dies mid-run; the run goes on, and the receiver started again runs nothing twice.
    serves[0].stop(signal.SIGKILL)
    assert not [e for e in audit(mayday) if e["event"] == "run-finished"], "the run should still be in flight"
    assert os.path.exists(f"/proc/{started['pid']}"), "the run died with the receiver"
    serves.append(start_serve(mayday, token_file, free_port(gateway)))
    status, answer, took = serves[1].post(group(*sent["alerts"], alert("a1b2c3d4e5f60003", starts_at)))
    assert status == 200 and took < 1.0
    decisions = [a["decision"] for a in answer["alerts"]]
    # The new alert finds the run in flight, or, if it has ended, the same rule and target just ran.
    assert decisions[:3] == ["resolved", "duplicate", "rejected"] and decisions[3] in ("busy", "throttled"), answer

    finished = wait_for(mayday, "run-finished", 150)
    assert finished["outcome"] == "RECOVERED", finished
    for host in WEB_HOSTS:
        assert http_code_inside(host) == "200", host
        assert health(host).get("status") == "healthy" and health(host).get("version") == "v1"

    entries = audit(mayday)
    assert [e["event"] for e in entries].count("run-started") == 1
    assert len(mayday.reports()) == 1
    decided = [(e["fingerprint"], e["decision"]) for e in entries if e["event"] == "alert"]
    assert decided[:4] == [("a1b2c3d4e5f60000", "resolved"), ("a1b2c3d4e5f60000", "resolved"),
                           ("a1b2c3d4e5f60001", "run"), ("a1b2c3d4e5f60002", "rejected")]
    assert ("a1b2c3d4e5f60001", "duplicate") in decided
    assert [e["event"] for e in entries].count("unauthorized") == 1
    assert finished["request"] == started["request"] and finished["incident"] and finished["run_id"]
    assert TOKEN not in (mayday.state_dir / "serve" / "audit.jsonl").read_text()

    report = mayday.last_report()
    assert report["incident"] == finished["incident"] and report["outcome"] == "RECOVERED"
    assert report["alert"]["fingerprint"] == "a1b2c3d4e5f60001" and report["operator"].startswith("mayday-serve")
    found = report["alert_timing"]
    assert found["alert_firing_at"] == format_instant(parse_instant(starts_at))
    assert found["received_at"] <= found["run_started_at"] <= found["incident_opened_at"] <= found["health_back_at"]
    assert 35 <= found["time_to_detect_s"] < 40
    assert 0 <= found["time_to_respond_s"] < 1.0
    assert 0 < found["time_to_recover_s"] < 120
    markdown = (mayday.state_dir / "incidents" / report["incident"] / "report.md").read_text()
    assert "## Detection and response" in markdown and "| Time to respond |" in markdown
    history = json.loads(mayday.run("history", "--json").stdout)
    assert history[-1]["alert_timing"]["time_to_detect_s"] == found["time_to_detect_s"]
    record_property("mayday_outcome", "serve level1: " + ", ".join(
        f"{k} {found[k]}" for k in ("time_to_detect_s", "time_to_respond_s", "time_to_open_s", "time_to_recover_s",
                                    "firing_to_recovered_s")) + f"; answered in {took * 1000:.0f} ms")


def test_plain_ansible_playbook_takes_the_alert_with_extra_vars(mayday: Mayday, tmp_path: Path) -> None:
    """-e @alert.json: one alert as Alertmanager sends it, plus when it was received."""
    received = format_instant(time.time() - 5)
    starts_at = format_instant(time.time() - 40)
    doc = {"mayday_alert": dict(alert("a1b2c3d4e5f60010", starts_at), received_at=received)}
    (tmp_path / "alert.json").write_text(json.dumps(doc))
    (tmp_path / "bad.json").write_text(json.dumps({"mayday_alert": {"startsAt": "yesterday"}}))
    before = snapshot()
    for name, expected_rc in (("bad.json", 2), ("alert.json", 0)):
        book = "playbooks/rollback-level1.yml"
        out = subprocess.run([ANSIBLE_PLAYBOOK, book, "--check", "-e", f"@{tmp_path / name}"], cwd=ROOT,
                             env=mayday.env(), capture_output=True, text=True, check=False, timeout=300)
        assert out.returncode == expected_rc, f"{name}: {out.stdout[-3000:]}{out.stderr[-2000:]}"
    assert snapshot() == before
    refused, dry = mayday.reports()
    assert refused["outcome"] == "REFUSED"
    assert any("mayday_alert.starts_at: 'yesterday' is not an RFC 3339 time" in r for r in refused["refusals"])
    assert dry["outcome"] == "DRY-RUN" and dry["alert"]["alertname"] == "HealthCheckFailing"
    found = dry["alert_timing"]
    assert found["alert_firing_at"] == starts_at and found["received_at"] == received
    assert 34 <= found["time_to_detect_s"] <= 36
    assert found["run_started_at"] == found["incident_opened_at"] == dry["opened"]  # no receiver: the run opens it
