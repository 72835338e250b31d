"""Run history from the run records the timeline callback writes."""

from __future__ import annotations

import json
from typing import Any

from mayday import locks
from mayday.paths import state_dir


def load_runs() -> list[dict[str, Any]]:
    runs = []
    for record in (state_dir() / "runs").glob("*/mayday-run.json"):
        try:
            runs.append(json.loads(record.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(runs, key=lambda r: r.get("started") or "")


def in_progress() -> list[dict[str, Any]]:
    """Runs whose record says running and whose ansible-playbook process is still the same one."""
    live = []
    for run in load_runs():
        if run.get("status") != "running":
            continue
        holder = {"controller": run.get("controller"), "pid": run.get("pid"), "pid_start": run.get("pid_start")}
        if run.get("pid") and not locks.is_stale(holder):
            live.append(run)
    return live
