"""Scheduled drills under a real systemd (issue 11: "the schedule installs and fires a drill on the lab").

This controller has no systemd, so the test starts a second controller, <lab>-ctl: a container of the
lab's mon image (systemd as PID 1, no service of its own enabled) with this checkout, its venv's
Python, the docker CLI and the engine's socket mounted at the same paths, and a state directory of
the test's. Inside it `mayday drill schedule` writes the units to /etc/systemd/system and enables
them with the real systemctl; systemd fires the timers, and the drills reach the lab's hosts through
community.docker.docker as they do from this machine.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from collections.abc import Generator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import DOCKER, LAB_NAME, PREFIX, ROOT, VENV_BIN, WEB_HOSTS, docker, health, wait_for
from test_drills import states

from mayday import lab as mayday_lab

# drill_lab: v1 live and last deployed, Alertmanager quiet, whatever earlier files on this lab did.
pytestmark = pytest.mark.usefixtures("drill_lab")

CTL = PREFIX + "ctl"
# The lab's image with nothing of its own enabled (web, db and pg start their services at boot).
IMAGE = "mayday-lab-mon:latest"
UNITS = "/etc/systemd/system"
STAMPS = "/var/lib/systemd/timers"  # where a Persistent=true timer records its last run
DELAY_S = 3


def python_prefix() -> Path:
    """Where the venv's python3 really lives (a pyenv prefix here, somewhere else on CI)."""
    out = subprocess.run([str(VENV_BIN / "python3"), "-c", "import sys; print(sys.base_prefix)"],
                         capture_output=True, text=True, check=True)
    return Path(os.path.realpath(out.stdout.strip()))


def mounts(state: Path) -> list[str]:
    read_only = [ROOT, Path(mayday_lab.DOCKER)]
    prefix = python_prefix()
    if prefix not in (Path("/"), Path("/usr")):  # a system Python is the image's own (Debian 12, as here)
        read_only.append(prefix)
    flags = [f"-v{p}:{p}:ro" for p in read_only]
    return [*flags, "-v/var/run/docker.sock:/var/run/docker.sock", f"-v{state}:{state}"]


@pytest.fixture
def controller(tmp_path: Path) -> Generator[Path, None, None]:
    """<lab>-ctl booted, on the lab's network (mon1's Alertmanager answers there); yields its state directory."""
    state = tmp_path / "state"
    state.mkdir()
    docker("rm", "-f", CTL, check=False)  # a leftover of an interrupted run of this test
    try:
        docker("run", "-d", "--name", CTL, "--hostname", "ctl", "--network", LAB_NAME,
               *mayday_lab.SYSTEMD_FLAGS, *mounts(state), IMAGE)
        wait_for("the controller's systemd", lambda: ctl("systemctl", "is-system-running", check=False).stdout.strip()
                 in ("running", "degraded"), 60)
        yield state
    finally:
        docker("rm", "-f", CTL, check=False)


def ctl(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return docker("exec", CTL, *args, check=check, timeout=timeout)


def mayday_ctl(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """mayday inside the controller, from / (the units must not depend on the working directory)."""
    env = ["-e", f"MAYDAY_STATE_DIR={state}", "-e", f"MAYDAY_LAB_NAME={LAB_NAME}"]
    return subprocess.run([DOCKER, "exec", "-w", "/", *env, CTL, str(VENV_BIN / "mayday"), "drill", *args],
                          capture_output=True, text=True, check=False, timeout=60)


def show(unit: str, *props: str) -> dict[str, str]:
    out = ctl("systemctl", "show", unit, *(f"-p{p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def timers() -> dict[str, dict[str, Any]]:
    """`systemctl list-timers --all` as systemd reports it: unit -> next, last (microseconds)."""
    rows = json.loads(ctl("systemctl", "list-timers", "--all", "-o", "json").stdout)
    return {row["unit"]: row for row in rows if row["unit"].startswith("mayday-drill@")}


def due_in(seconds: int) -> tuple[str, float]:
    """An exact OnCalendar time `seconds` from now (the controller shares this machine's clock)."""
    when = (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC"), when.timestamp()


def finished(drill: str, after: int = 0) -> dict[str, str]:
    """The drill's service once a run started after `after` (monotonic µs) has ended: its exit status, kept by
    systemd, and the environment and user it ran with."""
    unit = f"mayday-drill@{drill}.service"
    props = ("ActiveState", "Result", "ExecMainStatus", "ExecMainStartTimestampMonotonic",
             "ExecMainExitTimestampMonotonic", "Environment", "User")

    def ended() -> dict[str, str] | None:
        found = show(unit, *props)
        started, exited = (int(found[p] or 0) for p in props[3:5])
        return found if started > after and exited >= started and found["ActiveState"] != "active" else None

    result: dict[str, str] = wait_for(f"{unit} to run and end", ended, 150)
    return result


def journals(state: Path, drill: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((state / "drills" / drill).glob("DRILL-*/journal.json"))]


def injected_runs(state: Path, drill: str) -> int:
    """How many of the drill's runs have injected their fault (their events.jsonl says so)."""
    return sum('"injected"' in p.read_text() for p in (state / "drills" / drill).glob("DRILL-*/events.jsonl"))


def fired_within_delay(drill: str, due: float) -> None:
    last = timers()[f"mayday-drill@{drill}.timer"]["last"] / 1e6
    assert due <= last <= due + DELAY_S + 2, (last - due, drill)  # AccuracySec=1s, and a loaded machine


def test_timers_fire_drills_under_systemd(controller: Path) -> None:
    state = controller
    # Two drills, each with its own inventory (the template service is shared): level1 on the lab due
    # shortly, communication on the lab as staging, not due before the end of the test.
    level1_at, level1_due = due_in(10)
    out = mayday_ctl(state, "schedule", "level1", "--every", level1_at, "--delay", f"{DELAY_S}s", "-i", "lab")
    assert out.returncode == 0, out.stderr
    out = mayday_ctl(state, "schedule", "communication", "--every", "monthly", "--delay", f"{DELAY_S}s",
                     "-i", "lab-staging")
    assert out.returncode == 0, out.stderr
    listed = mayday_ctl(state, "schedule", "--list").stdout
    assert level1_at in listed and "lab-staging" in listed
    timer = show("mayday-drill@level1.timer", "UnitFileState", "ActiveState", "Persistent", "RandomizedDelayUSec",
                 "AccuracyUSec")
    assert timer == {"UnitFileState": "enabled", "ActiveState": "active", "Persistent": "no",
                     "RandomizedDelayUSec": f"{DELAY_S}s", "AccuracyUSec": "1s"}
    assert set(timers()) == {"mayday-drill@level1.timer", "mayday-drill@communication.timer"}

    # level1 fires: while it runs, systemd starting another drill gets a refusal (exit 2), nothing run.
    wait_for("level1's run to start", lambda: list((state / "drills" / "level1").glob("DRILL-*")), 60)
    ctl("systemctl", "start", "mayday-drill@communication.service")
    refused = finished("communication")
    assert (refused["Result"], refused["ExecMainStatus"]) == ("exit-code", "2")
    assert not (state / "drills" / "communication").exists()
    level1 = finished("level1")
    fired_within_delay("level1", level1_due)
    # The user that owns the state directory (the operator whose records these are).
    owner = pwd.getpwuid(state.stat().st_uid).pw_name
    assert (level1["Result"], level1["ExecMainStatus"], level1["User"]) == ("success", "0", owner)
    assert f"MAYDAY_LAB_NAME={LAB_NAME}" in level1["Environment"]
    [doc] = journals(state, "level1")
    assert doc["verdict"] == "PASSED" and doc["environment"] == "lab"
    assert {e["host"] for e in doc["events"] if e["event"] == "injected"} == set(WEB_HOSTS)
    assert all(health(h).get("status") == "healthy" for h in WEB_HOSTS)

    # communication scheduled again, due now: its new calendar is taken, its inventory kept.
    comm_at, comm_due = due_in(6)
    out = mayday_ctl(state, "schedule", "communication", "--every", comm_at, "--delay", f"{DELAY_S}s",
                     "-i", "lab-staging")
    assert out.returncode == 0, out.stderr
    wait_for("communication's run", lambda: journals(state, "communication"), 120)
    comm = finished("communication", after=int(refused["ExecMainStartTimestampMonotonic"]))
    fired_within_delay("communication", comm_due)
    assert (comm["Result"], comm["ExecMainStatus"]) == ("success", "0")
    [doc] = journals(state, "communication")
    assert doc["verdict"] == "PASSED" and doc["environment"] == "staging"
    assert all(c["ok"] for e in doc["events"] if e["event"] == "notify" for c in e["channels"])
    for receiver in ("notifications.jsonl", "security-notifications.jsonl"):
        lines = (state / receiver).read_text().splitlines()
        [message] = [m for m in map(json.loads, lines) if m["event"] == "test"]  # level1's incident wrote too
        assert message["inventory"].endswith("inventories/lab-staging")
    # Persistent=false: no stamp, so a run missed while the controller is off is not made up at boot.
    stamps = ctl("ls", STAMPS).stdout.split()
    assert not [s for s in stamps if "mayday-drill" in s], stamps
    assert all(t["last"] > 0 for t in timers().values()), timers()

    # `systemctl stop` while level1 runs (KillMode=mixed: SIGTERM to mayday alone): the drill stops,
    # cleans up, exits 1 with its journal, and the hosts are as before it started.
    before = states()
    earlier = int(level1["ExecMainStartTimestampMonotonic"])
    ctl("systemctl", "start", "--no-block", "mayday-drill@level1.service")
    wait_for("the stopped run's fault in place", lambda: injected_runs(state, "level1") == 2, 90)
    ctl("systemctl", "stop", "mayday-drill@level1.service", timeout=150)
    stopped = finished("level1", after=earlier)
    assert (stopped["Result"], stopped["ExecMainStatus"]) == ("exit-code", "1"), stopped
    doc = journals(state, "level1")[-1]
    assert doc["verdict"] == "FAILED" and any("SIGTERM" in r for r in doc["reasons"]), doc["reasons"]
    assert states() == before
    assert all(health(h).get("status") == "healthy" for h in WEB_HOSTS)

    # Removed: the units gone from disk and from systemd.
    for drill in ("level1", "communication"):
        out = mayday_ctl(state, "schedule", "--remove", drill)
        assert out.returncode == 0, out.stderr
    assert timers() == {}
    assert show("mayday-drill@level1.timer", "LoadState") == {"LoadState": "not-found"}
    assert ctl("sh", "-c", f"ls -d {UNITS}/mayday-drill@* {UNITS}/*/mayday-drill@* 2>/dev/null",
               check=False).stdout == ""
    assert mayday_ctl(state, "schedule", "--list").stdout == ""
