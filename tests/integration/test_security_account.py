"""A compromised account (`mayday security account NAME [--restore]`), against the lab's hosts.

intruder: an OS account on web1 with a password, sudo, an authorized key, an SSH login the site allows
and a session open; an app user with a session and a token in both app databases (db1 MariaDB, pg1
PostgreSQL). Contained: locked, expired, its processes gone, its keys moved aside, SSH refused, the app
user disabled and its sessions and tokens gone. Restored: the key file byte for byte, passwd -S and the
expiry as before, the app rows back. The operator, a break-glass account and an unknown name are
refused with nothing changed.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab_helpers import (
    DB_HOST,
    LAB_HOSTS,
    LAB_NAME,
    MARIADB,
    PG_HOST,
    POSTGRES,
    ROOT,
    Mayday,
    dexec,
    lab_address,
    run_setup_playbook,
)

HOST = "web1"
USER = "intruder"
SSH_DIR = ROOT / ".mayday-lab" / LAB_NAME / "ssh"
WIDEN = "/etc/ssh/sshd_config.d/50-mayday-test-intruder.conf"
KEYS = f"/home/{USER}/.ssh/authorized_keys"
ACCOUNTS = "/var/lib/mayday/accounts"
APP_TABLES = ("users", "sessions", "tokens")


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"rc={result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"


def ssh_argv(user: str, key: Path) -> list[str]:
    addr = lab_address(HOST)
    return ["ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            "-o", "StrictHostKeyChecking=yes", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"UserKnownHostsFile={SSH_DIR / 'known_hosts'}", "-o", f"HostKeyAlias={LAB_NAME}-{HOST}",
            "-o", "ControlMaster=no", "-o", "ControlPath=none", f"{user}@{addr}"]


def logs_in(key: Path) -> bool:
    out = subprocess.run([*ssh_argv(USER, key), "echo in"], capture_output=True, text=True, timeout=30, check=False)
    return out.returncode == 0 and out.stdout.strip() == "in"


def os_state(host: str, user: str) -> str:
    """passwd -S, the expiry field, the key file (digest, mode, owner), the record: all of what a run changes."""
    return dexec(host, f"""passwd -S {user} 2>&1; getent shadow {user} | cut -d: -f8
        h=$(getent passwd {user} | cut -d: -f6); [ -n "$h" ] && for f in $h/.ssh/authorized_keys*; do
            [ -e "$f" ] && sha256sum "$f" && stat -c '%a %U %G' "$f"; done
        ls -1 {ACCOUNTS} 2>/dev/null | grep -x -e '{user}.json' -e '{user}' || true""", check=False)


def app_rows() -> dict[str, str]:
    """intruder's rows of users, sessions and tokens in both app databases, every column."""
    found = {}
    who = f"SELECT id FROM users WHERE name = '{USER}'"
    for db in (MARIADB, POSTGRES):
        for table in APP_TABLES:
            query = (f"SELECT * FROM users WHERE name = '{USER}'" if table == "users" else
                     f"SELECT * FROM {table} WHERE user_id IN ({who}) ORDER BY 1")
            found[f"{db.host}.{table}"] = db.sql(query, db="app")
    return found


def processes(user: str) -> list[str]:
    return dexec(HOST, f"pgrep -u {user} || true").split()


@pytest.fixture
def intruder(lab_up: None, tmp_path: Path) -> Iterator[Path]:
    # A restore test earlier in the session may have put back a database without the accounts tables.
    if MARIADB.sql("SHOW TABLES LIKE 'tokens'", db="app").strip() != "tokens" or POSTGRES.sql(
            "SELECT to_regclass('public.tokens') IS NOT NULL", db="app").strip() != "t":
        run_setup_playbook()
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    public = key.with_suffix(".pub").read_text().strip()
    dexec(HOST, f"""set -e
        rm -rf {ACCOUNTS}/{USER} {ACCOUNTS}/{USER}.*
        id {USER} >/dev/null 2>&1 || useradd -m -s /bin/bash -G sudo {USER}
        echo "{USER}:$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \\n')" | chpasswd
        mkdir -p /home/{USER}/.ssh; printf '%s\\n# a comment kept as it is\\n' '{public}' > {KEYS}
        chown -R {USER}: /home/{USER}/.ssh; chmod 640 {KEYS}
        echo 'AllowUsers mayday {USER}' > {WIDEN}; sshd -t; systemctl reload ssh""")
    for db in (MARIADB, POSTGRES):
        db.sql(f"DELETE FROM sessions WHERE user_id IN (SELECT id FROM users WHERE name = '{USER}'); "
               f"DELETE FROM tokens WHERE user_id IN (SELECT id FROM users WHERE name = '{USER}'); "
               f"DELETE FROM users WHERE name = '{USER}'; INSERT INTO users (name) VALUES ('{USER}'); "
               f"INSERT INTO sessions (id, user_id) SELECT 'sess-{db.host}', id FROM users WHERE name = '{USER}'; "
               f"INSERT INTO tokens (user_id, token_hash) SELECT id, 'hash-{db.host}' FROM users WHERE name = '{USER}'",
               db="app")
    try:
        yield key
    finally:
        dexec(HOST, f"rm -f {WIDEN}; systemctl reload ssh; pkill -KILL -u {USER}; sleep 0.2; userdel -r {USER}; "
                    f"rm -rf {ACCOUNTS}/{USER} {ACCOUNTS}/{USER}.*", check=False)
        for db in (MARIADB, POSTGRES):
            db.sql(f"DELETE FROM sessions WHERE user_id IN (SELECT id FROM users WHERE name = '{USER}'); "
                   f"DELETE FROM tokens WHERE user_id IN (SELECT id FROM users WHERE name = '{USER}'); "
                   f"DELETE FROM users WHERE name = '{USER}'", db="app", check=False)
            dexec(db.host, f"rm -rf {ACCOUNTS}/{USER} {ACCOUNTS}/{USER}.*", check=False)


def test_contain_then_restore_exactly(intruder: Path, mayday: Mayday) -> None:
    key = intruder
    assert logs_in(key), "intruder must log in before, or the refusal after proves nothing"
    session = subprocess.Popen([*ssh_argv(USER, key), "sleep 300"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not processes(USER):
            assert session.poll() is None and time.monotonic() < deadline, "intruder's session did not start"
            time.sleep(0.2)
        dexec(HOST, f"curl -s -o /dev/null 'http://127.0.0.1/health-check?user={USER}'")  # a request naming it
        before, rows = os_state(HOST, USER), app_rows()
        assert before.split()[1] == "P" and all(rows.values()), (before, rows)

        result = mayday.run("security", "account", USER)
        assert result.returncode == 0, output(result)
        report = mayday.last_report()
        assert report["outcome"] == "DONE", report["summary"]
        status = dexec(HOST, f"passwd -S {USER}").split()
        assert status[1] == "L", status
        assert dexec(HOST, f"getent shadow {USER} | cut -d: -f8").strip() == "1", "not expired"
        assert processes(USER) == [], "intruder's processes survived"
        session.wait(timeout=20)  # the SSH session ended with them
        assert dexec(HOST, f"test -e {KEYS} && echo yes || echo no").strip() == "no", "keys not moved"
        kept = dexec(HOST, f"stat -c '%a %U' {ACCOUNTS} {ACCOUNTS}/{USER}.json").split()
        assert kept == ["700", "root", "600", "root"], kept
        assert not logs_in(key), "intruder still logs in over SSH"
        assert MARIADB.sql(f"SELECT disabled FROM users WHERE name = '{USER}'", db="app").strip() == "1"
        assert POSTGRES.sql(f"SELECT disabled FROM users WHERE name = '{USER}'", db="app").strip() == "t"
        after = app_rows()
        assert all(not after[f"{h}.{t}"].strip() for h in (DB_HOST, PG_HOST) for t in ("sessions", "tokens")), after
        evidence = report["results"][HOST]["evidence"]
        assert "member of sudo" in evidence["unusual"] and "sudo to root" in evidence["unusual"], evidence["unusual"]
        fingerprint = subprocess.run(["ssh-keygen", "-l", "-f", f"{key}.pub"], capture_output=True, text=True,
                                     check=True).stdout.split()[1]
        assert any(f"Accepted publickey for {USER} " in line and fingerprint in line for line in evidence["logins"])
        assert any(f"user={USER}" in line for line in evidence["requests"]), evidence["requests"]

        result = mayday.run("security", "account", USER, "--restore")
        assert result.returncode == 0, output(result)
        assert mayday.last_report()["outcome"] == "DONE"
        restored = os_state(HOST, USER)
        assert restored == before, (before, restored)  # the record moved aside, the kept copies gone
        assert app_rows() == rows, "the app rows are not as before"
        assert logs_in(key), "intruder cannot log in after the restore"
    finally:
        session.kill()
        session.wait(timeout=10)


@pytest.mark.parametrize("name", ["mayday", "breakglass", "nosuchuser"])
def test_refused_nothing_changed(intruder: Path, mayday: Mayday, name: str) -> None:
    """The operator's own account, a break-glass account, an unknown name: exit 2, no host changed."""
    hosts = LAB_HOSTS
    before = {h: os_state(h, name) for h in hosts}
    rows = app_rows()
    result = mayday.run("security", "account", name)
    assert result.returncode == 2, output(result)
    assert mayday.last_report()["outcome"] == "REFUSED"
    assert {h: os_state(h, name) for h in hosts} == before
    assert app_rows() == rows
