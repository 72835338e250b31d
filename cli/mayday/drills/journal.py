"""A drill run's journal: events appended as they happen (events.jsonl), then judged into
journal.json (a versioned format) with the verdict and the figures against the SLA.

Times: time to detect = first failing probe - fault injected; time to recover = steady state back
(every probe passing) - fault injected, which is the outage a user saw.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mayday import jsonfile
from mayday.drills import data_loss
from mayday.paths import state_dir

FORMAT = "mayday-drill-journal"
FORMAT_VERSION = 1
RUN_ID = re.compile(r"^DRILL-[a-z0-9_-]{1,63}-\d{8}T\d{6}Z-[0-9a-f]{4}$")
# Exit codes: refused before any injection, a drill that ran and failed, a drill that passed.
EXIT = {"PASSED": 0, "FAILED": 1, "REFUSED": 2}
STOP_FILE = "drill-stop"


def drills_state() -> Path:
    return state_dir() / "drills"


def controller_stop_file() -> Path:
    """The controller's kill switch: while it exists every drill stops at its next probe."""
    return state_dir() / STOP_FILE


def new_run_id(drill: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now or time.time()))
    return f"DRILL-{drill}-{stamp}-{secrets.token_hex(2)}"


def run_dir(drill: str, run_id: str) -> Path:
    return drills_state() / drill / run_id


def append(directory: Path, event: dict[str, Any]) -> None:
    """One line per event, O_APPEND (the playbook's forks write concurrently)."""
    directory.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"at": time.time(), **event}, sort_keys=True, default=str) + "\n"
    fd = os.open(directory / "events.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def events(directory: Path) -> list[dict[str, Any]]:
    path = directory / "events.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Facts:
    """What the events say happened, the verdict's only input."""

    refused: str = ""
    injected_at: float | None = None
    detected_at: float | None = None
    recovered_at: float | None = None
    steady_after: bool | None = None
    cleanup_ok: bool | None = None
    stopped: str = ""
    scenario_outcome: str = ""
    scenario_ok: bool | None = None
    scenario_s: float | None = None
    error: str = ""
    rpo_s: float | None = None
    restore_s: float | None = None
    restore_ok: bool | None = None
    notify_ok: bool | None = None
    contact_problems: list[str] = field(default_factory=list)
    detected_by: str = ""  # "probes", or "alert NAME (host)" when Alertmanager's firing alert is the detection
    reasons: list[str] = field(default_factory=list)


def facts_of(evs: list[dict[str, Any]]) -> Facts:
    f = Facts()
    not_recovered = False
    for e in evs:
        kind = e.get("event")
        if kind == "refused":
            f.refused = f.refused or e.get("reason", "refused")
        elif kind == "injected":
            f.injected_at = min(f.injected_at or e["injected_at"], e["injected_at"])
        elif kind == "alert" and e.get("detected_at"):
            f.detected_at, f.detected_by = e["detected_at"], f"alert {e.get('alertname')} ({e.get('host')})"
        elif kind == "probe" and e.get("phase") == "detect" and e.get("changed_at") and \
                not f.detected_by.startswith("alert"):
            f.detected_at = min(f.detected_at or e["changed_at"], e["changed_at"])
            f.detected_by = "probes"
        elif kind == "probe" and e.get("phase") == "recover":
            if e.get("changed_at") and e.get("ok") and not not_recovered:
                f.recovered_at = max(f.recovered_at or e["changed_at"], e["changed_at"])
            else:  # one host that never came back is no recovery
                not_recovered, f.recovered_at = True, None
        elif kind == "probe" and e.get("phase") == "steady_after":
            f.steady_after = bool(e.get("ok")) and f.steady_after is not False
        elif kind == "stopped":
            f.stopped = f.stopped or e.get("reason", "kill switch")
        elif kind == "scenario":
            f.scenario_outcome = e.get("outcome", "")
            f.scenario_ok = bool(e.get("ok"))
            f.scenario_s = e.get("elapsed_s")
            if e.get("recovery_points"):  # a restore: what was written after its backup is lost
                f.rpo_s = data_loss.rpo_s(f.injected_at, e["recovery_points"])
        elif kind == "cleanup_scenario" or kind == "cleanup":
            f.cleanup_ok = bool(e.get("ok")) and f.cleanup_ok is not False
        elif kind == "error":
            f.error = f.error or e.get("msg", "error")
        elif kind == "restore_test":
            f.restore_ok = bool(e.get("ok")) and f.restore_ok is not False
            f.rpo_s = max(f.rpo_s or 0, e.get("data_age_s") or 0)
            f.restore_s = max(f.restore_s or 0, e.get("restore_s") or 0)
        elif kind == "notify":
            f.notify_ok = bool(e.get("ok"))
            f.contact_problems += list(e.get("contact_problems") or [])
    return f


def figures(f: Facts) -> dict[str, float | None]:
    def since(t: float | None) -> float | None:
        return round(t - f.injected_at, 2) if t is not None and f.injected_at is not None else None

    return {"time_to_detect_s": since(f.detected_at),
            "time_to_recover_s": since(f.recovered_at) if f.injected_at is not None else f.scenario_s,
            "rpo_s": None if f.rpo_s is None else round(f.rpo_s, 1),
            "restore_s": None if f.restore_s is None else round(f.restore_s, 2)}


def judge(kind: str, f: Facts, sla: dict[str, int]) -> tuple[str, list[str]]:
    """PASSED, FAILED or REFUSED, with every reason. A failed cleanup or a steady state that did not
    come back is FAILED however well the scenario did; nothing injected and stopped is REFUSED."""
    reasons: list[str] = []
    if f.refused:
        return ("FAILED" if f.injected_at else "REFUSED"), [f.refused]
    if f.stopped:
        reasons.append(f"stopped by the kill switch ({f.stopped})")
    if f.error:
        reasons.append(f.error)
    if f.cleanup_ok is False:
        reasons.append("cleanup failed: a fault may still be in place")
    fig = figures(f)
    if f.stopped:  # what was not measured after a stop is no finding of its own
        return ("FAILED" if f.injected_at or f.cleanup_ok is False else "REFUSED"), reasons
    if kind == "fault":
        if f.injected_at is None:
            if not reasons:
                reasons.append("the fault was never injected")
            return ("FAILED" if f.cleanup_ok is False else "REFUSED"), reasons
        if fig["time_to_detect_s"] is None:
            reasons.append("the fault was not detected")
        elif fig["time_to_detect_s"] > sla.get("detect", 0):
            reasons.append(f"detected in {fig['time_to_detect_s']} s, over the SLA of {sla['detect']} s")
        if fig["time_to_recover_s"] is None:
            reasons.append("the steady state did not come back after the scenario")
        elif fig["time_to_recover_s"] > sla.get("recover", 0):
            reasons.append(f"recovered in {fig['time_to_recover_s']} s, over the SLA of {sla['recover']} s")
        if f.scenario_ok is False:
            reasons.append(f"the recovery scenario ended {f.scenario_outcome}")
        if f.steady_after is not True:
            reasons.append("the steady state did not hold after recovery")
        if "rpo" in sla and fig["rpo_s"] is None:
            reasons.append("the data loss (RPO) was not measured: the recovery restored no backup")
        elif "rpo" in sla and fig["rpo_s"] is not None and fig["rpo_s"] > sla["rpo"]:
            reasons.append(f"data written in the {fig['rpo_s']} s before the fault was lost, over the RPO of "
                           f"{sla['rpo']} s")
    elif kind == "response":
        if f.scenario_ok is not True:
            reasons.append(f"the scenario ended {f.scenario_outcome or 'without running'}")
        elif f.scenario_s is not None and f.scenario_s > sla.get("recover", 0):
            reasons.append(f"the scenario took {f.scenario_s} s, over the SLA of {sla['recover']} s")
        if f.steady_after is not True:
            reasons.append("the steady state did not hold under the response")
    elif kind == "restore_test":
        if f.restore_ok is not True:
            reasons.append("a backup did not restore or verify against its manifest")
        if fig["rpo_s"] is not None and "rpo" in sla and fig["rpo_s"] > sla["rpo"]:
            reasons.append(f"newest backup is {fig['rpo_s']} s old, over the RPO of {sla['rpo']} s")
        if fig["restore_s"] is not None and "restore" in sla and fig["restore_s"] > sla["restore"]:
            reasons.append(f"restore took {fig['restore_s']} s, over the SLA of {sla['restore']} s")
    elif kind == "communication":
        if f.notify_ok is not True:
            reasons.append("a notification channel did not deliver the test message")
        reasons += f.contact_problems
    return ("FAILED" if reasons else "PASSED"), reasons


def build(directory: Path, plan: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    evs = events(directory)
    f = facts_of(evs)
    verdict, reasons = judge(plan.get("kind", "fault"), f, plan.get("sla") or {})
    started = evs[0]["at"] if evs else time.time()
    fig = figures(f)
    duration = time.time() - started
    # The harness's own cost: the run minus the scenario and the detection it waited for.
    fig["harness_s"] = round(duration - (f.scenario_s or 0) - (fig["time_to_detect_s"] or 0), 2)
    return {"format": FORMAT, "format_version": FORMAT_VERSION, **meta, "drill": plan.get("name"),
            "kind": plan.get("kind"), "description": plan.get("description", ""), "seed": plan.get("seed", ""),
            "verdict": verdict, "exit_code": EXIT[verdict], "reasons": reasons, "figures": fig,
            "sla": plan.get("sla") or {}, "fault": plan.get("fault") or {}, "recovery": plan.get("recovery") or {},
            "started": started, "finished": started + duration, "duration_s": round(duration, 2),
            "stopped": f.stopped, "detected_by": f.detected_by, "events": evs}


def write(directory: Path, journal: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "journal.json"
    jsonfile.write(path, journal, sort_keys=True)
    return path


def runs(drill: str | None = None) -> list[dict[str, Any]]:
    """Every finished run's journal (oldest first), of one drill or of all."""
    root = drills_state()
    if not root.is_dir():
        return []
    found = []
    for path in root.glob(f"{drill or '*'}/DRILL-*/journal.json"):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda j: j.get("started", 0))
