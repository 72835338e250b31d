"""The drill faults that damage data, hold connections or fail a channel, on the lab: each new drill
run through `mayday drill run NAME --json` must pass within its SLA and leave the hosts as they were
before it (every row of every app table, the sessions, the fault's files and leases); a fault whose
controller never comes back is removed by the host's lease, row for row and session for session."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from lab_helpers import DB_HOST, ROOT, VENV_BIN, LabDb, Mayday, dexec, health, wait_for

pytestmark = pytest.mark.usefixtures("drill_lab")

MARIADB = LabDb("mariadb", DB_HOST, "users", "id")
POSTGRES = LabDb("postgresql", "pg1", "users", "id")
# Rewritten by every health check: not part of "the data is as before".
MOVING_TABLES = {"web_heartbeats"}
FAULT_DIR = "/var/lib/mayday/drill-faults"
LEASE_DIR = "/var/lib/mayday/leases"


def app_tables(db: LabDb) -> dict[str, str]:
    """Every app table but the moving ones: its row count and a digest of all its rows, in order."""
    if db.engine == "mariadb":
        names = db.sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'app' "
                       "AND table_type = 'BASE TABLE' ORDER BY 1").split()
        names = [n for n in names if n not in MOVING_TABLES]
        out = db.sql(f"CHECKSUM TABLE {', '.join(names)} EXTENDED", db="app")
        sums = dict(line.split("\t")[:2] for line in out.splitlines())
        counts = {n: db.sql(f"SELECT count(*) FROM `{n}`", db="app").strip() for n in names}
        return {n.split(".")[-1]: f"{counts[n.split('.')[-1]]}:{s}" for n, s in sums.items()}
    names = [n for n in db.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
                               db="app").split() if n not in MOVING_TABLES]
    found = {}
    for name in names:
        found[name] = db.sql(f"SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), "
                             f"'') FROM \"{name}\" t", db="app").strip()
    return found


def leftovers(host: str) -> str:
    """What a drill fault may leave on a host: its state files, its leases, its units."""
    return dexec(host, f"ls -A {FAULT_DIR} {LEASE_DIR} 2>/dev/null | grep -v ':$' | grep . ; "
                       "systemctl list-units --all --no-legend 'mayday-drill-*' | grep -v ' inactive ' ; true").strip()


def run_drill(mayday: Mayday, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    out = mayday.run("drill", "run", name, "--json", timeout=900)
    runs = sorted((mayday.state_dir / "drills" / name).glob("DRILL-*"))
    assert runs, f"no run of {name}: rc={out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    doc = json.loads((runs[-1] / "journal.json").read_text())
    assert out.returncode == 0 and doc["verdict"] == "PASSED", \
        f"{name}: rc={out.returncode} {doc['verdict']} {doc['reasons']}\n{out.stderr[-2000:]}"
    return doc, doc["figures"]


def events(doc: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in doc["events"] if e.get("event") == kind]


def test_level2_database_drill_puts_every_row_back_and_measures_the_data_lost(mayday: Mayday, tmp_path: Path) -> None:
    MARIADB.sql("INSERT IGNORE INTO users (name, disabled) SELECT concat('drill-user-', seq), seq % 7 = 0 "
                "FROM seq_1_to_200", db="app")
    backup = mayday.run("backup", "--json", timeout=600)
    assert backup.returncode == 0, backup.stderr[-2000:]
    taken = {b["engine"]: b["id"] for b in json.loads(backup.stdout)["backups"]}
    before = {db.engine: app_tables(db) for db in (MARIADB, POSTGRES)}
    assert int(before["mariadb"]["users"].split(":")[0]) >= 200

    # No backup within the drill's RPO (here 1 s): refused before the fault, every row untouched.
    stale = yaml.safe_load((ROOT / "drills" / "level2-database.yml").read_text())
    next(p for p in stale["steady_state"] if "backup" in p)["backup"]["max_age"] = "1s"
    (tmp_path / "level2-database-stale.yml").write_text(yaml.safe_dump(stale))
    time.sleep(2)
    refused = mayday.run("drill", "run", str(tmp_path / "level2-database-stale.yml"), "--json", timeout=300)
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    summary = json.loads(refused.stdout)
    assert summary["verdict"] == "REFUSED" and "over max_age 1 s" in " ".join(summary["reasons"]), summary
    assert {db.engine: app_tables(db) for db in (MARIADB, POSTGRES)} == before

    doc, fig = run_drill(mayday, "level2-database")

    assert fig["time_to_detect_s"] <= 30 and fig["time_to_recover_s"] <= 900
    # The fault was real: every user gone, seen by the drill's own probe.
    detect = [r for e in doc["events"] if e.get("phase") == "detect" for r in e.get("results") or []]
    assert any(r["name"] == "app-has-users" and r["value"] == "0" and not r["ok"] for r in detect), detect
    # The data lost is what was written since the backup the restore used: the one just taken.
    scenario = events(doc, "scenario")[0]
    injected_at = events(doc, "injected")[0]["injected_at"]
    assert sorted(scenario["recovery_points"]) == ["db1", "pg1"]
    oldest = min(scenario["recovery_points"].values())
    assert fig["rpo_s"] == round(injected_at - oldest, 1) and 0 <= fig["rpo_s"] <= 26 * 3600
    assert min(i[-16:] for i in taken.values()) == time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(oldest))
    # Every row of every app table as before, on both database hosts; nothing of the fault left.
    assert {db.engine: app_tables(db) for db in (MARIADB, POSTGRES)} == before
    assert [f["outcome"] for e in events(doc, "cleanup") for f in e["faults"]] == ["removed"]
    assert leftovers(DB_HOST) == ""


def heartbeat_columns() -> str:
    return POSTGRES.sql("SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns "
                        "WHERE table_name = 'web_heartbeats'", db="app").strip()


def test_level2_database_migration_drill_puts_the_schema_back(mayday: Mayday) -> None:
    assert mayday.run("backup", timeout=600).returncode == 0
    before = {db.engine: app_tables(db) for db in (MARIADB, POSTGRES)}
    columns = heartbeat_columns()
    definition = dexec("pg1", "runuser -u postgres -- pg_dump -s -d app -t web_heartbeats | grep -v restrict")

    doc, fig = run_drill(mayday, "level2-database-migration")

    assert fig["time_to_detect_s"] <= 30 and fig["time_to_recover_s"] <= 900 and fig["rpo_s"] <= 26 * 3600
    detect = [r for e in doc["events"] if e.get("phase") == "detect" for r in e.get("results") or []]
    assert any(r["name"] == "health-check" and not r["ok"] for r in detect)  # the app broke on the migration
    assert heartbeat_columns() == columns == "host,release,hits,seen_at"
    assert dexec("pg1", "runuser -u postgres -- pg_dump -s -d app -t web_heartbeats | grep -v restrict") == definition
    assert {db.engine: app_tables(db) for db in (MARIADB, POSTGRES)} == before
    assert [f["outcome"] for e in events(doc, "cleanup") for f in e["faults"]] == ["removed"]
    assert leftovers("pg1") == ""


def pg_sessions() -> dict[str, int]:
    out = POSTGRES.sql("SELECT coalesce(application_name, ''), count(*) FROM pg_stat_activity "
                       "WHERE usename = 'app' GROUP BY 1")
    return {name: int(n) for name, n in (line.split("\t") for line in out.splitlines() if line)}


def test_db_connections_drill_fills_the_pool_and_leaves_no_session(mayday: Mayday) -> None:
    doc, fig = run_drill(mayday, "db-connections")

    assert fig["time_to_detect_s"] <= 30 and fig["time_to_recover_s"] <= 120
    detect = [r for e in doc["events"] if e.get("phase") == "detect" for r in e.get("results") or []]
    assert detect and not any(r["ok"] for r in detect)  # the app could not get a connection
    assert events(doc, "scenario")[0]["command"][1:4] == ["db", "pgbouncer-reset", "--mode"]
    assert not [name for name in pg_sessions() if name.startswith("mayday-drill-")]
    assert leftovers("pg1") == ""
    assert all(health(h).get("status") == "healthy" for h in ("web1", "web2"))


def adhoc_inject(mayday: Mayday, host: str, fault: dict[str, Any]) -> dict[str, Any]:
    """The fault injected as a drill does, with a 30 s lease, by a controller that never removes it.
    (10 s was too short under load: the first fault's lease ended before the test could see it in place.)"""
    args = json.dumps({"op": "inject", "run_id": "test-lease", "fault": fault, "duration": "30s"})
    out = subprocess.run([str(VENV_BIN / "ansible"), host, "-i", "inventories/lab", "-m", "mayday_fault", "-a", args],
                         cwd=ROOT, env=mayday.env(), capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(out.stdout.split("=>", 1)[1])["faults"][0]


def test_faults_left_by_a_vanished_controller_are_removed_by_the_hosts_lease(mayday: Mayday) -> None:
    POSTGRES.sql("INSERT INTO users (name, disabled) SELECT 'drill-user-' || g, g % 5 = 0 "
                 "FROM generate_series(1, 120) g ON CONFLICT (name) DO NOTHING", db="app")
    rows_before = app_tables(POSTGRES)
    disabled = int(POSTGRES.sql("SELECT count(*) FROM users WHERE disabled", db="app"))
    app_sessions = int(MARIADB.sql("SELECT count(*) FROM information_schema.processlist WHERE user = 'app'"))

    adhoc_inject(mayday, "pg1", {"type": "corrupt_rows", "params": {
        "engine": "postgresql", "database": "app", "table": "users", "rows": 50, "set": {"disabled": True}}})
    adhoc_inject(mayday, DB_HOST, {"type": "saturate_connections", "params": {
        "engine": "mariadb", "database": "app", "user": "app", "password_var": "mayday_app_mariadb_password",
        "sessions": 5}})
    # In place: 50 users disabled, 5 more sessions as the app's role, each fault's state saved first.
    assert app_tables(POSTGRES)["users"] != rows_before["users"]
    assert int(POSTGRES.sql("SELECT count(*) FROM users WHERE disabled", db="app")) == disabled + 50
    assert int(MARIADB.sql("SELECT count(*) FROM information_schema.processlist WHERE user = 'app'")) >= \
        app_sessions + 5
    assert leftovers("pg1") and leftovers(DB_HOST)

    # No removal from here: the leases end and the hosts remove the faults on their own.
    wait_for("the hosts' leases to remove both faults",
             lambda: leftovers("pg1") == "" and leftovers(DB_HOST) == "", 90)
    assert app_tables(POSTGRES) == rows_before
    assert int(MARIADB.sql("SELECT count(*) FROM information_schema.processlist WHERE user = 'app'")) <= app_sessions


def test_communication_failover_drill_reports_the_failed_channel_and_falls_back(mayday: Mayday) -> None:
    doc, _ = run_drill(mayday, "communication-failover")

    notified = events(doc, "notify")[0]
    assert notified["failing"] == ["incident-log"] and notified["ok"]
    failed = next(c for c in notified["channels"] if c["channel"] == "incident-log")
    assert failed["ok"] is False and failed["fallback_ok"] is True
    fallback = Path(notified["fallback"]["record"])
    assert fallback.parent == mayday.state_dir
    rescued = [json.loads(line) for line in fallback.read_text().splitlines()]
    assert [d["undelivered_on"] for d in rescued if d.get("why") == notified["token"]] == [["incident-log"]]
    log = mayday.state_dir / "notifications.jsonl"
    assert not log.exists() or "mayday communication drill" not in log.read_text()
