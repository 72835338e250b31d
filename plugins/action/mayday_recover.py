# Runs the mayday_recover unit on the host in one exec of the host's python3, shipping the
# module_utils it needs over stdin. AnsiballZ would do the same job but imports AnsibleModule
# first, which costs about 80 ms of CPU per host: on a 2-core controller driving 10 hosts that
# is most of the gap to a hand-written script. Without pipelining (or on request) it falls back
# to the regular mayday_recover module, which runs the same code.
from __future__ import annotations

import json
import os
import shlex
import sys

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _mayday_path  # noqa: F401
from _mayday_exec import run_owner

from mayday import locks

UTILS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils")
# Dependency order: each may import the ones before it.
SHIPPED = ("mayday_steps", "mayday_http", "mayday_release", "mayday_service", "mayday_recover_core")

BOOTSTRAP = """
import json, sys, types
payload = json.loads(sys.stdin.read())
for name, source in payload["sources"]:
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(source, "<mayday:" + name + ">", "exec"), module.__dict__)
core = sys.modules["mayday_recover_core"]
args = payload["args"]
try:
    if args.get("mode") == "restore":
        result = dict(core.restore(args), changed=True)
    else:
        result = core.apply(args, check_mode=payload["check_mode"])
except core.Refused as exc:
    result = {"failed": True, "refused": True, "changed": False, "ok": False, "msg": str(exc),
              "steps": [], "health": []}
unlock = payload.get("unlock")
if unlock:  # release this run's host lock in the same exec (mayday.locks RELEASE_SCRIPT's rule)
    import os, shutil
    lock = unlock["path"]
    try:
        if not os.path.isdir(lock) or os.path.islink(lock):
            result["host_lock"] = "free"
        else:
            with open(os.path.join(lock, "owner")) as handle:
                owner = handle.read(4096)
            if unlock["incident"] in owner and unlock["pid"] in owner:
                shutil.rmtree(lock)
                result["host_lock"] = "released"
            else:
                result["host_lock"] = "other"
    except OSError as exc:
        result["host_lock"] = "error: " + str(exc)
sys.stdout.write(json.dumps(result))
"""


def _sources():
    out = []
    for name in SHIPPED:
        with open(os.path.join(UTILS_DIR, name + ".py")) as handle:
            out.append((name, handle.read()))
    return out


class ActionModule(ActionBase):
    _supports_check_mode = True
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = dict(self._task.args)
        unlock_incident = args.pop("unlock_incident", None)
        if args.pop("use_module", False) or not self._connection.has_pipelining:
            result.update(self._execute_module(module_name="mayday_recover", module_args=args, task_vars=task_vars))
            return result
        if args.get("mode") == "restore" and self._task.check_mode:
            result.update(changed=True, ok=True, steps=[], health=[], msg="check mode: nothing restored")
            return result
        python = self._templar.template(task_vars.get("ansible_python_interpreter") or "/usr/bin/python3")
        unlock = None
        if unlock_incident and not self._task.check_mode:
            unlock = dict(locks.owner_keys(run_owner(str(unlock_incident), task_vars)), path=locks.HOST_LOCK_DIR)
        payload = json.dumps({"sources": _sources(), "args": args, "check_mode": bool(self._task.check_mode),
                              "unlock": unlock}).encode()
        out = self._low_level_execute_command(f"{shlex.quote(python)} -c {shlex.quote(BOOTSTRAP)}", in_data=payload,
                                              sudoable=True)
        try:
            result.update(json.loads(out.get("stdout") or ""))
        except ValueError as exc:
            raise AnsibleActionFail(
                f"mayday_recover did not answer (rc {out.get('rc')}): {(out.get('stderr') or '').strip()[-500:]}"
            ) from exc
        return result
