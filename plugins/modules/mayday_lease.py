#!/usr/bin/python
# Leases: temporary emergency changes whose expiry the host enforces itself (systemd timer).
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_lease
short_description: Grant, extend, release and list leases on temporary emergency changes
description:
  - A lease is a record C(/var/lib/mayday/leases/<id>.json) (0600) holding the incident, what was
    changed, the commands that revert it (argv lists) and the expiry (UTC), plus a systemd
    transient timer C(mayday-lease-<id>) that runs the revert at expiry on the host, whether or not
    the controller is still there.
  - The first use installs C(/usr/local/lib/mayday/mayday_lease.py) (what the timers run) and the
    oneshot unit C(mayday-leases.service), enabled at boot, which reverts leases that expired while
    the host was down and re-arms the live ones.
  - C(grant) with a I(key) that already has a lease keeps its id and moves its expiry. C(extend)
    sets the expiry to I(duration) from now. C(release) disarms the timer and runs the revert now
    (I(revert=false) only forgets the lease, for a change already undone). C(list) only reads.
  - Check mode only reads and says what would change.
options:
  op: {type: str, choices: [grant, extend, release, list], default: list, description: What to do.}
  id: {type: str, description: "extend, release: the lease id (release also takes I(key))."}
  key: {type: str, default: "", description: "What the lease is about, one lease per key (grant, release)."}
  kind: {type: str, default: lease, description: "grant: the first word of a new lease id."}
  incident: {type: str, default: "", description: The incident that granted or extended it.}
  what: {type: str, default: "", description: "grant: the change, in words."}
  revert:
    type: list
    elements: list
    default: []
    description: "grant: the commands (argv lists) that undo the change, run in order; the first is the undo itself."
  env:
    type: dict
    default: {}
    no_log: true
    description: "grant: environment of the revert (kept 0600, never returned)."
  duration: {type: str, description: "grant, extend: how long, e.g. 30m, 2h, 1h30m, 5s."}
  lease_min: {type: str, default: 1m, description: Shortest lease allowed (inventory mayday_lease_min).}
  lease_max: {type: str, default: 4h, description: Longest lease allowed (inventory mayday_lease_max).}
  revert_now: {type: bool, default: true, description: "release: run the revert (false: only disarm and forget)."}
  host_label: {type: str, description: "Name of the host in the summary (inventory_hostname)."}
author: mayday
"""

EXAMPLES = r"""
- name: Lease | read-only for 30 minutes
  mayday_lease:
    op: grant
    key: db-read-only:mariadb:app
    incident: "{{ scenario_open.incident_id }}"
    what: MariaDB read_only
    revert: [[mariadb, -e, SET GLOBAL read_only = OFF]]
    duration: 30m
"""

RETURN = r"""
lease: {description: "The lease (no env): id, key, incident, what, revert, granted, expires, remaining_s, armed.",
        type: dict, returned: grant, extend, release}
leases: {description: Every lease on the host, soonest expiry first., type: list, returned: list}
installed: {description: Files of the lease mechanism written by this run., type: list, returned: always}
report: {description: What was seen and done, for the incident record., type: dict, returned: always}
summary: {description: One line naming the host., type: str, returned: always}
"""

import socket

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.mayday_lease import LeaseError, Leases, check_bounds, install, parse_duration, public


def main():
    module = AnsibleModule(
        argument_spec={
            "op": {"type": "str", "choices": ["grant", "extend", "release", "list"], "default": "list"},
            "id": {"type": "str"},
            "key": {"type": "str", "default": ""},
            "kind": {"type": "str", "default": "lease"},
            "incident": {"type": "str", "default": ""},
            "what": {"type": "str", "default": ""},
            "revert": {"type": "list", "elements": "list", "default": []},
            "env": {"type": "dict", "default": {}, "no_log": True},
            "duration": {"type": "str"},
            "lease_min": {"type": "str", "default": "1m"},
            "lease_max": {"type": "str", "default": "4h"},
            "revert_now": {"type": "bool", "default": True},
            "host_label": {"type": "str"},
        },
        supports_check_mode=True,
    )
    p = module.params
    host = p["host_label"] or socket.gethostname()
    check = module.check_mode
    leases = Leases()
    try:
        installed = [] if p["op"] == "list" else install(check_mode=check)
        now = leases.now()
        if p["op"] == "list":
            found = [dict(public(r, now), armed=leases.armed(r["id"])) for r in leases.all()]
            module.exit_json(changed=False, leases=found, installed=[], report={"leases": found},
                             msg=f"{len(found)} leases", summary=f"{host}: {len(found)} active leases")
        if p["op"] in ("grant", "extend"):
            if not p["duration"]:
                raise LeaseError("duration is required for grant and extend")
            seconds = check_bounds(parse_duration(p["duration"]), parse_duration(p["lease_min"]),
                                   parse_duration(p["lease_max"]))
        if p["op"] == "grant":
            revert = [[str(a) for a in argv] for argv in p["revert"]]
            env = {str(k): str(v) for k, v in (p["env"] or {}).items()}
            record, changed = leases.grant(p["key"], p["incident"], p["what"], revert, seconds, env=env,
                                           kind=p["kind"], check_mode=check)
            verb = "would grant" if check else "granted"
        elif p["op"] == "extend":
            record, changed = leases.extend(p["id"] or "", seconds, incident=p["incident"], check_mode=check), True
            verb = "would extend" if check else "extended"
        else:
            lease_id = p["id"] or ((leases.by_key(p["key"]) or {}).get("id") if p["key"] else None)
            record = leases.release(lease_id, revert=p["revert_now"], check_mode=check) if lease_id else None
            changed, verb = record is not None, "would release" if check else "released"
            if record is None:
                module.exit_json(changed=False, lease=None, installed=installed, report={"lease": None},
                                 msg="no such lease: nothing to release",
                                 summary=f"{host}: no lease {lease_id or p['key']} (already released or expired)")
        shown = dict(public(record, leases.now()), armed=None if check else leases.armed(record["id"]))
        msg = f"{verb} lease {record['id']} ({record['what']}), expires {record['expires']}"
        module.exit_json(changed=changed or bool(installed), lease=shown, installed=installed,
                         report={"lease": shown}, msg=msg, summary=f"{host}: {msg}")
    except LeaseError as exc:
        module.fail_json(msg=f"{host}: {exc}", refused=True, changed=False, summary=f"{host}: {exc}",
                         report={"error": str(exc)})


if __name__ == "__main__":
    main()
