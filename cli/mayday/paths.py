"""Where things live: the project (playbooks, roles, inventories) and the state directory."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
LAB_DIR = PACKAGE_DIR / "lab"


def project_root() -> Path:
    """The checkout holding playbooks/ and ansible.cfg (MAYDAY_HOME overrides)."""
    env = os.environ.get("MAYDAY_HOME")
    root = Path(env) if env else PACKAGE_DIR.parent.parent
    if not (root / "playbooks").is_dir():
        raise FileNotFoundError(f"no playbooks/ under {root}: set MAYDAY_HOME to the mayday checkout")
    return root


def state_dir() -> Path:
    """Incident records, run artifacts and locks: MAYDAY_STATE_DIR, else .mayday in the checkout.

    One place whatever the working directory, so a run from inside playbooks/, the CLI and AWX
    leave their records side by side and see each other's locks.
    """
    env = os.environ.get("MAYDAY_STATE_DIR")
    if env:
        return Path(env).resolve()
    try:
        return project_root() / ".mayday"
    except FileNotFoundError:
        return (Path.cwd() / ".mayday").resolve()
