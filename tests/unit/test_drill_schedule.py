"""`mayday drill schedule`: the units it writes (systemd syntax, per-drill inventories, the environment a
drill needs under systemd), bad input refused with nothing written, removal. Firing under a real systemd
is tests/integration/test_drill_schedule.py."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mayday.drills import schedule
from mayday.errors import BadInput

REPO = Path(__file__).resolve().parents[2]
MAYDAY = str(Path(sys.executable).parent / "mayday")


@pytest.fixture
def units(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "units"
    monkeypatch.setenv("MAYDAY_SYSTEMD_DIR", str(directory))
    monkeypatch.setenv("MAYDAY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("MAYDAY_HOME", raising=False)
    monkeypatch.delenv("MAYDAY_LAB_NAME", raising=False)
    return directory


def settings(path: Path) -> list[tuple[str, str]]:
    found = []
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            found.append((key, value))
    return found


def verify(paths: list[Path], directory: Path) -> None:
    """systemd's own parser on the units, where this machine has it."""
    if not shutil.which("systemd-analyze"):
        return
    out = subprocess.run(["systemd-analyze", "verify", *map(str, paths)], capture_output=True, text=True,
                         env={**os.environ, "SYSTEMD_UNIT_PATH": f"{directory}:"}, check=False)
    assert out.returncode == 0, out.stderr


def test_units_per_drill_inventory_and_environment(units: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAYDAY_LAB_NAME", "lab-x")
    written = schedule.install("level1", "monthly", "15m", "lab")
    written += schedule.install("communication", "Tue *-*-22..28 09:30", "2m", "lab-staging")
    assert {p.name for p in written} == {"mayday-drill@.service", "schedule.conf", "mayday-drill@level1.timer",
                                         "mayday-drill@communication.timer"}
    verify([units / "mayday-drill@level1.timer", units / "mayday-drill@communication.timer"], units)
    timer = dict(settings(units / "mayday-drill@level1.timer"))
    assert timer["OnCalendar"] == "monthly" and timer["RandomizedDelaySec"] == "15m"
    assert timer["Persistent"] == "false" and timer["AccuracySec"] == "1s"
    assert timer["Unit"] == "mayday-drill@level1.service" and timer["WantedBy"] == "timers.target"
    service = settings(units / "mayday-drill@.service")
    env = dict(value.split("=", 1) for key, value in service if key == "Environment")
    assert env["MAYDAY_HOME"] == str(REPO) and env["ANSIBLE_CONFIG"] == f"{REPO}/ansible.cfg"
    assert env["MAYDAY_STATE_DIR"] == str(units.parent / "state") and env["MAYDAY_LAB_NAME"] == "lab-x"
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent) and "/usr/bin" in env["PATH"].split(":")
    assert dict(service)["ExecStart"] == f"{MAYDAY} drill run %i -i ${{MAYDAY_DRILL_INVENTORY}}"
    assert dict(service)["User"] == pwd.getpwuid(os.getuid()).pw_name  # the state directory's owner
    assert dict(service)["KillMode"] == "mixed" and dict(service)["WorkingDirectory"] == str(REPO)
    # Each drill keeps its own inventory: the template is shared, the drop-ins are not.
    for drill, inventory in (("level1", "lab"), ("communication", "lab-staging")):
        conf = units / f"mayday-drill@{drill}.service.d" / "schedule.conf"
        assert settings(conf) == [("Environment", f"MAYDAY_DRILL_INVENTORY={inventory}")]
    assert [(s["drill"], s["every"], s["inventory"]) for s in schedule.listed()] == [
        ("communication", "Tue *-*-22..28 09:30", "lab-staging"), ("level1", "monthly", "lab")]


def test_unit_syntax_quotes_and_escapes() -> None:
    # What systemd unquotes and expands: verified against systemd 252 in the integration controller.
    assert schedule.environment_line("A", "/srv/my checkout/100%") == 'Environment="A=/srv/my checkout/100%%"'
    assert schedule.environment_line("A", 'x"y\\z') == 'Environment="A=x\\"y\\\\z"'
    assert schedule.environment_line("A", "/opt/mayday") == "Environment=A=/opt/mayday"
    assert schedule.exec_word("/opt/a b/$HOME%i") == '"/opt/a b/$$HOME%%i"'
    with pytest.raises(BadInput, match="newline"):
        schedule.environment_line("A", "x\ny")


def test_checkout_path_with_space_and_percent(units: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "ci 100%"
    home.mkdir()
    for name in ("playbooks", "drills", "inventories"):
        (home / name).symlink_to(REPO / name)
    monkeypatch.setenv("MAYDAY_HOME", str(home))
    schedule.install("level1", "weekly", "15m", "lab")
    service = dict(settings(units / "mayday-drill@.service"))
    assert service["WorkingDirectory"] == f"{tmp_path}/ci 100%%"
    text = (units / "mayday-drill@.service").read_text()
    assert f'Environment="MAYDAY_HOME={tmp_path}/ci 100%%"' in text
    verify([units / "mayday-drill@level1.timer"], units)


def test_relative_inventory_path_made_absolute(units: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO / "inventories")
    schedule.install("level1", "weekly", "15m", "lab-staging/")
    conf = units / "mayday-drill@level1.service.d" / "schedule.conf"
    assert settings(conf) == [("Environment", f"MAYDAY_DRILL_INVENTORY={REPO}/inventories/lab-staging")]


@pytest.mark.parametrize(("args", "problem"), [
    (("level1", "weekly", "15m", "production"), "declared 'production'"),
    (("level1", "2020-01-01 10:00 UTC", "15m", "lab"), "never fire"),
    (("level1", "every full moon!", "15m", "lab"), "valid: daily, weekly, monthly"),
    (("level1", "weekly", "soon", "lab"), "--delay 'soon'; valid"),
    (("drills/level1.yml", "weekly", "15m", "lab"), "name a drill in drills/"),
    (("nope", "weekly", "15m", "lab"), "not found"),
    (("level1", "weekly", "15m", "nope"), "inventory 'nope' not found"),
])
def test_bad_input_writes_nothing(units: Path, args: tuple[str, str, str, str], problem: str) -> None:
    if problem == "never fire" and not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze decides whether a calendar ever elapses")
    with pytest.raises(BadInput, match=problem):
        schedule.install(*args)
    assert not units.exists() or not list(units.iterdir())


def test_unknown_user_refused(units: Path) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        schedule.install("level1", "weekly", "15m", "lab", user="no-such-user-here")
    assert not units.exists()


def test_remove_keeps_the_template_for_other_drills(units: Path) -> None:
    schedule.install("level1", "weekly", "15m", "lab")
    schedule.install("communication", "monthly", "15m", "lab-staging")
    removed = schedule.remove("level1")
    assert {p.name for p in removed} == {"mayday-drill@level1.timer", "schedule.conf"}
    assert sorted(p.name for p in units.iterdir()) == ["mayday-drill@.service", "mayday-drill@communication.service.d",
                                                       "mayday-drill@communication.timer"]
    with pytest.raises(BadInput, match="has no schedule; valid: communication"):
        schedule.remove("level1")
    schedule.remove("communication")
    assert not list(units.iterdir())
    with pytest.raises(BadInput, match="valid: none scheduled"):
        schedule.remove("communication")


def test_cli_rotation_with_a_bad_entry_writes_nothing(units: Path, tmp_path: Path) -> None:
    plan = tmp_path / "rotation.yml"
    plan.write_text("schedule:\n  - {drill: level1, every: weekly}\n  - {drill: nope, every: monthly}\n")
    out = subprocess.run([MAYDAY, "drill", "schedule", "--from", str(plan), "-i", "lab"], cwd=tmp_path,
                         env=dict(os.environ), capture_output=True, text=True, check=False)
    assert out.returncode == 2 and "nope" in out.stderr
    assert not units.exists()
    ok = subprocess.run([MAYDAY, "drill", "schedule", "--from", str(REPO / "drills/schedules/seed-002-rotation.yml"),
                         "-i", "lab-staging"], cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True,
                        check=False)
    assert ok.returncode == 0, ok.stderr
    listed = subprocess.run([MAYDAY, "drill", "schedule", "--list"], cwd=tmp_path, env=dict(os.environ),
                            capture_output=True, text=True, check=False).stdout
    assert "restore-test" in listed and "Tue *-*-01..07 10:00" in listed and "lab-staging" in listed
