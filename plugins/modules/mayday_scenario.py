# Documentation stub: the work is done on the controller by the action plugin of the same name
# (plugins/action/mayday_scenario.py); this file lets `ansible-doc mayday_scenario` find it.
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_scenario
short_description: The scenario skeleton's controller side (open, judge, finish)
description:
  - Runs on the controller (action plugin). C(open) checks the extra vars against the scenario's
    entry in cli/mayday/scenarios.py, opens the incident record, refuses an unconfirmed production
    inventory and takes the controller lock (check mode only reads it). C(judge) reads every host's
    pre-flight probe and decides refusals and NOOP before anything changes. C(finish) judges every
    host's result (cli/mayday/verdict.py), measures downtime, notifies, writes the report, releases
    the lock and fails the run unless it recovered.
  - Used through roles/scenario, not directly.
options:
  stage: {description: "open, judge or finish.", type: str, choices: [open, judge, finish], required: true}
  scenario: {description: Name of the scenario in cli/mayday/scenarios.py., type: str, required: true}
  opened: {description: "The result of the open stage (judge, finish).", type: dict}
  judged: {description: The result of the judge stage (finish)., type: dict}
  probe_var: {description: "judge: per-host variable holding each host's pre-flight probe.", type: str}
  lock_var: {description: "judge: per-host variable holding each host's lock probe.", type: str, default: scenario_reach}
  judge: {description: "judge: reachability or level1.", type: str, default: reachability}
  acted: {description: "finish: whether the Act phase ran.", type: bool}
  results_var: {description: "finish: per-host variable holding each host's result.", type: str}
  error: {description: "finish: an unexpected error caught by rescue.", type: str}
  channels: {description: "finish: notification channels (mayday_notify_channels).", type: list, elements: dict}
  label: {description: "finish: name of the job in the message.", type: str}
  with_downtime: {description: "finish: put the measured downtime in the message.", type: bool}
  fields: {description: "finish: more structured fields for the notification.", type: dict}
  extra: {description: "finish: more fields for report.json.", type: dict}
author: mayday
"""

EXAMPLES = r"""
# See roles/scenario and the playbooks under playbooks/.
"""

RETURN = r"""
outcome: {description: "finish: RECOVERED, DONE, NOOP, DRY-RUN, REFUSED or FAILED.", type: str, returned: finish}
go: {description: "open, judge: whether the run may act.", type: bool, returned: open and judge}
refusals: {description: "open, judge: every reason not to act.", type: list, returned: open and judge}
"""
