# A drill's probes on one host (module mayday_fault, op probe), polled in short slices so the
# controller's kill switch is seen between two of them; each result lands in the drill's journal.
from __future__ import annotations

import os
import sys
import time

from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _mayday_path  # noqa: F401

from mayday.drills import journal

SLICE_S = 2.0
DETECTED = "detected"  # a file in the run's directory: one host saw the fault, the others stop polling


class ActionModule(ActionBase):
    _supports_check_mode = False
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        drill, run_id = str(args.pop("drill")), str(args.pop("run_id"))
        directory = journal.run_dir(drill, run_id)
        phase = str(args.pop("phase"))
        host = task_vars.get("inventory_hostname") if task_vars else "?"
        mode = args.get("mode", "once")
        window = float(args.get("window_s", 0))
        # Recovery on a fault host: the first slice also removes the faults once the steady state is back,
        # then checks it holds with them gone (module mayday_fault, one round trip); the playbook's cleanup
        # then skips this host.
        remove_faults = boolean(args.pop("remove_faults", False), strict=False) and mode == "until_ok"
        removed = False
        started = time.monotonic()
        deadline = started + window
        last: dict = {}
        rounds = 0
        while True:
            switch = next((f for f in (journal.controller_stop_file(), directory / journal.STOP_FILE) if f.exists()),
                          None)
            if switch:
                why = switch.read_text().strip() if switch.parent == directory else ""
                journal.append(directory, {"event": "stopped", "phase": phase, "host": host,
                                           "reason": why or f"controller kill switch {switch}"})
                last = {"stopped": True, "ok": False, "results": last.get("results", [])}
                break
            if mode == "until_fail" and (directory / DETECTED).exists():
                break  # another host saw the fault already
            left = max(0.0, deadline - time.monotonic())
            rounds += 1
            if remove_faults and rounds == 1:
                last = self._execute_module(module_name="mayday_fault", task_vars=task_vars, module_args={
                    "op": "remove", "run_id": run_id, "drill": drill,
                    "probe": {**args, "window_s": min(left, SLICE_S), "confirm": True}})
                removed = self._record_removal(directory, host, last)
                if isinstance(last.get("probe"), dict):  # a failed removal still reports the recovery
                    last = dict(last["probe"])
            else:  # the module the faults use: one module built per run, not two (about 0.3 s of CPU)
                out = self._execute_module(module_name="mayday_fault", task_vars=task_vars, module_args={
                    "op": "probe", "run_id": run_id, "drill": drill, "probe": {**args, "window_s": min(left, SLICE_S)}})
                last = dict(out["probe"]) if isinstance(out.get("probe"), dict) and not out.get("failed") else out
            if last.get("failed"):
                journal.append(directory, {"event": "error", "phase": phase, "host": host, "ok": False,
                                           "msg": last.get("msg", "probe failed to run")})
                break
            if last.get("stopped"):
                journal.append(directory, {"event": "stopped", "phase": phase, "host": host,
                                           "reason": "host kill switch /var/lib/mayday/drill-stop"})
                (directory / journal.STOP_FILE).write_text(f"host kill switch on {host}\n")  # every host stops
                break
            if mode == "until_fail" and last.get("changed_at"):
                (directory / DETECTED).touch()
            if mode == "once" or last.get("changed_at") or time.monotonic() >= deadline:
                break
            if mode == "until_fail" and (directory / DETECTED).exists():
                break
        elapsed = round(time.monotonic() - started, 3)
        if last and not last.get("failed") and not last.get("stopped"):
            journal.append(directory, {"event": "probe", "phase": phase, "host": host, "mode": mode,
                                       "ok": bool(last.get("ok")), "changed_at": last.get("changed_at"),
                                       "results": last.get("results") or [], "elapsed_s": elapsed})
            if last.get("confirmed") is not None:  # the steady state checked again in the same round trip
                confirmed = last["confirmed"]
                journal.append(directory, {"event": "probe", "phase": "steady_after", "host": host, "mode": "once",
                                           "ok": all(r["ok"] for r in confirmed), "results": confirmed,
                                           "elapsed_s": min(float(args.get("interval_s", 1)), 0.5)})
        result.update(changed=False, ok=bool(last.get("ok")), stopped=bool(last.get("stopped")),
                      changed_at=last.get("changed_at"), results=last.get("results") or [], elapsed_s=elapsed,
                      removed=removed)
        return result

    @staticmethod
    def _record_removal(directory, host, out) -> bool:
        """The faults' removal done with the recovery probes, journalled as mayday_fault's cleanup is."""
        faults = out.get("faults") or []
        if not out.get("failed") and not out.get("removed"):
            return False  # not back yet: nothing removed
        journal.append(directory, {"event": "cleanup", "phase": "cleanup", "host": host, "ok": not out.get("failed"),
                                   "faults": faults, "msg": out.get("msg", ""),
                                   "elapsed_s": sum(f.get("remove_s", 0) for f in faults)})
        return not out.get("failed")
