#!/usr/bin/python
# Database backups and interruption-safe restores on the DB host (MariaDB, PostgreSQL).
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_db
short_description: Back up, list, prune and restore MariaDB and PostgreSQL databases safely
description:
  - C(backup) dumps the database (MariaDB single transaction, PostgreSQL custom format) with a
    manifest (id, time, engine, database, size, sha256, per-table row count and checksum).
  - C(list) returns the backups in I(backup_dir), oldest first, and (in C(report)) the regular backups,
    the safety dumps and the databases restores kept, each with its size and time. Read-only.
  - C(prune) keeps the newest I(retention) regular backups; safety backups are never pruned.
  - C(purge_recent) (MariaDB) saves the rows added in the last I(minutes) to a file in I(backup_dir),
    then deletes them with parameterized SQL, in one transaction.
  - C(restore) first refuses, before anything changes, whatever would stop it later (the backup,
    derived name lengths, engine-specific blockers, disk for the shadow and the safety dump plus
    I(disk_headroom_pct), another restore running). Then it restores into a shadow database,
    verifies it against the manifest, stops writes, swaps it in atomically, resumes writes and
    verifies the live database. The replaced database is kept as C(<db>__mayday_pre_<UTC stamp>);
    after the swap a low-priority, verified safety dump of it is taken (a failure there is a
    warning, since the kept database is the pre-restore copy), then I(restore_retention) applies.
  - Files it writes are 0600, the backup directory 0700 (a looser one is tightened).
  - Check mode only reads; C(restore) still verifies the backup and lists what a real run would do.
  - A failure is C(refused) only when nothing on the host was changed.
options:
  mode: {type: str, choices: [backup, list, prune, restore, purge_recent], default: list, description: What to do.}
  kind:
    type: str
    choices: [backup, emergency]
    default: backup
    description: >-
      backup: a regular backup (C(latest), retention). emergency: a copy of the current state during an incident
      (id ending C(-emergency)), verified after it is written (sha256, readable), never C(latest), never pruned.
  tables: {type: list, elements: str, default: [], description: "purge_recent: tables holding webhook rows."}
  time_column: {type: str, default: created_at, description: "purge_recent: the column saying when a row was added."}
  minutes: {type: int, default: 60, description: "purge_recent: remove rows added in the last N minutes (1 to 10080)."}
  engine: {type: str, choices: [mariadb, postgresql], required: true, description: Database engine.}
  database: {type: str, required: true, description: Database name.}
  backup_dir: {type: path, default: /var/backups/mayday, description: Where backups and manifests live.}
  backup: {type: str, default: latest, description: Backup id to restore, or latest.}
  retention: {type: int, default: 7, description: Regular backups kept by prune (at least 1).}
  restore_retention:
    type: dict
    default: {keep: 2, min_age_minutes: 60}
    description: >-
      restore: kept pre-restore databases and safety dumps of this database to keep (the newest C(keep),
      at least 1) and never remove one younger than C(min_age_minutes); applied only after a successful
      restore (safety dumps only when this run's own one was verified).
  disk_headroom_pct:
    type: int
    default: 20
    description: "restore: the shadow and the safety dump need the database's size plus this many percent of free disk."
  timeouts:
    type: dict
    default: {}
    description: "Bounded waits in seconds: any of lock, pause, dump, restore (defaults 10, 30, 7200, 7200)."

  pgbouncer: {type: dict, description: "PostgreSQL only: {port, admin_user} of pgbouncer, paused during the swap."}
  fault_points:
    type: bool
    default: false
    description: >-
      restore, tests only: stop at the phase boundary named in the backup directory's C(.mayday-fault-point)
      file (see mayday_db_backups). Off, such a file is ignored.
  host_label: {type: str, description: "Name of the host in the summary (inventory_hostname); default: its hostname."}
author: mayday
"""

RETURN = r"""
changed: {description: Whether anything on the host changed., type: bool, returned: always}
refused: {description: "Failed before changing anything on the host (false on success).", type: bool, returned: always}
ok: {description: The mode completed., type: bool, returned: always}
msg: {description: What happened, or why it failed., type: str, returned: always}
summary: {description: One human-readable line naming the host., type: str, returned: always}
report:
  description: >-
    The mode's report (restore: backup, safety_backup, previous_kept_as, rows_restored, tables, warnings,
    retention_removed, changes; dry run: would; list: items (kind backup, safety or kept-db; name, time, size,
    size_human), the same split as backups, safety_backups, kept_databases, and as text lines;
    purge_recent: since, until, tables, files, deleted; on failure: error, changes).
  type: dict
  returned: always
manifest: {description: The backup written (backup)., type: dict, returned: backup}
backups: {description: Manifests, oldest first (list)., type: list, returned: list}
removed: {description: Backup ids removed (prune; in check mode, the ids that would be)., type: list, returned: prune}
restore: {description: Same as report (restore)., type: dict, returned: restore}
purge: {description: Same as report (purge_recent)., type: dict, returned: purge_recent}
steps: {description: Every step with start time, duration and result., type: list, returned: always}
"""

import os
import socket
import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.mayday_db_backups import backup, inventory, list_backups, prune, restore, verify_backup
from ansible.module_utils.mayday_db_common import timeouts
from ansible.module_utils.mayday_db_engines import DbError
from ansible.module_utils.mayday_db_webhook import check_minutes, purge_recent
from ansible.module_utils.mayday_steps import Steps


def do_list(p, host, steps, changes, check_mode):
    backups = list_backups(p["backup_dir"], p["engine"], p["database"])
    ids = [m["id"] for m in backups]
    msg = f"{len(ids)} backups of {p['engine']} database {p['database']} in {p['backup_dir']}"
    report = {"count": len(ids), "ids": ids, "newest": ids[-1] if ids else None, **inventory(p)}
    msg += (f", {len(report['safety_backups'])} of them safety dumps; "
            f"{len(report['kept_databases'])} kept pre-restore databases")
    return {"changed": False, "msg": msg, "report": report, "backups": backups,
            "summary": f"{host}: {msg}" + (f"; newest {ids[-1]}" if ids else "")}


def do_backup(p, host, steps, changes, check_mode):
    if check_mode:
        return {"changed": True, "msg": f"check mode: no {p['kind']} backup taken", "report": {"dry_run": True},
                "summary": f"{host}: dry run, no {p['kind']} backup taken"}
    what = "backup" if p["kind"] == "backup" else "emergency backup"
    manifest = steps.run(what, backup, p, p["kind"], changes)
    steps.items[-1]["detail"] = manifest["id"]
    if p["kind"] == "emergency":  # the evidence of an incident: proven readable before anyone relies on it
        steps.run("verify the backup (sha256, readable)", verify_backup, p, manifest)
    rows = sum(t["rows"] for t in manifest["tables"].values())
    msg = (f"{what} {manifest['id']} taken{' and verified' if p['kind'] == 'emergency' else ''}: {rows} rows in "
           f"{len(manifest['tables'])} tables, {manifest['size']} bytes")
    return {"changed": True, "msg": msg, "manifest": manifest, "summary": f"{host}: {msg}",
            "report": {**{k: manifest[k] for k in ("id", "kind", "time", "file", "size", "sha256")},
                       **({"verified": True} if p["kind"] == "emergency" else {})}}


def do_prune(p, host, steps, changes, check_mode):
    removed = prune(p, check_mode=check_mode, changes=changes)
    verb = "would remove" if check_mode else "removed"
    msg = f"retention {max(1, p['retention'])}: {verb} {len(removed)} old backups" + (
        f" ({', '.join(removed)})" if removed else "")
    return {"changed": bool(removed) and not check_mode, "msg": msg, "removed": removed,
            "summary": f"{host}: {msg}", "report": {"removed": removed, "dry_run": check_mode}}


def do_purge(p, host, steps, changes, check_mode):
    purged = purge_recent(p, steps, changes, check_mode=check_mode)
    found = sum(purged["tables"].values())
    counts = ", ".join(f"{t}: {n}" for t, n in purged["tables"].items())
    if check_mode:
        msg = (f"dry run: {found} webhook rows added since {purged['since']} would be removed ({counts}); "
               "nothing changed")
    elif purged["deleted"]:
        msg = (f"{purged['deleted']} webhook rows added since {purged['since']} removed ({counts}), "
               f"saved first to {', '.join(purged['files'])}")
    else:
        msg = f"no webhook rows added since {purged['since']} ({counts}); nothing removed"
    # In check mode "changed" says what a real run would do, as Ansible's own modules do.
    changed = found > 0 if check_mode else purged["deleted"] > 0
    return {"changed": changed, "msg": msg, "purge": purged, "report": purged, "summary": f"{host}: {msg}"}


def do_restore(p, host, steps, changes, check_mode):
    report = restore(p, steps, changes, check_mode=check_mode)
    changed = report.pop("changed")
    if report.get("already_restored"):
        msg = (f"the live database is already the copy restored from {report['backup']} at "
               f"{report['restored_at']}; nothing to do")
    elif report.get("dry_run"):
        msg = f"backup {report['backup']} verified; dry run, nothing restored"
    else:
        msg = (f"{report['rows_restored']} rows in {report['tables']} tables restored from {report['backup']} "
               f"(the replaced database is kept as {report['previous_kept_as']}; safety dump "
               f"{report['safety_backup'] or 'not taken'})")
        if report.get("warnings"):
            msg += "; warning: " + "; ".join(report["warnings"])
    return {"changed": changed, "msg": msg, "restore": report, "report": report, "summary": f"{host}: {msg}"}


MODES = {"list": do_list, "backup": do_backup, "prune": do_prune, "purge_recent": do_purge, "restore": do_restore}


def failure(p, host, exc, changes):
    """Result keys for a failure: a refusal only when nothing on the host changed."""
    msg = str(exc) if isinstance(exc, DbError) else f"{type(exc).__name__}: {exc}"
    what = p["mode"].replace("_", " ")
    if not changes:
        summary = f"{host}: {what} refused, nothing changed: {msg}"
    else:
        summary = f"{host}: {what} failed after changing the host ({'; '.join(changes)}): {msg}"
        if p["mode"] == "restore":
            summary += ("; the live database was swapped" if getattr(exc, "live_touched", False)
                        else "; the live database is untouched")
    return {"changed": bool(changes), "refused": not changes, "ok": False, "msg": msg, "summary": summary,
            "report": {"error": msg, "changes": list(changes)}}


def main():
    module = AnsibleModule(
        argument_spec={
            "mode": {"type": "str", "default": "list",
                     "choices": ["backup", "list", "prune", "restore", "purge_recent"]},
            "kind": {"type": "str", "default": "backup", "choices": ["backup", "emergency"]},
            "engine": {"type": "str", "choices": ["mariadb", "postgresql"], "required": True},
            "database": {"type": "str", "required": True},
            "backup_dir": {"type": "path", "default": "/var/backups/mayday"},
            "backup": {"type": "str", "default": "latest"},
            "retention": {"type": "int", "default": 7},
            "restore_retention": {"type": "dict", "default": {"keep": 2, "min_age_minutes": 60}},
            "disk_headroom_pct": {"type": "int", "default": 20},
            "timeouts": {"type": "dict", "default": {}},
            "pgbouncer": {"type": "dict"},
            "fault_points": {"type": "bool", "default": False},
            "tables": {"type": "list", "elements": "str", "default": []},
            "time_column": {"type": "str", "default": "created_at"},
            "minutes": {"type": "int", "default": 60},
            "host_label": {"type": "str"},
        },
        supports_check_mode=True,
    )
    p = module.params
    host = p["host_label"] or socket.gethostname()
    steps = Steps()
    changes: list[str] = []  # what this run did to the host, in order: empty means a failure is a refusal
    result: dict
    trace = None
    os.umask(0o077)  # whatever this run creates (dumps, markers, saved rows) only root reads
    try:
        timeouts(p)  # unknown keys refuse before anything runs
        if p["mode"] == "purge_recent":
            check_minutes(p["minutes"])  # the playbook checks too; refuse here before connecting
        result = MODES[p["mode"]](p, host, steps, changes, module.check_mode)
    except Exception as exc:  # every failure gets the keys the verdict reads, with what changed
        result = failure(p, host, exc, changes)
        trace = None if isinstance(exc, DbError) else traceback.format_exc()
    for step in steps.items:
        if isinstance(step["detail"], dict):  # manifests: keep the timeline readable
            step["detail"] = step["detail"].get("id", "")
    if result.get("ok") is False:
        module.fail_json(steps=steps.items, **({"exception": trace} if trace else {}), **result)
    module.exit_json(ok=True, refused=False, steps=steps.items, **result)


if __name__ == "__main__":
    main()
