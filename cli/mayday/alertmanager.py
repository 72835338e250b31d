"""Alertmanager's webhook payload (version 4), read strictly: anything else is refused with a message
that says what was expected, so a misrouted sender learns why at once."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mayday import timing

STATUSES = ("firing", "resolved")
VERSION = "4"
MAX_ALERTS = 1000
LABEL_MAX = 1024


class BadPayload(ValueError):
    """Not an Alertmanager webhook payload; the message names what was expected."""


@dataclass(frozen=True)
class Alert:
    fingerprint: str
    status: str
    labels: dict[str, str]
    starts_at: str  # normalised: UTC with milliseconds
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def key(self) -> str:
        """One firing of one alert: Alertmanager keeps the fingerprint (a hash of the labels) when the
        same alert fires again later, with a new startsAt."""
        return f"{self.fingerprint}@{self.starts_at}"


def _strings(where: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadPayload(f"{where} must be an object of strings")
    for key, item in value.items():
        if not isinstance(item, str):
            raise BadPayload(f"{where}.{key} must be a string, not {type(item).__name__}")
        if len(item) > LABEL_MAX or len(key) > LABEL_MAX:
            raise BadPayload(f"{where}.{key[:40]} is longer than {LABEL_MAX} characters")
    return dict(value)


def _alert(index: int, doc: Any) -> Alert:
    where = f"alerts[{index}]"
    if not isinstance(doc, dict):
        raise BadPayload(f"{where} must be an object")
    status = doc.get("status")
    if status not in STATUSES:
        raise BadPayload(f"{where}.status is {status!r}; valid: {', '.join(STATUSES)}")
    fingerprint = doc.get("fingerprint")
    if not isinstance(fingerprint, str) or not fingerprint or len(fingerprint) > 64:
        raise BadPayload(f"{where}.fingerprint is missing or not a short string (Alertmanager sends one per alert)")
    try:
        starts_at = timing.format_instant(timing.parse_instant(doc.get("startsAt")))
    except ValueError as exc:
        raise BadPayload(f"{where}.startsAt: {exc}") from None
    labels = _strings(f"{where}.labels", doc.get("labels"))
    if not labels.get("alertname"):
        raise BadPayload(f"{where}.labels.alertname is missing")
    return Alert(fingerprint, status, labels, starts_at, _strings(f"{where}.annotations", doc.get("annotations")))


def parse(body: bytes) -> list[Alert]:
    """The alerts of one webhook call, each with its own status (one group can mix firing and resolved)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadPayload("the body is not JSON; expected Alertmanager's webhook payload (version 4)") from None
    if not isinstance(doc, dict) or "alerts" not in doc:
        raise BadPayload("not an Alertmanager webhook payload: expected an object with version \"4\" and alerts")
    if doc.get("version") != VERSION:
        raise BadPayload(f"Alertmanager webhook version {doc.get('version')!r}; valid: {VERSION!r}")
    alerts = doc["alerts"]
    if not isinstance(alerts, list) or not alerts:
        raise BadPayload("alerts must be a non-empty list")
    if len(alerts) > MAX_ALERTS:
        raise BadPayload(f"{len(alerts)} alerts in one call; at most {MAX_ALERTS}")
    return [_alert(i, a) for i, a in enumerate(alerts)]
