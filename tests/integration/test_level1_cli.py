"""`mayday level1` against the real lab: exit codes, incident reports and host state.

Every test starts from the broken lab (web1 and web2 on release v2, whose health check fails).
"Nothing changed" means snapshot() is equal before and after: current release, failed markers
and the PIDs of nginx, php-fpm and MariaDB.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from lab_helpers import (
    ANSIBLE_PLAYBOOK,
    APP,
    DB_HOST,
    LAB_HOSTS,
    PREFIX,
    ROOT,
    WEB_HOSTS,
    Mayday,
    dexec,
    docker,
    health,
    host_lock,
    run_setup_playbook,
    snapshot,
    wait_booted,
)

from mayday import locks

pytestmark = pytest.mark.usefixtures("broken_lab")


def flat(text: str) -> str:
    """Output with line wrapping undone, for matching the names of valid choices."""
    return " ".join(text.split())


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"rc={result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def assert_serves(release: str) -> None:
    for host in WEB_HOSTS:
        assert dexec(host, f"readlink {APP}/current").strip() == f"releases/{release}", host
        doc = health(host)
        assert doc.get("status") == "healthy" and doc.get("version") == release, f"{host}: {doc}"


def lock_files(mayday: Mayday) -> list[Path]:
    return sorted((mayday.state_dir / "locks").glob("*.lock"))


# --- refused before any host is touched --------------------------------------------------------


def test_malformed_release_id_is_refused(mayday: Mayday) -> None:
    before = snapshot()
    result = mayday.run("level1", "--release", "bad id!")
    assert result.returncode == 2, output(result)
    assert "release id" in flat(result.stderr), output(result)
    assert not mayday.reports(), "no incident should be opened for malformed input"
    assert snapshot() == before


def test_unknown_inventory_is_refused(mayday: Mayday) -> None:
    before = snapshot()
    result = mayday.run("level1", "-i", "no-such-inventory")
    assert result.returncode == 2, output(result)
    message = flat(result.stderr)
    for name in ("lab", "staging", "production"):
        assert re.search(rf"\b{name}\b", message), f"{name} not among the valid inventories: {message}"
    assert not mayday.reports()
    assert snapshot() == before


def test_unknown_limit_is_refused(mayday: Mayday) -> None:
    before = snapshot()
    result = mayday.run("level1", "--limit", "nosuchhost")
    assert result.returncode == 2, output(result)
    message = flat(result.stderr)
    assert "nosuchhost" in message, output(result)
    for name in ("web1", "web2", "db1", "web"):
        assert re.search(rf"\b{name}\b", message), f"{name} not among the valid hosts/groups: {message}"
    assert not mayday.reports()
    assert snapshot() == before


def test_unknown_release_is_refused_with_the_valid_ones(mayday: Mayday) -> None:
    before = snapshot()
    result = mayday.run("level1", "--release", "v99")
    assert result.returncode == 2, output(result)
    report = mayday.last_report()
    assert report["outcome"] == "REFUSED", report
    for text in (flat(result.stderr), flat(report.get("summary") or "")):
        assert re.search(r"\bv1\b", text) and re.search(r"\bv2\b", text), f"valid releases not named: {text}"
    assert not any(n.get("event") == "resolved" for n in mayday.notifications())
    assert snapshot() == before


# --- the per-inventory lock ---------------------------------------------------------------------


def write_lock(mayday: Mayday, monkeypatch: pytest.MonkeyPatch, pid: int) -> Path:
    """The lock file of the lab inventory, as another run holding it would have written it."""
    monkeypatch.setenv("MAYDAY_STATE_DIR", str(mayday.state_dir))
    path = Path(locks.lock_path([str((ROOT / "inventories" / "lab").resolve())]))
    assert path.is_relative_to(mayday.state_dir), path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"incident": "INC-OTHER", "operator": "other", "controller": socket.gethostname(),
                                "pid": pid, "pid_start": locks.process_start(pid), "since": "x"}))
    return path


def test_lock_held_by_a_live_process_refuses_then_stale_lock_is_replaced(
        mayday: Mayday, monkeypatch: pytest.MonkeyPatch) -> None:
    holder = subprocess.Popen(["sleep", "120"])
    try:
        path = write_lock(mayday, monkeypatch, holder.pid)
        before = snapshot()
        result = mayday.run("level1")
        assert result.returncode == 2, output(result)
        assert mayday.last_report()["outcome"] == "REFUSED"
        assert snapshot() == before
        assert json.loads(path.read_text())["pid"] == holder.pid, "the live holder's lock must stay"
    finally:
        holder.kill()
        holder.wait()  # reaped: a zombie would still count as alive

    result = mayday.run("level1")
    assert result.returncode == 0, output(result)
    assert mayday.last_report()["outcome"] == "RECOVERED"
    assert_serves("v1")
    assert not path.exists(), "the run should release the lock it took over"


def test_lock_covers_the_inventory_however_it_is_named(mayday: Mayday, monkeypatch: pytest.MonkeyPatch) -> None:
    holder = subprocess.Popen(["sleep", "120"])
    try:
        write_lock(mayday, monkeypatch, holder.pid)
        before = snapshot()
        result = mayday.run("level1", "-i", str(ROOT / "inventories" / "lab" / "hosts.yml"))
        assert result.returncode == 2, output(result)
        assert mayday.last_report()["outcome"] == "REFUSED"
        assert snapshot() == before
    finally:
        holder.kill()
        holder.wait()


def test_controller_killed_mid_run_leaves_a_recoverable_lab(mayday: Mayday) -> None:
    proc = subprocess.Popen([ANSIBLE_PLAYBOOK, "playbooks/rollback-level1.yml"], cwd=ROOT, env=mayday.env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            locks = lock_files(mayday)
            if locks and locks[0].stat().st_size > 0:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the playbook ended before its lock was seen"
        assert lock_files(mayday), "no lock file appeared within 20 s"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert lock_files(mayday), "the killed run should have left its lock behind"

    result = mayday.run("level1")
    assert result.returncode == 0, output(result)
    assert mayday.last_report()["outcome"] in ("RECOVERED", "NOOP")
    assert_serves("v1")
    assert not lock_files(mayday), "the stale lock should be replaced, then released"
    held = {h: host_lock(h) for h in LAB_HOSTS}
    assert all(v is None for v in held.values()), f"host locks left: {held}"


# --- hosts and environments ---------------------------------------------------------------------


def test_unreachable_web_host_refuses_the_whole_run(mayday: Mayday) -> None:
    before = snapshot()
    docker("stop", PREFIX + "web2", timeout=60)
    try:
        result = mayday.run("level1")
        assert result.returncode == 2, output(result)
        assert mayday.last_report()["outcome"] == "REFUSED"
        after = snapshot(("web1",))  # web2 is stopped
        assert after["web1"] == before["web1"]
        assert after[DB_HOST] == before[DB_HOST]
    finally:
        docker("start", PREFIX + "web2")
        wait_booted(["web2"], timeout=60)
    assert dexec("web2", f"readlink {APP}/current").strip() == "releases/v2"


def test_production_inventory_needs_confirmation(mayday: Mayday, tmp_path: Path) -> None:
    lab_inventory = ROOT / "inventories" / "lab"
    prod = tmp_path / "prod-inventory"
    prod.mkdir()
    shutil.copy(lab_inventory / "hosts.yml", prod / "hosts.yml")
    shutil.copytree(lab_inventory / "group_vars", prod / "group_vars")
    main = prod / "group_vars" / "all" / "main.yml"
    text, count = re.subn(r"(?m)^mayday_environment: .*$", "mayday_environment: production", main.read_text())
    assert count == 1
    main.write_text(text)

    before = snapshot()
    result = mayday.run("level1", "-i", str(prod), stdin=subprocess.DEVNULL)
    assert result.returncode == 2, output(result)
    assert not mayday.reports()
    assert snapshot() == before

    result = mayday.run("level1", "-i", str(prod), "--yes", stdin=subprocess.DEVNULL)
    assert result.returncode == 0, output(result)
    report = mayday.last_report()
    assert report["outcome"] == "RECOVERED", report
    assert_serves("v1")


# --- outcomes -----------------------------------------------------------------------------------


def test_rollback_that_does_not_restore_health_escalates(mayday: Mayday) -> None:
    try:
        for host in WEB_HOSTS:
            dexec(host, "sed -i 's/^password = .*/password = \"wrong\"/' /etc/mayday-app/db.ini")
        result = mayday.run("level1", "--json")
        assert result.returncode == 1, output(result)
        doc = json.loads(result.stdout)
        assert doc["outcome"] == "FAILED", doc
        assert doc["exit_code"] == 1
        assert mayday.last_report()["outcome"] == "FAILED"
        events = [n.get("event") for n in mayday.notifications()]
        assert "escalation" in events, events
    finally:
        run_setup_playbook()


def test_rollback_recovers_then_is_a_noop_and_both_runs_are_in_history(mayday: Mayday) -> None:
    before = snapshot()
    assert all(before[h]["current"] == "releases/v2" for h in WEB_HOSTS)

    first = mayday.run("level1", "--json")
    assert first.returncode == 0, output(first)
    doc = json.loads(first.stdout)
    assert doc["outcome"] == "RECOVERED", doc
    assert_serves("v1")
    after_first = snapshot()
    for host in WEB_HOSTS:
        assert after_first[host]["current"] == "releases/v1"
        assert after_first[host]["markers"] == [f"{APP}/releases/v2/.mayday-failed"]
        assert after_first[host]["nginx"] != before[host]["nginx"], "nginx was not restarted"
        assert after_first[host]["php"] != before[host]["php"], "php-fpm was not restarted"

    second = mayday.run("level1", "--json")
    assert second.returncode == 0, output(second)
    doc2 = json.loads(second.stdout)
    assert doc2["outcome"] == "NOOP", doc2
    assert snapshot() == after_first

    history = mayday.run("history", "--json")
    assert history.returncode == 0, output(history)
    runs = json.loads(history.stdout)
    by_id = {r.get("run_id"): r for r in runs}
    for run, outcome in ((doc, "RECOVERED"), (doc2, "NOOP")):
        record = by_id.get(run["run_id"])
        assert record is not None, f"run {run['run_id']} missing from history: {runs}"
        assert record.get("scenario") == "level1", record
        assert record.get("outcome") == outcome, record
    assert [r["run_id"] for r in runs] == [doc["run_id"], doc2["run_id"]]
