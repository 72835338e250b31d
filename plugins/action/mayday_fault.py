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
        else:
            journal.append(directory, {"event": "cleanup", "phase": "cleanup", "host": host,
                                       "ok": not out.get("failed"), "faults": faults,
                                       "msg": out.get("msg", ""),
                                       "elapsed_s": sum(f.get("remove_s", 0) for f in faults)})
        result.update(changed=bool(out.get("changed")), faults=faults, drill_failed=bool(out.get("failed")),
                      msg=out.get("msg", ""))
        return result
