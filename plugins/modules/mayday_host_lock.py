# Documentation stub: the work is done by the action plugin of the same name (plugins/action/),
# on the controller, so `ansible-doc mayday_host_lock` finds it.
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_host_lock
short_description: Take, release or read the mayday run lock on a host
description:
  - The per-host half of mayday's run lock, C(/var/lib/mayday/run.lock/owner), naming the incident,
    operator, controller host, pid and process start time of the run holding it. Two controllers
    or two AWX jobs acting on the same host exclude each other.
  - A lock whose owner process is gone on this same controller (pid plus start time) is stale and
    is broken atomically. So is a lock of another controller held by the incident named in the
    variable C(mayday_break_lock) (C(mayday --break-lock INC-...)), never one of a run alive on this
    controller. Check mode never takes or breaks a lock; it reports whether it is free.
  - Runs as an action plugin over a POSIX shell; no Python is needed on the host.
options:
  state:
    description: C(present) takes the lock, C(absent) releases it only if this run holds it, C(query) reads it.
    type: str
    choices: [present, absent, query]
    default: present
  incident:
    description: The incident id of this run (recorded in the lock).
    type: str
    required: true
author: mayday
"""

EXAMPLES = r"""
- name: Pre-flight | lock every host
  mayday_host_lock:
    state: present
    incident: "{{ scenario_open.incident_id }}"
  register: scenario_reach
"""

RETURN = r"""
lock: {description: "taken, held, free, released, other or symlink.", type: str, returned: always}
holder: {description: The owner record of a lock held by another run., type: dict, returned: when held}
stale_replaced: {description: The owner of a stale lock that was broken., type: dict, returned: when broken}
"""
