# Level 2 webhook rollback on the DB host: save the rows added in the last N minutes to a file,
# then delete exactly those rows, in one transaction (MariaDB, PyMySQL on the host).
from __future__ import annotations

import json
import os

try:
    from ansible.module_utils.mayday_db_engines import DbError, check_name, stamp
except ImportError:  # imported directly (unit tests)
    from mayday_db_engines import DbError, check_name, stamp  # type: ignore[no-redef]

MINUTES_MAX = 10080  # one week: older rows are history, not a bad webhook burst


def check_minutes(minutes):
    if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= MINUTES_MAX:
        raise DbError(f"minutes must be a whole number from 1 to {MINUTES_MAX} (one week), not {minutes!r}")
    return minutes


def purge_recent(params, steps, changes, check_mode=False):
    """Delete rows added in the last `minutes` from each table, saving them to a file first.

    Values go in as query parameters; table and column names cannot, so they must exist in
    information_schema. One transaction: the rows are locked, written to disk and fsynced, then
    deleted; any mismatch rolls back. Check mode only reads (no row locks, no files).
    """
    if params["engine"] != "mariadb":
        raise DbError("the webhook rollback supports MariaDB; valid engines: mariadb")
    db = check_name(params["database"])
    minutes = check_minutes(params.get("minutes"))
    column = check_name(params.get("time_column") or "created_at", "column")
    tables = [check_name(t, "table") for t in params.get("tables") or []]
    if not tables:
        raise DbError("no webhook tables configured (mayday_webhook.tables)")
    import pymysql  # only this path needs it: python3-pymysql on the DB host

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
            report: dict = {"since": str(since), "until": str(until), "minutes": minutes, "tables": {}, "files": []}
            if check_mode:
                report.update(dry_run=True, would=[])
            elif not os.path.isdir(params["backup_dir"]):
                changes.append(f"create {params['backup_dir']}")
                os.makedirs(params["backup_dir"], mode=0o700, exist_ok=True)
            for table in tables:
                query = f"FROM `{table}` WHERE `{column}` > %s AND `{column}` <= %s"
                cur.execute(f"SELECT * {query}" + ("" if check_mode else " FOR UPDATE"), (since, until))
                names = [d[0] for d in cur.description]
                rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
                report["tables"][table] = len(rows)
                if not rows:
                    continue
                if check_mode:
                    report["would"].append(f"save {len(rows)} rows of {table} to a file in {params['backup_dir']}, "
                                           "then delete them")
                    continue
                path = os.path.join(params["backup_dir"], f"webhook-{db}-{table}-{stamp()}.jsonl")
                changes.append(f"save {len(rows)} rows of {table} to {path}")
                steps.run(f"save {len(rows)} rows of {table} to {path}", _write_rows, path, rows)
                report["files"].append(path)
                deleted = steps.run(f"delete them from {table}", cur.execute, f"DELETE {query}", (since, until))
                if deleted != len(rows):
                    raise DbError(f"{table}: {deleted} rows matched the delete, {len(rows)} were saved")
        if check_mode or not report["files"]:
            conn.rollback()
        else:
            changes.append(f"delete {sum(report['tables'].values())} saved rows (commit)")
            conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()
    report["deleted"] = 0 if check_mode else sum(report["tables"].values())
    return report


def _write_rows(path, rows):
    # Private from the first byte: the rows may hold customer data.
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        for row in rows:
            handle.write(json.dumps(row, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return f"{len(rows)} rows"
