"""Decisions playbooks/drill.yml takes between its steps (through the action mayday_drill), kept here so
they are plain, tested Python."""

from __future__ import annotations

from typing import Any


def involved(kind: str, hosts: dict[str, Any], controller_host: str) -> list[str]:
    """The hosts a step of the drill runs on, in order: the one its controller steps run on, the probes'
    and the fault's (a restore test: its databases). The play ends at once for every other host instead
    of skipping each task there."""
    found = [controller_host] if controller_host else []
    for host in [*hosts.get("probes", {}), *hosts.get("fault", []), *(hosts.get("all", []) if kind == "restore_test"
                                                                       else [])]:
        if host not in found:
            found.append(host)
    return found


def cleanup_due(cleanup: dict[str, Any], scenario_outcome: str) -> bool:
    """The drill's cleanup scenario runs when it has one and its scenario ran and did not refuse (a refused
    scenario changed nothing, so there is nothing to undo)."""
    return bool(cleanup.get("scenario")) and scenario_outcome not in ("", "REFUSED")
