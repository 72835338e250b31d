"""Level 2 database restore verified on the hosts: data equals the pre-migration data, exactly."""

from __future__ import annotations

import json
import os
from pathlib import Path

testinfra_hosts = ["ansible://db", "ansible://pg"]

STATE = Path(os.environ["MAYDAY_STATE_DIR"])
FINGERPRINT = {
    "pg1": "runuser -u postgres -- psql -d app -At -c \"SELECT count(*) || ' ' || "
           "md5(string_agg(t::text, ',' ORDER BY aid)) FROM pgbench_accounts t\"",
    "db1": "mariadb -N -B app -e \"SELECT CONCAT(count(*), ' ', md5(group_concat(id, customer_id, amount, status, "
           "created_at ORDER BY id SEPARATOR ','))) FROM orders\"",
}


def name(host) -> str:
    return host.backend.get_hostname()


def test_data_equals_the_pre_migration_data(host):
    good = host.file("/var/tmp/mayday-good-fingerprint").content_string.strip()
    now = host.check_output(FINGERPRINT[name(host)]).strip()
    assert now == good
    assert int(now.split()[0]) == 100000


def test_every_table_matches_the_backup_manifest(host):
    manifests = [json.loads(host.file(f"/var/backups/mayday/{f}").content_string)
                 for f in host.check_output("ls /var/backups/mayday").split() if f.endswith(".manifest.json")]
    backup = next(m for m in manifests if m["kind"] == "backup")
    assert sum(t["rows"] for t in backup["tables"].values()) >= 100000
    safety = [m for m in manifests if m["kind"] == "safety"]
    assert len(safety) == 1, "one safety dump of the broken state, taken from the kept database after the swap"
    assert host.file(f"/var/backups/mayday/{safety[0]['file']}").size == safety[0]["size"]
    assert safety[0]["tables"] != backup["tables"], "the safety backup holds the migrated (broken) data"


def test_replaced_database_is_kept_not_dropped(host):
    if name(host) == "pg1":
        dbs = host.check_output("runuser -u postgres -- psql -At -c 'SELECT datname FROM pg_database'").split()
    else:
        dbs = host.check_output("mariadb -N -B -e 'SHOW DATABASES'").split()
    assert any(d.startswith("app__mayday_pre_") for d in dbs)
    assert not any(d.endswith("__mayday_shadow") for d in dbs)


def test_writes_resumed(host):
    if name(host) == "pg1":
        assert host.check_output("runuser -u postgres -- psql -At -c "
                                 "\"SELECT datallowconn FROM pg_database WHERE datname = 'app'\"") == "t"
        through_pgbouncer = "psql -h 127.0.0.1 -p 6432 -U app -d app -At -c 'SELECT count(*) FROM pgbench_branches'"
        assert host.run(through_pgbouncer).rc == 0
    else:
        assert host.check_output("mariadb -N -B -e 'SELECT @@read_only'") == "0"


def reports() -> list[dict]:
    found = [json.loads(p.read_text()) for p in STATE.glob("incidents/*/report.json")]
    return sorted(found, key=lambda r: r["opened"])


def host_result(report: dict, host: str) -> dict:
    """A host's result: outcome, changed, msg, summary and the restore's report keys, flattened."""
    result = dict(report["results"][host])
    return {**(result.pop("report", None) or {}), **result}


def test_runs_in_order():
    # prepare's backup; check: the restore dry; side_effect: the backup dry; converge; idempotence
    assert [(r["scenario"], r["outcome"]) for r in reports()] == [
        ("backup", "DONE"), ("level2-database", "DRY-RUN"), ("backup", "DRY-RUN"),
        ("level2-database", "RECOVERED"), ("level2-database", "NOOP")]


def test_report_counts_the_rows(host):
    done = [r for r in reports() if r["outcome"] == "RECOVERED"]
    assert len(done) == 1 and done[0]["scenario"] == "level2-database"
    result = host_result(done[0], name(host))
    assert result["outcome"] == "RECOVERED" and result["changed"]
    assert result["rows_restored"] >= 100000
    assert result["backup"] and result["safety_backup"] and result["previous_kept_as"].startswith("app__mayday_pre_")
    phases = [s["step"].strip() for s in done[0]["steps"] if s["host"] == name(host)]
    assert any(p.startswith(f"safety dump of {result['previous_kept_as']}") for p in phases), phases
    assert any(p.startswith("swap in the restored database") for p in phases)


def test_dry_run_verified_the_backup_and_restored_nothing(host):
    dry_run = next(r for r in reports() if r["scenario"] == "level2-database" and r["outcome"] == "DRY-RUN")
    result = host_result(dry_run, name(host))
    assert result["dry_run"] and result["changes"] == []
    assert result["backup"] == host_result(reports()[0], name(host))["id"], "the latest backup: prepare's"


def test_second_restore_of_the_same_backup_is_a_noop(host):
    first, again = [r for r in reports() if r["scenario"] == "level2-database" and r["outcome"] != "DRY-RUN"]
    result = host_result(again, name(host))
    assert result["outcome"] == "NOOP" and not result["changed"] and result["already_restored"]
    assert result["backup"] == host_result(first, name(host))["backup"]
