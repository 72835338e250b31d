# Integrity of a live database during a data-corruption incident: the engine's own checks
# (PostgreSQL amcheck, MariaDB CHECK TABLE) and every table held against the manifest of the last
# good backup. Read-only: nothing is installed, created or written (amcheck is used only where the
# extension is already installed in the database).
#
# No AnsibleModule: shipped to the host as ansible.module_utils.mayday_db_integrity, imported
# directly by the unit tests. Engine objects come from mayday_db_engines; nothing here restructures them.
from __future__ import annotations

import os
import shutil

try:
    from ansible.module_utils.mayday_db_backups import (
        check_database_name,
        compare,
        derived_names,
        disk_shortfalls,
        resolve,
        verification,
        verify_backup,
        with_headroom,
    )
    from ansible.module_utils.mayday_db_engines import DbError, engine_for
    from ansible.module_utils.mayday_db_mariadb import quote_ident
    from ansible.module_utils.mayday_db_postgres import ident, pct
except ImportError:  # imported directly (unit tests)
    from mayday_db_backups import (  # type: ignore[no-redef]
        check_database_name,
        compare,
        derived_names,
        disk_shortfalls,
        resolve,
        verification,
        verify_backup,
        with_headroom,
    )
    from mayday_db_engines import DbError, engine_for  # type: ignore[no-redef]
    from mayday_db_mariadb import quote_ident  # type: ignore[no-redef]
    from mayday_db_postgres import ident, pct  # type: ignore[no-redef]

# A table that lost more than this share of the rows it had in the last good backup is a finding:
# applications add and update rows, they seldom delete most of a table between two backups.
MAX_ROW_LOSS_PCT = 10
PROBLEMS_PER_RELATION = 20  # amcheck / CHECK TABLE lines kept per table in the report

USER_NS = ("n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' "
           "AND n.nspname NOT LIKE 'pg\\_temp%'")
PG_TABLES = ("SELECT c.oid::bigint, quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c "
             "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'm') "
             "AND c.relpersistence <> 't' AND " + USER_NS + " ORDER BY 2")
PG_INDEXES = ("SELECT c.oid::bigint, quote_ident(n.nspname) || '.' || quote_ident(c.relname), "
              "quote_ident(tn.nspname) || '.' || quote_ident(t.relname) FROM pg_index i "
              "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
              "JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace "
              "JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'btree' AND i.indisvalid AND i.indisready "
              "AND c.relpersistence <> 't' AND " + USER_NS + " ORDER BY 3, 2")


def is_table(key, value):
    # Engines add "@..." entries (owners, grants, definitions) beside the tables, with rows 0.
    return not str(key).startswith("@") and isinstance(value, dict) and "rows" in value


# --- the engines' own checks -----------------------------------------------------------------

def postgres_checks(eng, db):
    """amcheck where installed in `db`: verify_heapam on every table, bt_index_check (heapallindexed)
    on every valid btree index. Relations go in as oids (parameters), never as text."""
    ms = int(eng.timeouts["dump"] * 1000)
    found: dict = {"tool": "amcheck", "available": False, "checked": 0, "problems": {}, "notes": []}
    session = eng.session(db)
    try:
        # Waits on locks are short; a check itself may take as long as a dump.
        session.query("SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false)",
                      [f"{int(eng.timeouts['lock'] * 1000)}ms", f"{ms}ms"])
        ext = session.query("SELECT n.nspname, e.extversion FROM pg_extension e JOIN pg_namespace n "
                            "ON n.oid = e.extnamespace WHERE e.extname = 'amcheck'")
        if not ext:
            found["notes"].append(f"amcheck is not installed in {db}: heap and index checks skipped "
                                  f"(a DBA enables them once with CREATE EXTENSION amcheck in {db})")
            return found
        schema, version = ext[0]
        found.update(available=True, version=version)
        fn = pct(ident(schema))  # goes into text psycopg2 formats (the oid is a parameter)
        heap = bool(session.query("SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                                  "WHERE n.nspname = %s AND p.proname = 'verify_heapam'", [schema]))
        checks = []
        if heap:
            checks += [(name, f"heap of {name}",
                        f"SELECT blkno::text, offnum::text, attnum::text, msg FROM {fn}.verify_heapam("
                        "relation => %s::oid::regclass, on_error_stop => false, check_toast => true) LIMIT "
                        f"{PROBLEMS_PER_RELATION}", oid) for oid, name in session.query(PG_TABLES)]
        else:
            found["notes"].append(f"amcheck {version} has no verify_heapam: tables checked through their indexes only")
        checks += [(table, f"index {name}",
                    f"SELECT {fn}.bt_index_check(index => %s::oid::regclass, heapallindexed => true)", oid)
                   for oid, name, table in session.query(PG_INDEXES)]
        for table, what, query, oid in checks:
            try:
                rows = session.query(query, [oid], timeout=eng.timeouts["dump"] + 30, waiting_for=what)
                lines = [f"{what}: block {b}, offset {o}, attribute {a}: {m}" for b, o, a, m in rows] if (
                    what.startswith("heap")) else []
            except DbError as exc:
                lines = [f"{what}: {str(exc).strip().splitlines()[0][:300]}"]
                if session.proc.poll() is not None:  # the session died with the check: a new one for the rest
                    session.close()
                    session = eng.session(db)
            found["checked"] += 1
            if lines:
                found["problems"].setdefault(table, []).extend(lines[:PROBLEMS_PER_RELATION])
    finally:
        session.close()
    return found


def mariadb_checks(eng, db):
    """CHECK TABLE on every base table (names backtick-quoted: CHECK TABLE takes no parameters)."""
    found: dict = {"tool": "CHECK TABLE", "available": True, "checked": 0, "problems": {}, "notes": []}
    tables = eng.tables(db)
    with eng.connect(read_timeout=eng.timeouts["dump"]) as conn:
        for table in tables:
            ref = f"{quote_ident(db)}.{quote_ident(table)}"
            try:
                rows = eng.query(conn, f"CHECK TABLE {ref}", waiting_for=f"CHECK TABLE {table}")
                lines = [f"{kind}: {text}" for _, _, kind, text in rows
                         if str(kind).lower() in ("error", "warning")
                         or (str(kind).lower() == "status" and str(text) != "OK")]
            except DbError as exc:
                lines = [str(exc).strip().splitlines()[0][:300]]
            found["checked"] += 1
            if lines:
                found["problems"].setdefault(table, []).extend(lines[:PROBLEMS_PER_RELATION])
    return found


def engine_checks(eng, db):
    return postgres_checks(eng, db) if eng.engine == "postgresql" else mariadb_checks(eng, db)


# --- against the last good backup ------------------------------------------------------------

def row_findings(reference, current, max_loss_pct=MAX_ROW_LOSS_PCT):
    """Per table: rows in the reference backup and now, whether the data changed, and the finding.

    Findings: a table of the backup that is gone, or one that lost more than `max_loss_pct` percent
    of its rows. Rows added, rows changed (checksum) and new tables are normal writes since the
    backup: reported, not findings."""
    tables = {}
    for name, want in sorted(reference.items()):
        if not is_table(name, want):
            continue
        got = current.get(name)
        entry: dict = {"rows_backup": int(want["rows"]), "rows_now": None if got is None else int(got["rows"])}
        if got is None:
            entry["finding"] = f"gone: the backup holds it with {want['rows']} rows"
        else:
            before, now = int(want["rows"]), int(got["rows"])
            if "checksum" in want and "checksum" in got:
                entry["data"] = "unchanged" if want["checksum"] == got["checksum"] else "changed since the backup"
            lost = before - now
            if before > 0 and lost * 100 > max_loss_pct * before:
                entry["finding"] = (f"rows fell from {before} to {now} (-{lost * 100 / before:.0f}%, more than "
                                    f"{max_loss_pct}% since the backup)")
        tables[name] = entry
    for name, got in sorted(current.items()):
        if is_table(name, got) and name not in reference:
            tables[name] = {"rows_backup": None, "rows_now": int(got["rows"]), "data": "new since the backup"}
    return tables


def findings_of(tables, checks):
    """One line per problem, naming its table: integrity problems first, then row counts."""
    lines = [f"{t}: {p}" for t, problems in sorted(checks.get("problems", {}).items()) for p in problems]
    return lines + [f"{t}: {e['finding']}" for t, e in tables.items() if e.get("finding")]


def _manifest_by_id(params, backup_id):
    return resolve(dict(params, backup=backup_id))


def _current_state(params, eng, db, current_id):
    """The state to judge: the emergency backup's manifest (taken in one snapshot while writes were
    stopped: the evidence itself), or without one (dry run) the live database's fingerprint."""
    if current_id:
        manifest = _manifest_by_id(params, current_id)
        return manifest["tables"], {"source": f"emergency backup {manifest['id']}", "id": manifest["id"]}
    return eng.fingerprint(db), {"source": f"the live database {db}"}


def reference(params, required, verify=True):
    """The last good backup (latest regular, or the id given), verified; None when there is none
    and none is required."""
    try:
        manifest = resolve(params)
    except DbError:
        if params.get("backup", "latest") == "latest" and not required:
            return None
        raise
    if verify:
        verify_backup(params, manifest)
    return manifest


def summary_of(manifest):
    return {"id": manifest["id"], "time": manifest["time"], "kind": manifest.get("kind"),
            "tables": sum(1 for k, v in manifest["tables"].items() if is_table(k, v)),
            "rows": sum(int(v["rows"]) for k, v in manifest["tables"].items() if is_table(k, v))}


# --- the modes -------------------------------------------------------------------------------

def preflight(params, steps):
    """Everything that would stop the run later, before the database is touched: the database, the
    reference backup (verified), disk for the emergency backup (and, with restore, the restore's own
    pre-flight and disk for its shadow and safety dump)."""
    eng = engine_for(params)
    db = steps.run("check the database name", check_database_name, params["database"], eng.max_name, eng.engine)
    if not steps.run("the database exists", eng.exists, db):
        raise DbError(f"database {db!r} does not exist")
    restore = bool(params.get("restore"))
    manifest = steps.run("resolve and verify the last good backup (sha256, readable)", reference, params, restore)
    notes: list[str] = []
    report: dict = {"reference": summary_of(manifest) if manifest else None, "notes": notes}
    if manifest is None:
        notes.append(f"no backup of {db} in {params['backup_dir']}: row counts cannot be compared")
    if restore:
        shadow, keep_as = derived_names(db, eng.max_name)
        steps.run("the restore's engine pre-flight (names, what the swap cannot move)", eng.preflight_restore,
                  db, shadow, keep_as, manifest["tables"])
    what = "disk for the emergency backup" + (", the shadow and the safety dump" if restore else "")
    report["disk"] = steps.run(what, room, eng, db, params["backup_dir"], restore,
                               int(params.get("disk_headroom_pct", 20)))
    return report


def room(eng, db, backup_dir, restore, headroom_pct):
    size = eng.size(db)
    need = with_headroom(size, headroom_pct)
    dumps = backup_dir
    while not os.path.isdir(dumps):  # not created yet: the disk it will be on
        dumps = os.path.dirname(dumps) or "/"
    wanted = [("emergency backup", dumps, need)]
    if restore:
        wanted += [("safety dump", dumps, need), ("shadow database", eng.data_dir(), need)]
    needs = [(what, path, os.stat(path).st_dev, shutil.disk_usage(path).free, n) for what, path, n in wanted]
    problems = disk_shortfalls(needs)
    if problems:
        raise DbError("; ".join(problems) + f" ({db} takes {size} bytes, headroom {headroom_pct}%)")
    return "; ".join(f"{what}: {n} of {free} bytes free in {path}" for what, path, _, free, n in needs)


def assess(params, steps):
    """The engine's checks, and every table against the reference backup. Never changes anything."""
    eng = engine_for(params)
    db = check_database_name(params["database"], eng.max_name, eng.engine)
    # Verified by the pre-flight: reading a large dump again costs the emergency minutes.
    manifest = steps.run("resolve the last good backup", reference, params, False, False)
    checks = steps.run(f"integrity checks ({'amcheck' if eng.engine == 'postgresql' else 'CHECK TABLE'})",
                       engine_checks, eng, db)
    report = {"reference": summary_of(manifest) if manifest else None, "integrity": checks}
    if manifest:
        current, seen = steps.run("the state to judge", _current_state, params, eng, db, params.get("current"))
        report["judged"] = seen["source"]
        report["tables"] = row_findings(manifest["tables"], current,
                                        int(params.get("max_row_loss_pct", MAX_ROW_LOSS_PCT)))
    else:
        report["tables"] = {}
        checks["notes"].append("no backup to compare row counts with")
    report["findings"] = findings_of(report["tables"], checks)
    return report


def verify(params, steps):
    """After a restore: the engine's checks pass and the live database is the reference backup,
    every table's rows and checksum and every definition (the restore's own rule)."""
    eng = engine_for(params)
    db = check_database_name(params["database"], eng.max_name, eng.engine)
    manifest = steps.run("resolve the restored backup", resolve, params)
    checks = steps.run(f"integrity checks ({'amcheck' if eng.engine == 'postgresql' else 'CHECK TABLE'})",
                       engine_checks, eng, db)
    expected, reduce, warning = verification(manifest)
    live = steps.run(f"fingerprint of the live {db}", eng.fingerprint, db)
    differences = compare(expected, reduce(live))
    tables = row_findings(manifest["tables"], live, 0)
    report = {"reference": summary_of(manifest), "integrity": checks, "tables": tables,
              "findings": [*(f"{t}: {p}" for t, ps in sorted(checks["problems"].items()) for p in ps),
                           *differences]}
    if warning:
        checks["notes"].append(warning)
    return report


# --- the run's result on this host -----------------------------------------------------------

LEASE_KEY = "db-read-only:{engine}:{db}"  # the key mayday_db_mode puts on its read-only lease
# The phases a corruption run goes through on a host, in order, with their names in messages.
PHASES = (("freeze", "read-only switch"), ("backup", "emergency backup"), ("assess", "assessment"),
          ("renew", "lease renewal before the restore"), ("restore", "restore"), ("verify", "consistency check"),
          ("release", "switch back to read-write"))


def read_only_now(eng, db):
    """'on' or 'off': PostgreSQL the database's default_transaction_read_only, MariaDB @@global.read_only."""
    if eng.engine == "postgresql":
        rows = eng.sql("SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                       "WHERE d.datname = %s AND s.setrole = 0 "
                       "AND 'default_transaction_read_only=on' = ANY(s.setconfig)", args=[db])
        return "on" if rows else "off"
    return "on" if str(eng.one("SELECT @@global.read_only")[0][0]) == "1" else "off"


def after_state(params, leases):
    """What the run leaves on the host: the database's mode and its read-only lease, if any."""
    eng = engine_for(params)
    db = check_database_name(params["database"], eng.max_name, eng.engine)
    lease = leases.by_key(LEASE_KEY.format(engine=eng.engine, db=db))
    return {"read_only": read_only_now(eng, db),
            "lease": {"id": lease["id"], "expires": lease.get("expires"), "incident": lease.get("incident"),
                      "armed": leases.armed(lease["id"])} if lease else None}


def plural(count, word):
    return f"{count} {word}{'' if count == 1 else 's'}"


def _bare(host, msg):
    msg = str(msg or "failed")
    return msg[len(host) + 2:] if msg.startswith(f"{host}: ") else msg


def state_text(after):
    lease = after.get("lease")
    if after.get("read_only") == "on":
        if lease:
            return (f"left read-only under lease {lease['id']} until {lease['expires']} (the host switches it back "
                    "then; `mayday db read-write` sooner)")
        return "left read-only WITHOUT a lease: `mayday db read-write` switches it back"
    if after.get("read_only") == "off":
        return "read-write" + (f" (lease {lease['id']} still held)" if lease else "")
    return f"its mode could not be read afterwards ({after.get('error', 'unknown')})"


def outcome(host, phases, restore, check_mode, after):
    """The host's result for the scenario's verdict (roles/scenario/README.md): changed, refused,
    failed, msg, summary, report. Corruption found and not restored is a failure: a person decides."""
    done = [(name, label, phases[name]) for name, label in PHASES
            if isinstance(phases.get(name), dict) and phases[name] and not phases[name].get("skipped")]
    changed = any(bool(r.get("changed")) for _, _, r in done)
    failed_at = next(((n, label, r) for n, label, r in done if r.get("failed") or r.get("ok") is False), None)
    get = {n: (r.get("report") or {}) for n, _, r in done}
    assess = get.get("assess", {})
    findings = list(assess.get("findings") or [])
    backup = get.get("backup", {})
    ref = (assess.get("reference") or {}).get("id")
    state = state_text(after)
    report = {
        "restore_requested": restore,
        "phases": {n: ("failed" if (r.get("failed") or r.get("ok") is False) else "changed" if r.get("changed")
                       else "ok") for n, _, r in done},
        "before": get.get("freeze", {}).get("before"),
        "emergency_backup": None if backup.get("dry_run") else (
            {k: backup.get(k) for k in ("id", "file", "size", "sha256", "verified")} if backup else None),
        "reference_backup": assess.get("reference"),
        "assessment": assess or None,
        "findings": findings,
        "restore": get.get("restore") or None,
        "verify": get.get("verify") or None,
        "after": after,
        "state": state,
    }
    if check_mode:
        report["would"] = [w for w in (get.get("freeze", {}).get("would"), "take an emergency backup, verified",
                                       f"restore {ref}" if restore and ref else None) if w]
    found = (f"{plural(len(findings), 'finding')} ({'; '.join(findings[:3])}{'; ...' if len(findings) > 3 else ''})"
             if findings else "no corruption found")
    against = f" against backup {ref}" if ref else ""
    kept = f"; emergency backup {backup['id']} kept" if backup.get("id") else ""
    failed = False
    if failed_at:
        _, label, result = failed_at
        failed = True
        text = f"{label} failed: {_bare(host, result.get('msg'))}; {state}"
    elif check_mode:
        text = f"dry run: {found}{against}; " + "; ".join(f"would {w}" for w in report["would"])
    elif not restore:
        failed = bool(findings)  # corruption confirmed and not repaired: escalate, the database stays frozen
        text = f"{found}{against}{kept}; {state}" + (
            f"; `mayday db corruption --restore` restores {ref}" if findings and ref else "")
    else:
        restored = get.get("restore", {})
        how = (f"live database already the copy of {restored.get('backup')}" if restored.get("already_restored")
               else f"restored {restored.get('backup')} ({restored.get('rows_restored')} rows; the replaced database "
                    f"kept as {restored.get('previous_kept_as')})")
        text = f"{found}{against}{kept}; {how}; consistency verified; {state}"
        if after.get("read_only") == "on":
            failed, text = True, text + "; still read-only after the switch back"
    return {"changed": changed, "failed": failed, "ok": not failed,
            "refused": bool(failed_at and failed_at[2].get("refused")) and not changed,
            "msg": f"{host}: {text}", "summary": f"{host}: {text}", "report": report}
