"""The runner's command artifact keeps the environment, minus the values of secret-looking variables."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from mayday.redact_env import scrub_command_artifact


def test_secret_looking_variables_are_blanked_and_the_rest_kept(tmp_path: Path) -> None:
    command = tmp_path / "command"
    env = {"PATH": "/usr/bin", "MAYDAY_SMTP_PASSWORD": "pw-1", "MAYDAY_SLACK_BOT_TOKEN": "xoxb-2",
           "MAYDAY_PAGERDUTY_ROUTING_KEY": "rk-3", "MAYDAY_WEBHOOK_URL": "https://h/4", "MAYDAY_SERVE_SECRET": "s5",
           "MAYDAY_STATE_DIR": "/state", "EMPTY_TOKEN": ""}
    command.write_text(json.dumps({"command": ["ansible-playbook"], "cwd": "/x", "env": env}))
    assert scrub_command_artifact(command)
    doc = json.loads(command.read_text())
    assert doc["command"] == ["ansible-playbook"]
    assert doc["env"] == {**env, "MAYDAY_SMTP_PASSWORD": "***", "MAYDAY_SLACK_BOT_TOKEN": "***",
                          "MAYDAY_PAGERDUTY_ROUTING_KEY": "***", "MAYDAY_WEBHOOK_URL": "***",
                          "MAYDAY_SERVE_SECRET": "***"}
    assert stat.S_IMODE(command.stat().st_mode) == 0o600
    assert not scrub_command_artifact(command), "nothing left to hide"
    assert not scrub_command_artifact(tmp_path / "missing")
