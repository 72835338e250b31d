"""Where drills meet the alert path and the notification channels (issue 10).

Each hook works without them: no Alertmanager configured means no alert is firing as far as the
drill knows, recovery `by: alert` is refused as not wired, and the communication drill reports the
result of `mayday notify test` when that command exists. Fill these in when the alert path lands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from typing import Any

from mayday.paths import PACKAGE_DIR


def alertmanager_url(task_vars: dict[str, Any]) -> str:
    return str(os.environ.get("MAYDAY_ALERTMANAGER_URL") or task_vars.get("mayday_alertmanager_url") or "")


def firing_alerts(names: list[list[str]] | list[str], task_vars: dict[str, Any]) -> list[str]:
    """The alerts among `names` (flattened; '*' for any) firing in Alertmanager, [] when none is configured."""
    wanted = {n for group in names for n in (group if isinstance(group, list) else [group])}
    url = alertmanager_url(task_vars)
    if not wanted or not url:
        return []
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/v2/alerts?active=true&silenced=false",
                                    timeout=3) as resp:
            alerts = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        return [f"(Alertmanager at {url} did not answer: {exc})"]
    found = sorted({a.get("labels", {}).get("alertname", "?") for a in alerts})
    return [n for n in found if "*" in wanted or n in wanted]


def await_alert_recovery(call: dict[str, Any], task_vars: dict[str, Any]) -> dict[str, Any]:
    """Recovery started by the alert path (Prometheus -> Alertmanager -> mayday serve): not wired yet."""
    return {"scenario": call.get("scenario"), "outcome": "NOT-WIRED", "ok": False, "rc": 2,
            "msg": "recovery by: alert needs the alert path (mayday serve, issue 10); use by: scenario"}


def notify_test(inventory: str, task_vars: dict[str, Any]) -> dict[str, Any]:
    """Sends `mayday notify test` to every channel of the inventory and reports what each answered."""
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_DIR.parent))
    argv = [sys.executable, "-m", "mayday.cli", "notify", "test", *(["-i", inventory] if inventory else []), "--json"]
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
    shown = [{k: c.get(k) for k in ("channel", "type", "ok", "detail", "attempts", "elapsed_s")} for c in channels]
    ok = out.returncode == 0 and bool(shown) and all(c["ok"] for c in shown)
    return {"ok": ok, "rc": out.returncode, "channels": shown,
            "msg": "" if ok else (out.stderr.strip().splitlines() or ["no channel answered"])[-1][:300]}
