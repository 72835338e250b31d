#!/usr/bin/python
# Restore test: the latest backup of this host's database restored into a scratch database, checked
# against its manifest (every table's rows and checksum), timed, and dropped again. The live
# database is never written: the scratch name is <db>__mayday_drilltest and nothing is swapped.
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_drill_restore_test
short_description: Prove the latest backup restores and matches its manifest, without touching the live database
options:
  engine: {description: mariadb or postgresql., type: str, required: true}
  database: {description: The live database whose backups are tested., type: str, required: true}
  backup_dir: {description: Where the backups are., type: path, default: /var/backups/mayday}
  timeouts: {description: As mayday_db's., type: dict, default: {}}
author: mayday
"""

RETURN = r"""
backup: {description: The backup tested., type: str, returned: always}
data_age_s: {description: Age of the backup's data (the RPO it gives)., type: float, returned: success}
restore_s: {description: Restore and verification time., type: float, returned: success}
problems: {description: What did not match the manifest., type: list, returned: always}
"""

import contextlib
import socket
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.mayday_db_backups import compare, resolve, stamp_epoch, verification, verify_backup
from ansible.module_utils.mayday_db_engines import DbError, engine_for

SUFFIX = "__mayday_drilltest"


def main():
    module = AnsibleModule(
        argument_spec={
            "engine": {"type": "str", "choices": ["mariadb", "postgresql"], "required": True},
            "database": {"type": "str", "required": True},
            "backup_dir": {"type": "path", "default": "/var/backups/mayday"},
            "timeouts": {"type": "dict", "default": {}},
        },
        supports_check_mode=False,
    )
    p = dict(module.params, backup="latest")
    host = socket.gethostname()
    eng = engine_for(p)
    scratch = p["database"][:34 - len(SUFFIX)] + SUFFIX
    try:
        manifest = resolve(p)
    except DbError as exc:
        module.fail_json(msg=f"{host}: {exc}", backup=None, problems=[str(exc)])
    started = time.monotonic()
    problems, dropped = [], False
    try:
        if eng.exists(scratch):  # left by a run killed before its cleanup
            eng.drop(scratch)
        path = verify_backup(p, manifest)
        expected, reduce, _warning = verification(manifest)
        eng.restore_into(path, scratch)
        problems = compare(expected, reduce(eng.fingerprint(scratch)))
    except DbError as exc:
        problems.append(str(exc))
    finally:
        restore_s = round(time.monotonic() - started, 3)
        with contextlib.suppress(DbError):
            if eng.exists(scratch):
                eng.drop(scratch)
        dropped = not eng.exists(scratch)
    taken = stamp_epoch(manifest.get("time"))
    result = {"backup": manifest["id"], "database": p["database"], "engine": p["engine"], "scratch": scratch,
              "scratch_dropped": dropped, "tables": len(manifest.get("tables") or {}), "restore_s": restore_s,
              "data_age_s": round(time.time() - taken, 1) if taken else None, "problems": problems[:10]}
    if problems or not dropped:
        module.fail_json(msg=f"{host}: backup {manifest['id']}: " + "; ".join(problems[:3] or
                                                                          [f"{scratch} was not dropped"]), **result)
    module.exit_json(changed=False, msg=f"{host}: backup {manifest['id']} restored and verified in {restore_s} s",
                     **result)


if __name__ == "__main__":
    main()
