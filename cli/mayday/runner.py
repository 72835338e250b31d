"""Thin ansible-runner wrapper: start a playbook, stream progress, collect the outcome."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mayday import records
from mayday.interrupts import RunSignals
from mayday.outcomes import EXIT_CODES
from mayday.paths import project_root, state_dir
from mayday.redact_env import scrub_command_artifact

# Tasks whose per-host results the CLI shows itself (backups taken, host locks).
COLLECTED_ACTIONS = {"mayday_db", "mayday_host_lock", "mayday_lease", "mayday_lockdown"}


@dataclass
class Progress:
    phases: list[str]
    started: float = field(default_factory=time.monotonic)
    phase: str = ""
    task: str = ""

    @property
    def step(self) -> int:
        return self.phases.index(self.phase) + 1 if self.phase in self.phases else 0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass
class RunResult:
    run_id: str
    rc: int
    status: str
    duration_s: float
    incident: str | None
    report: dict[str, Any] | None
    report_md: Path | None
    failures: list[str]
    results: list[dict[str, Any]] = field(default_factory=list)
    # The report of the incident this run handed over to (performance -> Level 1), which decides.
    handed_over: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        if self.handed_over and self.handed_over.get("outcome") in EXIT_CODES:
            handed = EXIT_CODES[self.handed_over["outcome"]]
            own = EXIT_CODES.get((self.report or {}).get("outcome") or "", 1)
            # A hand-over refused (interrupted, locked) after this run changed hosts is not "nothing changed".
            return own if handed == 2 and own == 1 else handed
        if self.report and self.report.get("outcome") in EXIT_CODES:
            return EXIT_CODES[self.report["outcome"]]
        if self.rc == 0:
            return 0
        # Failed before an incident was opened: argument checks, nothing touched.
        return 2 if self.incident is None else 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "rc": self.rc,
            "exit_code": self.exit_code,
            "duration_s": round(self.duration_s, 1),
            "incident": self.incident,
            "outcome": (self.report or {}).get("outcome"),
            "downtime": (self.report or {}).get("downtime"),
            "report_md": str(self.report_md) if self.report_md else None,
            "failures": self.failures,
        } | ({"handed_over_to": {k: self.handed_over.get(k) for k in ("incident", "scenario", "outcome")}}
             if self.handed_over else {})


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def close_abandoned(run_id: str, progress: Progress, duration: float) -> None:
    """An abandoned run's incident record, closed ABANDONED with the timeline it reached (its own
    report step never ran), and its run record, so history and the postmortem say what happened."""
    where = f"{progress.phase} | {progress.task}".strip(" |") or "the start"
    incident_dir = records.incident_of_run(run_id)
    summary = (f"Abandoned by the operator (a second interrupt) during {where}. Hosts may be mid-change: each "
               "finishes or undoes its own step, but nothing was verified, reported or sent by this run. Look at "
               "`mayday status` and the hosts before the next run (the locks this run left are stale and replaced).")
    if incident_dir and not os.path.exists(os.path.join(incident_dir, "report.json")):
        records.append_event(incident_dir, {"started": records.utc_now(), "duration_s": 0, "host": None,
                                            "phase": "Report", "step": "abandoned by the operator",
                                            "result": "abandoned", "detail": where})
        records.close_incident(incident_dir, "ABANDONED", summary, {})
    path = state_dir() / "runs" / run_id / "mayday-run.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        doc = {"run_id": run_id}
    incident = os.path.basename(incident_dir) if incident_dir else None
    if incident_dir:
        doc["scenario"] = records.read_json(os.path.join(incident_dir, "incident.json")).get("scenario")
    doc.update(status="abandoned", outcome="ABANDONED", duration_s=round(duration, 1),
               incident=doc.get("incident") or incident,
               incidents=doc.get("incidents") or ([incident] if incident else []))
    records.write_run(run_id, doc)


def run_playbook(
    playbook: str,
    inventory: Path,
    extravars: dict[str, Any] | None = None,
    limit: str | None = None,
    check: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    phases: list[str] | None = None,
    read_only: bool = False,
) -> RunResult:
    import ansible_runner  # slow import: only when a run starts

    root = project_root()
    book = root / "playbooks" / playbook
    states = state_dir()
    runs = states / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    run_id = new_run_id()
    progress = Progress(phases=list(phases or []))
    failures: list[str] = []
    results: list[dict[str, Any]] = []

    scrubbed = False
    signals = RunSignals(run_id, read_only)
    show = on_progress

    def handle(event: dict[str, Any]) -> bool:
        nonlocal scrubbed, show
        if not scrubbed:  # the runner has written the environment to its command file: hide secrets now
            scrubbed = True
            scrub_command_artifact(runs / run_id / "command")
        data = event.get("event_data") or {}
        kind = event.get("event")
        if kind == "playbook_on_task_start":
            name = str(data.get("task") or "")
            if data.get("task_action") in ("validate_argument_spec", "ansible.builtin.validate_argument_spec"):
                return True
            phase, _, task = name.partition(" | ")
            progress.phase, progress.task = (phase, task) if task else (progress.phase, name)
            if show:
                try:
                    show(progress)
                except OSError:  # the terminal went away (SIGHUP): the run goes on without it
                    show = None
        elif kind == "runner_on_ok" and data.get("task_action") in COLLECTED_ACTIONS:
            results.append(dict(data.get("res") or {}, host=data.get("host")))
        elif kind == "runner_on_ok" and data.get("task_action") == "mayday_scenario":
            res = data.get("res") or {}
            if "noop" in res and res.get("go") and not res.get("noop"):  # the pre-flight verdict said go
                signals.changing = True
        elif kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            res = data.get("res") or {}
            failures.append(f"{data.get('host')}: {res.get('msg', kind)}")
        return True

    env = {
        "ANSIBLE_CONFIG": str(root / "ansible.cfg"),
        # ansible-runner appends its own callback dir to this variable, which replaces ansible.cfg's.
        "ANSIBLE_CALLBACK_PLUGINS": str(root / "plugins" / "callback"),
        "MAYDAY_STATE_DIR": str(states),
        "MAYDAY_RUN_ID": run_id,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    cmdline = ["--check"] if check else []
    private = Path(tempfile.mkdtemp(prefix="mayday-run-"))
    started = time.monotonic()
    try:
        with signals:
            result = ansible_runner.run(
                private_data_dir=str(private),
                project_dir=str(root),
                playbook=str(book),
                inventory=str(inventory.resolve()),
                extravars=extravars or {},
                limit=limit,
                cmdline=" ".join(cmdline) or None,
                envvars=env,
                artifact_dir=str(runs),
                ident=run_id,
                quiet=True,
                event_handler=handle,
                # Only a second interrupt stops ansible-playbook (a SIGKILL of its process group, as a dead
                # controller would): see mayday.interrupts. The runner looks every half second.
                cancel_callback=signals.should_abandon,
                settings={"pexpect_timeout": 0.5},
                rotate_artifacts=0,
            )
    finally:
        shutil.rmtree(private, ignore_errors=True)
        scrub_command_artifact(runs / run_id / "command")
    duration = time.monotonic() - started
    if str(result.status) == "canceled" and not read_only:  # cut by a second interrupt, not ended by itself
        close_abandoned(run_id, progress, duration)
    record_path = runs / run_id / "mayday-run.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    # A run killed before its record named the incident it opened (its record still says running):
    # found by its run id. Runs that ended by themselves say it, or opened none.
    killed = not record.get("incident") and record.get("status", "running") == "running"
    found = records.incident_of_run(run_id) if killed else None
    incident = record.get("incident") or (os.path.basename(found) if found else None)
    report = report_md = None
    if incident:
        incident_dir = states / "incidents" / incident
        if (incident_dir / "report.json").exists():
            report = json.loads((incident_dir / "report.json").read_text())
            report_md = incident_dir / "report.md"
    handed_over = None
    later = [i for i in record.get("incidents") or [] if i != incident]
    if later and (states / "incidents" / later[-1] / "report.json").exists():
        handed_over = json.loads((states / "incidents" / later[-1] / "report.json").read_text())
    return RunResult(run_id, int(result.rc), str(result.status), duration, incident, report, report_md, failures,
                     results, handed_over)
