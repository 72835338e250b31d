# Makes the mayday package (cli/mayday: controller-side records, verdicts, rules) importable by the
# action, lookup and callback plugins, also where it is not pip-installed (plain ansible-playbook,
# AWX), and plugins/module_utils for the host-side rules the pre-flight probe judges with.
import os
import sys

PLUGINS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (os.path.join(os.path.dirname(PLUGINS), "cli"), os.path.join(PLUGINS, "module_utils")):
    if path not in sys.path:
        sys.path.insert(0, path)
