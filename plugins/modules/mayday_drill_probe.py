#!/usr/bin/python
# A drill's steady-state probes on one host: once, or polled until one fails (detection) or until
# all pass (recovery), within a window. The host's kill switch (/var/lib/mayday/drill-stop) is read
# before every round.
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_drill_probe
short_description: Run a drill's steady-state probes on a host
options:
  checks: {description: "Probes: name and one of http, sql, service.", type: list, elements: dict, required: true}
  mode: {description: once, until_fail or until_ok., type: str, default: once}
  window_s: {description: How long to poll at most., type: float, default: 0}
  interval_s: {description: Pause between rounds., type: float, default: 1}
  stop_file: {description: The host's kill switch., type: str, default: /var/lib/mayday/drill-stop}
  confirm: {description: "until_ok: once all pass, one more round after interval_s (the steady state holds).",
    type: bool, default: false}
author: mayday
"""

RETURN = r"""
ok: {description: Every probe passed in the last round., type: bool, returned: always}
rounds: {description: Rounds run., type: int, returned: always}
results: {description: The last round's result per probe., type: list, returned: always}
changed_at: {description: Epoch of the round where the awaited change was seen (null when not seen)., type: float,
  returned: always}
stopped: {description: The host's kill switch was set., type: bool, returned: always}
"""

import os
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.mayday_http import probe_once


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


KINDS = {"http": http_probe, "sql": sql_probe, "service": service_probe}


def run_round(checks):
    results = []
    for check in checks:
        kind = next(k for k in KINDS if k in check)
        result = KINDS[kind](check[kind])
        results.append({"name": check["name"], "kind": kind, "at": time.time(), **result})
    return results


def main():
    module = AnsibleModule(
        argument_spec={
            "checks": {"type": "list", "elements": "dict", "required": True},
            "mode": {"type": "str", "choices": ["once", "until_fail", "until_ok"], "default": "once"},
            "window_s": {"type": "float", "default": 0},
            "interval_s": {"type": "float", "default": 1},
            "stop_file": {"type": "str", "default": "/var/lib/mayday/drill-stop"},
            "confirm": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    p = module.params
    deadline = time.monotonic() + max(0.0, p["window_s"])
    rounds, changed_at, stopped, results = 0, None, False, []
    while True:
        if os.path.exists(p["stop_file"]):
            stopped = True
            break
        rounds += 1
        results = run_round(p["checks"])
        ok = all(r["ok"] for r in results)
        if p["mode"] == "once" or (p["mode"] == "until_fail" and not ok) or (p["mode"] == "until_ok" and ok):
            changed_at = results[0]["at"] if results else time.time()
            break
        if time.monotonic() + p["interval_s"] > deadline:
            break
        time.sleep(p["interval_s"])
    confirmed = None
    if p["confirm"] and p["mode"] == "until_ok" and changed_at and not stopped:
        time.sleep(min(p["interval_s"], 0.5))
        confirmed = run_round(p["checks"])
    module.exit_json(changed=False, ok=bool(results) and all(r["ok"] for r in results), rounds=rounds,
                     results=results, changed_at=changed_at, stopped=stopped, confirmed=confirmed)


if __name__ == "__main__":
    main()
