# The restore test (module mayday_drill_restore_test) with its result in the drill's journal.
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
        args = self._task.args
        directory = journal.run_dir(str(args["drill"]), str(args["run_id"]))
        db = self._templar.template(task_vars.get("mayday_db") or {})
        out = self._execute_module(module_name="mayday_drill_restore_test", task_vars=task_vars, module_args={
            "engine": db.get("engine"), "database": db.get("database"),
            "backup_dir": db.get("backup_dir", "/var/backups/mayday"), "timeouts": db.get("timeouts") or {}})
        keys = ("backup", "database", "engine", "scratch", "scratch_dropped", "tables", "restore_s", "data_age_s",
                "problems")
        journal.append(directory, {"event": "restore_test", "phase": "restore_test",
                                   "host": task_vars.get("inventory_hostname"), "ok": not out.get("failed"),
                                   "msg": out.get("msg", ""), "elapsed_s": out.get("restore_s"),
                                   **{k: out.get(k) for k in keys}})
        result.update(changed=False, msg=out.get("msg", ""), restore=dict((k, out.get(k)) for k in keys))
        return result
