#!/usr/bin/python
# Database ports only from the app hosts, under a lease: an nftables `inet` table of mayday's own
# (IPv4 and IPv6) that rejects connections to the database ports from any other address.
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_db_guard
short_description: Let only the app hosts (and the management allowlist) reach the database ports, under a lease
description:
  - I(state=on) resolves the app hosts' names on this host (what their packets come from), refuses
    before any change when one does not resolve or the list is empty, grants a lease (key
    C(db-guard)) whose revert deletes the table, then loads the table C(inet mayday_dbguard); on the
    I(ports), loopback, the app hosts' addresses and I(allow) are accepted, everything else is
    rejected with a TCP reset (clients fail at once instead of hanging).
  - The table lives in memory only; a restart ends it. Turning it on again replaces the table and
    moves the lease.
  - I(state=off) releases the lease (its revert deletes the table) and deletes any table left.
  - Check mode only reads and says what would change.
options:
  state: {type: str, choices: ["on", "off"], default: "on", description: On (restricted) or off.}
  ports: {type: list, elements: int, default: [], description: "on - the database ports (3306; 5432, 6432)."}
  app_hosts: {type: list, elements: str, default: [], description: "on - the app hosts' names or addresses."}
  allow: {type: list, elements: str, default: [],
          description: "on - more CIDRs that keep access (the management allowlist, replicas)."}
  duration: {type: str, default: 30m, description: "on - the lease, e.g. 30m, 2h."}
  lease_min: {type: str, default: 1m, description: Shortest lease (inventory mayday_lease_min).}
  lease_max: {type: str, default: 4h, description: Longest lease (inventory mayday_lease_max).}
  incident: {type: str, default: "", description: The incident, on the lease.}
  host_label: {type: str, description: "Name of the host in the summary (inventory_hostname)."}
author: mayday
"""

EXAMPLES = r"""
- name: Restrict | MariaDB only from the web hosts for 30 minutes
  mayday_db_guard:
    ports: [3306]
    app_hosts: "{{ groups['web'] }}"
    duration: 30m
"""

RETURN = r"""
report: {description: "before, after (table_live, lease), allowed (v4, v6), ports, lease.", type: dict,
         returned: always}
summary: {description: One line naming the host., type: str, returned: always}
"""

import ipaddress
import socket

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.mayday_lease import (
    LEASED_CHANGE_ARGS,
    LeaseError,
    Leases,
    check_bounds,
    install,
    parse_duration,
)
from ansible.module_utils.mayday_nft_isolate import IsolateError, networks, nft, nft_path, set_text

TABLE = "mayday_dbguard"
KEY = "db-guard"
DROP_TABLE = f"add table inet {TABLE}; delete table inet {TABLE}"


def table_live():
    rc, _, _ = nft("list", "table", "inet", TABLE)
    return rc == 0


def resolve(names):
    """Each name's addresses as this host resolves them; a name that does not resolve is refused."""
    found: list[str] = []
    for name in names:
        try:
            infos = socket.getaddrinfo(str(name), None, proto=socket.IPPROTO_TCP)
        except socket.gaierror:
            raise IsolateError(f"app host {name!r} does not resolve on this host: its clients would be cut off; "
                               "valid: names or addresses this host can resolve", refused=True) from None
        found.extend(str(info[4][0]).split("%")[0] for info in infos)
    return found


def build(ports, allow4, allow6, label=""):
    dports = "tcp dport { " + ", ".join(str(p) for p in ports) + " }"
    rules = ['iif "lo" accept', f"{dports} ip saddr @allow4 accept", f"{dports} ip6 saddr @allow6 accept",
             f"{dports} reject with tcp reset"]
    return "".join([f"# mayday database guard{': ' + label if label else ''}. Undo: mayday lockdown lift, or\n"
                    f"# nft delete table inet {TABLE}\n",
                    f"add table inet {TABLE}\n", f"delete table inet {TABLE}\n", f"table inet {TABLE} {{\n",
                    set_text("allow4", "ipv4", allow4), set_text("allow6", "ipv6", allow6),
                    "\tchain input {\n\t\ttype filter hook input priority filter - 5; policy accept;\n",
                    *(f"\t\t{rule}\n" for rule in rules), "\t}\n}\n"])


def state_now(leases):
    lease = leases.by_key(KEY)
    return {"table_live": table_live(),
            "lease": {k: lease[k] for k in ("id", "expires", "incident")} if lease else None}


def main():
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["on", "off"], "default": "on"},
            "ports": {"type": "list", "elements": "int", "default": []},
            "app_hosts": {"type": "list", "elements": "str", "default": []},
            "allow": {"type": "list", "elements": "str", "default": []},
            **LEASED_CHANGE_ARGS,
        },
        supports_check_mode=True,
    )
    p = module.params
    host = p["host_label"] or socket.gethostname()
    leases = Leases()
    report = {"state": p["state"]}
    try:
        nft_path()
        before = report["before"] = state_now(leases)
        if p["state"] == "on":
            seconds = check_bounds(parse_duration(p["duration"]), parse_duration(p["lease_min"]),
                                   parse_duration(p["lease_max"]))
            if not p["ports"] or not all(0 < port < 65536 for port in p["ports"]):
                raise IsolateError(f"database ports {p['ports']} invalid; valid: 1..65535, at least one", refused=True)
            if not p["app_hosts"]:
                raise IsolateError("no app hosts: every client of the database would be cut off; valid: the "
                                   "inventory's web group", refused=True)
            nets4, nets6 = networks(resolve(p["app_hosts"]) + list(p["allow"]), "allowed")
            # Collapsed: an interval set refuses overlapping elements.
            allow4, allow6 = list(ipaddress.collapse_addresses(nets4)), list(ipaddress.collapse_addresses(nets6))
            report.update(ports=p["ports"], allowed={"v4": [str(n) for n in allow4], "v6": [str(n) for n in allow6]})
        if module.check_mode:
            would = ("load the table under a lease" if p["state"] == "on" else
                     "release the lease (deletes the table)" if before["lease"] or before["table_live"] else "nothing")
            report["would"] = would
            module.exit_json(changed=would != "nothing", report=report, msg=f"{host}: would {would}",
                             summary=f"{host}: would {would}")
        if p["state"] == "on":
            install()
            # The lease before the table: whatever happens next, the host deletes it at expiry.
            lease, _ = leases.grant(KEY, p["incident"], f"database ports {p['ports']} only from the app hosts",
                                    [[nft_path(), DROP_TABLE]], seconds, kind="db-guard")
            report["lease"] = {k: lease[k] for k in ("id", "expires", "incident")}
            rc, _, err = nft("-f", "-", stdin=build(p["ports"], allow4, allow6, p["incident"]))
            if rc != 0 or not table_live():
                leases.release(lease["id"], revert=True)
                raise IsolateError(f"nft refused the database guard table: {err}")
            allowed = ", ".join(report["allowed"]["v4"] + report["allowed"]["v6"])
            msg = f"database ports {p['ports']} only from {allowed}; lease {lease['id']} until {lease['expires']}"
        else:
            if before["lease"]:
                leases.release(before["lease"]["id"], revert=True)
            if table_live():  # a table whose lease is gone (confirmed): deleted all the same
                rc, _, err = nft(DROP_TABLE)
                if rc != 0:
                    raise IsolateError(f"nft could not delete the database guard table: {err}")
            msg = "database guard off"
        report["after"] = state_now(leases)
        module.exit_json(changed=report["after"] != before or p["state"] == "on", report=report,
                         msg=f"{host}: {msg}", summary=f"{host}: {msg}")
    except (IsolateError, LeaseError) as exc:
        report["after"] = state_now(leases) if "before" in report else {}
        changed = bool(report.get("before")) and report["after"] != report["before"]
        module.fail_json(msg=f"{host}: {exc}", changed=changed, refused=not changed, report=report,
                         summary=f"{host}: {exc}")


if __name__ == "__main__":
    main()
