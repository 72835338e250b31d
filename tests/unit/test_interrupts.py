"""mayday.interrupts: what the CLI does with Ctrl-C, SIGTERM and SIGHUP during a run, with real signals."""

from __future__ import annotations

import os
import signal

import pytest

from mayday import records
from mayday.interrupts import RunSignals


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("MAYDAY_STATE_DIR", str(tmp_path))
    return tmp_path


def test_first_interrupt_marks_the_run_the_second_abandons_and_handlers_are_restored(state, capfd):
    before = signal.getsignal(signal.SIGINT)
    with RunSignals("run-1") as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert records.interrupted("run-1")["signal"] == "SIGTERM"
        assert not signals.should_abandon()
        signals.changing = True
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.should_abandon()
        assert records.interrupted("run-1")["signal"] == "SIGTERM"  # the first one counts
    assert signal.getsignal(signal.SIGINT) is before
    said = capfd.readouterr().err
    assert "stopping before the first change" in said and "abandoning the run now" in said


def test_an_interrupt_while_hosts_change_says_the_run_finishes(state, capfd):
    with RunSignals("run-2") as signals:
        signals.changing = True
        os.kill(os.getpid(), signal.SIGINT)
        assert not signals.should_abandon()
    assert "does not stop mid-step" in capfd.readouterr().err


def test_a_hangup_is_ignored(state):
    with RunSignals("run-3") as signals:
        os.kill(os.getpid(), signal.SIGHUP)
        assert signals.hung_up and not signals.should_abandon()
    assert records.interrupted("run-3") is None


def test_a_read_only_run_stops_at_the_first_interrupt_and_marks_nothing(state):
    with RunSignals("run-4", read_only=True) as signals:
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.should_abandon()
    assert records.interrupted("run-4") is None
