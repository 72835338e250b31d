# Shared by the action plugins that run POSIX shell on a host: the script goes on stdin, not as an
# argument, because with become over SSH ansible adds a tty (-tt) to a command without input, and
# a tty turns newlines into CRLF and mixes stderr into the answer.
from __future__ import annotations

import os

import _mayday_path  # noqa: F401
from ansible.errors import AnsibleActionFail

from mayday import locks, rules

RUNNER = "/bin/sh -c 'eval \"$(cat)\"'"


def run_on_host(action, script: str) -> list[str]:
    out = action._low_level_execute_command(RUNNER, in_data=script.encode(), sudoable=True)
    if out.get("rc") != 0:
        raise AnsibleActionFail(f"on the host: {(out.get('stderr') or out.get('stdout') or '').strip()[:300]}")
    return (out.get("stdout") or "").strip().splitlines()


def break_lock_of(task_vars: dict) -> str | None:
    """The incident whose locks the operator said may be broken (-e mayday_break_lock, --break-lock);
    the scenario's open stage has refused anything that is not an incident id."""
    value = str(task_vars.get("mayday_break_lock") or "").strip()
    return value if rules.INCIDENT_ID.match(value) else None


def run_owner(incident: str, task_vars: dict) -> dict:
    """This run's lock owner record (the ansible-playbook process, this controller)."""
    return locks.owner(incident, os.environ.get("MAYDAY_RUN_ID"),
                       ", ".join(task_vars.get("ansible_inventory_sources") or []))
