"""mayday.notify against real local receivers: payload shapes, routing by severity, PagerDuty pages
across runs (one dedup_key per incident), retries and their bound, the fallback, and secrets."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from mayday import notify, notify_pages
from mayday import notify_channels as ch
from mayday.notify_channels import Notice
from receivers import HttpRecorder, SmtpReceiver, closed_port

SLACK_SECRET = "T0SLACK/B0HOOK/slack-hook-secret-7f3a"
ROUTING_KEY = "R0UTINGKEY-secret-31c9d2e8"
WEBHOOK_SECRET = "webhook-secret-5b8e1d"


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MAYDAY_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def context(severity: Any = 1, scenario: str = "level1", inventory: str = "/srv/inventories/prod",
            outcome: str = "FAILED") -> dict[str, Any]:
    return {"scenario": scenario, "severity": severity, "title": "Production down, full rollback",
            "hosts": ["web1", "web2"], "inventory": inventory, "environment": "production",
            "why": "alert HealthCheckFailing", "outcome": outcome, "summary": "health check still failing",
            "undo": "mayday level1 --release v2 --force", "report": "/state/incidents/INC-1/report.md"}


def slack(recorder: HttpRecorder, **settings: Any) -> dict[str, Any]:
    return {"type": "slack", "name": "slack", "url": f"{recorder.url}/slack/hook/{SLACK_SECRET}", **settings}


def pagerduty(recorder: HttpRecorder, **settings: Any) -> dict[str, Any]:
    return {"type": "pagerduty", "name": "pd", "url": f"{recorder.url}/v2/enqueue", "routing_key": ROUTING_KEY,
            **settings}


def webhook(recorder: HttpRecorder, name: str = "hook", **settings: Any) -> dict[str, Any]:
    return {"type": "webhook", "name": name, "url": f"{recorder.url}/hook/{WEBHOOK_SECRET}", **settings}


def by_channel(delivered: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["channel"]: d for d in delivered}


def all_text(root: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file())


# -- severity and routing ------------------------------------------------------------------------
@pytest.mark.parametrize(("given", "label"), [(1, "P0"), (2, "P1"), (3, "P2"), (4, "P3"), ("p2", "P2"),
                                              ("P0", "P0"), ("SEV3", "P2"), (None, "P1"), ("bogus", "P1")])
def test_severity_labels(given: Any, label: str) -> None:
    assert ch.severity_label(given) == label


@pytest.mark.parametrize(("kind", "severity", "action"), [
    ("slack", "P0", "send"), ("slack", "P1", "send"), ("slack", "P2", "send"), ("slack", "P3", "skip"),
    ("email", "P0", "send"), ("email", "P1", "send"), ("email", "P2", "skip"), ("email", "P3", "skip"),
    ("pagerduty", "P0", "page"), ("pagerduty", "P1", "page"), ("pagerduty", "P2", "skip"),
    ("pagerduty", "P3", "skip"), ("webhook", "P3", "send"), ("file", "P3", "send"), ("file", "P0", "send")])
def test_escalations_are_routed_by_severity_as_seed_003_says(kind: str, severity: str, action: str) -> None:
    assert notify.plan({"type": kind}, Notice("x", "escalation", "INC-1", {"severity": severity}))[0] == action


def test_a_channel_may_override_its_severities() -> None:
    only_p0 = {"type": "webhook", "severities": ["P0"]}
    assert notify.plan(only_p0, Notice("x", "resolved", "INC", {"severity": "P1"}))[0] == "skip"
    assert notify.plan(only_p0, Notice("x", "resolved", "INC", {"severity": 1}))[0] == "send"
    mail_for_p3 = {"type": "email", "severities": ["P3"]}
    assert notify.plan(mail_for_p3, Notice("x", "escalation", "INC", {"severity": "P3"}))[0] == "send"


def test_pagerduty_pages_escalations_resolves_recoveries_and_ignores_the_rest() -> None:
    channel = {"type": "pagerduty"}
    assert notify.plan(channel, Notice("x", "started", "INC", {"severity": "P0"}))[0] == "skip"
    assert notify.plan(channel, Notice("x", "info", "INC", {"severity": "P0"}))[0] == "skip"
    assert notify.plan(channel, Notice("x", "resolved", "INC", {"severity": "P3"}))[0] == "resolve"
    assert notify.plan({"type": "email"}, Notice("x", "progress", "INC", {"severity": "P0"}))[0] == "skip"
    assert notify.plan(channel, Notice("x", "test", None, {"severity": "P3"}))[0] == "test"


# -- payload shapes -------------------------------------------------------------------------------
def test_slack_blocks_say_what_where_why_outcome_incident_and_undo() -> None:
    message = ch.slack_message(Notice("INC-1 LEVEL 1 ROLLBACK FAILED", "escalation", "INC-1", context()))
    assert message["text"].startswith("[P0] INC-1 ESCALATION")
    header, section, undo, footer = message["blocks"]
    assert header["type"] == "header" and len(header["text"]["text"]) <= 150
    labels = [f["text"].split("\n", 1)[0] for f in section["fields"]]
    assert labels == ["*What*", "*Where*", "*Why*", "*Outcome*", "*Incident*", "*Severity*"]
    texts = {f["text"].split("\n", 1)[0]: f["text"].split("\n", 1)[1] for f in section["fields"]}
    assert texts["*Where*"] == "web1, web2 on production /srv/inventories/prod"
    assert texts["*Why*"] == "alert HealthCheckFailing"
    assert texts["*Outcome*"] == "FAILED: health check still failing"
    assert texts["*Incident*"] == "INC-1"
    assert undo["text"]["text"] == "*Undo*\n`mayday level1 --release v2 --force`"
    assert footer["type"] == "context"
    without_undo = ch.slack_message(Notice("x", "resolved", "INC-1", {**context(), "undo": None}))
    assert [b["type"] for b in without_undo["blocks"]] == ["header", "section", "context"]


def test_pagerduty_trigger_and_resolve_follow_events_api_v2() -> None:
    trigger = ch.pagerduty_event("trigger", "KEY", "mayday-abc-INC-1",
                                 Notice("INC-1 FAILED " + "x" * 2000, "escalation", "INC-1", context()))
    assert trigger["routing_key"] == "KEY" and trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == "mayday-abc-INC-1"
    payload = trigger["payload"]
    assert set(payload) >= {"summary", "source", "severity", "component", "custom_details"}
    assert len(payload["summary"]) <= 1024 and payload["severity"] == "critical"
    assert payload["component"] == "level1" and payload["custom_details"]["undo"].startswith("mayday level1")
    resolve = ch.pagerduty_event("resolve", "KEY", "mayday-abc-INC-1")
    assert resolve == {"routing_key": "KEY", "event_action": "resolve", "dedup_key": "mayday-abc-INC-1"}
    severities = {s: ch.pagerduty_event("trigger", "K", "d", Notice("x", "escalation", "I", {"severity": s}))
                  ["payload"]["severity"] for s in ch.SEVERITIES}
    assert severities == {"P0": "critical", "P1": "error", "P2": "warning", "P3": "info"}


def test_email_message_headers_and_body() -> None:
    channel = {"from": "mayday@example.test", "to": ["a@example.test", "b@example.test"]}
    msg = ch.email_message(channel, Notice("INC-1 FAILED", "escalation", "INC-1", context()))
    assert msg["Subject"] == "[mayday P0] INC-1 escalation: Production down, full rollback"
    assert msg["To"] == "a@example.test, b@example.test" and msg["X-Mayday-Incident"] == "INC-1"
    body = msg.get_content()
    for line in ("What:     Production down", "Where:    web1, web2", "Undo:     mayday level1 --release v2 --force"):
        assert line in body


# -- delivery, pages, dedup keys ------------------------------------------------------------------
def test_p0_escalation_pages_at_once_and_a_later_recovery_resolves_the_same_key(http_recorder: HttpRecorder,
                                                                                state: Path) -> None:
    channels = [slack(http_recorder), pagerduty(http_recorder)]
    first = by_channel(notify.send(channels, "INC-1 FAILED", "escalation", "INC-1", context()))
    assert first["pd"]["ok"] and first["pd"]["action"] == "trigger"
    again = by_channel(notify.send(channels, "INC-2 FAILED", "escalation", "INC-2", context()))
    assert again["pd"]["dedup_key"] == first["pd"]["dedup_key"], "one open incident is one page"
    other = by_channel(notify.send(channels, "x", "escalation", "INC-3", context(inventory="/other")))
    assert other["pd"]["dedup_key"] != first["pd"]["dedup_key"], "another inventory is another page"
    done = by_channel(notify.send(channels, "INC-4 RECOVERED", "resolved", "INC-4", context(outcome="RECOVERED")))
    assert done["pd"]["action"] == "resolve" and done["pd"]["dedup_key"] == first["pd"]["dedup_key"]

    events = [(r.json["event_action"], r.json["dedup_key"]) for r in http_recorder.under("/v2/enqueue")]
    key = first["pd"]["dedup_key"]
    assert events == [("trigger", key), ("trigger", key), ("trigger", other["pd"]["dedup_key"]), ("resolve", key)]
    assert key.endswith("-INC-1"), "the key is derived from the incident that opened the page"
    pages = notify_pages.listing()
    assert [p["dedup_key"] for p in pages["pages"]] == [other["pd"]["dedup_key"]]
    assert [(p["dedup_key"], p["status"]) for p in pages["closed"]] == [(key, "resolved")]
    # a second recovery has nothing left to resolve
    later = by_channel(notify.send(channels, "x", "resolved", "INC-5", context(outcome="NOOP")))
    assert later["pd"]["skipped"] and len(http_recorder.under("/v2/enqueue")) == 4
    assert len(http_recorder.under("/slack/hook/")) == 5


def test_p1_page_waits_and_a_recovery_in_time_cancels_it(http_recorder: HttpRecorder) -> None:
    channels = [pagerduty(http_recorder, page_after={"P1": 60})]
    sent = by_channel(notify.send(channels, "INC-1 FAILED", "escalation", "INC-1", context(severity=2)))
    assert sent["pd"]["ok"] and sent["pd"]["action"] == "deferred"
    assert notify.flush(channels) == [], "not due yet"
    resolved = by_channel(notify.send(channels, "ok", "resolved", "INC-2", context(severity=2, outcome="RECOVERED")))
    assert resolved["pd"]["action"] == "cancelled"
    assert http_recorder.under("/v2/enqueue") == [], "PagerDuty never heard of it"


def test_p1_page_that_comes_due_is_sent_by_the_next_flush_then_resolved(http_recorder: HttpRecorder) -> None:
    channels = [pagerduty(http_recorder, page_after={"P1": 0.3})]
    notify.send(channels, "INC-1 FAILED", "escalation", "INC-1", context(severity=2))
    assert http_recorder.under("/v2/enqueue") == []
    time.sleep(0.35)
    flushed = notify.flush(channels)
    assert [(f["action"], f["ok"]) for f in flushed] == [("deferred trigger", True)]
    trigger = http_recorder.under("/v2/enqueue")[0].json
    assert trigger["event_action"] == "trigger" and trigger["payload"]["severity"] == "error"
    assert trigger["payload"]["summary"] == "INC-1 FAILED"
    notify.send(channels, "ok", "resolved", "INC-2", context(severity=2, outcome="RECOVERED"))
    assert [r.json["event_action"] for r in http_recorder.under("/v2/enqueue")] == ["trigger", "resolve"]
    assert len({r.json["dedup_key"] for r in http_recorder.under("/v2/enqueue")}) == 1


def test_a_resolve_that_did_not_go_through_is_sent_by_the_next_flush(http_recorder: HttpRecorder) -> None:
    channels = [pagerduty(http_recorder, retries=0)]
    notify.send(channels, "FAILED", "escalation", "INC-1", context())
    http_recorder.fail(1, status=503, path_prefix="/v2/")
    resolved = by_channel(notify.send(channels, "ok", "resolved", "INC-2", context(outcome="RECOVERED")))
    assert not resolved["pd"]["ok"] and resolved["pd"]["detail"] == "HTTP 503"
    assert [p["status"] for p in notify_pages.listing()["pages"]] == ["resolving"]
    flushed = notify.flush(channels)
    assert [(f["action"], f["ok"]) for f in flushed] == [("resolve (owed)", True)]
    assert notify_pages.listing()["pages"] == []


def test_dedup_keys_are_stable_and_per_group() -> None:
    group = notify_pages.group_of({"scenario": "level1", "inventory": "/inv"}, "INC-1")
    assert group == "level1@/inv"
    assert notify_pages.dedup_key(group, "INC-1") == notify_pages.dedup_key(group, "INC-1")
    assert notify_pages.dedup_key(group, "INC-1") != notify_pages.dedup_key("level2-api@/inv", "INC-1")
    assert notify_pages.group_of({}, "INC-9") == "incident:INC-9"


def test_check_mode_sends_nothing(http_recorder: HttpRecorder, state: Path) -> None:
    delivered = notify.send([slack(http_recorder), pagerduty(http_recorder), {"type": "file", "path": "n.jsonl"}],
                            "x", "escalation", "INC-1", context(), dry_run=True)
    assert all(d["ok"] and d["detail"] == "check mode: not sent" for d in delivered)
    assert http_recorder.requests == [] and not (state / "n.jsonl").exists()


def test_email_goes_over_starttls_with_auth(smtp_receiver: SmtpReceiver) -> None:
    delivered = notify.send([smtp_receiver.channel()], "INC-1 FAILED", "escalation", "INC-1", context())
    assert delivered[0]["ok"], delivered
    [mail] = smtp_receiver.wait_for(1)
    assert mail.tls and mail.login == "mayday"
    assert mail.rcpt_tos == ["oncall@example.test"] and mail.mail_from == "mayday@example.test"
    assert mail.message["X-Mayday-Incident"] == "INC-1"
    assert "Undo:     mayday level1" in mail.message.get_content()


def test_email_refusals_are_clear_and_never_retried_in_vain(smtp_receiver: SmtpReceiver, state: Path) -> None:
    wrong = smtp_receiver.channel("wrong", password="not-the-password-8d2f")
    untrusted = smtp_receiver.channel("untrusted", ca_file=None)
    clear = smtp_receiver.channel("clear", security="none")
    got = by_channel(notify.send([wrong, untrusted, clear], "x", "escalation", "INC-1", context()))
    assert got["wrong"]["detail"] == "SMTPAuthenticationError 535" and got["wrong"]["attempts"] == 1
    assert got["untrusted"]["detail"].startswith("TLS: ") and got["untrusted"]["attempts"] == 1
    assert got["clear"]["detail"] == "refusing to send SMTP credentials without TLS (security: none)"
    assert smtp_receiver.mails == [] and set(smtp_receiver.failed_logins) == {"mayday"}
    assert "not-the-password-8d2f" not in json.dumps(list(got.values())) + all_text(state)


def test_slack_web_api_when_only_a_bot_token_is_set(http_recorder: HttpRecorder) -> None:
    channel = {"type": "slack", "name": "bot", "token": "xoxb-bot-token-secret-41", "channel": "C42",
               "api_url": f"{http_recorder.url}/api"}
    assert notify.send([channel], "x", "escalation", "INC-1", context())[0]["ok"]
    [post] = http_recorder.under("/api/chat.postMessage")
    assert post.headers["authorization"] == "Bearer xoxb-bot-token-secret-41"
    assert post.json["channel"] == "C42" and post.json["blocks"][0]["type"] == "header"
    http_recorder.fail(1, status=200, path_prefix="/api/")  # {"ok": false, "error": ...} as Slack answers
    refused = notify.send([channel], "x", "escalation", "INC-1", context())[0]
    assert not refused["ok"] and refused["detail"] == "Slack chat.postMessage: injected failure"


# -- retries, their bound, the fallback ----------------------------------------------------------
def test_server_errors_are_retried_with_backoff(http_recorder: HttpRecorder) -> None:
    http_recorder.fail(2, status=500)
    started = time.monotonic()
    [got] = notify.send([webhook(http_recorder)], "x", "escalation", "INC-1", context())
    assert got["ok"] and got["attempts"] == 3
    assert [r.status for r in http_recorder.requests] == [500, 500, 200]
    assert 0.7 <= time.monotonic() - started < 2.0, "backoff 0.25 s then 0.5 s"


def test_client_errors_are_not_retried(http_recorder: HttpRecorder) -> None:
    http_recorder.fail(1, status=403)
    [got] = notify.send([webhook(http_recorder)], "x", "escalation", "INC-1", context())
    assert not got["ok"] and got["attempts"] == 1 and got["detail"] == "HTTP 403"


def test_a_channel_that_hangs_costs_at_most_its_budget_and_channels_fail_in_parallel(
        http_recorder: HttpRecorder) -> None:
    http_recorder.hang(times=20, seconds=30)
    channels = [webhook(http_recorder, f"hung{n}") for n in range(3)]
    started = time.monotonic()
    delivered = notify.send(channels, "x", "escalation", "INC-1", context())
    elapsed = time.monotonic() - started
    assert [d["ok"] for d in delivered] == [False, False, False]
    assert all(d["detail"].startswith("timeout") for d in delivered), delivered
    assert all(d["attempts"] >= 2 for d in delivered), "the default budget leaves room for a retry"
    assert elapsed < 5.0, f"three hung channels took {elapsed:.1f} s"


def test_failed_channels_go_to_the_fallback_and_are_listed(http_recorder: HttpRecorder, state: Path) -> None:
    down = {"type": "webhook", "name": "down", "url": f"http://127.0.0.1:{closed_port()}/x/{WEBHOOK_SECRET}"}
    audit = {"type": "file", "name": "audit", "path": "audit.jsonl"}
    delivered = notify.send([slack(http_recorder), down, audit], "INC-1 FAILED", "escalation", "INC-1", context(),
                            fallback="audit")
    got = by_channel(delivered)
    assert got["down"]["detail"] == "URLError (Connection refused) after 3 attempts"
    assert got["down"]["fallback"] == "audit" and got["down"]["fallback_ok"]
    assert notify.failed_channels(delivered) == ["down"]
    lines = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]
    assert [line.get("undelivered_on") for line in lines] == [None, ["down"]]
    assert lines[1]["text"] == "INC-1 FAILED" and lines[1]["severity"] == "P0"


def test_without_a_fallback_or_when_it_fails_too_the_default_file_keeps_the_message(state: Path) -> None:
    down = {"type": "webhook", "name": "down", "url": f"http://127.0.0.1:{closed_port()}/", "retries": 0}
    broken_file = {"type": "file", "name": "broken", "path": "no-such-dir/\0/x"}
    delivered = notify.send([down, broken_file], "msg", "escalation", "INC-1", context(), fallback="broken")
    assert notify.failed_channels(delivered) == ["broken", "down"]
    assert {d["fallback"] for d in delivered if not d["ok"]} == {"fallback"}
    [line] = (state / "notifications-undelivered.jsonl").read_text().splitlines()
    assert json.loads(line)["undelivered_on"] == ["down", "broken"]


def test_bad_channel_settings_are_reported_with_the_valid_choices() -> None:
    got = by_channel(notify.send([{"type": "sms", "name": "sms"}, {"type": "pagerduty", "name": "pd"},
                                  {"type": "email", "name": "mail", "host": "h", "username": "u",
                                   "password_env": "UNSET_PASSWORD_VARIABLE"}], "x", "escalation", "I", context()))
    assert got["sms"]["detail"] == "unknown channel type; valid: slack, pagerduty, email, webhook, file"
    assert got["pd"]["detail"] == "missing setting: routing_key (or routing_key_env)"
    assert got["mail"]["detail"] == "missing setting: from, to, password (or password_env)"


# -- secrets --------------------------------------------------------------------------------------
def test_no_secret_reaches_a_result_a_record_or_the_fallback(http_recorder: HttpRecorder, state: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_ROUTING_KEY", ROUTING_KEY)
    bad_port = {"type": "webhook", "name": "bad-url", "url": f"http://127.0.0.1:{WEBHOOK_SECRET}/x"}
    failing = slack(http_recorder, retries=0)
    pd = {"type": "pagerduty", "name": "pd", "url": f"{http_recorder.url}/v2/enqueue",
          "routing_key_env": "TEST_ROUTING_KEY"}
    http_recorder.fail(1, status=500, path_prefix="/slack/")
    delivered = notify.send([bad_port, failing, pd], "x", "escalation", "INC-1", context())
    assert notify.failed_channels(delivered) == ["bad-url", "slack"]
    assert http_recorder.under("/v2/enqueue")[0].json["routing_key"] == ROUTING_KEY, "the key from the environment"
    shown = json.dumps(delivered) + all_text(state)
    for secret in (SLACK_SECRET, ROUTING_KEY, WEBHOOK_SECRET, "/slack/hook/"):
        assert secret not in shown


def test_redact_hides_every_secret_setting() -> None:
    channel = {"url": "https://hooks.example/AAA/BBB", "token": "xoxb-123456", "password": "pw-secret",
               "routing_key": "rk-secret", "username": "mayday"}
    text = "x https://hooks.example/AAA/BBB xoxb-123456 pw-secret rk-secret mayday"
    assert ch.redact(text, ch.secrets_of(channel)) == "x *** *** *** *** mayday"


# -- what a run's outcome says --------------------------------------------------------------------
def test_undo_commands() -> None:
    extra = {"releases": {"web1": "v2", "web2": "v2"}}
    assert notify.undo_command("level1", {}, "RECOVERED", extra) == "mayday level1 --release v2 --force"
    assert notify.undo_command("level1", {}, "RECOVERED", extra, "/x/inv", "/lab") == \
        "mayday level1 --release v2 --force -i /x/inv"
    assert notify.undo_command("level1", {}, "FAILED", extra) == ""
    assert notify.undo_command("level1", {}, "RECOVERED", {"releases": {"web1": "v2", "web2": "v3"}}) == ""
    assert notify.undo_command("read-only", {"state": "on"}, "RECOVERED", {}) == "mayday db read-write"
    assert notify.undo_command("lockdown", {}, "DONE", {}) == "mayday lockdown lift"
    assert notify.undo_command("security-account", {"user": "eve"}, "DONE", {}) == \
        "mayday security account eve --restore"
    assert notify.undo_command("security-account", {"user": "eve", "restore": True}, "DONE", {}) == ""
    assert notify.undo_command("corruption", {"restore": False}, "RECOVERED", {}) == "mayday db read-write"
    assert notify.undo_command("backup", {}, "DONE", {}) == ""


def test_incident_fields_take_an_alerts_severity_and_name() -> None:
    meta = {"scenario": "level1", "severity": 1, "title": "t", "hosts": ["web1"], "inventory": "/inv",
            "operator": "ops", "run_id": "R1"}
    plain = notify.incident_fields(meta, "RECOVERED", "s")
    assert plain["severity"] == "P0" and plain["why"] == "run by ops (run R1)"
    alerted = notify.incident_fields({**meta, "alert": {"alertname": "HealthCheckFailing", "severity": "P1",
                                                        "starts_at": "2026-01-01T00:00:00.000Z"}}, "FAILED", "s")
    assert alerted["severity"] == "P1"
    assert alerted["why"] == "alert HealthCheckFailing firing since 2026-01-01T00:00:00.000Z"
