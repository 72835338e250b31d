"""Fixtures for the CLI tests against the real lab (systemd containers driven through Docker).

The lab is started once per session (`mayday lab up`), releases v1 (good) and v2 (broken) are
deployed once, and every test starts from the same broken state, reset in a second or two:
web hosts on releases/v2, no failed markers, services running, database credentials intact.
"""

from __future__ import annotations

import subprocess
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import (
    APP,
    LAB_HOSTS,
    MAYDAY,
    PRUNE_RELEASES,
    ROOT,
    WEB_HOSTS,
    Mayday,
    am_delete,
    base_env,
    db_ini_digests,
    dexec,
    ensure_running,
    firing,
    health,
    live_as_last_deployed,
    reset_lab,
    serve_by_hand,
    silence,
    wait_for,
)

from mayday import lab as mayday_lab


@pytest.fixture(scope="session")
def lab() -> dict[str, str]:
    """Starts the lab once and deploys v1 (good) then v2 (broken); returns the good db.ini digests."""
    up = subprocess.run([MAYDAY, "lab", "up"], cwd=ROOT, env=base_env(), capture_output=True, text=True,
                        check=False, timeout=1800)
    assert up.returncode == 0, f"mayday lab up failed:\n{up.stdout}\n{up.stderr}"
    ensure_running()
    for host in WEB_HOSTS:  # leftovers of earlier sessions: only v1 and v2, deployed afresh below
        dexec(host, f"[ -d {APP}/releases ] || exit 0; {PRUNE_RELEASES}")
    for args in (["--release", "v1"], ["--release", "v2", "--broken"]):
        out = subprocess.run([MAYDAY, "lab", "deploy", *args], cwd=ROOT, env=base_env(), capture_output=True,
                             text=True, check=False, timeout=300)
        assert out.returncode == 0, f"mayday lab deploy {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    good = db_ini_digests()
    assert all(health(h).get("status") == "unhealthy" for h in WEB_HOSTS), "v2 should deploy broken"
    return good


@pytest.fixture
def mayday(tmp_path: Path) -> Mayday:
    state = tmp_path / "state"
    state.mkdir()
    return Mayday(state)


@pytest.fixture
def broken_lab(lab: dict[str, str], mayday: Mayday) -> Mayday:
    """Every web host on the broken release v2 (nothing marked failed), services up, credentials good."""
    reset_lab(lab)
    for host in WEB_HOSTS:
        doc = health(host)
        assert doc.get("status") == "unhealthy" and doc.get("version") == "v2", f"{host} not broken: {doc}"
    return mayday


@pytest.fixture(scope="session")
def lab_started() -> None:
    """`mayday lab up` (which also runs playbooks/lab/setup.yml), once per session (per xdist worker)."""
    up = subprocess.run([MAYDAY, "lab", "up"], cwd=ROOT, env=base_env(), capture_output=True, text=True,
                        check=False, timeout=1800)
    assert up.returncode == 0, f"mayday lab up failed:\n{up.stdout}\n{up.stderr}"
    ensure_running()


@pytest.fixture(scope="module")
def lab_up(lab_started: None) -> None:
    """The lab, serving a healthy release at the start of every module that asks for it: a database
    restore ends by checking the app, and a module that ran before on this lab (in any order, under
    xdist) may have left the broken v2 live."""
    if all(health(h).get("status") == "healthy" for h in WEB_HOSTS):
        return
    if all(dexec(h, f"test -d {APP}/releases/v1 && echo yes", check=False).strip() == "yes" for h in WEB_HOSTS):
        serve_by_hand("v1", timeout=60)
        return
    deploy = subprocess.run([MAYDAY, "lab", "deploy", "--release", "v1"], cwd=ROOT, env=base_env(),
                            capture_output=True, text=True, check=False, timeout=600)
    assert deploy.returncode == 0, f"mayday lab deploy failed:\n{deploy.stdout}\n{deploy.stderr}"


@pytest.fixture(scope="module")
def drill_lab(lab_up: None) -> Generator[str, None, None]:
    """A lab a drill accepts, whatever earlier files on it did: v1 live and last deployed, and mon1's
    Alertmanager quiet for every lab host (a drill's target holds the database hosts too, and an earlier
    file's broken password leaves their connection alerts firing for a minute). The slow error-rate
    alert (three 5-minute windows) that their faults leave firing is silenced for the module. Yields
    Alertmanager's URL."""
    live_as_last_deployed("v1")
    url = mayday_lab.configure_monitoring(len(WEB_HOSTS))["alertmanager"]
    silenced = silence(url, "ErrorRateHigh", 1800, "earlier test files' faults, not the drills'")
    wait_for("no alert firing for the lab hosts", lambda: not firing(url, LAB_HOSTS), 180)
    try:
        yield url
    finally:
        am_delete(url, f"/api/v2/silence/{silenced}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Lists what tests recorded with record_property("mayday_outcome", ...), e.g. which side of an
    interrupted restore the live database was found on; says so when every test was skipped."""
    if terminalreporter.config.stash.get(_ALL_SKIPPED, False):
        terminalreporter.write_line("FAILED: every collected test was skipped; nothing was tested (is the lab up?)",
                                    red=True, bold=True)
    lines = [f"{report.nodeid}: {value}"
             for reports in terminalreporter.stats.values() for report in reports
             if getattr(report, "when", None) == "call"
             for name, value in getattr(report, "user_properties", []) if name == "mayday_outcome"]
    if lines:
        terminalreporter.write_sep("-", "mayday outcomes")
        for line in sorted(lines):
            terminalreporter.write_line(line)
    per_file: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if isinstance(report, pytest.TestReport):
                name = report.nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
                per_file[name] = per_file.get(name, 0.0) + report.duration
    if per_file:  # what LONGEST_FIRST below is ordered by
        terminalreporter.write_sep("-", "seconds per file (setup, call and teardown)")
        for name, took in sorted(per_file.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"{took:8.1f}  {name}")


# Under xdist's --dist loadfile a worker takes the next file when it is free, in collection order: the
# longest files go first so that none starts near the end and finishes alone. Measured in CI runs.
LONGEST_FIRST = ("test_db_kill_phases.py", "test_db_emergencies.py", "test_lockdown.py", "test_level1_cli.py",
                 "test_ssh_path.py", "test_scenario_dry_runs.py", "test_drills_plain.py", "test_db_retention.py",
                 "test_level1_defects.py", "test_drills_shipped.py", "test_db_corruption.py",
                 "test_network_isolate.py", "test_lab_pg_app.py", "test_db_trust_pg.py", "test_db_restore.py",
                 "test_drill_faults.py", "test_db_trust_mariadb.py", "test_drills.py", "test_performance.py",
                 "test_rotate_credentials.py", "test_db_kill_long.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order



# --- a session that ran nothing must not pass --------------------------------------------------
# Every test here needs the lab. If something skipped them all (a skip marker, a fixture that
# skips, a -k that kept only skipped tests), pytest would still exit 0 and report a green run.

_RAN = pytest.StashKey[set[str]]()  # tests that ran: passed, failed, errored, xfailed or xpassed
_SKIPPED = pytest.StashKey[set[str]]()
_ALL_SKIPPED = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RAN] = set()
    config.stash[_SKIPPED] = set()
    config.stash[_ALL_SKIPPED] = False


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                                           pytest.TestReport]:
    report = yield
    if report.skipped and not hasattr(report, "wasxfail"):
        item.config.stash[_SKIPPED].add(item.nodeid)
    elif report.when == "call" or report.failed:
        item.config.stash[_RAN].add(item.nodeid)
    return report


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.config.stash[_SKIPPED] and not session.config.stash[_RAN] and exitstatus == pytest.ExitCode.OK:
        session.config.stash[_ALL_SKIPPED] = True
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# Shared by test_scenario_dry_runs.py and test_level2_defects.py (their helpers live in the former).
@pytest.fixture(scope="module")
def small_dbs(lab_up: None, tmp_path_factory: pytest.TempPathFactory) -> Generator[Any, None, None]:
    """Small app tables on db1 and pg1 so each restore takes seconds; removed again afterwards."""
    from test_scenario_dry_runs import (
        LAB_DBS,
        backup_files,
        cleanup_databases,
        prepare_databases,
        resume_writes_by_hand,
    )

    before = {db.host: (set(db.databases()), backup_files(db)) for db in LAB_DBS.values()}
    try:
        yield prepare_databases(tmp_path_factory.mktemp("state-small-dbs"))
    finally:
        for db in LAB_DBS.values():
            resume_writes_by_hand(db)
        cleanup_databases(before)


@pytest.fixture(scope="module")
def web_ready(lab_up: None) -> None:
    """Both web hosts healthy, each with the deploy-time copies level 2 api and frontend restore."""
    from test_scenario_dry_runs import ensure_web_ready

    ensure_web_ready()
