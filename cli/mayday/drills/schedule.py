"""`mayday drill schedule`: a systemd timer per drill on the controller.

One template service (mayday-drill@.service) runs `mayday drill run %i`; each drill gets an
instance timer (mayday-drill@<drill>.timer) with its OnCalendar, a randomised delay, and
Persistent=false so runs missed while the controller was off are not piled up. One drill at a time:
`mayday drill run` holds a lock in the state directory and refuses (exit 2) while another runs.
The unit directory is MAYDAY_SYSTEMD_DIR (default /etc/systemd/system); only the default one is
reloaded and enabled with systemctl.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import yaml

from mayday.drills import schema
from mayday.errors import BadInput
from mayday.paths import project_root, state_dir

SYSTEM_DIR = Path("/etc/systemd/system")
SERVICE = "mayday-drill@.service"
EVERY = {"daily": "daily", "weekly": "weekly", "monthly": "monthly"}
# What an OnCalendar expression may contain (systemd-analyze calendar has the last word when present).
CALENDAR = re.compile(r"^[A-Za-z0-9*:.,/~ +-]{1,120}$")
DELAY = re.compile(r"^\d+(s|m|h)$")


def unit_dir() -> Path:
    return Path(os.environ.get("MAYDAY_SYSTEMD_DIR") or SYSTEM_DIR)


def timer_name(drill: str) -> str:
    return f"mayday-drill@{drill}.timer"


def on_calendar(every: str) -> str:
    """weekly, monthly, daily or an OnCalendar expression, checked (systemd-analyze when available)."""
    text = every.strip()
    if text.lower() in EVERY:
        return EVERY[text.lower()]
    if not CALENDAR.match(text):
        raise BadInput(f"--every {every!r} is not a schedule; valid: daily, weekly, monthly or a systemd OnCalendar "
                       "expression such as 'Tue *-*-01..07 10:00'")
    tool = shutil.which("systemd-analyze")
    if tool:
        out = subprocess.run([tool, "calendar", text], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise BadInput(f"--every {every!r} is not a systemd OnCalendar expression: "
                           f"{(out.stderr or out.stdout).strip().splitlines()[-1:]}; valid: daily, weekly, monthly "
                           "or e.g. 'Tue *-*-01..07 10:00'")
    return text


def mayday_bin() -> str:
    found = Path(sys.executable).parent / "mayday"
    return str(found if found.exists() else shutil.which("mayday") or "mayday")


def service_text(inventory: str) -> str:
    root = project_root()
    return f"""# Written by `mayday drill schedule`: runs drill %i (drills/%i.yml); see extensions/systemd/.
[Unit]
Description=mayday drill %i
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
WorkingDirectory={root}
Environment=MAYDAY_HOME={root}
Environment=MAYDAY_STATE_DIR={state_dir()}
Environment=ANSIBLE_CONFIG={root}/ansible.cfg
Environment=MAYDAY_DRILL_INVENTORY={inventory}
EnvironmentFile=-/etc/mayday/drill.env
ExecStart={mayday_bin()} drill run %i -i ${{MAYDAY_DRILL_INVENTORY}}
# SIGTERM to mayday only: it stops the drill at its next probe and cleans up; hosts' leases cover a kill.
KillMode=mixed
TimeoutStopSec=120
"""


def timer_text(drill: str, calendar: str, delay: str) -> str:
    return f"""# Written by `mayday drill schedule {drill} --every '{calendar}'`.
[Unit]
Description=mayday drill {drill} ({calendar})

[Timer]
OnCalendar={calendar}
RandomizedDelaySec={delay}
# Runs missed while the controller was off are not made up (no pile-up).
Persistent=false
Unit=mayday-drill@{drill}.service

[Install]
WantedBy=timers.target
"""


def _systemctl(*args: str) -> None:
    if unit_dir() == SYSTEM_DIR and shutil.which("systemctl"):
        subprocess.run(["systemctl", *args], capture_output=True, check=False)


def install(drill: str, every: str, delay: str, inventory: str) -> list[Path]:
    schema.load(drill)  # a drill that does not check is never scheduled
    if not DELAY.match(delay):
        raise BadInput(f"--delay {delay!r}; valid: a number with s, m or h (15m)")
    calendar = on_calendar(every)
    directory = unit_dir()
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in ((SERVICE, service_text(inventory)), (timer_name(drill), timer_text(drill, calendar, delay))):
        path = directory / name
        path.write_text(text)
        path.chmod(0o644)
        written.append(path)
    _systemctl("daemon-reload")
    _systemctl("enable", "--now", timer_name(drill))
    return written


def listed() -> list[dict[str, str]]:
    found = []
    for path in sorted(unit_dir().glob("mayday-drill@*.timer")):
        text = path.read_text()
        calendar = re.search(r"^OnCalendar=(.*)$", text, re.M)
        found.append({"drill": path.name[len("mayday-drill@"):-len(".timer")],
                      "every": calendar.group(1) if calendar else "?", "unit": str(path)})
    return found


def remove(drill: str) -> list[Path]:
    path = unit_dir() / timer_name(drill)
    if not path.exists():
        valid = ", ".join(s["drill"] for s in listed()) or "none scheduled"
        raise BadInput(f"drill {drill!r} has no schedule; valid: {valid}")
    _systemctl("disable", "--now", timer_name(drill))
    path.unlink()
    removed = [path]
    if not listed():
        (unit_dir() / SERVICE).unlink(missing_ok=True)
        removed.append(unit_dir() / SERVICE)
    _systemctl("daemon-reload")
    return removed


def rotation(path: Path) -> list[tuple[str, str]]:
    """A schedule file (drills/schedules/*.yml): a list of {drill, every}."""
    doc = yaml.safe_load(path.read_text()) or {}
    entries = doc.get("schedule") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "drill" in e and "every" in e
                                                for e in entries):
        raise BadInput(f"{path}: schedule: a list of entries with drill and every")
    return [(str(e["drill"]), str(e["every"])) for e in entries]


@click.command("schedule")
@click.argument("name", required=False)
@click.option("--every", default=None, help="daily, weekly, monthly or a systemd OnCalendar expression.")
@click.option("--delay", default="15m", show_default=True, help="RandomizedDelaySec.")
@click.option("-i", "--inventory", "inventory_name", default="staging", show_default=True)
@click.option("--from", "from_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Install every entry of a schedule file (drills/schedules/seed-002-rotation.yml).")
@click.option("--list", "as_list", is_flag=True, help="The drills scheduled.")
@click.option("--remove", "to_remove", is_flag=True, help="Remove NAME's schedule.")
def schedule_cmd(name: str | None, every: str | None, delay: str, inventory_name: str, from_file: Path | None,
                 as_list: bool, to_remove: bool) -> None:
    """Schedule drill NAME on this controller (a systemd timer), list or remove schedules."""
    if as_list:
        for entry in listed():
            click.echo(f"{entry['drill']:<20} {entry['every']:<28} {entry['unit']}")
        return
    if to_remove:
        if not name:
            raise BadInput("--remove needs the drill's name")
        for path in remove(name):
            click.echo(f"removed {path}")
        return
    plan = rotation(from_file) if from_file else []
    if name:
        if not every:
            raise BadInput("--every is required; valid: daily, weekly, monthly or an OnCalendar expression")
        plan.append((name, every))
    if not plan:
        raise BadInput("name a drill with --every, or --from a schedule file, or --list / --remove")
    for drill, when in plan:
        for path in install(drill, when, delay, inventory_name):
            click.echo(f"wrote {path}")
