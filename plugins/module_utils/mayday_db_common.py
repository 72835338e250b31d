# What both database engines share on the DB host: the error type, names, running a client.
# No AnsibleModule: shipped to the host as ansible.module_utils.mayday_db_common.
from __future__ import annotations

import re
import subprocess
import time

BESIDE = ["nice", "-n", "10"]  # a job that runs beside the restore, at lower CPU priority
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")  # fullmatch: "$" would let a trailing newline in


class DbError(Exception):
    """A refusal or failure. Whether the host changed is tracked by the caller's `changes` list."""

    live_touched = False


def stamp():
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def check_name(name, what="database"):
    # Names go into SQL as identifiers: only plain ones, short enough for the suffixes we add.
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise DbError(f"{what} name {name!r} is not a plain identifier (letters, digits, _)")
    return name


def run(cmd, stdin=None, stdout=None, check=True, timeout=None, waiting_for=""):
    """Run a client; `timeout` (seconds) bounds any wait on a lock or a client, and says what for."""
    try:
        out = subprocess.run(cmd, stdin=stdin, stdout=stdout if stdout is not None else subprocess.PIPE,
                             stderr=subprocess.PIPE, check=False, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise DbError(f"timed out after {timeout} s{' waiting for ' + waiting_for if waiting_for else ''}: "
                      f"{' '.join(cmd[:4])}") from exc
    if check and out.returncode != 0:
        raise DbError(f"{' '.join(cmd[:4])} failed: {out.stderr.decode(errors='replace').strip()[-500:]}")
    return out


# Bounded waits, seconds; the inventory overrides any of them (mayday_db.timeouts).
TIMEOUTS = {"lock": 10, "pause": 30, "dump": 7200, "restore": 7200}


def timeouts(params):
    given = params.get("timeouts") or {}
    unknown = sorted(set(given) - set(TIMEOUTS))
    if unknown:
        raise DbError(f"unknown timeouts {', '.join(unknown)}; valid: {', '.join(TIMEOUTS)}")
    return {**TIMEOUTS, **{k: float(v) for k, v in given.items()}}
