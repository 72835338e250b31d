#!/usr/bin/python
# Long queries: list the client statements running too long, cancel them, terminate the sessions whose
# statement outlives the grace period, and record every victim.
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_kill_long
short_description: Cancel, then terminate, client queries running longer than a threshold
description:
  - Lists the server's client sessions - PostgreSQL C(pg_stat_activity) rows of backend type
    C(client backend) (never walsenders, autovacuum or other background workers); MariaDB
    C(information_schema.PROCESSLIST) rows other than system threads, replication (C(Binlog Dump),
    replica threads) and the event scheduler. The module's own session is never listed.
  - A victim runs a statement (PostgreSQL state C(active); MariaDB command C(Query)) for at least
    I(older_than), matches every given regular expression (I(match_user), I(match_db),
    I(match_query), searched, case-sensitive) and its user is not in I(allowlist).
  - More victims than I(max_victims), or (three or more) over I(max_share) of the client sessions, is
    refused before anything changes unless I(force).
  - I(mode=kill) cancels each victim's statement (C(pg_cancel_backend), C(KILL QUERY)), waits up to
    I(grace) seconds for it to stop, then terminates the sessions still running it
    (C(pg_terminate_backend), C(KILL CONNECTION)) and lists the sessions again. With I(only), just
    the victims listed by an earlier I(mode=list) that still run the same statement are cut.
  - I(mode=list) and check mode change nothing and return who would be cut.
  - Each victim is recorded - pid, user, database, client address, duration, the query cut to
    I(query_chars) with quoted passwords hidden - with what happened to it.
options:
  mode: {type: str, choices: [list, kill], default: list, description: list (read-only) or kill.}
  engine: {type: str, choices: [mariadb, postgresql], required: true, description: Database engine.}
  older_than: {type: str, default: 5m, description: "Threshold, a duration with a unit (30s, 5m, 1h)."}
  match_user: {type: str, description: Only users matching this regular expression.}
  match_db: {type: str, description: Only databases matching this regular expression.}
  match_query: {type: str, description: Only queries matching this regular expression.}
  max_victims: {type: int, default: 10, description: More victims than this is refused without force.}
  max_share:
    type: float
    default: 0.5
    description: Three or more victims over this share of the client sessions is refused without force.
  force: {type: bool, default: false, description: Cut past max_victims and max_share.}
  grace: {type: int, default: 10, description: "Seconds between the cancel and the terminate (0 to 300)."}
  allowlist: {type: list, elements: str, default: [], description: Users whose sessions are never cut.}
  only:
    type: list
    elements: str
    description: "kill - the keys of the victims an earlier list returned; others are left alone."
  query_chars: {type: int, default: 200, description: The query is recorded cut to this many characters.}
  admin_user: {type: str, default: postgres, description: "PostgreSQL - the OS user whose peer access is the admin."}
  socket: {type: str, description: "MariaDB - the server's unix socket (default /run/mysqld/mysqld.sock)."}
  timeouts:
    type: dict
    default: {}
    description: "Bounded waits in seconds (mayday_db.timeouts; lock bounds each statement)."
  host_label: {type: str, description: "Name of the host in the summary (inventory_hostname)."}
author: mayday
"""

EXAMPLES = r"""
- name: Who would be cut
  mayday_kill_long:
    engine: postgresql
    older_than: 5m
  register: seen

- name: Cut them
  mayday_kill_long:
    mode: kill
    engine: postgresql
    older_than: 5m
    grace: 10
    only: "{{ seen.report.victims | map(attribute='key') | list }}"
"""

RETURN = r"""
report:
  description: >-
    engine, older_than, threshold_s, filters, allowlist, limits (max_victims, max_share, force),
    before and after (client_sessions, running), victims (key, pid, user, database, client,
    duration_s, query, outcome - would cut, cancelled, terminated, ended, still running), kept
    (allowlisted long sessions, with why), refusal.
  type: dict
  returned: always
refused: {description: Stopped before changing anything., type: bool, returned: always}
summary: {description: One line naming the host., type: str, returned: always}
steps: {description: The list, cancel, wait, terminate and verify steps, timed., type: list, returned: always}
"""

import socket
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.mayday_db_common import DbError, timeouts
from ansible.module_utils.mayday_db_mariadb import MariaDB
from ansible.module_utils.mayday_db_postgres import Postgres
from ansible.module_utils.mayday_kill_long import (
    Seen,
    compile_filters,
    counts,
    describe,
    pick,
    record,
    refusal,
    still_running,
)
from ansible.module_utils.mayday_lease import LeaseError, format_duration, parse_duration
from ansible.module_utils.mayday_steps import Steps

POLL_S = 0.1
GONE_WAIT_S = 10.0  # a terminated backend exits at its next interrupt check: milliseconds, bounded here

PG_LIST = """
SELECT a.pid, coalesce(a.usename, ''), coalesce(a.datname, ''),
       CASE WHEN a.client_addr IS NOT NULL THEN host(a.client_addr) || ':' || a.client_port
            WHEN a.client_port = -1 THEN 'local' ELSE '' END,
       coalesce(a.state, ''), a.state = 'active',
       coalesce(extract(epoch FROM clock_timestamp() - a.query_start), 0)::float8,
       coalesce(extract(epoch FROM a.query_start), 0)::float8,
       extract(epoch FROM a.backend_start)::float8, left(coalesce(a.query, ''), 4000),
       coalesce(a.application_name, '')
FROM pg_stat_activity a
WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()
"""
MY_LIST = """
SELECT ID, COALESCE(USER, ''), COALESCE(DB, ''), COALESCE(HOST, ''), COMMAND, COALESCE(TIME_MS, 0),
       LEFT(COALESCE(INFO, ''), 4000), COALESCE(STATE, ''), UNIX_TIMESTAMP(NOW(6))
FROM information_schema.PROCESSLIST
WHERE ID <> CONNECTION_ID()
"""
# Server threads, replication and the scheduler: never client sessions.
MY_SYSTEM_USERS = frozenset({"system user", "event_scheduler", "unauthenticated user"})
MY_SYSTEM_COMMANDS = frozenset({"Daemon", "Binlog Dump", "Binlog Dump GTID", "Slave_IO", "Slave_SQL", "Slave_worker",
                                "Connect", "Register Slave"})


class PgServer:
    def __init__(self, params):
        self.pg = Postgres({"admin_user": params["admin_user"], "timeouts": params["timeouts"]})
        self.session = None
        self.limit = self.pg.timeouts["lock"]

    def __enter__(self):
        self.session = self.pg.session("postgres")
        ms = int(self.limit * 1000)
        self.session.query("SELECT set_config('statement_timeout', %s, false), "
                           "set_config('application_name', 'mayday-kill-long', false)", [f"{ms}ms"])
        return self

    def __exit__(self, *exc):
        if self.session:
            self.session.close()

    def _q(self, sql, args=None, what="the server"):
        assert self.session is not None
        return self.session.query(sql, args, timeout=self.limit + 5, waiting_for=what)

    def sessions(self):
        return [Seen(key=f"{pid}:{born:.6f}", pid=int(pid), user=user, database=db, client=client, state=state,
                     running=bool(running), seconds=float(secs), started=float(started), query=query,
                     extra={"application": app})
                for pid, user, db, client, state, running, secs, started, born, query, app
                in self._q(PG_LIST, what="pg_stat_activity")]

    def _signal(self, fn, seen):
        rows = self._q(f"SELECT {fn}(pid) FROM pg_stat_activity WHERE pid = %s "
                       "AND round(extract(epoch FROM backend_start)::numeric, 6) = round(%s::numeric, 6)",
                       [seen.pid, seen.key.split(":", 1)[1]], what=fn)
        return bool(rows and rows[0][0])

    def cancel(self, seen):
        return self._signal("pg_cancel_backend", seen)

    def terminate(self, seen):
        return self._signal("pg_terminate_backend", seen)


class MyServer:
    def __init__(self, params):
        self.db = MariaDB({"timeouts": params["timeouts"], "socket": params["socket"]})
        self._ctx = None
        self.conn = None

    def __enter__(self):
        self._ctx = self.db.connect()
        self.conn = self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        if self._ctx:
            self._ctx.__exit__(*exc)

    def sessions(self):
        found = []
        for row in self.db.query(self.conn, MY_LIST, waiting_for="information_schema.PROCESSLIST"):
            cid, user, db, host, command, time_ms, info, state, now = row
            if user in MY_SYSTEM_USERS or command in MY_SYSTEM_COMMANDS:
                continue
            seconds = float(time_ms or 0) / 1000.0
            running = command == "Query"
            found.append(Seen(key=str(cid), pid=int(cid), user=user, database=db, client=host, state=command,
                              running=running, seconds=seconds if running else 0.0,
                              started=float(now) - seconds, query=info if running else "",
                              extra={"state": state}))
        return found

    def _kill(self, what, seen):
        try:
            self.db.query(self.conn, f"KILL {what} {int(seen.pid)}", waiting_for=f"KILL {what}")
        except DbError as exc:
            if "Unknown thread id" in str(exc):  # ended meanwhile
                return False
            raise
        return True

    def cancel(self, seen):
        return self._kill("QUERY", seen)

    def terminate(self, seen):
        return self._kill("CONNECTION", seen)


def listed(steps, server, name):
    """The client sessions, as a timed step (its detail: how many)."""
    found = steps.run(name, server.sessions)
    steps.items[-1]["detail"] = f"{len(found)} client sessions"
    return found


def signal(steps, name, fn, victim):
    """Cancel or terminate one victim as a timed step; False when its session had ended."""
    done = steps.run(f"{name} {victim.pid}", fn, victim)
    steps.items[-1]["detail"] = f"{victim.user}@{victim.database or '-'}: " + ("sent" if done else "already ended")
    return done


def wait_until(steps, name, server, victims, seconds, done):
    """List the sessions until done(victim, now) for every victim or `seconds` passed: the victims not done."""
    pending = steps.run(name, _wait, server, victims, seconds, done)
    steps.items[-1]["detail"] = f"{len(victims) - len(pending)} of {len(victims)} done"
    return pending


def _wait(server, victims, seconds, done):
    deadline = time.monotonic() + seconds
    while True:
        now = {s.key: s for s in server.sessions()}
        pending = [v for v in victims if not done(v, now.get(v.key))]
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(POLL_S)


def main():
    module = AnsibleModule(
        argument_spec={
            "mode": {"type": "str", "choices": ["list", "kill"], "default": "list"},
            "engine": {"type": "str", "choices": ["mariadb", "postgresql"], "required": True},
            "older_than": {"type": "str", "default": "5m"},
            "match_user": {"type": "str"},
            "match_db": {"type": "str"},
            "match_query": {"type": "str"},
            "max_victims": {"type": "int", "default": 10},
            "max_share": {"type": "float", "default": 0.5},
            "force": {"type": "bool", "default": False},
            "grace": {"type": "int", "default": 10},
            "allowlist": {"type": "list", "elements": "str", "default": []},
            "only": {"type": "list", "elements": "str"},
            "query_chars": {"type": "int", "default": 200},
            "admin_user": {"type": "str", "default": "postgres"},
            "socket": {"type": "str"},
            "timeouts": {"type": "dict", "default": {}},
            "host_label": {"type": "str"},
        },
        supports_check_mode=True,
    )
    p = module.params
    host = p["host_label"] or socket.gethostname()
    steps = Steps()
    report = {"engine": p["engine"], "older_than": p["older_than"], "allowlist": sorted(p["allowlist"]),
              "filters": {k: p[k] for k in ("match_user", "match_db", "match_query") if p[k]},
              "limits": {"max_victims": p["max_victims"], "max_share": p["max_share"], "force": p["force"]},
              "grace_s": p["grace"]}

    def refuse(why):
        report["refusal"] = why
        module.fail_json(msg=f"{host}: {why}", refused=True, changed=False, report=report, steps=steps.items,
                         summary=f"{host}: refused, nothing changed: {why}")

    try:
        threshold = parse_duration(p["older_than"])
        filters = compile_filters(p["match_user"], p["match_db"], p["match_query"])
        if not 0 <= p["grace"] <= 300:
            raise ValueError(f"grace {p['grace']} is out of range; valid: 0..300 seconds")
        if p["max_victims"] < 1 or not 0 < p["max_share"] <= 1:
            raise ValueError("max_victims must be at least 1 and max_share in (0, 1]")
        report["threshold_s"] = threshold
        report["older_than"] = format_duration(threshold)
        params = dict(p, timeouts=timeouts(p))
    except (LeaseError, ValueError, DbError) as exc:
        refuse(str(exc))

    server = PgServer(params) if p["engine"] == "postgresql" else MyServer(params)
    try:
        server.__enter__()
    except DbError as exc:
        refuse(f"{p['engine']} does not answer: {exc}")
    try:
        act(module, server, p, host, report, steps, threshold, filters)
    except DbError as exc:
        # Raised by act before it changed anything (listing); later errors are reported by act itself.
        refuse(f"{p['engine']} does not answer: {exc}")
    finally:
        server.__exit__(None, None, None)


def act(module, server, p, host, report, steps, threshold, filters):
    before = listed(steps, server, "list the client sessions")
    victims, kept = pick(before, threshold, p["allowlist"], filters)
    late = []
    if p["only"] is not None:  # the victims the pre-flight listed and judged; newer long queries wait
        wanted = set(p["only"])
        late = [v for v in victims if v.key not in wanted]
        victims = [v for v in victims if v.key in wanted]
    report["before"] = counts(before)
    report["kept"] = [dict(record(s, p["query_chars"]), why=why) for s, why in kept]
    report["victims"] = [dict(record(v, p["query_chars"]), key=v.key, outcome="would cut") for v in victims]
    if late:
        report["late"] = [record(v, p["query_chars"]) for v in late]

    def refuse(why):
        report["refusal"] = why
        module.fail_json(msg=f"{host}: {why}", refused=True, changed=False, report=report, steps=steps.items,
                         summary=f"{host}: refused, nothing changed: {why}")

    why = refusal(len(victims), len(before), p["max_victims"], p["force"], p["max_share"])
    if why:
        refuse(why + f" (victims: {describe(victims)})")

    names = f"older than {report['older_than']}"
    if not victims:
        msg = f"no client query running {names}" + (f" ({len(kept)} of allowlisted users kept)" if kept else "")
        module.exit_json(changed=False, refused=False, report=report, steps=steps.items, msg=msg,
                         summary=f"{host}: {msg}")
    if p["mode"] == "list" or module.check_mode:
        msg = f"would cut {len(victims)} {'query' if len(victims) == 1 else 'queries'} {names}: {describe(victims)}"
        module.exit_json(changed=module.check_mode, refused=False, report=report, steps=steps.items, msg=msg,
                         summary=f"{host}: {msg}")

    outcome = {}
    changed = False
    try:
        cancelled = [v for v in victims if signal(steps, "cancel", server.cancel, v)]
        for v in victims:
            outcome[v.key] = "cancelled" if v in cancelled else "ended"
        changed = bool(cancelled)
        # The grace: each cancelled statement may stop (and roll back) on its own.
        survivors = wait_until(steps, f"wait up to {p['grace']} s for the cancelled queries to stop", server,
                               cancelled, p["grace"], lambda v, n: not still_running(v, n))
        terminated = [v for v in survivors if signal(steps, "terminate", server.terminate, v)]
        for v in terminated:
            outcome[v.key] = "terminated"
        if terminated:
            stuck = wait_until(steps, "wait for the terminated sessions to end", server, terminated, GONE_WAIT_S,
                               lambda v, n: n is None)
            for v in stuck:
                outcome[v.key] = "still running"
        after = listed(steps, server, "list the client sessions again")
    except DbError as exc:
        report["error"] = str(exc)
        for item in report["victims"]:
            item["outcome"] = outcome.get(item["key"], "not reached")
        module.fail_json(msg=f"{host}: {exc}", changed=changed, refused=not changed, report=report,
                         steps=steps.items, summary=f"{host}: cutting long queries failed: {exc}")

    by_key = {s.key: s for s in after}
    for item in report["victims"]:
        item["outcome"] = outcome[item["key"]]
        seen = next(v for v in victims if v.key == item["key"])
        if item["outcome"] == "cancelled" and still_running(seen, by_key.get(item["key"])):
            item["outcome"] = "still running"
    report["after"] = counts(after)
    tally = {k: sum(1 for i in report["victims"] if i["outcome"] == k)
             for k in ("cancelled", "terminated", "ended", "still running")}
    report["tally"] = tally
    msg = (f"{tally['cancelled'] + tally['terminated']} of {len(victims)} queries {names} cut "
           f"({tally['cancelled']} cancelled, {tally['terminated']} terminated after {p['grace']} s)"
           + (f", {tally['ended']} ended on their own" if tally["ended"] else "")
           + f"; client sessions {report['before']['client_sessions']} -> {report['after']['client_sessions']}")
    if tally["still running"]:
        stuck = ", ".join(str(i["pid"]) for i in report["victims"] if i["outcome"] == "still running")
        module.fail_json(msg=f"{host}: still running after cancel and terminate: {stuck}", changed=changed,
                         refused=False, report=report, steps=steps.items,
                         summary=f"{host}: {msg}; STILL RUNNING: {stuck}")
    module.exit_json(changed=changed, refused=False, report=report, steps=steps.items, msg=msg,
                     summary=f"{host}: {msg}")

if __name__ == "__main__":
    main()
