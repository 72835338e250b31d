"""A drill run's reports (JUnit XML, Markdown) from its journal, and the trend over past runs."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

SPARK = "▁▂▃▄▅▆▇█"
PHASES = ("steady_before", "inject", "detect", "recover", "steady_after", "cleanup")


def _utc(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else "-"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g} s"


def cases(journal: dict[str, Any]) -> list[tuple[str, str, float, str | None]]:
    """(class, name, seconds, failure or None): one per phase that ran and one per probe."""
    evs = journal.get("events") or []
    out: list[tuple[str, str, float, str | None]] = []
    for phase in PHASES:
        mine = [e for e in evs if e.get("phase") == phase]
        if not mine:
            continue
        if phase == "detect":  # detection wants the probes to fail: it fails when nothing was seen
            failed = [e for e in mine if e.get("event") == "probe" and not e.get("changed_at")]
        else:
            failed = [e for e in mine if not e.get("ok", True)]
        secs = sum(float(e.get("elapsed_s") or 0) for e in mine)
        out.append(("phase", phase, secs, "; ".join(str(e.get("msg") or e.get("problems") or "failed")
                                                 for e in failed) or None))
        for e in mine:
            for probe in e.get("results") or []:
                bad = None if probe.get("ok") else "; ".join(probe.get("problems") or ["failed"])
                # Detection expects the probes to fail: a failing probe there is the test passing.
                if phase == "detect":
                    bad = None
                out.append((f"probe.{phase}", f"{e.get('host', '?')}: {probe.get('name')}", 0.0, bad))
    for e in evs:
        if e.get("event") in ("scenario", "cleanup_scenario"):
            out.append((e["event"], str(e.get("scenario")), float(e.get("elapsed_s") or 0),
                        None if e.get("ok") else f"ended {e.get('outcome')} (exit {e.get('rc')})"))
    fig = journal.get("figures") or {}
    sla = journal.get("sla") or {}
    for key, sla_key in (("time_to_detect_s", "detect"), ("time_to_recover_s", "recover"), ("rpo_s", "rpo"),
                         ("restore_s", "restore")):
        if sla_key in sla:
            value = fig.get(key)
            bad = None if value is not None and value <= sla[sla_key] else f"{_fmt(value)} against {sla[sla_key]} s"
            if value is None and key == "rpo_s":  # data loss is measured by restore tests only
                continue
            out.append(("sla", sla_key, float(value or 0), bad))
    return out


def junit(journal: dict[str, Any]) -> str:
    found = cases(journal)
    suite = ET.Element("testsuite", name=f"drill.{journal.get('drill')}", tests=str(len(found)),
                       failures=str(sum(1 for c in found if c[3])), time=f"{journal.get('duration_s', 0):.2f}",
                       timestamp=_utc(journal.get("started")))
    for cls, name, secs, failure in found:
        case = ET.SubElement(suite, "testcase", classname=f"drill.{journal.get('drill')}.{cls}", name=name,
                             time=f"{secs:.2f}")
        if failure:
            ET.SubElement(case, "failure", message=failure[:500]).text = failure
    props = ET.SubElement(suite, "properties")
    for key in ("run_id", "verdict", "inventory", "environment"):
        ET.SubElement(props, "property", name=key, value=str(journal.get(key, "")))
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def markdown(journal: dict[str, Any]) -> str:
    evs = journal.get("events") or []
    fig, sla = journal.get("figures") or {}, journal.get("sla") or {}
    lines = [f"# Drill {journal.get('drill')}: {journal.get('verdict')}", "",
             f"- run: `{journal.get('run_id')}` on `{journal.get('inventory')}` ({journal.get('environment')})",
             f"- started {_utc(journal.get('started'))}, took {journal.get('duration_s')} s",
             f"- {journal.get('description') or ''}".rstrip(), ""]
    injected = [e for e in evs if e.get("event") == "injected"]
    if injected:
        lines += ["## Injected", ""]
        lines += [f"- {_utc(e['injected_at'])} `{e.get('type')}` on {e.get('host')} (lease `{e.get('lease')}`, "
                  f"expires {e.get('expires')})" for e in injected]
        lines.append("")
    detected = [e for e in evs if e.get("event") == "probe" and e.get("phase") == "detect" and e.get("changed_at")]
    if detected:
        lines += ["## Detected", ""]
        for e in detected:
            failing = [f"{r['name']} ({'; '.join(r.get('problems') or [])})" for r in e.get("results") or []
                      if not r.get("ok")]
            lines.append(f"- {_utc(e['changed_at'])} on {e.get('host')}: {', '.join(failing) or 'probes failing'}")
        lines.append("")
    alerts = [e for e in evs if e.get("event") == "alert" and e.get("detected_at")]
    if alerts:
        lines += ["## Detected", ""]
        lines += [f"- {_utc(e['detected_at'])} Alertmanager shows {e.get('alertname')} firing for {e.get('host')} "
                  f"(firing since {e.get('starts_at')})" for e in alerts]
        lines.append("")
    for e in evs:
        if e.get("event") == "scenario" and e.get("by") == "alert":
            lines += ["## What ran", "", f"- the alert path: `mayday serve` ran {e.get('scenario')} (request "
                      f"{e.get('request') or '-'}): {e.get('outcome')}, {e.get('elapsed_s')} s from the alert to "
                      f"its end, incident {e.get('incident') or '-'}" + (f"; {e['msg']}" if e.get("msg") else ""), ""]
        elif e.get("event") == "scenario":
            lines += ["## What ran", "", f"- `{' '.join(e.get('command') or [])}`: {e.get('outcome')} "
                      f"(exit {e.get('rc')}, {e.get('elapsed_s')} s, incident {e.get('incident') or '-'})", ""]
    restores = [e for e in evs if e.get("event") == "restore_test"]
    if restores:
        lines += ["## Restore test", "", "| host | database | backup | tables | restore | data age | scratch dropped "
                  "| problems |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {e.get('host')} | {e.get('engine')} {e.get('database')} | {e.get('backup')} | {e.get('tables')} "
                  f"| {_fmt(e.get('restore_s'))} | {_fmt(e.get('data_age_s'))} | {e.get('scratch_dropped')} "
                  f"| {'; '.join(e.get('problems') or []) or 'none'} |" for e in restores]
        lines.append("")
    notes = [e for e in evs if e.get("event") == "notify"]
    for e in notes:
        lines += ["## Notification channels", ""]
        lines += [f"- {c.get('channel')} ({c.get('type')}): {'delivered' if c.get('ok') else 'FAILED'}, "
                  f"{c.get('detail')}, {c.get('attempts')} attempt(s)" for c in e.get("channels") or []]
        lines += [f"- `mayday notify test`: exit {e.get('rc')} {e.get('msg') or ''}".rstrip()]
        lines += ["", "## Contact list", ""]
        lines += [f"- {c.get('name')} ({c.get('role')}): {', '.join(c.get('channels') or []) or 'no channel'}"
                  for c in e.get("contacts") or []] or ["- none in the inventory (mayday_contacts)"]
        lines += [f"- PROBLEM: {p}" for p in e.get("contact_problems") or []]
        lines.append("")
    lines += ["## Against the SLA", "", "| measure | measured | SLA | |", "| --- | --- | --- | --- |"]
    for key, sla_key, label in (("time_to_detect_s", "detect", "time to detect"),
                                ("time_to_recover_s", "recover", "time to recover"),
                                ("rpo_s", "rpo", "data age (RPO)"), ("restore_s", "restore", "restore time")):
        if sla_key in sla or fig.get(key) is not None:
            value, limit = fig.get(key), sla.get(sla_key)
            ok = value is not None and (limit is None or value <= limit)
            verdict = "ok" if ok else ("not measured" if value is None and key == "rpo_s" else "MISSED")
            lines.append(f"| {label} | {_fmt(value)} | {_fmt(limit)} | {verdict} |")
    if fig.get("harness_s") is not None:
        lines += ["", f"Harness overhead (steady-state checks, injection, cleanup, reports): {fig['harness_s']} s"]
    lines += ["", "## Cleaned up", ""]
    cleaned = [f for e in evs if e.get("event") == "cleanup" for f in (e.get("faults") or [])]
    lines += [f"- {f.get('type')} `{f.get('id')}` on {f.get('host')}: {f.get('outcome')}" for f in cleaned]
    lines += [f"- cleanup scenario: {e.get('outcome')}" for e in evs if e.get("event") == "cleanup_scenario"]
    if not cleaned:
        lines.append("- nothing left to remove")
    lines += ["", f"## Verdict: {journal.get('verdict')}", ""]
    lines += [f"- {r}" for r in journal.get("reasons") or []] or ["- every check within its SLA"]
    return "\n".join(lines) + "\n"


def write_all(directory: Path, journal: dict[str, Any]) -> dict[str, Path]:
    paths = {"junit": directory / "junit.xml", "markdown": directory / "report.md"}
    paths["junit"].write_text(junit(journal))
    paths["markdown"].write_text(markdown(journal))
    return paths


def sparkline(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return ""
    low, high = min(known), max(known)
    span = (high - low) or 1.0
    return "".join(" " if v is None else SPARK[min(len(SPARK) - 1, int((v - low) / span * (len(SPARK) - 1)))]
                   for v in values)


def trend(journals: list[dict[str, Any]], last: int = 10) -> list[dict[str, Any]]:
    """Per drill: the last runs' verdicts and figures, oldest first, with a sparkline of recovery."""
    by_drill: dict[str, list[dict[str, Any]]] = {}
    for j in journals:
        by_drill.setdefault(str(j.get("drill")), []).append(j)
    rows = []
    for drill, runs in sorted(by_drill.items()):
        runs = runs[-last:]
        ttr = [(r.get("figures") or {}).get("time_to_recover_s") or (r.get("figures") or {}).get("restore_s")
               for r in runs]
        rows.append({"drill": drill, "runs": len(runs), "passed": sum(r.get("verdict") == "PASSED" for r in runs),
                     "last": runs[-1].get("verdict"), "last_at": _utc(runs[-1].get("started")),
                     "ttd_s": (runs[-1].get("figures") or {}).get("time_to_detect_s"), "ttr_s": ttr[-1],
                     "recover_trend": sparkline(ttr), "verdicts": "".join("+" if r.get("verdict") == "PASSED" else "x"
                                                                          for r in runs)})
    return rows
