# The per-host half of the run lock (mayday.locks): /var/lib/mayday/run.lock/owner on each host a
# scenario acts on, so two controllers or two AWX jobs exclude each other. mkdir is the atomic
# test-and-set; a POSIX shell probe, one round trip, no Python needed on the host. Taking the lock
# also proves the host answers, so it doubles as the pre-flight reachability check.
from __future__ import annotations

import json
import os
import shlex
import sys

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _mayday_path  # noqa: F401

from mayday import locks

LOCK = locks.HOST_LOCK_DIR
RUNNER = "/bin/sh -c 'eval \"$(cat)\"'"
PROBE = f"""
l={LOCK}
if [ -L "$l" ]; then echo symlink; exit 0; fi
if [ -d "$l" ]; then echo held; head -c 4096 "$l/owner" 2>/dev/null; echo; else echo free; fi
"""
TAKE = f"""
umask 077
l={LOCK}
mkdir -p "$(dirname "$l")" || exit 3
if [ -L "$l" ]; then echo symlink; exit 0; fi
if mkdir "$l" 2>/dev/null; then printf '%s\\n' "$MAYDAY_OWNER" > "$l/owner" && echo taken; exit 0; fi
echo held; head -c 4096 "$l/owner" 2>/dev/null; echo
"""
# Renaming the stale lock aside is atomic; it is removed only if it is still the one judged stale.
BREAK = f"""
l={LOCK}; aside="$l.stale.$$"
mv "$l" "$aside" 2>/dev/null || exit 0
if [ "$(head -c 4096 "$aside/owner" 2>/dev/null)" = "$MAYDAY_JUDGED" ]; then rm -rf "$aside"; echo broken
else mv "$aside" "$l" 2>/dev/null || rm -rf "$aside"; echo changed; fi
"""
RELEASE = f"""
l={LOCK}
[ -d "$l" ] && [ ! -L "$l" ] || {{ echo free; exit 0; }}
if grep -qF "$MAYDAY_INCIDENT" "$l/owner" && grep -qF "$MAYDAY_PID" "$l/owner"; then rm -rf "$l" && echo released
else echo other; fi
"""



class ActionModule(ActionBase):
    _supports_check_mode = True
    TRANSFERS_FILES = False

    def _sh(self, script: str, env: dict[str, str]) -> list[str]:
        exports = "".join(f"{k}={shlex.quote(v)}; export {k}; " for k, v in env.items())
        # On stdin, not as an argument: with become over SSH, ansible adds a tty (-tt) unless the
        # command has input, and a tty turns newlines into CRLF and mixes stderr into the answer.
        out = self._low_level_execute_command(RUNNER, in_data=(exports + script).encode(), sudoable=True)
        if out.get("rc") != 0:
            raise AnsibleActionFail(f"host lock: {(out.get('stderr') or out.get('stdout') or '').strip()[:300]}")
        return (out.get("stdout") or "").strip().splitlines()

    @staticmethod
    def _holder(lines: list[str]) -> tuple[dict, str]:
        raw = lines[1] if len(lines) > 1 else ""
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = {}
        return (doc if isinstance(doc, dict) else {}), raw

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        state = self._task.args.get("state", "present")
        incident = str(self._task.args.get("incident") or "")
        if not incident:
            raise AnsibleActionFail("incident is required")
        sources = ", ".join(task_vars.get("ansible_inventory_sources") or [])
        mine = json.dumps(locks.owner(incident, os.environ.get("MAYDAY_RUN_ID"), sources), sort_keys=True)
        if state == "absent":
            if self._task.check_mode:
                return dict(result, changed=False, lock="untouched", msg="check mode: no lock was taken")
            me = json.loads(mine)
            said = self._sh(RELEASE, {"MAYDAY_INCIDENT": json.dumps({"incident": incident})[1:-1] + ",",
                                      "MAYDAY_PID": json.dumps({"pid": me["pid"]})[1:-1] + ","})
            released = said[0] if said else "?"
            return dict(result, changed=False, lock=released, msg=f"host lock {released}")
        dry = state == "query" or self._task.check_mode
        lines = self._sh(PROBE if dry else TAKE, {"MAYDAY_OWNER": mine})
        for _attempt in range(2):
            if not lines or lines[0] != "held" or dry:
                break
            holder, raw = self._holder(lines)
            if not (holder and locks.is_stale(holder)):
                break
            self._sh(BREAK, {"MAYDAY_JUDGED": raw})
            result["stale_replaced"] = holder
            lines = self._sh(TAKE, {"MAYDAY_OWNER": mine})
        found = lines[0] if lines else "?"
        holder = self._holder(lines)[0] if found == "held" else {}
        if found == "held" and dry and holder and locks.is_stale(holder):
            found = "free"  # a real run would break it
        result.update(changed=False, lock=found, holder=holder)
        if found in ("held", "symlink"):
            result["msg"] = (f"locked by {locks.describe(holder)}" if holder
                             else f"{LOCK} exists but is not a mayday lock ({found}); remove it by hand")
        else:
            result["msg"] = f"host lock {found}"
        return result
