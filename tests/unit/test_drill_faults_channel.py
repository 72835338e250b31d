"""The communication drill's failing channel (mayday.drills.channel_fault) with real channels: file
channels in a scratch state directory and a webhook served on loopback that records what it gets."""

from __future__ import annotations

import json
import threading
from collections.abc import Generator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from mayday.drills import channel_fault
from mayday.errors import BadInput


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MAYDAY_STATE_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def receiver() -> Generator[tuple[str, list[dict[str, Any]]], None, None]:
    got: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    server.shutdown()


CHANNELS = [{"type": "file", "name": "incident-log", "path": "notifications.jsonl"},
            {"type": "file", "name": "audit", "path": "audit.jsonl"}]


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_failing_file_channel_is_reported_and_its_message_reaches_the_fallback(state: Path) -> None:
    outcome = channel_fault.run(CHANNELS, ["incident-log"])
    assert outcome["ok"] and outcome["problems"] == []
    failed = next(c for c in outcome["channels"] if c["channel"] == "incident-log")
    assert failed["ok"] is False and failed["fallback"] == "fallback" and failed["fallback_ok"] is True
    assert not (state / "notifications.jsonl").exists()  # the real channel's file was never written
    assert [d["why"] for d in lines(state / "audit.jsonl")] == [outcome["token"]]
    fallback = lines(state / "notifications-undelivered.jsonl")
    assert [(d["why"], d["undelivered_on"]) for d in fallback] == [(outcome["token"], ["incident-log"])]


def test_a_named_fallback_channel_takes_the_message(state: Path) -> None:
    outcome = channel_fault.run(CHANNELS, ["incident-log"], fallback="audit")
    assert outcome["ok"], outcome["problems"]
    assert outcome["fallback"]["record"] == str(state / "audit.jsonl")
    assert [d.get("undelivered_on") for d in lines(state / "audit.jsonl")] == [None, ["incident-log"]]


def test_failing_webhook_meets_a_closed_port_while_the_others_deliver(
        state: Path, receiver: tuple[str, list[dict[str, Any]]]) -> None:
    url, got = receiver
    hooks = [{"type": "webhook", "name": "ticketing", "url": url, "retries": 0},
             {"type": "webhook", "name": "chatops", "url": url}, *CHANNELS]
    outcome = channel_fault.run(hooks, ["ticketing"])
    assert outcome["ok"], outcome["problems"]
    failed = next(c for c in outcome["channels"] if c["channel"] == "ticketing")
    assert failed["ok"] is False and "127.0.0.1" not in json.dumps(outcome["channels"]).replace(url, "")
    assert [d["why"] for d in got] == [outcome["token"]]  # chatops only: the failing one never reached it


def test_a_failover_that_does_not_fall_back_fails_the_drill(state: Path) -> None:
    # The fallback is the failing channel itself: mayday falls back to its default file instead.
    outcome = channel_fault.run(CHANNELS, ["incident-log"], fallback="incident-log")
    assert outcome["ok"]
    # A fallback that cannot write either: the drill says so.
    outcome = channel_fault.run(CHANNELS, ["incident-log"],
                                fallback={"type": "file", "name": "dead", "path": channel_fault.BROKEN_FILE})
    assert not outcome["ok"] and outcome["rc"] == 1
    assert any("did not take the message either" in p for p in outcome["problems"])


def test_judge_names_each_problem() -> None:
    entries = [{"channel": "a", "ok": True}, {"channel": "b", "ok": False, "detail": "HTTP 500"},
               {"channel": "c", "ok": False}]
    problems = channel_fault.judge(entries, ["a", "c", "d"], False)
    assert problems == ["a: reported delivered although it was made to fail", "c: failed without falling back",
                        "d: no delivery attempt reported", "b: did not deliver (HTTP 500)",
                        "the fallback's file does not hold the drill's message naming the failed channels"]


def test_unknown_or_unfailable_channels_are_refused(state: Path) -> None:
    with pytest.raises(BadInput, match="valid: incident-log, audit"):
        channel_fault.run(CHANNELS, ["nope"])
    with pytest.raises(BadInput, match="valid: file, webhook, slack, email"):
        channel_fault.broken({"type": "pagerduty", "name": "pd"})
    assert list(state.iterdir()) == []


def test_broken_copies_keep_the_original_untouched() -> None:
    original = {"type": "email", "name": "mail", "host": "smtp.example.com", "port": 587, "password_env": "X"}
    copy = channel_fault.broken(original, port=1)
    assert (copy["host"], copy["port"], copy["password_env"]) == ("127.0.0.1", 1, "")
    assert original["host"] == "smtp.example.com"
    slack = channel_fault.broken({"type": "slack", "name": "s", "url_env": "MAYDAY_SLACK_WEBHOOK_URL"}, port=1)
    assert slack["url"] == "http://127.0.0.1:1/mayday-drill-failing-channel" and "url_env" not in slack
