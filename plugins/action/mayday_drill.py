# A drill's controller side (playbooks/drill.yml), one task per stage, all on the controller:
#   open:     load and check the drill file, refuse an inventory not declared lab or staging
#             (before any connection), name the hosts of each step, open the journal;
#   gate:     after a phase, decide whether the drill goes on (steady state held before the fault,
#             every injection took, no kill switch, the alerts quiet);
#   scenario: run the recovery (or cleanup) scenario as `mayday <command>` and record its outcome
#             (with gate: PHASE, only if that phase's gate says go on);
#   notify:   the communication drill's test messages (mayday.drills.hooks);
#   finish:   the drill's cleanup scenario (when asked), then judge the journal, write journal.json,
#             junit.xml and report.md, fail unless PASSED.
# The verdict is mayday.drills.journal.judge: tested Python, not Jinja.
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.plugins.action import ActionBase

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _mayday_path  # noqa: F401

from mayday.drills import hooks, journal, play, report, runs, schema
from mayday.errors import BadInput

ALLOWED_ENVIRONMENTS = ("lab", "staging")


class ActionModule(ActionBase):
    _supports_check_mode = False
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = self._task.args
        stage = {"open": self._open, "resume": self._resume, "gate": self._gate, "scenario": self._scenario,
                 "notify": self._notify, "finish": self._finish}.get(args.get("op"))
        if stage is None:
            raise AnsibleActionFail("op must be one of open, resume, gate, scenario, notify, finish")
        result.update(stage(args, task_vars))
        result["changed"] = False
        return result

    def _dir(self, args) -> Path:
        return journal.run_dir(str(args["drill"]), str(args["run_id"]))

    # -- open ---------------------------------------------------------------------------------
    def _open(self, args, task_vars) -> dict[str, Any]:
        sources = [str(s) for s in task_vars.get("ansible_inventory_sources") or []]
        environment = str(self._templar.template(task_vars.get("mayday_environment", "unknown")))
        name = str(args.get("drill") or "")
        stem = Path(name).stem if name.endswith((".yml", ".yaml")) else name
        run_id = str(args.get("run_id") or "") or journal.new_run_id(stem if schema.NAME.match(stem) else "bad")
        if not journal.RUN_ID.match(run_id):
            raise AnsibleActionFail(f"run id {run_id!r} is not a drill run id (DRILL-<drill>-<stamp>-<hex>)")
        try:
            drill = schema.load(name)
        except BadInput as exc:
            raise AnsibleActionFail(f"drill refused: {exc}") from None
        directory = journal.run_dir(drill.name, run_id)
        plan = drill.plan()
        meta = {"run_id": run_id, "inventory": ", ".join(sources), "environment": environment}
        journal.append(directory, {"event": "open", "phase": "open", **meta, "plan": plan})
        refusal = runs.refusal(environment, ALLOWED_ENVIRONMENTS)
        if refusal:
            journal.append(directory, {"event": "refused", "phase": "open", "reason": refusal, "ok": False})
        groups = task_vars.get("groups") or {}
        hosts = {"probes": {}, "fault": runs.hosts_of(plan["fault"].get("hosts", ""), groups),
                 "all": runs.hosts_of(plan["hosts"], groups)}
        for index, probe in enumerate(plan["probes"]):
            for host in runs.hosts_of(probe["hosts"], groups):
                hosts["probes"].setdefault(host, []).extend(plan["probes"][index]["checks"])
        # The play goes on only on these; this host too, as the controller steps run on it.
        hosts["involved"] = play.involved(plan["kind"], hosts, str(task_vars.get("inventory_hostname") or ""))
        return {"go": not refusal, "refusal": refusal, "plan": plan, "run_id": run_id, "dir": str(directory),
                "meta": meta, "hosts": hosts, "stop_file": str(journal.controller_stop_file()),
                "msg": refusal or f"drill {drill.name}, run {run_id}"}

    def _resume(self, args, task_vars) -> dict[str, Any]:
        """An interrupted run's plan and hosts, from its journal; the interruption recorded."""
        name, run_id = str(args.get("drill") or ""), str(args.get("run_id") or "")
        name = Path(name).stem if name.endswith((".yml", ".yaml")) else name
        if not (schema.NAME.match(name) and journal.RUN_ID.match(run_id)):
            raise AnsibleActionFail(f"drill {name!r} / run {run_id!r}: not a drill and run id")
        directory = journal.run_dir(name, run_id)
        opened = next((e for e in journal.events(directory) if e.get("event") == "open"), None)
        if opened is None:
            raise AnsibleActionFail(f"no journal for run {run_id} in {directory}")
        journal.append(directory, {"event": "stopped", "phase": "cleanup", "reason": str(args.get("reason"))})
        plan = opened["plan"]
        groups = task_vars.get("groups") or {}
        meta = {k: opened.get(k) for k in ("run_id", "inventory", "environment")}
        return {"plan": plan, "run_id": run_id, "meta": meta,
                "hosts": {"fault": runs.hosts_of(plan["fault"].get("hosts", ""), groups)}}

    # -- gate ---------------------------------------------------------------------------------
    def _gate(self, args, task_vars) -> dict[str, Any]:
        directory = self._dir(args)
        phase = str(args.get("phase"))
        facts = journal.facts_of(journal.events(directory))
        reasons = []
        if facts.refused:
            reasons.append(facts.refused)
        if facts.stopped:
            reasons.append(f"kill switch: {facts.stopped}")
        if phase == "steady_before" and not reasons:
            evs = [e for e in journal.events(directory) if e.get("phase") == "steady_before"]
            bad = [f"{e.get('host')}: {r['name']}: {'; '.join(r.get('problems') or [])}"
                   for e in evs for r in e.get("results") or [] if not r.get("ok")]
            bad += [f"{e.get('host')}: {e.get('msg')}" for e in evs if e.get("event") == "error"]
            by_alert = (args.get("recovery") or {}).get("by") == "alert"
            # Rendered only when used: the lab's value asks Docker for mon1's address.
            alert_vars = self._alert_vars(task_vars) if args.get("alerts_quiet") or by_alert else {}
            firing = hooks.firing_alerts(args.get("alerts_quiet") or [], alert_vars, list(args.get("hosts") or []))
            if firing:
                bad.append(f"alerts firing on the target: {', '.join(firing)}")
            refusals = ["steady state does not hold before the drill: " + "; ".join(bad)] if bad else []
            if by_alert:
                problem = hooks.serve_problem(alert_vars)
                if problem:
                    refusals.append(f"recovery by: alert, but the alert path cannot start it: {problem}")
            if refusals:
                reason = "; ".join(refusals)
                journal.append(directory, {"event": "refused", "phase": "steady_before", "reason": reason,
                                           "ok": False})
                reasons.append(reason)
        if phase == "inject" and not reasons:
            wanted = set(args.get("hosts") or [])
            got = {e.get("host") for e in journal.events(directory) if e.get("event") == "injected"}
            failed = [e for e in journal.events(directory) if e.get("phase") == "inject" and not e.get("ok", True)]
            if failed or not wanted <= got:
                reason = "the fault did not take on " + ", ".join(sorted(wanted - got) or
                                                                   [str(e.get("host")) for e in failed])
                journal.append(directory, {"event": "error", "phase": "inject", "msg": reason, "ok": False})
                reasons.append(reason)
        return {"go": not reasons, "reasons": reasons, "msg": "; ".join(reasons) or f"{phase}: go on"}

    def _alert_vars(self, task_vars) -> dict[str, Any]:
        """The inventory's alert-path settings, rendered (the lab computes them with lookups); '' when unset
        or when the lookup fails (a lab without mon1): then no Alertmanager is known."""
        found = {}
        for name in ("mayday_alertmanager_url", "mayday_serve_url"):
            try:
                found[name] = str(self._templar.template(task_vars.get(name) or "")).strip()
            except AnsibleError:  # an unrenderable setting is an unset one: the gate says what is missing
                found[name] = ""
        return found

    def _await_alert(self, directory: Path, call, args, task_vars) -> dict[str, Any]:
        facts = journal.facts_of(journal.events(directory))
        sla = args.get("sla") or {}

        def stopped() -> str:
            for switch in (journal.controller_stop_file(), directory / journal.STOP_FILE):
                if switch.exists():
                    why = switch.read_text().strip() if switch.parent == directory else ""
                    journal.append(directory, {"event": "stopped", "phase": "recover",
                                               "reason": why or f"controller kill switch {switch}"})
                    return why or f"controller kill switch {switch}"
            return ""

        return hooks.await_alert_recovery(
            call, self._alert_vars(task_vars), list(args.get("hosts") or []), facts.injected_at or time.time(),
            detect_window_s=float(sla.get("detect", 30)) * 1.5 + 5, recover_window_s=float(sla.get("recover", 900)),
            stopped=stopped, record=lambda event: journal.append(directory, event))

    # -- scenario -----------------------------------------------------------------------------
    def _scenario(self, args, task_vars) -> dict[str, Any]:
        directory = self._dir(args)
        call = args.get("call") or {}
        which = str(args.get("which", "recovery"))
        if args.get("gate"):  # the phase before it judged in the same step: go on unless stopped
            gate = self._gate({**args, "phase": str(args["gate"])}, task_vars)
            if not gate["go"]:
                return gate
        sources = [str(s) for s in task_vars.get("ansible_inventory_sources") or []]
        if which == "recovery" and call.get("by") == "alert":
            outcome = self._await_alert(directory, call, args, task_vars)
            journal.append(directory, {"event": "scenario", "phase": "recover", **outcome})
            return {"go": outcome.get("ok", False), "outcome": outcome}
        ran = runs.run_scenario(call["scenario"], call.get("params") or {}, sources[0] if sources else "",
                                timeout_s=float(args.get("timeout_s") or 900))
        event = "scenario" if which == "recovery" else "cleanup_scenario"
        phase = "recover" if which == "recovery" else "cleanup"
        journal.append(directory, {"event": event, "phase": phase, **ran})
        return {"go": ran["ok"], "outcome": ran, "msg": f"{call['scenario']}: {ran['outcome']}"}

    # -- notify -------------------------------------------------------------------------------
    def _notify(self, args, task_vars) -> dict[str, Any]:
        sources = [str(s) for s in task_vars.get("ansible_inventory_sources") or []]
        fault = args.get("fault") or {}
        fallback = self._templar.template(task_vars.get("mayday_notify_fallback") or "")
        outcome = hooks.notify_test(sources[0] if sources else "", {**task_vars, "mayday_notify_fallback": fallback},
                                    fault=fault)
        delivered = {str(c.get("channel")): bool(c.get("ok")) for c in outcome.get("channels") or []}
        contacts, channels = (self._templar.template(task_vars.get(name) or [])
                              for name in ("mayday_contacts", "mayday_notify_channels"))
        # Names, roles and channel names only: a contact list holds no secret, the channels' URLs stay here.
        # A failover drill fails a channel on purpose: only the list itself is checked, not who was reached.
        outcome["contact_problems"] = hooks.contact_problems(contacts, channels,
                                                             delivered if delivered and not fault else None)
        outcome["contacts"] = [{k: c.get(k) for k in ("name", "role", "channels")}
                               for c in (contacts if isinstance(contacts, list) else []) if isinstance(c, dict)]
        journal.append(self._dir(args), {"event": "notify", "phase": "notify", **outcome})
        return {"outcome": outcome}

    # -- finish -------------------------------------------------------------------------------
    def _finish(self, args, task_vars) -> dict[str, Any]:
        directory = self._dir(args)
        cleanup = args.get("cleanup") or {}
        if play.cleanup_due(cleanup, journal.facts_of(journal.events(directory)).scenario_outcome):
            self._scenario({**args, "which": "cleanup", "call": cleanup}, task_vars)
        doc = journal.build(directory, args.get("plan") or {}, args.get("meta") or {})
        path = journal.write(directory, doc)
        paths = report.write_all(directory, doc)
        result = {"verdict": doc["verdict"], "exit_code": doc["exit_code"], "reasons": doc["reasons"],
                  "figures": doc["figures"], "journal": str(path), "report": str(paths["markdown"]),
                  "junit": str(paths["junit"])}
        if doc["verdict"] != "PASSED":
            result.update(failed=True, msg=f"drill {doc['drill']} {doc['verdict']}: " + "; ".join(doc["reasons"]))
        else:
            result["msg"] = f"drill {doc['drill']} PASSED: {doc['figures']}"
        return result
