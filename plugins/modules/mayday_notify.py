# Documentation stub: the work is done on the controller by the action plugin of the same name
# (plugins/action/mayday_notify.py); this file lets `ansible-doc mayday_notify` find it.
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_notify
short_description: Send an incident message to webhook and file channels
description:
  - Sends from the controller (cli/mayday/notify.py). A channel that fails is reported as a
    warning, never raised. Webhook URLs are secrets and are never echoed. Check mode sends nothing.
    A relative file channel path lives in the state directory.
options:
  channels: {description: "List of {type: webhook|file, name, url|path, timeout}.", type: list, elements: dict, required: true}
  message: {description: The message text., type: str, required: true}
  event: {description: "resolved, escalation, started or info.", type: str, default: info}
  incident: {description: Incident id., type: str}
  fields: {description: Extra structured fields., type: dict}
author: mayday
"""

EXAMPLES = r"""
# See roles/scenario and the playbooks under playbooks/.
"""

RETURN = r"""
delivered: {description: "One {channel, type, ok, detail} per channel.", type: list, returned: always}
"""
