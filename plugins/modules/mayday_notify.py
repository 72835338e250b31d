# Documentation stub: the work is done on the controller by the action plugin of the same name
# (plugins/action/mayday_notify.py); this file lets `ansible-doc mayday_notify` find it.
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_notify
short_description: Send an incident message to Slack, PagerDuty, e-mail, webhook and file channels
description:
  - Sends from the controller (cli/mayday/notify.py), routed by severity as in seed 003 (P0 every
    channel, P1 Slack and e-mail with PagerDuty after a delay unless resolved, P2 Slack, P3 the
    record). Each channel is retried briefly (4.5 s at most), then what is still undelivered goes to
    the fallback. A channel that fails is reported as a warning, never raised. Webhook URLs, tokens,
    routing keys and passwords are never echoed. Check mode sends nothing.
    roles/notify/README.md lists every channel setting.
options:
  channels: {description: "List of {type: slack|pagerduty|email|webhook|file, name, ...settings}.", type: list, elements: dict, required: true}
  message: {description: The message text., type: str, required: true}
  event: {description: "resolved, escalation, started or info (PagerDuty pages on escalation, resolves on resolved).", type: str, default: info}
  incident: {description: Incident id (PagerDuty's dedup_key is derived from it)., type: str}
  fields: {description: "Context (scenario, title, hosts, inventory, why, outcome, summary, undo, report) and extra fields.", type: dict}
  severity: {description: "P0..P3 (or 1..4); routes the message. Default P1.", type: str}
  fallback: {description: "A channel, or the name of one in channels, for what is still undelivered; default a file in the state directory.", type: raw}
author: mayday
"""

EXAMPLES = r"""
# See roles/scenario and the playbooks under playbooks/.
"""

RETURN = r"""
delivered: {description: "One {channel, type, ok, detail, attempts, [action, dedup_key, skipped, fallback]} per channel.", type: list, returned: always}
notify_failed: {description: Names of the channels that did not deliver., type: list, returned: always}
"""
