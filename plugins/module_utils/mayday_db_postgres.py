# PostgreSQL and pgbouncer's admin console on the DB host: SQL, dump, restore, stop/resume
# writes, atomic swap. Shipped to the host as ansible.module_utils.mayday_db_postgres.
#
# SQL goes through a driver session (psycopg2) run as the postgres OS user (peer auth over the
# unix socket; the module runs as root, so the session is a child `runuser -u postgres -- python3`
# speaking JSON lines). Values travel as parameters; identifiers are double-quoted by ident().
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import re
import select
import subprocess
import tempfile
import time

try:
    from ansible.module_utils.mayday_db_common import BESIDE, DbError, check_name, run, stamp, timeouts
except ImportError:  # imported directly (unit tests, bench)
    from mayday_db_common import BESIDE, DbError, check_name, run, stamp, timeouts  # type: ignore[no-redef]

# The session's other end: one JSON request per line ({"sql", "args"}), one JSON reply per line.
# args null: the text is sent as is (no %-formatting), so a `%` in a quoted identifier is safe.
AGENT = r"""
import json, sys
import psycopg2
conn = psycopg2.connect(dbname=sys.argv[1])
conn.autocommit = True
def plain(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return str(v)
sys.stdout.write(json.dumps({"ready": True}) + "\n")
sys.stdout.flush()
for line in sys.stdin:
    req = json.loads(line)
    try:
        with conn.cursor() as cur:
            cur.execute(req["sql"], req.get("args"))
            rows = [[plain(v) for v in row] for row in cur.fetchall()] if cur.description else []
        reply = {"rows": rows}
    except psycopg2.Error as exc:
        reply = {"error": (exc.pgerror or str(exc)).strip(), "code": exc.pgcode}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
"""

MAX_NAME = 63  # NAMEDATALEN - 1 bytes; longer names are silently truncated by the server
DB_PRIVILEGES = frozenset({"CREATE", "CONNECT", "TEMPORARY"})
# Settings whose value is a list (pg_dump quotes each element of these, as we do).
LIST_SETTINGS = frozenset({"search_path", "temp_tablespaces", "session_preload_libraries",
                           "shared_preload_libraries", "local_preload_libraries"})
SETVAL = re.compile(r"^SELECT pg_catalog\.setval\('((?:[^']|'')*)', (-?\d+), (true|false)\);$", re.M)
SEQUENCE_SET = re.compile(r"^(\d+); \d+ \d+ SEQUENCE SET ", re.M)


def ident(name):
    """An SQL identifier, double-quoted (embedded quotes doubled): any name, never parsed as SQL."""
    if not isinstance(name, str) or "\x00" in name or not name:
        raise DbError(f"{name!r} cannot be an SQL identifier")
    return '"' + name.replace('"', '""') + '"'


def pct(text):
    """Text that goes to psycopg2 with parameters: its own `%` doubled."""
    return text.replace("%", "%%")


def qualified(schema, name):
    return f"{ident(schema)}.{ident(name)}"


def setting_values(name, value):
    """The value(s) of one `name=value` item of pg_db_role_setting, as ALTER ... SET takes them."""
    if name not in LIST_SETTINGS:
        return [value]
    items, current, quoted, i = [], "", False, 0
    while i < len(value):
        char = value[i]
        if quoted and char == '"' and value[i + 1:i + 2] == '"':
            current, i = current + '"', i + 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            items.append(current.strip())
            current = ""
        else:
            current += char
        i += 1
    items.append(current.strip())
    return [item for item in items if item]


def checksum(items):
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()


def too_long(*names):
    return [name for name in names if len(name.encode()) > MAX_NAME]


class Session:
    """One database session as the postgres OS user; `query` waits at most `timeout` seconds."""

    def __init__(self, as_admin, db, timeout=None):
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the session; close() closes it
        self.proc = subprocess.Popen([*as_admin, "python3", "-c", AGENT, db], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err)
        self._buf = b""
        try:
            self._reply(timeout or 60, f"a session on database {db!r}")
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.proc.poll() is None:
            try:
                if self.proc.stdin:
                    self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._err.close()

    def _reply(self, timeout, waiting_for):
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                self.proc.kill()  # the server ends the statement when it notices (or at statement_timeout)
                raise DbError(f"timed out after {timeout} s waiting for {waiting_for}")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                self.proc.wait()
                self._err.seek(0)
                raise DbError(f"the session ended while waiting for {waiting_for}: "
                              f"{self._err.read().decode(errors='replace').strip()[-500:]}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def query(self, sql, args=None, timeout=None, waiting_for=""):
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"sql": sql, "args": args}).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise DbError(f"the session ended: {exc}") from exc
        reply = self._reply(timeout, waiting_for or "the server")
        if "error" in reply:
            if reply.get("code") in ("55P03", "57014"):  # lock_not_available, query_canceled (statement_timeout)
                raise DbError(f"timed out waiting for {waiting_for or 'the server'}: {reply['error']}")
            raise DbError(reply["error"])
        return reply["rows"]


class PgBouncer:
    """pgbouncer's admin console on loopback: PAUSE/RESUME a database, SHOW its state."""

    def __init__(self, as_admin, port=6432, admin_user="postgres", pause_timeout=30.0):
        self.as_admin = list(as_admin)
        self.port = str(port)
        self.admin_user = admin_user
        self.pause_timeout = pause_timeout

    def command(self, command, check=True, timeout=30.0, waiting_for=""):
        return run([*self.as_admin, "psql", "-X", "-q", "-A", "-F", "\t", "-P", "footer=off",
                    "-h", "127.0.0.1", "-p", self.port, "-U", self.admin_user, "-d", "pgbouncer",
                    "-c", command], check=check, timeout=timeout, waiting_for=waiting_for)

    def pause(self, db):
        # Waits for running transactions and holds new ones: bounded, a client may sit in a transaction.
        self.command(f"PAUSE {check_name(db)}", timeout=self.pause_timeout,
                     waiting_for="pgbouncer PAUSE (clients still in transactions)")

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


# Fingerprint entries beyond the tables: keys start with "@" (a table key is schema.name, never "@...").
# Each query returns one row of JSON; none depends on the database's name or oid.
GRANTEE = "CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END"
ACL = ("(SELECT coalesce(json_agg(json_build_array(" + GRANTEE + ", a.privilege_type, a.is_grantable) "
       "ORDER BY " + GRANTEE + ", a.privilege_type), '[]') "
       "FROM aclexplode(coalesce({acl}, acldefault({kind}, {owner}))) a)")
USER_NS = ("{ns} NOT IN ('pg_catalog', 'information_schema') AND {ns} NOT LIKE 'pg\\_toast%' "
           "AND {ns} NOT LIKE 'pg\\_temp%'")
META = {
    "@database": (
        "SELECT json_build_object('owner', pg_get_userbyid(d.datdba), 'encoding', pg_encoding_to_char(d.encoding), "
        "'collate', d.datcollate, 'ctype', d.datctype, 'acl', "
        + ACL.format(acl="d.datacl", kind="'d'", owner="d.datdba")
        + ", 'settings', (SELECT coalesce(json_agg(json_build_array(CASE s.setrole WHEN 0 THEN '' "
        "ELSE pg_get_userbyid(s.setrole) END, f.config)), '[]') "
        # mayday's own read-only switch (db_read_only) is not the data: a restore carries it over from
        # the live database, so a database read-only under a lease stays read-only across the swap.
        "FROM pg_db_role_setting s CROSS JOIN LATERAL (SELECT array_agg(c ORDER BY n) AS config "
        "FROM unnest(s.setconfig) WITH ORDINALITY u(c, n) "
        "WHERE split_part(c, '=', 1) <> 'default_transaction_read_only') f "
        "WHERE s.setdatabase = d.oid AND f.config IS NOT NULL))::text "
        "FROM pg_database d WHERE d.datname = current_database()"),
    "@schemas": (
        "SELECT coalesce(json_agg(json_build_array(n.nspname, pg_get_userbyid(n.nspowner), "
        + ACL.format(acl="n.nspacl", kind="'n'", owner="n.nspowner")
        + ") ORDER BY n.nspname), '[]')::text FROM pg_namespace n WHERE " + USER_NS.format(ns="n.nspname")),
    "@relations": (  # tables, views, sequences...: owner and grants
        "SELECT coalesce(json_agg(json_build_array(n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner), "
        + ACL.format(acl="c.relacl", kind="CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::\"char\"", owner="c.relowner")
        + ") ORDER BY n.nspname, c.relname), '[]')::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND " + USER_NS.format(ns="n.nspname")),
    "@routines": (  # functions and procedures: owner, grants, definition
        "SELECT coalesce(json_agg(json_build_array(p.oid::regprocedure::text, pg_get_userbyid(p.proowner), "
        + ACL.format(acl="p.proacl", kind="'f'", owner="p.proowner")
        + ", md5(CASE WHEN p.prokind = 'a' THEN p.proname ELSE pg_get_functiondef(p.oid) END))), '[]')::text "
        "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE " + USER_NS.format(ns="n.nspname")),
    "@views": (
        "SELECT coalesce(json_agg(json_build_array(n.nspname, c.relname, md5(pg_get_viewdef(c.oid))) "
        "ORDER BY n.nspname, c.relname), '[]')::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('v', 'm') AND " + USER_NS.format(ns="n.nspname")),
    "@triggers": (
        "SELECT coalesce(json_agg(json_build_array(t.tgrelid::regclass::text, t.tgname, t.tgenabled, "
        "md5(pg_get_triggerdef(t.oid)))), '[]')::text FROM pg_trigger t WHERE NOT t.tgisinternal"),
    "@extensions": (
        "SELECT coalesce(json_agg(json_build_array(e.extname, e.extversion, n.nspname, pg_get_userbyid(e.extowner)) "
        "ORDER BY e.extname), '[]')::text FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"),
}
SEQUENCES = ("SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), n.nspname, c.relname "
             "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'S' AND "
             + USER_NS.format(ns="n.nspname") + " ORDER BY 1")
TABLES = ("SELECT quote_ident(schemaname) || '.' || quote_ident(tablename), schemaname, tablename FROM pg_tables "
          "WHERE " + USER_NS.format(ns="schemaname") + " ORDER BY 1")


def meta_entry(items):
    """A fingerprint entry for non-row state: no rows (the restore's row total stays the rows')."""
    if isinstance(items, list):
        items = sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    return {"rows": 0, "items": len(items) if isinstance(items, list) else 1, "checksum": checksum(items)}


class Postgres:
    engine = "postgresql"
    ext = "pgdump"
    max_name = MAX_NAME

    def __init__(self, params):
        self.os_user = params.get("admin_user") or "postgres"
        self.as_admin = ["runuser", "-u", self.os_user, "--"]
        self.database = params.get("database")
        self.timeouts = timeouts(params)
        bouncer = params.get("pgbouncer") or {}
        self.bouncer = (PgBouncer(self.as_admin, bouncer.get("port", 6432), bouncer.get("admin_user", "postgres"),
                                  self.timeouts["pause"])
                        if bouncer else None)

    def session(self, db="postgres"):
        return Session(self.as_admin, db, timeout=self.timeouts["lock"] + 50)

    def sql(self, query, db="postgres", args=None):
        with self.session(db) as session:
            return session.query(query, args)

    def _bounded(self, session):
        """Lock and statement waits of this session end after the "lock" timeout."""
        ms = int(self.timeouts["lock"] * 1000)
        session.query("SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false)",
                      [f"{ms}ms", f"{ms}ms"])

    def exists(self, db):
        return bool(self.sql("SELECT 1 FROM pg_database WHERE datname = %s", args=[db]))

    def databases(self):
        return [row[0] for row in self.sql("SELECT datname FROM pg_database ORDER BY datname")]

    def data_dir(self):
        return self.sql("SELECT current_setting('data_directory')")[0][0]

    def size(self, db):
        return int(self.sql("SELECT pg_database_size(oid) FROM pg_database WHERE datname = %s", args=[db])[0][0])

    def identity(self, db):
        return str(self.sql("SELECT oid::text FROM pg_database WHERE datname = %s", args=[db])[0][0])

    def tables(self, db):
        return [row[0] for row in self.sql(TABLES, db)]

    def database_info(self, db):
        """What a restored copy must carry over from `db`: owner, encoding, locale, grants, settings."""
        rows = self.sql(
            "SELECT pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, "
            "d.datacl IS NULL, " + ACL.format(acl="d.datacl", kind="'d'", owner="d.datdba") + "::text, "
            "(SELECT coalesce(json_agg(json_build_array(CASE s.setrole WHEN 0 THEN NULL "
            "ELSE pg_get_userbyid(s.setrole) END, s.setconfig)), '[]') FROM pg_db_role_setting s "
            "WHERE s.setdatabase = d.oid)::text FROM pg_database d WHERE d.datname = %s", args=[db])
        if not rows:
            raise DbError(f"database {db!r} does not exist")
        owner, encoding, collate, ctype, default_acl, acl, settings = rows[0]
        return {"owner": owner, "encoding": encoding, "collate": collate, "ctype": ctype,
                "acl": None if default_acl else json.loads(acl), "settings": json.loads(settings)}

    def _fingerprint(self, session, counts_only=False):
        # Order-independent (no sort of millions of hashes): the sum of each row's 64-bit hash. The hash
        # is PostgreSQL's own, so checksums compare within one major version (restores are on the same server).
        result = {}
        for key, schema, name in session.query(TABLES):
            if counts_only:
                result[key] = {"rows": int(session.query(f"SELECT count(*) FROM {qualified(schema, name)}")[0][0])}
                continue
            count, digest = session.query(
                f"SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0)::text "
                f"FROM {qualified(schema, name)} t")[0]
            result[key] = {"rows": int(count), "checksum": digest}
        for key, query in META.items():
            result[key] = {"rows": 0} if counts_only else meta_entry(json.loads(session.query(query)[0][0]))
        if not counts_only:
            result["@sequences"] = meta_entry(self._sequences(session))
        else:
            result["@sequences"] = {"rows": 0}
        return result

    @staticmethod
    def _sequences(session):
        values = []
        for key, schema, name in session.query(SEQUENCES):
            last, called = session.query(f"SELECT last_value::text, is_called FROM {qualified(schema, name)}")[0]
            values.append([key, last, called])
        return values

    def fingerprint(self, db, counts_only=False):
        with self.session(db) as session:
            session.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            return self._fingerprint(session, counts_only)

    def dump_with_fingerprint(self, db, path, fast=False):
        """Dump `db` to `path`; return the fingerprint of exactly what the dump holds: taken in the
        dump's own snapshot, exported by a session that stays open until pg_dump is done."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise DbError(f"cannot create {path}: {exc.strerror}") from exc
        with os.fdopen(fd, "wb") as handle, self.session(db) as session:
            # Owned by the postgres OS user, mode 0600, in root's 0700 directory: only a process
            # handed the open file (pg_restore -j, see restore_into) can read it besides root.
            user = pwd.getpwnam(self.os_user)
            os.fchown(fd, user.pw_uid, user.pw_gid)
            session.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            snapshot = session.query("SELECT pg_export_snapshot()")[0][0]
            dump = subprocess.Popen([*(BESIDE if fast else []), *self.as_admin, "pg_dump", "-Fc",
                                     "-Z", "0" if fast else "1", f"--snapshot={snapshot}", "-d", check_name(db)],
                                    stdout=handle, stderr=subprocess.PIPE)
            try:
                tables = self._fingerprint(session)  # runs beside the dump, in the same snapshot
                _, err = dump.communicate(timeout=self.timeouts["dump"])
            except BaseException:
                dump.kill()
                dump.wait()
                raise
            if dump.returncode != 0:
                raise DbError(f"pg_dump failed: {err.decode(errors='replace').strip()[-500:]}")
        # Sequences are not transactional: their values are what pg_dump read, taken from the dump itself.
        tables["@sequences"] = meta_entry(self._dumped_sequences(db, path))
        return tables

    def _dumped_sequences(self, db, path):
        with open(path, "rb") as handle:
            listing = run([*self.as_admin, "pg_restore", "-l"], stdin=handle, timeout=self.timeouts["dump"],
                          waiting_for="pg_restore -l").stdout.decode(errors="replace")
        ids = SEQUENCE_SET.findall(listing)
        if not ids:
            return []
        with tempfile.NamedTemporaryFile("w", suffix=".list") as wanted:
            wanted.write("".join(f"{i};\n" for i in ids))
            wanted.flush()
            os.chmod(wanted.name, 0o644)
            with open(path, "rb") as handle:
                script = run([*self.as_admin, "pg_restore", "-L", wanted.name, "-f", "-"], stdin=handle,
                             timeout=self.timeouts["dump"], waiting_for="pg_restore -L").stdout.decode()
        values = []
        with self.session(db) as session:
            for literal, last, called in SETVAL.findall(script):
                # The dump names the sequence as regclass text; the catalog gives the fingerprint's key.
                key = session.query("SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c "
                                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s::regclass",
                                    [literal.replace("''", "'")])[0][0]
                values.append([key, last, called == "true"])
        return sorted(values)

    def preflight_restore(self, db, shadow, keep_as, expected=None):
        """Raise DbError, before anything changes, for whatever would make the swap fail. `expected` (the
        manifest's entries) is not needed here: the swap renames whole databases, whatever they hold."""
        long = too_long(db, shadow, keep_as)
        if long:
            raise DbError(f"database name(s) longer than {MAX_NAME} bytes: {', '.join(long)}; "
                          "PostgreSQL would truncate them")
        if db in ("postgres", "template0", "template1"):
            raise DbError(f"refusing to swap the {db!r} database")
        rows = self.sql("SELECT datistemplate, r.rolname IS NOT NULL, "
                        "(SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user) "
                        "FROM pg_database d LEFT JOIN pg_roles r ON r.oid = d.datdba WHERE d.datname = %s", args=[db])
        if not rows:
            raise DbError(f"database {db!r} does not exist")
        template, owner_exists, may_create = rows[0]
        if template:
            raise DbError(f"database {db!r} is a template; it cannot be swapped")
        if not owner_exists:
            raise DbError(f"the owner of {db!r} no longer exists")
        if not may_create:
            raise DbError("the admin role may not create databases")
        if self.exists(keep_as):
            raise DbError(f"database {keep_as!r} (where the replaced database would be kept) already exists")

    def readable(self, path):
        with open(path, "rb") as handle:
            run([*self.as_admin, "pg_restore", "-l"], stdin=handle, timeout=self.timeouts["dump"],
                waiting_for="pg_restore -l")

    def restore_into(self, path, shadow):
        """Restore into a new `shadow` carrying the live database's owner, locale, grants and settings;
        objects keep their owners and grants (the roles are on this very server)."""
        info = self.database_info(check_name(self.database or ""))
        # With parameters, psycopg2 formats the text: a `%` in a quoted name must be doubled.
        self.sql(f"CREATE DATABASE {pct(ident(shadow))} OWNER {pct(ident(info['owner']))} TEMPLATE template0 "
                 "ENCODING %s LC_COLLATE %s LC_CTYPE %s", args=[info["encoding"], info["collate"], info["ctype"]])
        jobs = max(1, len(os.sched_getaffinity(0)))
        with open(path, "rb") as handle:
            # -j needs a file it can reopen: our descriptor, as /dev/fd/N (root's 0700 directory stays closed).
            parallel = jobs > 1 and os.fstat(handle.fileno()).st_uid == pwd.getpwnam(self.os_user).pw_uid
            source = ["-j", str(jobs), f"/dev/fd/{handle.fileno()}"] if parallel else []
            restore = subprocess.Popen([*self.as_admin, "pg_restore", "--exit-on-error", "-d", check_name(shadow),
                                        *source], stdin=subprocess.DEVNULL if parallel else handle,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       pass_fds=(handle.fileno(),) if parallel else ())
            try:
                _, err = restore.communicate(timeout=self.timeouts["restore"])
            except subprocess.TimeoutExpired as exc:
                restore.kill()
                restore.wait()
                raise DbError(f"timed out after {self.timeouts['restore']} s waiting for pg_restore") from exc
            if restore.returncode != 0:
                raise DbError(f"pg_restore failed: {err.decode(errors='replace').strip()[-500:]}")
        self._apply_database_info(shadow, info)

    def _apply_database_info(self, db, info):
        with self.session() as session:
            self._bounded(session)
            if info["acl"] is not None:  # not the default: make the grants exactly the live database's
                grantees = {grantee for grantee, _, _ in info["acl"]} | {info["owner"], "PUBLIC"}
                for grantee in sorted(grantees):
                    session.query(f"REVOKE ALL ON DATABASE {ident(db)} FROM {self._grantee(grantee)}")
                for grantee, privilege, grantable in info["acl"]:
                    if privilege not in DB_PRIVILEGES:
                        raise DbError(f"unknown database privilege {privilege!r}")
                    session.query(f"GRANT {privilege} ON DATABASE {ident(db)} TO {self._grantee(grantee)}"
                                  + (" WITH GRANT OPTION" if grantable else ""))
            for role, config in info["settings"]:
                for item in config or []:
                    name, _, value = item.partition("=")
                    target = (f"ROLE {ident(role)} IN DATABASE {ident(db)}" if role else f"DATABASE {ident(db)}")
                    values = setting_values(name, value)
                    session.query(pct(f"ALTER {target} SET {'.'.join(ident(p) for p in name.split('.'))} TO ")
                                  + ", ".join(["%s"] * len(values)), values)

    @staticmethod
    def _grantee(name):
        return "PUBLIC" if name == "PUBLIC" else ident(name)

    def drop(self, db):
        with self.session() as session:
            self._bounded(session)
            session.query(f"DROP DATABASE IF EXISTS {ident(db)} WITH (FORCE)", waiting_for=f"dropping {db}")

    def _allow_connections(self, session, db, allowed):
        session.query(f"ALTER DATABASE {ident(db)} WITH ALLOW_CONNECTIONS {'true' if allowed else 'false'}",
                      waiting_for=f"a lock on database {db} (ALTER DATABASE)")

    @contextlib.contextmanager
    def opened(self, db):
        """A database kept closed to connections (the copy a restore replaced), open while it is read."""
        with self.session() as session:
            self._bounded(session)
            self._allow_connections(session, db, True)
        try:
            yield
        finally:
            with self.session() as session:
                self._bounded(session)
                self._allow_connections(session, db, False)

    def stop_writes(self, db, marker):
        check_name(db)
        with open(marker, "w") as handle:
            json.dump({"engine": self.engine, "database": db, "since": stamp()}, handle)
        if self.bouncer:
            self.bouncer.pause(db)
        with self.session() as session:
            self._bounded(session)
            self._allow_connections(session, db, False)
            session.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                          "AND pid <> pg_backend_pid()", [db])

    def resume_writes(self, db, marker):
        if self.exists(db):
            with self.session() as session:
                self._bounded(session)
                self._allow_connections(session, db, True)
        if self.bouncer:
            self.bouncer.resume(db)
        if os.path.exists(marker):
            os.unlink(marker)

    def swap(self, db, shadow, keep_as):
        # One transaction: readers find the old database or the restored one, never neither.
        with self.session() as session:
            self._bounded(session)
            session.query("BEGIN")
            session.query(f"ALTER DATABASE {ident(db)} RENAME TO {ident(keep_as)}",
                          waiting_for=f"a lock on database {db} (swap)")
            session.query(f"ALTER DATABASE {ident(shadow)} RENAME TO {ident(db)}",
                          waiting_for=f"a lock on database {shadow} (swap)")
            session.query("COMMIT", waiting_for="the swap's commit")
