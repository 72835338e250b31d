"""Database emergencies on the lab: read-only with a lease (db1 MariaDB, pg1 PostgreSQL behind
pgbouncer) and the pgbouncer reset, through the CLI and plain ansible-playbook.

Every assertion is on host state: the databases' read-only settings, rows written (or not) by the
application's own role, pgbouncer's SHOW DATABASES / SHOW CLIENTS, the lease records and timers on
the hosts; and the incident report's per-host data. Leases are tested with a 5-second length
through the documented test-only inventory minimum (-e mayday_lease_min=1s).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Generator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import (
    ANSIBLE_PLAYBOOK,
    DOCKER,
    PREFIX,
    ROOT,
    Mayday,
    docker,
    lab_inventory_args,
    start_playbook,
)

DB1, PG1 = "db1", "pg1"
LEASES = "/var/lib/mayday/leases"
APP_PASSWORD = os.environ.get("MAYDAY_LAB_DB_PASSWORD") or "lab-only-not-a-secret"
PG_ADMIN = "psql -X -q -A -t -F '|' -h 127.0.0.1 -p 6432 -U postgres -d pgbouncer"
AS_POSTGRES = "runuser -u postgres -- psql -X -q -A -t -d app"
MARKER_TABLE = "web_heartbeats"  # the app's own table (lab setup), owned by the app's role


def sh(host: str, script: str, check: bool = True, timeout: float = 60) -> str:
    return docker("exec", "-e", f"MYSQL_PWD={APP_PASSWORD}", PREFIX + host, "bash", "-c", script, check=check,
                  timeout=timeout).stdout


# --- host state ---------------------------------------------------------------------------------
def pg_read_only() -> str:
    return sh(PG1, f"{AS_POSTGRES} -c \"SELECT coalesce(string_agg(array_to_string(setconfig, ','), ';'), '') "
                   "FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                   "WHERE d.datname = 'app'\"").strip()


def my_read_only() -> str:
    return sh(DB1, "mariadb -N -B -e 'SELECT @@global.read_only'").strip()


def pgbouncer_app() -> dict[str, str]:
    header = sh(PG1, f"{PG_ADMIN} -P tuples_only=off -c 'SHOW DATABASES' | head -1").strip().split("|")
    for line in sh(PG1, f"{PG_ADMIN} -c 'SHOW DATABASES'").splitlines():
        row = dict(zip(header, line.split("|"), strict=False))
        if row.get("name") == "app":
            return row
    raise AssertionError("pgbouncer has no database app")


def app_clients() -> int:
    return sum(1 for line in sh(PG1, f"{PG_ADMIN} -c 'SHOW CLIENTS'").splitlines()
               if line.split("|")[2:3] == ["app"])


def leases(host: str) -> dict[str, Any]:
    """Lease records (name -> mode and JSON) and the lease timers loaded on the host."""
    out = sh(host, f"""
        for f in {LEASES}/*.json; do [ -e "$f" ] || continue
            printf '%s %s ' "${{f##*/}}" "$(stat -c %a "$f")"; tr -d '\\n' < "$f"; echo; done
        units=$(systemctl list-units 'mayday-lease-*' --all --plain --no-legend | awk '{{print $1}}')
        echo "timers: $(echo $units)"
    """)
    records: dict[str, Any] = {}
    timers: list[str] = []
    for line in out.splitlines():
        if line.startswith("timers:"):
            timers = sorted(line.split()[1:])
        elif line.strip():
            name, mode, doc = [*line.split(" ", 2), ""][:3]
            if doc.strip():  # empty: the host removed the file between the listing and the read
                records[name] = {"mode": mode, "doc": json.loads(doc)}
    return {"records": records, "timers": timers}


def snapshot() -> dict[str, Any]:
    """Everything a dry run or a refused run must leave as it was."""
    return {
        "pg_read_only": pg_read_only(),
        "my_read_only": my_read_only(),
        "pgbouncer_paused": pgbouncer_app()["paused"],
        "leases": {h: {"files": {n: hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest()
                                 for n, r in leases(h)["records"].items()},
                       "timers": leases(h)["timers"]} for h in (DB1, PG1)},
        "run_lock": {h: sh(h, "[ -e /var/lib/mayday/run.lock ] && echo held || echo free").strip() for h in (DB1, PG1)},
    }


def pg_write_as_app(marker: str) -> bool:
    """A new session as the app's role through pgbouncer inserts a marker row; True when it went in."""
    sh(PG1, f"psql -X -q -h 127.0.0.1 -p 6432 -U app -d app -c \"INSERT INTO {MARKER_TABLE} (host, release) "
            f"VALUES ('{marker}', 'emg')\"", check=False)
    return pg_rows(marker) == 1


def pg_rows(marker: str) -> int:
    return int(sh(PG1, f"{AS_POSTGRES} -c \"SELECT count(*) FROM {MARKER_TABLE} WHERE host = '{marker}'\"").strip())


def my_write_as_app(marker: str) -> bool:
    sh(DB1, "mariadb -h 127.0.0.1 --protocol=TCP -u app app -e \"INSERT INTO webhook_events (endpoint, payload) "
            f"VALUES ('{marker}', 'emg')\"", check=False)
    return int(sh(DB1, f"mariadb -N -B app -e \"SELECT count(*) FROM webhook_events WHERE endpoint = '{marker}'\"")
               .strip()) == 1


def epoch(stamp: str) -> float:
    """An incident record's UTC timestamp (2026-11-25T22:24:38.940Z) as seconds since the epoch."""
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def wait_for(what: str, probe: Any, timeout: float, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(every)


def back_to_normal() -> None:
    """No lease, no timer, read-write, pgbouncer resumed, no marker rows, no host lock (db1 and pg1)."""
    for host in (DB1, PG1):
        sh(host, f"""
            for u in $(systemctl list-units 'mayday-lease-*' --all --plain --no-legend | awk '{{print $1}}'); do
                systemctl stop "$u"; done
            systemctl reset-failed 'mayday-lease-*' 2>/dev/null
            rm -f {LEASES}/*.json
            rm -rf /var/lib/mayday/run.lock /var/lib/mayday/run.lock.stale.*
        """, check=False)
    # From the postgres database: in app itself, while it is read-only, even ALTER DATABASE is refused.
    sh(PG1, "runuser -u postgres -- psql -X -q -d postgres -c 'ALTER DATABASE app RESET default_transaction_read_only'")
    sh(PG1, f"""set -e
        {AS_POSTGRES} -c "DELETE FROM {MARKER_TABLE} WHERE release = 'emg'"
        {AS_POSTGRES} -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'app'
            AND usename = 'app'" >/dev/null
        {PG_ADMIN} -c 'RESUME app' 2>/dev/null || true
        [ "$({PG_ADMIN} -c 'SHOW DATABASES' | awk -F'|' '$1 == "app" {{print $12}}')" = 0 ]""")
    sh(DB1, "mariadb -e 'SET GLOBAL read_only = OFF'; "
            "mariadb app -e \"DELETE FROM webhook_events WHERE payload = 'emg'\"")


@pytest.fixture(scope="module")
def emg_lab(lab_up: None) -> None:
    """db1 and pg1 of the lab under test, set up (the session's `mayday lab up`)."""
    sh(PG1, f"{AS_POSTGRES} -c 'SELECT 1 FROM {MARKER_TABLE} LIMIT 1'")  # the lab's app table is there


@pytest.fixture
def clean(emg_lab: None, mayday: Mayday) -> Generator[Mayday, None, None]:
    back_to_normal()
    yield mayday
    back_to_normal()


def playbook(m: Mayday, name: str, *extra: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ANSIBLE_PLAYBOOK, str(ROOT / "playbooks" / name), *lab_inventory_args(), *extra],
                          cwd=ROOT, env=m.env(), capture_output=True, text=True, check=False, timeout=timeout)


class OpenSession:
    """A psql session as the app's role through pgbouncer, kept open; statements are sent one by one."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([DOCKER, "exec", "-i", PREFIX + PG1, "psql", "-X", "-q", "-A", "-t", "-h",
                                      "127.0.0.1", "-p", "6432", "-U", "app", "-d", "app"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        self.n = 0

    def send(self, statement: str, timeout: float = 15) -> bool:
        """Sends a statement and a marker; True when the session answered the marker (still alive)."""
        self.n += 1
        assert self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write(f"{statement}\nSELECT 'mark-{self.n}';\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    return False  # the session is gone
                if line.strip() == f"mark-{self.n}":
                    return True
        raise AssertionError(f"open session did not answer within {timeout} s")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


# --- read-only with a lease -----------------------------------------------------------------------
def test_read_only_is_proven_on_both_engines_and_an_open_session_stops_writing(clean: Mayday) -> None:
    session = OpenSession()
    try:
        assert session.send(f"INSERT INTO {MARKER_TABLE} (host, release) VALUES ('emg-open-before', 'emg');")
        assert pg_rows("emg-open-before") == 1, "the open session should write before the switch"

        started = time.time()
        out = clean.run("db", "read-only", "--for", "10m", "--json")
        assert out.returncode == 0, out.stdout + out.stderr

        session.send(f"INSERT INTO {MARKER_TABLE} (host, release) VALUES ('emg-open-after', 'emg');")
        assert pg_rows("emg-open-after") == 0, "a session opened before the switch still wrote"
    finally:
        session.close()

    assert pg_read_only() == "default_transaction_read_only=on"
    assert my_read_only() == "1"
    assert not pg_write_as_app("emg-new-pg"), "a new PostgreSQL session of the app's role wrote"
    assert not my_write_as_app("emg-new-my"), "the app's MariaDB user wrote"

    report = clean.last_report()
    assert report["outcome"] == "RECOVERED"
    results = report["results"]
    assert results[PG1]["probe"]["blocked"] and results[PG1]["probe"]["code"] == "25006"
    assert results[DB1]["probe"]["blocked"] and results[DB1]["probe"]["code"] == "1290"
    assert results[PG1]["before"]["read_only"] != "on" and results[PG1]["after"]["read_only"] == "on"
    assert results[DB1]["before"]["read_only"] == "off" and results[DB1]["after"]["read_only"] == "on"
    assert results[PG1]["recycled"] >= 1  # the open session's server connection
    for host in (DB1, PG1):
        lease = results[host]["lease"]
        found = leases(host)
        record = found["records"][lease["id"] + ".json"]
        assert record["mode"] == "600"
        assert record["doc"]["incident"] == report["incident"]
        assert abs(record["doc"]["expires_epoch"] - (started + 600)) < 60
        assert f"mayday-lease-{lease['id']}.timer" in found["timers"]
        assert APP_PASSWORD not in json.dumps(record["doc"])

    status = clean.run("status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    listed = json.loads(status.stdout)["leases"]
    for host in (DB1, PG1):
        assert [lease["id"] for lease in listed.get(host, [])] == [results[host]["lease"]["id"]], listed
        assert listed[host][0]["armed"] and listed[host][0]["incident"] == report["incident"], listed

    out = clean.run("db", "read-write", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert pg_read_only() == "" and my_read_only() == "0"
    for host in (DB1, PG1):
        assert leases(host) == {"records": {}, "timers": []}, f"{host}: read-write left a lease"
    assert pg_write_as_app("emg-after-rw") and my_write_as_app("emg-after-rw")


def test_lease_reverts_on_the_host_after_the_controller_was_killed(clean: Mayday, tmp_path: Path) -> None:
    proc = start_playbook("db-read-only.yml", clean.env(), *lab_inventory_args(), "-e", "for=5s",
                          "-e", "mayday_lease_min=1s", log=tmp_path / "run.log")
    try:
        wait_for("both databases read-only", lambda: pg_read_only().endswith("=on") and my_read_only() == "1", 90,
                 every=0.2)
        seen_leases = {h: list(leases(h)["records"]) for h in (DB1, PG1)}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    killed_at = time.monotonic()
    assert all(seen_leases.values()), f"a host switched without a lease: {seen_leases}"

    wait_for("the hosts revert read-only on their own", lambda: pg_read_only() == "" and my_read_only() == "0", 40)
    assert time.monotonic() - killed_at < 40
    # The record goes once the whole revert (pgbouncer's RECONNECT included) has run, a moment later.
    wait_for("the expired leases removed", lambda: all(leases(h)["records"] == {} for h in (DB1, PG1)), 20)
    assert pg_write_as_app("emg-after-expiry") and my_write_as_app("emg-after-expiry")


def timer_next_epoch(host: str, lease_id: str) -> float:
    """When the host's timer for this lease fires (systemd's own monotonic schedule), as epoch seconds."""
    out = sh(host, f"""
        span=$(systemctl show -P NextElapseUSecMonotonic mayday-lease-{lease_id}.timer)
        systemd-analyze timespan "$span" | awk '/μs:/ {{print $2}}'
        cut -d' ' -f1 /proc/uptime; date +%s.%N""").split()
    next_usec, uptime, now = out
    return float(now) + int(next_usec) / 1e6 - float(uptime)


def test_lease_extend_moves_the_hosts_timer_and_release_reverts_now(clean: Mayday) -> None:
    out = playbook(clean, "db-read-only.yml", "--limit", PG1, "-e", "for=2m")
    assert out.returncode == 0, out.stdout[-3000:]
    lease_id = next(iter(leases(PG1)["records"].values()))["doc"]["id"]
    before = snapshot()

    unknown = clean.run("lease", "extend", "no-such-lease", "--for", "1h")
    assert unknown.returncode == 2, unknown.stdout + unknown.stderr
    assert lease_id in json.dumps(clean.last_report()["refusals"]), "the refusal should name the active lease"
    dry = clean.run("lease", "extend", lease_id, "--for", "1h", "--check")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert snapshot() == before, "a refused or dry extend changed a host"

    out = clean.run("lease", "extend", lease_id, "--for", "1h")
    assert out.returncode == 0, out.stdout + out.stderr
    record = leases(PG1)["records"][lease_id + ".json"]["doc"]
    assert abs(record["expires_epoch"] - (time.time() + 3600)) < 60
    assert abs(timer_next_epoch(PG1, lease_id) - record["expires_epoch"]) < 5, "the timer was not moved"
    assert pg_read_only().endswith("=on"), "extending must not touch the change itself"

    out = playbook(clean, "lease.yml", "-e", "op=release", "-e", f"id={lease_id}")
    assert out.returncode == 0, out.stdout[-3000:]
    assert pg_read_only() == "", "release did not run the revert"
    assert leases(PG1) == {"records": {}, "timers": []}
    assert pg_write_as_app("emg-after-release")
    assert clean.last_report()["outcome"] == "DONE"


def test_a_restart_does_not_make_read_only_permanent(clean: Mayday) -> None:
    out = playbook(clean, "db-read-only.yml", "--limit", PG1, "-e", "for=15s", "-e", "mayday_lease_min=1s")
    assert out.returncode == 0, out.stdout[-3000:]
    assert pg_read_only().endswith("=on")
    record = next(iter(leases(PG1)["records"].values()))["doc"]
    docker("stop", "-t", "3", PREFIX + PG1, timeout=60)
    try:
        time.sleep(max(0.0, record["expires_epoch"] - time.time() + 2))  # expires while the host is down
    finally:
        docker("start", PREFIX + PG1, timeout=60)
    wait_for("pg1 reverted at boot", lambda: docker("exec", PREFIX + PG1, "true", check=False).returncode == 0
             and sh(PG1, f"{AS_POSTGRES} -c 'SELECT 1'", check=False).strip() == "1", 90)
    wait_for("the boot unit reverts the expired lease", lambda: pg_read_only() == "", 60)
    # The record goes once its revert is done: a moment after the setting under load.
    wait_for("the expired lease's record gone", lambda: leases(PG1)["records"] == {}, 15)
    wait_for("pgbouncer answers", lambda: sh(PG1, f"{PG_ADMIN} -c 'SHOW VERSION'", check=False).strip() != "", 30)
    assert pg_write_as_app("emg-after-boot")


# --- pgbouncer reset ------------------------------------------------------------------------------
PGBENCH = "pgbench -h 127.0.0.1 -p 6432 -U app"


def test_graceful_reset_under_pgbench_load_fails_no_transaction(clean: Mayday) -> None:
    if sh(PG1, f"{AS_POSTGRES} -c \"SELECT to_regclass('pgbench_branches') IS NOT NULL "
               "AND to_regclass('pgbench_history') IS NOT NULL\"").strip() != "t":
        sh(PG1, f"{PGBENCH} -i -s 1 -q app", timeout=120)
    history_before = int(sh(PG1, f"{AS_POSTGRES} -c 'SELECT count(*) FROM pgbench_history'").strip())
    # -C: a connection per transaction, so pgbouncer's session pooling lets the PAUSE through
    # between transactions; the clients that connect during the pause wait for the RESUME.
    bench_started = time.time()
    bench = subprocess.Popen([DOCKER, "exec", PREFIX + PG1, "bash", "-c", f"{PGBENCH} -n -C -c 4 -T 16 app"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1)
        out = clean.run("db", "pgbouncer-reset", "--timeout", "10", "--json")
        text, _ = bench.communicate(timeout=60)
        bench_ended = time.time()
    finally:
        if bench.poll() is None:
            bench.kill()
    assert out.returncode == 0, out.stdout + out.stderr
    # The PAUSE .. RESUME on the host (the incident's sub-steps) fell inside pgbench's run.
    steps = {s["step"].strip(): s for s in clean.last_report()["steps"] if s.get("host") == PG1}
    pause, resume = steps["PAUSE app (at most 10 s)"], steps["RESUME app"]
    resumed_at = epoch(resume["started"]) + resume["duration_s"]
    assert bench_started + 1 < epoch(pause["started"]) < resumed_at < bench_ended, "the reset was not under load"
    assert bench.returncode == 0, text
    failed = re.search(r"number of failed transactions: (\d+)", text)
    processed = re.search(r"number of transactions actually processed: (\d+)", text)
    assert failed and processed, text
    assert int(failed.group(1)) == 0 and int(processed.group(1)) > 0
    history = int(sh(PG1, f"{AS_POSTGRES} -c 'SELECT count(*) FROM pgbench_history'").strip())
    assert history - history_before == int(processed.group(1))  # every transaction pgbench counted is there

    result = clean.last_report()["results"][PG1]
    assert result["how"] == "reconnect" and result["after"]["paused"] is False
    assert result["safety_lease"]["released"] is True
    assert pgbouncer_app()["paused"] == "0"
    assert leases(PG1) == {"records": {}, "timers": []}


def test_pause_that_cannot_complete_times_out_resumed_and_fails(clean: Mayday) -> None:
    holder = subprocess.Popen([DOCKER, "exec", PREFIX + PG1, "psql", "-X", "-q", "-h", "127.0.0.1", "-p", "6432",
                               "-U", "app", "-d", "app", "-c", "BEGIN", "-c", "SELECT pg_sleep(60)"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for("the holder is connected", lambda: app_clients() >= 1, 15, every=0.2)
        out = clean.run("db", "pgbouncer-reset", "--timeout", "2", "--json")
        assert out.returncode == 1, out.stdout + out.stderr
        assert pgbouncer_app()["paused"] == "0"
        assert holder.poll() is None, "a graceful reset must not drop the client that held the pause"
        report = clean.last_report()
        assert report["outcome"] == "FAILED"
        result = report["results"][PG1]
        assert [h["user"] for h in result["holders"]] == ["app"]
        assert result["after"]["paused"] is False
        assert leases(PG1) == {"records": {}, "timers": []}
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_controller_and_module_killed_mid_pause_leave_pgbouncer_resumed_by_the_host(clean: Mayday,
                                                                                   tmp_path: Path) -> None:
    """The PAUSE is held by an open transaction; the controller and the module on the host are both
    killed while pgbouncer is paused: only the host's safety lease (timeout + 10 s) can resume it."""
    holder = subprocess.Popen([DOCKER, "exec", PREFIX + PG1, "psql", "-X", "-q", "-h", "127.0.0.1", "-p", "6432",
                               "-U", "app", "-d", "app", "-c", "BEGIN", "-c", "SELECT pg_sleep(120)"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for("the holder is connected", lambda: app_clients() >= 1, 15, every=0.2)
        proc = start_playbook("pgbouncer-reset.yml", clean.env(), *lab_inventory_args(), "-e", "timeout=8",
                              log=tmp_path / "run.log")
        try:
            wait_for("pgbouncer paused", lambda: pgbouncer_app()["paused"] == "1", 60, every=0.1)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        # The module (python3) runs `timeout ... psql ... PAUSE app`: kill the module alone.
        killed = sh(PG1, """
            for p in $(pgrep -f 'PAUSE ap[p]'); do
                parent=$(ps -o ppid= -p "$p" | tr -d ' ')
                case "$(ps -o args= -p "$parent")" in *python3*) kill -9 "$parent"; echo "$parent" ;; esac
            done""").split()
        killed_at = time.monotonic()
        assert killed, "the module waiting on PAUSE was not found on the host"
        assert pgbouncer_app()["paused"] == "1", "resumed before the module was killed: the lease was not tested"
        assert len(leases(PG1)["records"]) == 1

        wait_for("the host's lease resumes pgbouncer", lambda: pgbouncer_app()["paused"] == "0", 30)
        assert time.monotonic() - killed_at < 30
        wait_for("the expired lease is removed", lambda: leases(PG1)["records"] == {}, 15)
        assert sh(PG1, "pgrep -f 'PAUSE ap[p]' || true").strip() == "", "a psql is left waiting on the PAUSE"
        assert holder.poll() is None, "the client holding the pause was dropped"
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_hard_reset_drops_the_clients_and_counts_them(clean: Mayday) -> None:
    holders = [subprocess.Popen([DOCKER, "exec", PREFIX + PG1, "psql", "-X", "-q", "-h", "127.0.0.1", "-p", "6432",
                                 "-U", "app", "-d", "app", "-c", "SELECT pg_sleep(60)"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    try:
        wait_for("two clients connected", lambda: app_clients() >= 2, 15, every=0.2)
        out = clean.run("db", "pgbouncer-reset", "--mode", "hard", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        for proc in holders:
            proc.wait(timeout=15)  # their sessions were dropped
            assert proc.returncode != 0
        assert app_clients() == 0 and pgbouncer_app()["paused"] == "0"
        result = clean.last_report()["results"][PG1]
        # At least the two holders: an app request (mon1 probes the health check every few seconds) may
        # hold a client of its own at that moment, and it is dropped and counted too.
        assert result["how"] == "kill" and result["dropped"] >= 2
        assert result["before"]["clients"]["total"] >= 2
    finally:
        for proc in holders:
            if proc.poll() is None:
                proc.kill()


ADMIN_SECRET = "emg-admin-not-a-real-secret"


def test_admin_access_with_the_inventory_password_never_shown(clean: Mayday) -> None:
    """pgbouncer's console on loopback asks postgres for a password: without it the reset is refused
    (and pgbouncer is not restarted: a refused login is not a wedged process); with it from the
    inventory the reset runs, and the password is in no output and no incident file."""
    conf = "/etc/pgbouncer"
    sh(PG1, f"""set -e
        cp -p {conf}/pgbouncer_hba.conf {conf}/pgbouncer_hba.conf.emg; cp -p {conf}/userlist.txt {conf}/userlist.txt.emg
        sed -i '1i host pgbouncer postgres 127.0.0.1/32 scram-sha-256' {conf}/pgbouncer_hba.conf
        sed -i 's/^"postgres" ""$/"postgres" "{ADMIN_SECRET}"/' {conf}/userlist.txt
        systemctl reload pgbouncer""")
    try:
        pid = sh(PG1, "systemctl show -p MainPID --value pgbouncer").strip()
        wait_for("the console asks for a password",
                 lambda: docker("exec", PREFIX + PG1, "psql", "-X", "-h", "127.0.0.1", "-p", "6432", "-U", "postgres",
                                "-d", "pgbouncer", "-c", "SHOW VERSION", check=False).returncode != 0, 10)
        out = playbook(clean, "pgbouncer-reset.yml", "-e", "mode=hard")
        assert out.returncode != 0 and clean.last_report()["outcome"] == "REFUSED", out.stdout[-2000:]
        assert sh(PG1, "systemctl show -p MainPID --value pgbouncer").strip() == pid, "pgbouncer was restarted"

        out = playbook(clean, "pgbouncer-reset.yml", "-e", "mode=graceful", "-e",
                       json.dumps({"mayday_pgbouncer_admin_password": ADMIN_SECRET}))
        assert out.returncode == 0, out.stdout[-3000:]
        result = clean.last_report()["results"][PG1]
        assert result["how"] == "reconnect" and result["after"]["paused"] is False
        assert sh(PG1, "systemctl show -p MainPID --value pgbouncer").strip() == pid
        assert ADMIN_SECRET not in out.stdout + out.stderr
        leaked = [str(f) for f in clean.state_dir.rglob("*")
                  if f.is_file() and ADMIN_SECRET in f.read_text(errors="replace")]
        assert leaked == [], f"the admin password is written in {leaked}"
    finally:
        sh(PG1, f"""mv {conf}/pgbouncer_hba.conf.emg {conf}/pgbouncer_hba.conf
            mv {conf}/userlist.txt.emg {conf}/userlist.txt
            systemctl reload pgbouncer""")
        wait_for("the console is back on trust",
                 lambda: sh(PG1, f"{PG_ADMIN} -c 'SHOW VERSION'", check=False).strip(), 10)


# --- bad input, dry runs ----------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "valid"), [
    (["pgbouncer-reset", "--mode", "sideways"], "graceful, hard"),
    (["read-only", "--for", "abc"], "a number with a unit"),
    (["read-only", "--for", "0"], "a number with a unit"),
])
def test_bad_input_exits_2_naming_the_valid_values_and_changes_nothing(clean: Mayday, args: list[str],
                                                                       valid: str) -> None:
    before = snapshot()
    out = clean.run("db", *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert valid in " ".join(out.stderr.split())
    assert snapshot() == before


def test_lease_beyond_the_inventory_bounds_is_refused_by_every_host(clean: Mayday) -> None:
    before = snapshot()
    for length in ("5h", "30s"):  # default bounds 1m..4h
        out = clean.run("db", "read-only", "--for", length, "--json")
        assert out.returncode == 2, out.stdout + out.stderr
        report = clean.last_report()
        assert report["outcome"] == "REFUSED" and set(report["results"]) == {DB1, PG1}
    out = playbook(clean, "pgbouncer-reset.yml", "-e", "mode=sideways")
    assert out.returncode != 0 and clean.last_report()["outcome"] == "REFUSED"
    assert snapshot() == before


def test_dry_runs_change_nothing(clean: Mayday) -> None:
    out = clean.run("db", "read-only", "--for", "10m")
    assert out.returncode == 0, out.stdout + out.stderr
    before = snapshot()  # read-only under its lease: the state a dry run of read-write must keep
    for args in (["read-write"], ["read-only", "--for", "20m"], ["pgbouncer-reset"],
                 ["pgbouncer-reset", "--mode", "hard"]):
        out = clean.run("db", *args, "--check", "--json")
        assert out.returncode == 0, f"{args}: {out.stdout}{out.stderr}"
        assert clean.last_report()["outcome"] == "DRY-RUN", args
        assert snapshot() == before, f"--check of {args} changed the hosts"
    assert clean.last_report()["results"][PG1]["before"]["answers"] is True
