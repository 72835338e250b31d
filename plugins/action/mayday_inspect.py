# Pre-flight inspection in one cheap round trip per host: a read-only POSIX shell probe (no
# Python needed on the host, so it also works when the host's Python is what broke), judged on
# the controller with the same planning and health rules the mayday_recover module applies.
# A Python module here would cost about three times as much per host.
from __future__ import annotations

import os
import shlex
import sys

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The host-side planning rules (module_utils), imported here so both sides judge alike.
sys.path.insert(1, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils"))
import _mayday_path  # noqa: F401
import mayday_http
import mayday_release
from _mayday_exec import break_lock_of, run_on_host, run_owner

from mayday import locks
from mayday.records import utc_now

ANSWER_MARK = "@mayday-answer:"
# Runs the probe read whole from stdin (so no command in it can read the rest of the script).
LOCK_END = "@mayday-lock-end"
PROBE_RUNNER = """/bin/sh -c 'eval "$(cat)"'"""


def probe_script(release: dict | None, services: list[dict], health: list[dict]) -> str:
    q = shlex.quote
    lines = []
    if release:
        root = release.get("root", "/var/www/app")
        if release.get("layout", "symlink") == "dirswap":
            pattern = f"{q(root)}/upload*/"
        else:
            current = os.path.join(root, release.get("current_link", "current"))
            lines.append(f'printf "current\\t%s\\n" "$(readlink {q(current)} 2>/dev/null)"')
            pattern = f"{q(os.path.join(root, release.get('releases_dir', 'releases')))}/*/"
            # Deploy order, as SymlinkLayout reads it: a symlinked history is not ours.
            history = q(os.path.join(root, mayday_release.HISTORY_FILE))
            lines.append(
                f"if [ -f {history} ] && [ ! -L {history} ]; then tail -n {mayday_release.HISTORY_LINES} {history} "
                "| while IFS= read -r l || [ -n \"$l\" ]; do printf 'history\\t%s\\n' \"$l\"; done; fi")
        # A marker that is a symlink is not a mayday marker (a release could ship one). Only an
        # incident-id-shaped token is read from it, never the file's content.
        lines.append(
            f'for d in {pattern}; do [ -d "$d" ] || continue; m="$d{mayday_release.FAILED_MARKER}"; f=-; i=; '
            'if [ -f "$m" ] && [ ! -L "$m" ]; then f=failed; i=$(head -c 4096 "$m" 2>/dev/null '
            "| sed -n 's/.*\"incident\": *\"\\([A-Za-z0-9._:-]*\\)\".*/\\1/p' | head -n 1); fi; "
            """printf 'release\\t%s\\t%s\\t%s\\t%s\\n' "$(basename "$d")" "$f" """
            """"$(stat -c %Y "$d" 2>/dev/null)" "$i"; done""")
    for service in services:
        name = q(service["name"])
        lines.append(f'printf "service\\t%s\\t%s\\n" {name} "$(systemctl is-active {name} 2>/dev/null)"')
    for index, check in enumerate(health):
        timeout = float(check.get("timeout", 2))
        lines.append(
            f'printf "health\\t{index}\\t"; '
            f"curl -s --max-time {timeout} -w ' {ANSWER_MARK}%{{http_code}} %{{time_total}}' {q(check['url'])} "
            "| tr -d '\\n\\r\\t' ; echo")
    return "\n".join(lines) or "true"


def parse(stdout: str, release: dict | None, health: list[dict], checked_at: str) -> dict:
    state: dict = {"layout": (release or {}).get("layout", "symlink"), "releases": [], "current": None, "failed": {}}
    services: dict[str, str] = {}
    answers: dict[int, str] = {}
    history: list[str] = []
    mtimes: dict[str, int] = {}
    for line in stdout.split("\n"):  # as the host side splits the history: on newlines only
        kind, _, rest = line.partition("\t")
        if kind == "current":
            state["current"] = os.path.basename(os.path.normpath(rest)) if rest else None
        elif kind == "history":
            history.append(rest)
        elif kind == "release":
            name, flag, mtime, incident = ([*rest.split("\t"), "", "", ""])[:4]
            state["releases"].append(name)
            try:
                mtimes[name] = int(mtime)
            except ValueError:  # no GNU/busybox stat on the host: order by history, then name
                mtimes[name] = 0
            if flag == "failed" or name.startswith("upload_failed"):
                state["failed"][name] = {"incident": incident} if incident else {}
        elif kind == "service":
            name, _, active = rest.partition("\t")
            services[name] = active or "unknown"
        elif kind == "health":
            position, _, answer = rest.partition("\t")
            answers[int(position)] = answer
    if state["layout"] == "dirswap":
        state["current"] = "upload" if "upload" in state["releases"] else None
    state["releases"] = mayday_release.deploy_order(state["releases"], "\n".join(history), mtimes)
    results = []
    for number, check in enumerate(health):
        body, _, tail = answers.get(number, "").rpartition(" " + ANSWER_MARK)
        try:
            status, seconds = tail.split()
            code, latency = int(status), round(float(seconds) * 1000, 1)
        except ValueError:  # no curl on the host, or no answer at all
            code, latency = 0, 0.0
        results.append(mayday_http.evaluate(check, code or None, body, latency, checked_at))
    return {"state": state, "services": services, "health": results}


def judge(state: dict, release: dict) -> dict:
    """The inspect result's `release`: the plan, plus the deploy order and failed ids, so a
    controller-side verdict can list the valid choices."""
    names = state["releases"]
    verdict = {"layout": state["layout"], "current": state["current"], "order": list(names),
               "failed": [n for n in names if n in state["failed"]], "refusal": None}
    try:
        target, done, reason = mayday_release.plan_for(
            state, release.get("target") or None, mayday_release.is_true(release.get("force")))
        verdict.update(target=target, already_done=done, reason=reason)
    except mayday_release.ReleaseError as exc:
        verdict["refusal"] = str(exc)
    return verdict


class ActionModule(ActionBase):
    _supports_check_mode = True
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        release = args.get("release") or None
        services = list(args.get("services") or [])
        health = list(args.get("health") or [])
        checked_at = utc_now()
        # The probe goes on stdin, as pipelined modules do: a command without input that may become
        # another user gets a pty from the ssh connection (-tt), which turns every \n of the answer
        # into \r\n and mixes stderr into it.
        script = probe_script(release, services, health)
        # Taking this run's host lock rides in the same exec: no extra round trip per host.
        incident = str(args.get("lock_incident") or "")
        dry = bool(self._task.check_mode)
        owner = run_owner(incident, task_vars or {}) if incident else {}
        if incident:
            script = locks.host_lock_script(owner, dry) + f"echo {LOCK_END}\n" + script
        out = self._low_level_execute_command(PROBE_RUNNER, in_data=script.encode(), sudoable=True)
        if out.get("rc") != 0:
            raise AnsibleActionFail(f"inspection failed on the host: {out.get('stderr', '').strip()[:300]}")
        stdout = out.get("stdout", "")
        if incident:
            lock_lines, _, stdout = stdout.partition(LOCK_END + "\n")
            result.update(locks.judge_host_lock(lock_lines.strip().splitlines(), owner, dry,
                                                lambda more: run_on_host(self, more), break_lock_of(task_vars or {})))
        seen = parse(stdout, release, health, checked_at)
        if release:
            result["release"] = judge(seen["state"], release)
        result.update(changed=False, services=seen["services"], health=seen["health"],
                      ok=all(h["ok"] for h in seen["health"]))
        return result
