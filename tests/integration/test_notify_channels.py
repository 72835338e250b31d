"""Notifications from real `mayday level1` runs on the lab, to real local receivers: Slack (incoming
webhook and Web API), PagerDuty (Events API v2), e-mail (SMTP with STARTTLS and AUTH), a webhook that
is down, and the fallback file.

One module, two runs on the broken lab (v2 live): the first escalates (the database password is
wrong, so no release answers healthy), the second, after the password is put back and v2 is live
again, recovers. Between them the receivers must show one PagerDuty incident opened and resolved
under one dedup_key, both outcomes in Slack blocks and by mail over STARTTLS, progress edited in place,
and the channel that is down in notify_failed and the fallback, without failing either run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import DB_INI, ROOT, WEB_HOSTS, Mayday, dexec, reset_lab

from receivers import HttpRecorder, SmtpReceiver, closed_port

pytestmark = pytest.mark.usefixtures("broken_lab")

SLACK_HOOK_SECRET = "T0LAB/B0LAB/lab-slack-hook-secret-4e1f"
SLACK_TOKEN = "xoxb-lab-bot-token-secret-9d3c"
ROUTING_KEY = "lab-routing-key-secret-77ab10"
SMTP_PASSWORD_ENV = "MAYDAY_LAB_TEST_SMTP_PASSWORD"


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"rc={result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def overlay_inventory(root: Path, recorder: HttpRecorder, smtp: SmtpReceiver) -> Path:
    """The lab inventory plus group_vars/all/notify.yml (read after main.yml, so it wins) with the
    receivers as channels. The SMTP password is read from the environment at send time."""
    lab = ROOT / "inventories" / "lab"
    root.mkdir()
    shutil.copy(lab / "hosts.yml", root / "hosts.yml")
    shutil.copytree(lab / "group_vars", root / "group_vars")
    mail = {k: v for k, v in smtp.channel("oncall-mail").items() if k != "password"}
    notify = {
        "mayday_notify_channels": [
            {"type": "slack", "name": "slack", "url": f"{recorder.url}/slack/hook/{SLACK_HOOK_SECRET}",
             "token": SLACK_TOKEN, "channel": "C0LAB", "api_url": f"{recorder.url}/api", "progress_every": 0},
            {"type": "pagerduty", "name": "pagerduty", "url": f"{recorder.url}/v2/enqueue",
             "routing_key": ROUTING_KEY},
            {**mail, "password_env": SMTP_PASSWORD_ENV},
            {"type": "webhook", "name": "down", "url": f"http://127.0.0.1:{closed_port()}/hook"},
            {"type": "file", "name": "incident-log", "path": "notifications.jsonl"},
        ],
        "mayday_notify_fallback": {"type": "file", "name": "fallback-log", "path": "fallback.jsonl"},
    }
    (root / "group_vars" / "all" / "notify.yml").write_text(json.dumps(notify))
    return root


def secrets(smtp: SmtpReceiver) -> list[str]:
    return [SLACK_HOOK_SECRET, SLACK_TOKEN, ROUTING_KEY, smtp.users["mayday"], "/slack/hook/"]


def text_under(root: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file())


def run_level1(mayday: Mayday, inventory: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    result = mayday.run("level1", "-i", str(inventory), "--json", timeout=240)
    return result, mayday.last_report()


def test_escalation_then_recovery_reach_every_channel_once_with_one_page(
        lab: dict[str, str], broken_lab: Mayday, tmp_path: Path, http_recorder: HttpRecorder,
        smtp_receiver: SmtpReceiver, monkeypatch: pytest.MonkeyPatch,
        record_property: Callable[[str, object], None]) -> None:
    mayday = broken_lab
    monkeypatch.setenv(SMTP_PASSWORD_ENV, smtp_receiver.users["mayday"])
    inventory = overlay_inventory(tmp_path / "inventory", http_recorder, smtp_receiver)
    good_ini = {h: dexec(h, f"cat {DB_INI}") for h in WEB_HOSTS}

    # 1. No release answers healthy (wrong database password): FAILED, escalated.
    try:
        for host in WEB_HOSTS:
            dexec(host, f"sed -i 's/^password = .*/password = \"wrong\"/' {DB_INI}")
        failed, failed_report = run_level1(mayday, inventory)
    finally:
        for host, text in good_ini.items():
            dexec(host, f"cat > {DB_INI} <<'EOF'\n{text}EOF")
    assert failed.returncode == 1, output(failed)
    assert failed_report["outcome"] == "FAILED"
    assert failed_report["notify_failed"] == ["down"], failed_report["notified"]

    # 2. v2 live and broken again, the password good: RECOVERED, whatever the channel that is down.
    reset_lab(lab)
    recovered, recovered_report = run_level1(mayday, inventory)
    assert recovered.returncode == 0, output(recovered)
    assert recovered_report["outcome"] == "RECOVERED"
    assert recovered_report["notify_failed"] == ["down"]

    # PagerDuty: one incident, opened by the escalation and resolved by the recovery, one dedup_key.
    pages = [r.json for r in http_recorder.under("/v2/enqueue")]
    assert [p["event_action"] for p in pages] == ["trigger", "resolve"], pages
    assert pages[0]["dedup_key"] == pages[1]["dedup_key"]
    assert pages[0]["dedup_key"].endswith(failed_report["incident"])
    assert pages[0]["routing_key"] == ROUTING_KEY and pages[0]["payload"]["severity"] == "critical"
    assert pages[0]["payload"]["component"] == "level1"
    assert set(pages[0]["payload"]["custom_details"]["where"].split(" on ")[0].split(", ")) >= set(WEB_HOSTS)

    # Slack, incoming webhook: both outcomes in blocks; the recovery says how to undo it.
    hooks = [r.json for r in http_recorder.under("/slack/hook/")]
    assert [h["blocks"][0]["text"]["text"].split(" ")[2] for h in hooks] == ["ESCALATION:", "resolved:"]
    fields = [{f["text"].split("\n", 1)[0]: f["text"].split("\n", 1)[1] for f in h["blocks"][1]["fields"]}
              for h in hooks]
    assert [f["*Incident*"] for f in fields] == [failed_report["incident"], recovered_report["incident"]]
    assert fields[0]["*Outcome*"].startswith("FAILED") and fields[1]["*Outcome*"].startswith("RECOVERED")
    assert fields[1]["*Why*"].startswith("run by ")
    undo = [b for b in hooks[1]["blocks"] if b["type"] == "section" and "text" in b]
    assert undo[0]["text"]["text"] == f"*Undo*\n`mayday level1 --release v2 --force -i {inventory.resolve()}`"

    # Slack, Web API: each run's progress is one message, posted once and edited in place.
    posts = http_recorder.under("/api/chat.postMessage")
    updates = http_recorder.under("/api/chat.update")
    assert len(posts) == 2 and len(updates) >= 2, (len(posts), len(updates))
    assert len({u.json["ts"] for u in updates}) == 2, "one message per run, edited in place"
    finals = [u.json["text"] for u in updates if "finished" in u.json["text"]]
    assert [t.split("finished, ")[1] for t in finals] == ["FAILED", "RECOVERED"]
    texts = [r.json["text"] for r in posts + updates]
    assert any("step 3 of 6, Rollback" in t for t in texts), texts

    # E-mail: both outcomes, over STARTTLS, logged in.
    mails = smtp_receiver.wait_for(2)
    assert [m.message["X-Mayday-Event"] for m in mails] == ["escalation", "resolved"]
    assert all(m.tls and m.login == "mayday" for m in mails)
    assert [m.message["X-Mayday-Incident"] for m in mails] == [failed_report["incident"], recovered_report["incident"]]

    # The channel that is down: both messages kept by the fallback, the runs not failed by it.
    rescued = [json.loads(line) for line in (mayday.state_dir / "fallback.jsonl").read_text().splitlines()]
    assert [(r["incident"], r["undelivered_on"]) for r in rescued] == [
        (failed_report["incident"], ["down"]), (recovered_report["incident"], ["down"])]
    assert [n["event"] for n in mayday.notifications()] == ["escalation", "resolved"]

    def cost(report: dict[str, Any]) -> str:
        return ", ".join(f"{n['channel']} {n.get('elapsed_s')} s" for n in report["notified"])

    record_property("mayday_outcome", f"FAILED run {failed_report['duration_s']} s ({cost(failed_report)}); "
                                      f"RECOVERED run {recovered_report['duration_s']} s ({cost(recovered_report)})")

    # No secret in the output, the records, the runner's artifacts or the fallback.
    shown = failed.stdout + failed.stderr + recovered.stdout + recovered.stderr + text_under(mayday.state_dir)
    for secret in secrets(smtp_receiver):
        assert secret not in shown, secret

    # mayday notify test: every channel (1: one is down), one by name (0), an unknown name (2).
    everyone = mayday.run("notify", "test", "-i", str(inventory), "--json")
    assert everyone.returncode == 1, output(everyone)
    results = {e["channel"]: e["ok"] for e in json.loads(everyone.stdout)}
    assert results == {"slack": True, "pagerduty": True, "oncall-mail": True, "down": False, "incident-log": True,
                       "security-log": True, "fallback-log": True}
    assert mayday.run("notify", "test", "--channel", "pagerduty", "-i", str(inventory)).returncode == 0
    unknown = mayday.run("notify", "test", "--channel", "sms", "-i", str(inventory))
    assert unknown.returncode == 2 and "valid: slack, pagerduty, oncall-mail, down" in " ".join(unknown.stderr.split())
