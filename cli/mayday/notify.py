"""Notifications from the controller. A channel that fails is reported, never raised: a
notification must not fail a rollback. Targets (webhook URLs) are secrets and are never echoed."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from typing import Any

from mayday.paths import state_dir


def _send_webhook(channel: dict[str, Any], payload: dict[str, Any]) -> str:
    body = json.dumps(payload, default=str).encode()
    req = urllib.request.Request(channel["url"], data=body, method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "mayday"})
    with urllib.request.urlopen(req, timeout=float(channel.get("timeout", 5))) as resp:
        return f"HTTP {resp.status}"


def _send_file(channel: dict[str, Any], payload: dict[str, Any]) -> str:
    # A relative path lives in the state directory, beside the incident records.
    path = os.path.join(state_dir(), channel["path"])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(payload, default=str) + "\n")
    return "appended"


SENDERS = {"webhook": _send_webhook, "file": _send_file}


def send(channels: list[dict[str, Any]], message: str, event: str, incident: str | None,
         fields: dict[str, Any] | None = None, dry_run: bool = False) -> list[dict[str, Any]]:
    """Send to every channel; returns one {channel, type, ok, detail} per channel."""
    payload = {"text": message, "event": event, "incident": incident,
               "sent_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(fields or {})}
    delivered = []
    for index, channel in enumerate(channels or []):
        name = channel.get("name") or f"{channel.get('type')}-{index}"
        entry: dict[str, Any] = {"channel": name, "type": channel.get("type")}
        if dry_run:
            entry.update(ok=True, detail="check mode: not sent")
        elif channel.get("type") not in SENDERS:
            entry.update(ok=False, detail=f"unknown channel type; valid: {', '.join(SENDERS)}")
        else:
            try:
                entry.update(ok=True, detail=SENDERS[channel["type"]](channel, payload))
            except Exception as exc:  # any failure of any channel: report it, never raise
                entry.update(ok=False, detail=type(exc).__name__)  # the text may contain the URL
        delivered.append(entry)
    return delivered
