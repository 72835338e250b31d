"""Drills on the lab (issue 11): a drill passes with its figures and leaves the hosts as it found
them; a production inventory is refused before any connection; the kill switches stop a drill and
its fault is removed; a controller killed with SIGKILL mid-drill leaves the fault to the host's lease;
the restore test never touches the live databases and drops its scratch copy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from lab_helpers import (
    APP,
    HISTORY,
    LAB_DBS,
    MAYDAY,
    ROOT,
    WEB_HOSTS,
    LabDb,
    Mayday,
    dexec,
    health,
    install_release,
    live_as_last_deployed,
)

# drill_lab: v1 live and last deployed, Alertmanager quiet, whatever earlier files on this lab did.
pytestmark = pytest.mark.usefixtures("drill_lab")

FAULTS = "/var/lib/mayday/drill-faults"
HOST_STOP = "/var/lib/mayday/drill-stop"
# The app writes its heartbeat on every health check: not the drill's doing.
APP_WRITES = {"web_heartbeats"}


def drill_state(host: str) -> dict[str, str]:
    """What a drill's fault and its cleanup touch on a web host."""
    out = dexec(host, f"""
        echo "current=$(readlink {APP}/current)"
        echo "releases=$(ls {APP}/releases | tr '\\n' ' ')"
        echo "history=$(md5sum < {APP}/.mayday-deploy-history | cut -c1-32)"
        echo "faults=$(ls {FAULTS} 2>/dev/null | tr '\\n' ' ')"
        echo "leases=$(ls /var/lib/mayday/leases 2>/dev/null | grep -c drill)"
        echo "timers=$(systemctl list-units --all --plain --no-legend 'mayday-lease-drill*' | wc -l)"
    """)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def states() -> dict[str, dict[str, str]]:
    return {h: drill_state(h) for h in WEB_HOSTS}


def journal_of(mayday: Mayday, drill: str) -> tuple[Path, dict[str, Any]]:
    runs = sorted((mayday.state_dir / "drills" / drill).glob("DRILL-*"))
    assert runs, f"no run of {drill} under {mayday.state_dir}"
    path = runs[-1] / "journal.json"
    return runs[-1], json.loads(path.read_text()) if path.exists() else {}


def quiet_drill(tmp_path: Path, name: str, lease: str = "10m") -> Path:
    """Level 1's fault with a probe the fault does not break: the drill waits in detection."""
    doc = yaml.safe_load((ROOT / "drills" / "level1.yml").read_text())
    doc["steady_state"] = [{"name": "stylesheet", "hosts": "web",
                            "http": {"url": "http://127.0.0.1/assets/app.css", "body_contains": "font-family"}}]
    doc["sla"] = {"detect": "60s", "recover": "15m"}
    doc["lease"] = lease
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def wait_injected(timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not all(drill_state(h)["faults"].strip() for h in WEB_HOSTS):
        assert time.monotonic() < deadline, "the fault was never injected"
        time.sleep(0.5)


def test_level1_drill_passes_and_leaves_hosts_as_found(mayday: Mayday) -> None:
    before = states()
    out = mayday.run("drill", "run", "level1", "--json", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads(out.stdout)
    fig = summary["figures"]
    assert summary["verdict"] == "PASSED"
    assert 0 < fig["time_to_detect_s"] <= 30 and fig["time_to_detect_s"] < fig["time_to_recover_s"] <= 900
    directory, doc = journal_of(mayday, "level1")
    assert doc["format_version"] == 1 and doc["environment"] == "lab"
    assert {e["host"] for e in doc["events"] if e["event"] == "injected"} == set(WEB_HOSTS)
    assert all(f["outcome"] == "removed" for e in doc["events"] if e["event"] == "cleanup" for f in e["faults"])
    scenario = next(e for e in doc["events"] if e["event"] == "scenario")
    assert scenario["outcome"] == "RECOVERED" and scenario["incident"]
    assert (mayday.state_dir / "incidents" / scenario["incident"] / "report.json").is_file()
    for name in ("junit.xml", "report.md", "events.jsonl"):
        assert (directory / name).stat().st_size > 0
    assert states() == before
    assert all(health(h).get("status") == "healthy" for h in WEB_HOSTS)
    trend = mayday.run("drill", "report", "level1", "--json")
    assert trend.returncode == 0 and json.loads(trend.stdout)[0]["last"] == "PASSED"


def test_a_failed_recovery_fails_the_drill_at_once_and_puts_back_the_release_it_found(mayday: Mayday) -> None:
    """v1 live, but the last line of the deploy history a broken release: Level 1 rolls back onto it and
    ends FAILED. The drill must not wait out its 15-minute SLA, and must leave v1 live."""
    install_release("drillbad", broken=True)
    for host in WEB_HOSTS:  # v1 back by hand, the history left ending with drillbad
        dexec(host, f"ln -sfn releases/v1 {APP}/current.t && mv -T {APP}/current.t {APP}/current")
    try:
        before = states()
        started = time.monotonic()
        out = mayday.run("drill", "run", "level1", "--json", timeout=600)
        took = time.monotonic() - started
        assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
        summary = json.loads(out.stdout)
        assert summary["verdict"] == "FAILED"
        assert "the recovery scenario ended FAILED" in summary["reasons"], summary["reasons"]
        assert took < 120, f"{took:.0f} s: the drill waited on after its scenario failed"
        assert {h: s["current"] for h, s in states().items()} == {h: "releases/v1" for h in WEB_HOSTS}
        assert states() == before
        assert all(health(h).get("status") == "healthy" for h in WEB_HOSTS)
    finally:
        live_as_last_deployed("v1")


def test_production_inventory_refused_before_any_connection(mayday: Mayday) -> None:
    before = states()
    out = mayday.run("drill", "run", "level1", "-i", "production")
    assert out.returncode == 2 and "declared 'production'" in out.stderr
    assert not (mayday.state_dir / "drills" / "level1").exists()
    # Plain ansible-playbook: the same refusal recorded, every host task skipped (the production
    # hosts are example.internal names: a connection attempt would fail as unreachable).
    plain = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", "inventories/production",
                            "playbooks/drill.yml", "-e", "drill=level1"], cwd=ROOT, env=mayday.env(),
                           capture_output=True, text=True, check=False, timeout=120)
    assert plain.returncode != 0 and "unreachable=1" not in plain.stdout
    _, doc = journal_of(mayday, "level1")
    assert doc["verdict"] == "REFUSED" and doc["exit_code"] == 2 and "production" in doc["reasons"][0]
    assert not any(e["event"] == "injected" for e in doc["events"])
    assert states() == before


def test_kill_switches_stop_the_drill_and_remove_the_fault(mayday: Mayday, tmp_path: Path) -> None:
    before = states()
    # The controller's switch set before the run: stopped at the first probe, nothing injected.
    assert mayday.run("drill", "stop").returncode == 0
    early = mayday.run("drill", "run", str(quiet_drill(tmp_path, "stop-early")))
    assert mayday.run("drill", "stop", "--clear").returncode == 0
    assert early.returncode == 2, early.stderr
    assert states() == before
    # A host's switch set while the drill waits for detection: it stops, cleans up, keeps its logs.
    proc = subprocess.Popen([MAYDAY, "drill", "run", str(quiet_drill(tmp_path, "stop-host"))], cwd=ROOT,
                            env=mayday.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_injected()
        started = time.monotonic()
        dexec("web1", f"touch {HOST_STOP}")
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - started
    finally:
        dexec("web1", f"rm -f {HOST_STOP}")
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert took < 30  # the detection window was 95 s
    directory, doc = journal_of(mayday, "stop-host")
    assert doc["verdict"] == "FAILED" and any("kill switch" in r for r in doc["reasons"])
    assert (directory / "events.jsonl").is_file() and (directory / "report.md").is_file()
    assert states() == before
    # SIGTERM to mayday (systemctl stop): the same graceful stop and cleanup.
    _, doc = interrupted(mayday, quiet_drill(tmp_path, "sigterm"), lambda proc: proc.send_signal(signal.SIGTERM))
    assert doc["reasons"][0] == "stopped by the kill switch (interrupted by SIGTERM)", doc["reasons"]
    assert states() == before
    # Ctrl-C in the operator's terminal: SIGINT to the whole foreground process group at once.
    directory, doc = interrupted(mayday, quiet_drill(tmp_path, "ctrl-c"),
                                 lambda proc: os.killpg(proc.pid, signal.SIGINT))
    assert doc["verdict"] == "FAILED" and (directory / "events.jsonl").is_file(), doc["reasons"]
    assert states() == before


def test_a_release_deployed_during_the_drill_stays_live(mayday: Mayday, tmp_path: Path) -> None:
    """Staging is shared: someone deploys v3 while the drill waits for detection, then the drill is
    stopped. Its cleanup takes away its own release and history line and leaves v3 live."""
    history = {h: dexec(h, f"cat {HISTORY}") for h in WEB_HOSTS}

    def deploy_then_stop(proc: subprocess.Popen[str]) -> None:
        install_release("v3")
        proc.send_signal(signal.SIGTERM)

    try:
        _, doc = interrupted(mayday, quiet_drill(tmp_path, "deploy-during"), deploy_then_stop)
        assert doc["verdict"] == "FAILED" and any("SIGTERM" in r for r in doc["reasons"]), doc["reasons"]
        for host in WEB_HOSTS:
            state = drill_state(host)
            assert state["current"] == "releases/v3" and "drill-" not in state["releases"], state
            assert not state["faults"].strip() and state["leases"] == "0" and state["timers"] == "0", state
            added = dexec(host, f"cat {HISTORY}").removeprefix(history[host]).splitlines()
            assert [line.split("\t")[-1] for line in added] == ["v3"], added
            assert health(host).get("status") == "healthy"
    finally:
        live_as_last_deployed("v1")


def interrupted(mayday: Mayday, drill: Path, interrupt: Any) -> tuple[Path, dict[str, Any]]:
    """Runs the drill in its own session, interrupts it once its fault is in; exit 1 and its journal."""
    proc = subprocess.Popen([MAYDAY, "drill", "run", str(drill)], cwd=ROOT, env=mayday.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_injected()
        interrupt(proc)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    return journal_of(mayday, drill.stem)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def test_controller_sigkill_leaves_the_fault_to_the_lease(mayday: Mayday, tmp_path: Path) -> None:
    before = states()
    proc = subprocess.Popen([MAYDAY, "drill", "run", str(quiet_drill(tmp_path, "sigkill")), "--lease", "15s"],
                            cwd=ROOT, env=mayday.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_injected()
        leases = [json.loads(dexec(h, "cat /var/lib/mayday/leases/drill-*.json")) for h in WEB_HOSTS]
        for playbook in children(proc.pid):  # the playbook runs in its own process group
            os.killpg(playbook, signal.SIGKILL)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = max(lease["expires_epoch"] for lease in leases) + 5
    while states() != before:
        assert time.time() < deadline, f"fault still in place 5 s after the lease ended: {states()}"
        time.sleep(0.5)
    assert all(health(h).get("status") == "healthy" for h in WEB_HOSTS)
    directory, _ = journal_of(mayday, "sigkill")
    assert (directory / "events.jsonl").is_file()  # the logs stay


def live_checksums(db: LabDb) -> dict[str, str]:
    """Every table of the live database but the app's heartbeat: rows in key order, hashed."""
    if db.engine == "mariadb":
        tables = db.sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'app'").split()
        dump = "mariadb -N -B app -e 'SELECT * FROM `{t}` ORDER BY 1' | md5sum"
    else:
        tables = db.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", db="app").split()
        dump = ("runuser -u postgres -- psql -XAtq -d app "
                "-c 'COPY (SELECT * FROM \"{t}\" ORDER BY 1) TO STDOUT' | md5sum")
    return {t: db.bash(dump.format(t=t)).split()[0] for t in sorted(set(tables) - APP_WRITES)}


def test_restore_test_leaves_the_live_databases_untouched(mayday: Mayday) -> None:
    if not all(db.manifests() for db in LAB_DBS.values()):
        assert mayday.run("backup", timeout=600).returncode == 0
    before = {engine: (live_checksums(db), db.databases()) for engine, db in LAB_DBS.items()}
    out = mayday.run("drill", "run", "restore-test", "--json", timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    _, doc = journal_of(mayday, "restore-test")
    tested = [e for e in doc["events"] if e["event"] == "restore_test"]
    assert {e["engine"] for e in tested} == set(LAB_DBS) and all(e["ok"] and e["scratch_dropped"] for e in tested)
    assert doc["figures"]["rpo_s"] is not None and doc["figures"]["restore_s"] > 0
    for engine, db in LAB_DBS.items():
        assert (live_checksums(db), db.databases()) == before[engine]
        assert not db.exists("app__mayday_drilltest")
