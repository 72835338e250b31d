# A drill's steady-state probes on a host (http, sql, service, backup), shared by the modules mayday_drill_probe
# and mayday_fault (which probes in the same round trip as an injection or a removal).
from __future__ import annotations

import calendar
import json
import os
import subprocess
import time

from ansible.module_utils.mayday_http import probe_once

STOP_FILE = "/var/lib/mayday/drill-stop"


def sql_probe(check):
    engine, query = check.get("engine", "postgresql"), check["query"]
    if engine == "postgresql":
        argv = ["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-d", check.get("database", "postgres"),
                "-c", query]
    else:
        argv = ["mariadb", "-N", "-B", check.get("database", "mysql"), "-e", query]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=float(check.get("timeout", 5)),
                             check=False)
    except subprocess.TimeoutExpired:
        return {"ok": False, "problems": ["query timed out"], "value": None}
    value = out.stdout.strip()
    if out.returncode != 0:
        return {"ok": False, "problems": [out.stderr.strip()[-200:]], "value": None}
    want = str(check.get("expect", ""))
    return {"ok": value == want, "problems": [] if value == want else [f"got {value!r}, expected {want!r}"],
            "value": value}


def service_probe(check):
    out = subprocess.run(["systemctl", "is-active", check["name"]], capture_output=True, text=True, check=False)
    state = out.stdout.strip()
    want = "active" if check.get("active", True) else "inactive"
    return {"ok": (state == "active") == (want == "active"), "value": state,
            "problems": [] if (state == "active") == (want == "active") else [f"{state}, expected {want}"]}


def http_probe(check):
    result = probe_once(check)
    wanted = check.get("body_contains")
    if wanted and result["ok"] and wanted not in result.get("body", ""):
        result["ok"], result["problems"] = False, [f"body lacks {wanted!r}"]
    return {"ok": result["ok"], "problems": result["problems"], "value": result["status"],
            "latency_ms": result["latency_ms"]}


def backup_probe(check):
    """The newest backup manifest in the directory is at most max_age_s old (a restore has something to put back)."""
    directory, limit = check["dir"], float(check["max_age_s"])  # both set by the drill's schema
    newest = None
    try:
        names = [n for n in os.listdir(directory) if n.endswith(".manifest.json")]
    except OSError as exc:
        return {"ok": False, "problems": [f"{directory}: {exc.strerror}"], "value": None}
    for name in names:
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as handle:
                taken = calendar.timegm(time.strptime(json.load(handle)["time"], "%Y%m%dT%H%M%SZ"))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a manifest of ours
        newest = taken if newest is None else max(newest, taken)
    if newest is None:
        return {"ok": False, "problems": [f"no backup in {directory}: run `mayday backup` first"], "value": None}
    age = round(time.time() - newest)
    ok = age <= limit
    return {"ok": ok, "value": age,
            "problems": [] if ok else [f"the newest backup is {age} s old, over max_age {int(limit)} s"]}


KINDS = {"http": http_probe, "sql": sql_probe, "service": service_probe, "backup": backup_probe}


def run_round(checks):
    results = []
    for check in checks:
        kind = next(k for k in KINDS if k in check)
        result = KINDS[kind](check[kind])
        results.append({"name": check["name"], "kind": kind, "at": time.time(), **result})
    return results


def confirm_round(checks, since, interval_s=1.0):
    """The steady state checked once more, at least min(interval_s, 0.5) s after `since` (when it was seen
    back): it holds. Whatever ran on the host meanwhile (a fault's removal) counts toward the pause."""
    time.sleep(max(0.0, float(since) + min(float(interval_s), 0.5) - time.time()))
    return run_round(checks)


def poll(checks, mode="once", window_s=0.0, interval_s=1.0, stop_file=STOP_FILE, confirm=False):
    """Rounds of probes: once, until one fails (until_fail) or until all pass (until_ok), within the
    window; with confirm, one more round once all pass (the steady state holds). The host's kill switch
    is read before every round."""
    window_s, interval_s = float(window_s), float(interval_s)  # as templated by the playbook: maybe text
    confirm = confirm in (True, "true", "True", "yes", "1", 1)
    deadline = time.monotonic() + max(0.0, window_s)
    rounds, changed_at, stopped, results = 0, None, False, []
    while True:
        if os.path.exists(stop_file):
            stopped = True
            break
        rounds += 1
        results = run_round(checks)
        ok = all(r["ok"] for r in results)
        if mode == "once" or (mode == "until_fail" and not ok) or (mode == "until_ok" and ok):
            changed_at = results[0]["at"] if results else time.time()
            break
        if time.monotonic() + interval_s > deadline:
            break
        time.sleep(interval_s)
    confirmed = None
    if confirm and mode == "until_ok" and changed_at and not stopped:
        confirmed = confirm_round(checks, changed_at, interval_s)
    return {"ok": bool(results) and all(r["ok"] for r in results), "rounds": rounds, "results": results,
            "changed_at": changed_at, "stopped": stopped, "confirmed": confirmed}
