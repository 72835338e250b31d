"""Locks: one emergency run at a time per inventory, on the controller and on every host it acts on.

The controller lock lives in the state directory (locks/<inventory hash>.lock). Each host acted on
also gets /var/lib/mayday/run.lock/owner (plugins/action/mayday_host_lock.py), so two controllers,
two working copies or two AWX jobs exclude each other. A lock names its owner: incident, operator,
controller host, pid and the process's start time. It is stale when that process is gone on that
controller (a reused pid has another start time); a stale lock is broken by renaming it away,
which only one breaker can win.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import shlex
import socket
import time
from collections.abc import Callable
from typing import Any

from mayday.paths import state_dir
from mayday.rules import INCIDENT_ID

HOST_LOCK_DIR = "/var/lib/mayday/run.lock"


def process_start(pid: int) -> str | None:
    """The kernel's start time of a process (clock ticks since boot), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields are counted after the last ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def owner(incident: str, run_id: str | None = None, inventory: str = "") -> dict[str, Any]:
    """Who takes a lock: the ansible-playbook process (parent of the forked worker calling this)."""
    pid = os.getppid()
    return {"incident": incident, "run_id": run_id, "operator": os.environ.get("MAYDAY_OPERATOR") or getpass.getuser(),
            "controller": socket.gethostname(), "pid": pid, "pid_start": process_start(pid),
            "inventory": inventory, "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def is_stale(holder: dict[str, Any]) -> bool:
    """Only this controller can tell whether its own process is gone; another's lock stands."""
    if not held_here(holder):
        return False
    pid = int(holder.get("pid") or 0)
    started = process_start(pid) if pid > 0 else None
    return started is None or (holder.get("pid_start") is not None and started != str(holder["pid_start"]))


def held_here(holder: dict[str, Any]) -> bool:
    """The holder is a process of this controller, which alone can tell whether it is still alive."""
    return holder.get("controller", holder.get("host")) == socket.gethostname()


def replaced_text(holder: dict[str, Any]) -> str:
    """What the record says of a lock a run broke (stale, or --break-lock)."""
    return f"host lock taken, replacing that of {describe(holder)}"


def may_break(holder: dict[str, Any], break_lock: str | None = None) -> bool:
    """Stale, or held by the incident the operator named (--break-lock) from another controller, whose
    process this one cannot see. A run alive on this controller is never broken."""
    if is_stale(holder):
        return True
    return bool(break_lock) and holder.get("incident") == break_lock and not held_here(holder)


def break_hint(holder: dict[str, Any]) -> str:
    """How to get past a holder this controller cannot judge, named in every refusal for it."""
    incident = str(holder.get("incident") or "")
    if held_here(holder) or not INCIDENT_ID.match(incident):
        return ""
    return (f"; if that run is gone (its controller died or its job was cancelled), run again with "
            f"--break-lock {holder['incident']} (ansible-playbook: -e mayday_break_lock={holder['incident']})")


def describe(holder: dict[str, Any]) -> str:
    where = holder.get("controller", holder.get("host", "?"))
    return (f"incident {holder.get('incident')} by {holder.get('operator', '?')} on {where} "
            f"(pid {holder.get('pid')}) since {holder.get('since')}")


def _inventory_key(source: str) -> str:
    # The same inventory however it is named: a directory, a file in it, a symlink.
    path = os.path.realpath(source)
    return os.path.dirname(path) if os.path.isfile(path) else path


def lock_path(inventory_sources: list[str]) -> str:
    key = hashlib.sha256("\n".join(sorted({_inventory_key(s) for s in inventory_sources})).encode()).hexdigest()[:16]
    return os.path.join(str(state_dir()), "locks", f"{key}.lock")


def _read(path: str) -> dict[str, Any] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as handle:
            doc = json.load(handle)
        return doc if isinstance(doc, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def break_stale(path: str, judged: dict[str, Any]) -> bool:
    """Rename the stale lock away (atomic: one breaker wins), then make sure it was the one judged."""
    aside = f"{path}.stale-{os.getpid()}-{time.monotonic_ns()}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True  # someone else broke it first
    moved = _read(aside)
    if moved != judged:
        # A new owner linked its lock in between our read and our rename: give it back.
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
        os.unlink(aside)
        return False
    os.unlink(aside)
    return True


def acquire(inventory_sources: list[str], who: dict[str, Any], break_lock: str | None = None) -> dict[str, Any]:
    """Returns {acquired, holder, stale_replaced}."""
    path = lock_path(inventory_sources)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    record = dict(who, inventory=who.get("inventory") or ", ".join(inventory_sources))
    stale = None
    for _ in range(3):
        # Write the record first, then link it into place: the lock never exists half-written.
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as handle:
            json.dump(record, handle)
        try:
            os.link(tmp, path)
        except FileExistsError:
            holder = _read(path)
            if holder is None:
                continue  # released meanwhile
            if holder.get("pid") == record["pid"] and holder.get("controller") == record["controller"]:
                return {"acquired": True, "holder": holder, "stale_replaced": None}
            if may_break(holder, break_lock):
                if break_stale(path, holder):
                    stale = holder
                continue
            return {"acquired": False, "holder": holder, "stale_replaced": None}
        finally:
            os.unlink(tmp)
        return {"acquired": True, "holder": record, "stale_replaced": stale}
    return {"acquired": False, "holder": _read(path) or {}, "stale_replaced": stale}


def holder(inventory_sources: list[str], break_lock: str | None = None) -> dict[str, Any] | None:
    """Who holds the lock, without taking it (dry runs); None when free, stale or to be broken."""
    found = _read(lock_path(inventory_sources))
    return None if found is None or may_break(found, break_lock) else found


def release(inventory_sources: list[str], pid: int) -> bool:
    path = lock_path(inventory_sources)
    found = _read(path)
    if found and found.get("pid") == pid and found.get("controller") == socket.gethostname():
        os.unlink(path)
        return True
    return False


def held_locally() -> list[dict[str, Any]]:
    """Every controller lock in the state directory, with whether it is stale."""
    found = []
    root = os.path.join(str(state_dir()), "locks")
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if name.endswith(".lock"):
            doc = _read(os.path.join(root, name)) or {}
            found.append(dict(doc, lock=os.path.join(root, name), stale=is_stale(doc)))
    return found


# -- the lock on each host: POSIX shell, so it rides in the same exec as a pre-flight probe -------
_HOST = f"l={HOST_LOCK_DIR}\n"
QUERY_SCRIPT = _HOST + """if [ -L "$l" ]; then echo symlink
elif [ -d "$l" ]; then echo held; head -c 4096 "$l/owner" 2>/dev/null; echo
else echo free; fi
"""
# mkdir is the atomic test-and-set; the owner record is written inside the new 0700 directory.
TAKE_SCRIPT = _HOST + """( umask 077; mkdir -p "${l%/*}" 2>/dev/null
if [ -L "$l" ]; then echo symlink
elif mkdir "$l" 2>/dev/null; then printf '%s\\n' "$MAYDAY_OWNER" > "$l/owner" && echo taken
else echo held; head -c 4096 "$l/owner" 2>/dev/null; echo; fi )
"""
# Renaming the stale lock aside is atomic; it is removed only if it is still the one judged stale.
BREAK_SCRIPT = _HOST + """aside="$l.stale.$$"
if mv "$l" "$aside" 2>/dev/null; then
  if [ "$(head -c 4096 "$aside/owner" 2>/dev/null)" = "$MAYDAY_JUDGED" ]; then rm -rf "$aside"; echo broken
  else mv "$aside" "$l" 2>/dev/null || rm -rf "$aside"; echo changed; fi
else echo gone; fi
"""
RELEASE_SCRIPT = _HOST + """if [ ! -d "$l" ] || [ -L "$l" ]; then echo free
elif grep -qF "$MAYDAY_INCIDENT" "$l/owner" && grep -qF "$MAYDAY_PID" "$l/owner"; then rm -rf "$l" && echo released
else echo other; fi
"""


def shell_env(env: dict[str, str]) -> str:
    return "".join(f"{k}={shlex.quote(v)}; export {k}; " for k, v in env.items()) + "\n"


def owner_keys(owner_doc: dict[str, Any]) -> dict[str, str]:
    """What identifies this run's lock on a host (json.dumps with sort_keys puts a comma after each)."""
    return {"incident": json.dumps({"incident": owner_doc["incident"]})[1:-1] + ",",
            "pid": json.dumps({"pid": owner_doc["pid"]})[1:-1] + ","}


def host_lock_script(owner_doc: dict[str, Any], dry: bool) -> str:
    if dry:
        return QUERY_SCRIPT
    return shell_env({"MAYDAY_OWNER": json.dumps(owner_doc, sort_keys=True)}) + TAKE_SCRIPT


def release_script(owner_doc: dict[str, Any]) -> str:
    keys = owner_keys(owner_doc)
    return shell_env({"MAYDAY_INCIDENT": keys["incident"], "MAYDAY_PID": keys["pid"]}) + RELEASE_SCRIPT


def _holder_of(lines: list[str]) -> tuple[dict[str, Any], str]:
    raw = lines[1] if len(lines) > 1 else ""
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = {}
    return (doc if isinstance(doc, dict) else {}), raw


def judge_host_lock(lines: list[str], owner_doc: dict[str, Any], dry: bool,
                    run: Callable[[str], list[str]], break_lock: str | None = None) -> dict[str, Any]:
    """Reads what the lock script printed; breaks a stale lock of this controller, or the one held by
    the incident named in --break-lock, and takes it."""
    result: dict[str, Any] = {}
    for _attempt in range(2):
        if dry or not lines or lines[0] != "held":
            break
        holder_doc, raw = _holder_of(lines)
        if not (holder_doc and may_break(holder_doc, break_lock)):
            break
        run(shell_env({"MAYDAY_JUDGED": raw}) + BREAK_SCRIPT)
        result["stale_replaced"] = holder_doc
        lines = run(host_lock_script(owner_doc, dry=False))
    found = lines[0] if lines else "?"
    holder_doc = _holder_of(lines)[0] if found == "held" else {}
    if found == "held" and dry and holder_doc and may_break(holder_doc, break_lock):
        found = "free"  # a real run would break it
    result.update(lock=found, holder=holder_doc)
    if found in ("held", "symlink"):
        result["lock_msg"] = (f"locked by {describe(holder_doc)}" if holder_doc
                              else f"{HOST_LOCK_DIR} exists but is not a mayday lock ({found}); remove it by hand")
    elif found == "taken" and result.get("stale_replaced"):  # the record says whose lock went
        result["lock_msg"] = replaced_text(result["stale_replaced"])
    return result
