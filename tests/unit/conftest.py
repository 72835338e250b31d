"""Make plugins/module_utils importable as top-level modules for the unit tests."""

from __future__ import annotations

import importlib
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE_UTILS = os.path.join(REPO, "plugins", "module_utils")

if MODULE_UTILS not in sys.path:
    sys.path.insert(0, MODULE_UTILS)

# mayday_http (and friends) import their siblings as ansible.module_utils.<name> when shipped to a
# host; register the real modules under that name so both import paths resolve to the same objects.
for _name in ("mayday_steps", "mayday_service"):
    sys.modules.setdefault(f"ansible.module_utils.{_name}", importlib.import_module(_name))
