"""Controller helpers shared by playbooks/drill.yml (action mayday_drill) and `mayday drill run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from mayday.drills import data_loss
from mayday.outcomes import EXIT_CODES
from mayday.paths import PACKAGE_DIR
from mayday.scenarios import SCENARIOS


def refusal(environment: str, allowed: tuple[str, ...]) -> str:
    """Why a drill may not run on this inventory, or '' when it may."""
    if environment in allowed:
        return ""
    return (f"drills only run on inventories declared {' or '.join(allowed)} (mayday_environment); "
            f"this one is {environment!r}")


def hosts_of(pattern: str, groups: dict[str, list[str]]) -> list[str]:
    """Hosts named by a simple pattern: groups or hosts joined with ':' or ','; unknown names match nothing."""
    found: list[str] = []
    everyone = set(groups.get("all") or [])
    for name in [p.strip() for p in pattern.replace(",", ":").split(":") if p.strip()]:
        members = groups.get(name) or ([name] if name in everyone else [])
        found += [h for h in members if h not in found]
    return found


def scenario_argv(name: str, params: dict[str, Any], inventory: str) -> list[str]:
    """`mayday <group> <command> [ARG] --opt value ... -i INVENTORY --yes --json` for a scenario entry."""
    scenario = SCENARIOS[name]
    argv = [sys.executable, "-m", "mayday.cli", *([scenario.group] if scenario.group else [])]
    if scenario.command or scenario.group != name:  # `mayday lockdown` is the group itself
        argv.append(scenario.command or name)
    for param in scenario.params:
        if param.name not in params:
            continue
        value = params[param.name]
        if param.positional:
            argv.append(str(value))
        elif param.is_flag:
            argv += [f"--{param.name.replace('_', '-')}"] if value in (True, "true", "yes") else []
        else:
            argv += [f"--{param.name.replace('_', '-')}", str(value)]
    return [*argv, *(["-i", inventory] if inventory else []), "--yes", "--json"]


def run_scenario(name: str, params: dict[str, Any], inventory: str, timeout_s: float) -> dict[str, Any]:
    """Runs the scenario the way an operator would, and returns its outcome, timing and incident."""
    argv = scenario_argv(name, params, inventory)
    env = {k: v for k, v in os.environ.items() if k not in ("MAYDAY_RUN_ID", "ANSIBLE_CALLBACK_PLUGINS")}
    env["PYTHONPATH"] = str(PACKAGE_DIR.parent) + os.pathsep + env.get("PYTHONPATH", "")
    started = time.time()
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env, check=False,
                             stdin=subprocess.DEVNULL)
        rc, stdout = out.returncode, out.stdout
    except subprocess.TimeoutExpired:
        rc, stdout = -1, ""
    doc: dict[str, Any] = {}
    try:
        doc = json.loads(stdout[stdout.index("{"):]) if "{" in stdout else {}
    except ValueError:
        doc = {}
    report = doc.get("report") or {}
    outcome = doc.get("outcome") or report.get("outcome") or ("TIMEOUT" if rc == -1 else "ERROR")
    shown = [a for a in argv[2:] if a != "--json"]
    return {"scenario": name, "command": ["mayday", *shown[1:]], "rc": rc, "outcome": outcome,
            "ok": EXIT_CODES.get(outcome, 1) == 0 and rc == 0,
            "incident": doc.get("incident") or report.get("incident"),
            "started_at": started, "elapsed_s": round(time.time() - started, 2),
            # A restore's backups, host -> their time: the drill's data loss (RPO) is measured from them.
            **({"recovery_points": points} if (points := data_loss.recovery_points_of(doc)) else {})}
