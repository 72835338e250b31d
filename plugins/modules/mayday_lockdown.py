#!/usr/bin/python
# The lockdown record on a host: which containment steps an incident applied, with their leases and
# the state before them, so `lockdown confirm` and `lockdown lift` act on exactly those.
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_lockdown
short_description: Read, begin, complete, confirm or end the lockdown record of a host
description:
  - The record is C(/var/lib/mayday/lockdown.json) (0600, directory 0700). C(begin) writes it before
    any containment step (the steps planned, the incident, the lease length), so a lockdown that
    failed half-way is still lifted whole. C(done) records a step's lease and report. C(confirm)
    marks it confirmed. C(end) removes it. C(read) only reads.
  - C(begin) refuses when a record exists - one lockdown at a time per host. An unconfirmed record
    whose time is up and whose leases are all gone (the host undid every step at expiry) is read
    with C(expired=true) and no longer counts.
  - Check mode only reads.
options:
  op: {type: str, choices: [read, begin, done, confirm, end], default: read, description: What to do.}
  incident: {type: str, default: "", description: "begin - the incident."}
  steps: {type: list, elements: str, default: [], description: "begin - the steps planned on this host."}
  duration: {type: str, default: "", description: "begin - the lease length of the lockdown."}
  lease_min: {type: str, default: 1m, description: "begin - shortest lease allowed (refused before writing)."}
  lease_max: {type: str, default: 4h, description: "begin - longest lease allowed (refused before writing)."}
  step: {type: str, default: "", description: "done - the step."}
  result: {type: dict, default: {}, description: "done - the step's lease and report."}
author: mayday
"""

EXAMPLES = r"""
- name: Lockdown | the record before any step
  mayday_lockdown:
    op: begin
    incident: "{{ scenario_open.incident_id }}"
    steps: [rate_limit]
    duration: 30m
"""

RETURN = r"""
lockdown: {description: "The record (incident, started, steps, duration, done, confirmed), or null.", type: dict,
           returned: always}
"""

import calendar
import json
import os
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.mayday_lease import LeaseError, check_bounds, parse_duration

ROOT = "/var/lib/mayday"
RECORD = os.path.join(ROOT, "lockdown.json")
LEASES = os.path.join(ROOT, "leases")
STAMP = "%Y-%m-%dT%H:%M:%SZ"


def read():
    """The record; an unconfirmed one whose time is up and whose leases are all gone (the host undid
    every step on its own) is marked expired: it no longer counts as an active lockdown."""
    try:
        with open(RECORD) as handle:
            record = json.load(handle)
    except FileNotFoundError:
        return None
    leases = [step.get("lease") or {} for step in record.get("done", {}).values()]
    live = [lease for lease in leases
            if lease.get("id") and os.path.exists(os.path.join(LEASES, lease["id"] + ".json"))]
    try:
        ends = calendar.timegm(time.strptime(record["started"], STAMP)) + parse_duration(record.get("duration") or "0s")
    except (KeyError, ValueError, LeaseError):
        ends = 0
    record["expired"] = not record.get("confirmed") and not live and time.time() > ends
    return record


def write(record):
    os.makedirs(ROOT, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=ROOT, prefix=".lockdown-")
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle, indent=2, sort_keys=True)
    os.chmod(tmp, 0o600)
    os.replace(tmp, RECORD)


def main():
    module = AnsibleModule(
        argument_spec={
            "op": {"type": "str", "choices": ["read", "begin", "done", "confirm", "end"], "default": "read"},
            "incident": {"type": "str", "default": ""},
            "steps": {"type": "list", "elements": "str", "default": []},
            "duration": {"type": "str", "default": ""},
            "lease_min": {"type": "str", "default": "1m"},
            "lease_max": {"type": "str", "default": "4h"},
            "step": {"type": "str", "default": ""},
            "result": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    p = module.params
    record = read()
    if p["op"] == "begin":
        try:  # a lease the steps would refuse: refused here, before the record is written (also dry)
            check_bounds(parse_duration(p["duration"]), parse_duration(p["lease_min"]), parse_duration(p["lease_max"]))
        except LeaseError as exc:
            module.fail_json(msg=str(exc), refused=True, lockdown=record)
    if p["op"] == "read" or module.check_mode:
        module.exit_json(changed=p["op"] != "read" and (record is not None or p["op"] == "begin"), lockdown=record)
    if p["op"] == "begin":
        if record is not None and not record["expired"]:
            module.fail_json(msg=f"a lockdown is active on this host since {record.get('started')} (incident "
                                 f"{record.get('incident')}): `mayday lockdown lift` or confirm it first",
                             refused=True, lockdown=record)
        record = {"incident": p["incident"], "started": time.strftime(STAMP, time.gmtime()),
                  "steps": p["steps"], "duration": p["duration"], "done": {}, "confirmed": False}
    elif record is None:
        module.exit_json(changed=False, lockdown=None)
    elif p["op"] == "done":
        record["done"][p["step"]] = p["result"]
    elif p["op"] == "confirm":
        record["confirmed"] = True
        record["confirmed_at"] = time.strftime(STAMP, time.gmtime())
    if p["op"] == "end":
        os.remove(RECORD)
        module.exit_json(changed=True, lockdown=None, ended=record)
    record.pop("expired", None)
    write(record)
    module.exit_json(changed=True, lockdown=record)


if __name__ == "__main__":
    main()
