#!/usr/bin/python
# A drill's steady-state probes on one host: once, or polled until one fails (detection) or until
# all pass (recovery), within a window. The host's kill switch (/var/lib/mayday/drill-stop) is read
# before every round. In playbooks/drill.yml the action of this name sends the same probes through the
# module mayday_fault (op probe), so a drill builds one module per run; this file documents the action
# for ansible-doc.
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_drill_probe
short_description: Run a drill's steady-state probes on a host
options:
  checks: {description: "Probes: name and one of http, sql, service.", type: list, elements: dict, required: true}
  mode: {description: once, until_fail or until_ok., type: str, default: once}
  window_s: {description: How long to poll at most., type: float, default: 0}
  interval_s: {description: Pause between rounds., type: float, default: 1}
  stop_file: {description: The host's kill switch., type: str, default: /var/lib/mayday/drill-stop}
  confirm: {description: "until_ok: once all pass, one more round after interval_s (the steady state holds).",
    type: bool, default: false}
author: mayday
"""

RETURN = r"""
ok: {description: Every probe passed in the last round., type: bool, returned: always}
rounds: {description: Rounds run., type: int, returned: always}
results: {description: The last round's result per probe., type: list, returned: always}
changed_at: {description: Epoch of the round where the awaited change was seen (null when not seen)., type: float,
  returned: always}
stopped: {description: The host's kill switch was set., type: bool, returned: always}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.mayday_drill_probe import STOP_FILE, poll


def main():
    module = AnsibleModule(
        argument_spec={
            "checks": {"type": "list", "elements": "dict", "required": True},
            "mode": {"type": "str", "choices": ["once", "until_fail", "until_ok"], "default": "once"},
            "window_s": {"type": "float", "default": 0},
            "interval_s": {"type": "float", "default": 1},
            "stop_file": {"type": "str", "default": STOP_FILE},
            "confirm": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    p = module.params
    module.exit_json(changed=False, **poll(p["checks"], p["mode"], p["window_s"], p["interval_s"], p["stop_file"],
                                           p["confirm"]))


if __name__ == "__main__":
    main()
