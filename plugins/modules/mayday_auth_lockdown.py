#!/usr/bin/python
# No new SSH logins under a lease, but for the operator and a break-glass group: an sshd drop-in read
# first (Debian includes sshd_config.d/*.conf at the top, and sshd keeps the first value), checked
# with sshd -t before a reload that keeps every session already open.
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_auth_lockdown
short_description: No new SSH logins but the operator's and a break-glass group's, under a lease
description:
  - I(state=on) writes C(/etc/ssh/sshd_config.d/00-mayday-lockdown.conf), a C(Match User *,!OPERATOR) block
    with C(AllowGroups BREAK-GLASS-GROUP) closed by C(Match all), checks the whole configuration with
    C(sshd -t) (a failing check puts the previous state back and changes nothing else), grants a lease
    (key C(auth-lockdown:sshd)) whose revert removes the file and reloads sshd, reloads sshd (open sessions
    stay), waits until the running sshd has re-read its configuration (it listens on new sockets after
    re-executing itself), and proves with C(sshd -T -C) that the operator is not restricted and any other user is.
  - The lockdown only narrows who logs in - a user the site's own configuration refuses stays refused.
  - No C(/run/nologin) - pam_nologin would refuse the operator too (a non-root user).
  - Turning it on again keeps the lease and moves its expiry.
  - I(state=off) releases the lease (its revert runs now) and proves nobody is restricted by it any more.
  - Check mode only reads and says what would change.
options:
  state: {type: str, choices: ["on", "off"], default: "on", description: On (locked down) or off.}
  operator: {type: str, default: "", description: The operator's own remote user - never locked out (required for on).}
  break_glass_group: {type: str, default: "", description: Members of this group still log in (none when empty).}
  duration: {type: str, default: 30m, description: "on - the lease, e.g. 30m, 2h."}
  lease_min: {type: str, default: 1m, description: Shortest lease (inventory mayday_lease_min).}
  lease_max: {type: str, default: 4h, description: Longest lease (inventory mayday_lease_max).}
  incident: {type: str, default: "", description: The incident, on the lease.}
  service: {type: str, default: "", description: "sshd's unit, found when empty (ssh on Debian, sshd elsewhere)."}
  host_label: {type: str, description: "Name of the host in the summary (inventory_hostname)."}
author: mayday
"""

EXAMPLES = r"""
- name: Logins | no new ones but the operator's for 30 minutes
  mayday_auth_lockdown:
    state: "on"
    operator: mayday
    break_glass_group: mayday-breakglass
    duration: 30m
"""

RETURN = r"""
report: {description: "before, after (locked, lease), proof (operator and another user as sshd sees them), lease.",
         type: dict, returned: always}
summary: {description: One line naming the host., type: str, returned: always}
"""

import os
import pwd
import re
import socket
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.mayday_lease import (
    LEASED_CHANGE_ARGS,
    LeaseError,
    Leases,
    check_bounds,
    install,
    parse_duration,
    run_bounded,
)

CONF = "/etc/ssh/sshd_config.d/00-mayday-lockdown.conf"
MAIN = "/etc/ssh/sshd_config"
KEY = "auth-lockdown:sshd"
NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
PROBE_USER = "mayday-lockdown-probe"  # no such account needed: sshd -T -C evaluates the rules for a name
TIMEOUT_S = 30
RELOAD_WAIT_S = 15
NOBODY = "mayday-nobody-logs-in"  # AllowGroups of a group nobody is in: no break-glass group given


class AuthLockdownError(Exception):
    pass


def run(argv, check=True):
    return run_bounded(argv, AuthLockdownError, TIMEOUT_S, check=check)


def config(operator, group):
    return ("# mayday lockdown: no new SSH logins but the operator's and the break-glass group's.\n"
            "# A lease removes this file at expiry; `mayday lockdown lift` now. Open sessions are not touched.\n"
            f"Match User *,!{operator}\n"
            f"    AllowGroups {group or NOBODY}\n"
            "# Whatever follows (sshd_config after its Include) applies to everyone again.\n"
            "Match all\n")


def service_name(given):
    if given:
        return given
    out = run(["systemctl", "list-unit-files", "ssh.service", "--no-legend"], check=False)
    return "ssh" if "ssh.service" in out.stdout else "sshd"


def included_first():
    """The drop-in is read first only when sshd_config includes sshd_config.d before its own settings."""
    with open(MAIN, encoding="utf-8") as handle:
        for line in handle:
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            return text.split()[0].lower() == "include" and "sshd_config.d" in text
    return False


def effective(user):
    """What sshd would apply to a new login of `user` (sshd -T -C): its allowusers / allowgroups."""
    out = run(["sshd", "-T", "-C", f"user={user},host=mayday-probe,addr=192.0.2.1,laddr=192.0.2.2,lport=22"])
    found: dict[str, list[str]] = {"allowusers": [], "allowgroups": []}
    for line in out.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key in found:
            found[key] += value.split()
    return found


def listening_sockets(unit):
    """Inodes of the TCP sockets sshd's main process listens on. A reload (SIGHUP) makes sshd execute
    itself anew, read its configuration, then listen on new sockets: new inodes show the running daemon
    has the new rules, which sshd -T (the files) cannot. Empty when nothing listens for the unit
    (socket activation: each connection reads the files)."""
    pid = run(["systemctl", "show", "-p", "MainPID", "--value", unit], check=False).stdout.strip()
    if not pid.isdigit() or pid == "0":
        return set()
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as handle:
                listening |= {f[9] for f in (line.split() for line in handle) if f[3] == "0A"}
        except OSError:
            continue
    owned = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owned.add(target[len("socket:["):-1])
    except OSError:
        return set()
    return owned & listening


def wait_reloaded(unit, before):
    """Until sshd listens again on sockets it did not have before the reload; `systemctl reload`
    returns as soon as the signal is sent."""
    if not before:
        return 0.0
    started = time.monotonic()
    while True:
        now = listening_sockets(unit)
        if now and not now & before:
            return round(time.monotonic() - started, 2)
        if time.monotonic() - started > RELOAD_WAIT_S:
            raise AuthLockdownError(f"sshd has not re-read its configuration {RELOAD_WAIT_S} s after the reload (it "
                                    "still listens on the sockets it had before): the running daemon keeps the old "
                                    "rules")
        time.sleep(0.1)


def state_now(leases):
    lease = leases.by_key(KEY)
    return {"locked": os.path.exists(CONF),
            "lease": {k: lease[k] for k in ("id", "expires", "incident")} if lease else None}


def prove(operator, group, on):
    """sshd's own view of a new login: the operator unrestricted, anyone else limited to the group
    (on); the drop-in gone and the configuration valid (off)."""
    op, other = effective(operator), effective(PROBE_USER)
    proof = {"operator": op, "other": other}
    if on:
        if other["allowgroups"] != [group or NOBODY]:
            raise AuthLockdownError(f"sshd does not limit another user's new login to {group or 'nobody'}: {other}")
        if op["allowgroups"]:
            raise AuthLockdownError(f"sshd would restrict the operator {operator} too: {op}")
    else:
        if os.path.exists(CONF):
            raise AuthLockdownError(f"the lockdown is off but {CONF} is still there")
        run(["sshd", "-t"])
    return proof


def main():
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["on", "off"], "default": "on"},
            "operator": {"type": "str", "default": ""},
            "break_glass_group": {"type": "str", "default": ""},
            "service": {"type": "str", "default": ""},
            **LEASED_CHANGE_ARGS,
        },
        supports_check_mode=True,
    )
    p = module.params
    host = p["host_label"] or socket.gethostname()
    leases = Leases()
    before = state_now(leases)
    report = {"before": before, "state": p["state"], "operator": p["operator"],
              "break_glass_group": p["break_glass_group"], "file": CONF}
    try:
        operator, group = p["operator"], p["break_glass_group"]
        if p["state"] == "on":
            if not NAME.match(operator or ""):
                raise AuthLockdownError(f"operator {operator!r} is not a user name: the operator's own remote user "
                                        "(ansible_user or mayday_operator_user) is never locked out, so it is required")
            try:
                pwd.getpwnam(operator)
            except KeyError:
                raise AuthLockdownError(f"operator {operator} has no account on this host: the lockdown would shut "
                                        "everyone out") from None
            if group and not NAME.match(group):
                raise AuthLockdownError(f"break-glass group {group!r} is not a group name")
            if not included_first():
                raise AuthLockdownError(f"{MAIN} does not include sshd_config.d/*.conf before its own settings: a "
                                        "drop-in would not take precedence")
        seconds = check_bounds(parse_duration(p["duration"]), parse_duration(p["lease_min"]),
                               parse_duration(p["lease_max"])) if p["state"] == "on" else 0
        unit = service_name(p["service"])
        if module.check_mode:
            would = ("write the drop-in, sshd -t, lease, reload" if p["state"] == "on" and not before["locked"]
                     else "move the lease" if p["state"] == "on" else
                     "release the lease (removes the drop-in)" if before["lease"] or before["locked"] else "nothing")
            report["would"] = would
            module.exit_json(changed=would != "nothing", report=report, msg=f"{host}: would {would}",
                             summary=f"{host}: would {would}")
        reload = ["systemctl", "reload", unit]
        if p["state"] == "on":
            wanted = config(operator, group)
            previous = None
            if os.path.exists(CONF):
                with open(CONF, encoding="utf-8") as handle:
                    previous = handle.read()
            if previous != wanted:
                with open(CONF, "w", encoding="utf-8") as handle:
                    handle.write(wanted)
                os.chmod(CONF, 0o644)
                try:
                    run(["sshd", "-t"])
                except AuthLockdownError:
                    if previous is None:
                        os.remove(CONF)
                    else:
                        with open(CONF, "w", encoding="utf-8") as handle:
                            handle.write(previous)
                    raise
            install()
            # The lease before the reload: whatever happens next, the host lifts it at expiry.
            lease, _ = leases.grant(KEY, p["incident"], f"no new SSH logins but {operator} and group {group or '-'}",
                                    [["rm", "-f", CONF], reload], seconds, kind="auth-lockdown")
            report["lease"] = {k: lease[k] for k in ("id", "expires", "incident")}
            try:
                listening = listening_sockets(unit)
                run(reload)
                report["reload_taken_s"] = wait_reloaded(unit, listening)
                report["proof"] = prove(operator, group, True)
            except AuthLockdownError:
                leases.release(lease["id"], revert=True)  # not proven: nothing half-on stays behind
                raise
            msg = (f"no new SSH logins but {operator}" + (f" and group {group}" if group else "")
                   + f", lease {lease['id']} until {lease['expires']}; open sessions kept")
        else:
            listening = listening_sockets(unit)
            if before["lease"]:
                leases.release(before["lease"]["id"], revert=True)  # its revert removes the file, reloads
            if os.path.exists(CONF):  # a drop-in whose lease is gone: removed all the same
                os.remove(CONF)
                run(reload)
            if before["lease"] or before["locked"]:
                report["reload_taken_s"] = wait_reloaded(unit, listening)
            report["proof"] = prove(operator or "root", group, False)
            msg = "SSH logins open again" + (f", lease {before['lease']['id']} released" if before["lease"] else "")
        report["after"] = state_now(leases)
        module.exit_json(changed=p["state"] == "on" or before["locked"] or bool(before["lease"]), report=report,
                         msg=f"{host}: {msg}", summary=f"{host}: {msg}")
    except (AuthLockdownError, LeaseError, OSError) as exc:
        report["after"] = state_now(leases)
        changed = report["after"] != before
        module.fail_json(msg=f"{host}: {exc}", changed=changed, refused=not changed, report=report,
                         summary=f"{host}: {exc}")


if __name__ == "__main__":
    main()
