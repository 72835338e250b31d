"""Credential rotation on the lab (`mayday security rotate`): MariaDB, PostgreSQL, pgbouncer's auth
file and the app's db.ini.

Asserted on host state: logins as the app's role with the old and the new password (MariaDB over
TCP, PostgreSQL over its socket, pgbouncer from a web host as the app connects), the app's health
check, the store's mode; and a grep for every secret over the state directory (records, runner
artifacts, notifications) and the CLI's output. The plain store (0600, no vault password) is the
path tested. Passwords reach the containers through the environment (`docker exec -e NAME`), never
an argv or an assertion message. The lab goes back to its default password at the end.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Generator
from pathlib import Path

import pytest
import yaml
from lab_helpers import ANSIBLE_PLAYBOOK, DOCKER, MAYDAY, PREFIX, ROOT, WEB_HOSTS, Mayday, base_env, health

DEFAULT_PASSWORD = os.environ.get("MAYDAY_LAB_DB_PASSWORD") or "lab-only-not-a-secret"
LAB_NAME = os.environ.get("MAYDAY_LAB_NAME") or "mayday-lab"
STORE = f"secrets/lab-{LAB_NAME}.yml"


def login(host: str, var: str, password: str, script: str) -> bool:
    """True when the app's role logs in with `password` (passed in the environment, not argv)."""
    out = subprocess.run([DOCKER, "exec", "-e", var, PREFIX + host, "sh", "-c", script], capture_output=True,
                         text=True, check=False, timeout=30, env=dict(os.environ, **{var: password}))
    return out.returncode == 0


def mariadb_ok(password: str) -> bool:
    return login("db1", "MYSQL_PWD", password,
                 "mariadb --no-defaults --connect-timeout=5 --protocol=TCP -h 127.0.0.1 -u app app -e 'SELECT 1'")


def postgres_ok(password: str) -> bool:
    return login("pg1", "PGPASSWORD", password,
                 "psql -X -w -q -h /var/run/postgresql -U app -d app -c 'SELECT 1'")


def pgbouncer_ok(password: str) -> bool:
    return login("web1", "PGPASSWORD", password,
                 "PGCONNECT_TIMEOUT=5 psql -X -w -q -h pg1 -p 6432 -U app -d app -c 'SELECT 1'")


def stored(mayday: Mayday) -> dict[str, dict[str, str]]:
    doc = yaml.safe_load((mayday.state_dir / STORE).read_text())
    assert isinstance(doc, dict)
    return doc


def leaks(mayday: Mayday, outputs: list[str], secrets: set[str]) -> list[str]:
    """Places other than the store holding any secret (named by place, never by value)."""
    found = []
    for path in mayday.state_dir.rglob("*"):
        if path.is_file() and path != mayday.state_dir / STORE:
            data = path.read_bytes()
            found += [str(path.relative_to(mayday.state_dir)) for s in secrets if s.encode() in data]
    found += [f"CLI output #{i}" for i, text in enumerate(outputs) for s in secrets if s in text]
    return found


def app_healthy() -> dict[str, str]:
    return {h: str(health(h).get("status")) for h in WEB_HOSTS}


@pytest.fixture
def rot(lab_up: None, mayday: Mayday) -> Generator[Mayday, None, None]:
    assert mariadb_ok(DEFAULT_PASSWORD) and postgres_ok(DEFAULT_PASSWORD), "lab not on its default password"
    yield mayday
    # Back to the default everywhere for the other test files (their state directories have no store).
    out = subprocess.run([ANSIBLE_PLAYBOOK, str(ROOT / "tests/integration/playbooks/lab-default-db-password.yml")],
                         cwd=ROOT, env=base_env(), capture_output=True, text=True, check=False, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:]
    assert mariadb_ok(DEFAULT_PASSWORD) and pgbouncer_ok(DEFAULT_PASSWORD), "setup.yml did not restore the default"


def test_rotate_all_then_only_mariadb(rot: Mayday, record_property: pytest.RecordProperty) -> None:
    outputs: list[str] = []
    # The app's health sampled every 0.1 s on web1 during the rotation: the window it fails.
    probe = subprocess.Popen([DOCKER, "exec", PREFIX + "web1", "sh", "-c",
                              "end=$(($(date +%s)+40)); while [ $(date +%s) -lt $end ]; do "
                              "curl -s -o /dev/null -w '%{http_code}\\n' --max-time 2 http://127.0.0.1/health-check; "
                              "sleep 0.1; done"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    out = rot.run("security", "rotate")
    probe.terminate()
    codes = (probe.communicate(timeout=10)[0] or "").split()
    outputs += [out.stdout, out.stderr]
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert rot.last_report()["outcome"] == "DONE"
    assert rot.last_report()["results"]["db1"]["store"]["kind"] == "file-0600"

    store = rot.state_dir / STORE
    assert stat.S_IMODE(store.stat().st_mode) == 0o600 and not store.read_text().startswith("$ANSIBLE_VAULT")
    first = stored(rot)
    new_my, new_pg = first["mariadb"]["password"], first["postgresql"]["password"]
    assert len({new_my, new_pg, DEFAULT_PASSWORD}) == 3
    assert first["mariadb"]["previous"] == first["postgresql"]["previous"] == DEFAULT_PASSWORD

    assert not mariadb_ok(DEFAULT_PASSWORD) and mariadb_ok(new_my)
    assert not postgres_ok(DEFAULT_PASSWORD) and postgres_ok(new_pg)
    assert not pgbouncer_ok(DEFAULT_PASSWORD) and pgbouncer_ok(new_pg)
    assert app_healthy() == {h: "healthy" for h in WEB_HOSTS}
    failed = [c for c in codes if c != "200"]
    record_property("mayday_outcome", f"app unhealthy in {len(failed)} of {len(codes)} probes 0.1 s apart")
    assert len(codes) > 20 and len(failed) <= 20, f"app failed {len(failed)} of {len(codes)} probes (0.1 s apart)"

    # The next run finds the new secrets: read-only's dry run proves nothing, so the real switch,
    # whose proof is a write as the app's role with the stored password, then back.
    for state in ("on", "off"):
        out = rot.run("db", "read-only", "--state", state, "--for", "5m")
        outputs += [out.stdout, out.stderr]
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        assert all(r["probe"]["blocked"] is (state == "on")
                   for r in rot.last_report()["results"].values()), rot.last_report()["results"]

    # --only mariadb: MariaDB's password changes, PostgreSQL's stays.
    out = rot.run("security", "rotate", "--only", "mariadb")
    outputs += [out.stdout, out.stderr]
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    second = stored(rot)
    assert second["mariadb"]["password"] not in (new_my, DEFAULT_PASSWORD)
    assert second["postgresql"] == first["postgresql"]
    assert not mariadb_ok(new_my) and mariadb_ok(second["mariadb"]["password"])
    assert pgbouncer_ok(new_pg) and postgres_ok(new_pg)
    assert app_healthy() == {h: "healthy" for h in WEB_HOSTS}

    # A bad --only: refused before anything runs, store untouched.
    out = rot.run("security", "rotate", "--only", "mariadb,redis")
    outputs += [out.stdout, out.stderr]
    assert out.returncode == 2
    assert stored(rot) == second and mariadb_ok(second["mariadb"]["password"])

    secrets = {DEFAULT_PASSWORD, new_my, new_pg, second["mariadb"]["password"]}
    assert leaks(rot, outputs, secrets) == []
    assert any((rot.state_dir / "runs").rglob("job_events/*.json")), "no runner artifacts were grepped"
    assert (rot.state_dir / "notifications.jsonl").exists()


def test_store_is_what_the_inventory_reads(rot: Mayday, tmp_path: Path) -> None:
    """No store: the inventory's default; a store: its password (the lookup the next runs use)."""
    env = dict(rot.env(), ANSIBLE_LOCALHOST_WARNING="false")
    cmd = [str(Path(rot.env()["PATH"].split(os.pathsep)[0]) / "ansible"), "db1", "-m", "ansible.builtin.assert",
           "-a", '{"that": "mayday_app_db_password == lookup(\'ansible.builtin.env\', \'WANT\')", "quiet": true}']
    for want in (DEFAULT_PASSWORD, "Stored0nlyForThisTest"):
        if want != DEFAULT_PASSWORD:
            (rot.state_dir / "secrets").mkdir(mode=0o700, exist_ok=True)
            (rot.state_dir / STORE).write_text(yaml.safe_dump({"mariadb": {"password": want}}))
        out = subprocess.run(cmd, env=dict(env, WANT=want), capture_output=True, text=True, check=False, timeout=60)
        assert out.returncode == 0, "the inventory did not read the expected password"


def test_vault_password_encrypts_the_store(rot: Mayday, tmp_path: Path) -> None:
    """With a vault password the store is ansible-vault encrypted, and the next run reads it."""
    vault_file = tmp_path / "vault-pass"
    vault_file.write_text("vault-pass-for-this-test\n")
    vault_env = dict(rot.env(), ANSIBLE_VAULT_PASSWORD_FILE=str(vault_file))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([MAYDAY, *args], cwd=ROOT, env=vault_env, capture_output=True, text=True,
                              check=False, timeout=180)

    out = run("security", "rotate", "--only", "mariadb")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert rot.last_report()["results"]["db1"]["store"]["kind"] == "ansible-vault"
    store = rot.state_dir / STORE
    assert store.read_text().startswith("$ANSIBLE_VAULT") and stat.S_IMODE(store.stat().st_mode) == 0o600
    view = subprocess.run([str(Path(vault_env["PATH"].split(os.pathsep)[0]) / "ansible-vault"), "view", str(store)],
                          env=vault_env, capture_output=True, text=True, check=False, timeout=60)
    new = yaml.safe_load(view.stdout)["mariadb"]["password"]
    assert not mariadb_ok(DEFAULT_PASSWORD) and mariadb_ok(new)
    assert app_healthy() == {h: "healthy" for h in WEB_HOSTS}
    # The next run decrypts it: the read-only switch proves its write as the app's role with it.
    for state in ("on", "off"):
        out = run("db", "read-only", "--state", state, "--for", "5m")
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert leaks(rot, [out.stdout, out.stderr], {new, DEFAULT_PASSWORD}) == []
