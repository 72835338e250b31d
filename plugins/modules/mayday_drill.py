#!/usr/bin/python
# Documentation only: the work is done on the controller by the action plugin of the same name
# (plugins/action/mayday_drill.py), so ansible-doc and ansible-lint find it.
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_drill
short_description: A drill's controller stages (open, gate, scenario, notify, finish)
description:
  - Runs on the controller only; see playbooks/drill.yml and plugins/action/mayday_drill.py.
options:
  op: {description: The stage., type: str, required: true, choices: [open, gate, scenario, notify, finish]}
  drill: {description: The drill's name (drills/<name>.yml)., type: str}
  run_id: {description: The drill run (DRILL-<drill>-<stamp>-<hex>); made by open when empty., type: str}
  phase: {description: gate, the phase just ended., type: str}
  alerts_quiet: {description: gate, alert names that must not be firing., type: list, elements: raw}
  hosts: {description: gate inject, the hosts the fault must be on., type: list, elements: str}
  which: {description: scenario, recovery or cleanup., type: str}
  call: {description: scenario, the scenario and its params., type: dict}
  timeout_s: {description: scenario, the longest it may run., type: float}
  plan: {description: finish, the plan open returned., type: dict}
  meta: {description: finish, the run's metadata open returned., type: dict}
  fault: {description: notify, the drill's fault (fail_channel makes it the failover drill)., type: dict}
author: mayday
"""
