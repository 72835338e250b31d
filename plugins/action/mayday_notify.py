# Sends one message to every configured channel from the controller (mayday.notify). A channel
# that fails is reported, never raised: a notification must not fail a rollback.
from __future__ import annotations

import os
import sys

from ansible.plugins.action import ActionBase

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _mayday_path  # noqa: F401

from mayday import notify


class ActionModule(ActionBase):
    _supports_check_mode = True
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        delivered = notify.send(list(args.get("channels") or []), args.get("message") or "",
                                args.get("event", "info"), args.get("incident"), dict(args.get("fields") or {}),
                                dry_run=bool(self._task.check_mode))
        failed = [d["channel"] for d in delivered if not d["ok"]]
        if failed:
            result["warnings"] = [f"notification not delivered on: {', '.join(failed)}"]
        result.update(changed=False, delivered=delivered, event=args.get("event", "info"),
                      msg=f"{len(delivered) - len(failed)} of {len(delivered)} channels delivered")
        return result
