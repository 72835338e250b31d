"""The path real users take: SSH as the non-root user `mayday`, with sudo.

inventories/lab-ssh reaches the same lab containers as inventories/lab, but the way
inventories/staging and inventories/production reach real hosts: ansible_connection ssh, key only,
host keys checked against a known_hosts file, become with sudo (NOPASSWD everywhere except web2,
where sudo asks for mayday's password). Recovery units are shipped on stdin under sudo
(plugins/action/mayday_recover.py, mayday_inspect.py).

Outcomes are asserted on the hosts (docker exec), and so is the path itself: sshd's journal shows
a public key accepted for mayday with the controller key's fingerprint, sudo's journal shows mayday
running commands as root, and on web2, where sudo needs a password (`sudo -l`), sudo wrote mayday's
timestamp record, which it does only once a password was given (none on a NOPASSWD host).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import (
    APP,
    BACKUP_DIR,
    DB_HOST,
    KEPT_DB_PREFIX,
    LAB_NAME,
    PG_HOST,
    POSTGRES,
    PRUNE_RELEASES,
    ROOT,
    WEB_HOSTS,
    Mayday,
    dexec,
    ensure_running,
    health,
    host_lock,
    wait_db_answers,
)

SSH_INVENTORY = str(ROOT / "inventories" / "lab-ssh")
SSH_DIR = ROOT / ".mayday-lab" / LAB_NAME / "ssh"
PASSWORD_HOST = "web2"  # sudo asks for a password there (playbooks/lab/setup.yml)
SUDO_RECORD = "/run/sudo/ts/mayday"
FRONTEND = f"{APP}/shared/frontend"
PROBE_TABLE = "mayday_ssh_probe"


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"rc={result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"


def controller_key_fingerprint() -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(SSH_DIR / "id_ed25519.pub")], capture_output=True, text=True,
                         check=True)
    return out.stdout.split()[1]  # SHA256:...


@dataclass(frozen=True)
class Mark:
    """Where each host's journal stood before a run; sudo's timestamp records removed."""

    cursors: dict[str, str]

    @classmethod
    def take(cls, hosts: tuple[str, ...]) -> Mark:
        close_ssh_connections()  # the next run logs in afresh
        cursors = {}
        for host in hosts:
            dexec(host, f"rm -f {SUDO_RECORD}")
            out = dexec(host, "journalctl -n 0 --show-cursor --no-pager")
            cursors[host] = out.strip().rpartition("cursor: ")[2]
            assert cursors[host], f"no journal cursor on {host}: {out!r}"
        return cls(cursors)

    def journal(self, host: str, identifier: str) -> str:
        """Messages logged under `identifier` since the mark. Filtered here, not with journalctl -t:
        with a match, --after-cursor skips the first matching entry as if it were the cursor's."""
        out = dexec(host, f"journalctl --no-pager -o json --after-cursor '{self.cursors[host]}'")
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        return "".join(f"{e.get('MESSAGE')}\n" for e in entries if e.get("SYSLOG_IDENTIFIER") == identifier)

    def assert_over_ssh_with_sudo(self) -> None:
        """Every host of the mark was reached over SSH as mayday with the controller's key and
        became root with sudo; on web2, after giving sudo mayday's password."""
        fingerprint = controller_key_fingerprint()
        for host in self.cursors:
            sshd = self.journal(host, "sshd")
            accepted = [line for line in sshd.splitlines() if line.startswith("Accepted publickey for ")]
            assert accepted, f"{host}: no SSH login since the run started:\n{sshd}"
            assert all(line.startswith("Accepted publickey for mayday ") and fingerprint in line
                       for line in accepted), f"{host}: a login other than mayday with {fingerprint}:\n{accepted}"
            sudo = self.journal(host, "sudo")
            assert any(line.lstrip().startswith("mayday : ") and "USER=root ; COMMAND=" in line
                       for line in sudo.splitlines()), f"{host}: mayday did not run anything with sudo:\n{sudo}"
            assert "incorrect password" not in sudo, f"{host}: a wrong sudo password was given:\n{sudo}"
            rules = dexec(host, "sudo -l -U mayday")
            record = dexec(host, f"test -e {SUDO_RECORD} && echo present || echo absent").strip()
            if host == PASSWORD_HOST:
                assert "NOPASSWD" not in rules and "(ALL : ALL) ALL" in rules, f"{host}: sudo rules:\n{rules}"
                assert record == "present", f"{host}: sudo wrote no timestamp record: no password was given"
            else:
                assert "NOPASSWD: ALL" in rules, f"{host}: sudo rules:\n{rules}"
                assert record == "absent", f"{host}: sudo authenticated mayday on a NOPASSWD host"


@pytest.fixture(autouse=True)
def own_ssh_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test's runs open their own SSH connections: ansible keeps a connection open for 60 s
    (ControlPersist) and a later run would reuse it without logging in again."""
    path = Path(tempfile.mkdtemp(prefix="mayday-cp-"))  # short: a socket path has at most 107 bytes
    monkeypatch.setenv("ANSIBLE_SSH_CONTROL_PATH_DIR", str(path))
    yield
    close_ssh_connections()
    shutil.rmtree(path, ignore_errors=True)


def close_ssh_connections() -> None:
    """Ends the connections ansible keeps open (in this test's ANSIBLE_SSH_CONTROL_PATH_DIR)."""
    path = Path(os.environ["ANSIBLE_SSH_CONTROL_PATH_DIR"])
    for socket in path.iterdir():
        subprocess.run(["ssh", "-O", "exit", "-o", f"ControlPath={socket}", "lab"], capture_output=True, check=False,
                       timeout=30)


@pytest.fixture(scope="module")
def ssh_lab(lab: dict[str, str]) -> dict[str, str]:
    """The lab of the other integration tests, with the SSH path `mayday lab up` prepared."""
    for name in ("id_ed25519", "id_ed25519.pub", "known_hosts"):
        assert (SSH_DIR / name).is_file(), f"{SSH_DIR / name} missing: `mayday lab up` writes it"
    assert (SSH_DIR / "id_ed25519").stat().st_mode & 0o077 == 0, "the private key must be 0600"
    for host in (*WEB_HOSTS, DB_HOST, PG_HOST):
        assert dexec(host, "systemctl is-active ssh", check=False).strip() == "active", f"no sshd on {host}"
    return lab


def serve(release: str) -> None:
    """Every web host on `release` (nothing marked failed), services up."""
    ensure_running()
    for host in WEB_HOSTS:
        dexec(host, f"""set -e
            {PRUNE_RELEASES}
            ln -sfn releases/{release} {APP}/current.t && mv -T {APP}/current.t {APP}/current
            systemctl reset-failed; systemctl start nginx php8.2-fpm""")


@pytest.fixture
def healthy_lab(ssh_lab: dict[str, str], mayday: Mayday) -> Mayday:
    serve("v1")
    dexec(DB_HOST, "systemctl reset-failed; systemctl start mariadb")
    for host in WEB_HOSTS:
        doc = health(host)
        assert doc.get("status") == "healthy" and doc.get("version") == "v1", f"{host} not healthy: {doc}"
    return mayday


def test_level1_over_ssh_recovers_the_broken_release(ssh_lab: dict[str, str], broken_lab: Mayday) -> None:
    mark = Mark.take((*WEB_HOSTS, DB_HOST))
    result = broken_lab.run("level1", "-i", SSH_INVENTORY)
    assert result.returncode == 0, output(result)
    assert broken_lab.last_report()["outcome"] == "RECOVERED"
    for host in WEB_HOSTS:
        assert dexec(host, f"readlink {APP}/current").strip() == "releases/v1", host
        doc = health(host)
        assert doc.get("status") == "healthy" and doc.get("version") == "v1", f"{host}: {doc}"
        markers = dexec(host, f"ls -1 {APP}/releases/*/.mayday-failed 2>/dev/null", check=False).split()
        assert markers == [f"{APP}/releases/v2/.mayday-failed"], f"{host}: {markers}"
    mark.assert_over_ssh_with_sudo()


def test_level2_frontend_over_ssh_restores_the_files(healthy_lab: Mayday) -> None:
    kept = {host: dexec(host, "ls -1d /var/backups/mayday/frontend/*/ | sort | tail -n 1").strip()
            for host in WEB_HOSTS}
    for host in WEB_HOSTS:
        dexec(host, f"set -e; rm {FRONTEND}/app.css; echo 'alert(1)' > {FRONTEND}/stray.js")
    mark = Mark.take(WEB_HOSTS)
    result = healthy_lab.run("level2", "-i", SSH_INVENTORY, "--component", "frontend")
    assert result.returncode == 0, output(result)
    assert healthy_lab.last_report()["outcome"] == "RECOVERED"
    for host in WEB_HOSTS:
        diff = dexec(host, f"diff -r {kept[host]} {FRONTEND}/ && echo same", check=False)
        assert diff.strip() == "same", f"{host}: frontend differs from the copy kept at deploy:\n{diff}"
        assert dexec(host, f"test -e {FRONTEND}/stray.js && echo yes || echo no").strip() == "no", host
        assert dexec(host, f"test -e {APP}/releases/v1/public/index.php && echo yes").strip() == "yes", host
        code = dexec(host, "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1/assets/app.css")
        assert code == "200", f"{host}: /assets/app.css answers {code}"
        # Released by the finish stage's unlock, over SSH with sudo (web2: with a sudo password).
        assert host_lock(host) is None, f"{host}: the run left its host lock"
    mark.assert_over_ssh_with_sudo()


def pg_counts() -> dict[str, int]:
    """Live row count of every table of pg1's app database."""
    tables = POSTGRES.sql("SELECT schemaname || '.' || tablename FROM pg_tables "
                          "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1", db="app").split()
    return {t: int(POSTGRES.sql(f"SELECT count(*) FROM {t}", db="app").strip()) for t in tables}


@pytest.fixture
def pg_probe(healthy_lab: Mayday) -> Iterator[Mayday]:
    """A table of 5,000 rows in pg1's app database; afterwards the table, the databases the restore
    kept and its safety backups are removed."""
    wait_db_answers(POSTGRES)
    before = set(POSTGRES.databases())
    files = set(POSTGRES.bash(f"ls -1A {BACKUP_DIR} 2>/dev/null || true").split())
    POSTGRES.sql(f"DROP TABLE IF EXISTS {PROBE_TABLE}; CREATE TABLE {PROBE_TABLE} (id int PRIMARY KEY, note text); "
                 f"INSERT INTO {PROBE_TABLE} SELECT g, md5(g::text) FROM generate_series(1, 5000) g", db="app")
    try:
        yield healthy_lab
    finally:
        for name in sorted(set(POSTGRES.databases()) - before):
            if name.startswith(KEPT_DB_PREFIX):
                POSTGRES.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        safety = sorted(f for f in set(POSTGRES.bash(f"ls -1A {BACKUP_DIR}").split()) - files if "-safety." in f)
        if safety:
            POSTGRES.bash(f"cd {BACKUP_DIR} && rm -f -- " + " ".join(safety))
        POSTGRES.sql(f"DROP TABLE IF EXISTS {PROBE_TABLE}", db="app")


def test_database_backup_and_restore_over_ssh(pg_probe: Mayday) -> None:
    mayday = pg_probe
    good = pg_counts()
    assert good[f"public.{PROBE_TABLE}"] == 5000, good
    mark = Mark.take((PG_HOST,))
    backup = mayday.run("backup", "-i", SSH_INVENTORY, "--limit", PG_HOST, "--json", timeout=600)
    assert backup.returncode == 0, output(backup)
    taken: list[dict[str, Any]] = json.loads(backup.stdout)["backups"]
    assert len(taken) == 1 and taken[0]["engine"] == "postgresql", taken
    manifest = taken[0]
    tables = {t: v["rows"] for t, v in manifest["tables"].items() if not t.startswith("@")}  # "@": objects
    assert tables == good, manifest["tables"]
    mark.assert_over_ssh_with_sudo()

    POSTGRES.sql(f"DELETE FROM {PROBE_TABLE} WHERE id % 3 = 0; INSERT INTO {PROBE_TABLE} VALUES (-1, 'bad')", db="app")
    assert pg_counts() != good

    mark = Mark.take((PG_HOST,))
    restore = mayday.run("restore", "-i", SSH_INVENTORY, "--limit", PG_HOST, timeout=600)
    assert restore.returncode == 0, output(restore)
    report = mayday.last_report()
    assert report["outcome"] == "RECOVERED", report
    assert manifest["id"] in json.dumps(report.get("results") or {}), report
    assert pg_counts() == good, "live row counts differ from the backup's"
    assert POSTGRES.writable()
    assert any(name.startswith(KEPT_DB_PREFIX) for name in POSTGRES.databases()), "no database was swapped out"
    mark.assert_over_ssh_with_sudo()


def test_unknown_host_key_is_refused(ssh_lab: dict[str, str], mayday: Mayday, tmp_path: Path) -> None:
    """Host key checking stays on: against an empty known_hosts the run refuses before any change."""
    serve("v2")
    before = {h: dexec(h, f"readlink {APP}/current").strip() for h in WEB_HOSTS}
    inventory = tmp_path / "lab-ssh"
    inventory.mkdir()
    (inventory / "hosts.py").symlink_to(ROOT / "inventories" / "lab-ssh" / "hosts.py")
    (inventory / "group_vars").mkdir()
    for group in ("web", "db", "pg"):
        (inventory / "group_vars" / group).symlink_to(ROOT / "inventories" / "lab" / "group_vars" / group)
    (inventory / "group_vars" / "all").mkdir()
    (inventory / "group_vars" / "all" / "main.yml").symlink_to(ROOT / "inventories" / "lab" / "group_vars" / "all"
                                                                / "main.yml")
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    ssh_vars = (ROOT / "inventories" / "lab-ssh" / "group_vars" / "all" / "ssh.yml").read_text()
    (inventory / "group_vars" / "all" / "ssh.yml").write_text(
        ssh_vars.replace('UserKnownHostsFile="{{ lab_ssh_dir }}/known_hosts"', f'UserKnownHostsFile="{empty}"')
        .replace("{{ inventory_dir }}/../..", str(ROOT)))
    result = mayday.run("level1", "-i", str(inventory))
    assert result.returncode == 2, output(result)
    assert mayday.last_report()["outcome"] == "REFUSED"
    assert {h: dexec(h, f"readlink {APP}/current").strip() for h in WEB_HOSTS} == before
