"""`mayday drill`: check drill files, run a drill (with cleanup on Ctrl-C and SIGTERM), reports,
schedules, the kill switch."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import click
from rich.console import Console

from mayday import inventory as inv
from mayday.drills import journal, report, schedule, schema
from mayday.errors import BadInput, MaydayError
from mayday.paths import project_root

err = Console(stderr=True)
ALLOWED = schema.ALLOWED_ENVIRONMENTS
# After Ctrl-C or SIGTERM the playbook gets this long to reach its next probe and clean up itself;
# then (or at a second signal) it is stopped and drill-cleanup.yml removes the faults.
GRACE_S = 30.0


@click.group("drill")
def drill_group() -> None:
    """Scheduled drills: inject a fault, let mayday recover, measure against the SLA, always clean up."""


@drill_group.command("check")
@click.argument("files", nargs=-1)
def check(files: tuple[str, ...]) -> None:
    """Check drill files (default: every drills/*.yml); exit 2 on any error."""
    names = list(files) or schema.known()
    problems = []
    for name in names:
        try:
            drill = schema.load(name)
            click.echo(f"{drill.path.name}: ok ({drill.kind}"
                       + (f", {drill.fault['type']} -> {drill.recovery.get('scenario')}" if drill.fault else "") + ")")
        except BadInput as exc:
            problems.append(str(exc))
    for problem in problems:
        err.print(f"[red]{problem}[/]", highlight=False)
    sys.exit(2 if problems else 0)


def _refuse_inventory(inventory_name: str | None) -> Path:
    path = inv.resolve(inventory_name)
    environment = inv.environment_of(path)
    if environment not in ALLOWED:
        raise BadInput(f"inventory {path} is declared {environment!r} (mayday_environment): drills only run on "
                       f"inventories declared {' or '.join(ALLOWED)}")
    return path


class Interrupted:
    """Ctrl-C and SIGTERM: first a graceful stop (the run's own kill switch), then a hard one."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0
        self.first_at = 0.0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        self.first_at = self.first_at or time.monotonic()
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / journal.STOP_FILE).write_text(f"interrupted by {signal.Signals(signum).name}\n")
        err.print(f"[yellow]{signal.Signals(signum).name}: stopping the drill at its next probe, then cleanup[/]")


def _playbook(name: str, inventory: Path, extra: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    tool = Path(sys.executable).parent / "ansible-playbook"
    argv = [str(tool), "-i", str(inventory), str(project_root() / "playbooks" / name)]
    for key, value in extra.items():
        argv += ["-e", f"{key}={value}"]
    env = dict(os.environ, ANSIBLE_CONFIG=str(project_root() / "ansible.cfg"))
    with log.open("ab") as out:
        # Its own process group: a Ctrl-C at the terminal reaches only mayday, which decides.
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _ended(proc: subprocess.Popen[bytes], within_s: float) -> bool:
    try:
        proc.wait(within_s)
    except subprocess.TimeoutExpired:
        return False
    return True


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue


def _one_at_a_time() -> int:
    """The controller's drill lock (held until this process ends): two drills never overlap."""
    lock = journal.drills_state() / "drill.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = lock.read_text().strip() or "?"
        raise BadInput(f"another drill is running on this controller ({holder}); one drill at a time") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}\n".encode())
    return fd


def run_drill(name: str, inventory_name: str | None, lease: str | None) -> dict[str, Any]:
    drill = schema.load(name)
    path = _refuse_inventory(inventory_name)  # before any connection
    lock_fd = _one_at_a_time()
    run_id = journal.new_run_id(drill.name)
    directory = journal.run_dir(drill.name, run_id)
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "ansible.log"
    # The file itself: a drill outside drills/ (a test's, a team's own) runs the same way.
    extra = {"drill": str(drill.path), "mayday_drill_run_id": run_id}
    if lease:
        extra["mayday_drill_lease"] = lease
    handler = Interrupted(directory)
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        err.print(f"drill {drill.name}: run {run_id} (log {log})")
        proc = _playbook("drill.yml", path, extra, log)
        while not _ended(proc, 0.2):  # back at once when the playbook ends, at least every 0.2 s for a signal
            hard = handler.count > 1 or (handler.count and time.monotonic() - handler.first_at > GRACE_S)
            if hard:
                _stop(proc)
                break
        if not (directory / "journal.json").is_file():
            # The playbook did not get to its report: clean up from the journal, then report.
            reason = "interrupted" if handler.count else f"the drill playbook ended with rc {proc.returncode}"
            cleanup = _playbook("drill-cleanup.yml", path, {**extra, "drill_stop_reason": reason}, log)
            cleanup.wait()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        os.close(lock_fd)
    path_json = directory / "journal.json"
    if not path_json.is_file():
        raise MaydayError(f"drill {drill.name}: no journal written; see {log}")
    doc: dict[str, Any] = json.loads(path_json.read_text())
    return doc


@drill_group.command("run")
@click.argument("name")
@click.option("-i", "--inventory", "inventory_name", default=None, help="Inventory (declared lab or staging).")
@click.option("--lease", default=None, help="How long a host keeps a fault if the controller dies (10s..4h).")
@click.option("--json", "as_json", is_flag=True, help="Print the journal's summary as JSON.")
def run(name: str, inventory_name: str | None, lease: str | None, as_json: bool) -> None:
    """Run drill NAME: steady state, inject, detect, recover, verify, clean up; exit 0 passed, 1 failed, 2 refused."""
    doc = run_drill(name, inventory_name, lease)
    directory = journal.run_dir(doc["drill"], doc["run_id"])
    if as_json:
        click.echo(json.dumps({k: doc.get(k) for k in ("drill", "run_id", "verdict", "exit_code", "reasons",
                                                        "detected_by", "figures", "sla", "duration_s")} |
                              {"report": str(directory / "report.md"), "junit": str(directory / "junit.xml")},
                              indent=2))
    else:
        colour = {"PASSED": "green", "REFUSED": "yellow"}.get(doc["verdict"], "red")
        fig = doc.get("figures") or {}
        err.print(f"[bold {colour}]{doc['verdict']}[/] drill {doc['drill']} in {doc.get('duration_s')} s: "
                  f"detect {fig.get('time_to_detect_s')} s, recover {fig.get('time_to_recover_s')} s "
                  f"(SLA {doc.get('sla')}), harness {fig.get('harness_s')} s", highlight=False)
        for reason in doc.get("reasons") or []:
            err.print(f"[red]- {reason}[/]", highlight=False)
        err.print(f"report: {directory / 'report.md'}")
    sys.exit(int(doc["exit_code"]))


@drill_group.command("report")
@click.argument("name", required=False)
@click.option("--last", default=10, show_default=True, help="Runs per drill.")
@click.option("--json", "as_json", is_flag=True)
def report_cmd(name: str | None, last: int, as_json: bool) -> None:
    """The trend of the last runs per drill: verdicts, detection and recovery times."""
    if name:
        schema.resolve(name)
    rows = report.trend(journal.runs(name), last=last)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no drill has run yet")
        return
    click.echo(f"{'drill':<16} {'runs':>4} {'pass':>4}  {'last':<7} {'at':<20} {'detect':>8} {'recover':>8}  "
               f"{'verdicts':<10} recovery trend")
    for row in rows:
        click.echo(f"{row['drill']:<16} {row['runs']:>4} {row['passed']:>4}  {row['last']:<7} {row['last_at']:<20} "
                   f"{_secs(row['ttd_s']):>8} {_secs(row['ttr_s']):>8}  {row['verdicts']:<10} {row['recover_trend']}")


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


@drill_group.command("stop")
@click.option("--clear", is_flag=True, help="Remove the kill switch so drills may run again.")
def stop(clear: bool) -> None:
    """The controller's kill switch: every drill stops at its next probe and cleans up."""
    path = journal.controller_stop_file()
    if clear:
        path.unlink(missing_ok=True)
        click.echo(f"kill switch cleared ({path})")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
    click.echo(f"kill switch set ({path}); hosts: touch /var/lib/mayday/drill-stop")


drill_group.add_command(schedule.schedule_cmd)
