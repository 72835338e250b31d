"""What a scenario run does when the operator's CLI is interrupted.

- Ctrl-C or SIGTERM, the first time: the run is marked interrupted. Before the pre-flight verdict it
  stops there (REFUSED, nothing on any host changed); once hosts are changing it stops at the
  scenario's next safe point (roles/scenario `gate`: before a data-corruption restore, before a
  lockdown's containment) or finishes (verify, report, notify, unlock) rather than leave them
  half-done.
- The second time: the run is abandoned now, as a dead controller would leave it. Every scenario is
  built to survive that (the host-side units, leases and restore phases finish or undo their own
  step); the CLI closes the incident record ABANDONED, and the locks left behind are stale and
  replaced by the next run.
- A read-only run (`mayday status`, `mayday backups`) ends at the first interrupt.
- SIGHUP (the terminal or the SSH session to the bastion went away): ignored. The run finishes and
  leaves its record; what it would have printed to the lost terminal is dropped.

ansible-runner's own handler would SIGKILL ansible-playbook at the first Ctrl-C, skipping the
rescue, the unlock and the record: the runner is given `should_abandon` as its cancel callback instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from types import FrameType, TracebackType

from mayday import records

FIRST_BEFORE_CHANGES = ("{sig}: stopping before the first change (the pre-flight refuses; nothing on any host "
                        "changes). Ctrl-C again abandons the run now.")
FIRST_WHILE_CHANGING = ("{sig}: hosts are already changing, so mayday does not stop mid-step: it stops at the "
                        "scenario's next safe point (before a restore, before containment) or finishes the run "
                        "(verify, report, notify, unlock). Ctrl-C again abandons it now: each host finishes or "
                        "undoes its own step, but nothing is verified, reported or sent.")
SECOND = "{sig} again: abandoning the run now, as if this controller had died."


def say(text: str) -> None:
    """To stderr without Python's buffers (safe inside a signal handler); a lost terminal is ignored."""
    with contextlib.suppress(OSError):
        os.write(2, f"\n{text}\n".encode())


class RunSignals:
    """Installed around one playbook run, in the main thread only (a thread, as in `mayday serve`,
    leaves the process's signals to its owner)."""

    def __init__(self, run_id: str, read_only: bool = False) -> None:
        self.run_id = run_id
        self.read_only = read_only  # `mayday status`, `backups`: nothing to finish, the first interrupt ends it
        self.count = 0
        self.hung_up = False
        self.changing = False  # the pre-flight verdict said go: hosts may be changing
        self._previous: dict[int, object] = {}

    def __enter__(self) -> RunSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 trace: TracebackType | None) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            self.hung_up = True
            return
        if self.read_only:
            self.count = 2  # nothing to finish: abandon at once
            say(f"{name}: stopped (a read-only run: nothing to finish).")
            return
        self.count += 1
        if self.count == 1:
            records.mark_interrupted(self.run_id, name)
            say((FIRST_WHILE_CHANGING if self.changing else FIRST_BEFORE_CHANGES).format(sig=name))
        elif self.count == 2:
            say(SECOND.format(sig=name))

    def should_abandon(self) -> bool:
        return self.count > 1
