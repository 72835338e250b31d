"""The data a drill's recovery gave up: a restore puts back a backup, so what was written after that
backup is lost. The recovery point of each host is the time of the backup its restore used (read from
the scenario's report.json, `results.<host>.backup`); the drill's data loss (RPO) is the fault's
moment minus the oldest of them, checked against the drill's `sla.rpo`.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from pathlib import Path
from typing import Any

# Backup ids end with their UTC stamp: mariadb-app-20261126T071915Z (mayday_db_backups).
STAMP = re.compile(r"(\d{8}T\d{6}Z)$")


def backup_time(backup_id: Any) -> float | None:
    """Epoch of a backup id's stamp; None for anything that is not a backup id."""
    found = STAMP.search(str(backup_id or ""))
    if not found:
        return None
    try:
        return float(calendar.timegm(time.strptime(found.group(1), "%Y%m%dT%H%M%SZ")))
    except ValueError:
        return None


def recovery_points(report: dict[str, Any]) -> dict[str, float]:
    """host -> time of the backup its restore put back, from a scenario report's results."""
    results = report.get("results") if isinstance(report, dict) else None
    points = {}
    for host, result in (results or {}).items() if isinstance(results, dict) else ():
        at = backup_time((result or {}).get("backup")) if isinstance(result, dict) else None
        if at is not None:
            points[str(host)] = at
    return points


def recovery_points_of(cli_doc: dict[str, Any]) -> dict[str, float]:
    """The same, from what `mayday <scenario> --json` printed (its report.json beside report_md)."""
    report_md = cli_doc.get("report_md") if isinstance(cli_doc, dict) else None
    if not report_md:
        return {}
    try:
        return recovery_points(json.loads(Path(str(report_md)).with_name("report.json").read_text()))
    except (OSError, ValueError):
        return {}


def rpo_s(injected_at: float | None, points: dict[str, float]) -> float | None:
    """Seconds of writes lost: the fault's moment minus the oldest recovery point (None: no restore)."""
    if injected_at is None or not points:
        return None
    return max(0.0, injected_at - min(points.values()))
