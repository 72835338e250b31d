# Sends one message to the configured channels from the controller (mayday.notify), routed by
# severity, with bounded retries and a fallback. A channel that fails is reported, never raised: a
# notification must not fail a rollback.
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
        fields = dict(args.get("fields") or {})
        if args.get("severity") not in (None, ""):
            fields["severity"] = args["severity"]
        delivered = notify.send(list(args.get("channels") or []), args.get("message") or "",
                                args.get("event", "info"), args.get("incident") or None, fields,
                                dry_run=bool(self._task.check_mode), fallback=args.get("fallback") or None)
        failed = notify.failed_channels(delivered)
        sent = [d for d in delivered if not d.get("skipped")]
        if failed:
            why = "; ".join(f"{d['channel']}: {d['detail']}" for d in delivered if not d["ok"])
            rescued = sorted({d["fallback"] for d in delivered if d.get("fallback") and d.get("fallback_ok")})
            result["warnings"] = [f"notification not delivered on: {', '.join(failed)} ({why})"
                                  + (f"; written to fallback {', '.join(rescued)}" if rescued else "")]
        result.update(changed=False, delivered=delivered, notify_failed=failed, event=args.get("event", "info"),
                      msg=f"{len(sent) - len(failed)} of {len(sent)} channels delivered")
        return result
