#!/usr/bin/python
# Network isolation, commit-confirmed: the host's half (the controller's self-test is in the action plugin).
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_nft_isolate
short_description: Isolate a host with an nftables table under a lease, confirm it, or lift it
description:
  - One C(inet) table C(mayday_isolate) (IPv4 and IPv6) whose input, output and forward chains drop
    everything but loopback, the management allowlist plus the controller's address (all traffic, both
    ways), replies from the configured non-loopback resolvers, ICMPv6 neighbour discovery and ICMP
    errors of allowed flows, and DHCP when I(dhcp) says so. Connections with any other peer, older
    ones included, are cut.
  - C(apply) - refuses bad input before anything changes (an empty allowlist, a controller outside it,
    a lease out of bounds, an isolation already in force); saves C(nft -s list ruleset) to
    C(/var/lib/mayday/isolate/before.nft) (0600); checks the table with C(nft -c); arms a lease (key
    C(network-isolate), M(mayday_lease)) of I(probation) (at most I(duration)) whose revert deletes the
    table; then loads it. In memory only - a restart ends it.
  - C(hold) - after the controller's self-test, the lease runs for I(duration) from now.
  - C(revert) - the lease released with its revert (the table gone); the ruleset compared with before.
  - C(confirm) - writes C(/etc/nftables.d/mayday-isolate.nft) and the enabled unit
    C(mayday-isolate.service) that loads it at boot, then releases the lease without reverting.
  - C(lift) - the table, the persistent copy, the unit and the lease gone; proven by C(nft -s list
    ruleset) equal to the one saved before the apply.
  - C(inspect) - read-only - what is in force, the controller's address as the host sees it (the
    SSH session's client), the host's own addresses, the resolvers.
  - Check mode only reads and says what would change.
options:
  op: {type: str, choices: [inspect, apply, hold, revert, confirm, lift], default: inspect, description: What to do.}
  allowlist: {type: list, elements: str, default: [], description: "Management CIDRs (mayday_management_allowlist)."}
  controller:
    type: list
    elements: str
    default: []
    description: "The controller's addresses; must be in I(allowlist) (the action plugin detects them when empty)."
  internal: {type: list, elements: str, default: [], description: "Internal CIDRs (mayday_internal_networks)."}
  internal_only: {type: bool, default: false, description: "Also allow I(internal) (C(--internal-only))."}
  dns: {type: bool, default: true, description: "Allow the non-loopback nameservers of /etc/resolv.conf (port 53)."}
  dhcp: {type: bool, default: false, description: "Allow DHCP and DHCPv6 (a host whose address comes from DHCP)."}
  duration: {type: str, default: 30m, description: "apply, hold - the lease, e.g. 30m, 2h."}
  probation: {type: str, default: 2m, description: "apply - the lease until the self-test passed (<= I(duration))."}
  lease_min: {type: str, default: 1m, description: Shortest lease (mayday_lease_min).}
  lease_max: {type: str, default: 4h, description: Longest lease (mayday_lease_max).}
  incident: {type: str, default: "", description: The incident, on the lease and the record.}
  host_label: {type: str, description: "Name of the host in the summary (inventory_hostname)."}
  management_address:
    type: str
    default: ""
    description: >-
      apply - the address the controller reaches the host at for the self-test (default ansible_host over
      SSH, else the host's own source address toward its default route). Handled on the controller.
  management_port: {type: int, default: 22, description: "apply - the port of the self-test."}
  self_test_banner: {type: str, default: "SSH-", description: "apply - the port's first bytes (empty - connect only)."}
author: mayday
"""

RETURN = r"""
report: {description: "op, state before and after (table_live, persisted, lease), lease, ruleset digest, identical.",
         type: dict, returned: always}
facts: {description: "inspect - ssh_client, ssh_server, primary (v4, v6), resolvers.", type: dict, returned: inspect}
summary: {description: One line naming the host., type: str, returned: always}
"""

import difflib
import json
import os
import socket
import subprocess

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.mayday_lease import (
    LEASED_CHANGE_ARGS,
    LeaseError,
    Leases,
    check_bounds,
    install,
    parse_duration,
)
from ansible.module_utils.mayday_nft_isolate import (
    BEFORE,
    DROP_TABLE,
    LEASE_KEY,
    PERSIST,
    RULESET,
    STATE,
    TABLE,
    UNIT,
    UNIT_PATH,
    UNIT_TEXT,
    IsolateError,
    boot_key,
    build,
    check_input,
    digest,
    nft,
    nft_path,
    read,
    resolvers,
    revert_argv,
    ruleset_now,
    run,
    state_doc,
    utc,
    write,
)


def ssh_session():
    """(client, server) of the SSH session this module runs under, from the nearest ancestor that has
    SSH_CONNECTION (sudo drops it from our own environment); (None, None) without SSH (docker exec)."""
    pid = os.getppid()
    for _ in range(24):
        if pid <= 1:
            break
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                env = handle.read().split(b"\0")
            with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        for item in env:
            if item.startswith(b"SSH_CONNECTION="):
                fields = item.split(b"=", 1)[1].decode(errors="replace").split()
                if len(fields) == 4:
                    return fields[0], fields[2]
        pid = ppid
    return None, None


def primary():
    """The host's source address toward the default route, per family (ip route get sends nothing)."""
    found = {}
    for family, probe in (("v4", "192.0.2.1"), ("v6", "2001:db8::1")):
        rc, out, _ = run(["ip", "-j", "route", "get", probe])
        try:
            found[family] = json.loads(out)[0].get("prefsrc") if rc == 0 else None
        except (ValueError, IndexError, AttributeError):
            found[family] = None
    return found


def main():
    module = AnsibleModule(
        argument_spec={
            "op": {"type": "str", "choices": ["inspect", "apply", "hold", "revert", "confirm", "lift"],
                   "default": "inspect"},
            "allowlist": {"type": "list", "elements": "str", "default": []},
            "controller": {"type": "list", "elements": "str", "default": []},
            "internal": {"type": "list", "elements": "str", "default": []},
            "internal_only": {"type": "bool", "default": False},
            "dns": {"type": "bool", "default": True},
            "dhcp": {"type": "bool", "default": False},
            "probation": {"type": "str", "default": "2m"},
            **LEASED_CHANGE_ARGS,
            # Handled by the action plugin on the controller (the self-test); here only to be accepted.
            "management_address": {"type": "str", "default": ""},
            "management_port": {"type": "int", "default": 22},
            "self_test_banner": {"type": "str", "default": "SSH-"},
        },
        supports_check_mode=True,
    )
    p = module.params
    host = p["host_label"] or socket.gethostname()
    check = module.check_mode
    leases = Leases()
    op = p["op"]
    report = {"op": op}

    def done(changed, msg, **extra):
        report["after"] = state_doc(leases) if not check else report.get("before")
        module.exit_json(changed=changed, msg=f"{host}: {msg}", summary=f"{host}: {msg}", report=report, **extra)

    try:
        nft_path()
        before = state_doc(leases)
        report["before"] = before
        if op == "inspect":
            client, server = ssh_session()
            facts = {"ssh_client": client, "ssh_server": server, "primary": primary(), "resolvers": resolvers()}
            done(False, "isolated" if before["table_live"] else "not isolated", facts=facts)

        if op == "apply":
            seconds = check_bounds(parse_duration(p["duration"]), parse_duration(p["lease_min"]),
                                   parse_duration(p["lease_max"]))
            allow4, allow6 = check_input(p["allowlist"], p["controller"], p["internal"], p["internal_only"])
            if before["table_live"] or before["persisted"]:
                lease = before["lease"] or {}
                what = ("confirmed (persistent)" if before["persisted"] else
                        f"under lease {lease.get('id')} until {lease.get('expires')}" if lease else "without a lease")
                raise IsolateError(f"an isolation is already in force ({what}); lift it first "
                                   "(mayday lockdown lift)", refused=True)
            label = f"incident {p['incident']}" if p["incident"] else ""
            text = build(allow4, allow6, resolvers() if p["dns"] else [], p["dhcp"], label)
            report.update(allow=[str(n) for n in allow4 + allow6], ruleset_digest=digest(text),
                          internal_only=p["internal_only"])
            rc, _, err = nft("-c", "-f", "/dev/stdin", stdin=text)
            if rc != 0:
                raise IsolateError(f"the ruleset does not pass nft -c: {err}", refused=True)
            if check:
                done(True, f"would isolate (allow {', '.join(report['allow'])}) for {p['duration']}")
            write(RULESET, text)
            saved = ruleset_now()
            write(BEFORE, saved)
            write(STATE, json.dumps({"incident": p["incident"], "applied": utc(), "allow": report["allow"],
                                     "controller": p["controller"], "internal_only": p["internal_only"],
                                     "duration_s": seconds, "before_digest": digest(saved),
                                     "boot": boot_key()}, indent=1))
            install()
            # The revert is armed on the host before the rule goes in; until the self-test passed it is
            # the short probation, so a wrong ruleset locks the operator out for minutes, not the lease.
            first = min(seconds, parse_duration(p["probation"]))
            record, _ = leases.grant(LEASE_KEY, p["incident"], f"network isolation (table inet {TABLE})",
                                     revert_argv(), first, kind="isolate")
            report["lease"] = {"id": record["id"], "expires": record["expires"], "for_s": first}
            rc, _, err = nft("-f", RULESET)
            if rc != 0:
                leases.release(record["id"], revert=True)
                raise IsolateError(f"nft -f failed, nothing left in force: {err}")
            done(True, f"isolated (allow {', '.join(report['allow'])}); lease {record['id']} reverts it at "
                       f"{record['expires']} unless held after the self-test")

        if op == "hold":
            seconds = check_bounds(parse_duration(p["duration"]), parse_duration(p["lease_min"]),
                                   parse_duration(p["lease_max"]))
            if not before["table_live"] or not before["lease"]:
                raise IsolateError("no isolation under a lease to hold (reverted already?)")
            record = leases.extend(before["lease"]["id"], seconds, incident=p["incident"], check_mode=check)
            report["lease"] = {"id": record["id"], "expires": record["expires"], "for_s": seconds}
            done(True, f"isolated under lease {record['id']} until {record['expires']} (self-test passed)",
                 lease=report["lease"])

        if op == "revert":
            if check:
                done(bool(before["table_live"] or before["lease"]), "would revert the isolation")
            lease = before["lease"]
            if lease:
                leases.release(lease["id"], revert=True)
            else:
                for argv in revert_argv():
                    subprocess.run(argv, capture_output=True, check=False)
            compare(report)
            done(bool(before["table_live"] or lease), "isolation reverted" +
                 ("" if report.get("identical") is not False else " (ruleset differs from before)"))

        if op == "confirm":
            if not before["table_live"] or not before["lease"]:
                why = "confirmed already" if before["persisted"] else "expired, lifted or never applied"
                raise IsolateError(f"nothing to confirm: no isolation under a lease on this host ({why})", refused=True)
            if check:
                done(True, "would make the isolation persistent")
            text = read(RULESET)
            if not text:
                raise IsolateError(f"{RULESET} is missing: cannot write the persistent copy")
            # The copy first, then the commit (the lease released without revert): cut in between, the
            # lease's revert removes the copy too.
            write(PERSIST, text, dir_mode=0o755)
            write(UNIT_PATH, UNIT_TEXT, mode=0o644, dir_mode=0o755)
            for argv in (["systemctl", "daemon-reload"], ["systemctl", "enable", UNIT]):
                rc, _, err = run(argv)
                if rc != 0:
                    raise IsolateError(f"{' '.join(argv)} failed: {err}")
            leases.release(before["lease"]["id"], revert=False)
            done(True, f"isolation confirmed: persistent ({PERSIST}, {UNIT}) until lifted")

        # lift
        active = before["table_live"] or before["persisted"] or before["lease"] or os.path.exists(UNIT_PATH)
        if check:
            done(bool(active), "would lift the isolation" if active else "not isolated")
        if not active:
            compare(report)
            done(False, "not isolated: nothing to lift")
        rc, _, err = nft(DROP_TABLE)
        if rc != 0:
            raise IsolateError(f"nft could not delete table inet {TABLE}: {err}")
        run(["systemctl", "disable", UNIT])
        for path in (PERSIST, UNIT_PATH):
            if os.path.exists(path):
                os.unlink(path)
        run(["systemctl", "daemon-reload"])
        if before["lease"]:
            leases.release(before["lease"]["id"], revert=False)
        record = before["record"]
        compare(report)
        if report.get("identical") is False:
            if record.get("boot") == boot_key():
                raise IsolateError("isolation lifted, but the ruleset differs from the one saved before it "
                                   f"({BEFORE}); see report.diff")
            # Restarted since: other software (Docker, firewalld) re-made its own rules in between.
            done(True, "isolation lifted; the host restarted since it was applied, so the rest of the ruleset "
                       "is as its owners re-made it (report.diff)")
        done(True, "isolation lifted; the ruleset is the one saved before it")
    except (IsolateError, LeaseError) as exc:
        refused = getattr(exc, "refused", False) or (isinstance(exc, LeaseError) and op in ("apply", "hold"))
        report["error"] = str(exc)
        module.fail_json(msg=f"{host}: {exc}", summary=f"{host}: {exc}", refused=refused,
                         changed=False if refused else op in ("revert", "lift", "confirm"), report=report)


def compare(report):
    """The live ruleset against the one saved before the apply: report.identical (None: nothing saved)."""
    saved = read(BEFORE)
    now = ruleset_now()
    report["ruleset_digest_now"] = digest(now)
    if saved is None:
        report["identical"] = None
        return
    report["identical"] = saved == now
    if not report["identical"]:
        report["diff"] = "".join(difflib.unified_diff(saved.splitlines(True), now.splitlines(True), BEFORE,
                                                      "now", n=1))[:4000]
    if os.path.exists(STATE):  # the isolation's record ends with it
        os.unlink(STATE)


if __name__ == "__main__":
    main()
