"""PagerDuty pages that outlive a run, kept in the state directory (notify/pages.json).

One incident is one page: a run that escalates opens a page under a dedup_key derived from its
incident; a later run of the same scenario on the same inventory (its "group") that recovers
resolves that key. A page may be deferred (seed 003: P1 pages only after a delay unless resolved):
it waits here until it is due, and whoever calls notify next (a run, `mayday notify flush`, the
alert receiver) sends it. A page whose trigger or resolve did not go through stays here and is
sent again by the next flush. No secret is kept: a page names its channel, not its routing key.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from mayday import jsonfile
from mayday.paths import state_dir

DEFERRED, OPEN, RESOLVING = "deferred", "open", "resolving"
KEEP_CLOSED = 50  # closed pages kept for `mayday notify pages`


def group_of(fields: dict[str, Any], incident: str | None) -> str:
    """Runs of one scenario on one inventory share a page; without a scenario, the incident alone."""
    scenario, inventory = fields.get("scenario"), fields.get("inventory")
    if scenario:
        return f"{scenario}@{inventory or '-'}"
    return f"incident:{incident or '-'}"


def dedup_key(group: str, incident: str | None) -> str:
    return f"mayday-{hashlib.sha256(group.encode()).hexdigest()[:12]}-{incident or 'none'}"


def _paths() -> tuple[str, str]:
    root = os.path.join(str(state_dir()), "notify")
    os.makedirs(root, exist_ok=True)
    return os.path.join(root, "pages.json"), os.path.join(root, "pages.lock")


@contextlib.contextmanager
def _pages() -> Iterator[dict[str, Any]]:
    """The pages document under an exclusive lock, written back (atomically) when changed."""
    path, lock = _paths()
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            with open(path) as source:
                doc = json.load(source)
        except (OSError, ValueError):
            doc = {}
        doc.setdefault("pages", {})
        doc.setdefault("closed", [])
        before = json.dumps(doc, sort_keys=True)
        yield doc
        if json.dumps(doc, sort_keys=True) != before:
            jsonfile.write(path, doc, indent=2)


def _key(channel: str, group: str) -> str:
    return f"{channel}|{group}"


def escalate(channel: str, group: str, incident: str | None, delay_s: float, details: dict[str, Any],
             now: float | None = None) -> dict[str, Any]:
    """The page for this escalation: the group's open or waiting one (same dedup_key), else a new one
    due after `delay_s` (0: at once). Returns a copy of the entry."""
    now = time.time() if now is None else now
    with _pages() as doc:
        entry = doc["pages"].get(_key(channel, group))
        if entry is None:
            entry = {"channel": channel, "group": group, "incident": incident,
                     "dedup_key": dedup_key(group, incident), "status": DEFERRED, "created": now,
                     "due": now + max(0.0, delay_s), "details": details}
            doc["pages"][_key(channel, group)] = entry
        elif entry["status"] == DEFERRED:
            entry["details"] = details  # still waiting: the latest escalation says it best
        return dict(entry)


def get(channel: str, group: str) -> dict[str, Any] | None:
    with _pages() as doc:
        entry = doc["pages"].get(_key(channel, group))
        return dict(entry) if entry else None


def mark(channel: str, group: str, status: str, now: float | None = None) -> None:
    """Move a page on: open (triggered), resolving (resolve still to be sent)."""
    with _pages() as doc:
        entry = doc["pages"].get(_key(channel, group))
        if entry is not None:
            entry["status"] = status
            entry[f"{status}_at"] = time.time() if now is None else now


def close(channel: str, group: str, how: str, now: float | None = None) -> dict[str, Any] | None:
    """Forget a page: resolved, or cancelled before it was due. Kept in the closed list."""
    with _pages() as doc:
        entry = doc["pages"].pop(_key(channel, group), None)
        if entry is not None:
            entry.update(status=how, closed=time.time() if now is None else now)
            doc["closed"] = (doc["closed"] + [entry])[-KEEP_CLOSED:]
        return entry


def due(channels: list[str], now: float | None = None) -> list[dict[str, Any]]:
    """Pages of these channels that need sending: deferred and due, or a resolve still owed."""
    now = time.time() if now is None else now
    path, _ = _paths()
    if not os.path.exists(path):  # the common case: nothing pending, no lock taken
        return []
    with _pages() as doc:
        return [dict(e) for e in doc["pages"].values() if e["channel"] in channels
                and ((e["status"] == DEFERRED and e["due"] <= now) or e["status"] == RESOLVING)]


def listing() -> dict[str, list[dict[str, Any]]]:
    path, _ = _paths()
    if not os.path.exists(path):
        return {"pages": [], "closed": []}
    with _pages() as doc:
        return {"pages": list(doc["pages"].values()), "closed": list(doc["closed"])}
