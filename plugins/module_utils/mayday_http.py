# HTTP health probes with per-request timeout, bounded retries and a latency threshold.
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

try:
    from ansible.module_utils.mayday_steps import utc_now
except ImportError:  # imported on the controller by the mayday_inspect action
    from mayday_steps import utc_now  # type: ignore[no-redef]


def probe_once(check):
    checked_at = utc_now()
    started = time.monotonic()
    status, body = None, ""
    try:
        req = urllib.request.Request(check["url"], headers={"User-Agent": "mayday-health-check"})
        with urllib.request.urlopen(req, timeout=check.get("timeout", 2)) as resp:
            status, body = resp.status, resp.read(65536).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(65536).decode("utf-8", "replace")
    except Exception as exc:
        body = f"{type(exc).__name__}: {exc}"
    latency_ms = round((time.monotonic() - started) * 1000, 1)
    return evaluate(check, status, body, latency_ms, checked_at)


def evaluate(check, status, body, latency_ms, checked_at):
    """Judge one answer; shared by the on-host probe and the controller-side inspection."""
    problems = []
    expected = check.get("status", 200)
    if status != expected:
        problems.append(f"status {status}, expected {expected}")
    doc = None
    if check.get("json"):
        try:
            doc = json.loads(body)
        except ValueError:
            problems.append("body is not JSON")
        else:
            if not isinstance(doc, dict):
                problems.append("body is not a JSON object")
        if isinstance(doc, dict):
            for key, want in check["json"].items():
                if str(doc.get(key)) != str(want):
                    problems.append(f"{key}={doc.get(key)!r}, expected {want!r}")
    max_latency = check.get("max_latency_ms")
    if max_latency and latency_ms > max_latency and not problems:
        problems.append(f"latency {latency_ms} ms over {max_latency} ms")
    return {"url": check["url"], "checked_at": checked_at, "status": status, "latency_ms": latency_ms,
            "ok": not problems, "problems": problems, "body": body[:300]}


def probe(check, retries=None, delay=None):
    """Probe until healthy or retries are used up; returns the last attempt plus the count."""
    retries = check.get("retries", 10) if retries is None else retries
    delay = check.get("delay", 0.5) if delay is None else delay
    attempt = 0
    while True:
        attempt += 1
        result = probe_once(check)
        if result["ok"] or attempt > retries:
            result["attempts"] = attempt
            return result
        time.sleep(delay)
