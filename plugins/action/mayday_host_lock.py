# The per-host half of the run lock (mayday.locks): /var/lib/mayday/run.lock/owner on each host a
# scenario acts on, so two controllers or two AWX jobs exclude each other. mkdir is the atomic
# test-and-set; a POSIX shell probe, one round trip, no Python needed on the host. Taking the lock
# also proves the host answers, so it doubles as the pre-flight reachability check.
from __future__ import annotations

import os
import sys

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _mayday_path  # noqa: F401
from _mayday_exec import break_lock_of, run_on_host, run_owner

from mayday import locks


class ActionModule(ActionBase):
    _supports_check_mode = True
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        state = self._task.args.get("state", "present")
        incident = str(self._task.args.get("incident") or "")
        if not incident:
            raise AnsibleActionFail("incident is required")
        mine = run_owner(incident, task_vars or {})
        if state == "absent":
            if self._task.check_mode:
                return dict(result, changed=False, lock="untouched", msg="check mode: no lock was taken")
            said = run_on_host(self, locks.release_script(mine))
            released = said[0] if said else "?"
            return dict(result, changed=False, lock=released, msg=f"host lock {released}")
        dry = state == "query" or bool(self._task.check_mode)
        found = locks.judge_host_lock(run_on_host(self, locks.host_lock_script(mine, dry)), mine, dry,
                                      lambda script: run_on_host(self, script), break_lock_of(task_vars or {}))
        result.update(changed=False, msg=found.get("lock_msg", f"host lock {found['lock']}"), **found)
        return result
