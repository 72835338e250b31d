#!/usr/bin/env python3
"""Inventory of the lab reached over SSH: inventories/lab's groups and hosts, at their addresses now.

The lab's containers (<MAYDAY_LAB_NAME, default mayday-lab>-<host>) get a new address on the lab's
Docker network whenever they are created or restarted, so the address is asked from Docker at every
run (`docker inspect`, read-only) instead of being written down. A container that is not running has
no address: its host stays in the inventory but ssh is given a proxy that fails at once, so the host
is reported unreachable and no traffic leaves the machine.

Connection variables are in group_vars/all/ssh.yml, everything else is the lab's (symlinks).

    inventories/lab-ssh/hosts.py --list | --host HOST
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

GROUPS = {"web": ["web1", "web2"], "db": ["db1"], "pg": ["pg1"]}
DOCKER = "/usr/bin/docker"
LAB_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,40}$")
UNREACHABLE = "-o ProxyCommand=false"


def lab_name() -> str:
    name = os.environ.get("MAYDAY_LAB_NAME") or "mayday-lab"
    if not LAB_NAME.match(name):
        sys.exit(f"MAYDAY_LAB_NAME={name!r} is not a lab name")
    return name


def addresses(name: str, hosts: list[str]) -> dict[str, str]:
    """{host: address on the lab network} for the running containers of the lab."""
    template = ('{{.Name}} {{.State.Running}} '
                f'{{{{with index .NetworkSettings.Networks "{name}"}}}}{{{{.IPAddress}}}}{{{{end}}}}')
    try:
        out = subprocess.run([DOCKER, "inspect", "-f", template, *(f"{name}-{h}" for h in hosts)],
                             capture_output=True, text=True, check=False, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] == "true":
            found[fields[0].lstrip("/").removeprefix(f"{name}-")] = fields[2]
    return found


def hostvars(name: str, hosts: list[str]) -> dict[str, dict[str, str]]:
    found = addresses(name, hosts)
    return {host: {"ansible_host": found[host]} if host in found
            else {"ansible_host": f"{name}-{host}", "ansible_ssh_extra_args": UNREACHABLE}
            for host in hosts}


def main(argv: list[str]) -> int:
    hosts = [h for members in GROUPS.values() for h in members]
    if argv[1:2] == ["--host"] and len(argv) == 3:
        print(json.dumps(hostvars(lab_name(), [argv[2]]).get(argv[2], {}) if argv[2] in hosts else {}))
        return 0
    if argv[1:] != ["--list"]:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    inventory: dict = {"all": {"children": sorted(GROUPS)}}
    inventory.update({group: {"hosts": members} for group, members in GROUPS.items()})
    inventory["_meta"] = {"hostvars": hostvars(lab_name(), hosts)}
    print(json.dumps(inventory, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
