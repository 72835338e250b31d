# Records every task result into the open incident's timeline and writes a run record, so plain
# ansible-playbook, the mayday CLI and AWX leave the same audit trail. Results are reduced to a
# few known fields; no_log results keep only their status.
from __future__ import annotations

import os
import socket
import sys
import time
import uuid

from ansible.plugins.callback import CallbackBase

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "action"))
import _mayday_path  # noqa: F401

from mayday import locks
from mayday import records as mayday_records

DOCUMENTATION = r"""
name: mayday_timeline
type: aggregate
short_description: Incident timeline and run history for mayday playbooks
description:
  - Appends one event per task and host to incidents/<id>/timeline.jsonl once a mayday_incident
    task has opened the incident, and writes runs/<run id>/mayday-run.json.
  - The state directory is MAYDAY_STATE_DIR, else .mayday in the working directory.
requirements: [enable in ansible.cfg callbacks_enabled]
"""

# Bookkeeping tasks that say nothing in a timeline unless they fail.
QUIET_ACTIONS = {"validate_argument_spec", "ansible.builtin.validate_argument_spec", "set_fact",
                 "ansible.builtin.set_fact", "assert", "ansible.builtin.assert"}
KEPT_FIELDS = ("ok", "release", "health", "restored", "delivered", "outcome", "refused", "lock", "stale_replaced")


def _phase(task_name: str) -> str:
    # Task names read "<Phase> | <what>", so the report can group steps by phase.
    return task_name.split("|")[0].strip() if "|" in task_name else ""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "mayday_timeline"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_id = os.environ.get("MAYDAY_RUN_ID") or (
            time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6])
        self.started = mayday_records.utc_now()
        self.t0 = time.monotonic()
        self.playbook = None
        self.incident = None
        self.incidents = []
        self.pending = []
        self.task_started = {}
        self.failed_hosts = set()

    def v2_playbook_on_start(self, playbook):
        self.playbook = os.path.basename(playbook._file_name)
        self._write_run(status="running")

    def v2_runner_on_start(self, host, task):
        self.task_started[(host.get_name(), task._uuid)] = (mayday_records.utc_now(), time.monotonic())

    def _record(self, result, status):
        task, host = result._task, result._host.get_name()
        started, t0 = self.task_started.pop((host, task._uuid), (mayday_records.utc_now(), time.monotonic()))
        res = result._result
        opened = res.get("mayday_incident")
        if opened and opened != self.incident:
            # A second incident in one run is a hand-over (performance -> Level 1): its events go to it.
            self._flush()
            self.incident = opened
            self.incidents.append(opened["id"])
        if status == "ok" and task.action in QUIET_ACTIONS:
            return
        name = task.name or task.action
        event = {
            "started": started,
            "duration_s": round(time.monotonic() - t0, 3),
            "host": host,
            "phase": _phase(name),
            "step": name.split("|", 1)[-1].strip(),
            "result": "changed" if status == "ok" and res.get("changed") else status,
        }
        if res.get("_ansible_no_log") or task.no_log:
            event["detail"] = "output hidden (no_log)"
        else:
            msg = res.get("msg")
            if msg:
                event["detail"] = str(msg)[:500]
            event.update({k: res[k] for k in KEPT_FIELDS if k in res})
            if isinstance(res.get("steps"), list):
                event["steps"] = res["steps"]
        if status in ("failed", "unreachable") and not res.get("_ansible_ignore_errors"):
            self.failed_hosts.add(host)
        self.pending.append(event)
        self._flush()

    def _flush(self):
        if not self.incident:
            return
        for event in self.pending:
            mayday_records.append_event(self.incident["dir"], event)
        self.pending = []

    def v2_runner_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "ignored" if ignore_errors else "failed")

    def v2_runner_on_skipped(self, result):
        self.task_started.pop((result._host.get_name(), result._task._uuid), None)  # not recorded

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        hosts = sorted(stats.processed.keys())
        summary = {h: stats.summarize(h) for h in hosts}
        failed = any(s["failures"] or s["unreachable"] for s in summary.values())
        self._write_run(status="failed" if failed else "successful", stats=summary)

    def _write_run(self, status, stats=None):
        outcome = scenario = None
        if self.incident:
            first = os.path.join(os.path.dirname(self.incident["dir"]), self.incidents[0])
            scenario = mayday_records.read_json(os.path.join(first, "incident.json")).get("scenario")
            report = os.path.join(self.incident["dir"], "report.json")
            if os.path.exists(report):
                outcome = mayday_records.read_json(report).get("outcome")
        mayday_records.write_run(self.run_id, {
            "run_id": self.run_id,
            # Who is running: `mayday status` tells a live run from one whose process died.
            "pid": os.getpid(),
            "pid_start": locks.process_start(os.getpid()),
            "controller": socket.gethostname(),
            "playbook": self.playbook,
            "scenario": scenario or self.playbook,
            "started": self.started,
            "duration_s": round(time.monotonic() - self.t0, 1),
            "status": status,
            "incident": self.incidents[0] if self.incidents else None,
            # Every incident this run opened, in order; the last one is where a hand-over ended.
            "incidents": self.incidents,
            "outcome": outcome,
            "stats": stats,
        })
