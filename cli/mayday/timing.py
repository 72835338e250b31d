"""Time to detect, respond and recover for a run started by an alert.

A run started by `mayday serve` (or by hand: `ansible-playbook ... -e @alert.json`) carries
`mayday_alert`: when the alert started firing (Alertmanager's startsAt), when mayday received it and
when mayday started the run. The finish stage adds when health came back and the intervals.
"""

from __future__ import annotations

import calendar
import re
import time
from typing import Any

# RFC 3339 as Alertmanager writes it: nanoseconds and any offset ("2026-01-02T03:04:05.123456789+01:00").
RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(\.\d+)?([Zz]|[+-]\d\d:\d\d)$")
# What mayday_alert may hold; the first two name the alert, the rest are instants.
ALERT_TEXT_KEYS = ("alertname", "fingerprint", "rule", "request", "severity", "scenario")
ALERT_TIME_KEYS = ("starts_at", "received_at", "run_requested_at")
TEXT_MAX = 256


def parse_instant(value: Any) -> float:
    """RFC 3339 -> seconds since the epoch; ValueError naming the valid form otherwise."""
    found = RFC3339.match(str(value).strip()) if isinstance(value, str) else None
    if not found:
        raise ValueError(f"{value!r} is not an RFC 3339 time; valid: such as 2026-01-02T03:04:05.123Z")
    day, clock, fraction, zone = found.groups()
    seconds = calendar.timegm(time.strptime(f"{day}T{clock}", "%Y-%m-%dT%H:%M:%S")) + float(f"0{fraction or ''}")
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds


def format_instant(seconds: float) -> str:
    """The records' own form: UTC with milliseconds (2026-01-02T03:04:05.123Z)."""
    millis = round(seconds * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000)) + f".{millis % 1000:03d}Z"


def check_alert(alert: Any) -> tuple[dict[str, Any], list[str]]:
    """mayday_alert checked and normalised: (clean, problems). Accepts Alertmanager's own names too
    (startsAt), so one alert of a webhook payload can be passed as it is."""
    if alert in (None, "", {}):
        return {}, []
    if not isinstance(alert, dict):
        return {}, ["mayday_alert must be a mapping; valid keys: " + ", ".join(ALERT_TEXT_KEYS + ALERT_TIME_KEYS)]
    given = dict(alert)
    if "startsAt" in given and "starts_at" not in given:
        given["starts_at"] = given.pop("startsAt")
    labels = given.get("labels")
    if isinstance(labels, dict) and "alertname" not in given and labels.get("alertname"):
        given["alertname"] = labels["alertname"]
    clean: dict[str, Any] = {}
    problems: list[str] = []
    for key in ALERT_TEXT_KEYS:
        if given.get(key) not in (None, ""):
            text = str(given[key])
            if len(text) > TEXT_MAX or "\n" in text:
                problems.append(f"mayday_alert.{key} is longer than {TEXT_MAX} characters or spans lines")
            else:
                clean[key] = text
    for key in ALERT_TIME_KEYS:
        if given.get(key) in (None, ""):
            continue
        try:
            clean[key] = format_instant(parse_instant(given[key]))
        except ValueError as exc:
            problems.append(f"mayday_alert.{key}: {exc}")
    if not any(k in clean for k in ALERT_TIME_KEYS) and not problems:
        problems.append("mayday_alert has no time; valid: at least starts_at (the alert's startsAt)")
    return clean, problems


def _health_back(events: list[dict[str, Any]], downtime: dict[str, Any], outcome: str) -> str | None:
    """When every host answered healthy again: the downtime's end, else (no failed probe seen, such
    as a NOOP) the last good probe of a run that ended well."""
    if downtime.get("recovered_at"):
        return str(downtime["recovered_at"])
    if outcome not in ("RECOVERED", "NOOP", "DONE"):
        return None
    good = [h["checked_at"] for e in events
            for h in [*(e.get("health") or []), *((e.get("restored") or {}).get("health") or [])]
            if h.get("checked_at") and h.get("ok")]
    return max(good) if good else None


def _between(later: str | None, earlier: str | None) -> float | None:
    if not later or not earlier:
        return None
    return round(parse_instant(later) - parse_instant(earlier), 3)


def alert_timing(alert: dict[str, Any], opened: str, events: list[dict[str, Any]], downtime: dict[str, Any],
                 outcome: str) -> dict[str, Any]:
    """Instants and intervals for the report. The run starts when mayday serve launched it, or, for a
    run started by hand with the alert, when the incident opened."""
    run_started = alert.get("run_requested_at") or opened
    health_back = _health_back(events, downtime, outcome)
    return {
        "alert_firing_at": alert.get("starts_at"),
        "received_at": alert.get("received_at"),
        "run_started_at": run_started,
        "incident_opened_at": opened,
        "health_back_at": health_back,
        "time_to_detect_s": _between(alert.get("received_at"), alert.get("starts_at")),
        "time_to_respond_s": _between(run_started, alert.get("received_at")),
        "time_to_open_s": _between(opened, run_started),
        "time_to_recover_s": _between(health_back, run_started),
        "firing_to_recovered_s": _between(health_back, alert.get("starts_at")),
    }


INTERVALS = (
    ("time_to_detect_s", "Time to detect", "alert firing to received by mayday"),
    ("time_to_respond_s", "Time to respond", "received to run started"),
    ("time_to_open_s", "Run start to incident opened", "ansible-playbook start-up"),
    ("time_to_recover_s", "Time to recover", "run started to health back"),
    ("firing_to_recovered_s", "Firing to recovered", "alert firing to health back"),
)
INSTANTS = (
    ("alert_firing_at", "Alert firing (startsAt)"),
    ("received_at", "Received by mayday"),
    ("run_started_at", "Run started"),
    ("incident_opened_at", "Incident opened"),
    ("health_back_at", "Health back"),
)


def seconds_text(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f} s" if abs(value) < 1 else f"{value:.1f} s"  # sub-second response times matter
