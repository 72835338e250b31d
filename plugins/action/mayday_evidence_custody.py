# On the controller, after the evidence archive and its manifest were fetched: modes tightened,
# the copy re-hashed against the host's sha256 and the manifest, then the custody record written.
from __future__ import annotations

import os
import sys

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _mayday_path  # noqa: F401

from mayday import evidence


class ActionModule(ActionBase):
    _supports_check_mode = False
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        missing = [k for k in ("dir", "incident", "host", "sha256") if not args.get(k)]
        if missing:
            raise AnsibleActionFail(f"missing arguments: {', '.join(missing)}")
        try:
            record = evidence.write_custody(args["dir"], incident=args["incident"], host=args["host"],
                                            source=dict(args.get("source") or {}), expected_sha256=args["sha256"],
                                            run_id=os.environ.get("MAYDAY_RUN_ID"))
        except (OSError, ValueError) as exc:
            result.update(failed=True, changed=False, msg=f"{args['host']}: evidence copy does not verify: {exc}")
            return result
        result.update(changed=True, custody=record, custody_path=os.path.join(args["dir"], evidence.CUSTODY),
                      msg=f"{args['host']}: evidence verified on the controller, sha256 {record['archive']['sha256']}")
        return result
