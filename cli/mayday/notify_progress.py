"""Progress updates during a run, in seed 002's form (step n of N, phase, elapsed, ETA), fed by the
timeline callback at every task start.

At most one update per phase change and none sooner than `progress_every` seconds (default 15)
after the previous one; Slack with a bot token edits one message in place (chat.postMessage, then
chat.update); webhook and file channels append an update only with `progress: true`; e-mail and
PagerDuty never get progress. PagerDuty instead pages when a run of a severity listed in its
`page_running_after` (default P0 after 300 s, seed 003) is still going.

Everything is sent from one background thread: a slow or dead channel never holds up the run, and
a channel that fails once gets no more updates in this run. With no channel that wants progress or
a running page, the notifier is not created and the callback does nothing more per task.
"""

from __future__ import annotations

import functools
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mayday import notify, records
from mayday import notify_channels as ch
from mayday.notify_channels import Notice

DEFAULT_EVERY_S = 15.0
HISTORY_RUNS = 40  # newest run records read for a typical duration


def progress_mode(channel: dict[str, Any]) -> str:
    """edit (one message updated in place), append (one message per update) or "" (none)."""
    kind, setting = channel.get("type"), channel.get("progress")
    if setting is False or kind in ("email", "pagerduty"):
        return ""
    if kind == "slack" and ch.secret(channel, "token") and channel.get("channel"):
        return "edit"
    return "append" if setting is True and not ch.missing_settings(channel) else ""


@dataclass
class Update:
    number: int
    incident: str
    title: str
    phases: list[str]
    step: int
    phase: str
    elapsed_s: float
    eta_s: float | None
    outcome: str = ""
    actions: list[str] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.phases)

    def text(self) -> str:
        done = self.steps if self.outcome else max(0, self.step - 1)
        lines = [f"ROLLBACK UPDATE #{self.number}", "", f"Rollback ID: {self.incident}",
                 f"Progress: [{done}/{self.steps}] steps completed (step {self.step} of {self.steps})",
                 f"Current Phase: {'finished: ' + self.outcome if self.outcome else self.phase}",
                 f"Time Elapsed: {_duration(self.elapsed_s)}",
                 f"ETA: {'-' if self.outcome else ('unknown' if self.eta_s is None else '~' + _duration(self.eta_s))}",
                 "", "Latest Actions:"]
        for index, name in enumerate(self.phases, start=1):
            state = ("Completed" if self.outcome or index < self.step
                     else "In progress" if index == self.step else "Pending")
            lines.append(f"- {name} {state}")
        return "\n".join(lines)

    def payload(self) -> dict[str, Any]:
        return {"text": self.text(), "event": "progress", "incident": self.incident, "update": self.number,
                "step": self.step, "steps": self.steps, "phase": self.phase, "elapsed_s": round(self.elapsed_s, 1),
                "eta_s": None if self.eta_s is None else round(self.eta_s, 1), "outcome": self.outcome or None,
                "sent_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def slack(self) -> dict[str, Any]:
        head = f"{self.incident} {self.title}: " + (f"finished, {self.outcome}" if self.outcome
                                                    else f"step {self.step} of {self.steps}, {self.phase}")
        return {"text": head, "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": head[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "```" + self.text() + "```"}}]}


def _duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    return f"{whole // 60}m {whole % 60:02d}s"


def estimate(elapsed: float, step: int, steps: int, typical: float | None) -> float | None:
    """Time left: the scenario's typical duration when runs are on record, else the pace so far."""
    if typical:
        return max(0.0, typical - elapsed)
    if step > 1 and steps:
        return elapsed / (step - 1) * (steps - step + 1)
    return None


def typical_duration(scenario: str) -> float | None:
    """Median duration of this scenario's recent runs that recovered or finished."""
    root = os.path.join(records.state_dir(), "runs")
    try:
        names = sorted(os.listdir(root))[-HISTORY_RUNS:]
    except OSError:
        return None
    durations = []
    for name in names:
        try:
            run = records.read_json(os.path.join(root, name, "mayday-run.json"))
        except (OSError, ValueError):
            continue
        if run.get("scenario") == scenario and run.get("outcome") in ("RECOVERED", "DONE", "NOOP"):
            durations.append(float(run.get("duration_s") or 0))
    return statistics.median(durations) if durations else None


class ProgressNotifier:
    def __init__(self, channels: list[dict[str, Any]], meta: dict[str, Any], phases: list[str], started: float,
                 clock: Callable[[], float] = time.monotonic, typical: float | None = None):
        self.meta, self.phases, self.started, self.clock = meta, list(phases), started, clock
        self.typical = typical
        severity = str(notify.incident_fields(meta, "", "")["severity"])  # an alert's own severity first
        named = [(notify.channel_name(c, i), c) for i, c in enumerate(channels) if isinstance(c, dict)]
        self.targets = [(n, c, progress_mode(c)) for n, c in named if progress_mode(c)]
        self.pagers = [(n, c, notify.page_running_after(c)[severity]) for n, c in named
                       if c.get("type") == "pagerduty" and not ch.missing_settings(c) and notify.routed(c, severity)
                       and severity in notify.page_running_after(c)]
        self.every = min([float(c.get("progress_every", DEFAULT_EVERY_S)) for _, c, _ in self.targets] or [0.0])
        self.sent: list[dict[str, Any]] = []  # every delivery, for the tests and the record
        self.phase, self.step, self.number = "", 0, 0
        self.last_sent: float | None = None
        self.dirty = False
        self.paged = False
        self.slack_ts: dict[str, tuple[str, str]] = {}
        self.broken: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._jobs: list[Callable[[], None]] = []
        self._stop = False
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return bool(self.targets or self.pagers)

    # -- called by the callback, on the run's thread: cheap, never blocking ------------------------
    def tick(self, phase: str) -> None:
        now = self.clock()
        if phase and phase != self.phase:
            self.phase = phase
            if phase in self.phases:
                self.step = self.phases.index(phase) + 1
            self.dirty = bool(self.targets)
        if self.dirty and (self.last_sent is None or now - self.last_sent >= self.every):
            self.dirty, self.last_sent = False, now
            update = self._update(now)
            self._submit(lambda: self._send_update(update))
        for name, channel, after in self.pagers:
            if not self.paged and now - self.started >= after:
                self.paged = True
                self._submit(functools.partial(self._page, name, channel, after))

    def close(self, outcome: str, wait: float = 2.0) -> None:
        """The last update (finished: outcome), then stop; waits at most `wait` seconds."""
        if self.targets and self.number:
            update = self._update(self.clock(), outcome)
            self._submit(lambda: self._send_update(update))
        with self._lock:
            self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(wait)

    def _update(self, now: float, outcome: str = "") -> Update:
        self.number += 1
        elapsed = now - self.started
        steps = len(self.phases)
        return Update(self.number, str(self.meta.get("incident") or ""), str(self.meta.get("title") or ""),
                      self.phases, self.step or 1, self.phase, elapsed,
                      None if outcome else estimate(elapsed, self.step or 1, steps, self.typical), outcome)

    def _submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            self._jobs.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="mayday-progress", daemon=True)
                self._thread.start()
        self._wake.set()

    def _work(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                self._wake.clear()
                jobs, self._jobs = self._jobs, []
                stop = self._stop
            for job in jobs:
                try:
                    job()
                except Exception as exc:  # a notifier must never take the run down
                    self.sent.append({"ok": False, "detail": type(exc).__name__})
            if stop and not self._jobs:
                return

    # -- on the background thread ---------------------------------------------------------------
    def _send_update(self, update: Update) -> None:
        for name, channel, mode in self.targets:
            if name in self.broken:
                continue
            done = ch.with_retries(channel, lambda timeout, c=channel, n=name, m=mode: self._deliver(n, c, m, update,
                                                                                                       timeout))
            self.sent.append({"channel": name, "update": update.number, **done})
            if not done["ok"]:
                self.broken.add(name)  # one failure: no more updates to it in this run

    def _deliver(self, name: str, channel: dict[str, Any], mode: str, update: Update, timeout: float) -> str:
        kind = channel["type"]
        if mode == "edit":
            body = update.slack()
            if name in self.slack_ts:
                where, ts = self.slack_ts[name]
                ch.slack_api(channel, "chat.update", {"channel": where, "ts": ts, **body}, timeout)
                return f"updated (ts {ts})"
            answer = ch.slack_api(channel, "chat.postMessage", {"channel": channel["channel"], **body}, timeout)
            self.slack_ts[name] = (str(answer.get("channel") or channel["channel"]), str(answer.get("ts")))
            return f"posted (ts {answer.get('ts')})"
        if kind == "file":
            return ch.append_file(channel, update.payload())
        if kind == "slack":
            status, _ = ch.post_json(ch.secret(channel, "url"), update.slack(), timeout)
            return f"HTTP {status}"
        status, _ = ch.post_json(ch.secret(channel, "url"), update.payload(), timeout)
        return f"HTTP {status}"

    def _page(self, name: str, channel: dict[str, Any], after: float) -> None:
        meta = self.meta
        fields = notify.incident_fields(meta, "RUNNING", f"still running after {int(after)} s without recovering")
        fields["why"] = f"a {fields['severity']} run not recovered within {int(after)} s pages (seed 003)"
        notice = Notice(f"{meta.get('incident')} {meta.get('title') or meta.get('scenario')}: still not recovered "
                        f"after {int(after)} s", "escalation", meta.get("incident"), fields)
        self.sent.append(notify.page_now(name, channel, notice))


def for_incident(channels: list[dict[str, Any]], incident_dir: str, started: float) -> ProgressNotifier | None:
    """A notifier for this run's incident, or None when no channel wants progress or a running page."""
    if not channels:
        return None
    try:
        meta = records.read_json(os.path.join(incident_dir, "incident.json"))
    except (OSError, ValueError):
        return None
    if meta.get("dry_run"):
        return None  # a dry run sends nothing
    from mayday.scenarios import SCENARIOS

    name = str(meta.get("scenario") or "")
    scenario = SCENARIOS.get(name) or SCENARIOS.get(name.split("-")[0])  # level2-database: level2
    notifier = ProgressNotifier(channels, meta, list(scenario.phases if scenario else ()), started)
    if not notifier.active:
        return None
    if notifier.targets:
        notifier.typical = typical_duration(str(meta.get("scenario") or ""))
    return notifier
