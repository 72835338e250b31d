# Leases: a temporary emergency change with an expiry the host enforces itself.
#
# A lease is a record /var/lib/mayday/leases/<id>.json (0600: id, key, incident, what, the revert
# commands as argv lists, expiry UTC) plus a systemd transient timer mayday-lease-<id> that runs
# this same file (installed as /usr/local/lib/mayday/mayday_lease.py) with `expire <id>` at the
# expiry, so the change reverts on time even when the controller is gone. Transient timers die with
# the host; the oneshot unit mayday-leases.service runs `boot` at start-up: it reverts expired
# leases and re-arms the live ones, so a restart never makes a temporary change permanent.
#
# No AnsibleModule and only the standard library: shipped to the host as
# ansible.module_utils.mayday_lease, and run there as a plain script by systemd.
from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time

LEASE_DIR = "/var/lib/mayday/leases"
HELPER = "/usr/local/lib/mayday/mayday_lease.py"
BOOT_UNIT = "/etc/systemd/system/mayday-leases.service"
UNIT_PREFIX = "mayday-lease-"
PYTHON = "/usr/bin/python3"
LEASE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
DURATION_PART = re.compile(r"(\d+)([smhd])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Revert attempts at expiry (the database may still be starting after a reboot).
# The arguments of every module whose change a lease holds (the bounds come from the inventory).
LEASED_CHANGE_ARGS = {
    "duration": {"type": "str", "default": "30m"},
    "lease_min": {"type": "str", "default": "1m"},
    "lease_max": {"type": "str", "default": "4h"},
    "incident": {"type": "str", "default": ""},
    "host_label": {"type": "str"},
}
REVERT_ATTEMPTS = 12
REVERT_PAUSE_S = 5.0
REVERT_TIMEOUT_S = 60.0

BOOT_UNIT_TEXT = f"""[Unit]
Description=mayday: revert expired emergency leases, re-arm the live ones
After=network.target postgresql.service mariadb.service pgbouncer.service

[Service]
Type=oneshot
ExecStart={PYTHON} {HELPER} boot

[Install]
WantedBy=multi-user.target
"""


class LeaseError(Exception):
    """A refusal (bad input, unknown lease) or a failure on the host."""


# -- durations and times -----------------------------------------------------------------------
def run_bounded(argv, error, timeout=30, check=True):
    """A command of a leased change, bounded in time; `error` (the module's exception) says why not."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise error(f"{' '.join(argv)} did not finish within {timeout} s") from None
    if check and out.returncode != 0:
        raise error(f"{' '.join(argv)} failed: {(out.stderr or out.stdout).strip()[-400:]}")
    return out


def parse_duration(value):
    """'30m', '2h', '1h30m', '5s', '1d' -> seconds (>0). Bare numbers are refused: a unit is required."""
    text = str(value).strip().lower() if not isinstance(value, bool) else ""
    pos, total = 0, 0
    for found in DURATION_PART.finditer(text):
        if found.start() != pos:
            break
        total += int(found.group(1)) * UNIT_SECONDS[found.group(2)]
        pos = found.end()
    if not text or pos != len(text):
        raise LeaseError(f"duration {value!r} does not parse; valid: a number with a unit s, m, h or d "
                         "(30m, 2h, 1h30m)")
    if total <= 0:
        raise LeaseError(f"duration {value!r} is zero; valid: at least 1s")
    return total


def format_duration(seconds):
    """Seconds -> the shortest form parse_duration reads back (5400 -> '1h30m')."""
    seconds = int(seconds)
    if seconds <= 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s"):
        count, seconds = divmod(seconds, UNIT_SECONDS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def check_bounds(seconds, low, high):
    """A lease length within the inventory's bounds (seconds), or a LeaseError naming them."""
    if not low <= seconds <= high:
        raise LeaseError(f"lease {format_duration(seconds)} is out of range; valid: "
                         f"{format_duration(low)}..{format_duration(high)} (mayday_lease_min, mayday_lease_max)")
    return seconds


def utc(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def new_id(kind, now):
    slug = re.sub(r"[^a-z0-9]+", "-", str(kind).lower()).strip("-")[:24] or "lease"
    return f"{slug}-{time.strftime('%Y%m%dt%H%M%S', time.gmtime(now))}-{secrets.token_hex(2)}"


def check_id(lease_id):
    if not isinstance(lease_id, str) or not LEASE_ID.fullmatch(lease_id):
        raise LeaseError(f"lease id {lease_id!r} is not a lease id; valid: lower-case letters, digits and '-'")
    return lease_id


def check_revert(revert):
    """The revert commands: a non-empty list of argv lists of strings (the first one is the change's own undo)."""
    if not isinstance(revert, list) or not revert or not all(
            isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv) for argv in revert):
        raise LeaseError("revert must be a non-empty list of commands, each a non-empty list of strings")
    return revert


def public(record, now):
    """What may be shown: everything but the revert environment (it may hold a password)."""
    doc = {k: v for k, v in record.items() if k != "env"}
    doc["remaining_s"] = max(0, round(record["expires_epoch"] - now))
    doc["expired"] = record["expires_epoch"] <= now
    return doc


# -- the store and the timers ------------------------------------------------------------------
class Leases:
    def __init__(self, root=LEASE_DIR, systemd=True, now=time.time, helper=HELPER):
        self.root = root
        self.systemd = systemd  # False in unit tests: records only, no timers
        self.now = now
        self.helper = helper

    # records
    def path(self, lease_id):
        return os.path.join(self.root, check_id(lease_id) + ".json")

    def read(self, lease_id):
        try:
            with open(self.path(lease_id), encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None

    def all(self):
        if not os.path.isdir(self.root):
            return []
        found = []
        for name in sorted(os.listdir(self.root)):
            if name.endswith(".json") and LEASE_ID.fullmatch(name[:-5]):
                record = self.read(name[:-5])
                if record:
                    found.append(record)
        return sorted(found, key=lambda r: (r["expires_epoch"], r["id"]))

    def by_key(self, key):
        return next((r for r in self.all() if r.get("key") == key), None)

    def write(self, record):
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(record, handle, indent=1, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path(record["id"]))
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def remove(self, lease_id):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(lease_id))

    # operations
    def grant(self, key, incident, what, revert, seconds, env=None, kind="lease", check_mode=False):
        """A lease for `key` expiring `seconds` from now. Granting a key that already has a lease
        keeps its id and moves its expiry (same as extend). Returns (record, changed)."""
        check_revert(revert)
        now = self.now()
        existing = self.by_key(key) if key else None
        if existing:
            return self.extend(existing["id"], seconds, incident=incident, check_mode=check_mode), True
        record = {"id": new_id(kind, now), "key": key or "", "incident": incident or "", "what": what,
                  "revert": revert, "env": dict(env or {}), "granted": utc(now), "granted_epoch": int(now),
                  "expires": utc(now + seconds), "expires_epoch": int(now + seconds),
                  "history": [{"at": utc(now), "op": "grant", "incident": incident or "", "for_s": int(seconds)}]}
        if check_mode:
            record["id"] = "(new)"
            return record, True
        self.write(record)
        self.arm(record)
        return record, True

    def extend(self, lease_id, seconds, incident="", check_mode=False):
        """The lease now expires `seconds` from now."""
        record = self.read(lease_id)
        if record is None:
            raise LeaseError(f"no lease {lease_id} on this host")
        now = self.now()
        record["expires"], record["expires_epoch"] = utc(now + seconds), int(now + seconds)
        record.setdefault("history", []).append({"at": utc(now), "op": "extend", "incident": incident or "",
                                                 "for_s": int(seconds)})
        if not check_mode:
            self.write(record)
            self.arm(record)
        return record

    def release(self, lease_id, revert=True, check_mode=False):
        """Ends the lease now: disarms its timer and (revert=True) runs its revert. Returns the
        record, or None when there is no such lease (already released or expired: nothing to do)."""
        record = self.read(lease_id)
        if record is None or check_mode:
            return record
        self.disarm(lease_id)
        if revert:
            ok, detail = self.run_revert(record, attempts=1)
            if not ok:
                self.arm(record)
                raise LeaseError(f"lease {lease_id}: revert failed, the lease stays (re-armed): {detail}")
        self.remove(lease_id)
        return record

    def run_revert(self, record, attempts=None, pause=None):
        """Runs the revert commands in order; done when the first (the undo itself) succeeded."""
        attempts = REVERT_ATTEMPTS if attempts is None else attempts
        pause = REVERT_PAUSE_S if pause is None else pause
        env = dict(os.environ, **(record.get("env") or {}))
        detail = ""
        for attempt in range(max(1, attempts)):
            if attempt:
                time.sleep(pause)
            results = []
            for argv in record["revert"]:
                try:
                    out = subprocess.run(argv, env=env, capture_output=True, timeout=REVERT_TIMEOUT_S, check=False)
                    results.append((out.returncode, out.stderr.decode(errors="replace").strip()[-300:]))
                except (OSError, subprocess.TimeoutExpired) as exc:
                    results.append((-1, str(exc)))
            rc, detail = results[0]
            if rc == 0:
                later = [d for r, d in results[1:] if r != 0]
                return True, "; ".join(later)
        return False, detail

    def expire(self, lease_id):
        """The timer's job (and boot's for an expired lease): revert if due, then forget the lease."""
        record = self.read(lease_id)
        if record is None:
            return "gone"
        if record["expires_epoch"] > self.now() + 1:  # extended after this run was scheduled
            self.arm(record)
            return "re-armed"
        ok, detail = self.run_revert(record)
        if ok:
            self.remove(lease_id)
            return "reverted" + (f" (warnings: {detail})" if detail else "")
        record["last_error"] = detail
        record["last_attempt"] = utc(self.now())
        self.write(record)  # kept: the next boot tries again, `list` shows it overdue
        return f"revert failed: {detail}"

    def boot(self):
        done = {}
        for record in self.all():
            if record["expires_epoch"] <= self.now():
                done[record["id"]] = self.expire(record["id"])
            else:
                self.arm(record)
                done[record["id"]] = "re-armed"
        return done

    # timers
    def unit(self, lease_id):
        return UNIT_PREFIX + check_id(lease_id)

    def disarm(self, lease_id):
        if self.systemd:
            unit = self.unit(lease_id)
            subprocess.run(["systemctl", "stop", unit + ".timer"], capture_output=True, check=False)
            subprocess.run(["systemctl", "reset-failed", unit + ".timer", unit + ".service"], capture_output=True,
                           check=False)

    def arm(self, record):
        if not self.systemd:
            return
        self.disarm(record["id"])
        delay = max(1, int(record["expires_epoch"] - self.now()))
        out = subprocess.run(["systemd-run", "--unit", self.unit(record["id"]), f"--on-active={delay}s",
                              "--timer-property=AccuracySec=1s", "--description",
                              f"mayday lease {record['id']}: revert {record['what']}"[:200],
                              PYTHON, self.helper, "expire", record["id"]],
                             capture_output=True, check=False)
        if out.returncode != 0:
            raise LeaseError(f"systemd-run could not arm lease {record['id']}: "
                             f"{out.stderr.decode(errors='replace').strip()[-300:]}")

    def armed(self, lease_id):
        if not self.systemd:
            return None
        out = subprocess.run(["systemctl", "is-active", self.unit(lease_id) + ".timer"], capture_output=True,
                             check=False)
        return out.stdout.decode().strip() == "active"


def own_source():
    return inspect.getsource(sys.modules[__name__])


def install(check_mode=False):
    """The helper the timers run and the boot unit, written when missing or different. Returns
    what changed (paths)."""
    changed = []
    for path, text, mode in ((HELPER, own_source(), 0o755), (BOOT_UNIT, BOOT_UNIT_TEXT, 0o644)):
        try:
            with open(path, encoding="utf-8") as handle:
                same = handle.read() == text
        except FileNotFoundError:
            same = False
        if same:
            continue
        changed.append(path)
        if check_mode:
            continue
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        tmp = path + ".mayday-tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    if BOOT_UNIT in changed and not check_mode:
        subprocess.run(["systemctl", "daemon-reload"], capture_output=True, check=False)
        subprocess.run(["systemctl", "enable", os.path.basename(BOOT_UNIT)], capture_output=True, check=False)
    return changed


def main(argv):
    if len(argv) == 2 and argv[0] == "expire":
        print(Leases().expire(argv[1]))
        return 0
    if argv == ["boot"]:
        for lease_id, what in Leases().boot().items():
            print(f"{lease_id}: {what}")
        return 0
    print("usage: mayday_lease.py expire <id> | boot", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
