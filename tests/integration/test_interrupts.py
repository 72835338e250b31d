"""The operator interrupts `mayday level1` (Ctrl-C, a second Ctrl-C, a dropped SSH session) on the
real lab: what the hosts, the locks and the records hold afterwards.

Every test starts from the broken lab (web1 and web2 on release v2). The CLI runs in its own
process group and gets each signal the way a terminal sends it, to that group: ansible-playbook
sits in ansible-runner's own pty session and is reached only through what mayday does.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import (
    APP,
    LAB_HOSTS,
    MAYDAY,
    ROOT,
    WEB_HOSTS,
    Mayday,
    dexec,
    health,
    host_lock,
    interrupted_cli,
    snapshot,
)

pytestmark = pytest.mark.usefixtures("broken_lab")


def run_records(mayday: Mayday) -> list[dict[str, Any]]:
    files = sorted((mayday.state_dir / "runs").glob("*/mayday-run.json"))
    return [json.loads(f.read_text()) for f in files]


def lock_files(mayday: Mayday) -> list[Path]:
    return sorted((mayday.state_dir / "locks").glob("*.lock"))


def serves() -> dict[str, str]:
    """Each web host's live release and health status, as `<release> <status>`."""
    return {h: f"{dexec(h, f'readlink {APP}/current').strip().removeprefix('releases/')} "
               f"{health(h).get('status')}" for h in WEB_HOSTS}


def test_ctrl_c_before_the_verdict_refuses_and_touches_no_host(mayday: Mayday) -> None:
    before = snapshot()
    rc, text = interrupted_cli(mayday, ["level1"], "] Open")
    assert rc == 2, text
    report = mayday.last_report()
    assert report["outcome"] == "REFUSED", report
    assert any("interrupted by the operator (SIGINT)" in r for r in report.get("refusals") or []), report
    assert snapshot() == before, "an interrupt before the verdict must change no host"
    assert not lock_files(mayday), "the controller lock should be released"
    held = {h: host_lock(h) for h in LAB_HOSTS}
    assert all(v is None for v in held.values()), f"host locks left: {held}"
    # Nothing left in the way: the next run recovers.
    again = mayday.run("level1")
    assert again.returncode == 0, again.stderr
    assert serves() == {h: "v1 healthy" for h in WEB_HOSTS}


def test_ctrl_c_once_hosts_are_changing_finishes_the_run(mayday: Mayday) -> None:
    rc, text = interrupted_cli(mayday, ["level1"], "] Rollback")
    assert rc == 0, text
    assert mayday.last_report()["outcome"] == "RECOVERED"
    assert serves() == {h: "v1 healthy" for h in WEB_HOSTS}
    for host in WEB_HOSTS:
        assert dexec(host, f"test -e {APP}/releases/v2/.mayday-failed && echo marked").strip() == "marked", host
    assert not lock_files(mayday), "the finished run should release its lock"
    held = {h: host_lock(h) for h in LAB_HOSTS}
    assert all(v is None for v in held.values()), f"host locks left: {held}"


def test_second_ctrl_c_abandons_with_a_record_and_the_next_run_converges(mayday: Mayday) -> None:
    rc, text = interrupted_cli(mayday, ["level1"], "] Rollback", signals=2)
    assert rc == 1, text  # hosts may have changed: never the "nothing changed" exit 2
    report = mayday.last_report()
    assert report["outcome"] == "ABANDONED", report
    assert any(s.get("step") == "abandoned by the operator" for s in report["steps"]), report["steps"]
    runs = [r for r in run_records(mayday) if r.get("incident") == report["incident"]]
    assert [r.get("status") for r in runs] == ["abandoned"], runs

    again = mayday.run("level1")
    assert again.returncode == 0, again.stderr
    assert mayday.last_report()["outcome"] in ("RECOVERED", "NOOP")
    assert serves() == {h: "v1 healthy" for h in WEB_HOSTS}
    assert not lock_files(mayday), "the abandoned run's lock should be replaced, then released"
    held = {h: host_lock(h) for h in LAB_HOSTS}
    assert all(v is None for v in held.values()), f"host locks left: {held}"


def test_a_dropped_terminal_does_not_stop_the_run(mayday: Mayday) -> None:
    """The SSH session to the bastion drops: the terminal is gone (writes fail) and SIGHUP arrives."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([MAYDAY, "level1"], cwd=ROOT, env=mayday.env(), stdin=slave, stdout=slave,
                            stderr=slave, start_new_session=True)
    os.close(slave)
    try:
        seen = b""
        deadline = time.monotonic() + 60
        while b"] Open" not in seen and time.monotonic() < deadline:
            seen += os.read(master, 4096)
        assert b"] Open" in seen, seen.decode(errors="replace")
        os.close(master)
        os.killpg(proc.pid, signal.SIGHUP)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert mayday.last_report()["outcome"] == "RECOVERED"
    assert serves() == {h: "v1 healthy" for h in WEB_HOSTS}
    assert [r.get("status") for r in run_records(mayday)] == ["successful"]
    assert not lock_files(mayday), "the finished run should release its lock"
