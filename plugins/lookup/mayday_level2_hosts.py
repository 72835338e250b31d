# The host pattern a Level 2 component acts on, read from its file (playbooks/level2/<name>.yml,
# line `# hosts: <pattern>`), so a component is one file and the playbook needs no table.
from __future__ import annotations

import os
import sys

from ansible.plugins.lookup import LookupBase

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "action"))
import _mayday_path  # noqa: F401

from mayday import rules

DOCUMENTATION = r"""
name: mayday_level2_hosts
short_description: Host pattern of a mayday Level 2 component
description:
  - Reads the `# hosts:` line of playbooks/level2/<component>.yml. An unknown or empty component
    gives `all`, so the scenario skeleton can refuse it (naming the valid components) before any
    host is touched.
options:
  _terms: {description: The component name., required: true}
"""


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        return [rules.level2_hosts(str(term or "")) for term in (terms or [""])]
