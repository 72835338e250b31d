"""mayday.locks on a real state directory with real processes: owners, stale detection, atomic breaking."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mayday import locks


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MAYDAY_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "30"])
    yield proc
    proc.kill()
    proc.wait()


def who(pid: int, incident: str, **extra: object) -> dict:
    return {"incident": incident, "pid": pid, "pid_start": locks.process_start(pid),
            "controller": socket.gethostname(), "operator": "tester", "since": "now", **extra}


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_second_live_owner_is_refused_and_the_owner_may_retake(state: Path, tmp_path: Path,
                                                               sleeper: subprocess.Popen[bytes]) -> None:
    inv = [str(tmp_path / "inventories" / "lab")]
    first = locks.acquire(inv, who(sleeper.pid, "INC-A"))
    assert first["acquired"] and first["stale_replaced"] is None
    path = locks.lock_path(inv)
    assert path.startswith(str(state / "locks"))
    second = locks.acquire(inv, who(os.getpid(), "INC-B"))
    assert not second["acquired"] and second["holder"]["incident"] == "INC-A"
    assert json.loads(Path(path).read_text())["incident"] == "INC-A"
    assert locks.acquire(inv, who(sleeper.pid, "INC-A"))["acquired"]
    assert locks.holder(inv)["incident"] == "INC-A"


def test_dead_owner_is_stale_and_replaced(state: Path, tmp_path: Path) -> None:
    inv = [str(tmp_path / "inv")]
    gone = dead_pid()
    assert locks.acquire(inv, who(gone, "INC-OLD"))["acquired"]
    assert locks.holder(inv) is None
    result = locks.acquire(inv, who(os.getpid(), "INC-NEW"))
    assert result["acquired"] and result["stale_replaced"]["incident"] == "INC-OLD"
    assert json.loads(Path(locks.lock_path(inv)).read_text())["incident"] == "INC-NEW"


def test_a_reused_pid_does_not_keep_a_dead_lock_alive(state: Path, tmp_path: Path,
                                                      sleeper: subprocess.Popen[bytes]) -> None:
    inv = [str(tmp_path / "inv")]
    # The pid is alive, but it is not the process that took the lock (another start time).
    assert locks.acquire(inv, who(sleeper.pid, "INC-OLD", pid_start="1"))["acquired"]
    assert locks.is_stale(json.loads(Path(locks.lock_path(inv)).read_text()))
    assert locks.acquire(inv, who(os.getpid(), "INC-NEW"))["acquired"]


def test_another_controllers_lock_stands(state: Path, tmp_path: Path) -> None:
    inv = [str(tmp_path / "inv")]
    assert locks.acquire(inv, who(dead_pid(), "INC-AWX", controller="awx-node-7"))["acquired"]
    refused = locks.acquire(inv, who(os.getpid(), "INC-ME"))
    assert not refused["acquired"] and refused["holder"]["controller"] == "awx-node-7"
    assert "awx-node-7" in locks.describe(refused["holder"])


def test_breaking_gives_back_a_lock_that_changed_since_it_was_judged(state: Path, tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    path.write_text(json.dumps({"incident": "INC-NEW"}))
    assert locks.break_stale(str(path), {"incident": "INC-OLD"}) is False
    assert json.loads(path.read_text()) == {"incident": "INC-NEW"}
    assert [p.name for p in tmp_path.iterdir()] == ["x.lock"]
    assert locks.break_stale(str(path), {"incident": "INC-NEW"}) is True and not path.exists()


def test_locks_are_per_inventory_and_release_only_by_owner(state: Path, tmp_path: Path) -> None:
    a, b = [str(tmp_path / "a")], [str(tmp_path / "b")]
    assert locks.acquire(a, who(os.getpid(), "INC-A"))["acquired"]
    assert locks.acquire(b, who(os.getpid(), "INC-B"))["acquired"]
    assert locks.lock_path(["x", "y"]) == locks.lock_path(["y", "x"])
    assert locks.release(a, os.getpid() + 1) is False and os.path.exists(locks.lock_path(a))
    assert locks.release(a, os.getpid()) is True and not os.path.exists(locks.lock_path(a))
    assert [h["incident"] for h in locks.held_locally()] == ["INC-B"]


def test_a_symlink_at_the_lock_path_is_not_followed(state: Path, tmp_path: Path) -> None:
    inv = [str(tmp_path / "inv")]
    target = tmp_path / "precious"
    target.write_text("keep")
    os.makedirs(os.path.dirname(locks.lock_path(inv)))
    os.symlink(target, locks.lock_path(inv))
    assert locks.holder(inv) == {} or locks.holder(inv) is None
    assert target.read_text() == "keep"


def test_break_lock_breaks_only_the_named_incident_of_another_controller():
    other = {"incident": "INC-20261125-080000", "controller": "awx-job-7f", "pid": 4242, "pid_start": "1"}
    me = os.getpid()
    alive = dict(other, controller=socket.gethostname(), pid=me, pid_start=locks.process_start(me))
    assert not locks.may_break(other)  # another controller's run: this one cannot tell it is gone
    assert not locks.may_break(other, "INC-20261125-080001")
    assert locks.may_break(other, "INC-20261125-080000")
    assert not locks.may_break(alive, "INC-20261125-080000")  # alive here: never, named or not
    assert "--break-lock INC-20261125-080000" in locks.break_hint(other)
    assert locks.break_hint(alive) == ""
    assert locks.break_hint(dict(other, incident="not-an-id")) == ""


def test_incident_id_rule_names_the_valid_form():
    from mayday import rules

    assert rules.incident_id(" INC-20261125-080000 ") == "INC-20261125-080000"
    assert rules.incident_id("INC-20261125-080000-2") == "INC-20261125-080000-2"
    for bad in ("nope", "INC-2026-08", "INC-20261125-080000;rm", ""):
        with pytest.raises(rules.BadValue, match="INC-YYYYMMDD-HHMMSS"):
            rules.incident_id(bad)


def test_judge_host_lock_breaks_the_named_lock_and_says_whose_it_was():
    gone = {"incident": "INC-20261125-080000", "controller": "awx-job-7f", "pid": 4242, "pid_start": "1"}
    mine = {"incident": "INC-20261126-000000", "controller": socket.gethostname(), "pid": os.getpid()}
    raw = json.dumps(gone, sort_keys=True)
    scripts: list[str] = []

    def host(script: str) -> list[str]:  # the host's answers: broken, then taken
        scripts.append(script)
        return ["broken"] if "MAYDAY_JUDGED" in script else ["taken"]

    held = locks.judge_host_lock(["held", raw], mine, False, host)
    assert held["lock"] == "held" and not scripts and "awx-job-7f" in held["lock_msg"]
    taken = locks.judge_host_lock(["held", raw], mine, False, host, "INC-20261125-080000")
    assert taken["lock"] == "taken" and taken["stale_replaced"] == gone
    assert "replacing that of incident INC-20261125-080000" in taken["lock_msg"]
    assert any(raw in s for s in scripts), "the break must compare against the owner record it judged"
    dry = locks.judge_host_lock(["held", raw], mine, True, host, "INC-20261125-080000")
    assert dry["lock"] == "free" and len(scripts) == 2, "a dry run breaks nothing"
