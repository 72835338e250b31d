"""mayday_notify action plugin, end to end through ansible-playbook against a real local webhook."""

from __future__ import annotations

import json
import os
import subprocess

from receivers import HttpRecorder, closed_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSIBLE_PLAYBOOK = os.path.join(REPO, ".venv", "bin", "ansible-playbook")

PLAYBOOK = """\
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: notify all channels
      mayday_notify:
        message: "web rolled back to v2"
        event: resolved
        incident: INC-20250101-000000
        fields: {{scenario: bad-deploy}}
        channels:
          - {{type: webhook, name: chat, url: "{live}", timeout: 5}}
          - {{type: file, name: log, path: "{log}"}}
          - {{type: webhook, name: dead, url: "{dead}", timeout: 2}}
      register: sent

    - name: the dead channel is reported, the others delivered
      assert:
        that:
          - sent is not failed
          - sent.msg == "2 of 3 channels delivered"
          - (sent.delivered | selectattr('ok') | map(attribute='channel') | list) == ['chat', 'log']
          - (sent.delivered | rejectattr('ok') | map(attribute='channel') | list) == ['dead']

    - name: check mode sends nothing
      mayday_notify:
        message: "dry run message"
        channels:
          - {{type: webhook, name: chat, url: "{live}"}}
          - {{type: file, name: log, path: "{log}"}}
      check_mode: true
"""


def test_notify_delivers_survives_dead_channel_and_hides_urls(tmp_path, http_recorder: HttpRecorder):
    secret = "T0SECRET/B0TOKEN/xoxb-live-9f8e7d"
    dead_secret = "DEADSECRET-4a5b6c"
    live = f"{http_recorder.url}/hooks/{secret}"
    dead = f"http://127.0.0.1:{closed_port()}/hooks/{dead_secret}"
    log = tmp_path / "notify" / "incidents.jsonl"
    playbook = tmp_path / "notify.yml"
    playbook.write_text(PLAYBOOK.format(live=live, dead=dead, log=log))

    env = dict(
        os.environ,
        ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"),
        ANSIBLE_ACTION_PLUGINS=os.path.join(REPO, "plugins", "action"),
        # an empty ANSIBLE_CALLBACKS_ENABLED crashes ansible-core 2.19: run the project's own callback
        ANSIBLE_CALLBACK_PLUGINS=os.path.join(REPO, "plugins", "callback"),
        ANSIBLE_CALLBACKS_ENABLED="mayday_timeline",
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
        ANSIBLE_NOCOLOR="1",
        MAYDAY_STATE_DIR=str(tmp_path / "state"),
    )
    proc = subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", "localhost,", "-v", str(playbook)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "failed=0" in proc.stdout

    # the live webhook got exactly one JSON message (none from the check-mode task)
    assert len(http_recorder.requests) == 1, http_recorder.requests
    hit = http_recorder.requests[0]
    assert hit.path == f"/hooks/{secret}"
    assert hit.headers["content-type"].startswith("application/json")
    payload = hit.json
    assert payload["text"] == "web rolled back to v2"
    assert payload["event"] == "resolved"
    assert payload["incident"] == "INC-20250101-000000"
    assert payload["scenario"] == "bad-deploy"

    # the file channel got the same message as one line, and nothing from check mode
    lines = log.read_text().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == payload

    # the dead channel's message went to the default fallback file after its retries
    [rescued] = (tmp_path / "state" / "notifications-undelivered.jsonl").read_text().splitlines()
    assert json.loads(rescued)["undelivered_on"] == ["dead"]

    # the dead channel is only a warning, and no target URL leaks into the output
    assert "notification not delivered on: dead" in output
    assert "URLError" in output
    for leaked in (live, dead, secret, dead_secret, "/hooks/"):
        assert leaked not in output, f"{leaked!r} appears in the ansible output"
    # nor into the records the timeline callback keeps
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert secret not in text and dead_secret not in text, path
