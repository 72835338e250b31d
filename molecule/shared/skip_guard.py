"""Pytest hooks for the Molecule verifiers: a test module whose every test was skipped fails the run.

Testinfra skips every test of a module whose `testinfra_hosts` pattern matches no host of the
inventory; that once hid every test while the verifier passed. Every scenario
loads these hooks as a pytest plugin (-p skip_guard, .config/molecule/config.yml).
"""

from __future__ import annotations

import pytest

_ran: dict[str, bool] = {}  # test module -> whether any of its tests ran (passed or failed)
_key = pytest.StashKey[list[str]]()


def pytest_collection_finish(session: pytest.Session) -> None:
    for item in session.items:  # what runs: after -k / -m deselection
        _ran.setdefault(item.nodeid.split("::", 1)[0], False)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    module = report.nodeid.split("::", 1)[0]
    if report.failed or (report.when == "call" and report.passed):
        _ran[module] = True


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    skipped = sorted(module for module, ran in _ran.items() if not ran)
    session.config.stash[_key] = skipped
    if skipped and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    for module in config.stash.get(_key, []):
        terminalreporter.write_line(
            f"FAILED {module}: every test was skipped (does testinfra_hosts match a host of the inventory?)",
            red=True, bold=True)
