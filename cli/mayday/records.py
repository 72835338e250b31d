"""Controller-side records: incident timelines and reports, run records, locks.

Imported by the CLI, the action plugins and the timeline callback; never shipped to hosts.
"""

from __future__ import annotations

import calendar
import json
import os
import time
from typing import Any

from mayday import jsonfile, locks, timing
from mayday.paths import state_dir as _state_path


def utc_now() -> str:
    now = time.time()  # one reading, so the milliseconds belong to the same second
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


def state_dir() -> str:
    return str(_state_path())


def parse_utc(stamp: str) -> float:
    base, _, frac = stamp.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac or 0}")


def read_json(path: str) -> Any:
    with open(path) as handle:
        return json.load(handle)


def open_incident(meta: dict[str, Any]) -> tuple[str, str]:
    """Create incidents/INC-YYYYMMDD-HHMMSS/ (suffixed when two open in one second)."""
    base = "INC-" + time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    root = os.path.join(state_dir(), "incidents")
    os.makedirs(root, exist_ok=True)
    for n in range(1, 100):
        incident_id = base if n == 1 else f"{base}-{n}"
        path = os.path.join(root, incident_id)
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        opened = dict(meta, incident=incident_id, opened=utc_now())
        jsonfile.write(os.path.join(path, "incident.json"), opened, indent=2)
        return incident_id, path
    raise RuntimeError("could not allocate an incident id")


def append_event(incident_dir: str, event: dict[str, Any]) -> None:
    with open(os.path.join(incident_dir, "timeline.jsonl"), "a") as handle:
        handle.write(json.dumps(event, default=str) + "\n")


def read_timeline(incident_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(incident_dir, "timeline.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def measure_downtime(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Downtime as mayday saw it: first failed health probe to the last host's first good one after it."""
    # A rollback that fell back to the release served before reports that health under "restored".
    probes = [(h["checked_at"], bool(h["ok"]), e.get("host"))
              for e in events for h in [*(e.get("health") or []), *((e.get("restored") or {}).get("health") or [])]
              if h.get("checked_at")]
    probes.sort()
    failed = [t for t, ok, _ in probes if not ok]
    if not failed:
        return {"seconds": 0.0, "detected_at": None, "recovered_at": None,
                "basis": "no failed health probe was observed during the run"}
    detected = failed[0]
    recovered_by_host: dict[str, str] = {}
    pending: set[str] = set()
    for stamp, ok, host in probes:
        if stamp < detected:
            continue
        key = host or ""
        if not ok:
            pending.add(key)
            recovered_by_host.pop(key, None)
        elif key in pending and key not in recovered_by_host:
            recovered_by_host[key] = stamp
    if pending - set(recovered_by_host):
        return {"seconds": None, "detected_at": detected, "recovered_at": None,
                "basis": "health not restored on: " + ", ".join(sorted(pending - set(recovered_by_host)))}
    recovered = max(recovered_by_host.values())
    return {"seconds": round(parse_utc(recovered) - parse_utc(detected), 1), "detected_at": detected,
            "recovered_at": recovered, "basis": "first failed health probe to the last host's recovery"}


def _steps(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    steps = []
    for e in events:
        step = {k: e.get(k) for k in ("started", "duration_s", "host", "phase", "step", "result", "detail")}
        if not step["detail"] and e.get("health") and not e.get("steps"):
            step["detail"] = "; ".join(_short(h) for h in e["health"])
        gone = e.get("stale_replaced")
        if isinstance(gone, dict) and gone:  # a dead run's lock (stale, or --break-lock): whose it was
            replaced = locks.replaced_text(gone)
            if replaced not in (step["detail"] or ""):  # the host-lock task already says it as its msg
                step["detail"] = f"{step['detail']}; {replaced}" if step["detail"] else replaced
        steps.append(step)
        for sub in e.get("steps") or []:
            steps.append({"started": sub.get("started"), "duration_s": sub.get("duration_s"), "host": e.get("host"),
                          "phase": e.get("phase"), "step": "  " + str(sub.get("step")),
                          "result": sub.get("result"), "detail": _short(sub.get("detail"))})
    return steps


def _short(detail: Any) -> str:
    if isinstance(detail, dict):
        if "status" in detail and "latency_ms" in detail:
            return f"HTTP {detail['status']} in {detail['latency_ms']} ms" + (
                "" if detail.get("ok") else " (" + "; ".join(detail.get("problems") or []) + ")")
        return json.dumps(detail, default=str)[:200]
    return "" if detail is None else str(detail)[:200]


def close_incident(incident_dir: str, outcome: str, summary: str, extra: dict[str, Any]) -> dict[str, Any]:
    meta = read_json(os.path.join(incident_dir, "incident.json"))
    events = read_timeline(incident_dir)
    closed = utc_now()
    report = dict(meta)
    downtime = measure_downtime(events)
    report.update(
        outcome=outcome,
        summary=summary,
        closed=closed,
        duration_s=round(parse_utc(closed) - parse_utc(meta["opened"]), 1),
        downtime=downtime,
        steps=_steps(events),
        **extra,
    )
    if meta.get("alert"):  # started by an alert (mayday serve, or -e mayday_alert=...)
        report["alert_timing"] = timing.alert_timing(meta["alert"], meta["opened"], events, downtime, outcome)
    report["hosts"] = sorted({e["host"] for e in events if e.get("host")} | set(meta.get("hosts") or []))
    jsonfile.write(os.path.join(incident_dir, "report.json"), report, indent=2)
    with open(os.path.join(incident_dir, "report.md"), "w") as handle:
        handle.write(render_markdown(report))
    return report


def render_markdown(r: dict[str, Any]) -> str:
    down = r["downtime"]
    down_text = (f"{down['seconds']} s ({down['detected_at']} to {down['recovered_at']})"
                 if down.get("seconds") else ("0 s" if down.get("seconds") == 0 else "not restored"))
    lines = [
        f"# {r['incident']}: {r.get('title') or r.get('scenario')}",
        "",
        "| field | value |",
        "| --- | --- |",
        f"| Severity | {r.get('severity')} |",
        f"| Scenario | {r.get('scenario')} |",
        f"| Outcome | **{r['outcome']}**{' (dry run: nothing was changed)' if r.get('dry_run') else ''} |",
        f"| Opened | {r['opened']} |",
        f"| Closed | {r['closed']} |",
        f"| Duration | {r['duration_s']} s |",
        f"| Downtime | {down_text}: {down.get('basis')} |",
        f"| Inventory | {r.get('inventory') or '-'} |",
        f"| Hosts | {', '.join(r.get('hosts') or []) or '-'} |",
        f"| Operator | {r.get('operator') or '-'} |",
        "",
        "## Summary",
        "",
        r.get("summary") or "-",
        "",
        *_alert_lines(r),
        "## Timeline",
        "",
        "| started (UTC) | duration | host | phase | step | result | detail |",
        "| --- | ---: | --- | --- | --- | --- | --- |",
    ]
    for s in r["steps"]:
        detail = str(s.get("detail") or "").replace("|", "/").replace("\n", " ")
        lines.append(f"| {s.get('started')} | {s.get('duration_s')} s | {s.get('host') or '-'} | "
                     f"{s.get('phase') or '-'} | {s.get('step')} | {s.get('result')} | {detail} |")
    lines += ["", "## Root cause", "", "_To be written in the postmortem._", "",
              "## Action items", "", "- [ ] _owner, due date_", ""]
    return "\n".join(lines)


def _alert_lines(r: dict[str, Any]) -> list[str]:
    """Detection and response, for a run an alert started."""
    alert, found = r.get("alert") or {}, r.get("alert_timing")
    if not found:
        return []
    named = ", ".join(f"{k} {alert[k]}" for k in ("alertname", "fingerprint", "rule", "request") if alert.get(k))
    lines = ["## Detection and response", "", f"Started by an alert: {named or '-'}.", "",
             "| when | UTC |", "| --- | --- |"]
    lines += [f"| {label} | {found.get(key) or '-'} |" for key, label in timing.INSTANTS]
    lines += ["", "| interval | seconds | from, to |", "| --- | ---: | --- |"]
    lines += [f"| {label} | {timing.seconds_text(found.get(key))} | {what} |" for key, label, what in timing.INTERVALS]
    return [*lines, ""]


# Written by the CLI when the operator interrupts a run (Ctrl-C, SIGTERM); read by the pre-flight
# verdict, which then refuses before any host changes.
INTERRUPT_FILE = "interrupt.json"


def interrupt_path(run_id: str) -> str:
    return os.path.join(state_dir(), "runs", run_id, INTERRUPT_FILE)


def mark_interrupted(run_id: str, signal_name: str) -> None:
    path = interrupt_path(run_id)
    if os.path.exists(path):
        return  # the first interrupt is the one that counts
    os.makedirs(os.path.dirname(path), exist_ok=True)
    jsonfile.write(path, {"signal": signal_name, "at": utc_now()}, indent=2)


def interrupted(run_id: str | None) -> dict[str, Any] | None:
    if not run_id:
        return None
    try:
        found = read_json(interrupt_path(run_id))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else {"signal": "?"}


def incident_of_run(run_id: str) -> str | None:
    """The directory of the first incident a run opened, found by the run id in incident.json
    (for a run that was killed before its record named it)."""
    root = os.path.join(state_dir(), "incidents")
    found = []
    for name in os.listdir(root) if os.path.isdir(root) else []:
        try:
            meta = read_json(os.path.join(root, name, "incident.json"))
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("run_id") == run_id:
            found.append((meta.get("opened") or "", os.path.join(root, name)))
    return min(found)[1] if found else None


def write_run(run_id: str, doc: dict[str, Any]) -> str:
    path = os.path.join(state_dir(), "runs", run_id)
    os.makedirs(path, exist_ok=True)
    jsonfile.write(os.path.join(path, "mayday-run.json"), doc, indent=2)
    return path
