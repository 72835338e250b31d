# Network isolation, commit-confirmed: one nftables `inet` table of mayday's own (IPv4 and IPv6 in one
# ruleset) that lets through only the management allowlist, under a lease whose revert deletes it.
#
# Order of an apply: refuse bad input before anything changes; save the ruleset as it is (nft -s, 0600);
# arm the lease (the host's own timer) whose revert deletes the table; only then load the table. The
# controller's self-test follows (plugins/action/mayday_nft_isolate.py). The table lives in memory only:
# a restart ends it, and nothing is written for boot until `confirm`, which is the commit point: the
# persistent copy is written first, then the lease is released without its revert. A confirm cut in
# between leaves the lease armed, and its revert also removes that copy.
#
# Only the standard library (shipped as ansible.module_utils.mayday_nft_isolate).
from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import time

TABLE = "mayday_isolate"
STATE_DIR = "/var/lib/mayday/isolate"
BEFORE = STATE_DIR + "/before.nft"  # `nft -s list ruleset` before the table went in
STATE = STATE_DIR + "/state.json"
RULESET = STATE_DIR + "/ruleset.nft"
PERSIST = "/etc/nftables.d/mayday-isolate.nft"
UNIT = "mayday-isolate.service"
UNIT_PATH = "/etc/systemd/system/" + UNIT
LEASE_KEY = "network-isolate"
# Idempotent: adding a table that exists is a no-op, so deleting a missing one never fails the revert.
DROP_TABLE = f"add table inet {TABLE}; delete table inet {TABLE}"

UNIT_TEXT = f"""[Unit]
Description=mayday: network isolation confirmed by an operator (undo: mayday lockdown lift)
DefaultDependencies=no
Wants=network-pre.target
Before=network-pre.target shutdown.target
Conflicts=shutdown.target
ConditionPathExists={PERSIST}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/nft -f {PERSIST}

[Install]
WantedBy=sysinit.target
"""


class IsolateError(Exception):
    """A refusal before anything changed (refused=True) or a failure on the host."""

    def __init__(self, msg, refused=False):
        super().__init__(msg)
        self.refused = refused


def nft_path():
    found = shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft") if os.path.exists(p)), None)
    if not found:
        raise IsolateError("nft is not installed on the host (Debian: apt install nftables)", refused=True)
    return found


def run(argv, stdin=None, timeout=30):
    out = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    return out.returncode, out.stdout, out.stderr.strip()


def nft(*args, stdin=None):
    return run([nft_path(), *args], stdin=stdin)


def ruleset_now():
    """The live ruleset without counters or other state, so two listings of the same rules are equal."""
    rc, out, err = nft("-s", "list", "ruleset")
    if rc != 0:
        raise IsolateError(f"nft list ruleset failed: {err}")
    return out


def table_live():
    rc, _, _ = nft("list", "table", "inet", TABLE)
    return rc == 0


def digest(text):
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- input ---------------------------------------------------------------------------------------
def networks(values, what):
    """CIDRs or addresses -> sorted (v4, v6) lists of networks; a value that does not parse is refused."""
    v4: set[ipaddress.IPv4Network] = set()
    v6: set[ipaddress.IPv6Network] = set()
    for value in values or []:
        try:
            net = ipaddress.ip_network(str(value).strip(), strict=False)
        except ValueError:
            raise IsolateError(f"{what}: {value!r} is not an address or CIDR (10.0.0.0/8, 2001:db8::/32, "
                               "192.0.2.7)", refused=True) from None
        if isinstance(net, ipaddress.IPv4Network):
            v4.add(net)
        else:
            v6.add(net)
    return sorted(v4), sorted(v6)


def covered(address, nets):
    ip = ipaddress.ip_address(address)
    return any(ip in net for net in nets)


def check_input(allowlist, controller, internal, internal_only):
    """The allow sets (v4, v6) or a refusal. The controller must be inside the allowlist: an allowlist
    that does not name the operator's own path is a wrong inventory, and the confirmed ruleset would
    lock the operator out the day the controller is not the one that ran it."""
    allow4, allow6 = networks(allowlist, "mayday_management_allowlist")
    if not allow4 and not allow6:
        raise IsolateError("the management allowlist is empty: isolation would lock everyone out; valid: "
                           "mayday_management_allowlist with the CIDRs the operators manage from", refused=True)
    addresses = [str(a).strip() for a in controller or [] if str(a).strip()]
    if not addresses:
        raise IsolateError("the controller's address is unknown: set mayday_controller_address", refused=True)
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise IsolateError(f"controller address {address!r} is not an IP address", refused=True) from None
        if not covered(address, allow4 + allow6):
            raise IsolateError(f"the management allowlist ({', '.join(map(str, allow4 + allow6))}) does not include "
                               f"the controller's address {address}: this run would lock itself out; valid: an "
                               "allowlist that covers the controller", refused=True)
    if internal_only:
        in4, in6 = networks(internal, "mayday_internal_networks")
        if not in4 and not in6:
            raise IsolateError("--internal-only needs mayday_internal_networks in the inventory; it is empty",
                               refused=True)
        allow4, allow6 = allow4 + in4, allow6 + in6
    c4, c6 = networks(addresses, "controller")
    # Collapsed: an interval set refuses overlapping elements (the controller inside a listed CIDR).
    return (list(ipaddress.collapse_addresses(allow4 + c4)), list(ipaddress.collapse_addresses(allow6 + c6)))


def resolvers(path="/etc/resolv.conf"):
    """Non-loopback nameservers (loopback ones are reached through lo anyway)."""
    found = []
    with contextlib.suppress(OSError), open(path, encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) >= 2 and fields[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    ip = ipaddress.ip_address(fields[1].split("%")[0])
                    if not ip.is_loopback:
                        found.append(str(ip))
    return found


# -- the ruleset ---------------------------------------------------------------------------------
def set_text(name, family, nets, interval=True):
    flags = "flags interval; " if interval else ""
    elements = f" elements = {{ {', '.join(str(n) for n in nets)} }};" if nets else ""
    return f"\tset {name} {{ type {family}_addr; {flags}{elements.strip()} }}\n"


def build(allow4, allow6, dns, dhcp, label=""):
    """The whole table as an nft script that replaces any earlier copy in one transaction."""
    dns4, dns6 = networks(dns, "resolvers")
    nd = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert } " \
         "ip6 hoplimit 255 accept"
    dhcp_in = ["udp sport 67 udp dport 68 accept", "udp sport 547 udp dport 546 accept"] if dhcp else []
    dhcp_out = ["udp sport 68 udp dport 67 accept", "udp sport 546 udp dport 547 accept"] if dhcp else []
    hook = "type filter hook {} priority filter - 10; policy drop;"
    inp = ["iif \"lo\" accept", "ip saddr @allow4 accept", "ip6 saddr @allow6 accept",
           "ip saddr @dns4 meta l4proto { tcp, udp } th sport 53 ct state established accept",
           "ip6 saddr @dns6 meta l4proto { tcp, udp } th sport 53 ct state established accept",
           "ct state related meta l4proto { icmp, ipv6-icmp } accept", nd, *dhcp_in]
    out = ["oif \"lo\" accept", "ip daddr @allow4 accept", "ip6 daddr @allow6 accept",
           "ip daddr @dns4 meta l4proto { tcp, udp } th dport 53 accept",
           "ip6 daddr @dns6 meta l4proto { tcp, udp } th dport 53 accept", nd, *dhcp_out]
    text = [f"# mayday network isolation{': ' + label if label else ''}. Undo: mayday lockdown lift, or\n"
            f"# nft delete table inet {TABLE}\n",
            f"add table inet {TABLE}\n", f"delete table inet {TABLE}\n", f"table inet {TABLE} {{\n",
            set_text("allow4", "ipv4", allow4), set_text("allow6", "ipv6", allow6),
            set_text("dns4", "ipv4", dns4, False), set_text("dns6", "ipv6", dns6, False)]
    for name, rules in (("input", inp), ("output", out), ("forward", [])):
        text.append(f"\tchain {name} {{\n\t\t{hook.format(name)}\n")
        text.extend(f"\t\t{rule}\n" for rule in rules)
        text.append("\t}\n")
    text.append("}\n")
    return "".join(text)


# -- files ---------------------------------------------------------------------------------------
def write(path, text, mode=0o600, dir_mode=0o700):
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=dir_mode, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".mayday-tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def read_state():
    text = read(STATE)
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}


def state_doc(leases):
    """What is in force now: the live table, the persistent copy, the lease."""
    lease = leases.by_key(LEASE_KEY)
    return {"table_live": table_live(), "persisted": os.path.exists(PERSIST),
            "lease": {"id": lease["id"], "expires": lease["expires"]} if lease else None,
            "record": read_state()}


def revert_argv():
    """The lease's revert: the table gone (idempotent), then any persistent copy a confirm cut short wrote."""
    return [[nft_path(), DROP_TABLE], ["rm", "-f", PERSIST]]


def boot_key():
    """This boot of the host: the kernel's boot id and PID 1's start (a container restart keeps the first)."""
    parts = []
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/1/stat"):
        text = read(path) or ""
        parts.append(text.strip() if path.endswith("boot_id") else (text.rsplit(")", 1)[-1].split() or [""] * 20)[19])
    return ":".join(parts)


def utc(epoch=None):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if epoch is None else epoch))
