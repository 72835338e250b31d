"""The built-in lab: systemd containers web1..N, db1 and pg1 on one Docker network."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

import click

from mayday.errors import BadInput, MaydayError
from mayday.inventory import RELEASE_ID
from mayday.paths import LAB_DIR, project_root

DOCKER = "/usr/bin/docker"
NETWORK = "mayday-lab"
PREFIX = "mayday-lab-"
# Run flags that let systemd be PID 1 without --privileged (which fails on these machines).
SYSTEMD_FLAGS = [
    "--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--tmpfs", "/run", "--tmpfs", "/run/lock", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro",
]

def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([DOCKER, *args], capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise MaydayError(f"docker {' '.join(args[:2])} failed: {out.stderr.strip()}")
    return out

def lab_hosts(web_count: int) -> dict[str, str]:
    hosts = {f"web{n}": "web" for n in range(1, web_count + 1)}
    hosts.update(db1="db", pg1="pg")
    return hosts

def ensure_engine_and_image() -> None:
    for script in ("host-deps.sh", "image/build.sh"):
        if subprocess.run(["bash", str(LAB_DIR / script)], check=False).returncode != 0:
            raise MaydayError(f"lab set-up step {script} failed")

def state(name: str) -> str:
    out = docker("inspect", "-f", "{{.State.Status}}", PREFIX + name, check=False)
    return out.stdout.strip() if out.returncode == 0 else "absent"

def wait_booted(names: list[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    pending = list(names)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            out = docker("exec", PREFIX + name, "systemctl", "is-system-running", check=False)
            if out.stdout.strip() in ("running", "degraded"):
                pending.remove(name)
        time.sleep(0.3)
    if pending:
        raise MaydayError(f"lab containers did not finish booting: {', '.join(pending)}")

def up(web_count: int = 2) -> list[str]:
    ensure_engine_and_image()
    if docker("network", "inspect", NETWORK, check=False).returncode != 0:
        docker("network", "create", NETWORK)
    started = []
    for name, role in lab_hosts(web_count).items():
        current = state(name)
        if current == "running":
            continue
        if current != "absent":
            docker("rm", "-f", PREFIX + name)
        docker("run", "-d", "--name", PREFIX + name, "--hostname", name, "--network", NETWORK,
               "--network-alias", name, "--label", "mayday.lab=1", *SYSTEMD_FLAGS,
               f"mayday-lab-{role}:latest")
        started.append(name)
    wait_booted(list(lab_hosts(web_count)))
    return started

def down() -> list[str]:
    names = docker("ps", "-a", "--filter", "label=mayday.lab=1", "--format", "{{.Names}}", check=False).stdout.split()
    if names:
        docker("rm", "-f", *names)
    docker("network", "rm", NETWORK, check=False)
    return names

def run_lab_playbook(playbook: str, extravars: dict[str, Any], inventory: str | None = None) -> None:
    cmd = [str(project_root() / ".venv" / "bin" / "ansible-playbook")]
    if not (project_root() / ".venv").exists():
        cmd = ["ansible-playbook"]
    cmd += [str(project_root() / "playbooks" / "lab" / playbook)]
    if inventory:
        cmd += ["-i", inventory]
    for key, value in extravars.items():
        cmd += ["-e", f"{key}={value}"]
    env_cfg = {"ANSIBLE_CONFIG": str(project_root() / "ansible.cfg")}

    out = subprocess.run(cmd, env={**os.environ, **env_cfg}, capture_output=True, text=True, check=False,
                         cwd=project_root())
    if out.returncode != 0:
        raise MaydayError(f"{playbook} failed:\n{out.stdout[-3000:]}{out.stderr[-2000:]}")

@click.group()
def lab() -> None:
    """The built-in lab: real systemd containers with nginx, php-fpm, MariaDB, PostgreSQL."""

@lab.command("up")
@click.option("--web", "web_count", default=2, show_default=True, type=click.IntRange(1, 20),
              help="How many web hosts.")
def lab_up(web_count: int) -> None:
    """Start the lab (installs the engine and builds the image when needed)."""
    started = up(web_count)
    run_lab_playbook("setup.yml", {})
    click.echo(f"lab up: {', '.join(lab_hosts(web_count))} (started now: {', '.join(started) or 'none'})")

@lab.command("down")
def lab_down() -> None:
    """Remove the lab containers and network."""
    removed = down()
    click.echo(f"lab down: removed {', '.join(removed) or 'nothing'}")

@lab.command("status")
def lab_status() -> None:
    """Show each lab container and its services."""
    names = docker("ps", "-a", "--filter", "label=mayday.lab=1", "--format", "{{.Names}}", check=False).stdout.split()
    if not names:
        click.echo("lab is down (mayday lab up starts it)")
        return
    for full in sorted(names):
        name = full.removeprefix(PREFIX)
        services = docker("exec", full, "sh", "-c",
                          "for s in nginx php8.2-fpm mariadb postgresql pgbouncer; do "
                          "systemctl is-enabled -q $s 2>/dev/null && echo $s=$(systemctl is-active $s); done",
                          check=False).stdout.split()
        click.echo(f"{name:<6} {state(name):<8} {' '.join(services)}")

@lab.command("deploy")
@click.option("--release", required=True, help="Release id, e.g. v2.")
@click.option("--broken", is_flag=True, help="Deploy a release whose health check fails.")
@click.option("-i", "--inventory", default=None, help="Inventory (default: the lab).")
def lab_deploy(release: str, broken: bool, inventory: str | None) -> None:
    """Deploy a release of the sample app on the web hosts and make it current."""
    if not RELEASE_ID.match(release):
        raise BadInput(f"--release {release!r} is not a release id (letters, digits, '.', '_', '-')")
    run_lab_playbook("deploy.yml", {"lab_release": release, "lab_broken": str(broken).lower()}, inventory)
    click.echo(f"deployed {release}{' (broken)' if broken else ''}")
