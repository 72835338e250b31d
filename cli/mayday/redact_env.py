"""ansible-runner records the whole environment of a run in its artifacts (runs/<id>/command).
Secrets given by environment variable (a notification channel's password_env, a webhook URL, a
receiver's token) must not stay there: their values are replaced, by the variable's name."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mayday import jsonfile

SECRET_NAME = re.compile(r"PASS|TOKEN|SECRET|KEY|WEBHOOK|CREDENTIAL|AUTH|_URL$", re.IGNORECASE)
HIDDEN = "***"


def scrub_command_artifact(path: Path) -> bool:
    """Blank the values of secret-looking variables in a runner's `command` file; True when changed."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    env = doc.get("env") if isinstance(doc, dict) else None
    if not isinstance(env, dict):
        return False
    hidden = {k: HIDDEN for k, v in env.items() if SECRET_NAME.search(k) and v and v != HIDDEN}
    if not hidden:
        return False
    doc["env"] = {**env, **hidden}
    jsonfile.write(path, doc, indent=None)
    return True
