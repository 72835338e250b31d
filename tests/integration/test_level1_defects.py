"""Level 1 defects the scenario skeleton fixed, each proven on the lab's hosts.

Every test starts from the broken lab (web1 and web2 on release v2, which fails its health check;
v1 is the good release before it) and asserts on host state: where `current` points, the failed
markers, service PIDs, files, the run locks and what /health-check answers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab_helpers import (
    ANSIBLE_PLAYBOOK,
    APP,
    DB_HOST,
    LAB_HOSTS,
    LAB_NAME,
    MAYDAY,
    ROOT,
    WEB_HOSTS,
    Mayday,
    clear_host_locks,
    current_release,
    dexec,
    health,
    host_lock,
    install_release,
    lab_deploy,
    mark_failed_by_hand,
    markers,
    plant_host_lock,
    prune_test_releases,
    serve_by_hand,
    snapshot,
)

from mayday import locks

pytestmark = pytest.mark.usefixtures("broken_lab")


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"rc={result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"


def flat(text: str) -> str:
    return " ".join(text.split())


def assert_serves(release: str) -> None:
    for host in WEB_HOSTS:
        assert current_release(host) == release, f"{host} serves {current_release(host)}, not {release}"
        doc = health(host)
        assert doc.get("status") == "healthy" and doc.get("version") == release, f"{host}: {doc}"


def assert_no_lock_left(mayday: Mayday) -> None:
    left = sorted(p.name for p in (mayday.state_dir / "locks").glob("*.lock"))
    assert not left, f"controller locks left in {mayday.state_dir / 'locks'}: {left}"
    held = {h: host_lock(h) for h in LAB_HOSTS}
    assert not {h: v for h, v in held.items() if v is not None}, f"host locks left: {held}"


def playbook(mayday: Mayday, *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ANSIBLE_PLAYBOOK, *args], cwd=cwd, env=env or mayday.env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, check=False, timeout=timeout)


@pytest.fixture
def extra_releases() -> Iterator[None]:
    """For tests that deploy releases besides v1 and v2: pruned afterwards (with the deploy-time
    copies the lab's deploy helper kept of them), so later tests find the fixture's two releases."""
    yield
    prune_test_releases()


# --- a. releases are ordered by deploy, not by name ---------------------------------------------


@pytest.mark.usefixtures("extra_releases")
def test_rollback_follows_deploy_order_and_a_second_run_is_a_noop(mayday: Mayday) -> None:
    # The state an earlier rollback left: v1 live, v2 marked failed. Then a, b and a broken c are
    # deployed. By name a < b < c < v1 < v2; by deploy v1, v2, a, b, c.
    serve_by_hand("v1")
    mark_failed_by_hand("v2")
    install_release("a")
    install_release("b")
    lab_deploy("c", broken=True)  # the lab's real deploy helper appends c to the deploy history
    for host in WEB_HOSTS:
        assert current_release(host) == "c"
        assert health(host).get("status") != "healthy", f"c should deploy broken on {host}"

    first = playbook(mayday, "playbooks/rollback-level1.yml")
    assert first.returncode == 0, output(first)
    assert mayday.last_report()["outcome"] == "RECOVERED", mayday.last_report()
    assert_serves("b")
    for host in WEB_HOSTS:
        assert markers(host) == {"v2": "file", "c": "file"}, f"{host}: {markers(host)}"
    after_first = snapshot()

    # By name, v1 (not marked) would come after b: a second run must not move on to a.
    second = playbook(mayday, "playbooks/rollback-level1.yml")
    assert second.returncode == 0, output(second)
    report = mayday.last_report()
    assert report["outcome"] == "NOOP", report
    assert snapshot() == after_first, "the second run changed a host"
    assert_serves("b")
    for host in WEB_HOSTS:
        assert "b" not in markers(host), f"{host}: b marked failed: {markers(host)}"

    # The second run is a NOOP as soon as the hosts answer healthy, whatever the order. Production
    # down again for another reason (php-fpm stopped): b is still the release to serve, since every
    # release deployed after it is marked failed; by name, mayday would move on to a.
    for host in WEB_HOSTS:
        dexec(host, "systemctl stop php8.2-fpm")
    third = playbook(mayday, "playbooks/rollback-level1.yml")
    assert third.returncode == 0, output(third)
    assert mayday.last_report()["outcome"] == "RECOVERED", mayday.last_report()
    assert_serves("b")
    for host in WEB_HOSTS:
        assert markers(host) == {"v2": "file", "c": "file"}, f"{host}: {markers(host)}"


# --- b. an unknown --release is refused even when production is up ----------------------------


def test_unknown_release_on_a_healthy_fleet_is_refused(mayday: Mayday) -> None:
    serve_by_hand("v1")
    mark_failed_by_hand("v2")
    before = snapshot()
    result = mayday.run("level1", "--release", "nope")
    assert result.returncode == 2, output(result)
    report = mayday.last_report()
    assert report["outcome"] == "REFUSED", report
    for text in (flat(result.stderr), flat(report.get("summary") or "")):
        assert "nope" in text and "v1" in text and "v2" in text, f"the valid releases are not listed: {text}"
    assert snapshot() == before, "a refused run changed a host"
    assert_serves("v1")
    assert not mayday.notifications(), "a refusal sends nothing"


# --- c. a release shipping its own .mayday-failed symlink -------------------------------------


def test_failed_marker_planted_as_a_symlink_is_not_followed(mayday: Mayday) -> None:
    motd: dict[str, str] = {}
    for host in WEB_HOSTS:
        motd[host] = dexec(host, "sha256sum /etc/motd").split()[0]
        dexec(host, f"ln -s /etc/motd {APP}/releases/v2/.mayday-failed")
        assert markers(host) == {"v2": "symlink"}

    result = mayday.run("level1")
    assert result.returncode == 0, output(result)
    report = mayday.last_report()
    assert report["outcome"] == "RECOVERED", report
    assert_serves("v1")
    for host in WEB_HOSTS:
        assert dexec(host, "sha256sum /etc/motd").split()[0] == motd[host], f"{host}: /etc/motd was written"
        assert dexec(host, "stat -c %F /etc/motd").strip() == "regular file"
        assert markers(host) == {"v2": "file"}, f"{host}: {markers(host)}"
        marker = json.loads(dexec(host, f"cat {APP}/releases/v2/.mayday-failed"))
        assert marker.get("incident") == report["incident"], marker


# --- d. ansible-playbook from inside playbooks/ --------------------------------------------------


def test_playbook_run_from_inside_playbooks_dir_recovers_and_records_in_the_state_dir(mayday: Mayday) -> None:
    env = mayday.env()
    env.pop("ANSIBLE_CONFIG")  # playbooks/ansible.cfg, found in the working directory
    playbooks = ROOT / "playbooks"
    stray = {p.name for p in (playbooks / ".mayday" / "incidents").glob("*")}
    result = playbook(mayday, "rollback-level1.yml", cwd=playbooks, env=env)
    assert result.returncode == 0, output(result)
    assert_serves("v1")
    for host in WEB_HOSTS:
        assert markers(host) == {"v2": "file"}, f"{host}: {markers(host)}"

    reports = mayday.reports()
    assert len(reports) == 1, f"expected the run's report in {mayday.state_dir}: {reports}"
    assert reports[0]["outcome"] == "RECOVERED", reports[0]
    assert {p.name for p in (playbooks / ".mayday" / "incidents").glob("*")} == stray, \
        "the run wrote an incident under playbooks/.mayday"
    assert [n.get("event") for n in mayday.notifications()] == ["resolved"]
    history = mayday.run("history", "--json")  # the CLI reads the same state directory
    assert history.returncode == 0, output(history)
    runs = json.loads(history.stdout)
    assert [(r.get("scenario"), r.get("outcome")) for r in runs] == [("level1", "RECOVERED")], runs
    assert_no_lock_left(mayday)


# --- e. a target that fails health: every host back on what it served healthily ---------------


def test_forced_release_that_fails_health_puts_back_the_healthy_one_and_escalates_once(mayday: Mayday) -> None:
    serve_by_hand("v1")  # production is up on v1; v2 is the release an earlier rollback marked failed
    mark_failed_by_hand("v2")

    result = mayday.run("level1", "--release", "v2", "--force", "--json")
    assert result.returncode == 1, output(result)
    doc = json.loads(result.stdout)
    assert doc["outcome"] == "FAILED", doc
    report = mayday.last_report()
    assert report["outcome"] == "FAILED", report
    assert set(report["results"]) >= set(WEB_HOSTS), report["results"]
    for host in WEB_HOSTS:
        assert report["results"][host]["outcome"] == "FAILED", report["results"][host]
    assert_serves("v1")
    for host in WEB_HOSTS:
        # v1 is put back without the marker the switch gave it; v2 keeps the earlier one.
        assert markers(host) == {"v2": "file"}, f"{host}: {markers(host)}"
        assert "INC-EARLIER" in dexec(host, f"cat {APP}/releases/v2/.mayday-failed")
    events = [n.get("event") for n in mayday.notifications()]
    assert events == ["escalation"], events
    assert_no_lock_left(mayday)


@pytest.mark.usefixtures("extra_releases")
def test_target_failing_health_with_no_healthy_release_before_reports_where_hosts_were_left(mayday: Mayday) -> None:
    install_release("broken-x", broken=True)
    for host in WEB_HOSTS:  # v2 live again: broken-x is deployed but not current
        dexec(host, f"ln -sfn releases/v2 {APP}/current.t && mv -T {APP}/current.t {APP}/current")

    result = mayday.run("level1", "--release", "broken-x")
    assert result.returncode == 1, output(result)
    report = mayday.last_report()
    assert report["outcome"] == "FAILED", report
    assert [n.get("event") for n in mayday.notifications()] == ["escalation"]
    assert_no_lock_left(mayday)
    for host in WEB_HOSTS:
        left_on = current_release(host)
        assert left_on in ("v2", "broken-x"), f"{host} on {left_on}"
        assert health(host).get("status") != "healthy"
        said = json.dumps(report["results"][host])
        assert report["results"][host]["outcome"] == "FAILED", said
        assert left_on in said, f"report.json does not say {host} was left on {left_on}: {said}"


# --- f. controller killed between two hosts' switches ----------------------------------------


def test_controller_killed_between_host_switches_then_a_rerun_converges(mayday: Mayday, tmp_path: Path) -> None:
    log = tmp_path / "killed-run.log"
    with open(log, "wb") as handle:
        proc = subprocess.Popen([ANSIBLE_PLAYBOOK, "playbooks/rollback-level1.yml", "-f", "1"], cwd=ROOT,
                                env=mayday.env(), stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)
    seen: tuple[str, str] = ("", "")
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            seen = (current_release("web1"), current_release("web2"))
            if seen == ("v1", "v2"):
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert seen == ("v1", "v2"), f"never saw web1 switched and web2 not (last: {seen}):\n{log.read_text()[-3000:]}"
    assert proc.returncode == -signal.SIGKILL, f"the run ended on its own:\n{log.read_text()[-3000:]}"
    left = [h for h in LAB_HOSTS if host_lock(h) is not None]
    assert left, "the killed run should have left host locks behind"

    # web2's rollback may have been on its way when the controller died (docker exec outlives its
    # client): then web2 finished on its own and the re-run finds production up (NOOP).
    deadline = time.monotonic() + 60
    while dexec("web2", "pgrep -f mayday_recover_cor[e] || true").strip():
        assert time.monotonic() < deadline, "web2's rollback exec did not end"
        time.sleep(0.2)
    on_v2_before = current_release("web2") == "v2"
    result = mayday.run("level1")
    assert result.returncode == 0, output(result)
    assert mayday.last_report()["outcome"] == ("RECOVERED" if on_v2_before else "NOOP"), mayday.last_report()
    assert_serves("v1")
    for host in WEB_HOSTS:
        assert markers(host) == {"v2": "file"}, f"{host}: {markers(host)}"
    assert_no_lock_left(mayday)


# --- g. a host lock held from another controller, and a stale one of this controller -----------


def test_host_lock_of_another_controller_refuses_and_a_stale_own_lock_is_broken(mayday: Mayday) -> None:
    other = {"incident": "INC-OTHER", "run_id": None, "operator": "alice", "controller": "other-box", "pid": 4242,
             "pid_start": "12345", "inventory": "elsewhere", "since": "2026-11-25T08:00:00Z"}
    try:
        planted = plant_host_lock("web2", other)
        before = snapshot()
        result = mayday.run("level1")
        assert result.returncode == 2, output(result)
        report = mayday.last_report()
        assert report["outcome"] == "REFUSED", report
        for text in (flat(result.stderr), flat(report.get("summary") or "")):
            assert "other-box" in text and "INC-OTHER" in text and "web2" in text, f"holder not named: {text}"
        assert snapshot() == before, "a refused run changed a host"
        assert host_lock("web2") == json.loads(planted), "the other controller's lock must stand"
        assert host_lock("web1") is None and host_lock(DB_HOST) is None, "the refused run kept its own host locks"
        assert not list((mayday.state_dir / "locks").glob("*.lock")), "the refused run kept the controller lock"

        status = mayday.run("status", "--json")
        assert status.returncode == 0, output(status)
        held = json.loads(status.stdout)["host_locks"]
        assert held["web2"]["lock"] == "held", held
        assert held["web2"]["holder"].get("controller") == "other-box", held
        assert held["web2"]["holder"].get("incident") == "INC-OTHER", held
        assert held["web1"]["lock"] == "free", held
    finally:
        clear_host_locks(("web2",))

    # A lock of this controller whose process is gone (a run killed earlier) is stale: broken.
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert locks.process_start(dead.pid) is None
    plant_host_lock("web2", dict(other, incident="INC-DEAD", controller=socket.gethostname(), pid=dead.pid,
                                 pid_start="1"))
    result = mayday.run("level1")
    assert result.returncode == 0, output(result)
    assert mayday.last_report()["outcome"] == "RECOVERED", mayday.last_report()
    assert_serves("v1")
    assert_no_lock_left(mayday)


def test_break_lock_breaks_only_the_named_dead_run_of_another_controller(mayday: Mayday) -> None:
    """An AWX job cancelled, a laptop that died: its host locks stand, and every emergency run after it
    is refused. The refusal names --break-lock with the incident; only that incident's locks go, and
    never those of a run alive on this controller."""
    gone = {"incident": "INC-20261125-080000", "run_id": None, "operator": "alice", "controller": "awx-job-7f",
            "pid": 4242, "pid_start": "12345", "inventory": "elsewhere", "since": "2026-11-25T08:00:00Z"}
    alive = dict(gone, incident="INC-20261125-090000", controller=socket.gethostname(), pid=os.getpid(),
                 pid_start=locks.process_start(os.getpid()))
    try:
        planted = {h: plant_host_lock(h, gone) for h in ("web2", DB_HOST)}
        before = snapshot()
        refused = mayday.run("level1")
        assert refused.returncode == 2, output(refused)
        assert "--break-lock INC-20261125-080000" in flat(refused.stderr), output(refused)
        for args in (["--break-lock", "INC-20261125-080001"],  # another incident: not this lock
                     ["--break-lock", "INC-20261125-080000", "--check"],  # a dry run breaks nothing
                     ["--break-lock", "nope"]):  # not an incident id
            result = mayday.run("level1", *args)
            assert result.returncode == (0 if "--check" in args else 2), output(result)
            assert snapshot() == before, f"level1 {' '.join(args)} changed a host"
            assert {h: host_lock(h) for h in planted} == {h: json.loads(v) for h, v in planted.items()}, args
        assert "valid: INC-YYYYMMDD-HHMMSS" in flat(result.stderr), output(result)

        plant_host_lock("web1", alive)  # a run alive on this controller: named or not, it stands
        result = mayday.run("level1", "--break-lock", alive["incident"])
        assert result.returncode == 2, output(result)
        assert snapshot() == before and host_lock("web1") == alive, "a live run's lock was broken"
        clear_host_locks(("web1",))

        result = mayday.run("level1", "--break-lock", "INC-20261125-080000")
        assert result.returncode == 0, output(result)
        report = mayday.last_report()
        assert report["outcome"] == "RECOVERED", report
        named = {s["host"] for s in report["steps"] if "replacing that of incident INC-20261125-080000"
                 in (s.get("detail") or "")}
        assert named == set(planted), f"the record should name the broken locks: {report['steps']}"
        assert_serves("v1")
        assert_no_lock_left(mayday)
    finally:
        clear_host_locks()



# --- h. a routine backup never holds up an emergency -----------------------------------------


def test_backup_in_progress_does_not_hold_up_a_level1_rollback(mayday: Mayday, tmp_path: Path) -> None:
    # A session holding a table lock keeps the backup's dump waiting: a nightly backup mid-way.
    holder = subprocess.Popen(["docker", "exec", f"{LAB_NAME}-{DB_HOST}", "mariadb", "app", "-e",
                               "LOCK TABLES webhook_events WRITE; SELECT SLEEP(120)"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "backup.log"
    with open(log, "wb") as handle:
        backup = subprocess.Popen([MAYDAY, "backup", "--limit", DB_HOST], cwd=ROOT, env=mayday.env(),
                                  stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        waiting = ""
        while backup.poll() is None and time.monotonic() < deadline and not waiting:
            waiting = dexec(DB_HOST, "mariadb -N -e \"SELECT state FROM information_schema.processlist "
                                     "WHERE state LIKE 'Waiting for%lock%' LIMIT 1\"", check=False).strip()
            time.sleep(0.2)
        assert waiting, f"the backup never waited on the held table:\n{log.read_text()[-3000:]}"
        assert host_lock(DB_HOST) is None, "a backup must not hold the run lock on its host"
        assert not list((mayday.state_dir / "locks").glob("*.lock")), "a backup must not hold the controller lock"

        result = mayday.run("level1")
        assert result.returncode == 0, output(result)
        assert mayday.last_report()["outcome"] == "RECOVERED", mayday.last_report()
        assert_serves("v1")
    finally:
        holder.kill()
        holder.wait()
        try:
            backup.wait(timeout=120)
        except subprocess.TimeoutExpired:
            backup.kill()
            backup.wait()
    assert_no_lock_left(mayday)


def test_backup_waits_out_an_emergency_that_holds_its_host(mayday: Mayday) -> None:
    emergency = {"incident": "INC-EMERGENCY", "run_id": None, "operator": "bob", "controller": "other-box",
                 "pid": 4242, "pid_start": "12345", "inventory": "elsewhere", "since": "2026-11-25T08:00:00Z"}
    before = dexec(DB_HOST, "ls -A /var/backups/mayday 2>/dev/null | sort", check=False)
    try:
        planted = plant_host_lock(DB_HOST, emergency)
        result = mayday.run("backup", "--limit", DB_HOST)
        assert result.returncode == 2, output(result)
        assert mayday.last_report()["outcome"] == "REFUSED", mayday.last_report()
        assert host_lock(DB_HOST) == json.loads(planted), "the emergency's lock must stand"
        assert dexec(DB_HOST, "ls -A /var/backups/mayday 2>/dev/null | sort", check=False) == before, \
            "a refused backup wrote files"
    finally:
        clear_host_locks((DB_HOST,))
