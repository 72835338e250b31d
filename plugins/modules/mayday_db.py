#!/usr/bin/python
# Database backups and interruption-safe restores on the DB host (MariaDB, PostgreSQL).
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_db
short_description: Back up, list, prune and restore MariaDB and PostgreSQL databases safely
description:
  - C(backup) dumps the database (MariaDB single transaction, PostgreSQL custom format) with a
    manifest (id, time, engine, database, size, sha256, per-table row count and checksum).
  - C(list) returns the backups in I(backup_dir), oldest first.
  - C(prune) keeps the newest I(retention) regular backups; safety backups are never pruned.
  - C(purge_recent) (MariaDB) saves the rows added in the last I(minutes) to a file in I(backup_dir),
    then deletes them with parameterized SQL, in one transaction.
  - C(restore) verifies the backup, takes a safety backup of the live database, restores into a
    shadow database, verifies it against the manifest, stops writes, swaps it in atomically,
    resumes writes and verifies the live database. The replaced database is kept, renamed.
options:
  mode: {type: str, choices: [backup, list, prune, restore, purge_recent], default: list, description: What to do.}
  tables: {type: list, elements: str, default: [], description: "purge_recent: tables holding webhook rows."}
  time_column: {type: str, default: created_at, description: "purge_recent: the column saying when a row was added."}
  minutes: {type: int, default: 60, description: "purge_recent: remove rows added in the last N minutes."}
  engine: {type: str, choices: [mariadb, postgresql], required: true, description: Database engine.}
  database: {type: str, required: true, description: Database name.}
  backup_dir: {type: path, default: /var/backups/mayday, description: Where backups and manifests live.}
  backup: {type: str, default: latest, description: Backup id to restore, or latest.}
  retention: {type: int, default: 7, description: Regular backups kept by prune (at least 1).}
  pgbouncer: {type: dict, description: "PostgreSQL only: {port, admin_user} of pgbouncer, paused during the swap."}
author: mayday
"""

RETURN = r"""
manifest: {description: The backup written (backup)., type: dict, returned: backup}
backups: {description: Manifests, oldest first (list)., type: list, returned: list}
restore:
  description: Backup id, safety backup id, kept database, rows restored (restore).
  type: dict
  returned: restore
steps: {description: Every step with start time, duration and result., type: list, returned: always}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.mayday_db import DbError, backup, list_backups, prune, purge_recent, restore
from ansible.module_utils.mayday_steps import Steps


def main():
    module = AnsibleModule(
        argument_spec={
            "mode": {"type": "str", "default": "list",
                     "choices": ["backup", "list", "prune", "restore", "purge_recent"]},
            "engine": {"type": "str", "choices": ["mariadb", "postgresql"], "required": True},
            "database": {"type": "str", "required": True},
            "backup_dir": {"type": "path", "default": "/var/backups/mayday"},
            "backup": {"type": "str", "default": "latest"},
            "retention": {"type": "int", "default": 7},
            "pgbouncer": {"type": "dict"},
            "tables": {"type": "list", "elements": "str", "default": []},
            "time_column": {"type": "str", "default": "created_at"},
            "minutes": {"type": "int", "default": 60},
        },
        supports_check_mode=True,
    )
    p = module.params
    steps = Steps()
    try:
        if p["mode"] == "list":
            module.exit_json(changed=False, steps=steps.items,
                             backups=list_backups(p["backup_dir"], p["engine"], p["database"]))
        if p["mode"] == "backup":
            if module.check_mode:
                module.exit_json(changed=True, steps=steps.items, msg="check mode: no backup taken")
            manifest = steps.run("backup", backup, p)
            module.exit_json(changed=True, manifest=manifest, steps=[dict(steps.items[0], detail=manifest["id"])])
        if p["mode"] == "prune":
            removed = [] if module.check_mode else prune(p)
            module.exit_json(changed=bool(removed), removed=removed, steps=steps.items)
        if p["mode"] == "purge_recent":
            purged = purge_recent(p, steps, check_mode=module.check_mode)
            module.exit_json(changed=purged["deleted"] > 0, purge=purged, steps=steps.items)
        report = restore(p, steps, check_mode=module.check_mode)
        for step in steps.items:
            if isinstance(step["detail"], dict):  # manifests: keep the timeline readable
                step["detail"] = step["detail"].get("id", "")
        module.exit_json(changed=report.pop("changed"), restore=report, steps=steps.items)
    except DbError as exc:
        for step in steps.items:
            if isinstance(step["detail"], dict):
                step["detail"] = step["detail"].get("id", "")
        # refused: nothing about the live database was changed (exit 2 from the CLI).
        module.fail_json(msg=str(exc), steps=steps.items, **({} if exc.live_touched else {"refused": True}))


if __name__ == "__main__":
    main()
