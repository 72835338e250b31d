# One rollback at a time per inventory: a lock file in the state directory, owned by the
# ansible-playbook process. A lock whose process is gone (killed, crashed) is stale and replaced.
from __future__ import annotations

import os
import sys

from ansible.plugins.action import ActionBase

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _mayday_path  # noqa: F401
import mayday_records

DOCUMENTATION = r"""
action: mayday_lock
short_description: Take or release the per-inventory rollback lock
options:
  state: {description: present takes the lock, absent releases it., choices: [present, absent], required: true}
  incident: {description: Incident id recorded in the lock.}
"""


class ActionModule(ActionBase):
    _supports_check_mode = True
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        sources = list((task_vars or {}).get("ansible_inventory_sources") or [])
        # Workers are forked from the ansible-playbook process: its pid lives as long as the run.
        owner_pid = os.getppid()
        if self._task.args.get("state") == "absent":
            result.update(changed=False, released=mayday_records.release_lock(sources, owner_pid))
            return result
        got = mayday_records.acquire_lock(sources, {"pid": owner_pid, "incident": self._task.args.get("incident"),
                                                    "run_id": os.environ.get("MAYDAY_RUN_ID")})
        result.update(changed=False, acquired=got["acquired"], lock=got["holder"],
                      stale_replaced=got["stale_replaced"])
        if not got["acquired"]:
            holder = got["holder"]
            result.update(failed=True, refused=True, msg=(
                f"another rollback holds the lock for this inventory: incident {holder.get('incident')}, "
                f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')} "
                f"({mayday_records.lock_path(sources)}); wait for it to finish"))
        elif got["stale_replaced"]:
            result["msg"] = f"replaced a stale lock left by pid {got['stale_replaced'].get('pid')}"
        return result
