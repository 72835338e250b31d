# Opens, annotates and closes an incident record on the controller (the state directory).
# Records are bookkeeping, not host state: the task never reports "changed".
from __future__ import annotations

import getpass
import os
import sys

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _mayday_path  # noqa: F401

from mayday import records as mayday_records
from mayday.outcomes import OUTCOMES


class ActionModule(ActionBase):
    _supports_check_mode = True
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        state = args.get("state")
        task_vars = task_vars or {}
        if state == "open":
            meta = {
                "scenario": args.get("scenario"),
                "severity": args.get("severity"),
                "title": args.get("title"),
                "hosts": list(args.get("hosts") or []),
                "inventory": ", ".join(task_vars.get("ansible_inventory_sources") or []),
                "dry_run": bool(self._task.check_mode),
                "operator": os.environ.get("MAYDAY_OPERATOR") or getpass.getuser(),
                "run_id": os.environ.get("MAYDAY_RUN_ID"),
                "extra_vars_release": args.get("release"),
            }
            incident_id, path = mayday_records.open_incident(meta)
            result.update(mayday_incident={"id": incident_id, "dir": path}, incident_id=incident_id,
                          incident_dir=path, msg=f"opened {incident_id}")
        elif state == "event":
            mayday_records.append_event(self._incident_dir(args), {
                "started": mayday_records.utc_now(), "duration_s": 0, "host": None,
                "phase": args.get("phase"), "step": args.get("event"), "result": "note"})
            result["msg"] = args.get("event")
        elif state == "measure":
            result["downtime"] = mayday_records.measure_downtime(
                mayday_records.read_timeline(self._incident_dir(args)))
        elif state == "close":
            outcome = args.get("outcome")
            if outcome not in OUTCOMES:
                raise AnsibleActionFail(f"outcome must be one of {', '.join(OUTCOMES)}")
            if self._task.check_mode and outcome != "REFUSED":
                outcome = "DRY-RUN"
            report = mayday_records.close_incident(self._incident_dir(args), outcome, args.get("summary") or "",
                                                   dict(args.get("extra") or {}))
            result.update(report_md=os.path.join(self._incident_dir(args), "report.md"),
                          report_json=os.path.join(self._incident_dir(args), "report.json"),
                          outcome=outcome, downtime=report["downtime"],
                          msg=f"{report['incident']}: {outcome}")
        else:
            raise AnsibleActionFail("state must be one of open, event, measure, close")
        result["changed"] = False
        return result

    @staticmethod
    def _incident_dir(args):
        path = args.get("incident_dir")
        if not path or not os.path.isdir(path):
            raise AnsibleActionFail(f"incident_dir {path!r} does not exist: open the incident first")
        return path
