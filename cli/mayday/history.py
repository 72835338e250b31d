"""Run history from the run records the timeline callback writes."""

from __future__ import annotations

import json
from typing import Any

from mayday import locks
from mayday.paths import state_dir
from mayday.timing import seconds_text


def _timing(incident: str | None) -> dict[str, Any] | None:
    """Detection and response of a run an alert started (its incident report's alert_timing)."""
    if not incident:
        return None
    try:
        report = json.loads((state_dir() / "incidents" / incident / "report.json").read_text())
    except (OSError, ValueError):
        return None
    found = report.get("alert_timing") if isinstance(report, dict) else None
    if not isinstance(found, dict):
        return None
    return dict(found, alertname=(report.get("alert") or {}).get("alertname"))


def load_runs() -> list[dict[str, Any]]:
    runs = []
    for record in (state_dir() / "runs").glob("*/mayday-run.json"):
        try:
            run = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if run.get("status") == "running" and not _alive(run):
            run["status"] = "died"  # killed without a word (SIGKILL, a reboot): not running any more
        timing = _timing(run.get("incident"))
        if timing:
            run["alert_timing"] = timing
        runs.append(run)
    return sorted(runs, key=lambda r: r.get("started") or "")


def history_lines(runs: list[dict[str, Any]]) -> list[str]:
    """The history table; runs an alert started add the alert and its detect, respond and recover times."""
    lines = [f"{'run':<25} {'started':<24} {'scenario':<18} {'outcome':<10} {'duration':>9}  {'incident':<20} "
             f"{'detect':>8} {'respond':>8} {'recover':>8}  alert"]
    for r in runs:
        timing = r.get("alert_timing") or {}
        shown = [seconds_text(timing.get(k)) for k in ("time_to_detect_s", "time_to_respond_s", "time_to_recover_s")]
        alert = f"{shown[0]:>8} {shown[1]:>8} {shown[2]:>8}  {timing.get('alertname') or '-'}"
        lines.append(f"{r['run_id']:<25} {r.get('started') or '':<24} {r.get('scenario') or '':<18} "
                     f"{r.get('outcome') or r.get('status') or '':<10} {r.get('duration_s') or 0:>8}s  "
                     f"{r.get('incident') or '-':<20} {alert}")
    return lines


def _alive(run: dict[str, Any]) -> bool:
    holder = {"controller": run.get("controller"), "pid": run.get("pid"), "pid_start": run.get("pid_start")}
    return bool(run.get("pid")) and not locks.is_stale(holder)


def in_progress() -> list[dict[str, Any]]:
    """Runs whose record says running and whose ansible-playbook process is still the same one."""
    return [run for run in load_runs() if run.get("status") == "running"]
