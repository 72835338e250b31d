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
from mayday.scenarios import SCENARIOS

DOCUMENTATION = r"""
name: mayday_timeline
type: aggregate
short_description: Incident timeline and run history for mayday playbooks
description:
  - Appends one event per task and host to incidents/<id>/timeline.jsonl once a mayday_incident
    task has opened the incident, and writes runs/<run id>/mayday-run.json.
  - The state directory is MAYDAY_STATE_DIR, else .mayday in the working directory.
  - Progress updates (mayday.notify_progress) go to the run's notification channels that want
    them, at phase changes; with none, nothing more is done per task.
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
        self.play = None
        self.progress = None

    def v2_playbook_on_start(self, playbook):
        self.playbook = os.path.basename(playbook._file_name)
        self._write_run(status="running")

    def v2_playbook_on_play_start(self, play):
        self.play = play

    def v2_playbook_on_task_start(self, task, is_conditional):
        if self.progress is not None:
            self.progress.tick(_phase(task.name or ""))  # get_name() prefixes the role's name

    # -- progress updates -----------------------------------------------------------------------
    def _run_channels(self, result, incident_dir):
        """This run's channels (the security ones for a security scenario), templated as the finish
        stage sees them: inventory, vault, extra vars. Kept in memory only: they hold secrets."""
        from ansible.template import Templar

        meta = mayday_records.read_json(os.path.join(incident_dir, "incident.json"))
        name = str(meta.get("scenario") or "")
        scenario = SCENARIOS.get(name) or SCENARIOS.get(name.split("-")[0])  # level2-database: level2
        play = self.play
        assert play is not None
        variables = play.get_variable_manager().get_vars(play=play, host=result._host, task=result._task,
                                                         include_hostvars=False)
        templar = Templar(loader=play._loader, variables=variables)
        channels = templar.template(variables.get("mayday_notify_channels") or [])
        if scenario is not None and scenario.channel == "security":
            channels = templar.template(variables.get("mayday_notify_channels_security") or []) or channels
        return [c for c in channels if isinstance(c, dict)] if isinstance(channels, list) else []

    def _start_progress(self, result, opened):
        self._stop_progress()
        if self.play is None or result._task.check_mode:
            return
        try:
            from mayday import notify_progress

            channels = self._run_channels(result, opened["dir"])
            self.progress = notify_progress.for_incident(channels, opened["dir"], self.t0)
        except Exception as exc:  # progress is a courtesy: it never breaks the run
            self._display.warning(f"mayday: no progress updates ({type(exc).__name__})")
            self.progress = None

    def _stop_progress(self):
        if self.progress is None or self.incident is None:
            return
        report = os.path.join(self.incident["dir"], "report.json")
        outcome = mayday_records.read_json(report).get("outcome") if os.path.exists(report) else "ended"
        self.progress.close(outcome or "ended")
        self.progress = None

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
            self._stop_progress()
            self.incident = opened
            self.incidents.append(opened["id"])
            self._start_progress(result, opened)
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
        self._stop_progress()
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
