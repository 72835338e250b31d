#!/usr/bin/python
# Drill faults on a host: inject one under a lease (the host removes it on its own at expiry), or
# remove every fault of a drill run and prove each is gone.
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_fault
short_description: Inject a drill fault under a lease, or remove a drill run's faults
description:
  - C(inject) saves what it will change, grants a lease whose revert removes the fault, injects it
    and checks it is in place (a fault that did not take is removed at once and the task fails).
  - C(remove) releases the lease of every fault of C(run_id) (its revert removes the fault) and
    proves each is gone; a fault still in place fails the task.
options:
  op: {description: "inject, remove, or probe (the probes alone: nothing installed or changed).", type: str,
    choices: [inject, remove, probe], required: true}
  run_id: {description: The drill run., type: str, required: true}
  drill: {description: The drill's name., type: str, default: ""}
  fault: {description: "type and params (plugins/module_utils/mayday_fault.py FAULTS).", type: dict}
  secrets: {description: Values merged into the params, never logged (a database password)., type: dict}
  duration: {description: The lease (30s, 10m)., type: str, default: 10m}
  lease_min: {description: Shortest lease., type: str, default: 10s}
  lease_max: {description: Longest lease., type: str, default: 4h}
  probe:
    description:
      - The drill's probes in the same round trip (checks, mode, window_s, interval_s, confirm, stop_file).
      - After C(inject), polled until one fails (the detection); before C(remove), until all pass (the
        recovery; nothing is removed unless they do), then with confirm once more after the removal (they hold).
    type: dict
author: mayday
"""

RETURN = r"""
faults: {description: The faults injected or removed on this host, with their lease and timing., type: list,
  returned: always}
probe: {description: "The probes' rounds (ok, changed_at, results, confirmed, stopped) when asked.", type: dict,
  returned: when probe was given}
removed: {description: "C(remove): the faults were removed (false: the steady state was not back yet).", type: bool,
  returned: when op is remove}
"""

import secrets as token
import socket
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.mayday_drill_probe import confirm_round, poll
from ansible.module_utils.mayday_fault import FaultError, all_states, inject, remove
from ansible.module_utils.mayday_fault import install as install_fault
from ansible.module_utils.mayday_lease import PYTHON, LeaseError, Leases, check_bounds, parse_duration
from ansible.module_utils.mayday_lease import install as install_lease

HELPER = "/usr/local/lib/mayday/mayday_fault.py"


def lease_key(fid):
    return f"drill-fault-{fid}"


def do_inject(module, leases, host):
    p = module.params
    seconds = check_bounds(parse_duration(p["duration"]), parse_duration(p["lease_min"]),
                           parse_duration(p["lease_max"]))
    fault = p["fault"] or {}
    fid = f"{time.strftime('%H%M%S', time.gmtime())}-{token.token_hex(3)}"
    started = time.time()
    # The lease first: whatever happens from here on, the host removes the fault at expiry.
    lease, _ = leases.grant(lease_key(fid), p["run_id"], f"drill {p['drill']}: {fault.get('type')}",
                            [[PYTHON, HELPER, "remove", fid]], seconds, kind="drill")
    try:
        params = {**(fault.get("params") or {}), **(p["secrets"] or {})}
        _state, took = inject(fid, fault.get("type", ""), params, p["run_id"], p["drill"])
    except Exception as exc:
        undo = release(leases, fid)
        raise FaultError(f"injecting {fault.get('type')} failed ({exc}); removal: {undo}") from None
    if not took:
        undo = release(leases, fid)
        raise FaultError(f"{fault.get('type')} did not take on {host}; removal: {undo}")
    return [{"id": fid, "type": fault.get("type"), "lease": lease["id"], "expires": lease["expires"],
             "injected_at": started, "inject_s": round(time.time() - started, 3), "host": host}]


def release(leases, fid):
    lease = leases.by_key(lease_key(fid))
    try:
        if lease:  # its revert is the removal
            leases.release(lease["id"], revert=True)
        left = remove(fid)
        return "removed" if lease or left == "removed" else left
    except (LeaseError, FaultError) as exc:
        return f"failed: {exc}"


def do_remove(module, leases, host):
    done = []
    for doc in all_states(module.params["run_id"]):
        started = time.time()
        outcome = release(leases, doc["id"])
        done.append({"id": doc["id"], "type": doc["type"], "outcome": outcome, "host": host,
                     "remove_s": round(time.time() - started, 3)})
    return done


def main():
    module = AnsibleModule(
        argument_spec={
            "op": {"type": "str", "choices": ["inject", "remove", "probe"], "required": True},
            "run_id": {"type": "str", "required": True},
            "drill": {"type": "str", "default": ""},
            "fault": {"type": "dict"},
            "secrets": {"type": "dict", "no_log": True, "default": {}},
            "duration": {"type": "str", "default": "10m"},
            "lease_min": {"type": "str", "default": "10s"},
            "lease_max": {"type": "str", "default": "4h"},
            # The drill's probes in the same round trip: after an injection until one fails (detection),
            # before a removal until all pass and hold (recovery; no removal unless they do).
            "probe": {"type": "dict"},
        },
        supports_check_mode=False,
    )
    host = socket.gethostname()
    if module.params["op"] == "probe":  # a drill's steady state: the one module its hosts run, built once a run
        module.exit_json(changed=False, faults=[], probe=poll(**(module.params["probe"] or {"checks": []})))
    leases = Leases()
    try:
        install_lease()
        install_fault()
        probe = module.params["probe"]
        if module.params["op"] == "inject":
            faults = do_inject(module, leases, host)
            module.exit_json(changed=True, faults=faults, msg=f"{host}: injected {faults[0]['type']}",
                             probe=poll(**probe) if probe else None)
        awaited = poll(**{**probe, "confirm": False}) if probe else None
        if awaited is not None and not awaited["changed_at"]:
            module.exit_json(changed=False, faults=[], removed=False, probe=awaited,
                             msg=f"{host}: steady state not back yet, fault kept")
        faults = do_remove(module, leases, host)
        if awaited is not None and probe.get("confirm"):  # it holds, the faults gone (the removal in the pause)
            awaited["confirmed"] = confirm_round(probe["checks"], awaited["changed_at"], probe.get("interval_s", 1))
        failed = [f for f in faults if f["outcome"].startswith("failed")]
        if failed:
            module.fail_json(msg=f"{host}: fault still in place: " + "; ".join(f["outcome"] for f in failed),
                             faults=faults, cleanup_failed=True, removed=False, probe=awaited)
        module.exit_json(changed=bool(faults), faults=faults, removed=True, probe=awaited,
                         msg=f"{host}: {len(faults)} faults removed")
    except (FaultError, LeaseError, OSError) as exc:
        module.fail_json(msg=f"{host}: {exc}", faults=[])


if __name__ == "__main__":
    main()
