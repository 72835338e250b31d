"""A drill whose detection is the alert path (drills/level1-alert.yml), on the lab with mon1's
Prometheus and Alertmanager and a `mayday serve` of this test's own, in one lab run:

1. serve not answering: refused (exit 2) before anything was injected;
2. serve answering, an alert firing for a web host in Alertmanager: refused the same way;
3. the alert gone: the broken release goes in, Alertmanager shows HealthCheckFailing, serve's policy
   runs Level 1, the health check comes back: PASSED with time to detect and recover recorded, serve's
   run in its audit log, the fault removed and the hosts as they were before.

The health rule's window is 10 s here (MAYDAY_LAB_HEALTH_FOR), as in test_alert_to_recovery.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import LAB_HOSTS, MAYDAY, ROOT, WEB_HOSTS, Mayday, am, firing, health, utc, wait_for
from test_drills import journal_of, states
from test_drills_plain import run_plain
from test_serve import free_port

from mayday import lab

pytestmark = pytest.mark.usefixtures("drill_lab")

POLICY = """---
rules:
  - name: level1-production-down
    match: {scenario: level1}
    scenario: level1
    mode: auto
    throttle: 0s  # a drill run after another must not be throttled
    max_runs_per_hour: 6
    limit_label: null
"""
TEST_ALERT = "MaydayDrillTestAlert"  # no scenario label: serve's policy matches no rule for it


@pytest.fixture
def alert_path(mayday: Mayday, tmp_path: Path, drill_lab: str,
               monkeypatch: pytest.MonkeyPatch) -> Generator[dict[str, Any], None, None]:
    """mon1 alerting this test's serve port with a 10 s health window; `start()` starts the serve."""
    gateway = lab.gateway_ipv4(lab.lab_name())
    port = free_port(gateway)
    monkeypatch.setenv("MAYDAY_STATE_DIR", str(mayday.state_dir))
    monkeypatch.setenv("MAYDAY_SERVE_PORT", str(port))
    monkeypatch.setenv("MAYDAY_LAB_HEALTH_FOR", "10s")
    urls = lab.configure_monitoring(len(WEB_HOSTS))
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "test.yml").write_text(POLICY)
    started: list[subprocess.Popen[str]] = []
    log = tmp_path / "serve.log"

    def start() -> None:
        env = dict(mayday.env(), MAYDAY_SERVE_PORT=str(port))
        with open(log, "w") as output:
            started.append(subprocess.Popen(
                [MAYDAY, "serve", "--policies", str(policies), "--listen", f"{gateway}:{port}",
                 "--token-file", str(lab.serve_token_path())], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=output, stderr=subprocess.STDOUT, text=True))

        def healthy() -> bool:
            assert started[0].poll() is None, log.read_text()[-2000:]
            try:
                return bool(am(f"http://{gateway}:{port}", "/healthz"))
            except OSError:
                return False
        wait_for("mayday serve's /healthz", healthy, 60)

    try:
        yield {"alertmanager": urls["alertmanager"], "start": start, "log": log}
    finally:
        for process in started:
            process.terminate()
            process.wait(timeout=30)
        monkeypatch.undo()
        lab.configure_monitoring(len(WEB_HOSTS))


def test_level1_alert_drill_refuses_then_passes_through_the_alert_path(
        mayday: Mayday, alert_path: dict[str, Any]) -> None:
    url = alert_path["alertmanager"]
    wait_for("no alert firing for the lab hosts", lambda: not firing(url, LAB_HOSTS), 180)
    before = states()

    # 1. No serve answering: refused before the fault, nothing on the hosts.
    out = mayday.run("drill", "run", "level1-alert", "--json", timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    _, doc = journal_of(mayday, "level1-alert")
    assert doc["verdict"] == "REFUSED" and "/healthz" in doc["reasons"][0], doc["reasons"]
    assert not any(e["event"] == "injected" for e in doc["events"])
    assert states() == before

    # 2. Serve up, an alert firing for web1 in Alertmanager: refused, naming it.
    alert_path["start"]()
    labels = {"alertname": TEST_ALERT, "host": "web1", "severity": "P3"}
    now = time.time()
    am(url, "/api/v2/alerts", [{"labels": labels, "startsAt": utc(now), "endsAt": utc(now + 300)}])
    try:
        out = mayday.run("drill", "run", "level1-alert", "--json", timeout=120)
    finally:
        am(url, "/api/v2/alerts", [{"labels": labels, "startsAt": utc(now), "endsAt": utc(time.time() - 1)}])
    assert out.returncode == 2, out.stdout + out.stderr
    summary = json.loads(out.stdout)
    assert summary["verdict"] == "REFUSED" and f"{TEST_ALERT} (web1)" in summary["reasons"][0], summary
    assert states() == before
    wait_for("no alert firing for the lab hosts", lambda: not firing(url, LAB_HOSTS), 150)

    # 3. The alert path detects and recovers the fault.
    out = mayday.run("drill", "run", "level1-alert", "--json", timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads(out.stdout)
    fig = summary["figures"]
    assert summary["verdict"] == "PASSED" and summary["detected_by"] in {f"alert HealthCheckFailing ({h})"
                                                                         for h in WEB_HOSTS}, summary
    # The 10 s window, a 5 s scrape: not before 10 s, within the SLA's minute.
    assert 10 <= fig["time_to_detect_s"] <= 60 and fig["time_to_detect_s"] < fig["time_to_recover_s"] <= 900, fig
    directory, doc = journal_of(mayday, "level1-alert")
    scenario = next(e for e in doc["events"] if e["event"] == "scenario")
    assert scenario["by"] == "alert" and scenario["outcome"] == "RECOVERED" and scenario["incident"], scenario
    audit = [json.loads(line) for line in (mayday.state_dir / "serve" / "audit.jsonl").read_text().splitlines()]
    runs = [e for e in audit if e.get("event") == "run-started" and e.get("alertname") == "HealthCheckFailing"]
    # The drill's run is the first; web2's alert may reach serve after it ended and start its own
    # (the test policy has no throttle), which the verdict does not depend on.
    assert runs and runs[0]["request"] == scenario["request"] and len(runs) <= len(WEB_HOSTS), runs
    assert (mayday.state_dir / "incidents" / scenario["incident"] / "report.json").is_file()
    assert all(f["outcome"] == "removed" for e in doc["events"] if e["event"] == "cleanup" for f in e["faults"])
    assert "Alertmanager shows HealthCheckFailing" in (directory / "report.md").read_text()
    assert states() == before
    assert all(health(h).get("status") == "healthy" for h in WEB_HOSTS)

    # 4. The same drill from plain ansible-playbook (as AWX runs it): the same verdict, hosts as found.
    wait_for("the drill's alerts resolved", lambda: not firing(url), 120)
    out, doc = run_plain(mayday, "level1-alert", "inventories/lab")
    assert out.returncode == 0 and doc["verdict"] == "PASSED", (doc.get("reasons"), out.stdout[-3000:])
    assert doc["detected_by"].startswith("alert HealthCheckFailing"), doc["detected_by"]
    assert 10 <= doc["figures"]["time_to_detect_s"] <= 60, doc["figures"]
    assert states() == before
    assert all(health(h).get("status") == "healthy" for h in WEB_HOSTS)
