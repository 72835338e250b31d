"""Level 2 api, frontend and webhook verified on the hosts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

testinfra_hosts = ["ansible://web", "ansible://db"]
STATE = Path(os.environ["MAYDAY_STATE_DIR"])
COMPONENTS = ["api", "frontend", "webhook"]
ACTS_ON = {"api": "web1", "frontend": "web1", "webhook": "db1"}


def reports(component: str) -> list[dict]:
    """The incidents of one component, oldest first."""
    found = [json.loads(p.read_text()) for p in STATE.glob("incidents/*/report.json")]
    return sorted((r for r in found if r["scenario"] == f"level2-{component}"), key=lambda r: r["opened"])


def recovered(component: str) -> dict:
    runs = [r for r in reports(component) if r["outcome"] == "RECOVERED"]
    assert len(runs) == 1, f"one recovered {component} incident, found {len(runs)}"
    return runs[0]


def host_result(report: dict, host: str) -> dict:
    """A host's result: outcome, changed, msg, summary and the component's report keys, flattened."""
    result = dict(report["results"][host])
    return {**(result.pop("report", None) or {}), **result}


def notifications() -> list[dict]:
    path = STATE / "notifications.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


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
    # No PostgreSQL host in this scenario: the app does not use one.
    assert answer == {"status": "healthy", "version": "v1", "failed": [],
                      "checks": {"api": "ok", "mariadb": "ok", "postgresql": "not used"}, "cache": {"redis": "ok"}}


def test_broken_api_config_kept_beside_it(web):
    swap = host_result(recovered("api"), "web1")
    kept = swap["kept_as"]
    assert kept.startswith("/var/www/app/shared/config.mayday-replaced-"), "the replaced directory is kept beside"
    assert web.file(kept).is_directory
    assert web.file(f"{kept}/api.php").content_string == "<?php return ['enabled' => true,\n", "the broken file"


def test_frontend_restored_and_confined(web):
    assert web.file("/var/www/app/shared/frontend/app.css").exists
    assert not web.file("/var/www/app/shared/frontend/stray.js").exists
    assert web.file("/var/www/app/releases/v1/public/index.php").exists, "nothing outside the target removed"
    assert web.check_output("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1/assets/app.css") == "200"


def test_recent_webhook_rows_removed_and_saved(db):
    purge = host_result(recovered("webhook"), "db1")
    since = purge["since"]
    remaining = db.check_output("mariadb -N -B app -e 'SELECT endpoint FROM webhook_events'").split()
    newer_left = int(db.check_output(f"mariadb -N -B app -e \"SELECT count(*) FROM webhook_events "
                                     f"WHERE created_at > '{since}'\""))
    assert newer_left == 0
    saved = [json.loads(line) for line in db.check_output(
        "cat /var/backups/mayday/webhook-app-webhook_events-*.jsonl").splitlines()]
    assert len(saved) == purge["deleted"] == purge["tables"]["webhook_events"]
    # 180 rows one minute apart, inserted by prepare; check and side_effect ran before converge
    assert 30 <= len(saved) <= 60
    assert all(row["created_at"] > since for row in saved)
    assert {row["endpoint"] for row in saved}.isdisjoint(remaining)
    assert len(saved) + len(remaining) == 180, "nothing lost: every row is either still there or saved"


@pytest.mark.parametrize("component", COMPONENTS)
def test_dry_run_then_rollback_then_noop(component):
    runs = reports(component)
    assert [r["outcome"] for r in runs] == ["DRY-RUN", "RECOVERED", "NOOP"]  # check, converge, idempotence
    dry_run, done, again = runs
    host = ACTS_ON[component]
    assert host_result(done, host)["changed"]
    assert not host_result(again, host)["changed"]
    assert not [m for m in notifications() if m["incident"] == dry_run["incident"]], "a dry run sends nothing"
    assert [m["event"] for m in notifications() if m["incident"] == done["incident"]] == ["resolved"]


def test_dry_runs_saw_the_breakage():
    api, frontend, webhook = (host_result(reports(c)[0], ACTS_ON[c]) for c in COMPONENTS)
    assert api["changed"] and "api.php" in api["files_changed"]
    assert frontend["changed"] and frontend["changes"] > 0
    assert sum(webhook["tables"].values()) > 0 and webhook["deleted"] == 0


def test_second_runs_found_nothing():
    api, frontend, webhook = (host_result(reports(c)[-1], ACTS_ON[c]) for c in COMPONENTS)
    assert api["files_changed"] == [] and api.get("kept_as") is None
    assert frontend["changes"] == 0
    assert webhook["deleted"] == 0 and webhook["files"] == []
