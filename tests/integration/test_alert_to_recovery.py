"""The whole alert path on the lab, nothing posted by hand: Prometheus (mon1) sees the health check
fail, Alertmanager calls `mayday serve`, Level 1 runs; Slack, PagerDuty and e-mail receivers get what
a team would, and the incident record times each interval.

1. v2 is live and broken and the app's database password is wrong, so no release is healthy: the
   alert's Level 1 run escalates (FAILED). PagerDuty is triggered.
2. The password is put right: v1 (where the rollback left the hosts) answers, the alert resolves.
3. A new broken release v3 goes live: the alert fires again, Level 1 recovers, PagerDuty's page is
   resolved under the same dedup key, and the report has time to detect, respond and recover.

The health rule's window is 10 s here (MAYDAY_LAB_HEALTH_FOR) instead of the seed's 30 s, so the
test stays near a minute and a half; bench/alert_to_recovery measures the seed's 30 s.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import (
    DB_INI,
    MAYDAY,
    ROOT,
    WEB_HOSTS,
    Mayday,
    dexec,
    health,
    install_release,
    prune_test_releases,
    wait_for,
)
from test_notify_channels import SMTP_PASSWORD_ENV, overlay_inventory, secrets
from test_serve import free_port

from mayday import lab
from receivers import HttpRecorder, SmtpReceiver

POLICY = """---
settings:
  max_auto_runs_per_hour: 6
rules:
  - name: level1-production-down
    match: {alertname: HealthCheckFailing}  # not the session's slower error-rate alerts (P1)
    scenario: level1
    mode: auto
    throttle: 0s  # the test's second fault comes a minute after the first
    max_runs_per_hour: 3
    limit_label: null
"""


def audit(state: Path) -> list[dict[str, Any]]:
    path = state / "serve" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def health_alerts_resolved(state: Path) -> bool:
    health_alerts = [e for e in audit(state) if e.get("alertname") == "HealthCheckFailing"]
    fired = {e["fingerprint"] for e in health_alerts if e.get("status") == "firing"}
    resolved = {e["fingerprint"] for e in health_alerts if e.get("status") == "resolved"}
    return bool(fired) and fired <= resolved


def ended_runs(state: Path) -> list[dict[str, Any]]:
    return [e for e in audit(state) if e.get("event") == "run-finished"]


@pytest.fixture
def alerting(broken_lab: Mayday, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             http_recorder: HttpRecorder, smtp_receiver: SmtpReceiver) -> Generator[dict[str, Any], None, None]:
    """mon1 alerting a `mayday serve` of this test's own (its port, a 10 s health window), whose inventory
    has the local receivers as channels; the session's monitoring settings and releases back after."""
    mayday = broken_lab
    gateway = lab.gateway_ipv4(lab.lab_name())
    port = free_port(gateway)
    monkeypatch.setenv("MAYDAY_STATE_DIR", str(mayday.state_dir))
    monkeypatch.setenv("MAYDAY_SERVE_PORT", str(port))
    monkeypatch.setenv("MAYDAY_LAB_HEALTH_FOR", "10s")
    monkeypatch.setenv(SMTP_PASSWORD_ENV, smtp_receiver.users["mayday"])
    # The first fault before anything alerts this receiver: an alert of the broken v2 that Alertmanager
    # already holds is sent as soon as it is pointed here, and its run must meet no healthy release.
    good_ini = {h: dexec(h, f"cat {DB_INI}") for h in WEB_HOSTS}
    for host in WEB_HOSTS:
        dexec(host, f"sed -i 's/^password = .*/password = \"wrong\"/' {DB_INI}")
    lab.configure_monitoring(len(WEB_HOSTS))
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "test.yml").write_text(POLICY)
    inventory = overlay_inventory(tmp_path / "inventory", http_recorder, smtp_receiver)
    log = tmp_path / "serve.log"
    env = dict(mayday.env(), MAYDAY_SERVE_PORT=str(port), **{SMTP_PASSWORD_ENV: smtp_receiver.users["mayday"]})
    with open(log, "w") as output:
        process = subprocess.Popen([MAYDAY, "serve", "-i", str(inventory), "--policies", str(policies),
                                    "--listen", f"{gateway}:{port}", "--token-file", str(lab.serve_token_path())],
                                   cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT, text=True)
    try:
        yield {"mayday": mayday, "inventory": inventory, "good_ini": good_ini, "log": log}
    finally:
        process.terminate()
        process.wait(timeout=30)
        for host, text in good_ini.items():
            dexec(host, f"cat > {DB_INI} <<'EOF'\n{text}EOF")
        prune_test_releases()
        monkeypatch.undo()
        lab.configure_monitoring(len(WEB_HOSTS))


def test_prometheus_alert_to_recovery_with_one_page_and_the_timing(
        alerting: dict[str, Any], http_recorder: HttpRecorder, smtp_receiver: SmtpReceiver) -> None:
    mayday: Mayday = alerting["mayday"]
    state = mayday.state_dir

    # 1. No release can be healthy (the fixture broke the password): the alert's run escalates.
    first = wait_for("the first alert's run to end", lambda: ended_runs(state), 150)
    assert [r["outcome"] for r in first] == ["FAILED"], first

    # 2. The password right again: the hosts answer on the release the rollback left, the alert resolves.
    for host, text in alerting["good_ini"].items():
        dexec(host, f"cat > {DB_INI} <<'EOF'\n{text}EOF")
    wait_for("the health check back", lambda: all(health(h).get("status") == "healthy" for h in WEB_HOSTS), 30)
    # Every health alert resolved, not just any alert: the password's other alerts (error rate, DB
    # connections) resolve on their own clocks, and a health alert still firing is never sent again.
    wait_for("the health alerts resolved", lambda: health_alerts_resolved(state), 60)

    # 3. A new broken release: detected, run, recovered.
    faulted = time.time()
    install_release("v3", broken=True)
    runs = wait_for("the second alert's run to end", lambda: ended_runs(state)[1:], 150)
    recovered_at = time.time()
    assert [r["outcome"] for r in runs] == ["RECOVERED"], runs
    for host in WEB_HOSTS:
        doc = health(host)
        assert doc.get("status") == "healthy" and doc.get("version") != "v3", f"{host}: {doc}"
    assert len([e for e in audit(state) if e.get("event") == "run-started"]) == 2, "one run per firing, no more"

    # PagerDuty: the escalation opened one page, the recovery resolved it, one dedup_key.
    pages = [r.json for r in http_recorder.under("/v2/enqueue")]
    assert [p["event_action"] for p in pages] == ["trigger", "resolve"], pages
    assert pages[0]["dedup_key"] == pages[1]["dedup_key"]
    # Slack and e-mail: the escalation and the resolution.
    hooks = [r.json for r in http_recorder.under("/slack/hook/")]
    assert [h["blocks"][0]["text"]["text"].split(" ")[2] for h in hooks] == ["ESCALATION:", "resolved:"]
    mails = smtp_receiver.wait_for(2)
    assert [m.message["X-Mayday-Event"] for m in mails] == ["escalation", "resolved"]

    # The incident record: each interval, within the seeds' goals.
    report = mayday.last_report()
    assert report["outcome"] == "RECOVERED"
    timed = report["alert_timing"]
    for key in ("time_to_detect_s", "time_to_respond_s", "time_to_recover_s", "firing_to_recovered_s"):
        assert isinstance(timed.get(key), (int, float)) and timed[key] >= 0, (key, timed)
    assert timed["time_to_respond_s"] < 1.0, timed
    assert recovered_at - faulted < 120, f"fault to recovered {recovered_at - faulted:.0f} s: over seed 000's 2 min"
    assert "Detection and response" in (state / "incidents" / report["incident"] / "report.md").read_text()

    # No receiver secret anywhere mayday writes.
    token_file = lab.serve_token_path()
    token = token_file.read_text().strip()
    written = "\n".join(p.read_text(errors="replace") for p in state.rglob("*") if p.is_file() and p != token_file)
    written += alerting["log"].read_text()
    assert not [s for s in [*secrets(smtp_receiver), token] if s in written]
