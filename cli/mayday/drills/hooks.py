"""Where drills meet the alert path (Prometheus -> Alertmanager -> `mayday serve`, issue 10) and the
notification channels.

Without an Alertmanager configured (mayday_alertmanager_url or MAYDAY_ALERTMANAGER_URL) no alert is
firing as far as the drill knows, and a drill whose recovery is `by: alert` is refused before its
fault goes in. With one, the drill times detection as the moment Alertmanager shows the drill's alert
firing for a fault host, and the recovery as the run `mayday serve` started for it (read from serve's
audit log in this state directory) plus the steady state back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from mayday import audit
from mayday.paths import PACKAGE_DIR

POLL_S = 0.5
# After the alert fired, how long serve may take to start its run (its policy decides within a second).
RUN_START_S = 30.0
STARTS = ("run-started", "run-not-started")


def alertmanager_url(task_vars: dict[str, Any]) -> str:
    return str(os.environ.get("MAYDAY_ALERTMANAGER_URL") or task_vars.get("mayday_alertmanager_url") or "").strip()


def _get_json(url: str, timeout: float = 3) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def active_alerts(url: str) -> list[dict[str, Any]]:
    """Alertmanager's active, unsilenced alerts; OSError or ValueError when it does not answer."""
    found = _get_json(url.rstrip("/") + "/api/v2/alerts?active=true&silenced=false&inhibited=false")
    if not isinstance(found, list):
        raise ValueError("Alertmanager's /api/v2/alerts did not answer a list")
    return [a for a in found if isinstance(a, dict)]


def _wanted(names: list[list[str]] | list[str]) -> set[str]:
    return {n for group in names for n in (group if isinstance(group, list) else [group])}


def matching(alerts: list[dict[str, Any]], names: set[str], hosts: list[str] | None) -> list[dict[str, Any]]:
    """The alerts named (or any, for '*') that concern the hosts: their `host` label is one of them,
    or they name no host (then they concern every host). hosts None: every alert."""
    found = []
    for alert in alerts:
        labels = alert.get("labels") or {}
        if "*" not in names and labels.get("alertname") not in names:
            continue
        if hosts is not None and labels.get("host") and labels["host"] not in hosts:
            continue
        found.append(alert)
    return found


def firing_alerts(names: list[list[str]] | list[str], task_vars: dict[str, Any],
                  hosts: list[str] | None = None) -> list[str]:
    """The alerts among `names` ('*' for any) firing in Alertmanager for the hosts, as 'name (host)';
    [] when no Alertmanager is configured; a problem line when it does not answer (so the drill refuses)."""
    wanted = _wanted(names)
    url = alertmanager_url(task_vars)
    if not wanted or not url:
        return []
    try:
        alerts = active_alerts(url)
    except (OSError, ValueError) as exc:
        return [f"(Alertmanager at {url} did not answer: {exc})"]
    shown = {f"{a['labels'].get('alertname', '?')}" + (f" ({a['labels']['host']})" if a["labels"].get("host") else "")
             for a in matching(alerts, wanted, hosts)}
    return sorted(shown)


def receiver_urls(config_yaml: str) -> list[str]:
    """The webhook URLs Alertmanager's configuration sends to (its /api/v2/status config.original)."""
    try:
        doc = yaml.safe_load(config_yaml) or {}
    except yaml.YAMLError:
        return []
    urls = []
    for receiver in doc.get("receivers") or [] if isinstance(doc, dict) else []:
        for hook in (receiver or {}).get("webhook_configs") or []:
            url = str((hook or {}).get("url") or "")
            if url.startswith(("http://", "https://")) and url not in urls:
                urls.append(url)
    return urls


def health_url(webhook_url: str) -> str:
    """`mayday serve` answers GET /healthz beside its /alertmanager webhook (cli/mayday/receiver.py)."""
    parts = urlsplit(webhook_url)
    return urlunsplit((parts.scheme, parts.netloc, "/healthz", "", ""))


def serve_problem(task_vars: dict[str, Any]) -> str:
    """Why the alert path cannot start this drill's recovery ('' when it can): no Alertmanager, or the
    receiver Alertmanager sends to (or mayday_serve_url / MAYDAY_SERVE_URL) not answering /healthz."""
    url = alertmanager_url(task_vars)
    if not url:
        return ("recovery by: alert needs Alertmanager: set mayday_alertmanager_url in the inventory "
                "(or MAYDAY_ALERTMANAGER_URL)")
    explicit = str(os.environ.get("MAYDAY_SERVE_URL") or task_vars.get("mayday_serve_url") or "")
    if explicit:
        targets = [explicit]
    else:
        try:
            status = _get_json(url.rstrip("/") + "/api/v2/status")
        except (OSError, ValueError) as exc:
            return f"Alertmanager at {url} did not answer: {exc}"
        targets = receiver_urls(str(((status or {}).get("config") or {}).get("original") or ""))
        if not targets:
            return f"Alertmanager at {url} sends to no webhook: nothing would start the recovery"
    for target in targets:
        try:
            doc = _get_json(health_url(target))
        except urllib.error.HTTPError as exc:
            return f"the alert receiver {health_url(target)} answered HTTP {exc.code}: is it `mayday serve`?"
        except (OSError, ValueError) as exc:
            return (f"the alert receiver {health_url(target)} does not answer ({getattr(exc, 'reason', exc)}): "
                    "start `mayday serve -i INVENTORY` for this inventory first")
        if not (isinstance(doc, dict) and doc.get("status") == "ok"):
            return f"the alert receiver {health_url(target)} is not healthy: {doc!r:.200}"
    return ""


def _epoch(stamp: Any) -> float:
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def serve_runs(names: set[str], since: float, entries: list[dict[str, Any]]) -> tuple[dict[str, Any] | None,
                                                                                      dict[str, Any] | None]:
    """From serve's audit log: the first run serve started (or refused to start) for one of the alerts
    since `since`, and its run-finished entry (None while it runs)."""
    started = next((e for e in entries if e.get("event") in STARTS and _epoch(e.get("at")) >= since
                    and ("*" in names or e.get("alertname") in names or e.get("alertname") is None)), None)
    if started is None or started.get("event") != "run-started":
        return started, None
    finished = next((e for e in entries if e.get("event") in ("run-finished", "run-lost")
                     and e.get("request") == started.get("request")), None)
    return started, finished


def await_alert_recovery(call: dict[str, Any], task_vars: dict[str, Any], hosts: list[str], injected_at: float,
                         detect_window_s: float, recover_window_s: float,
                         stopped: Callable[[], str], record: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """The alert path recovers the fault: wait until Alertmanager shows the drill's alert firing for one
    of the fault hosts (recorded as the detection), then until the run `mayday serve` started for it has
    finished. Returns the scenario outcome; stops early (outcome STOPPED) when `stopped()` says why."""
    names = set(call.get("alerts") or [])
    url = alertmanager_url(task_vars)
    base = {"scenario": call.get("scenario"), "by": "alert", "alerts": sorted(names)}
    if not url:
        return {**base, "outcome": "NOT-WIRED", "ok": False, "rc": 2, "msg": serve_problem(task_vars)}
    deadline = injected_at + detect_window_s
    seen: dict[str, Any] | None = None
    last_error = ""
    while seen is None:
        why = stopped()
        if why:
            return {**base, "outcome": "STOPPED", "ok": False, "rc": 1, "msg": why}
        try:
            found = matching(active_alerts(url), names, hosts)
            seen = next((a for a in found if (a.get("labels") or {}).get("host") in hosts), None)
        except (OSError, ValueError) as exc:
            last_error = f"; Alertmanager did not answer: {exc}"
        if seen is None:
            if time.time() >= deadline:
                return {**base, "outcome": "NOT-DETECTED", "ok": False, "rc": 1,
                        "msg": f"{', '.join(sorted(names))} not firing for {', '.join(hosts)} within "
                               f"{detect_window_s:.0f} s of the injection{last_error}"}
            time.sleep(POLL_S)
    detected_at = time.time()
    labels = seen.get("labels") or {}
    record({"event": "alert", "phase": "detect", "alertname": labels.get("alertname"), "host": labels.get("host"),
            "detected_at": detected_at, "starts_at": seen.get("startsAt"), "fingerprint": seen.get("fingerprint")})
    run_deadline = detected_at + RUN_START_S
    finish_deadline = detected_at + recover_window_s
    while True:
        why = stopped()
        if why:
            return {**base, "outcome": "STOPPED", "ok": False, "rc": 1, "msg": why}
        started, finished = serve_runs(names, injected_at, audit.read())
        now = time.time()
        if started is not None and started.get("event") != "run-started":
            return {**base, "outcome": "NOT-STARTED", "ok": False, "rc": 1,
                    "msg": f"mayday serve did not start the run: {started.get('reason')}"}
        if finished is not None:
            outcome = str(finished.get("outcome") or ("LOST" if finished.get("event") == "run-lost" else "ERROR"))
            return {**base, "scenario": finished.get("scenario") or base["scenario"], "outcome": outcome,
                    "ok": finished.get("exit_code") == 0, "rc": finished.get("exit_code"),
                    "request": started.get("request") if started else None, "incident": finished.get("incident"),
                    "started_at": detected_at, "elapsed_s": round(now - detected_at, 2),
                    "run_s": finished.get("duration_s")}
        if started is None and now >= run_deadline:
            decided = [e for e in audit.read() if e.get("event") == "alert" and e.get("alertname") in names
                       and _epoch(e.get("at")) >= injected_at]
            why = (f"its policy decided {decided[-1].get('decision')}: {decided[-1].get('reason')}" if decided else
                   f"no alert reached it (audit log {audit.audit_path()}; a serve with another state directory?)")
            return {**base, "outcome": "NOT-STARTED", "ok": False, "rc": 1,
                    "msg": f"the alert fired but mayday serve started no run in {RUN_START_S:.0f} s: {why}"}
        if now >= finish_deadline:
            return {**base, "outcome": "TIMEOUT", "ok": False, "rc": -1,
                    "msg": f"the run {started and started.get('request')} did not finish within the SLA"}
        time.sleep(POLL_S)


def contact_problems(contacts: Any, channels: Any, delivered: dict[str, bool] | None = None) -> list[str]:
    """Seed 001's contact-list check: every contact (name, role, channels) can be reached on at least one
    channel named in mayday_notify_channels, and, when the test messages went out (`delivered`: channel
    name -> delivered), on one that delivered. One problem per contact, naming it; [] when all are fine."""
    if not isinstance(contacts, list) or not contacts:
        return ["no contact list in the inventory: set mayday_contacts (name, role, channels)"]
    known = [str(c.get("name") or c.get("type")) for c in channels or [] if isinstance(c, dict)]
    problems = []
    for index, contact in enumerate(contacts):
        if not isinstance(contact, dict) or not str(contact.get("name") or "").strip():
            problems.append(f"mayday_contacts[{index}]: needs a name, a role and channels")
            continue
        who = f"contact {contact['name']!r}"
        names = contact.get("channels")
        if not str(contact.get("role") or "").strip():
            problems.append(f"{who}: no role")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            problems.append(f"{who}: no channels; valid: a list of mayday_notify_channels names ({', '.join(known)})")
            continue
        unknown = [n for n in names if n not in known]
        if unknown:
            problems.append(f"{who}: channel(s) {', '.join(unknown)} not in mayday_notify_channels; valid: "
                            f"{', '.join(known) or 'none defined'}")
        reachable = [n for n in names if n in known and (delivered is None or delivered.get(n) is True)]
        if not reachable and len(unknown) < len(names):
            problems.append(f"{who}: unreachable, no channel of theirs delivered the test message "
                            f"({', '.join(n for n in names if n in known)})")
    return problems


def notify_test(inventory: str, task_vars: dict[str, Any], fault: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sends `mayday notify test` to every channel of the inventory and reports what each answered.
    With a fail_channel fault: the failover drill (mayday.drills.channel_fault) instead."""
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_DIR.parent))
    argv = [sys.executable, "-m", "mayday.cli", "notify", "test", *(["-i", inventory] if inventory else []), "--json"]
    if (fault or {}).get("type") == "fail_channel":
        fallback = task_vars.get("mayday_notify_fallback")
        argv = [sys.executable, "-m", "mayday.drills.channel_fault", *(["-i", inventory] if inventory else []),
                *[a for name in (fault or {}).get("params", {}).get("channel") or [] for a in ("--fail", name)],
                *(["--fallback", json.dumps(fallback)] if fallback else []), "--json"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, check=False,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"ok": False, "rc": -1, "channels": [], "msg": "mayday notify test did not finish in 120 s"}
    try:
        doc = json.loads(out.stdout)
    except ValueError:
        doc = []
    channels = [c for c in (doc if isinstance(doc, list) else doc.get("channels") or []) if isinstance(c, dict)]
    shown = [{k: c.get(k) for k in ("channel", "type", "ok", "detail", "attempts", "elapsed_s", "fallback",
                                    "fallback_ok")} for c in channels]
    if isinstance(doc, dict) and "failing" in doc:  # the failover: its own verdict, the failed channel expected
        return {"ok": out.returncode == 0 and doc.get("ok") is True, "rc": out.returncode, "channels": shown,
                **{k: doc.get(k) for k in ("failing", "fallback", "problems", "token")},
                "msg": doc.get("msg") or (out.stderr.strip().splitlines() or [""])[-1][:300]}
    ok = out.returncode == 0 and bool(shown) and all(c["ok"] for c in shown)
    return {"ok": ok, "rc": out.returncode, "channels": shown,
            "msg": "" if ok else (out.stderr.strip().splitlines() or ["no channel answered"])[-1][:300]}
