"""Every shipped drill from plain `ansible-playbook playbooks/drill.yml -e drill=NAME`, as AWX or cron
runs it (no `mayday` CLI), on the lab addressed as staging: each passes within its SLA, its faults are
proven removed, and every host is left as the drill found it: releases, configuration, firewall,
leases, failed units, and every row of every app table on both database hosts.

The alert-path drill (level1-alert) needs `mayday serve` answering: test_drills_alert.py runs it both
ways. The same drills from `mayday drill run` are in the other test_drill*.py files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import ANSIBLE_PLAYBOOK, ROOT, WEB_HOSTS, Mayday, health
from test_drill_faults import MARIADB, POSTGRES, app_tables, leftovers
from test_drills_shipped import assert_as_found, assert_within_sla, host_state

from mayday.drills import schema

pytestmark = pytest.mark.usefixtures("drill_lab")

NEEDS_SERVE = {"level1-alert"}
PLAIN = [name for name in schema.known() if name not in NEEDS_SERVE]
NEEDS_BACKUP = {"level2-database", "level2-database-migration", "restore-test"}


def run_plain(mayday: Mayday, name: str, inventory: str = "inventories/lab-staging"
              ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """The drill from ansible-playbook; its exit code and the journal it wrote."""
    out = subprocess.run([ANSIBLE_PLAYBOOK, "-i", inventory, "playbooks/drill.yml", "-e", f"drill={name}"],
                         cwd=ROOT, env=mayday.env(), capture_output=True, text=True, check=False, timeout=900)
    runs = sorted((mayday.state_dir / "drills" / name).glob("DRILL-*"))
    assert runs, f"{name}: no journal (rc={out.returncode})\n{out.stdout[-3000:]}\n{out.stderr[-2000:]}"
    journal = Path(runs[-1]) / "journal.json"
    return out, json.loads(journal.read_text()) if journal.exists() else {}


@pytest.fixture(scope="module")
def backed_up(drill_lab: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """One backup of both databases for the module: the restoring drills' steady state asks for one
    within their RPO, and nothing these drills leave changes the rows since (each puts its own back)."""
    assert Mayday(tmp_path_factory.mktemp("backup")).run("backup", timeout=600).returncode == 0


@pytest.mark.parametrize("name", PLAIN)
def test_shipped_drill_passes_from_plain_ansible_playbook_and_leaves_every_host_as_found(
        mayday: Mayday, name: str, request: pytest.FixtureRequest) -> None:
    if name in NEEDS_BACKUP:
        request.getfixturevalue("backed_up")
    before_hosts = host_state()
    before_rows = {db.engine: app_tables(db) for db in (MARIADB, POSTGRES)}

    out, doc = run_plain(mayday, name)

    assert out.returncode == 0 and doc.get("verdict") == "PASSED", \
        f"{name}: rc={out.returncode} {doc.get('verdict')} {doc.get('reasons')}\n{out.stdout[-3000:]}"
    assert doc["environment"] == "staging" and doc["exit_code"] == 0
    if doc["kind"] == "fault":
        assert_within_sla(name, doc)
        cleaned = [f["outcome"] for e in doc["events"] if e["event"] == "cleanup" for f in e["faults"]]
        assert cleaned and set(cleaned) == {"removed"}, cleaned
    assert_as_found(before_hosts)
    assert {db.engine: app_tables(db) for db in (MARIADB, POSTGRES)} == before_rows
    assert [h for h in ("db1", "pg1", *WEB_HOSTS) if leftovers(h)] == []
    assert all(health(h).get("status") == "healthy" for h in WEB_HOSTS)
