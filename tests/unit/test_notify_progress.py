"""Progress updates (mayday.notify_progress) against a real local Slack/PagerDuty recorder: seed 002's
form, one update per phase change at most, edited in place, rate-limited, the P0 running page."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from mayday import notify, notify_progress
from mayday.notify_progress import ProgressNotifier, Update
from receivers import HttpRecorder, closed_port, wait_until

PHASES = ["Open", "Pre-flight", "Rollback", "Verify", "Notify", "Report"]
META = {"incident": "INC-20260101-000000", "scenario": "level1", "severity": 1, "title": "Production down",
        "hosts": ["web1"], "inventory": "/inv", "operator": "ops"}
TOKEN = "xoxb-progress-token-secret-77"


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MAYDAY_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def slack_bot(recorder: HttpRecorder, **settings: Any) -> dict[str, Any]:
    return {"type": "slack", "name": "slack", "token": TOKEN, "channel": "C1", "api_url": f"{recorder.url}/api",
            "progress_every": 0, **settings}


def test_update_reads_like_seed_002() -> None:
    text = Update(3, "INC-1", "Production down", PHASES, 3, "Rollback", 75.4, 20.0).text()
    lines = text.splitlines()
    assert lines[0] == "ROLLBACK UPDATE #3"
    for line in ("Rollback ID: INC-1", "Progress: [2/6] steps completed (step 3 of 6)", "Current Phase: Rollback",
                 "Time Elapsed: 1m 15s", "ETA: ~0m 20s", "- Pre-flight Completed", "- Rollback In progress",
                 "- Verify Pending"):
        assert line in lines
    final = Update(4, "INC-1", "t", PHASES, 6, "Report", 90, None, outcome="RECOVERED").text()
    assert "Progress: [6/6] steps completed (step 6 of 6)" in final and "Current Phase: finished: RECOVERED" in final


def test_eta_from_history_else_from_the_pace_so_far() -> None:
    assert notify_progress.estimate(10, 3, 6, typical=40) == 30
    assert notify_progress.estimate(50, 3, 6, typical=40) == 0
    assert notify_progress.estimate(10, 3, 6, typical=None) == 20  # 5 s per phase done, 4 to go
    assert notify_progress.estimate(10, 1, 6, typical=None) is None


def test_typical_duration_is_the_median_of_good_runs(state: Path) -> None:
    for n, (scenario, outcome, duration) in enumerate([("level1", "RECOVERED", 10), ("level1", "FAILED", 99),
                                                       ("level1", "NOOP", 20), ("level1", "RECOVERED", 30),
                                                       ("backup", "DONE", 500)]):
        run = state / "runs" / f"2026-{n}"
        run.mkdir(parents=True)
        (run / "mayday-run.json").write_text(json.dumps({"scenario": scenario, "outcome": outcome,
                                                         "duration_s": duration}))
    assert notify_progress.typical_duration("level1") == 20
    assert notify_progress.typical_duration("level2-api") is None


def test_slack_message_is_posted_once_then_edited_at_each_phase_change(http_recorder: HttpRecorder) -> None:
    clock = Clock()
    notifier = ProgressNotifier([slack_bot(http_recorder)], META, PHASES, clock.now, clock=clock)
    for phase in ("Pre-flight", "Pre-flight", "Rollback", "Rollback", "Rollback", "Report"):
        clock.now += 2
        notifier.tick(phase)
    notifier.close("RECOVERED")
    posts = http_recorder.under("/api/chat.postMessage")
    updates = http_recorder.under("/api/chat.update")
    assert len(posts) == 1 and len(updates) == 3, "one message, edited at each phase change and at the end"
    ts = {u.json["ts"] for u in updates}
    assert len(ts) == 1 and posts[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert [u.json["channel"] for u in updates] == ["C1"] * 3
    first = posts[0].json["blocks"][1]["text"]["text"]
    assert "Progress: [1/6] steps completed (step 2 of 6)" in first and "Current Phase: Pre-flight" in first
    assert "Time Elapsed: 0m 02s" in first
    assert "step 3 of 6" in updates[0].json["text"] and "step 6 of 6" in updates[1].json["text"]
    assert "finished, RECOVERED" in updates[2].json["text"]


def test_updates_are_rate_limited_and_a_late_phase_is_sent_once_due(http_recorder: HttpRecorder) -> None:
    clock = Clock()
    notifier = ProgressNotifier([slack_bot(http_recorder, progress_every=10)], META, PHASES, clock.now, clock=clock)
    notifier.tick("Pre-flight")  # sent
    clock.now += 3
    notifier.tick("Rollback")  # too soon: held
    clock.now += 3
    notifier.tick("Rollback")
    assert wait_until(lambda: len(http_recorder.requests) == 1)
    clock.now += 5
    notifier.tick("Rollback")  # 11 s since the last: the held phase goes out
    notifier.close("RECOVERED")
    texts = [r.json["text"] for r in http_recorder.requests]
    assert len(texts) == 3 and "step 3 of 6, Rollback" in texts[1], texts


def test_a_failing_channel_gets_no_more_updates_and_the_run_does_not_wait(http_recorder: HttpRecorder) -> None:
    clock = Clock()
    dead = {"type": "webhook", "name": "dead", "url": f"http://127.0.0.1:{closed_port()}/", "progress": True,
            "progress_every": 0, "retries": 0}
    notifier = ProgressNotifier([dead, slack_bot(http_recorder)], META, PHASES, clock.now, clock=clock)
    started = time.monotonic()
    for phase in PHASES[1:]:
        clock.now += 1
        notifier.tick(phase)
    ticking = time.monotonic() - started
    notifier.close("RECOVERED")
    assert ticking < 0.05, f"ticks took {ticking:.3f} s: sending must not hold up the run"
    dead_tries = [s for s in notifier.sent if s.get("channel") == "dead"]
    assert len(dead_tries) == 1 and not dead_tries[0]["ok"]
    assert len(http_recorder.under("/api/")) == 6


def test_webhook_and_file_append_progress_only_when_asked(http_recorder: HttpRecorder, state: Path) -> None:
    quiet = [{"type": "webhook", "url": f"{http_recorder.url}/hook"}, {"type": "file", "path": "n.jsonl"},
             {"type": "email", "host": "h", "from": "f", "to": "t", "progress": True},
             {"type": "slack", "url": f"{http_recorder.url}/hook"}]
    assert not ProgressNotifier(quiet, {**META, "severity": 2}, PHASES, 0.0).active
    clock = Clock()
    asked = [{"type": "file", "name": "log", "path": "progress.jsonl", "progress": True, "progress_every": 0}]
    notifier = ProgressNotifier(asked, META, PHASES, clock.now, clock=clock)
    for phase in ("Pre-flight", "Rollback"):
        clock.now += 1
        notifier.tick(phase)
    notifier.close("FAILED")
    lines = [json.loads(x) for x in (state / "progress.jsonl").read_text().splitlines()]
    assert [(x["event"], x["step"], x["phase"], x["outcome"]) for x in lines] == [
        ("progress", 2, "Pre-flight", None), ("progress", 3, "Rollback", None), ("progress", 3, "Rollback", "FAILED")]


def test_for_incident_is_none_without_a_channel_that_wants_progress(state: Path) -> None:
    incident = state / "incidents" / "INC-1"
    incident.mkdir(parents=True)
    (incident / "incident.json").write_text(json.dumps(META))
    assert notify_progress.for_incident([{"type": "file", "path": "n.jsonl"}], str(incident), 0.0) is None
    assert notify_progress.for_incident([], str(incident), 0.0) is None
    wanted = notify_progress.for_incident([{"type": "slack", "token": "t", "channel": "C"}], str(incident), 0.0)
    assert wanted is not None and wanted.phases == PHASES
    (incident / "incident.json").write_text(json.dumps({**META, "dry_run": True}))
    assert notify_progress.for_incident([{"type": "slack", "token": "t", "channel": "C"}], str(incident), 0.0) is None


def test_a_p0_run_still_going_after_its_time_pages_and_its_recovery_resolves(http_recorder: HttpRecorder) -> None:
    clock = Clock()
    pd = {"type": "pagerduty", "name": "pd", "url": f"{http_recorder.url}/v2/enqueue", "routing_key": "rk-secret",
          "page_running_after": {"P0": 300}}
    notifier = ProgressNotifier([pd], META, PHASES, clock.now, clock=clock)
    assert notifier.active
    clock.now += 299
    notifier.tick("Rollback")
    clock.now += 2
    notifier.tick("Rollback")
    notifier.tick("Verify")
    notifier.close("RECOVERED")
    [page] = http_recorder.under("/v2/enqueue")
    assert page.json["event_action"] == "trigger" and page.json["dedup_key"].endswith(META["incident"])
    assert "still not recovered after 300 s" in page.json["payload"]["summary"]
    fields = notify.incident_fields(META, "RECOVERED", "ok")
    notify.send([pd], "RECOVERED", "resolved", META["incident"], fields)
    resolve = http_recorder.under("/v2/enqueue")[-1].json
    assert resolve["event_action"] == "resolve" and resolve["dedup_key"] == page.json["dedup_key"]
    # a P2 run never pages while it runs
    assert not ProgressNotifier([pd], {**META, "severity": 3}, PHASES, 0.0).active


def test_ticks_cost_microseconds() -> None:
    clock = Clock()
    notifier = ProgressNotifier([{"type": "slack", "token": "t", "channel": "C", "api_url": "http://127.0.0.1:9"}],
                                META, PHASES, clock.now, clock=clock)
    notifier.every = 1e9  # nothing due: the common case between phase changes
    notifier.last_sent = clock.now
    started = time.perf_counter()
    for _ in range(10000):
        notifier.tick("Rollback")
    assert (time.perf_counter() - started) / 10000 < 20e-6
