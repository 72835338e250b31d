"""The built-in lab: systemd containers web1..N, db1 and pg1 on one Docker network, and mon1 watching them.

MAYDAY_LAB_NAME (default mayday-lab) names the Docker network and prefixes the containers
(<name>-web1, ...), so several labs can live side by side on one engine. Images stay
mayday-lab-{web,db,pg,mon}.

mon1 runs Prometheus and Alertmanager (configured from monitoring/, see mayday.lab_monitoring); its
Alertmanager sends every alert to `mayday serve` on this controller, at the lab network's gateway, port
MAYDAY_SERVE_PORT (default 9753), with the bearer token kept in serve_token_path().

The lab is also reachable the way real hosts are: over SSH as the non-root user `mayday` with sudo
(inventories/lab-ssh). Its controller key and known_hosts live in <checkout>/.mayday-lab/<name>/ssh/
(see ssh_dir()).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import click

from mayday import lab_monitoring as mon
from mayday.errors import BadInput, MaydayError
from mayday.inventory import RELEASE_ID
from mayday.paths import LAB_DIR, project_root, state_dir

DOCKER = "/usr/bin/docker"
DEFAULT_NAME = "mayday-lab"
LAB_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,40}$")
HOST_NAME = re.compile(r"^(web[0-9]+|db1|pg1|mon1)$")
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"
# Run flags that let systemd be PID 1 without --privileged (which fails on these machines).
SYSTEMD_FLAGS = [
    "--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--cap-add", "NET_ADMIN",  # nft inside the container (roles/network_isolate)
    "--tmpfs", "/run", "--tmpfs", "/run/lock", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro",
]

def lab_name() -> str:
    """The lab's network name and container prefix: MAYDAY_LAB_NAME, default mayday-lab."""
    name = os.environ.get("MAYDAY_LAB_NAME") or DEFAULT_NAME
    if not LAB_NAME.match(name):
        raise BadInput(f"MAYDAY_LAB_NAME={name!r} is not a lab name (lower-case letters, digits, '.', '_', '-')")
    return name


def prefix() -> str:
    return lab_name() + "-"


def ssh_dir() -> Path:
    """The controller's SSH key pair and the lab's known_hosts, kept across `lab up`s.

    In the checkout (like the lab itself, it outlives every run), not in MAYDAY_STATE_DIR: that one
    changes per run (the tests give each run its own), and inventories/lab-ssh finds these files
    relative to itself. One directory per lab name, so two labs never share a known_hosts file.
    """
    return project_root() / ".mayday-lab" / lab_name() / "ssh"


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([DOCKER, *args], capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise MaydayError(f"docker {' '.join(args[:2])} failed: {out.stderr.strip()}")
    return out

def lab_hosts(web_count: int) -> dict[str, str]:
    """The inventory's hosts (inventories/lab) and their roles; mon1 is the lab's, not the inventory's."""
    hosts = {f"web{n}": "web" for n in range(1, web_count + 1)}
    hosts.update(db1="db", pg1="pg")
    return hosts


def lab_containers(web_count: int) -> dict[str, str]:
    return {**lab_hosts(web_count), mon.MON_HOST: "mon"}

def ensure_engine_and_image() -> None:
    for script in ("host-deps.sh", "image/build.sh"):
        if subprocess.run(["bash", str(LAB_DIR / script)], check=False).returncode != 0:
            raise MaydayError(f"lab set-up step {script} failed")

def state(name: str) -> str:
    out = docker("inspect", "-f", "{{.State.Status}}", prefix() + name, check=False)
    return out.stdout.strip() if out.returncode == 0 else "absent"

def wait_booted(names: list[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    pending = list(names)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            out = docker("exec", prefix() + name, "systemctl", "is-system-running", check=False)
            if out.stdout.strip() in ("running", "degraded"):
                pending.remove(name)
        time.sleep(0.3)
    if pending:
        raise MaydayError(f"lab containers did not finish booting: {', '.join(pending)}")

def ipv6_flags(network: str) -> list[str]:
    """IPv6 on the lab network too (network isolation must hold on both families): a ULA /64 derived
    from the lab's name, so labs side by side never overlap. A network made before this keeps running
    IPv4-only until `mayday lab down` and `up` recreate it."""
    digest = hashlib.sha256(network.encode()).hexdigest()
    subnet = f"fd{digest[:2]}:{digest[2:6]}:{digest[6:10]}::"
    return ["--ipv6", "--subnet", subnet + "/64", "--gateway", subnet + "1"]


def has_net_admin(container: str) -> bool:
    """Containers started before isolation existed lack NET_ADMIN (nft): `up` recreates them."""
    caps = docker("inspect", "-f", "{{json .HostConfig.CapAdd}}", container, check=False).stdout
    return "NET_ADMIN" in caps


def up(web_count: int = 2) -> list[str]:
    ensure_engine_and_image()
    network = lab_name()
    found = docker("network", "inspect", network, check=False)
    if found.returncode == 0 and not json.loads(found.stdout)[0].get("EnableIPv6"):
        # A network of an older lab: IPv4 only. Recreated once no container uses it.
        for name in containers():
            docker("rm", "-f", name)
        docker("network", "rm", network)
        found = docker("network", "inspect", network, check=False)
    if found.returncode != 0:
        docker("network", "create", *ipv6_flags(network), network)
    started = []
    for name, role in lab_containers(web_count).items():
        current = state(name)
        if current == "running" and has_net_admin(prefix() + name):
            continue
        if current != "absent":
            docker("rm", "-f", prefix() + name)
        docker("run", "-d", "--name", prefix() + name, "--hostname", name, "--network", network,
               "--network-alias", name, "--label", "mayday.lab=1", "--label", f"mayday.lab.name={network}",
               *SYSTEMD_FLAGS, f"mayday-lab-{role}:latest")
        started.append(name)
    wait_booted(list(lab_containers(web_count)), timeout=90 + 5 * web_count)  # systemd boots queue on 2 cores
    return started

def containers() -> list[str]:
    """This lab's containers (and no other lab's): <name>-web<N>, <name>-db1, <name>-pg1, <name>-mon1."""
    names = docker("ps", "-a", "--filter", "label=mayday.lab=1", "--format", "{{.Names}}", check=False).stdout.split()
    return [n for n in names if n.startswith(prefix()) and HOST_NAME.match(n.removeprefix(prefix()))]

def down() -> list[str]:
    names = containers()
    if names:
        docker("rm", "-f", *names)
    docker("network", "rm", lab_name(), check=False)
    return names

def ensure_ssh_key() -> Path:
    """The controller's ed25519 key pair for the lab, generated once and kept (private key 0600)."""
    directory = ssh_dir()
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    key = directory / "id_ed25519"
    if not key.exists():
        out = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"mayday controller ({lab_name()})",
                              "-f", str(key)], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise MaydayError(f"ssh-keygen failed: {out.stderr.strip()}")
    key.chmod(0o600)
    return key

def write_known_hosts(names: list[str], timeout: float = 30) -> list[str]:
    """known_hosts for the lab: each container's host key, read through the engine (a channel that
    needs no trust on first use), under the alias <name>-<host> that inventories/lab-ssh gives ssh
    as HostKeyAlias: the entry stays valid when a restarted container gets another address.
    Rewritten whole at every `lab up`, so a recreated container's new key replaces the old one.
    Returns the hosts without sshd (containers of an image older than the SSH path)."""
    lines, missing = [], []
    deadline = time.monotonic() + timeout
    for name in names:
        if docker("exec", prefix() + name, "test", "-x", "/usr/sbin/sshd", check=False).returncode != 0:
            missing.append(name)
            continue
        while True:  # generated at first boot, before ssh.service starts
            out = docker("exec", prefix() + name, "cat", HOST_KEY, check=False)
            if out.returncode == 0 and out.stdout.strip():
                break
            if time.monotonic() > deadline:
                raise MaydayError(f"{prefix() + name} has no SSH host key ({HOST_KEY})")
            time.sleep(0.3)
        key_type, key = out.stdout.split()[:2]
        lines.append(f"{prefix() + name} {key_type} {key}\n")
    path = ssh_dir() / "known_hosts"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(lines))
    tmp.chmod(0o644)
    tmp.replace(path)
    return missing

def lab_inventory_vars() -> dict[str, Any]:
    """Extra vars pointing inventories/lab (whose ansible_host values are the default lab's container
    names) at this lab's containers when MAYDAY_LAB_NAME names another lab."""
    if lab_name() == DEFAULT_NAME:
        return {}
    return {"ansible_host": prefix() + "{{ inventory_hostname }}"}

def is_lab_inventory(inventory: str | None) -> bool:
    """Whether ansible-playbook (run in the checkout) reads inventories/lab."""
    path = project_root() / (inventory or "inventories/lab")
    return path.resolve() == (project_root() / "inventories" / "lab").resolve()

def run_lab_playbook(playbook: str, extravars: dict[str, Any], inventory: str | None = None) -> None:
    cmd = [str(project_root() / ".venv" / "bin" / "ansible-playbook")]
    if not (project_root() / ".venv").exists():
        cmd = ["ansible-playbook"]
    cmd += [str(project_root() / "playbooks" / "lab" / playbook)]
    if inventory:
        cmd += ["-i", inventory]
    if is_lab_inventory(inventory):
        extravars = {**lab_inventory_vars(), **extravars}
    if extravars:
        cmd += ["-e", json.dumps(extravars)]
    env_cfg = {"ANSIBLE_CONFIG": str(project_root() / "ansible.cfg")}

    out = subprocess.run(cmd, env={**os.environ, **env_cfg}, capture_output=True, text=True, check=False,
                         cwd=project_root())
    if out.returncode != 0:
        raise MaydayError(f"{playbook} failed:\n{out.stdout[-3000:]}{out.stderr[-2000:]}")

def lab_db_password() -> str:
    """The lab databases' password (inventories/lab/group_vars/all: mayday_lab_db_password)."""
    return os.environ.get("MAYDAY_LAB_DB_PASSWORD") or "lab-only-not-a-secret"


def serve_token_path() -> Path:
    """The bearer token mon1's Alertmanager sends to `mayday serve`: <state dir>/lab/<lab name>/serve-token."""
    return state_dir() / "lab" / lab_name() / "serve-token"


def ensure_serve_token() -> str:
    """The serve token, made (random, 0600, in a 0700 directory) when missing, and returned."""
    path = serve_token_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    if not path.exists() or not path.read_text().strip():
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
        tmp.replace(path)  # whole or not at all for a reader (`mayday serve`)
    path.chmod(0o600)
    return path.read_text().strip()


def gateway_ipv4(network: str) -> str:
    """The lab network's IPv4 gateway: this controller, as the containers reach it."""
    out = docker("network", "inspect", "-f", "{{json .IPAM.Config}}", network, check=False)
    configs = json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else []
    for config in configs or []:
        if "." in (config.get("Gateway") or ""):
            return str(config["Gateway"])
    raise MaydayError(f"the lab network {network} has no IPv4 gateway (docker network inspect {network})")


def container_ip(name: str) -> str:
    """The container's IPv4 address on the lab network ('' when it has none)."""
    out = docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", prefix() + name, check=False)
    networks = json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else {}
    return str((networks.get(lab_name()) or {}).get("IPAddress") or "")


def monitoring_urls() -> dict[str, str]:
    """Where the controller reaches mon1's Prometheus and Alertmanager."""
    ip = container_ip(mon.MON_HOST)
    if not ip:
        return {}
    return {"prometheus": f"http://{ip}:{mon.PROMETHEUS_PORT}", "alertmanager": f"http://{ip}:{mon.ALERTMANAGER_PORT}"}


def configure_monitoring(web_count: int) -> dict[str, str]:
    """mon1 watching this lab and alerting this controller's `mayday serve`. When nothing changed (the
    same hash as the last time), one `docker exec` that makes sure the services run; otherwise the new
    files are checked in mon1 (promtool, amtool) before any goes live, and only their services restart.
    Returns the URLs of Prometheus, Alertmanager and the receiver."""
    spec = mon.MonSpec(
        web_hosts=tuple(h for h, role in lab_hosts(web_count).items() if role == "web"),
        serve_host=gateway_ipv4(lab_name()), serve_port=mon.serve_port(os.environ),
        health_window=mon.health_for(os.environ), db_password=lab_db_password(), token=ensure_serve_token())
    files = mon.render(spec, project_root())
    units = mon.units(spec)
    applied = mon.digest(files, units)
    container = prefix() + mon.MON_HOST
    same = docker("exec", container, "sh", "-c",
                  f'[ "$(cat {mon.APPLIED} 2>/dev/null)" = {applied} ] && systemctl start {" ".join(units)}',
                  check=False)
    if same.returncode != 0:
        out = subprocess.run([DOCKER, "exec", "-i", container, "sh", "-c", mon.APPLY_SCRIPT],
                             input=mon.bundle(files, units, applied), capture_output=True, check=False)
        if out.returncode != 0:
            raise MaydayError(f"configuring {container} failed:\n{out.stderr.decode(errors='replace')[-3000:]}")
    return {**monitoring_urls(), "receiver": f"http://{spec.serve_host}:{spec.serve_port}/alertmanager"}


@click.group()
def lab() -> None:
    """The built-in lab: real systemd containers with nginx, php-fpm, MariaDB, PostgreSQL."""

@lab.command("up")
@click.option("--web", "web_count", default=2, show_default=True, type=click.IntRange(2, 30),
              help="How many web hosts (at least web1 and web2, the lab inventory's; more for fleets).")
def lab_up(web_count: int) -> None:
    """Start the lab (installs the engine and builds the image when needed)."""
    # Bad monitoring settings refuse before anything starts.
    mon.serve_port(os.environ)
    mon.health_for(os.environ)
    started = up(web_count)
    key = ensure_ssh_key()
    run_lab_playbook("setup.yml", {"lab_ssh_public_key_file": f"{key}.pub"})
    no_sshd = write_known_hosts(list(lab_hosts(web_count)))
    urls = configure_monitoring(web_count)
    click.echo(f"lab up: {', '.join(lab_containers(web_count))} (started now: {', '.join(started) or 'none'})")
    click.echo(f"lab up: Prometheus {urls.get('prometheus', '?')}, Alertmanager {urls.get('alertmanager', '?')}; "
               f"alerts go to {urls['receiver']} (bearer token in {serve_token_path()})")
    if no_sshd:
        click.echo(f"lab up: no sshd on {', '.join(no_sshd)} (containers of an older image): inventories/lab-ssh "
                   "cannot reach them; `mayday lab down` then `mayday lab up` recreates them", err=True)

@lab.command("down")
def lab_down() -> None:
    """Remove the lab containers and network."""
    removed = down()
    click.echo(f"lab down: removed {', '.join(removed) or 'nothing'}")

@lab.command("status")
def lab_status() -> None:
    """Show each lab container and its services."""
    names = containers()
    if not names:
        click.echo("lab is down (mayday lab up starts it)")
        return
    for full in sorted(names):
        name = full.removeprefix(prefix())
        services = docker("exec", full, "sh", "-c",
                          f"for s in nginx php8.2-fpm mariadb postgresql pgbouncer ssh {' '.join(mon.PACKAGE_UNITS)} "
                          "$(systemctl list-units --plain --no-legend 'mayday-nginx-exporter@*' | cut -d' ' -f1); "
                          "do systemctl is-enabled -q $s 2>/dev/null && echo ${s%.service}=$(systemctl is-active $s); "
                          "done", check=False).stdout.split()
        click.echo(f"{name:<6} {state(name):<8} {' '.join(services)}")
    urls = monitoring_urls() if state(mon.MON_HOST) == "running" else {}
    if urls:
        click.echo(f"Prometheus {urls['prometheus']}, Alertmanager {urls['alertmanager']}")

# Load for tests and benchmarks, bounded in clients and seconds: it stops by itself.
# PostgreSQL: pgbench (TPC-B) as the app's role through pgbouncer on pg1, a log line per transaction.
PGBENCH = ("set -e; cd /tmp; export PGPASSWORD=\"$LOAD_PASSWORD\"; pg=\"-h 127.0.0.1 -p 6432 -U app\"; "
           "[ \"$(psql -X -A -t $pg -d app -c \"SELECT to_regclass('pgbench_history') IS NOT NULL\")\" = t ] "
           "|| pgbench $pg -i -s 1 -q app >/dev/null 2>&1; rm -f mayday-load.*; "
           "set +e; pgbench $pg -n {connect} -c {clients} -j 2 -T {seconds} -l --log-prefix=mayday-load app "
           "> mayday-load.out 2>&1; echo \"rc=$?\"; cat mayday-load.out; "
           "echo max_us=$(cat mayday-load.[0-9]* 2>/dev/null "
           "| awk 'BEGIN {{m = 0}} $3 > m {{m = $3}} END {{print m}}')")
# MariaDB: one connection per client inserting rows on db1 for the given time; reconnects on errors.
MARIADB_LOOP = r"""
import os, sys, threading, time
import pymysql
clients, seconds = int(sys.argv[1]), float(sys.argv[2])
conf = dict(host="127.0.0.1", user="app", password=os.environ["LOAD_PASSWORD"], database="app", autocommit=True,
            connect_timeout=5, read_timeout=30, write_timeout=30)
setup = pymysql.connect(**conf)
setup.cursor().execute("CREATE TABLE IF NOT EXISTS mayday_load (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
                       "client INT, at DATETIME(6) DEFAULT CURRENT_TIMESTAMP(6))")
setup.close()
done, failed, worst, lock = [0], [0], [0.0], threading.Lock()
end = time.monotonic() + seconds
def client(n):
    conn = None
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            conn = conn or pymysql.connect(**conf)
            conn.cursor().execute("INSERT INTO mayday_load (client) VALUES (%s)", (n,))
            with lock:
                done[0] += 1; worst[0] = max(worst[0], time.monotonic() - t0)
        except pymysql.MySQLError:
            with lock:
                failed[0] += 1
            conn = None
            time.sleep(0.05)
threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
[t.start() for t in threads]; [t.join() for t in threads]
print(f"processed={done[0]} failed={failed[0]} max_us={int(worst[0] * 1e6)}")
"""


def load(engine: str, clients: int, seconds: int, connect_each: bool = False) -> dict[str, Any]:
    """Runs a bounded load on the lab's database host and returns what it saw (transactions, failures,
    clients aborted, the longest transaction)."""
    password = lab_db_password()
    if engine == "postgresql":
        script = PGBENCH.format(connect="-C" if connect_each else "", clients=clients, seconds=seconds)
        out = docker("exec", "-e", f"LOAD_PASSWORD={password}", prefix() + "pg1", "bash", "-c", script).stdout
        found = dict(re.findall(r"^(rc|max_us)=(\d+)$", out, re.MULTILINE))
        processed = re.search(r"number of transactions actually processed: (\d+)", out)
        failed = re.search(r"number of failed transactions: (\d+)", out)
        return {"engine": engine, "clients": clients, "seconds": seconds, "rc": int(found.get("rc", -1)),
                "processed": int(processed.group(1)) if processed else 0,
                "failed": int(failed.group(1)) if failed else 0,
                "aborted_clients": len(re.findall(r"^pgbench: error: client \d+ (?:script \d+ )?aborted", out,
                                                  re.MULTILINE)),
                "max_latency_s": int(found.get("max_us", 0)) / 1e6}
    out = docker("exec", "-e", f"LOAD_PASSWORD={password}", prefix() + "db1", "python3", "-c", MARIADB_LOOP,
                 str(clients), str(seconds)).stdout
    found = dict(re.findall(r"(\w+)=(\d+)", out))
    return {"engine": engine, "clients": clients, "seconds": seconds, "rc": 0,
            "processed": int(found.get("processed", 0)), "failed": int(found.get("failed", 0)),
            "aborted_clients": 0, "max_latency_s": int(found.get("max_us", 0)) / 1e6}


@lab.command("load")
@click.option("--engine", type=click.Choice(["postgresql", "mariadb"]), default="postgresql", show_default=True,
              help="postgresql: pgbench through pgbouncer on pg1; mariadb: an insert loop on db1.")
@click.option("--clients", type=click.IntRange(1, 200), default=16, show_default=True)
@click.option("--seconds", type=click.IntRange(1, 600), default=30, show_default=True)
@click.option("--connect-each", is_flag=True, help="postgresql: a new connection per transaction (pgbench -C).")
def lab_load(engine: str, clients: int, seconds: int, connect_each: bool) -> None:
    """Bounded database load as the app's role (for tests and benchmarks); prints what it saw as JSON."""
    click.echo(json.dumps(load(engine, clients, seconds, connect_each), indent=2))


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
