# Documentation stub: the work is done on the controller by the action plugin of the same name
# (plugins/action/mayday_incident.py); this file lets `ansible-doc mayday_incident` find it.
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_incident
short_description: Open, annotate and close a mayday incident record
description:
  - Controller-side bookkeeping in the state directory (MAYDAY_STATE_DIR, else .mayday in the
    checkout). Scenarios use roles/scenario, which opens and closes records itself; this module
    serves ad-hoc notes (roles/incident).
options:
  state: {description: "open, event, measure or close.", type: str, choices: [open, event, measure, close], required: true}
  scenario: {description: Scenario name (open)., type: str}
  severity: {description: Severity 1-4 (open)., type: int}
  title: {description: One-line title (open)., type: str}
  hosts: {description: Target hosts (open)., type: list, elements: str}
  incident_dir: {description: "The directory returned by open (event, measure, close).", type: path}
  event: {description: Free text for the timeline (event)., type: str}
  outcome: {description: "RECOVERED, DONE, NOOP, FAILED, REFUSED or DRY-RUN (close).", type: str}
  summary: {description: What happened (close)., type: str}
  extra: {description: More fields for report.json (close)., type: dict}
author: mayday
"""

EXAMPLES = r"""
# See roles/scenario and the playbooks under playbooks/.
"""

RETURN = r"""
incident_id: {description: The incident id (open)., type: str, returned: open}
report_md: {description: Path of report.md (close)., type: str, returned: close}
"""
