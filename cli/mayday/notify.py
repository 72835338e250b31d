"""Notifications from the controller: routing by severity, PagerDuty pages that span runs, bounded
retries, and a fallback. A channel that fails is reported, never raised: a notification must not
fail or hold up a rollback. Secrets (webhook URLs, tokens, routing keys, passwords) are never
echoed. Channel types and payloads: mayday.notify_channels; pages: mayday.notify_pages.

Routing (seed 003), per channel type, unless a channel sets `severities: [P0, ...]`:

    P0  every channel; PagerDuty pages at once when the run escalates, and when a run is still
        going after `page_running_after` (default 5 minutes)
    P1  Slack, e-mail, webhook, file at once; PagerDuty after `page_after` (default 15 minutes)
        unless a later run resolved it first
    P2  Slack, webhook, file (standard on-call: the team channel, no page, no mail)
    P3  webhook, file (business hours: the record and any ticketing webhook)

The file channel is the audit trail and a webhook may be a ticketing system: both get every
severity by default.
"""

from __future__ import annotations

import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mayday import notify_channels as ch
from mayday import notify_pages as pages
from mayday.notify_channels import SEVERITIES, ChannelError, Notice, severity_label

DEFAULT_ROUTES: dict[str, tuple[str, ...]] = {
    "file": SEVERITIES, "webhook": SEVERITIES, "slack": ("P0", "P1", "P2"), "email": ("P0", "P1"),
    "pagerduty": ("P0", "P1")}
DEFAULT_PAGE_AFTER = {"P1": 900.0}  # seed 003: P1 pages after 15 minutes
DEFAULT_PAGE_RUNNING_AFTER = {"P0": 300.0}  # seed 003: a P0 not recovered in 5 minutes pages
DEFAULT_FALLBACK = {"type": "file", "name": "fallback", "path": "notifications-undelivered.jsonl"}


def channel_name(channel: dict[str, Any], index: int) -> str:
    return str(channel.get("name") or f"{channel.get('type')}-{index}")


def _per_severity(value: Any, default: dict[str, float]) -> dict[str, float]:
    chosen = dict(default)
    if isinstance(value, dict):
        chosen = {severity_label(k): float(v) for k, v in value.items() if v is not None}
    return chosen


def page_after(channel: dict[str, Any]) -> dict[str, float]:
    return _per_severity(channel.get("page_after"), DEFAULT_PAGE_AFTER)


def page_running_after(channel: dict[str, Any]) -> dict[str, float]:
    return _per_severity(channel.get("page_running_after"), DEFAULT_PAGE_RUNNING_AFTER)


def routed(channel: dict[str, Any], severity: str) -> bool:
    chosen = channel.get("severities")
    if isinstance(chosen, list | tuple):
        return severity in {severity_label(s) for s in chosen}
    return severity in DEFAULT_ROUTES.get(str(channel.get("type")), SEVERITIES)


def plan(channel: dict[str, Any], notice: Notice) -> tuple[str, str]:
    """What this channel does with this notice: send, page, resolve, test, or skip (with why)."""
    kind, severity = channel.get("type"), notice.severity
    if notice.event == "test":
        return "test", ""
    if kind == "pagerduty":
        if notice.event == "resolved":
            return "resolve", ""  # whatever its severity: a page that was opened must be closed
        if notice.event != "escalation":
            return "skip", f"PagerDuty pages escalations only, not {notice.event}"
    if kind == "email" and notice.event == "progress":
        return "skip", "no progress by e-mail"
    if not routed(channel, severity):
        return "skip", f"{severity} is not routed to this channel"
    return ("page", "") if kind == "pagerduty" else ("send", "")


# -- one channel, one notice -------------------------------------------------------------------
def _deliver(channel: dict[str, Any], notice: Notice, timeout: float) -> str:
    """Send a notice on a non-paging channel once (with_retries repeats it, `timeout` cut to its budget)."""
    kind = channel["type"]
    if kind == "file":
        return ch.append_file(channel, notice.payload())
    if kind == "webhook":
        status, _ = ch.post_json(ch.secret(channel, "url"), notice.payload(), timeout)
        return f"HTTP {status}"
    if kind == "slack":
        body = ch.slack_message(notice)
        if ch.secret(channel, "url"):
            status, _ = ch.post_json(ch.secret(channel, "url"), body, timeout)
            return f"HTTP {status}"
        answer = ch.slack_api(channel, "chat.postMessage", {"channel": channel["channel"], **body}, timeout)
        return f"posted (ts {answer.get('ts')})"
    if kind == "email":
        return ch.send_email(channel, ch.email_message(channel, notice), timeout)
    raise ChannelError(f"unknown channel type; valid: {', '.join(ch.CHANNEL_TYPES)}", retryable=False)


def _pagerduty(channel: dict[str, Any], action: str, dedup_key: str, notice: Notice | None) -> dict[str, Any]:
    url = str(channel.get("url") or ch.PAGERDUTY_URL)
    body = ch.pagerduty_event(action, ch.secret(channel, "routing_key"), dedup_key, notice)

    def attempt(timeout: float) -> str:
        status, _ = ch.post_json(url, body, timeout)
        return f"HTTP {status}: {action}"

    return ch.with_retries(channel, attempt)


def _page(name: str, channel: dict[str, Any], notice: Notice, delay: float | None = None) -> dict[str, Any]:
    group = pages.group_of(notice.fields, notice.incident)
    delay = page_after(channel).get(notice.severity, 0.0) if delay is None else delay
    details = {"text": notice.text, "event": notice.event, "incident": notice.incident, "fields": notice.fields}
    entry = pages.escalate(name, group, notice.incident, delay, details)
    if entry["status"] == pages.DEFERRED and entry["due"] > time.time():
        when = time.strftime("%H:%M:%SZ", time.gmtime(entry["due"]))
        return {"ok": True, "action": "deferred", "dedup_key": entry["dedup_key"], "attempts": 0,
                "detail": f"page deferred until {when} unless resolved first"}
    done = _pagerduty(channel, "trigger", entry["dedup_key"], notice)
    if done["ok"]:
        pages.mark(name, group, pages.OPEN)
    return {**done, "action": "trigger", "dedup_key": entry["dedup_key"]}


def page_now(name: str, channel: dict[str, Any], notice: Notice) -> dict[str, Any]:
    """Page at once (a P0 run still going after its time): the group's page, opened or triggered again."""
    return {"channel": name, "type": channel.get("type"), **_page(name, channel, notice, delay=0.0)}


def _resolve(name: str, channel: dict[str, Any], notice: Notice) -> dict[str, Any]:
    group = pages.group_of(notice.fields, notice.incident)
    entry = pages.get(name, group)
    if entry is None:
        return {"ok": True, "skipped": True, "detail": "no open page to resolve", "attempts": 0}
    if entry["status"] == pages.DEFERRED:
        pages.close(name, group, "cancelled")
        return {"ok": True, "action": "cancelled", "dedup_key": entry["dedup_key"], "attempts": 0,
                "detail": "deferred page cancelled: resolved before it was due"}
    done = _pagerduty(channel, "resolve", entry["dedup_key"], None)
    if done["ok"]:
        pages.close(name, group, "resolved")
    else:
        pages.mark(name, group, pages.RESOLVING)  # the next flush sends it again
    return {**done, "action": "resolve", "dedup_key": entry["dedup_key"]}


def _test(channel: dict[str, Any], notice: Notice) -> dict[str, Any]:
    if channel["type"] != "pagerduty":
        return ch.with_retries(channel, lambda timeout: _deliver(channel, notice, timeout))
    # A test page is opened and at once resolved under its own key, so it never stays open.
    key = f"mayday-test-{notice.sent_at}"
    opened = _pagerduty(channel, "trigger", key, notice)
    if not opened["ok"]:
        return {**opened, "dedup_key": key}
    closed = _pagerduty(channel, "resolve", key, None)
    return {**closed, "detail": f"{opened['detail']}, {closed['detail']}",
            "attempts": opened["attempts"] + closed["attempts"], "dedup_key": key}


def _one(name: str, channel: dict[str, Any], notice: Notice) -> dict[str, Any]:
    entry: dict[str, Any] = {"channel": name, "type": channel.get("type")}
    if channel.get("type") not in ch.CHANNEL_TYPES:
        return {**entry, "ok": False, "attempts": 0,
                "detail": f"unknown channel type; valid: {', '.join(ch.CHANNEL_TYPES)}"}
    missing = ch.missing_settings(channel)
    if missing:
        return {**entry, "ok": False, "attempts": 0, "detail": f"missing setting: {', '.join(missing)}"}
    action, why = plan(channel, notice)
    try:
        if action == "skip":
            return {**entry, "ok": True, "skipped": True, "attempts": 0, "detail": f"not sent: {why}"}
        if action == "page":
            return {**entry, **_page(name, channel, notice)}
        if action == "resolve":
            return {**entry, **_resolve(name, channel, notice)}
        if action == "test":
            return {**entry, **_test(channel, notice)}
        return {**entry, **ch.with_retries(channel, lambda timeout: _deliver(channel, notice, timeout))}
    except Exception as exc:  # the state file, a bad setting: reported, never raised
        return {**entry, "ok": False, "attempts": 0, "detail": ch.redact(type(exc).__name__, ch.secrets_of(channel))}


def _run_all(jobs: list[tuple[str, dict[str, Any], Notice]]) -> list[dict[str, Any]]:
    """Channels in parallel: a dead one costs its own retry budget, not everyone's."""
    if len(jobs) <= 1:
        return [_one(*job) for job in jobs]
    with ThreadPoolExecutor(max_workers=min(8, len(jobs)), thread_name_prefix="mayday-notify") as pool:
        return list(pool.map(lambda job: _one(*job), jobs))


# -- the public calls --------------------------------------------------------------------------
def _named(channels: list[dict[str, Any]] | None) -> list[tuple[str, dict[str, Any]]]:
    return [(channel_name(c, i), c) for i, c in enumerate(channels or []) if isinstance(c, dict)]


def _fallback_channel(fallback: Any, named: list[tuple[str, dict[str, Any]]],
                      failed: set[str]) -> tuple[str, dict[str, Any]]:
    if isinstance(fallback, str):
        found = dict(named).get(fallback)
        if found is not None and fallback not in failed:
            return fallback, found
    elif isinstance(fallback, dict) and fallback.get("type") in ch.CHANNEL_TYPES:
        name = str(fallback.get("name") or "fallback")
        if name not in failed:
            return name, fallback
    return str(DEFAULT_FALLBACK["name"]), dict(DEFAULT_FALLBACK)


def send(channels: list[dict[str, Any]], message: str, event: str, incident: str | None,
         fields: dict[str, Any] | None = None, dry_run: bool = False, *,
         fallback: Any = None) -> list[dict[str, Any]]:
    """Send to every channel, routed by severity; returns one {channel, type, ok, detail, ...} each.

    `fields` carries the context (scenario, severity, title, hosts, inventory, why, outcome,
    summary, undo, report: see Notice). Channels that still fail after their retries are written
    to `fallback` (a channel, or the name of one in `channels`; default: a file in the state
    directory) and marked {fallback: name}. Pages that came due meanwhile are sent too.
    """
    notice = Notice(message, event or "info", incident, dict(fields or {}))
    named = _named(channels)
    if dry_run:
        return [{"channel": n, "type": c.get("type"), "ok": True, "detail": "check mode: not sent"}
                for n, c in named]
    delivered = flush(channels)  # pages that came due since the last call, before this notice's own
    delivered += _run_all([(n, c, notice) for n, c in named])
    failed = [d for d in delivered if not d["ok"]]
    if failed:
        name, channel = _fallback_channel(fallback, named, {d["channel"] for d in failed})
        undelivered = [d["channel"] for d in failed]
        doc = Notice(message, notice.event, incident, {**notice.fields, "undelivered_on": undelivered})
        if channel.get("type") == "pagerduty":  # a page is no place for a fallback
            name, channel = str(DEFAULT_FALLBACK["name"]), dict(DEFAULT_FALLBACK)
        rescue = ch.with_retries(channel, lambda timeout: _deliver(channel, doc, timeout))
        for entry in failed:
            entry.update(fallback=name, fallback_ok=rescue["ok"])
    return delivered


def failed_channels(delivered: list[dict[str, Any]]) -> list[str]:
    """The `notify_failed` of an incident record: channels that did not deliver."""
    return sorted({d["channel"] for d in delivered if not d.get("ok")})


def flush(channels: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Send the pages of these channels that are due (deferred ones, resolves still owed)."""
    named = dict(_named(channels))
    out = []
    for entry in pages.due(list(named)):
        channel = named[entry["channel"]]
        base = {"channel": entry["channel"], "type": channel.get("type"), "dedup_key": entry["dedup_key"],
                "incident": entry.get("incident")}
        if entry["status"] == pages.RESOLVING:
            done = _pagerduty(channel, "resolve", entry["dedup_key"], None)
            if done["ok"]:
                pages.close(entry["channel"], entry["group"], "resolved")
            out.append({**base, **done, "action": "resolve (owed)"})
            continue
        details = entry.get("details") or {}
        notice = Notice(str(details.get("text") or ""), "escalation", details.get("incident"),
                        dict(details.get("fields") or {}))
        done = _pagerduty(channel, "trigger", entry["dedup_key"], notice)
        if done["ok"]:
            pages.mark(entry["channel"], entry["group"], pages.OPEN)
        out.append({**base, **done, "action": "deferred trigger"})
    return out


def test(channels: list[dict[str, Any]], inventory: str = "") -> list[dict[str, Any]]:
    """A test message on every channel given, whatever its routing (PagerDuty: opened and resolved)."""
    notice = Notice("mayday notification test: this channel works; nothing is wrong.", "test", None,
                    {"title": "notification test", "severity": "P3", "inventory": inventory,
                     "why": "mayday notify test", "outcome": "test"})
    return _run_all([(n, c, notice) for n, c in _named(channels)])


# -- what a scenario's outcome says ------------------------------------------------------------
def undo_command(scenario: str, params: dict[str, Any], outcome: str, extra: dict[str, Any],
                 inventory: str = "", default_inventory: str = "") -> str:
    """The command that puts back what this run changed, when there is one."""
    if outcome not in ("RECOVERED", "DONE"):
        return ""
    where = f" -i {shlex.quote(inventory)}" if inventory and inventory != default_inventory else ""
    if scenario == "level1":
        before = {str(r) for r in (extra.get("releases") or {}).values() if r}
        # the release rolled back from is marked failed now, hence --force
        return f"mayday level1 --release {before.pop()} --force{where}" if len(before) == 1 else ""
    if scenario == "read-only" or (scenario == "corruption" and not params.get("restore")):
        return f"mayday db read-write{where}"
    if scenario in ("lockdown", "lockdown-confirm"):
        return f"mayday lockdown lift{where}"
    if scenario == "security-account" and not params.get("restore") and params.get("user"):
        return f"mayday security account {shlex.quote(str(params['user']))} --restore{where}"
    return ""


def incident_fields(meta: dict[str, Any], outcome: str, summary: str, *, params: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None, why: str = "", environment: str = "",
                    report: str = "") -> dict[str, Any]:
    """The context a notice carries, from the incident record (incident.json) and the run's outcome.
    A run started by an alert (`alert` in the record) is routed by the alert's severity and says
    which alert."""
    undo = undo_command(str(meta.get("scenario") or ""), params or {}, outcome, extra or {},
                        str(meta.get("inventory") or ""), default_inventory())
    alert: dict[str, Any] = meta["alert"] if isinstance(meta.get("alert"), dict) else {}
    severity = meta.get("severity")
    if str(alert.get("severity") or "").upper() in SEVERITIES:
        severity = alert["severity"]
    if not why and alert.get("alertname"):
        why = f"alert {alert['alertname']}" + (f" firing since {alert['starts_at']}" if alert.get("starts_at") else "")
    return {"scenario": meta.get("scenario"), "severity": severity_label(severity),
            "title": meta.get("title"), "hosts": list(meta.get("hosts") or []),
            "inventory": meta.get("inventory"), "environment": environment or None,
            "why": why or f"run by {meta.get('operator') or 'an operator'}"
                          + (f" (run {meta['run_id']})" if meta.get("run_id") else ""),
            "outcome": outcome, "summary": summary, "undo": undo or None, "report": report or None}


def default_inventory() -> str:
    try:
        from mayday.paths import project_root

        return str(project_root() / "inventories" / "lab")
    except FileNotFoundError:
        return ""

