# MariaDB on the DB host: SQL, dump, restore, stop/resume writes, atomic swap.
# Shipped to the host as ansible.module_utils.mayday_db_mariadb.
#
# Names read from the server (tables, columns, views...) may hold any character: they reach SQL
# only as backtick-quoted identifiers (quote_ident) and values only as PyMySQL parameters, one
# statement at a time. `sql()` (the mariadb client) is kept for constant queries only.
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import subprocess
import tempfile
import time

try:
    from ansible.module_utils.mayday_db_common import BESIDE, DbError, run, stamp, timeouts
except ImportError:  # imported directly (unit tests, bench)
    from mayday_db_common import BESIDE, DbError, run, stamp, timeouts  # type: ignore[no-redef]

SOCKET = "/run/mysqld/mysqld.sock"
SWAPPED_TYPES = ("BASE TABLE", "SYSTEM VERSIONED")  # what RENAME TABLE moves and the fingerprint covers
# Lines mariadb-dump writes only after its START TRANSACTION WITH CONSISTENT SNAPSHOT (the header
# before it has no such line). Its stdout is line-buffered (stdbuf -oL), so they show at once.
PAST_SNAPSHOT = re.compile(rb"^-- (Table structure|Temporary table structure|Dumping|Dump completed)", re.M)
HEAD_BYTES = 1 << 16
# SHOW CREATE <kind>: which result columns describe the object (not its database, not a timestamp).
SHOW_CREATE = {
    "view": ("VIEW", (1,)),
    "procedure": ("PROCEDURE", (1, 2, 3, 4)),
    "function": ("FUNCTION", (1, 2, 3, 4)),
    "package": ("PACKAGE", (1, 2, 3, 4)),
    "package body": ("PACKAGE BODY", (1, 2, 3, 4)),
    "trigger": ("TRIGGER", (1, 2, 3, 4)),
    "event": ("EVENT", (1, 2, 3, 4, 5)),
}


def quote_ident(name):
    """A backtick-quoted identifier: any character but NUL, backticks doubled."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise DbError(f"not a usable identifier: {name!r}")
    return "`" + name.replace("`", "``") + "`"


def definition_key(kind, name):
    # Identifiers cannot end with a space: no table is ever named like this.
    return f"@{kind} {quote_ident(name)} "


def is_definition_key(key):
    return key.startswith("@") and key.endswith(" ")


def row_hash_sql(table_ref, columns):
    """Count and order-independent hash of every row: the sum of a 64-bit hash (MD5's first 16 hex
    digits) per row over all columns, each as its bytes with their length before them, NULL as
    'n' (no value encodes to that). Bytes, not text: no collation mix, no length limit."""
    if not columns:
        raise DbError(f"{table_ref} has no columns")
    parts = ", ".join(f"IFNULL(CONCAT(LENGTH({q}), ':', CAST({q} AS BINARY)), 'n')"
                      for q in map(quote_ident, columns))
    return (f"SELECT COUNT(*), COALESCE(SUM(CAST(CONV(LEFT(MD5(CONCAT({parts})), 16), 16, 10) AS UNSIGNED)), 0) "
            f"FROM {table_ref}")


def columns_digest(columns):
    """The table's shape (names and types, in order): a dropped or retyped column changes the checksum."""
    return hashlib.sha256(json.dumps(columns).encode()).hexdigest()[:16]


def fingerprinted_here(tables):
    """Whether a manifest's "tables" come from this fingerprint (checksums "<shape>:<sum>", and
    definition entries), not from CHECKSUM TABLE."""
    return any(is_definition_key(k) or ":" in str(v.get("checksum", "")) for k, v in tables.items())


def past_snapshot(head):
    return bool(PAST_SNAPSHOT.search(head))


def compare_definitions(live, backup):
    """Definition entries ('@...' keys) that differ: [(key, why)]."""
    out = []
    for key in sorted(set(live) | set(backup)):
        if key not in backup:
            out.append((key, "only in the live database"))
        elif key not in live:
            out.append((key, "only in the backup"))
        elif live[key].get("checksum") != backup[key].get("checksum"):
            out.append((key, "defined differently"))
    return out


class MariaDB:
    engine = "mariadb"
    ext = "sql"
    max_name = 64  # characters in a database or table name

    def __init__(self, params):
        self.client = ["mariadb", "--batch", "--skip-column-names"]
        self.params = params
        self.timeouts = timeouts(params)
        self.socket = params.get("socket") or SOCKET
        self.last_blocked_seconds = None  # how long the last dump held writes (FLUSH TABLES WITH READ LOCK)

    # --- connections ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def connect(self, db=None, read_timeout=None):
        """Root over the unix socket; every lock wait bounded by the "lock" timeout."""
        import pymysql  # python3-pymysql on the DB host; the controller never connects

        lock = max(1, math.ceil(self.timeouts["lock"]))
        try:
            conn = pymysql.connect(unix_socket=self.socket, user="root", database=db, autocommit=True,
                                   charset="utf8mb4", connect_timeout=lock,
                                   read_timeout=read_timeout or self.timeouts["lock"] + 30,
                                   init_command=f"SET SESSION lock_wait_timeout = {lock}, "
                                                f"innodb_lock_wait_timeout = {lock}")
        except pymysql.MySQLError as exc:
            raise DbError(f"cannot connect to MariaDB on {self.socket}: {exc}") from exc
        try:
            yield conn
        finally:
            conn.close()

    def query(self, conn, statement, args=None, waiting_for=""):
        """One statement, values as parameters; lock wait timeouts say what they waited on."""
        import pymysql

        try:
            with conn.cursor() as cur:
                cur.execute(statement, args)
                return list(cur.fetchall())
        except pymysql.MySQLError as exc:
            code = exc.args[0] if exc.args else None
            if waiting_for and code in (1205, 1969, 2013):  # lock wait, max_statement_time, lost (read timeout)
                raise DbError(f"timed out after {self.timeouts['lock']:g} s waiting for {waiting_for}: {exc}") from exc
            raise DbError(f"MariaDB: {exc}") from exc

    def one(self, statement, args=None, db=None, waiting_for=""):
        with self.connect(db) as conn:
            return self.query(conn, statement, args, waiting_for)

    def sql(self, query, db=None):
        """Constant SQL only (never built from names or values): tab-separated rows."""
        out = run([*self.client, *([db] if db else []), "-e", query], timeout=self.timeouts["lock"] + 30)
        return [line.split("\t") for line in out.stdout.decode().splitlines() if line]

    # --- reading -------------------------------------------------------------------------------

    def databases(self):
        return [r[0] for r in self.one("SELECT schema_name FROM information_schema.schemata")]

    def exists(self, db):
        rows = self.one("SELECT schema_name FROM information_schema.schemata WHERE schema_name = %s", (db,))
        return any(r[0] == db for r in rows)  # the column's collation ignores case and trailing spaces

    def data_dir(self):
        return self.one("SELECT @@datadir")[0][0]

    def size(self, db):
        rows = self.one("SELECT table_schema, coalesce(data_length, 0) + coalesce(index_length, 0) "
                        "FROM information_schema.tables WHERE table_schema = %s", (db,))
        return int(sum(r[1] for r in rows if r[0] == db))

    def _tables(self, conn, db):
        rows = self.query(conn, "SELECT table_schema, table_name, table_type FROM information_schema.tables "
                                "WHERE table_schema = %s", (db,))
        return sorted(r[1] for r in rows if r[0] == db and r[2] in SWAPPED_TYPES)

    def tables(self, db):
        with self.connect() as conn:
            return self._tables(conn, db)

    def _columns(self, conn, db):
        rows = self.query(conn, "SELECT table_schema, table_name, column_name, column_type "
                                "FROM information_schema.columns WHERE table_schema = %s "
                                "ORDER BY table_name, ordinal_position", (db,))
        found: dict = {}
        for schema, table, column, ctype in rows:
            if schema == db:
                found.setdefault(table, []).append([column, ctype])
        return found

    def _objects(self, conn, db):
        """(kind, name) of every view, routine, trigger and event in `db`."""
        found = []
        for query in ("SELECT table_schema, table_name, 'view' FROM information_schema.views WHERE table_schema = %s",
                      "SELECT routine_schema, routine_name, lower(routine_type) FROM information_schema.routines "
                      "WHERE routine_schema = %s",
                      "SELECT trigger_schema, trigger_name, 'trigger' FROM information_schema.triggers "
                      "WHERE trigger_schema = %s",
                      "SELECT event_schema, event_name, 'event' FROM information_schema.events "
                      "WHERE event_schema = %s"):
            found += [(kind, name) for schema, name, kind in self.query(conn, query, (db,))
                      if schema == db and kind in SHOW_CREATE]
        return sorted(found)

    def _definitions(self, conn, db):
        """'@kind `name` ' -> checksum of its definition as SHOW CREATE gives it inside `db` (so
        independent of the database's name), with rows 0 so row sums and count checks hold."""
        self.query(conn, f"USE {quote_ident(db)}")
        result: dict = {}
        for kind, name in self._objects(conn, db):
            keyword, fields = SHOW_CREATE[kind]
            rows = self.query(conn, f"SHOW CREATE {keyword} {quote_ident(name)}")
            if not rows:
                continue  # dropped meanwhile
            text = json.dumps([rows[0][i] for i in fields], default=str)
            result[definition_key(kind, name)] = {"rows": 0, "checksum": hashlib.sha256(text.encode()).hexdigest()}
        return result

    def _fingerprint(self, conn, db, counts_only=False):
        result: dict = {}
        columns = self._columns(conn, db)
        for table in self._tables(conn, db):
            ref = f"{quote_ident(db)}.{quote_ident(table)}"
            if counts_only:
                result[table] = {"rows": int(self.query(conn, f"SELECT COUNT(*) FROM {ref}")[0][0])}
                continue
            count, total = self.query(conn, row_hash_sql(ref, [c for c, _ in columns.get(table, [])]))[0]
            result[table] = {"rows": int(count), "checksum": f"{columns_digest(columns.get(table))}:{total}"}
        for key, value in self._definitions(conn, db).items():
            result[key] = {"rows": 0} if counts_only else value
        return result

    def fingerprint(self, db, counts_only=False):
        """Per table: rows and a hash over every row and the columns; per view, routine, trigger and
        event: its definition. All tables read in one consistent snapshot."""
        with self.connect(read_timeout=self.timeouts["dump"]) as conn:
            self.query(conn, "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            self.query(conn, "START TRANSACTION WITH CONSISTENT SNAPSHOT")
            try:
                return self._fingerprint(conn, db, counts_only)
            finally:
                conn.rollback()

    def identity(self, db):
        # Tables keep their id when RENAME TABLE moves them: the live tables are the verified ones.
        like = db.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"
        rows = self.one("SELECT name, table_id FROM information_schema.innodb_sys_tables WHERE name LIKE %s",
                        (like,))
        return ",".join(str(i) for n, i in sorted(rows) if n.startswith(db + "/"))

    # --- backup ----------------------------------------------------------------------------------

    def dump_command(self, db, fast=False):
        return [*(BESIDE if fast else []), "stdbuf", "-oL", "mariadb-dump", "--single-transaction", "--quick",
                "--routines", "--triggers", "--events", "--hex-blob", "--skip-dump-date", "--", db]

    def dump_with_fingerprint(self, db, path, fast=False):
        """Dump `db` to `path` (created 0600); return the fingerprint of exactly what the dump holds.

        A session holds FLUSH TABLES WITH READ LOCK (no commit anywhere) while this session starts
        its consistent snapshot and mariadb-dump starts its own (until its output passes the
        header); then writes resume and both read the same snapshot: the fingerprint is taken in
        ours while the dump runs. Writes wait only for the dump's start (tens of milliseconds)."""
        self._name_fits(db)
        limit = self.timeouts["dump"]
        started = time.monotonic()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:  # a leftover or a symlink planted there: never write through it
            raise DbError(f"cannot create the dump file {path}: {exc.strerror}") from exc
        with os.fdopen(fd, "wb") as out, tempfile.TemporaryFile() as err, \
                self.connect(read_timeout=limit) as snap, self.connect() as lock:
            self.query(snap, "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            proc = None
            self.query(lock, "FLUSH TABLES WITH READ LOCK", waiting_for="FLUSH TABLES WITH READ LOCK (running "
                             "writes and statements to finish) before the dump's snapshot")
            held = time.monotonic()
            try:
                self.query(snap, "START TRANSACTION WITH CONSISTENT SNAPSHOT")
                proc = subprocess.Popen(self.dump_command(db, fast), stdout=out, stderr=err)
                self._wait_past_snapshot(path, proc)
            except BaseException:
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
                raise
            finally:
                self.query(lock, "UNLOCK TABLES")
                self.last_blocked_seconds = round(time.monotonic() - held, 4)
            try:
                tables = self._fingerprint(snap, db)
                snap.rollback()
                proc.wait(timeout=max(1.0, limit - (time.monotonic() - started)))
            except subprocess.TimeoutExpired as exc:
                raise DbError(f"timed out after {limit:g} s waiting for mariadb-dump of {db}") from exc
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if proc.returncode != 0:
                err.seek(0)
                raise DbError(f"mariadb-dump {db} failed: {err.read().decode(errors='replace').strip()[-500:]}")
        return tables

    def _wait_past_snapshot(self, path, proc):
        deadline = time.monotonic() + self.timeouts["lock"]
        while True:
            with open(path, "rb") as handle:
                if past_snapshot(handle.read(HEAD_BYTES)):
                    return
            if proc.poll() is not None:
                return  # finished (or failed) while no write could commit: same snapshot either way
            if time.monotonic() > deadline:
                raise DbError(f"timed out after {self.timeouts['lock']:g} s waiting for mariadb-dump to start "
                              "its snapshot (writes were held meanwhile, now released)")
            time.sleep(0.002)

    def readable(self, path):
        with open(path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - 200))
            if b"-- Dump completed" not in handle.read():
                raise DbError(f"{path} is truncated: no 'Dump completed' trailer")

    # --- restore ---------------------------------------------------------------------------------

    def _name_fits(self, *names):
        for name in names:
            quote_ident(name)
            if len(name) > self.max_name:
                raise DbError(f"{name!r} has {len(name)} characters; MariaDB names take {self.max_name} at most")
        return names[-1]

    def _schemas(self, conn):
        return {r[0] for r in self.query(conn, "SELECT schema_name FROM information_schema.schemata")}

    def _blockers(self, conn, db, other, other_defs):
        """Why swapping `db` with `other` (definitions `other_defs`; None: unknown) cannot be atomic,
        and the views, routines and events that are the same on both sides."""
        live_defs = self._definitions(conn, db) if db in self._schemas(conn) else {}
        problems = []
        triggers = sorted(k.strip() for k in (*live_defs, *(other_defs or {})) if k.startswith("@trigger "))
        if triggers:
            rows = self.query(conn, "SELECT trigger_schema, trigger_name, event_object_table "
                                    "FROM information_schema.triggers WHERE trigger_schema = %s", (db,))
            on = sorted(f"table {quote_ident(t)} (trigger {quote_ident(n)})" for s, n, t in rows if s == db)
            problems.append(
                f"triggers ({', '.join(on) or ', '.join(triggers)}"
                f"{'' if on else ' in ' + other}): RENAME TABLE cannot move a table with triggers to "
                "another database. Save the triggers (SHOW CREATE TRIGGER), drop them, restore, then "
                "recreate them")
        rows = self.query(conn, "SELECT table_schema, table_name FROM information_schema.tables "
                                "WHERE table_schema = %s AND table_type = 'SEQUENCE'", (db,))
        sequences = sorted(quote_ident(n) for s, n in rows if s == db)
        if sequences:
            # Not in the swap (only tables move): the restored tables would run without them.
            problems.append(
                f"sequences ({', '.join(sequences)}): the swap moves tables only, and a sequence's cached "
                "value does not survive a dump as it was. Restore this database by hand (mariadb < dump into "
                "a new database), or drop the sequences, restore, then recreate them at their values")
        if other_defs is None:
            return problems, []
        differ = [(k, why) for k, why in compare_definitions(live_defs, other_defs) if not k.startswith("@trigger ")]
        if differ:
            problems.append(
                f"views, routines or events differ between the live database and {other} ("
                + "; ".join(f"{k.strip()} {why}" for k, why in differ[:10]) + "): they stay in the live "
                "database during the swap, so the restored tables would run with the live ones. Make them "
                "identical to the backup's (recreate them from the backup file), then restore")
        same = sorted(k.strip() for k in set(live_defs) & set(other_defs) if not k.startswith("@trigger "))
        return problems, same

    def preflight_restore(self, db, shadow, keep_as, expected=None):
        """Raise DbError, before anything changes, for whatever would make the swap fail or not be
        atomic. `expected`: the backup manifest's "tables" (its definition entries; by default the
        manifest of the backup the params name). swap() checks again against the restored shadow."""
        self._name_fits(db, shadow, keep_as)
        if expected is None and self.params.get("backup_dir"):
            expected = self._backup_tables()
        if expected is not None and not fingerprinted_here(expected):
            expected = None  # a manifest from before definitions were recorded: they are unknown
        with self.connect() as conn:
            if expected is not None:
                other, other_defs = "the backup", {k: v for k, v in expected.items() if is_definition_key(k)}
            elif shadow in self._schemas(conn):
                other, other_defs = shadow, self._definitions(conn, shadow)
            else:
                other, other_defs = "the backup", None
            problems, same = self._blockers(conn, db, other, other_defs)
        if problems:
            raise DbError("the swap cannot be atomic: " + " Also: ".join(problems))
        if same:
            return f"{', '.join(same)}: identical in the live database and {other}, they stay in place"
        return "no triggers: every table moves in one RENAME TABLE"

    def _backup_tables(self):
        try:  # imported here: mayday_db_backups imports the engines
            from ansible.module_utils.mayday_db_backups import resolve
        except ImportError:
            from mayday_db_backups import resolve  # type: ignore[no-redef]
        return resolve(self.params).get("tables") or {}

    def restore_into(self, path, shadow):
        self._name_fits(shadow)
        lock = max(1, math.ceil(self.timeouts["lock"]))
        with self.connect() as conn:
            self.query(conn, f"CREATE DATABASE {quote_ident(shadow)}", waiting_for=f"CREATE DATABASE {shadow}")
        with open(path, "rb") as handle:
            run([*self.client, f"--init-command=SET SESSION lock_wait_timeout = {lock}", shadow], stdin=handle,
                timeout=self.timeouts["restore"], waiting_for=f"restoring {os.path.basename(path)} into {shadow}")

    def drop(self, db):
        with self.connect(read_timeout=self.timeouts["restore"]) as conn:  # removing big files takes time
            self.query(conn, f"DROP DATABASE IF EXISTS {quote_ident(self._name_fits(db))}",
                       waiting_for=f"DROP DATABASE {db} (sessions using its tables)")

    def opened(self, db):
        """No per-database connection gate here: a kept database is readable as it is."""
        return contextlib.nullcontext()

    def stop_writes(self, db, marker):
        # Already read-only (db_read_only under a lease): resuming must leave it so, the lease ends it.
        was = str(self.one("SELECT @@global.read_only")[0][0]) == "1"
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"engine": self.engine, "database": db, "since": stamp(), "was_read_only": was}, handle)
        # The app's user has no READ ONLY ADMIN: its writes stop. Waits for running write statements
        # and commits (bounded by lock_wait_timeout); the caller resumes writes after a timeout.
        with self.connect() as conn:
            self.query(conn, f"SET STATEMENT max_statement_time = {float(self.timeouts['lock']):g} FOR "
                             "SET GLOBAL read_only = ON",
                       waiting_for="SET GLOBAL read_only = ON (running write statements and commits to finish)")

    def resume_writes(self, db, marker):
        if os.path.exists(marker):
            try:
                with open(marker) as handle:
                    was = json.load(handle).get("was_read_only") is True
            except (OSError, ValueError, AttributeError):
                was = False  # unreadable: resume, as before the marker said more
            if not was:
                with self.connect() as conn:
                    self.query(conn, "SET GLOBAL read_only = OFF")
            os.unlink(marker)

    def swap(self, db, shadow, keep_as):
        self._name_fits(db, shadow, keep_as)
        with self.connect() as conn:
            # Re-checked on the real shadow, before anything changes (the caller resumes writes).
            problems, _ = self._blockers(conn, db, shadow, self._definitions(conn, shadow))
            if problems:
                raise DbError("the swap cannot be atomic: " + " Also: ".join(problems))
            live, new = self._tables(conn, db), self._tables(conn, shadow)
            self.query(conn, f"CREATE DATABASE {quote_ident(keep_as)}",
                       waiting_for=f"CREATE DATABASE {keep_as}")
            moves = [f"{quote_ident(db)}.{quote_ident(t)} TO {quote_ident(keep_as)}.{quote_ident(t)}" for t in live]
            moves += [f"{quote_ident(shadow)}.{quote_ident(t)} TO {quote_ident(db)}.{quote_ident(t)}" for t in new]
            # One RENAME TABLE statement is atomic: all tables move, or none.
            try:
                if moves:
                    self.query(conn, "RENAME TABLE " + ", ".join(moves),
                               waiting_for=f"RENAME TABLE (sessions using the tables of {db} or {shadow})")
            except DbError:
                with contextlib.suppress(DbError):  # still empty: nothing moved
                    self.query(conn, f"DROP DATABASE {quote_ident(keep_as)}")
                raise
        self.drop(shadow)  # only its views, routines and events are left
