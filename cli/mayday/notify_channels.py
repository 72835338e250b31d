"""Notification channels: what each type sends (payload builders) and how (transports), with
bounded retries. Routing, pages and fallback live in mayday.notify.

A channel is a dict from the inventory: {type, name, ...settings}. Secret settings (SECRET_KEYS)
may also be given as `<key>_env`, naming an environment variable read at send time. Neither form
ever appears in a result, a record or an error shown to anyone: details are built from safe parts
(status codes, exception types) and then passed through redact() all the same.
"""

from __future__ import annotations

import json
import os
import smtplib
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from mayday.paths import state_dir

CHANNEL_TYPES = ("slack", "pagerduty", "email", "webhook", "file")
SECRET_KEYS = ("url", "token", "routing_key", "password")
SEVERITIES = ("P0", "P1", "P2", "P3")
PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
SLACK_API_URL = "https://slack.com/api"
PAGERDUTY_SEVERITY = {"P0": "critical", "P1": "error", "P2": "warning", "P3": "info"}
# Retries: a notification must never hold up a rollback, so each channel gets a short total budget.
DEFAULT_TIMEOUT_S = 3.0
DEFAULT_RETRIES = 2
DEFAULT_BUDGET_S = 4.5
BACKOFF_S = 0.25


class ChannelError(Exception):
    """A delivery that did not go through; `detail` is safe to show (no secret in it)."""

    def __init__(self, detail: str, retryable: bool = True):
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable


def severity_label(value: Any) -> str:
    """P0..P3 from a scenario's severity (1..4), a label (P0, p1) or a SEV number; P1 when unknown."""
    text = str(value if value is not None else "").strip().upper()
    if text in SEVERITIES:
        return text
    digits = text.removeprefix("SEV")
    if digits.isdigit() and 1 <= int(digits) <= 4:
        return f"P{int(digits) - 1}"
    return "P1"


def secret(channel: dict[str, Any], key: str) -> str:
    """A secret setting's value: given inline (vault, or an env lookup at template time) or by env name."""
    value = channel.get(key)
    if not value and channel.get(f"{key}_env"):
        value = os.environ.get(str(channel[f"{key}_env"]), "")
    return str(value or "")


def secrets_of(channel: dict[str, Any]) -> list[str]:
    found = [secret(channel, key) for key in SECRET_KEYS]
    return sorted({s for s in found if len(s) >= 4}, key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    for value in secrets:
        text = text.replace(value, "***")
    return text


def missing_settings(channel: dict[str, Any]) -> list[str]:
    """Settings a channel of its type cannot work without (names only)."""
    kind = channel.get("type")
    if kind == "webhook":
        return [] if secret(channel, "url") else ["url (or url_env)"]
    if kind == "file":
        return [] if channel.get("path") else ["path"]
    if kind == "slack":
        if secret(channel, "url") or (secret(channel, "token") and channel.get("channel")):
            return []
        return ["url (incoming webhook) or token and channel (Web API)"]
    if kind == "pagerduty":
        return [] if secret(channel, "routing_key") else ["routing_key (or routing_key_env)"]
    if kind == "email":
        missing = [key for key in ("host", "from", "to") if not channel.get(key)]
        if channel.get("username") and not secret(channel, "password"):
            missing.append("password (or password_env)")  # an unset secret, not a server to ask
        return missing
    return []


# -- what is sent ------------------------------------------------------------------------------
@dataclass
class Notice:
    """One message, with the structured parts every channel type needs.

    Known fields (all optional): scenario, severity, title, outcome, summary, hosts, inventory,
    environment, why, undo, report. Any other field is passed on to webhook and file receivers.
    """

    text: str
    event: str
    incident: str | None
    fields: dict[str, Any] = field(default_factory=dict)
    sent_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def severity(self) -> str:
        return severity_label(self.fields.get("severity"))

    def payload(self) -> dict[str, Any]:
        """The generic JSON (webhook and file channels)."""
        doc = {"text": self.text, "event": self.event, "incident": self.incident, "sent_at": self.sent_at,
               **self.fields}
        if "severity" in self.fields:
            doc["severity"] = self.severity
        return doc

    @property
    def what(self) -> str:
        return str(self.fields.get("title") or self.fields.get("scenario") or self.text)

    @property
    def where(self) -> str:
        hosts = self.fields.get("hosts")
        hosts_text = ", ".join(str(h) for h in hosts) if isinstance(hosts, list | tuple) else str(hosts or "")
        place = " ".join(str(p) for p in (self.fields.get("environment"), self.fields.get("inventory")) if p)
        return " on ".join(p for p in (hosts_text, place) if p) or "-"

    @property
    def why(self) -> str:
        return str(self.fields.get("why") or "-")

    @property
    def outcome(self) -> str:
        outcome = self.fields.get("outcome")
        summary = self.fields.get("summary")
        return ": ".join(str(p) for p in (outcome, summary) if p) or self.text

    @property
    def undo(self) -> str:
        return str(self.fields.get("undo") or "")

    @property
    def headline(self) -> str:
        label = {"escalation": "ESCALATION", "resolved": "resolved", "test": "test", "started": "started"}.get(
            self.event, self.event)
        return f"[{self.severity}] {self.incident or 'mayday'} {label}: {self.what}"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_message(notice: Notice) -> dict[str, Any]:
    """Block Kit: what, where, why, outcome, incident, and the command to undo when there is one."""

    def field_text(label: str, value: str) -> dict[str, str]:
        return {"type": "mrkdwn", "text": _cut(f"*{label}*\n{value}", 2000)}

    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(notice.headline, 150)}},
        {"type": "section", "fields": [field_text("What", notice.what), field_text("Where", notice.where),
                                       field_text("Why", notice.why), field_text("Outcome", notice.outcome),
                                       field_text("Incident", notice.incident or "-"),
                                       field_text("Severity", notice.severity)]},
    ]
    if notice.undo:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _cut(f"*Undo*\n`{notice.undo}`", 3000)}})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"mayday · {notice.sent_at}"}]})
    return {"text": _cut(f"{notice.headline}. {notice.text}", 3000), "blocks": blocks}


def pagerduty_event(action: str, routing_key: str, dedup_key: str, notice: Notice | None = None) -> dict[str, Any]:
    """Events API v2: trigger (with the incident's details) or resolve, both under one dedup_key."""
    body: dict[str, Any] = {"routing_key": routing_key, "event_action": action, "dedup_key": dedup_key}
    if action == "trigger" and notice is not None:
        body["payload"] = {
            "summary": _cut(notice.text or notice.headline, 1024),
            "source": _cut(notice.where, 255),
            "severity": PAGERDUTY_SEVERITY[notice.severity],
            "component": str(notice.fields.get("scenario") or "mayday"),
            "group": str(notice.fields.get("environment") or ""),
            "class": str(notice.fields.get("outcome") or notice.event),
            "custom_details": {"what": notice.what, "where": notice.where, "why": notice.why,
                               "outcome": notice.outcome, "incident": notice.incident, "undo": notice.undo or None,
                               "report": notice.fields.get("report")},
        }
        body["client"] = "mayday"
    return body


def email_message(channel: dict[str, Any], notice: Notice) -> EmailMessage:
    recipients = channel["to"] if isinstance(channel["to"], list) else [channel["to"]]
    msg = EmailMessage()
    msg["Subject"] = _cut(f"[mayday {notice.severity}] {notice.incident or ''} {notice.event}: {notice.what}", 200)
    msg["From"] = str(channel["from"])
    msg["To"] = ", ".join(str(r) for r in recipients)
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain="mayday")
    msg["X-Mayday-Incident"] = notice.incident or ""
    msg["X-Mayday-Event"] = notice.event
    lines = [notice.text, "", f"What:     {notice.what}", f"Where:    {notice.where}", f"Why:      {notice.why}",
             f"Outcome:  {notice.outcome}", f"Incident: {notice.incident or '-'}", f"Severity: {notice.severity}"]
    if notice.undo:
        lines.append(f"Undo:     {notice.undo}")
    if notice.fields.get("report"):
        lines.append(f"Report:   {notice.fields['report']}")
    msg.set_content("\n".join(lines) + "\n")
    return msg


# -- how it is sent ----------------------------------------------------------------------------
def _network_detail(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, TimeoutError | socket.timeout):
            return "timeout"
        why = getattr(reason, "strerror", None) or type(reason).__name__
        return f"URLError ({why})"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__} ({exc.strerror or 'error'})"
    return type(exc).__name__  # its text may hold a URL or a credential


def post_json(url: str, body: dict[str, Any], timeout: float,
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST JSON; returns (status, decoded answer or None). 5xx, 429 and network errors are retryable."""
    data = json.dumps(body, default=str).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json; charset=utf-8", "User-Agent": "mayday", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raise ChannelError(f"HTTP {exc.code}", retryable=exc.code >= 500 or exc.code == 429) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ChannelError(_network_detail(exc), retryable=not isinstance(exc, ValueError)) from None
    try:
        answer = json.loads(raw) if raw else None
    except ValueError:
        answer = None
    return status, answer


def slack_api(channel: dict[str, Any], method: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Slack Web API call (chat.postMessage, chat.update) with the bot token; {ok: false} is a failure."""
    base = str(channel.get("api_url") or SLACK_API_URL).rstrip("/")
    status, answer = post_json(f"{base}/{method}", body, timeout,
                               {"Authorization": f"Bearer {secret(channel, 'token')}"})
    if not isinstance(answer, dict) or not answer.get("ok"):
        error = str(answer.get("error")) if isinstance(answer, dict) else f"HTTP {status} without JSON"
        raise ChannelError(f"Slack {method}: {error}", retryable=error in ("ratelimited", "internal_error"))
    return answer


def send_email(channel: dict[str, Any], message: EmailMessage, timeout: float) -> str:
    """SMTP with STARTTLS (default), implicit TLS (security: ssl) or none; credentials only over TLS."""
    host, security = str(channel["host"]), str(channel.get("security") or "starttls")
    port = int(channel.get("port") or (465 if security == "ssl" else 587))
    username, password = str(channel.get("username") or ""), secret(channel, "password")
    if security not in ("starttls", "ssl", "none"):
        raise ChannelError("security must be one of starttls, ssl, none", retryable=False)
    if security == "none" and username:
        raise ChannelError("refusing to send SMTP credentials without TLS (security: none)", retryable=False)
    context = ssl.create_default_context(cafile=channel.get("ca_file") or None)
    try:
        smtp: smtplib.SMTP = (smtplib.SMTP_SSL(host, port, timeout=timeout, context=context) if security == "ssl"
                              else smtplib.SMTP(host, port, timeout=timeout))
        with smtp:
            smtp.ehlo()
            if security == "starttls":
                smtp.starttls(context=context)  # raises when the server offers no STARTTLS
                smtp.ehlo()
            if username:
                smtp.login(username, password)
            refused = smtp.send_message(message)
    except smtplib.SMTPResponseException as exc:
        raise ChannelError(f"{type(exc).__name__} {exc.smtp_code}", retryable=400 <= exc.smtp_code < 500) from None
    except smtplib.SMTPNotSupportedError:
        raise ChannelError("the SMTP server offers no STARTTLS", retryable=False) from None
    except smtplib.SMTPRecipientsRefused:
        raise ChannelError("every recipient was refused", retryable=False) from None
    except ssl.SSLError as exc:
        raise ChannelError(f"TLS: {exc.reason or type(exc).__name__}", retryable=False) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise ChannelError(_network_detail(exc), retryable=True) from None
    recipients = channel["to"] if isinstance(channel["to"], list) else [channel["to"]]
    return f"accepted for {len(recipients) - len(refused)} of {len(recipients)} recipient(s) over {security}"


def append_file(channel: dict[str, Any], doc: dict[str, Any]) -> str:
    # A relative path lives in the state directory, beside the incident records.
    path = os.path.join(state_dir(), str(channel["path"]))
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a") as handle:
            handle.write(json.dumps(doc, default=str) + "\n")
    except OSError as exc:
        raise ChannelError(f"{type(exc).__name__} ({exc.strerror or 'error'})", retryable=False) from None
    return "appended"


def with_retries(channel: dict[str, Any], attempt: Callable[[float], str],
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Run `attempt(timeout)` until it succeeds, fails for good, or the channel's budget is spent.

    Backoff doubles from BACKOFF_S; each attempt's timeout is cut to what is left of the budget, so
    a channel never costs more than `retry_budget` seconds (default 4.5) however it fails.
    """
    budget = float(channel.get("retry_budget", DEFAULT_BUDGET_S))
    timeout = float(channel.get("timeout", DEFAULT_TIMEOUT_S))
    tries = 1 + max(0, int(channel.get("retries", DEFAULT_RETRIES)))
    secrets = secrets_of(channel)
    started = clock()
    detail, attempts = "not attempted", 0
    for number in range(tries):
        left = budget - (clock() - started)
        if left <= 0.05:
            break
        attempts += 1
        try:
            done = attempt(min(timeout, left))
            return {"ok": True, "detail": redact(done, secrets), "attempts": attempts,
                    "elapsed_s": round(clock() - started, 3)}
        except ChannelError as exc:
            detail, retryable = exc.detail, exc.retryable
        except Exception as exc:  # any other failure of any channel: reported, never raised
            detail, retryable = type(exc).__name__, False
        if not retryable:
            break
        pause = BACKOFF_S * (2 ** number)
        left = budget - (clock() - started)
        if number + 1 < tries and left > pause + 0.05:
            sleep(pause)
    suffix = f" after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts > 1 else ""
    return {"ok": False, "detail": redact(detail, secrets) + suffix, "attempts": attempts,
            "elapsed_s": round(clock() - started, 3)}
