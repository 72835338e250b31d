"""Run records: a dead run is not shown as running; exit codes of runs that hand over or were abandoned."""

from __future__ import annotations

import os
import socket

import pytest

from mayday import history, locks, records


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("MAYDAY_STATE_DIR", str(tmp_path))
    return tmp_path


def test_a_run_killed_without_a_word_shows_as_died_and_not_in_progress(state):
    me = os.getpid()
    records.write_run("live", {"run_id": "live", "status": "running", "started": "1", "pid": me,
                               "pid_start": locks.process_start(me), "controller": socket.gethostname()})
    records.write_run("dead", {"run_id": "dead", "status": "running", "started": "2", "pid": 2 ** 22 + 1,
                               "pid_start": "1", "controller": socket.gethostname()})
    records.write_run("done", {"run_id": "done", "status": "successful", "started": "3", "outcome": "RECOVERED"})
    shown = {r["run_id"]: r["status"] for r in history.load_runs()}
    assert shown == {"live": "running", "dead": "died", "done": "successful"}
    assert [r["run_id"] for r in history.in_progress()] == ["live"]
    lines = history.history_lines(history.load_runs())
    assert "died" in lines[2] and "RECOVERED" in lines[3]


def test_a_refused_hand_over_after_a_failed_run_exits_1_not_2():
    from mayday.runner import RunResult

    def result(own, handed):
        return RunResult("r", 2, "failed", 1.0, "INC-1", {"outcome": own}, None, [], [],
                         {"outcome": handed} if handed else None)

    assert result("FAILED", "REFUSED").exit_code == 1  # performance flushed, Level 1 refused
    assert result("FAILED", "RECOVERED").exit_code == 0  # Level 1 recovered: the hand-over decides
    assert result("FAILED", "FAILED").exit_code == 1
    assert result("REFUSED", None).exit_code == 2
    assert result("ABANDONED", None).exit_code == 1
