# Backups with manifests (take, list, prune, resolve, verify) and the interruption-safe restore.
#
# Restore never writes into the live database: it restores into a shadow database, verifies it
# against the backup's manifest (row counts and per-table checksums), then swaps it in with one
# atomic step (a PostgreSQL transaction renaming both databases; one MariaDB RENAME TABLE
# statement moving every table). Killed at any moment, the live database is entirely the old one
# or entirely the restored one. The database it replaces is kept, renamed; retention (keep the
# newest N, never one younger than M minutes) removes older kept databases and safety dumps only
# after a restore succeeded. Everything that can refuse does so before anything changes.
#
# `changes` (a list the caller owns) names everything done to the host, appended *before* each
# step that may change it: after a failure, an empty list means nothing changed (a refusal).
from __future__ import annotations

import calendar
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import stat
import time

try:
    from ansible.module_utils.mayday_db_engines import DbError, check_name, engine_for, stamp
except ImportError:  # imported directly (unit tests, bench)
    from mayday_db_engines import DbError, check_name, engine_for, stamp  # type: ignore[no-redef]

SHADOW_SUFFIX = "__mayday_shadow"
# 2: checksums and object entries taken inside the dump's own snapshot (see verification()).
MANIFEST_FORMAT = 2
# Interruption tests stop a restore at a phase boundary: with the module's fault_points on (only the
# tests turn it on: MAYDAY_TEST_FAULT_POINTS=1 on the controller) and the backup directory holding this
# file (root's, not a symlink) naming a boundary, the restore writes <file>.reached there and waits (at
# most FAULT_POINT_WAIT s) until the file is gone, so a test can kill it at exactly that point. A file
# left on a real host is ignored: two boundaries come while writes are stopped.
FAULT_POINT_FILE = ".mayday-fault-point"
FAULT_POINT_WAIT = 300
BOUNDARIES = ("shadow-restored", "shadow-verified", "writes-stopped", "swapped", "writes-resumed", "recorded")
STATE_FILE = ".mayday-write-stop.json"  # what we stopped, so an interrupted run can undo it
# Which backup the live database was last restored from, and its identity right after the swap:
# a second run for the same backup finds the very same database live and changes nothing (writes
# made since are the application's and must not be thrown away).
LAST_RESTORE_FILE = ".mayday-last-restore.json"
PRE_INFIX = "__mayday_pre_"  # <db>__mayday_pre_<UTC stamp>: the database a restore replaced
STAMP_LEN = len("20260101T000000Z")
PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # fullmatch: "$" would let a trailing newline in
# Retention of what restores leave (kept databases, safety dumps): the newest `keep`, and never one
# younger than `min_age_minutes`. Regular backups keep their own retention (prune).
RESTORE_RETENTION = {"keep": 2, "min_age_minutes": 60}
DISK_HEADROOM_PCT = 20  # the shadow and the safety dump may take this much more than the database


def _last_restore(backup_dir):
    try:
        fd = os.open(os.path.join(backup_dir, LAST_RESTORE_FILE), os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def _write_private(path, doc, indent=None):
    """Write JSON to a new file only root can read (never through a symlink, never over a file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(doc, handle, indent=indent)


def _record_restore(backup_dir, doc):
    path = os.path.join(backup_dir, LAST_RESTORE_FILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    _write_private(tmp, doc)
    os.replace(tmp, path)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- names -------------------------------------------------------------------------------------

def max_database_name(max_name):
    """The longest database name whose derived names (`<db>__mayday_pre_<stamp>`, the longest) fit."""
    return max_name - max(len(PRE_INFIX) + STAMP_LEN, len(SHADOW_SUFFIX))


def check_database_name(db, max_name=63, engine="the engine"):
    if not isinstance(db, str) or not PLAIN.fullmatch(db):
        raise DbError(f"database name {db!r} is not a plain identifier (letters, digits, _)")
    limit = max_database_name(max_name)
    if len(db) > limit:
        raise DbError(f"database name {db!r} has {len(db)} characters; mayday handles at most {limit}: "
                      f"{engine} names take {max_name}, and a restore keeps the replaced database as "
                      f"<db>{PRE_INFIX}<UTC stamp> ({len(PRE_INFIX) + STAMP_LEN} more)")
    return db


def derived_names(db, max_name, now=None):
    """The shadow and keep names of a restore, derived (and checked) before anything changes."""
    shadow, keep_as = db + SHADOW_SUFFIX, f"{db}{PRE_INFIX}{now or stamp()}"
    for name in (shadow, keep_as):
        if len(name) > max_name:
            raise DbError(f"derived name {name!r} has {len(name)} characters, over the limit of {max_name}; "
                          f"database names of at most {max_database_name(max_name)} characters can be restored")
    return shadow, keep_as


def _engine_accepts(*names):
    """The engine module's own name check (mayday_db_common.check_name) runs again inside the swap:
    a name it rejects must be refused here, before writes stop."""
    for name in names:
        try:
            check_name(name)
        except DbError as exc:
            raise DbError(f"derived name {name!r} ({len(name)} characters) is rejected by the engine module's "
                          f"name check; use a shorter database name ({exc})") from exc


def stamp_epoch(text):
    """Seconds since the epoch of a UTC stamp (20260101T000000Z); None when it is not one."""
    try:
        return calendar.timegm(time.strptime(text, "%Y%m%dT%H%M%SZ"))
    except (TypeError, ValueError):
        return None


def kept_name_time(db, name):
    """The stamp of a kept pre-restore database of `db`, or None when `name` is not one."""
    prefix = db + PRE_INFIX
    if not name.startswith(prefix) or len(name) != len(prefix) + STAMP_LEN:
        return None
    return stamp_epoch(name[len(prefix):])


# --- files and disk ----------------------------------------------------------------------------

def ensure_dir(path, changes, check_mode=False):
    """The backup directory exists, is 0700 and its files are 0600 (tightening is a change)."""
    if not os.path.isdir(path):
        if check_mode:
            return
        changes.append(f"create {path}")
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)  # makedirs' mode goes through the umask
        return
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077 and not check_mode:
        changes.append(f"tighten {path} from {mode:04o} to 0700")
        os.chmod(path, 0o700)
    loose = []
    for name in sorted(os.listdir(path)):
        info = os.lstat(os.path.join(path, name))
        if stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) & 0o077:
            loose.append(name)
    if loose and not check_mode:
        changes.append(f"tighten {len(loose)} files in {path} to 0600")
        for name in loose:
            fd = os.open(os.path.join(path, name), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)


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


def _existing(path):
    while not os.path.isdir(path):  # not created yet: the disk it will be on
        path = os.path.dirname(path) or "/"
    return path


def with_headroom(size, headroom_pct):
    return math.ceil(size * (1 + max(0, headroom_pct) / 100))


def disk_shortfalls(needs):
    """needs: (what, path, device, free bytes, bytes needed). Needs on one device add up.
    Returns one message per device that lacks room (empty: everything fits)."""
    by_device: dict = {}
    for what, path, device, free, need in needs:
        entry = by_device.setdefault(device, {"free": free, "need": 0, "what": []})
        entry["need"] += need
        entry["what"].append(f"{what} in {path}: {need} bytes")
    return [f"not enough free disk: {e['free']} bytes free, {e['need']} needed ({'; '.join(e['what'])})"
            for e in by_device.values() if e["free"] < e["need"]]


def room_for_backup(eng, db, backup_dir, freed=0, headroom_pct=0):
    """Read-only: the database exists and the backup directory's disk can hold a dump of it."""
    if not eng.exists(db):
        raise DbError(f"database {db!r} does not exist")
    need = with_headroom(eng.size(db), headroom_pct)
    where = _existing(backup_dir)
    free = shutil.disk_usage(where).free + freed
    if free < need:
        raise DbError(f"not enough free disk in {backup_dir}: {free} bytes free, the dump needs {need}")
    return f"{free} bytes free, the dump needs {need}"


def room_for_restore(eng, db, backup_dir, headroom_pct, freed=0):
    """Read-only: room for the shadow (on the data directory's disk) and for the safety dump."""
    if not eng.exists(db):
        raise DbError(f"database {db!r} does not exist")
    size = eng.size(db)
    data_dir, dumps = eng.data_dir(), _existing(backup_dir)
    needs = []
    for what, path, need, extra in (("shadow database", data_dir, with_headroom(size, headroom_pct), freed),
                                    ("safety dump", dumps, with_headroom(size, headroom_pct), 0)):
        device = os.stat(path).st_dev
        needs.append((what, path, device, shutil.disk_usage(path).free + extra, need))
    problems = disk_shortfalls(needs)
    if problems:
        raise DbError("; ".join(problems) + f" ({db} takes {size} bytes, headroom {headroom_pct}%)")
    return "; ".join(f"{what}: {need} of {free} bytes free in {path}" for what, path, _, free, need in needs)


# --- backups -----------------------------------------------------------------------------------

def backup(params, kind="backup", changes=None, source=None):
    """Dump and manifest, both written under .partial names and renamed: a failure leaves nothing.

    `source` (safety dumps) is the database dumped when it is not the live one (the kept copy); the
    manifest still names the live database, so the dump restores into it."""
    changes = [] if changes is None else changes
    eng = engine_for(params)
    db = check_database_name(params["database"], eng.max_name, eng.engine)
    source = source or db
    backup_dir = params["backup_dir"]
    ensure_dir(backup_dir, changes)
    room_for_backup(eng, source, backup_dir)
    backup_id = f"{eng.engine}-{db}-{stamp()}" + ("" if kind == "backup" else f"-{kind}")  # -safety, -emergency
    path = os.path.join(backup_dir, f"{backup_id}.{eng.ext}")
    manifest_path = os.path.join(backup_dir, f"{backup_id}.manifest.json")
    tmp, manifest_tmp = path + ".partial", manifest_path + ".partial"
    t0 = time.monotonic()
    try:
        tables = eng.dump_with_fingerprint(source, tmp, fast=kind == "safety")
        if not os.path.islink(tmp):
            os.chmod(tmp, 0o600)  # whatever created it: only root reads a dump
        manifest = {
            "id": backup_id, "kind": kind, "time": stamp(), "engine": eng.engine, "database": db,
            "file": os.path.basename(path), "size": os.path.getsize(tmp), "sha256": sha256_of(tmp),
            "tables": tables, "dump_seconds": round(time.monotonic() - t0, 2), "format": MANIFEST_FORMAT,
        }
        if source != db:
            manifest["source"] = source
        _write_private(manifest_tmp, manifest, indent=2)
        os.replace(tmp, path)
        os.replace(manifest_tmp, manifest_path)
    except BaseException:
        leftovers = [tmp, manifest_tmp] + ([] if os.path.exists(manifest_path) else [path])
        for leftover in leftovers:
            if os.path.lexists(leftover):
                os.unlink(leftover)
        raise
    changes.append(f"write {kind} backup {backup_id}")
    return manifest


def _remove_backup(backup_dir, manifest):
    for name in (manifest["file"], f"{manifest['id']}.manifest.json"):
        path = os.path.join(backup_dir, name)
        if os.path.lexists(path):
            os.unlink(path)


def prune(params, check_mode=False, changes=None):
    """Keep the newest `retention` regular backups (at least 1); safety backups are never pruned here.

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
        _remove_backup(params["backup_dir"], manifest)
    return removed


def restore_retention(params):
    given = params.get("restore_retention") or {}
    unknown = sorted(set(given) - set(RESTORE_RETENTION))
    if unknown:
        raise DbError(f"unknown restore_retention keys {', '.join(unknown)}; valid: {', '.join(RESTORE_RETENTION)}")
    policy = {**RESTORE_RETENTION, **{k: int(v) for k, v in given.items() if v is not None}}
    if policy["keep"] < 1 or policy["min_age_minutes"] < 0:
        raise DbError(f"restore_retention {policy}: keep must be at least 1, min_age_minutes at least 0")
    return policy


def expired(items, keep, min_age_minutes, now, protect=()):
    """Which of `items` ((name, epoch seconds)) retention removes: not the newest `keep` (at least
    one), none younger than `min_age_minutes`, never one named in `protect`."""
    ordered = sorted(items, key=lambda item: (item[1], item[0]), reverse=True)
    return [name for name, when in ordered[max(1, keep):]
            if name not in protect and now - when >= min_age_minutes * 60]


def kept_databases(eng, db):
    """The databases restores of `db` replaced and kept: name, time, size; oldest first."""
    found = []
    for name in eng.databases():
        when = kept_name_time(db, name)
        if when is not None:
            found.append({"name": name, "epoch": when, "time": name[-STAMP_LEN:], "size": eng.size(name)})
    return sorted(found, key=lambda k: (k["epoch"], k["name"]))


def safety_dumps(backup_dir, engine, db):
    return [m for m in list_backups(backup_dir, engine, db) if m.get("kind") == "safety"]


def apply_restore_retention(eng, params, db, keep_as, safety_id, changes):
    """After a successful restore: older kept databases and safety dumps beyond the policy go, and
    only when this run's own safety dump was written and verified: without it, nothing is removed."""
    policy, now = restore_retention(params), time.time()
    removed: dict = {"kept_databases": [], "safety_backups": []}
    if not safety_id:
        return removed
    kept = [(k["name"], k["epoch"]) for k in kept_databases(eng, db)]
    for name in expired(kept, policy["keep"], policy["min_age_minutes"], now, protect={keep_as}):
        changes.append(f"drop kept database {name} (retention)")
        eng.drop(name)
        removed["kept_databases"].append(name)
    dumps = {m["id"]: m for m in safety_dumps(params["backup_dir"], eng.engine, db)}
    items = [(i, stamp_epoch(m["time"]) or 0) for i, m in dumps.items()]
    for backup_id in expired(items, policy["keep"], policy["min_age_minutes"], now, protect={safety_id}):
        changes.append(f"remove safety backup {backup_id} (retention)")
        _remove_backup(params["backup_dir"], dumps[backup_id])
        removed["safety_backups"].append(backup_id)
    return removed


def human_size(size):
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # not reached


def inventory(params):
    """Read-only listing for `mayday backups`: regular backups, safety dumps, emergency copies and kept databases,
    each as {kind, name, time, size, size_human}, oldest first, and the same as text lines."""
    manifests = list_backups(params["backup_dir"], params["engine"], params["database"])
    # Emergency copies (the state a data-corruption run found) are listed as such, never as backups.
    items = [{"kind": m.get("kind") if m.get("kind") in ("backup", "emergency") else "safety", "name": m["id"],
              "time": m["time"], "size": int(m.get("size") or 0)} for m in manifests]
    doc: dict = {}
    try:
        items += [{"kind": "kept-db", "name": k["name"], "time": k["time"], "size": k["size"]}
                  for k in kept_databases(engine_for(params), params["database"])]
    except (DbError, ImportError, OSError) as exc:  # the files are worth listing without the server or its driver
        doc["kept_error"] = str(exc)
    for item in items:
        item["size_human"] = human_size(item["size"])
    doc["items"] = items
    doc["lines"] = [f"{i['kind']:<8} {i['name']:<56} {i['time']:<17} {i['size_human']:>10} {i['size']:>14} B"
                    for i in items]
    for kind, key in (("backup", "backups"), ("safety", "safety_backups"), ("emergency", "emergency_backups"),
                      ("kept-db", "kept_databases")):
        doc[key] = [i for i in items if i["kind"] == kind]
    return doc


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
            counted = isinstance(got, dict) and isinstance(want, dict) and "rows" in got and "rows" in want
            if counted and got["rows"] != want["rows"]:
                problems.append(f"{table}: rows {got['rows']} vs {want['rows']}, checksum differs")
            else:
                problems.append(f"{table}: checksum differs" if counted else f"{table} differs")
    problems += [f"{t} not in the backup" for t in actual if t not in expected]
    return problems


def _is_table(key, value):
    # Engines add "@..." entries (owners, grants, definitions) beside the tables, with rows 0.
    return not str(key).startswith("@") and isinstance(value, dict) and "rows" in value


def verification(manifest):
    """(what the manifest promises, how to reduce a fingerprint to it, warning or None).

    Manifests before format 2 were taken from the live database after the dump, with other
    checksums and no object entries: only their row counts can be held against a restore."""
    if manifest.get("format", 1) >= MANIFEST_FORMAT:
        return manifest["tables"], (lambda found: found), None

    def counts(tables):
        return {t: {"rows": v["rows"]} for t, v in tables.items() if _is_table(t, v)}

    return (counts(manifest["tables"]), counts,
            f"backup {manifest['id']} has a manifest from an older mayday: verified by row counts only")


def _matches(what, expected, fingerprint, problems=()):
    """Raises (so the step shows failed) when the fingerprint differs from the manifest."""
    problems = [*problems, *compare(expected, fingerprint())]
    if problems:
        raise DbError(f"{what}: " + "; ".join(problems[:5]))
    return f"{len(expected)} tables match"


# --- restore -----------------------------------------------------------------------------------

def restore(params, steps, changes, check_mode=False):
    """One restore at a time on this host (a controller killed mid-run leaves its restore running).

    The lock is an flock on the backup directory itself: taking it creates nothing. No backup
    directory means no backup: _restore refuses."""
    backup_dir = params["backup_dir"]
    if not os.path.isdir(backup_dir):
        return _restore(params, steps, changes, check_mode)
    fd = os.open(backup_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise DbError("another restore is still running on this host; wait for it, then run again") from exc
        return _restore(params, steps, changes, check_mode)
    finally:
        os.close(fd)  # releases the lock


def _leftovers(eng, db, shadow, backup_dir, marker):
    """What an interrupted run left behind: (plan line, step name, function, args)."""
    found: list[tuple] = []
    if os.path.exists(marker):
        found.append(("resume writes left stopped by an interrupted run",
                      "resume writes left stopped by an interrupted run", eng.resume_writes, (db, marker)))
    if eng.exists(shadow):
        found.append((f"drop leftover shadow {shadow}", "drop the shadow left by an interrupted run",
                      eng.drop, (shadow,)))
    for name in sorted(os.listdir(backup_dir)) if os.path.isdir(backup_dir) else []:
        if name.startswith(f"{eng.engine}-{db}-") and name.endswith(".partial"):
            found.append((f"remove {name} left by an interrupted run", f"remove {name} left by an interrupted run",
                          os.unlink, (os.path.join(backup_dir, name),)))
    return found


def _boundary(params, name):
    if not params.get("fault_points"):
        return
    path = os.path.join(params["backup_dir"], FAULT_POINT_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return
    with os.fdopen(fd) as handle:
        if os.fstat(handle.fileno()).st_uid != 0 or handle.read(64).strip() != name:
            return
    with open(path + ".reached", "w") as handle:
        handle.write(name)
    deadline = time.monotonic() + FAULT_POINT_WAIT
    while os.path.lexists(path) and time.monotonic() < deadline:
        time.sleep(0.05)


def _preflight(eng, db, shadow, keep_as, expected):
    """Engine-specific blockers and the names: all before anything changes."""
    _engine_accepts(shadow, keep_as)
    if eng.exists(keep_as):
        raise DbError(f"{keep_as} exists already; run again in a second")
    eng.preflight_restore(db, shadow, keep_as, expected=expected)
    return f"{shadow} and {keep_as} fit ({eng.max_name} characters at most)"


def _safety_dump(params, eng, keep_as, changes):
    """Dump the kept (pre-restore) database at low priority and verify the file against its manifest."""
    with eng.opened(keep_as):  # PostgreSQL keeps it closed to connections since the swap
        manifest = backup(params, "safety", changes, source=keep_as)
    verify_backup(params, manifest)
    return manifest


def _restore(params, steps, changes, check_mode=False):
    """Pre-flight (names, engine, disk), restore into shadow, verify, swap, verify; then the safety
    dump of the kept database and retention. Returns a report dict."""
    eng = engine_for(params)
    max_name = eng.max_name
    db = steps.run("check the database name", check_database_name, params["database"], max_name, eng.engine)
    shadow, keep_as = steps.run("derive the shadow and kept names", derived_names, db, max_name)
    backup_dir = params["backup_dir"]
    headroom = int(params.get("disk_headroom_pct", DISK_HEADROOM_PCT))
    restore_retention(params)  # a bad policy refuses now, not after the swap
    marker = os.path.join(backup_dir, STATE_FILE)
    manifest = steps.run("resolve backup", resolve, params)
    path = steps.run("verify backup (sha256, readable, engine, database)", verify_backup, params, manifest)
    expected, reduce, old_manifest = verification(manifest)
    leftovers = _leftovers(eng, db, shadow, backup_dir, marker)
    last = _last_restore(backup_dir)
    # Restored from this very backup and not changed since (same database, same rows): nothing to
    # do. The identity check is cheap and comes first; the fingerprint settles it.
    if (not leftovers and last.get("backup") == manifest["id"] and last.get("database") == db
            and eng.exists(db) and str(eng.identity(db)) == str(last.get("identity"))
            and not compare(expected, reduce(eng.fingerprint(db)))):
        steps.skip(f"restore {manifest['id']}", f"the live {db} is the copy restored from it at {last.get('at')}")
        return {"backup": manifest["id"], "already_restored": True, "restored_at": last.get("at"),
                "changes": [], "changed": False}
    steps.run("engine pre-flight (names, what the swap cannot move)", _preflight, eng, db, shadow, keep_as,
              manifest["tables"])
    # Refuse before cleaning up what a real run would fail on anyway (a leftover shadow's space comes back).
    freed = eng.size(shadow) if any(step[2] == eng.drop for step in leftovers) else 0
    steps.run(f"check disk for the shadow and the safety dump (+{headroom}%)", room_for_restore,
              eng, db, backup_dir, headroom, freed)
    plan = [line for line, _, _, _ in leftovers] + [
        f"restore {manifest['id']} into {shadow} and verify it against the manifest",
        f"stop writes, swap {shadow} in (the replaced database kept as {keep_as}), resume writes",
        f"verify the live {db} is the verified copy",
        f"take a safety dump of {keep_as} (low priority) and verify it",
        "apply the retention of kept databases and safety dumps",
    ]
    if check_mode:
        for line in plan:
            steps.skip(line, "check mode")
        # A real run would restore: "changed" says so, as Ansible's own modules do in check mode.
        return {"backup": manifest["id"], "dry_run": True, "would": plan, "changes": [], "changed": True}
    # Pre-flight is over: from here on, everything done is recorded in `changes` first.
    ensure_dir(backup_dir, changes)
    for line, name, func, args in leftovers:
        changes.append(line)
        steps.run(name, func, *args)
    into_shadow = f"restore {manifest['id']} into {shadow}"
    changes.append(into_shadow)
    try:
        steps.run(into_shadow, eng.restore_into, path, shadow)
        _boundary(params, "shadow-restored")
        steps.run("verify the shadow against the manifest", _matches, "restored copy does not match the backup",
                  expected, lambda: reduce(eng.fingerprint(shadow)))
    except DbError as failure:
        try:
            steps.run(f"drop {shadow} (the live database was not touched)", eng.drop, shadow)
        except DbError as exc:
            raise DbError(f"{failure}; dropping {shadow} failed too: {exc}") from failure
        changes.remove(into_shadow)  # created and dropped again: nothing of it is left
        raise
    _boundary(params, "shadow-verified")
    verified = eng.identity(shadow)
    try:
        try:
            changes.append("stop writes")
            steps.run("stop writes", eng.stop_writes, db, marker)
            _boundary(params, "writes-stopped")
            changes.append(f"swap {shadow} in, the replaced database kept as {keep_as}")
            steps.run(f"swap in the restored database (old one kept as {keep_as})", eng.swap, db, shadow, keep_as)
            _boundary(params, "swapped")
        finally:
            steps.run("resume writes", eng.resume_writes, db, marker)
        _boundary(params, "writes-resumed")
        # The live database must be the very one verified above, with every row count in place.
        steps.run("verify the live database is the verified copy (identity, row counts)", _matches,
                  "live database does not match the backup after the swap",
                  {t: {"rows": v["rows"]} for t, v in manifest["tables"].items() if _is_table(t, v)},
                  lambda: {t: {"rows": v["rows"]} for t, v in eng.fingerprint(db, counts_only=True).items()
                           if _is_table(t, v)},
                  [] if eng.identity(db) == verified else ["the live database is not the verified copy"])
    except DbError as exc:
        exc.live_touched = True
        raise
    _record_restore(backup_dir, {"backup": manifest["id"], "database": db, "identity": str(verified), "at": stamp()})
    _boundary(params, "recorded")
    report = {"backup": manifest["id"], "safety_backup": None, "previous_kept_as": keep_as,
              "rows_restored": sum(v["rows"] for t, v in manifest["tables"].items() if _is_table(t, v)),
              "tables": sum(1 for t, v in manifest["tables"].items() if _is_table(t, v)),
              "warnings": [old_manifest] if old_manifest else [], "changed": True}
    # The restore has succeeded: what follows costs the emergency nothing, and its failure is a warning.
    try:
        safety = steps.run(f"safety dump of {keep_as} (low priority), verified", _safety_dump,
                           params, eng, keep_as, changes)
        report["safety_backup"] = safety["id"]
    except Exception as exc:  # any failure here: the kept database is still the pre-restore copy
        report["warnings"].append(f"safety dump of {keep_as} failed ({exc}); the kept database {keep_as} "
                                  "is the pre-restore copy")
    try:
        report["retention_removed"] = steps.run("retention of kept databases and safety dumps",
                                                apply_restore_retention, eng, params, db, keep_as,
                                                report["safety_backup"], changes)
    except Exception as exc:  # `changes` says what it removed before failing
        report["warnings"].append(f"retention of kept databases and safety dumps failed: {exc}")
    report["changes"] = list(changes)
    return report
