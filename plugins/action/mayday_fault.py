# Drill faults (module mayday_fault) with the journal kept on the controller: every injection and
# every removal is recorded, and a failure is reported, never raised, so the playbook's cleanup and
# report still run. A fault's secrets come from inventory variables named in its params (password_var).
from __future__ import annotations

import os
import sys

from ansible.plugins.action import ActionBase

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _mayday_path  # noqa: F401

from mayday.drills import journal

DETECTED = "detected"  # as in mayday_drill_probe: one host saw the fault, the others stop polling


def record_detect(directory, host, probe, faults) -> None:
    """The detect probe after an injection, journalled as the detect step's probe action does."""
    if probe.get("stopped"):
        journal.append(directory, {"event": "stopped", "phase": "detect", "host": host,
                                   "reason": "host kill switch /var/lib/mayday/drill-stop"})
        (directory / journal.STOP_FILE).write_text(f"host kill switch on {host}\n")
        return
    started = min((f.get("injected_at") or 0 for f in faults), default=0) + max(
        (f.get("inject_s") or 0 for f in faults), default=0)
    journal.append(directory, {"event": "probe", "phase": "detect", "host": host, "mode": "until_fail",
                               "ok": bool(probe.get("ok")), "changed_at": probe.get("changed_at"),
                               "results": probe.get("results") or [],
                               "elapsed_s": round(max((probe.get("changed_at") or 0) - started, 0), 3)})
    if probe.get("changed_at"):
        (directory / DETECTED).touch()  # the other hosts stop polling


class ActionModule(ActionBase):
    _supports_check_mode = False
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = dict(self._task.args)
        # Outside a drill (an ad-hoc call) there is no journal to keep.
        directory = journal.run_dir(str(args["drill"]), str(args["run_id"])) if args.get("drill") else None
        host = task_vars.get("inventory_hostname", "?")
        fault = dict(args.get("fault") or {})
        params = dict(fault.get("params") or {})
        secrets = {}
        if "password_var" in params:
            secrets["password"] = str(self._templar.template(task_vars.get(params.pop("password_var"), "")))
        fault["params"] = params
        module_args = {**args, "fault": fault, "secrets": secrets}
        out = self._execute_module(module_name="mayday_fault", module_args=module_args, task_vars=task_vars)
        faults = out.get("faults") or []
        if directory is None:
            pass
        elif args["op"] == "inject":
            for item in faults:
                journal.append(directory, {"event": "injected", "phase": "inject", "ok": True, **item,
                                           "host": host, "elapsed_s": item.get("inject_s")})
            if out.get("failed"):
                journal.append(directory, {"event": "error", "phase": "inject", "host": host, "ok": False,
                                           "msg": out.get("msg", "injection failed")})
            elif isinstance(out.get("probe"), dict):  # the detection's first slice, in the same round trip
                record_detect(directory, host, out["probe"], faults)
        else:
            journal.append(directory, {"event": "cleanup", "phase": "cleanup", "host": host,
                                       "ok": not out.get("failed"), "faults": faults,
                                       "msg": out.get("msg", ""),
                                       "elapsed_s": sum(f.get("remove_s", 0) for f in faults)})
        probe = out.get("probe") if isinstance(out.get("probe"), dict) else {}
        result.update(changed=bool(out.get("changed")), faults=faults, drill_failed=bool(out.get("failed")),
                      detected=bool(probe.get("changed_at")), msg=out.get("msg", ""))
        return result
