"""Helpers for the CLI tests against the real lab: docker exec, host snapshots, running mayday."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
MAYDAY = str(VENV_BIN / "mayday")
ANSIBLE_PLAYBOOK = str(VENV_BIN / "ansible-playbook")
DOCKER = "/usr/bin/docker"
PREFIX = "mayday-lab-"
WEB_HOSTS = ("web1", "web2")
DB_HOST = "db1"
LAB_HOSTS = (*WEB_HOSTS, DB_HOST, "pg1")
APP = "/var/www/app"
DB_INI = "/etc/mayday-app/db.ini"
GOOD_RELEASES = ("v1", "v2")

MODULE_UTILS = str(ROOT / "plugins" / "module_utils")
if MODULE_UTILS not in sys.path:
    sys.path.insert(0, MODULE_UTILS)


def docker(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([DOCKER, *args], capture_output=True, text=True, check=False, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
    return out


def dexec(host: str, script: str, check: bool = True, timeout: float = 60) -> str:
    return docker("exec", PREFIX + host, "sh", "-c", script, check=check, timeout=timeout).stdout


def base_env(state_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_FORCE_COLOR="false",
        NO_COLOR="1",
        COLUMNS="400",  # rich wraps stderr at 80 columns otherwise
        PATH=os.pathsep.join([str(VENV_BIN), env.get("PATH", "/usr/bin:/bin")]),
    )
    env.pop("MAYDAY_HOME", None)
    if state_dir is not None:
        env["MAYDAY_STATE_DIR"] = str(state_dir)
    return env


def container_state(host: str) -> str:
    out = docker("inspect", "-f", "{{.State.Status}}", PREFIX + host, check=False)
    return out.stdout.strip() if out.returncode == 0 else "absent"


def wait_booted(hosts: tuple[str, ...] | list[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    pending = list(hosts)
    while pending and time.monotonic() < deadline:
        for host in list(pending):
            out = docker("exec", PREFIX + host, "systemctl", "is-system-running", check=False, timeout=15)
            if out.stdout.strip() in ("running", "degraded"):
                pending.remove(host)
        if pending:
            time.sleep(0.3)
    assert not pending, f"lab containers did not finish booting: {pending}"


def ensure_running() -> None:
    stopped = [h for h in LAB_HOSTS if container_state(h) != "running"]
    for host in stopped:
        assert container_state(host) != "absent", f"lab container {PREFIX}{host} is gone: run `mayday lab up`"
        docker("start", PREFIX + host)
    if stopped:
        wait_booted(stopped)


def run_setup_playbook() -> None:
    out = subprocess.run([ANSIBLE_PLAYBOOK, str(ROOT / "playbooks" / "lab" / "setup.yml")], cwd=ROOT,
                         env=base_env(), capture_output=True, text=True, check=False, timeout=300)
    assert out.returncode == 0, f"playbooks/lab/setup.yml failed:\n{out.stdout[-3000:]}{out.stderr[-2000:]}"


def db_ini_digests() -> dict[str, str]:
    return {h: hashlib.sha256(dexec(h, f"cat {DB_INI} 2>/dev/null", check=False).encode()).hexdigest()
            for h in WEB_HOSTS}


def health(host: str) -> dict[str, Any]:
    out = dexec(host, "curl -s --max-time 5 http://127.0.0.1/health-check", check=False)
    try:
        doc = json.loads(out)
    except ValueError:
        return {"raw": out}
    return doc if isinstance(doc, dict) else {"raw": out}


@dataclass
class Mayday:
    """Runs the mayday CLI with an isolated state directory."""

    state_dir: Path

    def env(self) -> dict[str, str]:
        return base_env(self.state_dir)

    def run(self, *args: str, timeout: float = 180,
            stdin: Any = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
        return subprocess.run([MAYDAY, *args], cwd=ROOT, env=self.env(), stdin=stdin, capture_output=True,
                              text=True, check=False, timeout=timeout)

    def reports(self) -> list[dict[str, Any]]:
        root = self.state_dir / "incidents"
        files = sorted(root.glob("*/report.json"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
        return [json.loads(f.read_text()) for f in files]

    def last_report(self) -> dict[str, Any]:
        reports = self.reports()
        assert reports, f"no incident report under {self.state_dir / 'incidents'}"
        return reports[-1]

    def notifications(self) -> list[dict[str, Any]]:
        path = self.state_dir / "notifications.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def snapshot(web_hosts: tuple[str, ...] = WEB_HOSTS) -> dict[str, Any]:
    """What a rollback changes: each web host's current release, failed markers and service PIDs,
    and the database's PID. Equal before and after means nothing was touched."""
    snap: dict[str, Any] = {}
    for host in web_hosts:
        out = dexec(host, f"""
            echo "current=$(readlink {APP}/current)"
            for m in {APP}/releases/*/.mayday-failed; do [ -e "$m" ] && echo "marker=$m"; done
            echo "nginx=$(systemctl show -p MainPID --value nginx)"
            echo "php=$(systemctl show -p MainPID --value php8.2-fpm)"
        """)
        fields: dict[str, Any] = {"markers": []}
        for line in out.splitlines():
            key, _, value = line.partition("=")
            if key == "marker":
                fields["markers"].append(value)
            elif key:
                fields[key] = value
        fields["markers"] = sorted(fields["markers"])
        snap[host] = fields
    snap[DB_HOST] = {"mariadb": dexec(DB_HOST, "systemctl show -p MainPID --value mariadb").strip()}
    return snap


PRUNE_RELEASES = (f"cd {APP}/releases && for d in */; do d=${{d%/}}; case \"$d\" in {'|'.join(GOOD_RELEASES)}) ;; "
                  f"*) rm -rf -- \"$d\" ;; esac; done; rm -f {APP}/releases/*/.mayday-failed")
RESET_WEB = f"""
set -e
{PRUNE_RELEASES}
ln -sfn releases/v2 {APP}/current.t && mv -T {APP}/current.t {APP}/current
systemctl reset-failed
systemctl start nginx php8.2-fpm
"""


def reset_lab(good_db_ini: dict[str, str]) -> None:
    ensure_running()
    for host in WEB_HOSTS:
        dexec(host, RESET_WEB)
    dexec(DB_HOST, "systemctl reset-failed; systemctl start mariadb")
    if db_ini_digests() != good_db_ini:
        run_setup_playbook()
        assert db_ini_digests() == good_db_ini, "setup.yml did not restore /etc/mayday-app/db.ini"
