# Database backup and interruption-safe restore for MariaDB and PostgreSQL, on the DB host.
#
# Restore never writes into the live database: it restores into a shadow database, verifies it
# against the backup's manifest (row counts and per-table checksums), then swaps it in with one
# atomic step (a PostgreSQL transaction renaming both databases; one MariaDB RENAME TABLE
# statement moving every table). Killed at any moment, the live database is entirely the old one
# or entirely the restored one. The database it replaces is kept, renamed, never dropped.
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

SHADOW_SUFFIX = "__mayday_shadow"
STATE_FILE = ".mayday-write-stop.json"  # what we stopped, so an interrupted run can undo it
BESIDE = ["nice", "-n", "10"]  # a job that runs beside the restore, at lower CPU priority
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")


try:
    from ansible.module_utils.mayday_steps import Steps
except ImportError:  # imported directly (unit tests)
    from mayday_steps import Steps  # type: ignore[no-redef]


class DbError(Exception):
    """A refusal or failure; the live database was not changed unless live_touched is set."""

    live_touched = False


def stamp():
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_name(name, what="database"):
    if not NAME.match(name or ""):
        raise DbError(f"{what} name {name!r} is not a plain identifier (letters, digits, _)")
    return name


def run(cmd, stdin=None, stdout=None, check=True):
    out = subprocess.run(cmd, stdin=stdin, stdout=stdout if stdout is not None else subprocess.PIPE,
                         stderr=subprocess.PIPE, check=False)
    if check and out.returncode != 0:
        raise DbError(f"{' '.join(cmd[:4])} failed: {out.stderr.decode(errors='replace').strip()[-500:]}")
    return out


class Postgres:
    engine = "postgresql"
    ext = "pgdump"

    def __init__(self, params):
        self.as_admin = ["runuser", "-u", params.get("admin_user") or "postgres", "--"]
        self.pgbouncer = params.get("pgbouncer") or {}

    def sql(self, query, db="postgres"):
        out = run([*self.as_admin, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-A", "-t", "-F", "\t",
                   "-d", db, "-c", query])
        return [line.split("\t") for line in out.stdout.decode().splitlines() if line]

    def exists(self, db):
        return bool(self.sql(f"SELECT 1 FROM pg_database WHERE datname = '{check_name(db)}'"))

    def size(self, db):
        return int(self.sql(f"SELECT pg_database_size('{check_name(db)}')")[0][0])

    def tables(self, db):
        rows = self.sql("SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables "
                        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1", db)
        return [r[0] for r in rows]

    def fingerprint(self, db, counts_only=False):
        # Order-independent (no sort of millions of hashes): the sum of each row's 64-bit hash. The hash
        # is PostgreSQL's own, so checksums compare within one major version (restores are on the same server).
        result = {}
        for table in self.tables(db):
            if counts_only:
                result[table] = {"rows": int(self.sql(f"SELECT count(*) FROM {table}", db)[0][0])}
                continue
            count, digest = self.sql(
                f"SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) "
                f"FROM {table} t", db)[0]
            result[table] = {"rows": int(count), "checksum": digest}
        return result

    def identity(self, db):
        return self.sql(f"SELECT oid FROM pg_database WHERE datname = '{check_name(db)}'")[0][0]

    def dump(self, db, path, fast=False):
        # A safety backup runs beside the restore: no compression, and it yields the CPU to it.
        with open(path, "wb") as handle:
            run([*(BESIDE if fast else []), *self.as_admin, "pg_dump", "-Fc", "-Z", "0" if fast else "1", db],
                stdout=handle)

    def readable(self, path):
        with open(path, "rb") as handle:
            run([*self.as_admin, "pg_restore", "-l"], stdin=handle)

    def restore_into(self, path, shadow):
        self.sql(f'CREATE DATABASE "{check_name(shadow)}"')
        with open(path, "rb") as handle:
            run([*self.as_admin, "pg_restore", "--no-owner", "--exit-on-error", "-d", shadow], stdin=handle)

    def drop(self, db):
        self.sql(f'DROP DATABASE IF EXISTS "{check_name(db)}" WITH (FORCE)')

    def stop_writes(self, db, marker):
        check_name(db)
        with open(marker, "w") as handle:
            json.dump({"engine": self.engine, "database": db, "since": stamp()}, handle)
        if self.pgbouncer:
            self._bouncer(f"PAUSE {db}")  # waits for running transactions, holds new ones
        self.sql(f'ALTER DATABASE "{db}" WITH ALLOW_CONNECTIONS false')
        self.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' "
                 "AND pid <> pg_backend_pid()")

    def resume_writes(self, db, marker):
        if self.exists(db):
            self.sql(f'ALTER DATABASE "{check_name(db)}" WITH ALLOW_CONNECTIONS true')
        if self.pgbouncer:
            self._bouncer(f"RESUME {db}", check=False)  # not paused (anymore) is fine
        if os.path.exists(marker):
            os.unlink(marker)

    def swap(self, db, shadow, keep_as):
        # One transaction: readers find the old database or the restored one, never neither.
        self.sql(f'BEGIN; ALTER DATABASE "{db}" RENAME TO "{check_name(keep_as)}"; '
                 f'ALTER DATABASE "{shadow}" RENAME TO "{db}"; COMMIT;')

    def _bouncer(self, command, check=True):
        port = str(self.pgbouncer.get("port", 6432))
        user = self.pgbouncer.get("admin_user", "postgres")
        run([*self.as_admin, "psql", "-X", "-q", "-h", "127.0.0.1", "-p", port, "-U", user, "-d", "pgbouncer",
             "-c", command], check=check)


class MariaDB:
    engine = "mariadb"
    ext = "sql"

    def __init__(self, params):
        self.client = ["mariadb", "--batch", "--skip-column-names"]

    def sql(self, query, db=None):
        out = run([*self.client, *([db] if db else []), "-e", query])
        return [line.split("\t") for line in out.stdout.decode().splitlines() if line]

    def exists(self, db):
        return bool(self.sql(f"SHOW DATABASES LIKE '{check_name(db)}'"))

    def size(self, db):
        rows = self.sql("SELECT coalesce(sum(data_length + index_length), 0) FROM information_schema.tables "
                        f"WHERE table_schema = '{check_name(db)}'")
        return int(float(rows[0][0]))

    def tables(self, db):
        rows = self.sql("SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
                        f"AND table_schema = '{check_name(db)}' ORDER BY 1")
        return [r[0] for r in rows]

    def fingerprint(self, db, counts_only=False):
        result = {}
        for table in self.tables(db):
            count = self.sql(f"SELECT count(*) FROM `{db}`.`{table}`")[0][0]
            result[table] = {"rows": int(count)}
            if not counts_only:
                result[table]["checksum"] = self.sql(f"CHECKSUM TABLE `{db}`.`{table}` EXTENDED")[0][1]
        return result

    def identity(self, db):
        # Tables keep their id when RENAME TABLE moves them: the live tables are the verified ones.
        rows = self.sql("SELECT group_concat(table_id ORDER BY name) FROM information_schema.innodb_sys_tables "
                        f"WHERE name LIKE '{check_name(db)}/%'")
        return rows[0][0] if rows else ""

    def dump(self, db, path, fast=False):
        with open(path, "wb") as handle:
            run([*(BESIDE if fast else []), "mariadb-dump", "--single-transaction", "--quick", "--routines",
                 "--triggers", "--hex-blob", "--skip-dump-date", db], stdout=handle)

    def readable(self, path):
        with open(path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - 200))
            if b"-- Dump completed" not in handle.read():
                raise DbError(f"{path} is truncated: no 'Dump completed' trailer")

    def restore_into(self, path, shadow):
        self.sql(f"CREATE DATABASE `{check_name(shadow)}`")
        with open(path, "rb") as handle:
            run([*self.client, shadow], stdin=handle)

    def drop(self, db):
        self.sql(f"DROP DATABASE IF EXISTS `{check_name(db)}`")

    def stop_writes(self, db, marker):
        with open(marker, "w") as handle:
            json.dump({"engine": self.engine, "database": db, "since": stamp()}, handle)
        self.sql("SET GLOBAL read_only = ON")  # the app's user has no READ ONLY ADMIN: its writes stop

    def resume_writes(self, db, marker):
        if os.path.exists(marker):
            self.sql("SET GLOBAL read_only = OFF")
            os.unlink(marker)

    def swap(self, db, shadow, keep_as):
        self.sql(f"CREATE DATABASE `{check_name(keep_as)}`")
        live, new = self.tables(db), self.tables(shadow)
        moves = [f"`{db}`.`{t}` TO `{keep_as}`.`{t}`" for t in live]
        moves += [f"`{shadow}`.`{t}` TO `{db}`.`{t}`" for t in new]
        # One RENAME TABLE statement is atomic: all tables move, or none.
        self.sql("RENAME TABLE " + ", ".join(moves))
        self.drop(shadow)  # empty now


ENGINES = {"postgresql": Postgres, "mariadb": MariaDB}


def engine_for(params):
    if params.get("engine") not in ENGINES:
        raise DbError(f"unknown engine {params.get('engine')!r}; valid: {', '.join(ENGINES)}")
    return ENGINES[params["engine"]](params)


# ---- backups ---------------------------------------------------------------------------------


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
        if (engine and manifest.get("engine") != engine) or (database and manifest.get("database") != database):
            continue
        found.append(manifest)
    return sorted(found, key=lambda m: m["time"])


def backup(params, kind="backup"):
    eng = engine_for(params)
    db = check_name(params["database"])
    backup_dir = params["backup_dir"]
    os.makedirs(backup_dir, mode=0o700, exist_ok=True)
    if not eng.exists(db):
        raise DbError(f"database {db!r} does not exist")
    need = eng.size(db)
    free = shutil.disk_usage(backup_dir).free
    if free < need:
        raise DbError(f"not enough free disk in {backup_dir}: {free} bytes free, the database takes {need}")
    backup_id = f"{eng.engine}-{db}-{stamp()}" + ("-safety" if kind == "safety" else "")
    path = os.path.join(backup_dir, f"{backup_id}.{eng.ext}")
    t0 = time.monotonic()
    tmp = path + ".partial"
    try:
        eng.dump(db, tmp, fast=kind == "safety")
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    os.replace(tmp, path)
    manifest = {
        "id": backup_id, "kind": kind, "time": stamp(), "engine": eng.engine, "database": db,
        "file": os.path.basename(path), "size": os.path.getsize(path), "sha256": sha256_of(path),
        "tables": eng.fingerprint(db), "dump_seconds": round(time.monotonic() - t0, 2),
    }
    with open(os.path.join(backup_dir, f"{backup_id}.manifest.json"), "w") as handle:
        json.dump(manifest, handle, indent=2)
    return manifest


def prune(params):
    """Keep the newest `keep` regular backups; safety backups are never pruned here."""
    keep = int(params.get("retention", 7))
    regular = [m for m in list_backups(params["backup_dir"], params["engine"], params["database"])
               if m.get("kind") == "backup"]
    removed = []
    for manifest in regular[: max(0, len(regular) - max(1, keep))]:
        for name in (manifest["file"], f"{manifest['id']}.manifest.json"):
            path = os.path.join(params["backup_dir"], name)
            if os.path.exists(path):
                os.unlink(path)
        removed.append(manifest["id"])
    return removed


def resolve(params):
    wanted = params.get("backup") or "latest"
    backups = list_backups(params["backup_dir"])
    mine = [m for m in backups if m["engine"] == params["engine"] and m["database"] == params["database"]
            and m.get("kind") == "backup"]
    if wanted == "latest":
        if not mine:
            raise DbError(f"no backup of {params['engine']} database {params['database']!r} in {params['backup_dir']}")
        return mine[-1]
    for manifest in backups:
        if manifest["id"] == wanted:
            if manifest["engine"] != params["engine"] or manifest["database"] != params["database"]:
                raise DbError(f"backup {wanted} is of {manifest['engine']} database {manifest['database']!r}, "
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


def restore(params, steps, check_mode=False):
    """One restore at a time on this host (a controller killed mid-run leaves its restore running)."""
    os.makedirs(params["backup_dir"], mode=0o700, exist_ok=True)
    with open(os.path.join(params["backup_dir"], ".mayday-restore.lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise DbError("another restore is still running on this host; wait for it, then run again") from exc
        return _restore(params, steps, check_mode)


def _restore(params, steps, check_mode=False):
    """Verify, safety backup, restore into shadow, verify, swap, verify. Returns a report dict."""
    eng = engine_for(params)
    db = check_name(params["database"])
    shadow = db + SHADOW_SUFFIX
    marker = os.path.join(params["backup_dir"], STATE_FILE)
    manifest = steps.run("resolve backup", resolve, params)
    path = steps.run("verify backup (sha256, readable, engine, database)", verify_backup, params, manifest)
    if os.path.exists(marker):
        steps.run("resume writes left stopped by an interrupted run", eng.resume_writes, db, marker)
    if check_mode:
        steps.skip("restore", "check mode")
        return {"backup": manifest["id"], "changed": False}
    if eng.exists(shadow):
        steps.run("drop the shadow left by an interrupted run", eng.drop, shadow)
    for name in sorted(os.listdir(params["backup_dir"])):
        if name.startswith(f"{eng.engine}-{db}-") and name.endswith(".partial"):
            steps.run(f"remove {name} left by an interrupted run", os.unlink, os.path.join(params["backup_dir"], name))
    # The safety backup reads the live database while the restore writes the shadow: both must
    # finish (and the safety backup succeed) before anything about the live database changes.
    with ThreadPoolExecutor(max_workers=1) as pool:
        safety_job = pool.submit(Steps.timed, "safety backup of the live database", backup, params, "safety")
        failure: Exception | None = None
        try:
            steps.run(f"restore {manifest['id']} into {shadow}", eng.restore_into, path, shadow)
            problems = steps.run("verify the shadow against the manifest",
                                 lambda: compare(manifest["tables"], eng.fingerprint(shadow)))
            if problems:
                failure = DbError("restored copy does not match the backup: " + "; ".join(problems[:5]))
        except DbError as exc:
            failure = exc
        safety_step, safety, safety_error = safety_job.result()
    steps.items.append(safety_step)
    failure = safety_error or failure
    if failure is not None:
        eng.drop(shadow)
        raise failure
    verified = eng.identity(shadow)
    keep_as = f"{db}__mayday_pre_{stamp()}"
    try:
        try:
            steps.run("stop writes", eng.stop_writes, db, marker)
            steps.run(f"swap in the restored database (old one kept as {keep_as})", eng.swap, db, shadow, keep_as)
        finally:
            steps.run("resume writes", eng.resume_writes, db, marker)
        # The live database must be the very one verified above, with every row count in place.
        problems = steps.run("verify the live database is the verified copy (identity, row counts)", lambda: (
            ([] if eng.identity(db) == verified else ["the live database is not the verified copy"])
            + compare({t: {"rows": v["rows"]} for t, v in manifest["tables"].items()},
                      eng.fingerprint(db, counts_only=True))))
        if problems:
            raise DbError("live database does not match the backup after the swap: " + "; ".join(problems[:5]))
    except DbError as exc:
        exc.live_touched = True
        raise
    return {"backup": manifest["id"], "safety_backup": safety["id"], "previous_kept_as": keep_as,
            "rows_restored": sum(t["rows"] for t in manifest["tables"].values()),
            "tables": len(manifest["tables"]), "changed": True}


# ---- webhook rows ----------------------------------------------------------------------------


def purge_recent(params, steps, check_mode=False):
    """Delete rows added in the last `minutes` from each table, saving them to a file first.

    MariaDB only (PyMySQL on the host). Values go in as query parameters; table and column names
    cannot, so they must exist in information_schema. One transaction: the rows are locked, written
    to disk and fsynced, then deleted; any mismatch rolls back.
    """
    if params["engine"] != "mariadb":
        raise DbError("the webhook rollback supports MariaDB; valid engines: mariadb")
    import pymysql  # only this path needs it: python3-pymysql on the DB host

    db = check_name(params["database"])
    minutes = int(params.get("minutes") or 60)
    column = check_name(params.get("time_column") or "created_at", "column")
    tables = [check_name(t, "table") for t in params.get("tables") or []]
    if not tables:
        raise DbError("no webhook tables configured (mayday_webhook.tables)")
    conn = pymysql.connect(unix_socket=params.get("socket") or "/run/mysqld/mysqld.sock", user="root",
                           database=db, autocommit=False, charset="utf8mb4")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT table_name FROM information_schema.columns WHERE table_schema = %s "
                        "AND column_name = %s", (db, column))
            known = {row[0] for row in cur.fetchall()}
            missing = [t for t in tables if t not in known]
            if missing:
                raise DbError(f"tables without a {column} column in {db}: {', '.join(missing)}; "
                              f"valid: {', '.join(sorted(known)) or 'none'}")
            cur.execute("SELECT NOW() - INTERVAL %s MINUTE, NOW()", (minutes,))
            since, until = cur.fetchone()
            report: dict = {"since": str(since), "until": str(until), "tables": {}, "files": []}
            os.makedirs(params["backup_dir"], mode=0o700, exist_ok=True)
            for table in tables:
                query = f"FROM `{table}` WHERE `{column}` > %s AND `{column}` <= %s"
                cur.execute(f"SELECT * {query} FOR UPDATE", (since, until))
                names = [d[0] for d in cur.description]
                rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
                report["tables"][table] = len(rows)
                if check_mode or not rows:
                    continue
                path = os.path.join(params["backup_dir"], f"webhook-{db}-{table}-{stamp()}.jsonl")
                steps.run(f"save {len(rows)} rows of {table} to {path}", _write_rows, path, rows)
                report["files"].append(path)
                deleted = steps.run(f"delete them from {table}", cur.execute, f"DELETE {query}", (since, until))
                if deleted != len(rows):
                    raise DbError(f"{table}: {deleted} rows matched the delete, {len(rows)} were saved")
        if check_mode:
            conn.rollback()
        else:
            conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()
    report["deleted"] = 0 if check_mode else sum(report["tables"].values())
    return report


def _write_rows(path, rows):
    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(path, 0o600)
    return f"{len(rows)} rows"
