"""Lease records and durations (plugins/module_utils/mayday_lease.py), without systemd: the record
logic on a temporary directory with a fake clock; the timers are tested on the lab
(tests/integration/test_db_emergencies.py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from mayday_lease import (
    LeaseError,
    Leases,
    check_bounds,
    check_id,
    format_duration,
    new_id,
    parse_duration,
    public,
)

from mayday import rules


class Clock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Leases:
    return Leases(root=str(tmp_path / "leases"), systemd=False, now=clock)


def marker_cmd(path: Path, text: str = "reverted") -> list[list[str]]:
    return [["/bin/sh", "-c", f"echo {text} >> '{path}'"]]


# -- durations ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("5s", 5),
                                               ("1d", 86400), (" 45S ", 45), ("1m30s", 90)])
def test_durations_parse_the_same_on_host_and_controller(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert rules.duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["abc", "0", "0m", "30", "m", "", "1.5h", "-5m", "30m ago", "h1", "5 m", True])
def test_bad_durations_are_refused_on_both_sides(text: object) -> None:
    with pytest.raises(LeaseError, match="valid"):
        parse_duration(text)
    with pytest.raises(rules.BadValue, match="valid: a number with a unit"):
        rules.duration_seconds(text)


@pytest.mark.parametrize("seconds", [1, 59, 60, 90, 3600, 5400, 86400 + 61])
def test_format_reads_back(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds
    assert rules.format_duration(seconds) == format_duration(seconds)
    assert rules.lease_duration(format_duration(seconds)) == format_duration(seconds)


def test_controller_rule_is_canonical_and_caps_at_seven_days() -> None:
    assert rules.lease_duration("90m") == "1h30m"
    assert rules.lease_duration(rules.lease_duration("90m")) == "1h30m"  # the CLI's value passes the playbook's check
    with pytest.raises(rules.BadValue, match="longer than 7d"):
        rules.lease_duration("8d")


def test_bounds_name_the_range() -> None:
    assert check_bounds(300, 60, 14400) == 300
    with pytest.raises(LeaseError, match=r"valid: 1m\.\.4h"):
        check_bounds(5 * 3600, 60, 14400)
    with pytest.raises(LeaseError, match=r"valid: 1m\.\.4h"):
        check_bounds(5, 60, 14400)
    assert check_bounds(5, 1, 14400) == 5  # the test inventory's minimum


def test_ids(clock: Clock) -> None:
    lease_id = new_id("Read Only!", clock())
    assert check_id(lease_id) == lease_id and lease_id.startswith("read-only-")
    for bad in ("", "../x", "A", "x" * 64, "a b", "-x"):
        with pytest.raises(LeaseError, match="not a lease id"):
            check_id(bad)


# -- records ------------------------------------------------------------------------------------
def test_grant_writes_a_private_record(store: Leases, clock: Clock, tmp_path: Path) -> None:
    record, changed = store.grant("k1", "INC-1", "thing read-only", marker_cmd(tmp_path / "m"), 300,
                                  env={"PGPASSWORD": "s3cret"}, kind="read-only")
    assert changed
    path = Path(store.path(record["id"]))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    doc = json.loads(path.read_text())
    assert doc["expires_epoch"] == int(clock() + 300) and doc["incident"] == "INC-1" and doc["key"] == "k1"
    assert doc["revert"] == marker_cmd(tmp_path / "m") and doc["env"] == {"PGPASSWORD": "s3cret"}
    shown = public(doc, clock())
    assert "env" not in shown and "s3cret" not in json.dumps(shown)
    assert shown["remaining_s"] == 300 and not shown["expired"]
    assert [r["id"] for r in store.all()] == [record["id"]]


def test_grant_again_keeps_the_id_and_moves_the_expiry(store: Leases, clock: Clock, tmp_path: Path) -> None:
    first, _ = store.grant("k1", "INC-1", "x", marker_cmd(tmp_path / "m"), 300)
    clock.t += 100
    again, changed = store.grant("k1", "INC-2", "x", marker_cmd(tmp_path / "m"), 300)
    assert changed and again["id"] == first["id"]
    assert again["expires_epoch"] == int(clock() + 300)
    assert [h["incident"] for h in again["history"]] == ["INC-1", "INC-2"]
    assert len(store.all()) == 1


def test_check_mode_writes_nothing(store: Leases, tmp_path: Path) -> None:
    record, changed = store.grant("k1", "INC-1", "x", marker_cmd(tmp_path / "m"), 300, check_mode=True)
    assert changed and record["id"] == "(new)"
    assert store.all() == [] and not os.path.exists(store.root)


def test_extend_from_now(store: Leases, clock: Clock, tmp_path: Path) -> None:
    record, _ = store.grant("k1", "INC-1", "x", marker_cmd(tmp_path / "m"), 300)
    clock.t += 250
    store.extend(record["id"], 600, incident="INC-3")
    assert store.read(record["id"])["expires_epoch"] == int(clock() + 600)
    with pytest.raises(LeaseError, match="no lease"):
        store.extend("nope-1", 60)


def test_release_reverts_now_and_forgets(store: Leases, tmp_path: Path) -> None:
    marker = tmp_path / "m"
    record, _ = store.grant("k1", "INC-1", "x", marker_cmd(marker), 300)
    assert store.release(record["id"]) is not None
    assert marker.read_text() == "reverted\n" and store.all() == []
    assert store.release(record["id"]) is None  # twice: nothing to do


def test_release_without_revert_only_forgets(store: Leases, tmp_path: Path) -> None:
    marker = tmp_path / "m"
    record, _ = store.grant("k1", "INC-1", "x", marker_cmd(marker), 300)
    store.release(record["id"], revert=False)
    assert not marker.exists() and store.all() == []


def test_release_whose_revert_fails_keeps_the_lease(store: Leases) -> None:
    record, _ = store.grant("k1", "INC-1", "x", [["/bin/false"]], 300)
    with pytest.raises(LeaseError, match="revert failed"):
        store.release(record["id"])
    assert store.read(record["id"]) is not None


def test_revert_passes_its_environment_and_later_commands_do_not_decide(store: Leases, tmp_path: Path) -> None:
    out = tmp_path / "env"
    record, _ = store.grant("k1", "INC-1", "x", [["/bin/sh", "-c", f"echo $MAYDAY_T > '{out}'"], ["/bin/false"]],
                            300, env={"MAYDAY_T": "from-record"})
    store.release(record["id"])
    assert out.read_text() == "from-record\n" and store.all() == []


def test_expire_before_time_rearms_and_after_time_reverts(store: Leases, clock: Clock, tmp_path: Path) -> None:
    marker = tmp_path / "m"
    record, _ = store.grant("k1", "INC-1", "x", marker_cmd(marker), 300)
    assert store.expire(record["id"]) == "re-armed" and not marker.exists()
    clock.t += 300
    assert store.expire(record["id"]).startswith("reverted")
    assert marker.read_text() == "reverted\n" and store.all() == []
    assert store.expire(record["id"]) == "gone"


def test_expire_that_fails_keeps_the_record_for_the_next_boot(store: Leases, clock: Clock,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    record, _ = store.grant("k1", "INC-1", "x", [["/bin/sh", "-c", "echo no >&2; exit 3"]], 60)
    clock.t += 61
    monkeypatch.setattr("mayday_lease.REVERT_ATTEMPTS", 2)
    monkeypatch.setattr("mayday_lease.REVERT_PAUSE_S", 0.0)
    assert store.expire(record["id"]).startswith("revert failed")
    kept = store.read(record["id"])
    assert kept["last_error"] == "no"


def test_boot_reverts_the_expired_and_rearms_the_live(store: Leases, clock: Clock, tmp_path: Path) -> None:
    old, _ = store.grant("old", "INC-1", "x", marker_cmd(tmp_path / "old"), 60)
    live, _ = store.grant("live", "INC-1", "x", marker_cmd(tmp_path / "live"), 600)
    clock.t += 120  # the host was down past the first expiry
    done = store.boot()
    assert done[old["id"]].startswith("reverted") and done[live["id"]] == "re-armed"
    assert (tmp_path / "old").exists() and not (tmp_path / "live").exists()
    assert [r["id"] for r in store.all()] == [live["id"]]


def test_bad_revert_is_refused(store: Leases) -> None:
    for bad in ([], [[]], ["ls"], [[1, 2]]):
        with pytest.raises(LeaseError, match="revert must be"):
            store.grant("k", "INC", "x", bad, 60)  # type: ignore[arg-type]


def test_the_helper_script_runs_standalone(tmp_path: Path) -> None:
    """The installed helper is this very file run by python3: its entry point answers."""
    from mayday_lease import __file__ as source

    out = subprocess.run([sys.executable, source, "nonsense"], capture_output=True, text=True, check=False)
    assert out.returncode == 2 and "usage" in out.stderr
