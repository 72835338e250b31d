#!/usr/bin/python
# API rate limit under a lease: an nginx limit_req rule of mayday's own, checked with nginx -t before
# the reload, proven by a burst that gets 429s; the host removes it at the lease's expiry.
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_rate_limit
short_description: Put an nginx rate limit in front of the app under a lease, or take it away, and prove it
description:
  - I(state=on) writes C(/etc/nginx/conf.d/mayday-rate-limit.conf) (http level, so every site of the
    host - a C(limit_req_zone) keyed by client address and a C(limit_req) with status 429), checks the
    whole configuration with C(nginx -t) (a failing check removes the file and changes nothing else),
    grants a lease (key C(rate-limit:nginx)) whose revert removes the file and reloads nginx, then
    reloads nginx gracefully and proves the limit with a burst of requests that must get 429s.
  - Turning it on again keeps the lease and moves its expiry.
  - I(state=off) releases the lease (its revert runs now) and proves a burst gets no 429.
  - Check mode only reads and says what would change.
options:
  state: {type: str, choices: ["on", "off"], default: "on", description: On (limited) or off.}
  rate: {type: int, default: 10, description: Requests per second per client address.}
  burst: {type: int, default: 20, description: Requests over the rate a client may send at once before 429s.}
  duration: {type: str, default: 30m, description: "on - the lease, e.g. 30m, 2h."}
  lease_min: {type: str, default: 1m, description: Shortest lease (inventory mayday_lease_min).}
  lease_max: {type: str, default: 4h, description: Longest lease (inventory mayday_lease_max).}
  incident: {type: str, default: "", description: The incident, on the lease.}
  probe_url: {type: str, default: "http://127.0.0.1/health-check", description: What the proving burst requests.}
  probe_count: {type: int, default: 60, description: Requests in the proving burst.}
  trusted_proxies:
    type: list
    elements: str
    default: []
    description:
      - Addresses or CIDRs of the load balancers or proxies in front of nginx. Behind them every client
        arrives from the proxy's address, so without this list all users share one bucket and the limit
        throttles the whole site. With it, requests from these addresses are keyed by the last address in
        I(client_header) (the client the proxy saw); anyone else's header is ignored, and only the limit's
        key changes (C($remote_addr), logs and access rules see what they saw before).
  client_header:
    type: str
    default: X-Forwarded-For
    description: The header the trusted proxies add the client address to (its last address is the key).
  host_label: {type: str, description: "Name of the host in the summary (inventory_hostname)."}
author: mayday
"""

EXAMPLES = r"""
- name: Rate limit | 10 requests per second per client for 30 minutes
  mayday_rate_limit:
    state: "on"
    rate: 10
    duration: 30m
"""

RETURN = r"""
report: {description: "before, after (limited, lease), probe (sent, limited, other), lease.", type: dict,
         returned: always}
summary: {description: One line naming the host., type: str, returned: always}
"""

import os
import re
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

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

CONF = "/etc/nginx/conf.d/mayday-rate-limit.conf"
KEY = "rate-limit:nginx"
RELOAD = ["systemctl", "reload", "nginx"]
TIMEOUT_S = 30
WORKERS_WAIT_S = 15
BURST_CLIENTS = 30  # requests in flight at once: a flood outpaces the rate even when each answer is slow


class RateLimitError(Exception):
    pass


PROXY = re.compile(r"[0-9A-Fa-f:.]+(/[0-9]{1,3})?")
HEADER = re.compile(r"[A-Za-z0-9-]{1,64}")


def config(rate, burst, trusted_proxies=(), client_header="X-Forwarded-For"):
    """The rule, keyed by the client address. From a trusted proxy the key is the last address in its
    header (the one the proxy saw; anything before it the client may have written), so each user
    behind a load balancer gets a limit of their own. Only the limit's key changes: $remote_addr,
    logs, allow/deny rules and the app see what they saw before."""
    lines = ["# mayday rate limit (a lease removes it at expiry; `mayday lockdown lift` now)"]
    key = "$binary_remote_addr"
    if trusted_proxies:
        header = "$http_" + client_header.lower().replace("-", "_")
        lines += ["geo $mayday_rate_limit_via_proxy {", "    default 0;"]
        lines += [f"    {proxy} 1;" for proxy in trusted_proxies]
        lines += ["}",
                  f"map {header} $mayday_rate_limit_forwarded {{",
                  '    "~(?<last>[^,\\s]+)\\s*$" $last;',
                  "    default $binary_remote_addr;",
                  "}",
                  "map $mayday_rate_limit_via_proxy $mayday_rate_limit_client {",
                  "    1 $mayday_rate_limit_forwarded;",
                  "    default $binary_remote_addr;",
                  "}"]
        key = "$mayday_rate_limit_client"
    lines += [f"limit_req_zone {key} zone=mayday_rate_limit:10m rate={rate}r/s;",
              f"limit_req zone=mayday_rate_limit burst={burst} nodelay;",
              "limit_req_status 429;"]
    return "\n".join(lines) + "\n"


def check_proxies(trusted_proxies, client_header):
    bad = [proxy for proxy in trusted_proxies if not PROXY.fullmatch(proxy)]
    if bad:
        raise RateLimitError(f"trusted_proxies: {bad} are not addresses; valid: IPv4 or IPv6 addresses or CIDRs "
                             "(10.0.0.0/8, 2001:db8::/32)")
    if not HEADER.fullmatch(client_header):
        raise RateLimitError(f"client_header {client_header!r} is not a header name; valid: letters, digits "
                             "and '-', e.g. X-Forwarded-For or X-Real-IP")


def run(argv):
    return run_bounded(argv, RateLimitError, TIMEOUT_S).stdout


def workers():
    """nginx's worker processes: a reload starts new ones with the new configuration; the old ones
    serve with the old until they finish, so the proof waits for them to be gone."""
    try:
        with open("/run/nginx.pid") as handle:
            master = handle.read().strip()
    except OSError:
        return set()
    found = set()
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if pid.isdigit() and fields[1] == master:
            found.add(pid)
    return found


def reload_and_wait():
    old = workers()
    run(RELOAD)
    deadline = time.monotonic() + WORKERS_WAIT_S
    while workers() & old:
        if time.monotonic() > deadline:
            raise RateLimitError(f"nginx's old workers still serve {WORKERS_WAIT_S} s after the reload")
        time.sleep(0.1)


def burst(url, count):
    """`count` requests from this host (one client address) sent as a flood arrives, many at once;
    counts the 429s. One after another, a slow answer (a loaded host) can keep them under the rate."""
    def one(_):
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return answer.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError):
            return 0

    seen = {"sent": count, "limited": 0, "ok": 0, "other": 0}
    with ThreadPoolExecutor(max_workers=min(count, BURST_CLIENTS)) as pool:
        for code in pool.map(one, range(count)):
            seen["limited" if code == 429 else "ok" if 200 <= code < 300 else "other"] += 1
    return seen


def state_now(leases):
    lease = leases.by_key(KEY)
    return {"limited": os.path.exists(CONF),
            "lease": {k: lease[k] for k in ("id", "expires", "incident")} if lease else None}


def main():
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["on", "off"], "default": "on"},
            "rate": {"type": "int", "default": 10},
            "burst": {"type": "int", "default": 20},
            "probe_url": {"type": "str", "default": "http://127.0.0.1/health-check"},
            "probe_count": {"type": "int", "default": 60},
            "trusted_proxies": {"type": "list", "elements": "str", "default": []},
            "client_header": {"type": "str", "default": "X-Forwarded-For"},
            **LEASED_CHANGE_ARGS,
        },
        supports_check_mode=True,
    )
    p = module.params
    host = p["host_label"] or socket.gethostname()
    leases = Leases()
    before = state_now(leases)
    report = {"before": before, "state": p["state"]}
    try:
        if p["state"] == "on":  # off never depends on these settings: a lift must always go through
            if not 1 <= p["rate"] <= 100000 or not 0 <= p["burst"] <= 100000:
                raise RateLimitError(f"rate {p['rate']} / burst {p['burst']} out of range; valid: rate 1..100000, "
                                     "burst 0..100000")
            check_proxies(p["trusted_proxies"], p["client_header"])
            report["keyed_by"] = (f"{p['client_header']} from {', '.join(p['trusted_proxies'])}, else the client "
                                  "address" if p["trusted_proxies"] else "the client address (no trusted proxies)")
        seconds = check_bounds(parse_duration(p["duration"]), parse_duration(p["lease_min"]),
                               parse_duration(p["lease_max"])) if p["state"] == "on" else 0
        if module.check_mode:
            would = ("write the limit, nginx -t, lease, reload" if p["state"] == "on" and not before["limited"]
                     else "move the lease" if p["state"] == "on" else
                     "release the lease (removes the limit)" if before["lease"] or before["limited"] else "nothing")
            report["would"] = would
            module.exit_json(changed=would != "nothing", report=report, msg=f"{host}: would {would}",
                             summary=f"{host}: would {would}")
        if p["state"] == "on":
            wanted = config(p["rate"], p["burst"], p["trusted_proxies"], p["client_header"])
            previous = None
            if os.path.exists(CONF):
                with open(CONF) as handle:
                    previous = handle.read()
            if previous != wanted:
                with open(CONF, "w") as handle:
                    handle.write(wanted)
                os.chmod(CONF, 0o644)
                try:
                    run(["nginx", "-t", "-q"])
                except RateLimitError:
                    if previous is None:
                        os.remove(CONF)
                    else:
                        with open(CONF, "w") as handle:
                            handle.write(previous)
                    raise
            install()
            # The lease before the reload: whatever happens next, the host removes the limit at expiry.
            lease, _ = leases.grant(KEY, p["incident"], f"nginx rate limit {p['rate']} r/s burst {p['burst']}",
                                    [["rm", "-f", CONF], RELOAD], seconds, kind="rate-limit")
            report["lease"] = {k: lease[k] for k in ("id", "expires", "incident")}
            try:
                reload_and_wait()
                probe = burst(p["probe_url"], p["probe_count"])
                report["probe"] = probe
                if not probe["limited"]:
                    raise RateLimitError(f"the limit is in but a burst of {probe['sent']} got no 429 ({probe})")
            except RateLimitError:
                leases.release(lease["id"], revert=True)  # not proven: nothing half-on stays behind
                raise
            msg = (f"rate limit {p['rate']} r/s burst {p['burst']} on, lease {lease['id']} until {lease['expires']}; "
                   f"a burst of {probe['sent']} got {probe['limited']} 429s; keyed by {report['keyed_by']}")
        else:
            old = workers()
            if before["lease"]:
                leases.release(before["lease"]["id"], revert=True)  # its revert removes the file, reloads
            if os.path.exists(CONF):  # a limit whose lease is gone: removed all the same
                os.remove(CONF)
                run(RELOAD)
            deadline = time.monotonic() + WORKERS_WAIT_S
            while before["limited"] and workers() & old and time.monotonic() < deadline:
                time.sleep(0.1)
            probe = burst(p["probe_url"], p["probe_count"])
            report["probe"] = probe
            if probe["limited"]:
                raise RateLimitError(f"the limit was removed but a burst still got {probe['limited']} 429s")
            msg = "rate limit off" + (f", lease {before['lease']['id']} released" if before["lease"] else "")
        report["after"] = state_now(leases)
        module.exit_json(changed=p["state"] == "on" or before["limited"] or bool(before["lease"]), report=report,
                         msg=f"{host}: {msg}", summary=f"{host}: {msg}")
    except (RateLimitError, LeaseError) as exc:
        report["after"] = state_now(leases)
        changed = report["after"] != before
        module.fail_json(msg=f"{host}: {exc}", changed=changed, refused=not changed, report=report,
                         summary=f"{host}: {exc}")


if __name__ == "__main__":
    main()
