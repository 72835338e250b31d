"""Network isolation (roles/network_isolate) against the real lab, judged by host state: web1's nft
ruleset, its lease, and what an outsider container on the lab network (IPv4 and IPv6) still reaches.

The management path is real network traffic: apply runs over inventories/lab-ssh (SSH from this
machine, the lab network's gateway), and the self-test connects from here to web1's port 22. Runs
through the docker connection (inventories/lab) are used where only the host state matters, being faster.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import (
    ANSIBLE_PLAYBOOK,
    LAB_NAME,
    PREFIX,
    ROOT,
    base_env,
    dexec,
    docker,
    lab_inventory_args,
    wait_booted,
)

HOST = "web1"
PLAYBOOK = "tests/integration/playbooks/network-isolate.yml"
OUTSIDER = PREFIX + "outsider"
TABLE = "inet mayday_isolate"
LEASES = "/var/lib/mayday/leases"
PERSIST = "/etc/nftables.d/mayday-isolate.nft"
SSH = ["-i", str(ROOT / "inventories" / "lab-ssh")]
DOCKER_INV = ["-i", str(ROOT / "inventories" / "lab"), *lab_inventory_args()]
# Undo whatever a failed test left, without the code under test.
FORCE_CLEAN = f"""
nft 'add table {TABLE}; delete table {TABLE}'
systemctl disable mayday-isolate.service >/dev/null 2>&1
rm -f {PERSIST} /etc/systemd/system/mayday-isolate.service /var/lib/mayday/isolate/state.json
for f in {LEASES}/isolate-*.json; do [ -e "$f" ] || continue; id=$(basename "$f" .json)
  systemctl stop "mayday-lease-$id.timer" >/dev/null 2>&1; rm -f "$f"; done
true
"""
PROBE = """
probe() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; rc=$?
  case $rc in 0) s=open;; 124) s=silent;; *) s=refused;; esac; echo "$3 $2 $s"; }
probe "$W4" 22 v4 & probe "$W4" 80 v4 & probe "$W6" 22 v6 & probe "$W6" 80 v6 & wait
"""


def addresses(name: str) -> tuple[str, str]:
    fmt = (f'{{{{with index .NetworkSettings.Networks "{LAB_NAME}"}}}}'
           "{{.IPAddress}} {{.GlobalIPv6Address}}{{end}}")
    fields = docker("inspect", "-f", fmt, name).stdout.split()
    assert len(fields) == 2, (f"{name} has no IPv6 address on {LAB_NAME}: recreate the lab network "
                              f"(mayday lab down && mayday lab up)")
    return fields[0], fields[1]


def outsider_sees() -> dict[str, str]:
    """What the outsider gets from web1 on ports 22 and 80 over each family: open, refused (the host
    answered with a reset) or silent (dropped)."""
    w4, w6 = addresses(PREFIX + HOST)
    out = docker("exec", "-i", "-e", f"W4={w4}", "-e", f"W6={w6}", OUTSIDER, "bash", input_text=PROBE).stdout
    return {f"{fam}:{port}": state for fam, port, state in (line.split() for line in out.splitlines())}


def ruleset() -> str:
    return dexec(HOST, "nft -s list ruleset 2>/dev/null")


def table_live() -> bool:
    return docker("exec", PREFIX + HOST, "nft", "list", "table", *TABLE.split(), check=False).returncode == 0


def leases() -> list[dict[str, Any]]:
    out = dexec(HOST, f"for f in {LEASES}/isolate-*.json; do [ -e \"$f\" ] && tr -d '\\n' < \"$f\" && echo; done; true")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def persisted() -> bool:
    return dexec(HOST, f"test -e {PERSIST} && echo yes || systemctl is-enabled mayday-isolate.service 2>/dev/null",
                 check=False).strip() in ("yes", "enabled")


def isolate(tmp_path: Path, *args: str, inventory: list[str] = SSH) -> tuple[int, dict[str, Any]]:
    """The role through the plain test playbook; returns the exit code and the role's registered result."""
    result = tmp_path / f"result-{time.monotonic_ns()}.json"
    out = subprocess.run([ANSIBLE_PLAYBOOK, str(ROOT / PLAYBOOK), *inventory, "-e", "mayday_lease_min=1s",
                          "-e", f"isolate_result_file={result}", *args], cwd=ROOT, env=base_env(),
                         capture_output=True, text=True, check=False, timeout=180)
    doc = json.loads(result.read_text()) if result.exists() else {"log": out.stdout[-3000:]}
    return out.returncode, doc


@pytest.fixture(scope="module")
def outsider(lab_up: None) -> Generator[None, None, None]:
    """A container on the lab network that is in no allowlist; web1 as the lab left it, never isolated."""
    nft = docker("exec", PREFIX + HOST, "nft", "list", "tables", check=False)
    assert nft.returncode == 0, f"nft does not work in {PREFIX}{HOST} (image without nftables or no NET_ADMIN: " \
                                f"mayday lab down && mayday lab up): {nft.stderr}"
    docker("rm", "-f", OUTSIDER, check=False)
    docker("run", "-d", "--name", OUTSIDER, "--network", LAB_NAME, "--entrypoint", "sleep", "mayday-lab-web:latest",
           "900")
    try:
        yield
    finally:
        docker("rm", "-f", OUTSIDER, check=False)
        dexec(HOST, FORCE_CLEAN, check=False)


@pytest.fixture
def clean(outsider: None) -> Generator[str, None, None]:
    """web1 without isolation before and after; yields its ruleset before the test."""
    dexec(HOST, FORCE_CLEAN)
    before = ruleset()
    seen = outsider_sees()
    assert "silent" not in seen.values(), f"web1 is not reachable from the outsider before isolation: {seen}"
    yield before
    dexec(HOST, FORCE_CLEAN, check=False)


@pytest.mark.parametrize(("extra", "why"), [
    ({"mayday_management_allowlist": []}, "empty allowlist"),
    ({"mayday_management_allowlist": ["192.0.2.0/24"]}, "allowlist without the controller"),
    ({"isolate_for": "soon"}, "lease does not parse"),
    ({"isolate_for": "5h"}, "lease over mayday_lease_max (4h)"),
])
def test_bad_input_is_refused_and_changes_nothing(clean: str, tmp_path: Path, extra: dict[str, Any],
                                                  why: str) -> None:
    rc, result = isolate(tmp_path, "-e", json.dumps(extra), inventory=DOCKER_INV)
    assert rc == 2 and result.get("failed") and result.get("refused"), f"{why}: {result}"
    assert ruleset() == clean and not table_live() and not leases() and not persisted(), why


def test_isolation_holds_on_both_families_keeps_the_controller_and_lift_restores(clean: str, tmp_path: Path) -> None:
    rc, result = isolate(tmp_path, "-e", "isolate_for=2m")
    assert rc == 0, result
    seen = outsider_sees()
    assert set(seen.values()) == {"silent"} and len(seen) == 4, f"the outsider still reaches web1: {seen}"
    # The controller: a fresh TCP connection to sshd over IPv4, and an SSH round trip (status).
    w4, _ = addresses(PREFIX + HOST)
    with socket.create_connection((w4, 22), timeout=5) as conn:
        assert conn.recv(4).startswith(b"SSH-")
    rc, status = isolate(tmp_path, "-e", "isolate_op=status")
    assert rc == 0 and status["report"]["before"]["table_live"], status
    (lease,) = leases()
    assert lease["expires_epoch"] - time.time() > 60, f"the lease was not held for the full 2m: {lease}"

    # A second lockdown while one is in force: refused, the first one untouched.
    rules_now = ruleset()
    rc, second = isolate(tmp_path, "-e", "isolate_for=2m")
    assert rc == 2 and second.get("refused"), second
    assert ruleset() == rules_now and leases() == [lease]

    rc, lifted = isolate(tmp_path, "-e", "isolate_op=lift")
    assert rc == 0, lifted
    assert ruleset() == clean, "lift did not restore the ruleset byte for byte"
    assert not leases() and not persisted()
    assert "silent" not in outsider_sees().values()


def test_controller_killed_table_gone_within_lease(clean: str, tmp_path: Path) -> None:
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen([ANSIBLE_PLAYBOOK, str(ROOT / PLAYBOOK), *SSH, "-e", "mayday_lease_min=1s",
                                 "-e", "isolate_for=12s"], cwd=ROOT, env=base_env(), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not table_live():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-2000:]
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (lease,) = leases()
    assert lease["expires_epoch"] - time.time() <= 13
    while table_live():
        assert time.time() < lease["expires_epoch"] + 5, "the table outlived its lease by more than 5 s"
        time.sleep(0.3)
    assert ruleset() == clean and not leases() and not persisted()


def test_restart_with_a_lease_running_does_not_make_it_permanent(clean: str, tmp_path: Path) -> None:
    rc, result = isolate(tmp_path, "-e", "isolate_for=15s", inventory=DOCKER_INV)
    assert rc == 0 and table_live(), result
    (lease,) = leases()
    docker("restart", "-t", "5", PREFIX + HOST)
    wait_booted([HOST])
    while time.time() < lease["expires_epoch"] + 5:
        time.sleep(0.5)
    assert not table_live() and not persisted() and not leases()
    assert "silent" not in outsider_sees().values()


def test_confirmed_isolation_survives_a_restart_until_lift(clean: str, tmp_path: Path) -> None:
    rc, result = isolate(tmp_path, "-e", "isolate_for=15s", inventory=DOCKER_INV)
    assert rc == 0, result
    rc, confirmed = isolate(tmp_path, "-e", "isolate_op=confirm", inventory=DOCKER_INV)
    assert rc == 0 and not leases() and persisted(), confirmed
    docker("restart", "-t", "5", PREFIX + HOST)
    wait_booted([HOST])
    assert table_live() and set(outsider_sees().values()) == {"silent"}
    rc, lifted = isolate(tmp_path, "-e", "isolate_op=lift", inventory=DOCKER_INV)
    assert rc == 0, lifted
    assert not table_live() and not persisted() and not leases()
    assert "silent" not in outsider_sees().values()


def test_failed_self_test_reverts(clean: str, tmp_path: Path) -> None:
    # The host is told the controller is 192.0.2.10: the allowlist covers that address, not this
    # machine's, so the self-test from here cannot connect.
    override = {"mayday_controller_address": "192.0.2.10", "mayday_management_allowlist": ["192.0.2.0/24"]}
    rc, result = isolate(tmp_path, "-e", json.dumps(override), "-e", "isolate_for=2m", inventory=DOCKER_INV)
    assert rc == 2 and result.get("failed") and not result.get("refused") and result.get("reverted"), result
    assert ruleset() == clean and not leases() and not persisted()
