# The database engines mayday drives on the DB host (PostgreSQL, MariaDB) and pgbouncer's admin
# console: SQL, dump, restore, stop/resume writes, atomic swap. No AnsibleModule: shipped to the
# host as ansible.module_utils.mayday_db_engines, imported directly by the tests.
from __future__ import annotations

import json
import os
import re
import subprocess
import time

BESIDE = ["nice", "-n", "10"]  # a job that runs beside the restore, at lower CPU priority
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")  # fullmatch: "$" would let a trailing newline in


class DbError(Exception):
    """A refusal or failure. Whether the host changed is tracked by the caller's `changes` list."""

    live_touched = False


def stamp():
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def check_name(name, what="database"):
    # Names go into SQL as identifiers: only plain ones, short enough for the suffixes we add.
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise DbError(f"{what} name {name!r} is not a plain identifier (letters, digits, _)")
    return name


def run(cmd, stdin=None, stdout=None, check=True):
    out = subprocess.run(cmd, stdin=stdin, stdout=stdout if stdout is not None else subprocess.PIPE,
                         stderr=subprocess.PIPE, check=False)
    if check and out.returncode != 0:
        raise DbError(f"{' '.join(cmd[:4])} failed: {out.stderr.decode(errors='replace').strip()[-500:]}")
    return out


class PgBouncer:
    """pgbouncer's admin console on loopback: PAUSE/RESUME a database, SHOW its state."""

    def __init__(self, as_admin, port=6432, admin_user="postgres"):
        self.as_admin = list(as_admin)
        self.port = str(port)
        self.admin_user = admin_user

    def command(self, command, check=True):
        return run([*self.as_admin, "psql", "-X", "-q", "-A", "-F", "\t", "-P", "footer=off",
                    "-h", "127.0.0.1", "-p", self.port, "-U", self.admin_user, "-d", "pgbouncer",
                    "-c", command], check=check)

    def pause(self, db):
        self.command(f"PAUSE {check_name(db)}")  # waits for running transactions, holds new ones

    def resume(self, db, check=False):
        self.command(f"RESUME {check_name(db)}", check=check)  # not paused (anymore) is fine

    def show(self, what="DATABASES"):
        """SHOW <what> as a list of dicts (header row as keys)."""
        if what.upper() not in ("DATABASES", "POOLS", "CLIENTS", "SERVERS", "STATS", "CONFIG"):
            raise DbError(f"SHOW {what!r} is not supported; valid: DATABASES, POOLS, CLIENTS, SERVERS, STATS, CONFIG")
        lines = [line for line in self.command(f"SHOW {what.upper()}").stdout.decode().splitlines() if line]
        if not lines:
            return []
        header = lines[0].split("\t")
        return [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:]]


class Postgres:
    engine = "postgresql"
    ext = "pgdump"

    def __init__(self, params):
        self.as_admin = ["runuser", "-u", params.get("admin_user") or "postgres", "--"]
        bouncer = params.get("pgbouncer") or {}
        self.bouncer = (PgBouncer(self.as_admin, bouncer.get("port", 6432), bouncer.get("admin_user", "postgres"))
                        if bouncer else None)

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
        if self.bouncer:
            self.bouncer.pause(db)
        self.sql(f'ALTER DATABASE "{db}" WITH ALLOW_CONNECTIONS false')
        self.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' "
                 "AND pid <> pg_backend_pid()")

    def resume_writes(self, db, marker):
        if self.exists(db):
            self.sql(f'ALTER DATABASE "{check_name(db)}" WITH ALLOW_CONNECTIONS true')
        if self.bouncer:
            self.bouncer.resume(db)
        if os.path.exists(marker):
            os.unlink(marker)

    def swap(self, db, shadow, keep_as):
        # One transaction: readers find the old database or the restored one, never neither.
        self.sql(f'BEGIN; ALTER DATABASE "{check_name(db)}" RENAME TO "{check_name(keep_as)}"; '
                 f'ALTER DATABASE "{check_name(shadow)}" RENAME TO "{db}"; COMMIT;')


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
