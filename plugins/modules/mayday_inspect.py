# Documentation stub: the work is done on the controller by the action plugin of the same name
# (plugins/action/mayday_inspect.py); this file lets `ansible-doc mayday_inspect` find it.
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_inspect
short_description: Read release state, service states and health; change nothing
description:
  - Runs a read-only POSIX shell probe on the host (one round trip, no Python needed there) and
    judges it on the controller with the same release-planning rules as mayday_recover.
options:
  release: {description: "Release layout as mayday_recover takes it (root, layout, target, force); omit on hosts without releases.", type: dict}
  services: {description: Services whose state to read., type: list, elements: dict}
  health: {description: Health checks to probe once., type: list, elements: dict}
author: mayday
"""

EXAMPLES = r"""
# See roles/scenario and the playbooks under playbooks/.
"""

RETURN = r"""
release: {description: "current, order (deploy order, oldest first), failed, target, already_done, reason, refusal.", type: dict, returned: when release is given}
ok: {description: Every health check answered as expected., type: bool, returned: always}
"""
