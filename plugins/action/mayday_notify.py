# Sends one message to every configured channel from the controller. A channel that fails is
# reported, never raised: a notification must not fail a rollback. Targets (webhook URLs) are
# secrets and are never echoed back.
from __future__ import annotations

import json
import os
import time
import urllib.request

from ansible.plugins.action import ActionBase

DOCUMENTATION = r"""
action: mayday_notify
short_description: Send an incident message to webhook and file channels
options:
  channels: {description: "List of {type: webhook|file, name, url|path, timeout}.", required: true}
  message: {description: The message text., required: true}
  event: {description: resolved, escalation, started or info.}
  incident: {description: Incident id.}
  fields: {description: Extra structured fields.}
"""


def _send_webhook(channel, payload):
    body = json.dumps(payload).encode()
    req = urllib.request.Request(channel["url"], data=body, method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "mayday"})
    with urllib.request.urlopen(req, timeout=float(channel.get("timeout", 5))) as resp:
        return f"HTTP {resp.status}"


def _send_file(channel, payload):
    path = channel["path"]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(payload) + "\n")
    return "appended"


SENDERS = {"webhook": _send_webhook, "file": _send_file}


class ActionModule(ActionBase):
    _supports_check_mode = True
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        payload = {
            "text": args.get("message"),
            "event": args.get("event", "info"),
            "incident": args.get("incident"),
            "sent_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(args.get("fields") or {}),
        }
        delivered = []
        for index, channel in enumerate(args.get("channels") or []):
            name = channel.get("name") or f"{channel.get('type')}-{index}"
            entry = {"channel": name, "type": channel.get("type")}
            if self._task.check_mode:
                entry.update(ok=True, detail="check mode: not sent")
            elif channel.get("type") not in SENDERS:
                entry.update(ok=False, detail=f"unknown channel type; valid: {', '.join(SENDERS)}")
            else:
                try:
                    entry.update(ok=True, detail=SENDERS[channel["type"]](channel, payload))
                except Exception as exc:
                    # The exception text may contain the URL: keep only its kind.
                    entry.update(ok=False, detail=f"{type(exc).__name__}")
            delivered.append(entry)
        failed = [d["channel"] for d in delivered if not d["ok"]]
        if failed:
            result["warnings"] = [f"notification not delivered on: {', '.join(failed)}"]
        result.update(changed=False, delivered=delivered, event=payload["event"],
                      msg=f"{len(delivered) - len(failed)} of {len(delivered)} channels delivered")
        return result
