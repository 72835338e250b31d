"""Level 1 verified on the hosts: v1 served, services up, v2 kept and marked failed, report complete."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

testinfra_hosts = ["ansible://web"]

STATE = Path(os.environ["MAYDAY_STATE_DIR"])


def reports() -> list[dict]:
    found = [json.loads(p.read_text()) for p in sorted(STATE.glob("incidents/*/report.json"))]
    return sorted(found, key=lambda r: r["opened"])


def test_v1_is_live_and_healthy(host):
    assert host.file("/var/www/app/current").linked_to == "/var/www/app/releases/v1"
    answer = host.run("curl -s -w '\\n%{http_code}' http://127.0.0.1/health-check")
    body, status = answer.stdout.rsplit("\n", 1)
    assert status == "200"
    # This scenario has no PostgreSQL host: the app does not use one.
    assert json.loads(body) == {"status": "healthy", "version": "v1", "failed": [],
                                "checks": {"api": "ok", "mariadb": "ok", "postgresql": "not used"},
                                "cache": {"redis": "ok"}}


@pytest.mark.parametrize("unit", ["nginx", "php8.2-fpm"])
def test_services_active(host, unit):
    assert host.service(unit).is_running


def test_v2_kept_and_marked_failed(host):
    assert host.file("/var/www/app/releases/v2/public/health.php").exists
    marker = host.file("/var/www/app/releases/v2/.mayday-failed")
    assert marker.exists
    doc = json.loads(marker.content_string)
    assert doc["incident"].startswith("INC-")
    assert "v1" in doc["reason"]
    assert not host.file("/var/www/app/releases/v1/.mayday-failed").exists


def test_reports_record_dry_run_rollback_and_noop(host):
    outcomes = [r["outcome"] for r in reports()]
    # check step, converge, idempotence
    assert outcomes == ["DRY-RUN", "RECOVERED", "NOOP"]


def test_rollback_report_is_complete(host):
    report = next(r for r in reports() if r["outcome"] == "RECOVERED")
    assert report["scenario"] == "level1" and report["severity"] == 1
    assert report["incident"].startswith("INC-")
    assert {"web1", "web2", "db1"} <= set(report["hosts"])
    assert report["downtime"]["seconds"] is not None and report["downtime"]["seconds"] > 0
    steps = [s["step"].strip() for s in report["steps"] if s["host"] == host.backend.host]
    assert steps.index("switch v2 -> v1") < steps.index("restart nginx") < steps.index("restart php8.2-fpm")
    for step in report["steps"]:
        assert step["started"] and step["duration_s"] is not None and step["result"]
    incident_dir = STATE / "incidents" / report["incident"]
    markdown = (incident_dir / "report.md").read_text()
    assert report["incident"] in markdown and "RECOVERED" in markdown


def test_team_was_told(host):
    lines = [json.loads(line) for line in (STATE / "notifications.jsonl").read_text().splitlines()]
    resolved = [m for m in lines if m["event"] == "resolved"]
    assert resolved and "v1" in resolved[0]["text"]
    assert not [m for m in lines if m["event"] == "escalation"]
