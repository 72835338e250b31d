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
import _mayday_path  # noqa: F401
import mayday_http
import mayday_records
import mayday_release

DOCUMENTATION = r"""
action: mayday_inspect
short_description: Read release state, service states and health; change nothing
options:
  release: {description: Release layout as mayday_recover takes it; omit on hosts without releases.}
  services: {description: Services whose state to read.}
  health: {description: Health checks to probe once.}
"""


ANSWER_MARK = "@mayday-answer:"


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
        lines.append(
            f'for d in {pattern}; do [ -d "$d" ] || continue; f=-; [ -e "$d.mayday-failed" ] && f=failed; '
            'printf "release\\t%s\\t%s\\n" "$(basename "$d")" "$f"; done')
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
    for line in stdout.splitlines():
        kind, _, rest = line.partition("\t")
        if kind == "current":
            state["current"] = os.path.basename(os.path.normpath(rest)) if rest else None
        elif kind == "release":
            name, _, flag = rest.partition("\t")
            state["releases"].append(name)
            if flag == "failed" or name.startswith("upload_failed"):
                state["failed"][name] = {}
        elif kind == "service":
            name, _, active = rest.partition("\t")
            services[name] = active or "unknown"
        elif kind == "health":
            position, _, answer = rest.partition("\t")
            answers[int(position)] = answer
    if state["layout"] == "dirswap":
        state["current"] = "upload" if "upload" in state["releases"] else None
    state["releases"].sort(key=mayday_release.natural_key)
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


class ActionModule(ActionBase):
    _supports_check_mode = True
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        release = args.get("release") or None
        services = list(args.get("services") or [])
        health = list(args.get("health") or [])
        checked_at = mayday_records.utc_now()
        out = self._low_level_execute_command(probe_script(release, services, health), sudoable=True)
        if out.get("rc") != 0:
            raise AnsibleActionFail(f"inspection failed on the host: {out.get('stderr', '').strip()[:300]}")
        seen = parse(out.get("stdout", ""), release, health, checked_at)
        if release:
            state = dict(seen["state"], refusal=None)
            try:
                target, done, reason = mayday_release.plan_for(state, release.get("target") or None)
                state.update(target=target, already_done=done, reason=reason)
            except mayday_release.ReleaseError as exc:
                state["refusal"] = str(exc)
            result["release"] = state
        result.update(changed=False, services=seen["services"], health=seen["health"],
                      ok=all(h["ok"] for h in seen["health"]))
        return result
