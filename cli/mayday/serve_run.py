"""One run `mayday serve` decided on: python -m mayday.serve_run <request.json>.

Its own process (and session), so the receiver keeps answering while it runs and a receiver
restarted mid-run neither kills it nor loses its outcome: the worker appends the outcome to the audit
log itself, then leaves the runs-in-flight list. The run takes the same path as the CLI's: the
scenario's input check, then mayday.runner.run_playbook, which takes the inventory's run lock.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from mayday import audit
from mayday.receiver import inflight_dir, runs_dir
from mayday.scenarios import SCENARIOS


def execute(request: dict[str, Any]) -> dict[str, Any]:
    from mayday.runner import run_playbook  # ansible-runner: a slow import, only here

    scenario = SCENARIOS[request["scenario"]]
    params, problems = scenario.check(request.get("params") or {})
    if problems:
        return {"outcome": "REFUSED", "reason": "; ".join(problems), "exit_code": 2}
    extravars = {k: v for k, v in {**params, **scenario.fixed}.items() if v is not None}
    alert = request.get("alert") or {}
    extravars["mayday_alert"] = alert
    # Why, for the notifications (mayday.notify); every part was made template-safe by the receiver.
    extravars["mayday_trigger"] = (f"alert {alert.get('alertname')} ({alert.get('severity') or '-'}) firing since "
                                   f"{alert.get('starts_at')}, policy rule {request.get('rule')}")
    if request.get("confirmed"):
        extravars["mayday_confirmed"] = True
    result = run_playbook(scenario.playbook, Path(request["inventory"]), extravars, limit=request.get("limit"),
                          check=bool(request.get("check")), phases=list(scenario.phases))
    outcome = ((result.report or {}).get("outcome") or ("OK" if result.rc == 0 else "ERROR"))
    return {"outcome": outcome, "run_id": result.run_id, "incident": result.incident, "exit_code": result.exit_code,
            "duration_s": round(result.duration_s, 1), "summary": (result.report or {}).get("summary"),
            "timing": (result.report or {}).get("alert_timing"),
            "handed_over_to": (result.handed_over or {}).get("incident")}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m mayday.serve_run <request.json>", file=sys.stderr)
        return 2
    request = audit.read_json(Path(argv[1]))
    if not isinstance(request, dict) or request.get("scenario") not in SCENARIOS:
        print(f"{argv[1]}: not a run request", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        found = execute(request)
    except Exception as exc:  # recorded, so the audit log says how every started run ended
        found = {"outcome": "ERROR", "reason": f"{type(exc).__name__}: {str(exc)[:300]}", "exit_code": 1}
    alert = request.get("alert") or {}
    entry = {"event": "run-finished", "request": request["request"], "rule": request.get("rule"),
             "fingerprint": alert.get("fingerprint"), "alertname": alert.get("alertname"),
             "scenario": request["scenario"], "check": bool(request.get("check")),
             "worker_s": round(time.monotonic() - started, 1), **found}
    audit.write_json(runs_dir() / f"{request['request']}.result.json", entry)
    audit.append(entry)
    with contextlib.suppress(FileNotFoundError):
        (inflight_dir() / f"{request['request']}.json").unlink()
    return 0 if found.get("exit_code") == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
