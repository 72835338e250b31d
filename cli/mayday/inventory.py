"""Reads an inventory before a run, so bad input is refused before any host is touched."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from mayday.errors import BadInput
from mayday.paths import project_root
from mayday.rules import RELEASE_ID  # noqa: F401  (the lab's deploy command checks ids with it)


@dataclass
class Inventory:
    path: Path
    hosts: list[str]
    groups: dict[str, list[str]]
    environment: str

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    def check_limit(self, limit: str | None) -> None:
        if not limit:
            return
        known = set(self.hosts) | set(self.groups)
        for item in re.split(r"[,:]", limit):
            name = item.lstrip("!&")
            if name and "*" not in name and name not in known:
                raise BadInput(f"--limit names unknown host or group {name!r}; valid: {', '.join(sorted(known))}")


def known_inventories() -> list[str]:
    return sorted(p.name for p in (project_root() / "inventories").iterdir() if p.is_dir())


def resolve(name_or_path: str | None) -> Path:
    root = project_root()
    if not name_or_path:
        return root / "inventories" / "lab"
    path = Path(name_or_path)
    if path.exists():
        return path
    if (root / "inventories" / name_or_path).exists():
        return root / "inventories" / name_or_path
    raise BadInput(f"inventory {name_or_path!r} not found; valid: a path, or one of {', '.join(known_inventories())}")


def _yaml_files(path: Path) -> list[Path]:
    base = path if path.is_dir() else path.parent
    files = [path] if path.is_file() else sorted(path.glob("*.y*ml"))
    gv = base / "group_vars"
    files += [gv / "all.yml", gv / "all.yaml", *sorted((gv / "all").glob("*.y*ml"))]
    return [f for f in files if f.is_file()]


def environment_of(path: Path) -> str:
    """mayday_environment from the inventory's own files, without loading the inventory (fast).

    The playbooks check it again (preflight role), so this only decides whether to ask.
    """
    found = "unknown"  # the last file wins, as in Ansible (group_vars/all/ files in lexical order)
    for file in _yaml_files(path):
        try:
            doc = yaml.safe_load(file.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(doc, dict):
            continue
        for candidate in (doc, (doc.get("all") or {}).get("vars") or {}):
            if isinstance(candidate, dict) and "mayday_environment" in candidate:
                found = str(candidate["mayday_environment"])
    return found


def load(path: Path) -> Inventory:
    tool = Path(sys.executable).parent / "ansible-inventory"
    out = subprocess.run(
        [str(tool), "-i", str(path), "--list", "--export"],
        capture_output=True, text=True, check=False,
        env={"ANSIBLE_CONFIG": str(project_root() / "ansible.cfg"), "PATH": str(tool.parent) + ":/usr/bin:/bin"},
    )
    if out.returncode != 0:
        raise BadInput(f"inventory {path} cannot be read: {out.stderr.strip().splitlines()[-1:]}")
    data = json.loads(out.stdout)
    groups: dict[str, list[str]] = {}

    def walk(group: str) -> list[str]:
        entry = data.get(group) or {}
        members = list(entry.get("hosts") or [])
        for child in entry.get("children") or []:
            members += walk(child)
        groups[group] = sorted(set(members))
        return members

    walk("all")
    all_vars = (data.get("all") or {}).get("vars") or {}
    environment = str(all_vars.get("mayday_environment", "unknown"))
    return Inventory(path, groups.get("all", []), groups, environment)
