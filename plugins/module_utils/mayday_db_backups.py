# Backups with manifests (take, list, prune, resolve, verify) and the interruption-safe restore.
#
# Restore never writes into the live database: it restores into a shadow database, verifies it
# against the backup's manifest (row counts and per-table checksums), then swaps it in with one
# atomic step (a PostgreSQL transaction renaming both databases; one MariaDB RENAME TABLE
# statement moving every table). Killed at any moment, the live database is entirely the old one
# or entirely the restored one. The database it replaces is kept, renamed, never dropped.
#
# `changes` (a list the caller owns) names everything done to the host, appended *before* each
# step that may change it: after a failure, an empty list means nothing changed (a refusal).
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

try:
    from ansible.module_utils.mayday_db_engines import DbError, check_name, engine_for, stamp
    from ansible.module_utils.mayday_steps import Steps
except ImportError:  # imported directly (unit tests, bench)
    from mayday_db_engines import DbError, check_name, engine_for, stamp  # type: ignore[no-redef]
    from mayday_steps import Steps  # type: ignore[no-redef]

SHADOW_SUFFIX = "__mayday_shadow"
STATE_FILE = ".mayday-write-stop.json"  # what we stopped, so an interrupted run can undo it
LOCK_FILE = ".mayday-restore.lock"
# Which backup the live database was last restored from, and its identity right after the swap:
# a second run for the same backup finds the very same database live and changes nothing (writes
# made since are the application's and must not be thrown away).
LAST_RESTORE_FILE = ".mayday-last-restore.json"


def _last_restore(backup_dir):
    try:
        fd = os.open(os.path.join(backup_dir, LAST_RESTORE_FILE), os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def _record_restore(backup_dir, doc):
    path = os.path.join(backup_dir, LAST_RESTORE_FILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(doc, handle)
    os.replace(tmp, path)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_dir(path, changes):
    if not os.path.isdir(path):
        changes.append(f"create {path}")
        os.makedirs(path, mode=0o700, exist_ok=True)


def list_backups(backup_dir, engine=None, database=None):
    found: list = []
    if not os.path.isdir(backup_dir):
        return found
    for name in sorted(os.listdir(backup_dir)):
        if not name.endswith(".manifest.json"):
            continue
        try:
            with open(os.path.join(backup_dir, name)) as handle:
                manifest = json.load(handle)
        except (OSError, ValueError):
            continue
        if not isinstance(manifest, dict) or not isinstance(manifest.get("time"), str):
            continue  # not one of ours
        if (engine and manifest.get("engine") != engine) or (database and manifest.get("database") != database):
            continue
        found.append(manifest)
    return sorted(found, key=lambda m: m["time"])


def room_for_backup(eng, db, backup_dir, freed=0):
    """Read-only: the database exists and the backup directory's disk can hold a dump of it."""
    if not eng.exists(db):
        raise DbError(f"database {db!r} does not exist")
    need = eng.size(db)
    where = backup_dir
    while not os.path.isdir(where):  # not created yet: the disk it will be on
        where = os.path.dirname(where) or "/"
    free = shutil.disk_usage(where).free + freed
    if free < need:
        raise DbError(f"not enough free disk in {backup_dir}: {free} bytes free, the database takes {need}")
    return f"{free} bytes free, the database takes {need}"


def backup(params, kind="backup", changes=None):
    """Dump and manifest, both written under .partial names and renamed: a failure leaves nothing."""
    changes = [] if changes is None else changes
    eng = engine_for(params)
    db = check_name(params["database"])
    backup_dir = params["backup_dir"]
    ensure_dir(backup_dir, changes)
    room_for_backup(eng, db, backup_dir)
    backup_id = f"{eng.engine}-{db}-{stamp()}" + ("-safety" if kind == "safety" else "")
    path = os.path.join(backup_dir, f"{backup_id}.{eng.ext}")
    manifest_path = os.path.join(backup_dir, f"{backup_id}.manifest.json")
    tmp, manifest_tmp = path + ".partial", manifest_path + ".partial"
    t0 = time.monotonic()
    try:
        tables = eng.dump_with_fingerprint(db, tmp, fast=kind == "safety")
        manifest = {
            "id": backup_id, "kind": kind, "time": stamp(), "engine": eng.engine, "database": db,
            "file": os.path.basename(path), "size": os.path.getsize(tmp), "sha256": sha256_of(tmp),
            "tables": tables, "dump_seconds": round(time.monotonic() - t0, 2),
        }
        with open(manifest_tmp, "w") as handle:
            json.dump(manifest, handle, indent=2)
        os.replace(tmp, path)
        os.replace(manifest_tmp, manifest_path)
    except BaseException:
        leftovers = [tmp, manifest_tmp] + ([] if os.path.exists(manifest_path) else [path])
        for leftover in leftovers:
            if os.path.exists(leftover):
                os.unlink(leftover)
        raise
    changes.append(f"write {kind} backup {backup_id}")
    return manifest


def prune(params, check_mode=False, changes=None):
    """Keep the newest `retention` regular backups (at least 1); safety backups are never pruned.

    Returns the ids removed (in check mode: the ids a real run would remove)."""
    changes = [] if changes is None else changes
    keep = max(1, int(params.get("retention", 7)))
    regular = [m for m in list_backups(params["backup_dir"], params["engine"], params["database"])
               if m.get("kind") == "backup"]
    removed = []
    for manifest in regular[: max(0, len(regular) - keep)]:
        removed.append(manifest["id"])
        if check_mode:
            continue
        changes.append(f"remove backup {manifest['id']}")
        for name in (manifest["file"], f"{manifest['id']}.manifest.json"):
            path = os.path.join(params["backup_dir"], name)
            if os.path.exists(path):
                os.unlink(path)
    return removed


def resolve(params):
    wanted = params.get("backup") or "latest"
    backups = list_backups(params["backup_dir"])
    mine = [m for m in backups if m.get("engine") == params["engine"] and m.get("database") == params["database"]
            and m.get("kind") == "backup"]
    if wanted == "latest":
        if not mine:
            raise DbError(f"no backup of {params['engine']} database {params['database']!r} in {params['backup_dir']}")
        return mine[-1]
    for manifest in backups:
        if manifest.get("id") == wanted:
            if manifest.get("engine") != params["engine"] or manifest.get("database") != params["database"]:
                raise DbError(f"backup {wanted} is of {manifest.get('engine')} database {manifest.get('database')!r}, "
                              f"not {params['engine']} database {params['database']!r}")
            return manifest
    valid = ", ".join(m["id"] for m in mine[-5:]) or "none"
    raise DbError(f"unknown backup {wanted!r}; valid: latest, {valid}")


def verify_backup(params, manifest):
    path = os.path.join(params["backup_dir"], manifest["file"])
    if not os.path.exists(path):
        raise DbError(f"backup file {path} is missing")
    actual = sha256_of(path)
    if actual != manifest["sha256"]:
        raise DbError(f"backup {manifest['id']} is corrupt: sha256 {actual[:12]}..., manifest says "
                      f"{manifest['sha256'][:12]}...")
    engine_for(params).readable(path)
    return path


def compare(expected, actual):
    problems = []
    for table, want in expected.items():
        got = actual.get(table)
        if got is None:
            problems.append(f"{table} missing")
        elif got != want:
            problems.append(f"{table}: rows {got['rows']} vs {want['rows']}, checksum differs"
                            if got["rows"] != want["rows"] else f"{table}: checksum differs")
    problems += [f"{t} not in the backup" for t in actual if t not in expected]
    return problems


def _matches(what, expected, fingerprint, problems=()):
    """Raises (so the step shows failed) when the fingerprint differs from the manifest."""
    problems = [*problems, *compare(expected, fingerprint())]
    if problems:
        raise DbError(f"{what}: " + "; ".join(problems[:5]))
    return f"{len(expected)} tables match"


def restore(params, steps, changes, check_mode=False):
    """One restore at a time on this host (a controller killed mid-run leaves its restore running)."""
    lock_path = os.path.join(params["backup_dir"], LOCK_FILE)
    if check_mode and not os.path.exists(lock_path):
        return _restore(params, steps, changes, check_mode)  # no restore ever ran here: nothing to wait for
    if not check_mode:
        ensure_dir(params["backup_dir"], changes)
    with open(lock_path, "r" if check_mode else "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise DbError("another restore is still running on this host; wait for it, then run again") from exc
        return _restore(params, steps, changes, check_mode)


def _leftovers(eng, db, shadow, backup_dir, marker):
    """What an interrupted run left behind: (plan line, step name, function, args)."""
    found: list[tuple] = []
    if os.path.exists(marker):
        found.append(("resume writes left stopped by an interrupted run",
                      "resume writes left stopped by an interrupted run", eng.resume_writes, (db, marker)))
    if eng.exists(shadow):
        found.append((f"drop leftover shadow {shadow}", "drop the shadow left by an interrupted run",
                      eng.drop, (shadow,)))
    for name in sorted(os.listdir(backup_dir)):
        if name.startswith(f"{eng.engine}-{db}-") and name.endswith(".partial"):
            found.append((f"remove {name} left by an interrupted run", f"remove {name} left by an interrupted run",
                          os.unlink, (os.path.join(backup_dir, name),)))
    return found


def _restore(params, steps, changes, check_mode=False):
    """Verify, safety backup, restore into shadow, verify, swap, verify. Returns a report dict."""
    eng = engine_for(params)
    db = check_name(params["database"])
    shadow = check_name(db + SHADOW_SUFFIX)
    backup_dir = params["backup_dir"]
    marker = os.path.join(backup_dir, STATE_FILE)
    manifest = steps.run("resolve backup", resolve, params)
    path = steps.run("verify backup (sha256, readable, engine, database)", verify_backup, params, manifest)
    leftovers = _leftovers(eng, db, shadow, backup_dir, marker)
    last = _last_restore(backup_dir)
    # Restored from this very backup and not changed since (same database, same rows): nothing to
    # do. The identity check is cheap and comes first; the fingerprint settles it.
    if (not leftovers and last.get("backup") == manifest["id"] and last.get("database") == db
            and eng.exists(db) and str(eng.identity(db)) == str(last.get("identity"))
            and not compare(manifest["tables"], eng.fingerprint(db))):
        steps.skip(f"restore {manifest['id']}", f"the live {db} is the copy restored from it at {last.get('at')}")
        return {"backup": manifest["id"], "already_restored": True, "restored_at": last.get("at"),
                "changes": [], "changed": False}
    # Refuse before cleaning up what a real run would fail on anyway (a leftover shadow's space comes back).
    freed = eng.size(shadow) if any(step[2] == eng.drop for step in leftovers) else 0
    steps.run(f"check {db} exists and {backup_dir} has room for its safety backup", room_for_backup,
              eng, db, backup_dir, freed)
    plan = [line for line, _, _, _ in leftovers] + [
        f"take a safety backup of {db}",
        f"restore {manifest['id']} into {shadow} and verify it against the manifest",
        f"stop writes, swap {shadow} in (the replaced database kept as {db}__mayday_pre_<UTC stamp>), resume writes",
        f"verify the live {db} is the verified copy",
    ]
    if check_mode:
        for line in plan:
            steps.skip(line, "check mode")
        # A real run would restore: "changed" says so, as Ansible's own modules do in check mode.
        return {"backup": manifest["id"], "dry_run": True, "would": plan, "changes": [], "changed": True}
    for line, name, func, args in leftovers:
        changes.append(line)
        steps.run(name, func, *args)
    # The safety backup reads the live database while the restore writes the shadow: both must
    # finish (and the safety backup succeed) before anything about the live database changes.
    into_shadow = f"restore {manifest['id']} into {shadow}"
    with ThreadPoolExecutor(max_workers=1) as pool:
        safety_job = pool.submit(Steps.timed, "safety backup of the live database", backup, params, "safety", changes)
        failure: Exception | None = None
        changes.append(into_shadow)
        try:
            steps.run(into_shadow, eng.restore_into, path, shadow)
            steps.run("verify the shadow against the manifest", _matches, "restored copy does not match the backup",
                      manifest["tables"], lambda: eng.fingerprint(shadow))
        except DbError as exc:
            failure = exc
        safety_step, safety, safety_error = safety_job.result()
    steps.items.append(safety_step)
    failure = safety_error or failure
    if failure is not None:
        try:
            steps.run(f"drop {shadow} (the live database was not touched)", eng.drop, shadow)
        except DbError as exc:
            raise DbError(f"{failure}; dropping {shadow} failed too: {exc}") from failure
        changes.remove(into_shadow)  # created and dropped again: nothing of it is left
        raise failure
    verified = eng.identity(shadow)
    keep_as = f"{db}__mayday_pre_{stamp()}"
    try:
        try:
            changes.append("stop writes")
            steps.run("stop writes", eng.stop_writes, db, marker)
            changes.append(f"swap {shadow} in, the replaced database kept as {keep_as}")
            steps.run(f"swap in the restored database (old one kept as {keep_as})", eng.swap, db, shadow, keep_as)
        finally:
            steps.run("resume writes", eng.resume_writes, db, marker)
        # The live database must be the very one verified above, with every row count in place.
        steps.run("verify the live database is the verified copy (identity, row counts)", _matches,
                  "live database does not match the backup after the swap",
                  {t: {"rows": v["rows"]} for t, v in manifest["tables"].items()},
                  lambda: eng.fingerprint(db, counts_only=True),
                  [] if eng.identity(db) == verified else ["the live database is not the verified copy"])
    except DbError as exc:
        exc.live_touched = True
        raise
    _record_restore(backup_dir, {"backup": manifest["id"], "database": db, "identity": str(verified), "at": stamp()})
    return {"backup": manifest["id"], "safety_backup": safety["id"], "previous_kept_as": keep_as,
            "rows_restored": sum(t["rows"] for t in manifest["tables"].values()),
            "tables": len(manifest["tables"]), "changes": list(changes), "changed": True}
