"""Level 2 api, frontend and webhook verified on the hosts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

testinfra_hosts = ["ansible://web", "ansible://db"]
STATE = Path(os.environ["MAYDAY_STATE_DIR"])


@pytest.fixture
def web(host):
    if host.backend.get_hostname() != "web1":
        pytest.skip("web host check")
    return host


@pytest.fixture
def db(host):
    if host.backend.get_hostname() != "db1":
        pytest.skip("db host check")
    return host


def test_api_config_is_the_deployed_copy_and_app_healthy(web):
    copies = web.check_output("ls /var/backups/mayday/api-config").split()
    live = web.file("/var/www/app/shared/config/api.php").content_string
    assert live == web.file(f"/var/backups/mayday/api-config/{copies[-1]}/api.php").content_string
    assert web.run("php -l /var/www/app/shared/config/api.php").rc == 0
    answer = json.loads(web.check_output("curl -s http://127.0.0.1/health-check"))
    assert answer == {"status": "healthy", "version": "v1"}


def test_broken_api_config_kept_beside_it(web):
    kept = web.check_output("ls /var/www/app/shared/config").split()
    assert any(name.startswith("api.php.") for name in kept), "copy's backup=true keeps the replaced file"


def test_frontend_restored_and_confined(web):
    assert web.file("/var/www/app/shared/frontend/app.css").exists
    assert not web.file("/var/www/app/shared/frontend/stray.js").exists
    assert web.file("/var/www/app/releases/v1/public/index.php").exists, "nothing outside the target removed"
    assert web.check_output("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1/assets/app.css") == "200"


def webhook_report() -> dict:
    for path in STATE.glob("incidents/*/report.json"):
        report = json.loads(path.read_text())
        if report["scenario"] == "level2-webhook" and report["outcome"] == "RECOVERED":
            return report["results"]["db1"]
    raise AssertionError("no recovered webhook incident")


def test_recent_webhook_rows_removed_and_saved(db):
    purge = webhook_report()
    since = purge["since"]
    remaining = db.check_output("mariadb -N -B app -e 'SELECT endpoint FROM webhook_events'").split()
    newer_left = int(db.check_output(f"mariadb -N -B app -e \"SELECT count(*) FROM webhook_events "
                                     f"WHERE created_at > '{since}'\""))
    assert newer_left == 0
    saved = [json.loads(line) for line in db.check_output(
        "cat /var/backups/mayday/webhook-app-webhook_events-*.jsonl").splitlines()]
    assert len(saved) == purge["deleted"] == purge["tables"]["webhook_events"]
    assert 55 <= len(saved) <= 60
    assert all(row["created_at"] > since for row in saved)
    assert {row["endpoint"] for row in saved}.isdisjoint(remaining)
    assert len(saved) + len(remaining) == 180, "nothing lost: every row is either still there or saved"


def test_each_component_has_a_recovered_incident(host):
    outcomes = {}
    for path in STATE.glob("incidents/*/report.json"):
        report = json.loads(path.read_text())
        outcomes.setdefault(report["scenario"], []).append(report["outcome"])
    for component in ("api", "frontend", "webhook"):
        assert "RECOVERED" in outcomes[f"level2-{component}"]
