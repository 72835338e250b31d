#!/usr/bin/python
# pgbouncer reset on the host in one round trip: graceful (PAUSE bounded, RECONNECT, RESUME) or hard
# (KILL, RESUME), with a lease that RESUMEs from a systemd timer if this run dies mid-way.
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_pgbouncer
short_description: Reset pgbouncer's pool for a database, gracefully or hard, RESUME guaranteed
description:
  - C(graceful) PAUSEs the database (at most I(timeout) seconds), then RECONNECTs its server
    connections, then RESUMEs. When the console does not answer, pgbouncer is restarted instead.
    A pause that times out is resumed and the clients that held it are reported; the run fails.
  - C(hard) KILLs every client and server connection of the database, then RESUMEs; the number of
    clients dropped is reported.
  - RESUME always runs before the module returns. Before anything changes a lease (see
    M(mayday_lease)) is granted whose revert is that RESUME, I(timeout)+10 s ahead, so a run killed
    mid-way leaves pgbouncer resumed by the host's own timer; it is released after the RESUME.
  - C(resume) only RESUMEs (the role's always-step). C(state) only reads.
  - The admin password (I(admin_password), from the inventory) goes through PGPASSWORD, never on a
    command line or in the output. Without one the console is used with the current trust/peer access.
  - Check mode only reads (the state) and says what a real run would do.
options:
  mode: {type: str, choices: [graceful, hard, resume, state], default: state, description: What to do.}
  database: {type: str, required: true, description: The pgbouncer database (pool) to reset.}
  port: {type: int, default: 6432, description: pgbouncer's port on loopback.}
  admin_user: {type: str, default: postgres, description: A user in pgbouncer's admin_users.}
  admin_password: {type: str, no_log: true, description: "Its password (default none: trust/peer access)."}
  timeout: {type: float, default: 30, description: "graceful: the longest PAUSE may wait, in seconds."}
  service: {type: str, default: pgbouncer, description: The systemd unit restarted when the console is wedged.}
  incident: {type: str, default: "", description: The incident, on the safety lease.}
  host_label: {type: str, description: "Name of the host in the summary (inventory_hostname)."}
author: mayday
"""

RETURN = r"""
report:
  description: >-
    mode, before and after (answers, paused, pool_mode, pools, clients and servers counts), how
    (reconnect, restart, kill), dropped (hard), holders (clients that held a PAUSE that timed out),
    safety_lease (id, expires), error.
  type: dict
  returned: always
steps: {description: Every step with its result and duration., type: list, returned: always}
summary: {description: One line naming the host., type: str, returned: always}
"""

import socket
import subprocess

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.mayday_lease import LeaseError, Leases, install
from ansible.module_utils.mayday_pgbouncer_admin import (
    Console,
    ConsoleError,
    check_name,
    now_utc,
    reset,
    resume_surely,
    snapshot,
)

# The module needs well under a second after the PAUSE (RECONNECT, RESUME): 10 s is ample.
SAFETY_MARGIN_S = 10


def main():
    module = AnsibleModule(
        argument_spec={
            "mode": {"type": "str", "choices": ["graceful", "hard", "resume", "state"], "default": "state"},
            "database": {"type": "str", "required": True},
            "port": {"type": "int", "default": 6432},
            "admin_user": {"type": "str", "default": "postgres"},
            "admin_password": {"type": "str", "no_log": True},
            "timeout": {"type": "float", "default": 30},
            "service": {"type": "str", "default": "pgbouncer"},
            "incident": {"type": "str", "default": ""},
            "host_label": {"type": "str"},
        },
        supports_check_mode=True,
    )
    p = module.params
    host = p["host_label"] or socket.gethostname()
    mode, db = p["mode"], p["database"]
    console = Console(p["port"], p["admin_user"], p["admin_password"])
    steps: list[dict] = []
    try:
        check_name(db)
        before = snapshot(console, db)
        if before.get("console") == "refused":
            raise ConsoleError(f"pgbouncer refused the admin login as {p['admin_user']} (check "
                               f"mayday_pgbouncer_admin_password): {before.get('detail')}")
    except ConsoleError as exc:
        module.fail_json(msg=f"{host}: {exc}", refused=True, changed=False, summary=f"{host}: {exc}",
                         report={"error": str(exc)}, steps=steps)
    report = {"mode": mode, "database": db, "before": before}
    if mode == "state" or module.check_mode:
        would = {"graceful": f"PAUSE {db} (at most {p['timeout']:g} s), RECONNECT, RESUME",
                 "hard": f"KILL {db} ({before.get('clients', {}).get('total', 0)} clients), RESUME",
                 "resume": f"RESUME {db}", "state": "nothing"}[mode]
        if not before.get("answers") and mode in ("graceful", "hard"):
            would = f"restart {p['service']} (the console does not answer), RESUME"
        report["would"] = would
        msg = (f"pool {db}: paused={before.get('paused')}, {before.get('clients', {}).get('total', 0)} clients"
               if before.get("answers") else "pgbouncer does not answer its console")
        module.exit_json(changed=mode != "state", report=report, steps=steps, msg=msg,
                         summary=f"{host}: {'would ' + would if mode != 'state' else msg}")
    if mode == "resume":
        problem = resume_surely(console, db)
        after = snapshot(console, db)
        report["after"] = after
        if problem or after.get("paused"):
            module.fail_json(msg=f"{host}: RESUME {db} failed: {problem or 'still paused'}", changed=True,
                             report=report, steps=steps, summary=f"{host}: RESUME {db} failed")
        module.exit_json(changed=bool(before.get("paused")), report=report, steps=steps, msg=f"{db} resumed",
                         summary=f"{host}: pool {db} resumed (paused=0)")

    leases = Leases()
    lease: dict = {}
    try:
        install()
        lease, _ = leases.grant(f"pgbouncer-resume:{p['port']}:{db}", p["incident"],
                                f"pgbouncer RESUME {db} (safety during a reset)", [console.resume_argv(db)],
                                int(p["timeout"]) + SAFETY_MARGIN_S,
                                env={"PGPASSWORD": p["admin_password"]} if p["admin_password"] else {},
                                kind="pgbouncer-resume")
        steps.append({"started": now_utc(), "step": f"safety lease {lease['id']}: RESUME at {lease['expires']}",
                      "result": "ok", "duration_s": 0})
    except LeaseError as exc:
        module.fail_json(msg=f"{host}: no safety lease, nothing done: {exc}", refused=True, changed=False,
                         report=dict(report, error=str(exc)), steps=steps, summary=f"{host}: {exc}")

    def restart():
        out = subprocess.run(["systemctl", "restart", p["service"]], capture_output=True, check=False, timeout=60)
        if out.returncode != 0:
            raise ConsoleError(f"systemctl restart {p['service']}: {out.stderr.decode(errors='replace').strip()}")

    done = reset(console, db, mode, p["timeout"], restart, steps)
    after = snapshot(console, db)
    resumed = after.get("answers") and not after.get("paused")
    if resumed:
        try:
            leases.release(lease["id"], revert=False)
        except LeaseError as exc:
            done["error"] = (done["error"] + "; " if done["error"] else "") + str(exc)
    report.update(after=after, how=done["how"], dropped=done["dropped"], holders=done["holders"],
                  safety_lease={"id": lease["id"], "expires": lease["expires"], "released": bool(resumed)},
                  error=done["error"])
    if not done["done"] or not resumed:
        why = done["error"] or "pgbouncer still paused"
        left = "resumed (paused=0)" if resumed else f"NOT confirmed resumed; lease {lease['id']} resumes it"
        module.fail_json(msg=f"{host}: pgbouncer {mode} reset of {db} failed: {why}; {left}", changed=True,
                         report=report, steps=steps, summary=f"{host}: reset failed ({why}); pool {db} {left}")
    if done["how"] == "kill":
        what = f"KILL {db} dropped {done['dropped']} clients, resumed"
    elif done["how"] == "restart":
        what = f"console did not answer: {p['service']} restarted, {db} resumed"
    else:
        what = f"PAUSE, RECONNECT, RESUME of {db} ({before.get('clients', {}).get('total', 0)} clients kept)"
    module.exit_json(changed=True, report=report, steps=steps, msg=what, summary=f"{host}: pgbouncer {what}")


if __name__ == "__main__":
    main()
