"""`mayday notify test|flush|pages` on an inventory of its own, against real local receivers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mayday import notify
from receivers import HttpRecorder, SmtpReceiver, closed_port

REPO = Path(__file__).resolve().parents[2]
MAYDAY = str(Path(sys.executable).parent / "mayday")
ROUTING_KEY = "cli-routing-key-secret-0a9b"
SMTP_PASSWORD_ENV = "MAYDAY_TEST_SMTP_PASSWORD"


def write_inventory(root: Path, recorder: HttpRecorder, smtp: SmtpReceiver, down: bool = True) -> Path:
    """An inventory whose channels point at the receivers; the SMTP password comes from the environment."""
    (root / "group_vars" / "all").mkdir(parents=True)
    (root / "hosts.yml").write_text("all:\n  hosts:\n    web1:\n      ansible_connection: local\n")
    mail = {k: v for k, v in smtp.channel("mail").items() if k != "password"}
    channels = [
        {"type": "slack", "name": "slack", "url": f"{recorder.url}/slack/hook/T0/B0/cli-secret"},
        {"type": "pagerduty", "name": "pd", "url": f"{recorder.url}/v2/enqueue",
         "routing_key": "{{ lookup('ansible.builtin.env', 'TEST_PD_KEY') }}"},
        {**mail, "password_env": SMTP_PASSWORD_ENV},
        {"type": "file", "name": "log", "path": "notifications.jsonl"},
    ]
    if down:
        channels.append({"type": "webhook", "name": "down", "url": f"http://127.0.0.1:{closed_port()}/hook"})
    doc = {"mayday_environment": "test", "mayday_notify_channels": channels,
           "mayday_notify_channels_security": [{"type": "file", "name": "security-log", "path": "sec.jsonl"},
                                               {"type": "file", "name": "log", "path": "dup.jsonl"}]}
    (root / "group_vars" / "all" / "main.yml").write_text(json.dumps(doc))
    return root


def run(state: Path, smtp: SmtpReceiver, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MAYDAY_STATE_DIR=str(state), TEST_PD_KEY=ROUTING_KEY, NO_COLOR="1", COLUMNS="300",
               ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), **{SMTP_PASSWORD_ENV: smtp.users["mayday"]})
    return subprocess.run([MAYDAY, "notify", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.fixture
def inventory(tmp_path: Path, http_recorder: HttpRecorder, smtp_receiver: SmtpReceiver) -> Path:
    return write_inventory(tmp_path / "inventory", http_recorder, smtp_receiver)


def test_notify_test_sends_to_every_channel_and_fails_on_the_one_down(
        tmp_path: Path, inventory: Path, http_recorder: HttpRecorder, smtp_receiver: SmtpReceiver) -> None:
    result = run(tmp_path / "state", smtp_receiver, "test", "-i", str(inventory), "--json")
    assert result.returncode == 1, result.stderr
    got = {e["channel"]: e for e in json.loads(result.stdout)}
    assert list(got) == ["slack", "pd", "mail", "log", "down", "security-log"], "each name once"
    assert [got[n]["ok"] for n in got] == [True, True, True, True, False, True]
    assert got["down"]["detail"].startswith("URLError (Connection refused)")
    pd = [r.json for r in http_recorder.under("/v2/enqueue")]
    assert [(p["event_action"], p["routing_key"]) for p in pd] == [("trigger", ROUTING_KEY), ("resolve", ROUTING_KEY)]
    assert pd[0]["dedup_key"] == pd[1]["dedup_key"], "the test page is resolved at once"
    [mail] = smtp_receiver.wait_for(1)
    assert mail.tls and mail.login == "mayday"
    assert len(http_recorder.under("/slack/hook/")) == 1
    for secret in (ROUTING_KEY, smtp_receiver.users["mayday"], "cli-secret"):
        assert secret not in result.stdout + result.stderr


def test_notify_test_one_channel_and_unknown_names(tmp_path: Path, inventory: Path, http_recorder: HttpRecorder,
                                                   smtp_receiver: SmtpReceiver) -> None:
    one = run(tmp_path / "state", smtp_receiver, "test", "--channel", "slack", "-i", str(inventory))
    assert one.returncode == 0, one.stdout + one.stderr
    assert one.stdout.split()[:3] == ["slack", "slack", "ok"]
    assert len(http_recorder.requests) == 1 and smtp_receiver.mails == []
    unknown = run(tmp_path / "state", smtp_receiver, "test", "--channel", "sms", "-i", str(inventory))
    assert unknown.returncode == 2
    assert "unknown channel 'sms'; valid: slack, pd, mail, log, down, security-log" in " ".join(unknown.stderr.split())
    assert len(http_recorder.requests) == 1, "nothing sent"


def test_notify_flush_sends_a_due_page_and_pages_lists_it(tmp_path: Path, inventory: Path,
                                                          http_recorder: HttpRecorder, smtp_receiver: SmtpReceiver,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("MAYDAY_STATE_DIR", str(state))
    pd = {"type": "pagerduty", "name": "pd", "url": f"{http_recorder.url}/v2/enqueue", "routing_key": ROUTING_KEY,
          "page_after": {"P1": 0.2}}
    fields = {"scenario": "level2-api", "severity": 2, "inventory": str(inventory)}
    assert notify.send([pd], "INC-1 FAILED", "escalation", "INC-1", fields)[0]["action"] == "deferred"
    listed = run(state, smtp_receiver, "pages", "--json")
    assert [p["status"] for p in json.loads(listed.stdout)["pages"]] == ["deferred"]
    time.sleep(0.25)
    flushed = run(state, smtp_receiver, "flush", "-i", str(inventory), "--json")
    assert flushed.returncode == 0, flushed.stderr
    assert [(e["channel"], e["action"], e["ok"]) for e in json.loads(flushed.stdout)] == [
        ("pd", "deferred trigger", True)]
    assert [r.json["event_action"] for r in http_recorder.under("/v2/enqueue")] == ["trigger"]
    again = run(state, smtp_receiver, "flush", "-i", str(inventory))
    assert again.returncode == 0 and "no page due" in again.stdout
