#!/usr/bin/python
# Data-corruption assessment on the DB host: the engine's integrity checks and every table against
# the last good backup's manifest. Read-only in every mode.
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_db_integrity
short_description: Check a database's integrity and hold every table against the last good backup
description:
  - C(preflight) refuses, before anything changes, what would stop a corruption run later - the
    database missing, the reference backup unknown or corrupt (sha256, readable), not enough disk
    for the emergency backup, and with I(restore) the restore's own engine pre-flight and disk for
    its shadow and safety dump.
  - C(assess) runs the engine's checks - PostgreSQL C(amcheck) (C(verify_heapam) on every table,
    C(bt_index_check) with C(heapallindexed) on every btree index) where the extension is installed
    in the database (nothing is installed; otherwise a note says so), MariaDB C(CHECK TABLE) on every
    table - and compares every table with the reference backup's manifest - the state judged is the
    emergency backup I(current) (taken while writes were stopped) or, without one, the live database.
    Findings - a check's error, a table gone, a table that lost more than I(max_row_loss_pct) percent
    of its rows. Rows added or changed and new tables are reported, not findings (normal writes).
  - C(verify) (after a restore) - the checks pass and the live database equals the backup - every
    table's rows and checksum and every definition; otherwise it fails.
  - C(report) reads what the run leaves on the host (the database's read-only mode, its read-only lease)
    and returns the host's result for the scenario's verdict from I(phases), the results of the run's
    phases (freeze, backup, assess, renew, restore, verify, release). Corruption found without
    I(restore) is a failure - the database stays read-only under its lease and a person decides.
  - Nothing is written in any mode; check mode runs the same.
options:
  mode: {type: str, choices: [preflight, assess, verify, report], required: true, description: What to do.}
  phases: {type: dict, default: {}, description: "report - each phase's registered result, by phase name."}
  engine: {type: str, choices: [mariadb, postgresql], required: true, description: Database engine.}
  database: {type: str, required: true, description: Database name.}
  backup_dir: {type: path, default: /var/backups/mayday, description: Where backups and manifests live.}
  backup: {type: str, default: latest, description: The last good backup - latest (regular) or an id.}
  current: {type: str, default: "", description: "assess - the emergency backup holding the state to judge."}
  restore: {type: bool, default: false, description: "preflight, report - a restore was asked for."}
  max_row_loss_pct:
    type: int
    default: 10
    description: "assess - a table that lost more than this share (percent) of its rows is a finding."
  disk_headroom_pct: {type: int, default: 20, description: "preflight - free disk beyond the database's size, percent."}
  timeouts:
    type: dict
    default: {}
    description: "Bounded waits in seconds - lock, pause, dump (a check's longest), restore."
  host_label: {type: str, description: "Name of the host in the summary (inventory_hostname)."}
author: mayday
"""

RETURN = r"""
changed:
  description: "False - nothing is written (report - whether the run's phases changed the host)."
  type: bool
  returned: always
refused: {description: The check failed before anything changed (always true on failure)., type: bool, returned: always}
findings: {description: "One line per finding, naming its table.", type: list, returned: assess, verify}
report:
  description: >-
    preflight - reference (id, time, tables, rows), disk, notes. assess and verify - reference, integrity
    (tool, available, checked, problems per table, notes), judged, tables (rows_backup, rows_now, data,
    finding), findings.
  type: dict
  returned: always
summary: {description: One line naming the host., type: str, returned: always}
steps: {description: Every step with start time, duration and result., type: list, returned: always}
"""

import socket
import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.mayday_db_common import timeouts
from ansible.module_utils.mayday_db_engines import DbError
from ansible.module_utils.mayday_db_integrity import (
    MAX_ROW_LOSS_PCT,
    after_state,
    assess,
    outcome,
    plural,
    preflight,
    verify,
)
from ansible.module_utils.mayday_lease import Leases
from ansible.module_utils.mayday_steps import Steps


def describe(mode, report, db):
    findings = report.get("findings") or []
    ref = report.get("reference")
    against = f"backup {ref['id']}" if ref else "no backup"
    checks = report.get("integrity") or {}
    tool = f"{checks.get('tool')} on {checks.get('checked', 0)} relations" if checks.get("available") else (
        f"{checks.get('tool')} not available")
    if mode == "preflight":
        return f"{db}: ready; reference {against}"
    if mode == "verify":
        if findings:
            return f"{db} does NOT match {against}: " + "; ".join(findings[:5])
        return f"{db} is consistent: {tool} clean, every table and definition equals {against}"
    if findings:
        return f"{plural(len(findings), 'finding')} in {db} ({tool}; against {against}): " + "; ".join(findings[:5])
    return f"no corruption found in {db} ({tool}; row counts against {against})"


def main():
    module = AnsibleModule(
        argument_spec={
            "mode": {"type": "str", "required": True, "choices": ["preflight", "assess", "verify", "report"]},
            "phases": {"type": "dict", "default": {}},
            "engine": {"type": "str", "choices": ["mariadb", "postgresql"], "required": True},
            "database": {"type": "str", "required": True},
            "backup_dir": {"type": "path", "default": "/var/backups/mayday"},
            "backup": {"type": "str", "default": "latest"},
            "current": {"type": "str", "default": ""},
            "restore": {"type": "bool", "default": False},
            "max_row_loss_pct": {"type": "int", "default": MAX_ROW_LOSS_PCT},
            "disk_headroom_pct": {"type": "int", "default": 20},
            "timeouts": {"type": "dict", "default": {}},
            "host_label": {"type": "str"},
        },
        supports_check_mode=True,
    )
    p = module.params
    host = p["host_label"] or socket.gethostname()
    mode = p["mode"]
    steps = Steps()
    trace = None
    try:
        timeouts(p)
        if not 0 <= p["max_row_loss_pct"] <= 100:
            raise DbError(f"max_row_loss_pct {p['max_row_loss_pct']} is out of range; valid: 0..100")
        if mode == "report":
            try:
                after = steps.run("read the database's mode and its lease", after_state, p, Leases())
            except Exception as exc:  # the result must still say what the phases did
                after = {"read_only": "unknown", "lease": None, "error": str(exc)}
            result = outcome(host, p["phases"], p["restore"], module.check_mode, after)
            (module.fail_json if result["failed"] else module.exit_json)(steps=steps.items, **result)
        report = {"preflight": preflight, "assess": assess, "verify": verify}[mode](p, steps)
        error = None
    except Exception as exc:  # every failure: nothing was written, so it is a refusal
        report, error = {}, str(exc) if isinstance(exc, DbError) else f"{type(exc).__name__}: {exc}"
        trace = None if isinstance(exc, DbError) else traceback.format_exc()
    for step in steps.items:
        if isinstance(step["detail"], dict | tuple | list):  # manifests and reports: keep the timeline readable
            step["detail"] = ""
    if error:
        what = {"preflight": "pre-flight", "assess": "assessment", "verify": "consistency check",
                "report": "reading the state after the run"}[mode]
        module.fail_json(msg=f"{host}: {what} failed: {error}", changed=False, refused=True, ok=False,
                         report={"error": error}, steps=steps.items, summary=f"{host}: {what} failed: {error}",
                         **({"exception": trace} if trace else {}))
    text = describe(mode, report, p["database"])
    result = {"changed": False, "refused": False, "report": report, "steps": steps.items,
              "findings": report.get("findings", []), "msg": f"{host}: {text}", "summary": f"{host}: {text}"}
    if mode == "verify" and report["findings"]:
        module.fail_json(ok=False, **result)
    module.exit_json(ok=True, **result)


if __name__ == "__main__":
    main()
