"""Run history from the run records the timeline callback writes."""

from __future__ import annotations

import json
from typing import Any

from mayday.paths import state_dir


def load_runs() -> list[dict[str, Any]]:
    runs = []
    for record in (state_dir() / "runs").glob("*/mayday-run.json"):
        try:
            runs.append(json.loads(record.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(runs, key=lambda r: r.get("started") or "")
