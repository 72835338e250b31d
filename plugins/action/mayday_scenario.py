# The scenario skeleton's controller side, one task per stage (roles/scenario):
#   open:   check the extra vars against the scenario table, open the incident, confirm
#           production, take the lock (check mode: only report whether it is free);
#   judge:  read every host's pre-flight probe and decide refusals and NOOP before any change
#           (an operator's interrupt of the CLI before this point is a refusal);
#   gate:   a scenario's later safe point (before a restore): stop there if interrupted since;
#   settle: name the hosts whose lock this run still holds, for the unlock that follows;
#   finish: judge every host's result, measure downtime, notify, write the report, release the
#           lock, and fail the run unless it recovered.
# Each stage reads all hosts' results once, in Python (mayday.verdict): no verdict in Jinja.
from __future__ import annotations

import getpass
import os
import sys
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _mayday_path  # noqa: F401

from mayday import locks, notify, records, rules, timing, verdict
from mayday.scenarios import SCENARIOS


def _plain(value: Any) -> Any:
    """Templated containers as plain dicts and lists, safe to keep and to write as JSON."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class ActionModule(ActionBase):
    _supports_check_mode = True
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = self._task.args
        name = args.get("scenario")
        if name not in SCENARIOS:
            raise AnsibleActionFail(f"unknown scenario {name!r}; valid: {', '.join(SCENARIOS)}")
        stage = {"open": self._open, "judge": self._judge, "gate": self._gate, "settle": self._settle,
                 "finish": self._finish}.get(args.get("stage"))
        if stage is None:
            raise AnsibleActionFail("stage must be one of open, judge, gate, settle, finish")
        result.update(stage(SCENARIOS[name], args, task_vars))
        result["changed"] = False  # bookkeeping on the controller, never host state
        return result

    # -- open ---------------------------------------------------------------------------------
    def _given(self, scenario, task_vars) -> dict[str, Any]:
        given = {}
        for param in scenario.params:
            if param.name in task_vars:
                given[param.name] = self._templar.template(task_vars[param.name])
        return given

    def _open(self, scenario, args, task_vars) -> dict[str, Any]:
        params, problems = scenario.check(self._given(scenario, task_vars))
        # Started by an alert (mayday serve, or -e @alert.json): the report times detection and response.
        alert, alert_problems = timing.check_alert(_plain(self._templar.template(task_vars.get("mayday_alert"))))
        problems = problems + alert_problems
        try:
            title = scenario.title.format(**params)
        except (KeyError, IndexError):
            title = scenario.title
        sources = list(task_vars.get("ansible_inventory_sources") or [])
        check_mode = bool(self._task.check_mode)
        hosts = list(task_vars.get("ansible_play_hosts_all") or [])
        incident_id, incident_dir = records.open_incident({
            "scenario": scenario.name if scenario.name != "level2" else f"level2-{params.get('component', '?')}",
            "severity": scenario.severity,
            "title": title,
            "hosts": hosts,
            "inventory": ", ".join(sources),
            "dry_run": check_mode,
            "operator": os.environ.get("MAYDAY_OPERATOR") or getpass.getuser(),
            "run_id": os.environ.get("MAYDAY_RUN_ID"),
            "params": params,
            **({"alert": alert} if alert else {}),
        })
        # --break-lock INC-...: the operator says that run is gone; only its locks may be broken.
        break_lock = self._templar.template(task_vars.get("mayday_break_lock")) or None
        if break_lock:
            try:
                break_lock = rules.incident_id(break_lock)
            except rules.BadValue as exc:
                problems = [*problems, f"break_lock: {exc}"]
        refusals = [f"bad input: {p}" for p in problems]
        environment = self._templar.template(task_vars.get("mayday_environment", "unknown"))
        confirmed = rules.flag(self._templar.template(task_vars.get("mayday_confirmed", False)) or False)
        if environment == "production" and not confirmed and not check_mode:
            refusals.append("this inventory declares itself production: confirm with `mayday ... --yes` "
                            "or -e mayday_confirmed=true")
        # The reach stage does on each host what this does here: take, or only read.
        lock: dict[str, Any] = {"taken": False,
                                "host_state": "present" if scenario.takes_lock and not check_mode else "query"}
        if not refusals:
            if check_mode or not scenario.takes_lock:
                holder = locks.holder(sources, break_lock)
                lock.update(free=holder is None, holder=holder)
                if holder and not check_mode:
                    refusals.append(f"an emergency run holds the lock for this inventory: {locks.describe(holder)}; "
                                    f"{scenario.name} waits for it to finish{locks.break_hint(holder)}")
            else:
                got = locks.acquire(sources, locks.owner(incident_id, os.environ.get("MAYDAY_RUN_ID"),
                                                         ", ".join(sources)), break_lock)
                lock.update(taken=got["acquired"], holder=got["holder"], stale_replaced=got["stale_replaced"])
                if not got["acquired"]:
                    refusals.append(f"another run holds the lock for this inventory: {locks.describe(got['holder'])} "
                                    f"({locks.lock_path(sources)}); wait for it to finish"
                                    f"{locks.break_hint(got['holder'])}")
        msg = f"opened {incident_id}" + (f"; refused: {'; '.join(refusals)}" if refusals else "")
        return {"mayday_incident": {"id": incident_id, "dir": incident_dir}, "incident_id": incident_id,
                "incident_dir": incident_dir, "params": params, "refusals": refusals, "go": not refusals,
                "lock": lock, "msg": msg}

    # -- judge --------------------------------------------------------------------------------
    def _host_values(self, task_vars, var: str, hosts: list[str]) -> dict[str, Any]:
        """Each host's registered result or set_fact value named `var`.

        Read from the variable manager's per-host store of registered results and set_facts: going
        through hostvars[host] computes all of a host's variables (inventory, group_vars, ...),
        which costs seconds on 10 hosts for a value that is plain data already.
        """
        hostvars = task_vars.get("hostvars") or {}
        store = getattr(getattr(hostvars, "_variable_manager", None), "_nonpersistent_fact_cache", None)
        values = {}
        for host in hosts:
            if store is not None and var in store.get(host, {}):
                values[host] = _plain(store[host][var])
            elif store is not None:
                values[host] = None  # never registered on that host: it took no part
            else:  # another ansible-core: the public, slower way
                values[host] = _plain(hostvars[host].get(var)) if host in hostvars else None
        return values

    def _judge(self, scenario, args, task_vars) -> dict[str, Any]:
        opened = args.get("opened") or {}
        if not opened.get("go", False):
            return {"go": False, "noop": False, "refusals": list(opened.get("refusals") or ["not opened"])}
        stop = records.interrupted(os.environ.get("MAYDAY_RUN_ID"))
        if stop:  # the CLI was interrupted (Ctrl-C, SIGTERM) before this gate: no host changes
            refusal = f"interrupted by the operator ({stop.get('signal')}) before anything changed"
            return {"go": False, "noop": False, "refusals": [refusal], "msg": refusal}
        hosts = list(task_vars.get("ansible_play_hosts_all") or [])
        host_locks = self._host_values(task_vars, args.get("lock_var") or "scenario_reach", hosts)
        found = verdict.reachability(host_locks)
        if args.get("judge") == "level1" and found.go:
            probes = self._host_values(task_vars, args.get("probe_var") or "", hosts)
            web = [h for h in hosts if h in set((task_vars.get("groups") or {}).get("web") or [])]
            found = verdict.level1_preflight(probes, web, (opened.get("params") or {}).get("release"))
        elif args.get("judge") == "lockdown" and found.go:
            probes = self._host_values(task_vars, args.get("probe_var") or "", hosts)
            found = verdict.lockdown_preflight(probes, str((opened.get("params") or {}).get("op") or "start"))
        elif args.get("judge") == "lease" and found.go:
            probes = self._host_values(task_vars, args.get("probe_var") or "", hosts)
            found = verdict.lease_preflight(probes, str((opened.get("params") or {}).get("id") or ""))
        doc = found.as_dict()
        doc["msg"] = "; ".join(found.refusals) or found.reason or "go"
        return doc

    # -- gate ---------------------------------------------------------------------------------
    def _gate(self, scenario, args, task_vars) -> dict[str, Any]:
        """A safe point after the verdict: the CLI was interrupted since, so the run stops before its next change."""
        stop = records.interrupted(os.environ.get("MAYDAY_RUN_ID"))
        if not stop:
            return {"stop": False, "msg": "go on"}
        return {"stop": True, "interrupted": stop, "msg": f"interrupted by the operator ({stop.get('signal')}): "
                                                          "the run stops here, before its next change"}

    # -- settle -------------------------------------------------------------------------------
    def _settle(self, scenario, args, task_vars) -> dict[str, Any]:
        """Hosts whose lock this run took and has not released yet (the Act phase releases it in
        its own round trip): the unlock after it visits only these, not every host."""
        hosts = list(task_vars.get("ansible_play_hosts_all") or [])
        taken = self._host_values(task_vars, args.get("lock_var") or "scenario_reach", hosts)
        acted = self._host_values(task_vars, args.get("results_var") or "", hosts)
        held = [h for h in hosts if (taken.get(h) or {}).get("lock") == "taken"
                and (acted.get(h) or {}).get("host_lock") != "released"]
        return {"unlock_hosts": held, "msg": f"host locks to release: {', '.join(held) or 'none'}"}

    # -- finish -------------------------------------------------------------------------------
    def _finish(self, scenario, args, task_vars) -> dict[str, Any]:
        opened = args.get("opened") or {}
        judged = args.get("judged") or {}
        check_mode = bool(self._task.check_mode)
        incident_dir = opened.get("incident_dir")
        sources = list(task_vars.get("ansible_inventory_sources") or [])
        if not incident_dir or not os.path.isdir(incident_dir):
            raise AnsibleActionFail(f"FAILED before the incident was opened: {args.get('error') or 'unknown error'}")
        refusals = list(opened.get("refusals") or []) or list(judged.get("refusals") or [])
        hosts = list(task_vars.get("ansible_play_hosts_all") or [])
        alive = set(task_vars.get("ansible_play_hosts") or [])
        acted = bool(args.get("acted"))
        raw = self._host_values(task_vars, args.get("results_var") or "", hosts) if acted else {}
        results = {h: verdict.host_result(h, r) for h, r in raw.items()}
        lost = [h for h in hosts if h not in alive] if acted else []
        describe = ""
        if scenario.name == "level1" and acted:
            describe = verdict.level1_describe(results, judged.get("targets") or {}, check_mode)
        found = verdict.final(refusals, results, lost, error=args.get("error") or None,
                              noop_reason=judged.get("reason", "") if judged.get("noop") else "",
                              success=scenario.success, check_mode=check_mode, describe=describe)
        downtime = records.measure_downtime(records.read_timeline(incident_dir))
        fields = dict(args.get("fields") or {})
        # Routine jobs (a backup) tell the team only when they fail.
        quiet = scenario.success != "RECOVERED" and found.outcome != "FAILED" and not scenario.channel
        channels = args.get("channels")
        if scenario.channel == "security" and args.get("security_channels"):
            channels = args["security_channels"]
        if found.outcome != "REFUSED" and not quiet:
            escalate = found.outcome == "FAILED"
            label = args.get("label") or scenario.name.upper()
            text = (f"{opened.get('incident_id')} {label} FAILED, manual intervention required: " if escalate
                    else f"{opened.get('incident_id')} {label} {found.outcome}: ") + found.summary
            if args.get("with_downtime"):
                text += f" Downtime {downtime['seconds'] if downtime.get('seconds') is not None else 'unknown'} s."
            # What, where, why, the undo command and the severity that routes it (mayday.notify).
            context = notify.incident_fields(
                records.read_json(os.path.join(incident_dir, "incident.json")), found.outcome, found.summary,
                params=opened.get("params") or {}, extra=_plain(args.get("extra") or {}),
                why=str(self._templar.template(task_vars.get("mayday_trigger")) or ""),
                environment=str(self._templar.template(task_vars.get("mayday_environment")) or ""),
                report=os.path.join(incident_dir, "report.md"))
            delivered = notify.send(list(channels or []), text, "escalation" if escalate else "resolved",
                                    opened.get("incident_id"), {**context, "downtime_s": downtime.get("seconds"),
                                                                **fields},
                                    dry_run=check_mode, fallback=self._templar.template(
                                        task_vars.get("mayday_notify_fallback")))
            records.append_event(incident_dir, {
                "started": records.utc_now(), "duration_s": 0, "host": None, "phase": "Notify",
                "step": f"tell the team ({'escalation' if escalate else 'resolved'})",
                "result": "ok" if all(d["ok"] for d in delivered) else "failed",
                "detail": "; ".join(f"{d['channel']}: {d['detail']}" for d in delivered) or "no channel configured"})
        else:
            delivered = []
        extra = {"params": opened.get("params") or {}, "refusals": found.refusals, "failures": found.failures,
                 "results": found.hosts, "notified": delivered, "notify_failed": notify.failed_channels(delivered),
                 **_plain(args.get("extra") or {})}
        report = records.close_incident(incident_dir, found.outcome, found.summary, extra)
        if (opened.get("lock") or {}).get("taken"):
            locks.release(sources, os.getppid())
        doc: dict[str, Any] = {"outcome": found.outcome, "summary": found.summary, "delivered": delivered,
                               "downtime": report["downtime"], "report_md": os.path.join(incident_dir, "report.md"),
                               "msg": f"{found.outcome}: {found.summary}"}
        if found.outcome in ("REFUSED", "FAILED"):
            doc["failed"] = True
        return doc
