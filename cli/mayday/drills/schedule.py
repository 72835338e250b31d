"""`mayday drill schedule`: a systemd timer per drill on the controller.

One template service (mayday-drill@.service) runs `mayday drill run %i`; each drill gets an
instance timer (mayday-drill@<drill>.timer) with its OnCalendar, a randomised delay, and
Persistent=false so runs missed while the controller was off are not piled up, and a drop-in
(mayday-drill@<drill>.service.d/schedule.conf) naming its inventory. One drill at a time: systemd
never starts an instance that is still running, and `mayday drill run` holds a lock in the state
directory and refuses (exit 2) while another drill runs. The unit directory is MAYDAY_SYSTEMD_DIR
(default /etc/systemd/system); only the default one is reloaded and enabled, when systemd runs.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import yaml

from mayday import inventory as inv
from mayday.drills import schema
from mayday.errors import BadInput, MaydayError
from mayday.paths import project_root, state_dir

SYSTEM_DIR = Path("/etc/systemd/system")
SERVICE = "mayday-drill@.service"
DROP_IN = "schedule.conf"
EVERY = {"daily": "daily", "weekly": "weekly", "monthly": "monthly"}
# What an OnCalendar expression may contain (systemd-analyze calendar has the last word when present).
CALENDAR = re.compile(r"^[A-Za-z0-9*:.,/~ +-]{1,120}$")
DELAY = re.compile(r"^\d+(s|m|h)$")
# Written into the service when set: the lab's name picks the containers inventories/lab* address.
PASSED_ENV = ("MAYDAY_LAB_NAME",)
# systemd's own PATH for services, after the venv's bin (ansible-playbook, ansible-inventory): the
# docker CLI of the community.docker.docker connection is in /usr/bin.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENVIRONMENTS = schema.ALLOWED_ENVIRONMENTS


def unit_dir() -> Path:
    return Path(os.environ.get("MAYDAY_SYSTEMD_DIR") or SYSTEM_DIR)


def timer_name(drill: str) -> str:
    return f"mayday-drill@{drill}.timer"


def drop_in_dir(drill: str) -> Path:
    return unit_dir() / f"mayday-drill@{drill}.service.d"


def systemd_running() -> bool:
    """sd_booted(): systemd is PID 1 here (a controller in a plain container has systemctl but no systemd)."""
    return Path("/run/systemd/system").is_dir()


# -- unit file syntax ---------------------------------------------------------------------------------
def specifiers(text: str) -> str:
    """systemd expands %x specifiers in most settings: a literal % is %%."""
    return text.replace("%", "%%")


def quoted(word: str) -> str:
    """One word of a unit setting that systemd unquotes (Environment=, ExecStart=): C-style double quotes."""
    if word and not re.search(r"[\s\"'\\;]", word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def environment_line(name: str, value: str) -> str:
    if "\n" in value:
        raise BadInput(f"{name} must not contain a newline")
    return "Environment=" + quoted(specifiers(f"{name}={value}"))


def exec_word(word: str) -> str:
    """A literal word of ExecStart=: systemd also expands $VAR there ($$ is a literal $)."""
    return quoted(specifiers(word).replace("$", "$$"))


def on_calendar(every: str) -> str:
    """weekly, monthly, daily or an OnCalendar expression, checked (systemd-analyze when available)."""
    text = every.strip()
    if text.lower() in EVERY:
        return EVERY[text.lower()]
    valid = "valid: daily, weekly, monthly or a systemd OnCalendar expression such as 'Tue *-*-01..07 10:00'"
    if not CALENDAR.match(text):
        raise BadInput(f"--every {every!r} is not a schedule; {valid}")
    tool = shutil.which("systemd-analyze")
    if tool:
        out = subprocess.run([tool, "calendar", text], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise BadInput(f"--every {every!r} is not a systemd OnCalendar expression: "
                           f"{(out.stderr or out.stdout).strip().splitlines()[-1:]}; {valid}")
        if re.search(r"Next elapse:\s*never", out.stdout):
            raise BadInput(f"--every {every!r} is in the past: the timer would never fire; {valid}")
    return text


def mayday_bin() -> str:
    found = Path(sys.executable).parent / "mayday"
    return str(found if found.exists() else shutil.which("mayday") or "mayday")


def run_as(user: str | None) -> str:
    """The user drills run as: --user, else the owner of the state directory (else of the checkout),
    so scheduled runs write records and take locks like the operator's own runs."""
    if user:
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise BadInput(f"--user {user!r} does not exist on this controller; valid: an existing user") from None
        return user
    owner = state_dir() if state_dir().exists() else project_root()
    uid = owner.stat().st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def schedule_inventory(name: str) -> str:
    """The inventory as `mayday drill run -i` gets it under systemd (another working directory: a
    path is made absolute); one not declared lab or staging is refused now, not at 3 a.m."""
    path = inv.resolve(name)
    environment = inv.environment_of(path)
    if environment not in ENVIRONMENTS:
        raise BadInput(f"inventory {path} is declared {environment!r} (mayday_environment): drills only run on "
                       f"inventories declared {' or '.join(ENVIRONMENTS)}")
    return name if path == project_root() / "inventories" / name else str(path.resolve())


def service_text(user: str) -> str:
    root = str(project_root())
    env = {"MAYDAY_HOME": root, "MAYDAY_STATE_DIR": str(state_dir()), "ANSIBLE_CONFIG": f"{root}/ansible.cfg",
           "PATH": f"{Path(sys.executable).parent}:{SYSTEM_PATH}"}
    env.update({name: os.environ[name] for name in PASSED_ENV if os.environ.get(name)})
    command = " ".join(exec_word(w) for w in (mayday_bin(), "drill", "run"))
    lines = "\n".join(environment_line(k, v) for k, v in env.items())
    return f"""# Written by `mayday drill schedule`: runs drill %i (drills/%i.yml); see extensions/systemd/.
# Its inventory: mayday-drill@<drill>.service.d/{DROP_IN}. Secrets: /etc/mayday/drill.env.
[Unit]
Description=mayday drill %i
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
User={specifiers(user)}
WorkingDirectory={specifiers(root)}
{lines}
Environment=MAYDAY_DRILL_INVENTORY=staging
EnvironmentFile=-/etc/mayday/drill.env
ExecStart={command} %i -i ${{MAYDAY_DRILL_INVENTORY}}
# SIGTERM to mayday only: it stops the drill at its next probe and cleans up; hosts' leases cover a kill.
KillMode=mixed
TimeoutStopSec=120
"""


def drop_in_text(drill: str, inventory: str) -> str:
    return f"""# Written by `mayday drill schedule {drill} -i {inventory}`.
[Service]
{environment_line("MAYDAY_DRILL_INVENTORY", inventory)}
"""


def timer_text(drill: str, calendar: str, delay: str) -> str:
    return f"""# Written by `mayday drill schedule {drill} --every '{calendar}'`.
[Unit]
Description=mayday drill {drill} ({specifiers(calendar)})

[Timer]
OnCalendar={calendar}
RandomizedDelaySec={delay}
# Fired when due (plus the random delay), not coalesced with other wake-ups for up to a minute.
AccuracySec=1s
# Runs missed while the controller was off are not made up (no pile-up).
Persistent=false
Unit=mayday-drill@{drill}.service

[Install]
WantedBy=timers.target
"""


def _systemctl(*args: str) -> None:
    if unit_dir() != SYSTEM_DIR or not systemd_running():
        return
    out = subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise MaydayError(f"systemctl {' '.join(args)} failed: {out.stderr.strip()}")


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(path)
    return path


def install(drill: str, every: str, delay: str, inventory: str, user: str | None = None) -> list[Path]:
    """Writes the units (everything checked first: nothing is written for bad input) and starts the timer."""
    if not schema.NAME.match(drill):
        raise BadInput(f"drill {drill!r}: name a drill in drills/ (a timer runs `mayday drill run NAME`); "
                       f"valid: {', '.join(schema.known())}")
    schema.load(drill)  # a drill that does not check is never scheduled
    if not DELAY.match(delay):
        raise BadInput(f"--delay {delay!r}; valid: a number with s, m or h (15m)")
    calendar = on_calendar(every)
    target = schedule_inventory(inventory)
    service = service_text(run_as(user))
    directory = unit_dir()
    directory.mkdir(parents=True, exist_ok=True)
    drop_in_dir(drill).mkdir(exist_ok=True)
    written = [_write(directory / SERVICE, service),
               _write(drop_in_dir(drill) / DROP_IN, drop_in_text(drill, target)),
               _write(directory / timer_name(drill), timer_text(drill, calendar, delay))]
    _systemctl("daemon-reload")
    # restart: a timer scheduled again takes its new calendar now.
    _systemctl("enable", timer_name(drill))
    _systemctl("restart", timer_name(drill))
    return written


def listed() -> list[dict[str, str]]:
    found = []
    for path in sorted(unit_dir().glob("mayday-drill@*.timer")):
        drill = path.name[len("mayday-drill@"):-len(".timer")]
        calendar = re.search(r"^OnCalendar=(.*)$", path.read_text(), re.M)
        conf = drop_in_dir(drill) / DROP_IN
        target = re.search(r"MAYDAY_DRILL_INVENTORY=([^\"\n]*)", conf.read_text()) if conf.exists() else None
        found.append({"drill": drill, "every": calendar.group(1) if calendar else "?",
                      "inventory": target.group(1) if target else "staging", "unit": str(path)})
    return found


def remove(drill: str) -> list[Path]:
    path = unit_dir() / timer_name(drill)
    if not path.exists():
        valid = ", ".join(s["drill"] for s in listed()) or "none scheduled"
        raise BadInput(f"drill {drill!r} has no schedule; valid: {valid}")
    # A drill running now is left to finish (and clean up): only its timer goes.
    _systemctl("disable", "--now", timer_name(drill))
    path.unlink()
    removed = [path]
    conf = drop_in_dir(drill) / DROP_IN
    if conf.exists():
        conf.unlink()
        removed.append(conf)
    if drop_in_dir(drill).is_dir() and not any(drop_in_dir(drill).iterdir()):
        drop_in_dir(drill).rmdir()
    if not listed() and (unit_dir() / SERVICE).exists():
        (unit_dir() / SERVICE).unlink()
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
@click.option("--delay", default="15m", show_default=True, help="RandomizedDelaySec: a random start within it.")
@click.option("-i", "--inventory", "inventory_name", default="staging", show_default=True)
@click.option("--user", default=None, help="Run drills as this user (default: the state directory's owner).")
@click.option("--from", "from_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Install every entry of a schedule file (drills/schedules/seed-002-rotation.yml).")
@click.option("--list", "as_list", is_flag=True, help="The drills scheduled.")
@click.option("--remove", "to_remove", is_flag=True, help="Remove NAME's schedule.")
def schedule_cmd(name: str | None, every: str | None, delay: str, inventory_name: str, user: str | None,
                 from_file: Path | None, as_list: bool, to_remove: bool) -> None:
    """Schedule drill NAME on this controller (a systemd timer), list or remove schedules."""
    if as_list:
        for entry in listed():
            click.echo(f"{entry['drill']:<20} {entry['every']:<28} {entry['inventory']:<16} {entry['unit']}")
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
    for drill, when in plan:  # every entry checked before any unit is written
        schema.load(drill)
        on_calendar(when)
    for drill, when in plan:
        for path in install(drill, when, delay, inventory_name, user):
            click.echo(f"wrote {path}")
    if unit_dir() == SYSTEM_DIR and not systemd_running():
        click.echo("systemd is not running here: the timers start at the next boot "
                   "(or `systemctl daemon-reload && systemctl enable --now mayday-drill@NAME.timer`)", err=True)
