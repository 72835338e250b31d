"""Level 2 defects the scenario skeleton fixed, each proved on the lab hosts.

- Several hosts, one refusing: `mayday level2 --component database` on db1 and pg1, where db1's
  latest backup is corrupt. pg1 is restored, db1 refuses: the run is FAILED (not REFUSED: a host
  changed), exit 1, one escalation, each host's own outcome in the report, db1's data untouched.
- Plain `ansible-playbook` gets the CLI's input rules: a bad `minutes` or an unknown component is
  refused (exit 2, REFUSED naming what is valid) before any host is touched.
- The API configuration is swapped back as one directory: a 0640 file keeps its mode and owner, the
  directory is exchanged in one rename (new inode, the replaced one kept beside it), and a copy
  with a PHP syntax error is refused with the live directory left byte for byte as it was.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import (
    ANSIBLE_PLAYBOOK,
    BACKUP_DIR,
    DB_HOST,
    LAB_DBS,
    LAB_HOSTS,
    MARIADB,
    PG_HOST,
    ROOT,
    WEB_HOSTS,
    Mayday,
    dexec,
    health,
    wait_db_answers,
)
from test_scenario_dry_runs import (
    API_CONFIG,
    API_COPIES,
    SHARED,
    SmallDatabases,
    assert_same,
    break_data,
    controller_locks,
    host_result,
    host_snapshot,
    lab_snapshot,
    notification_lines,
    output,
    table_rows,
)

pytestmark = pytest.mark.usefixtures("lab_up")


# --- several hosts, one refusing -----------------------------------------------------------------


def test_one_host_refusing_while_another_changed_is_failed(small_dbs: SmallDatabases, web_ready: None,
                                                           mayday: Mayday) -> None:
    maria, pg = LAB_DBS["mariadb"], LAB_DBS["postgresql"]
    for db in (maria, pg):
        break_data(db)
    db1_rows = table_rows(maria)
    pg1_broken = table_rows(pg)
    assert pg1_broken != small_dbs.rows[PG_HOST]
    latest = small_dbs.backups[DB_HOST]
    path = f"{BACKUP_DIR}/{latest['file']}"
    maria.bash(f"cp -p {path} {path}.orig && printf x >> {path}")  # db1's latest backup: corrupt
    try:
        db1_before = host_snapshot(DB_HOST)
        result = mayday.run("level2", "--component", "database", timeout=600)
        db1_after = host_snapshot(DB_HOST)

        assert result.returncode == 1, output(result)
        report = mayday.last_report()
        assert report["outcome"] == "FAILED", report.get("summary")
        pg1, db1 = host_result(report, PG_HOST), host_result(report, DB_HOST)
        assert pg1.get("outcome") == "RECOVERED" and pg1.get("changed") is True, pg1
        assert pg1.get("backup") == small_dbs.backups[PG_HOST]["id"], pg1
        assert db1.get("outcome") == "REFUSED" and db1.get("changed") is False, db1
        assert "corrupt" in db1.get("msg", "") and latest["id"] in db1.get("msg", ""), db1
        events = [n.get("event") for n in mayday.notifications()]
        assert events == ["escalation"], mayday.notifications()

        assert table_rows(pg) == small_dbs.rows[PG_HOST], "pg1 was not restored from its backup"
        assert pg.writable()
        assert table_rows(maria) == db1_rows, "db1's live data changed"
        assert_same({DB_HOST: db1_before}, {DB_HOST: db1_after}, "the refused restore on db1")
        assert not db1_after["run_lock"] and not host_snapshot(PG_HOST)["run_lock"], "a host lock is left"
        assert controller_locks(mayday) == []
    finally:
        maria.bash(f"mv -f {path}.orig {path}")


# --- plain ansible-playbook, bad input -----------------------------------------------------------


def playbook(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """ansible-playbook, as an operator or AWX runs it: no CLI in front."""
    env = Mayday(state_dir).env()
    return subprocess.run([ANSIBLE_PLAYBOOK, str(ROOT / "playbooks" / "rollback-level2.yml"), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, check=False, timeout=600)


def webhook_rows() -> dict[str, Any]:
    out = MARIADB.sql("SELECT COUNT(*), "
                      "SUM(created_at > NOW() - INTERVAL 60 MINUTE), COALESCE(MAX(id), 0) FROM webhook_events",
                      db=MARIADB.database)
    total, recent, top = out.split()
    return {"total": int(total), "recent": int(recent or 0), "max_id": int(top)}


def test_plain_playbook_refuses_bad_input(mayday: Mayday) -> None:
    wait_db_answers(MARIADB)
    mark = "https://bad-input.example.test/"
    MARIADB.sql("INSERT INTO webhook_events (endpoint, payload, created_at) "
                f"SELECT CONCAT('{mark}', seq), '{{}}', NOW() - INTERVAL seq MINUTE FROM seq_1_to_20; "
                "INSERT INTO webhook_events (endpoint, payload, created_at) "
                f"SELECT CONCAT('{mark}old-', seq), '{{}}', NOW() - INTERVAL 3 DAY FROM seq_1_to_5",
                db=MARIADB.database)
    try:
        rows = webhook_rows()
        assert rows["recent"] >= 20, rows
        for minutes in ("abc", "0", "99999999"):
            before = host_snapshot(DB_HOST)
            result = playbook(mayday.state_dir, "-e", "component=webhook", "-e", f"minutes={minutes}")
            after = host_snapshot(DB_HOST)
            assert result.returncode == 2, output(result)
            report = mayday.last_report()
            assert report["outcome"] == "REFUSED", report.get("summary")
            said = " ".join([report.get("summary") or "", *report.get("refusals", [])])
            assert "minutes" in said and "1..10080" in said, said
            assert webhook_rows() == rows, f"minutes={minutes}: webhook rows changed"
            assert_same({DB_HOST: before}, {DB_HOST: after}, f"-e minutes={minutes}")
            assert not after["run_lock"] and controller_locks(mayday) == []

        before_all = lab_snapshot()
        result = playbook(mayday.state_dir, "-e", "component=nope")
        after_all = lab_snapshot()
        assert result.returncode == 2, output(result)
        report = mayday.last_report()
        assert report["outcome"] == "REFUSED", report.get("summary")
        said = " ".join([report.get("summary") or "", *report.get("refusals", [])])
        assert "nope" in said and all(c in said for c in ("api", "database", "frontend", "webhook")), said
        assert_same(before_all, after_all, "-e component=nope")
        assert webhook_rows() == rows
        assert notification_lines(mayday) == 0, "a refusal sent a notification"
        assert {h: s["run_lock"] for h, s in after_all.items()} == dict.fromkeys(LAB_HOSTS, False)
    finally:
        MARIADB.sql(f"DELETE FROM webhook_events WHERE endpoint LIKE '{mark}%'", db=MARIADB.database)


# --- API configuration: one directory swap -------------------------------------------------------

SECRET = "secret.php"
GOOD_SECRET = "<?php return ['key' => 'from-the-deploy'];"
HOTFIX_SECRET = "<?php return ['key' => 'hotfix'];"
BROKEN_API = "<?php return ['enabled' => true,"
SYNTAX_COPY = "19700101T000000Z-syntax-error"  # sorts first: never the latest copy


def stat_line(host: str, path: str) -> str:
    """mode owner:group inode sha256 of a path on a web host."""
    return dexec(host, f"echo $(stat -c '%a %U:%G %i' {path}) $(sha256sum < {path} 2>/dev/null | cut -c1-64)"
                 ).strip()


def siblings(host: str) -> set[str]:
    return set(dexec(host, f"ls -1A {SHARED}").split())


def test_api_config_swapped_as_one_directory(web_ready: None, mayday: Mayday) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    copy_name = f"{stamp}-with-secret"
    latest: dict[str, str] = {}
    shared_before: dict[str, set[str]] = {}
    try:
        for host in WEB_HOSTS:
            latest[host] = dexec(host, f"ls -1 {API_COPIES} | sort | tail -n 1").strip()
            assert latest[host] and latest[host] < copy_name, latest
            copy = f"{API_COPIES}/{copy_name}"
            # The deploy-time copy: secret.php as a deploy tool copies it (0644 root:root).
            dexec(host, f"cp -a {API_COPIES}/{latest[host]} {copy} && printf '%s' \"{GOOD_SECRET}\" > {copy}/{SECRET} "
                        f"&& chown root:root {copy}/{SECRET} && chmod 0644 {copy}/{SECRET}")
            # Live: a 0640 secret readable by php-fpm's group, changed by a hotfix; api.php broken.
            dexec(host, f"printf '%s' \"{HOTFIX_SECRET}\" > {API_CONFIG}/{SECRET} && chown root:www-data "
                        f"{API_CONFIG}/{SECRET} && chmod 0640 {API_CONFIG}/{SECRET} && "
                        f"echo \"{BROKEN_API}\" > {API_CONFIG}/api.php")
            shared_before[host] = siblings(host)
        live_before = {h: stat_line(h, API_CONFIG).split()[2] for h in WEB_HOSTS}
        broken_api = {h: stat_line(h, f"{API_CONFIG}/api.php") for h in WEB_HOSTS}

        result = mayday.run("level2", "--component", "api", timeout=600)
        assert result.returncode == 0, output(result)
        report = mayday.last_report()
        assert report["outcome"] == "RECOVERED", report.get("summary")
        for host in WEB_HOSTS:
            detail = host_result(report, host)
            assert detail.get("outcome") == "RECOVERED", detail
            assert detail.get("restored_from") == f"{API_COPIES}/{copy_name}", detail

            mode, owner, _inode, digest = stat_line(host, f"{API_CONFIG}/{SECRET}").split()
            assert (mode, owner) == ("640", "root:www-data"), f"{host}: secret.php is now {mode} {owner}"
            assert digest == stat_line(host, f"{API_COPIES}/{copy_name}/{SECRET}").split()[3], "content not restored"
            api_now = stat_line(host, f"{API_CONFIG}/api.php").split()[3]
            assert api_now == stat_line(host, f"{API_COPIES}/{copy_name}/api.php").split()[3]

            assert stat_line(host, API_CONFIG).split()[2] != live_before[host], f"{host}: not swapped as a directory"
            new = sorted(siblings(host) - shared_before[host])
            assert len(new) == 1 and new[0].startswith("config.mayday-replaced-"), new
            kept = f"{SHARED}/{new[0]}"
            assert stat_line(host, kept).split()[2] == live_before[host], "the kept directory is not the replaced one"
            assert stat_line(host, f"{kept}/api.php") == broken_api[host]
            assert stat_line(host, f"{kept}/{SECRET}").split()[:2] == ["640", "root:www-data"]
            assert health(host).get("status") == "healthy"

        # A copy with a PHP syntax error: refused, the live directory byte for byte as it was.
        for host in WEB_HOSTS:
            bad = f"{API_COPIES}/{SYNTAX_COPY}"
            dexec(host, f"rm -rf {bad} && cp -a {API_COPIES}/{copy_name} {bad} && "
                        f"echo \"{BROKEN_API}\" > {bad}/api.php")
        before = lab_snapshot(WEB_HOSTS)
        refused = mayday.run("level2", "--component", "api", "--backup", SYNTAX_COPY, timeout=600)
        after = lab_snapshot(WEB_HOSTS)
        assert refused.returncode == 2, output(refused)
        report = mayday.last_report()
        assert report["outcome"] == "REFUSED", report.get("summary")
        for host in WEB_HOSTS:
            detail = host_result(report, host)
            assert detail.get("outcome") == "REFUSED" and detail.get("changed") is False, detail
            assert "api.php" in detail.get("msg", ""), detail
        assert_same(before, after, "the refused API rollback")
        assert notification_lines(mayday) == 1, "only the first (recovered) run notifies"
    finally:
        for host in WEB_HOSTS:
            made = " ".join(f"{SHARED}/{n}" for n in sorted(siblings(host) - shared_before.get(host, siblings(host))))
            dexec(host, f"rm -rf {API_COPIES}/{copy_name} {API_COPIES}/{SYNTAX_COPY} {made} {API_CONFIG}/{SECRET}")
            if latest.get(host):
                dexec(host, f"cp -p {API_COPIES}/{latest[host]}/api.php {API_CONFIG}/api.php")
