"""Verdicts: refusals, NOOP, per-host outcomes, the run's outcome and its summary.

Pure functions over plain dicts, called once per run on the controller by the scenario skeleton
(plugins/action/mayday_scenario.py) and unit-tested in tests/unit/test_verdict.py.

Rule for several hosts: REFUSED (exit 2) only when no host changed. When any host changed and any
other refused or failed, the run FAILED (exit 1): escalate, and the report lists each host's own
outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mayday import locks

PRODUCTION_UP = "production is up"


@dataclass
class HostResult:
    """What one host's Act phase returned, normalized (the contract in roles/scenario/README.md)."""

    host: str
    changed: bool = False
    refused: bool = False
    failed: bool = False
    msg: str = ""
    summary: str = ""
    report: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        if self.failed and self.refused and not self.changed:
            return "REFUSED"
        if self.failed:
            return "FAILED"
        return "RECOVERED" if self.changed else "NOOP"

    def as_dict(self, check_mode: bool = False) -> dict[str, Any]:
        # The host's own report keys first, flattened, so results.<host>.rows_restored reads directly.
        outcome = "DRY-RUN" if check_mode and self.outcome == "RECOVERED" else self.outcome
        doc: dict[str, Any] = {**self.report, "outcome": outcome, "changed": self.changed}
        if self.msg:
            doc["msg"] = self.msg
        if self.summary:
            doc["summary"] = self.summary
        return doc


def host_result(host: str, raw: Any) -> HostResult | None:
    """None when the host has no result (skipped, or the scenario does not act on it)."""
    if not isinstance(raw, dict) or not raw or (raw.get("skipped") and "changed" not in raw):
        return None
    unreachable = bool(raw.get("unreachable"))
    changed = bool(raw.get("changed"))
    failed = bool(raw.get("failed")) or unreachable or raw.get("ok") is False
    refused = bool(raw.get("refused")) and not changed
    msg = str(raw.get("msg") or ("unreachable" if unreachable else ("failed" if failed else "")))
    report = raw.get("report")
    steps = raw.get("steps")
    return HostResult(host, changed, refused, failed, msg, str(raw.get("summary") or ""),
                      dict(report) if isinstance(report, dict) else {}, list(steps) if isinstance(steps, list) else [])


@dataclass
class Preflight:
    refusals: list[str] = field(default_factory=list)
    noop: bool = False
    reason: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def go(self) -> bool:
        return not self.refusals and not self.noop

    def as_dict(self) -> dict[str, Any]:
        return {"go": self.go, "noop": self.noop, "refusals": self.refusals, "reason": self.reason, **self.detail}


def _silent(probes: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Hosts that did not answer, and `host: why` for hosts whose probe failed."""
    unreachable, broken = [], []
    for host, probe in probes.items():
        probe = probe if isinstance(probe, dict) else {}
        if not probe or probe.get("unreachable"):
            unreachable.append(host)
        elif probe.get("failed"):
            broken.append(f"{host}: {probe.get('msg') or 'probe failed'}")
    return unreachable, broken


def reachability(probes: dict[str, Any]) -> Preflight:
    """Generic pre-flight: every host answered its lock probe, and no other run holds a host."""
    unreachable, broken = _silent(probes)
    refusals = ([f"does not answer: {', '.join(unreachable)}"] if unreachable else []) + broken
    held = [f"{h} is {p.get('lock_msg') or 'locked by another run'}" for h, p in probes.items()
            if isinstance(p, dict) and p.get("lock") in ("held", "symlink") and not p.get("failed")]
    if held:
        # At 3 a.m. the holder may be a controller that died: say how to get past it, not only who.
        hints = sorted({locks.break_hint(p.get("holder") or {}) for p in probes.values()
                        if isinstance(p, dict) and p.get("lock") == "held"} - {""})
        refusals.append("another run holds hosts of this run: " + "; ".join(held) + "; wait for it to finish"
                        + ("".join(hints) if hints else " (`mayday status` shows every holder)"))
    return Preflight(refusals)


def lease_preflight(probes: dict[str, Any], lease_id: str) -> Preflight:
    """lease extend/release: the hosts holding the lease; refused, naming the active ones, when none does."""
    unreachable, broken = _silent(probes)
    if unreachable or broken:
        return Preflight(([f"unreachable: {', '.join(unreachable)}"] if unreachable else []) + broken)
    held = {h: [lease.get("id") for lease in (p or {}).get("leases") or []] for h, p in probes.items()}
    holders = sorted(h for h, ids in held.items() if lease_id in ids)
    if not holders:
        active = sorted(f"{i} ({h})" for h, ids in held.items() for i in ids)
        return Preflight([f"no lease {lease_id!r} on {', '.join(sorted(probes)) or 'any host'}; "
                          f"valid: {', '.join(active) or 'none: no lease is active'} (see `mayday status`)"])
    return Preflight(detail={"lease_hosts": holders})


def lockdown_preflight(probes: dict[str, Any], op: str) -> Preflight:
    """lockdown: one at a time (start refused while a host holds one); confirm and lift need one."""
    unreachable, broken = _silent(probes)
    if unreachable or broken:
        return Preflight(([f"unreachable: {', '.join(unreachable)}"] if unreachable else []) + broken)
    records = {h: (p or {}).get("lockdown") for h, p in probes.items()}
    active = {h: r for h, r in sorted(records.items()) if r and not r.get("expired")}
    detail = {"lockdown_hosts": sorted(active)}
    if op == "start" and active:
        return Preflight([f"a lockdown is already active on {', '.join(active)} (incident "
                          f"{', '.join(sorted({str(r.get('incident')) for r in active.values()}))}); "
                          "valid next steps: `mayday lockdown lift` or `mayday lockdown confirm`"], detail=detail)
    if op in ("confirm", "lift") and not active:
        return Preflight([f"no lockdown is active on {', '.join(sorted(probes)) or 'any host'}; nothing to {op} "
                          "(`mayday lockdown status` shows it)"], detail=detail)
    if op == "confirm" and all(r.get("confirmed") for r in active.values()):
        return Preflight(noop=True, reason=f"the lockdown on {', '.join(active)} is already confirmed", detail=detail)
    return Preflight(detail=detail)


def level1_preflight(probes: dict[str, Any], web_hosts: list[str], release: str | None) -> Preflight:
    """Level 1: every host inspected; decide refusals, NOOP, targets and each web host's fallback."""
    if not web_hosts:
        return Preflight([f"no web host in this run (hosts: {', '.join(probes) or 'none'})"])
    unreachable, broken = _silent(probes)
    refusals = ([f"unreachable: {', '.join(unreachable)}"] if unreachable else []) + broken
    web = {h: probes.get(h) or {} for h in web_hosts if h not in unreachable}
    releases = {h: (p.get("release") or {}) for h, p in web.items()}
    healthy = {h for h, p in web.items() if p.get("ok") and not p.get("failed")}
    detail: dict[str, Any] = {
        "targets": {h: r.get("target") for h, r in releases.items() if r.get("target")},
        "current": {h: r.get("current") for h, r in releases.items()},
        # If the rollback fails on a host, it goes back to the release it served healthily before.
        "fallback": {h: releases[h].get("current") or "" for h in healthy},
    }
    if refusals:
        return Preflight(refusals, detail=detail)
    if not release and len(healthy) == len(web_hosts):
        live = sorted({r.get("current") or "?" for r in releases.values()})
        return Preflight(noop=True, detail=detail, reason=(
            f"{PRODUCTION_UP}: {', '.join(web_hosts)} answer healthy on {', '.join(live)}; nothing rolled back "
            "(name a release with --release to move anyway)"))
    refusals += list(dict.fromkeys(r["refusal"] for r in releases.values() if r.get("refusal")))
    targets = {h: r.get("target") for h, r in releases.items()}
    if not refusals and len(set(targets.values())) > 1:
        refusals.append("web hosts disagree on the release to roll back to: "
                        + ", ".join(f"{h}={t}" for h, t in sorted(targets.items())))
    if refusals:
        return Preflight(refusals, detail=detail)
    if all(r.get("already_done") for r in releases.values()) and len(healthy) == len(web_hosts):
        target = next(iter(targets.values()))
        return Preflight(noop=True, detail=detail, reason=(
            f"{', '.join(web_hosts)} already serve {target} (every newer release is marked failed) and answer healthy"))
    return Preflight(detail=detail)


@dataclass
class Verdict:
    outcome: str
    refusals: list[str]
    failures: list[str]
    hosts: dict[str, dict[str, Any]]
    summary: str

    def as_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "refusals": self.refusals, "failures": self.failures, "hosts": self.hosts,
                "summary": self.summary}


def final(refusals: list[str], results: dict[str, HostResult | None], lost: list[str], error: str | None = None,
          noop_reason: str = "", success: str = "RECOVERED", check_mode: bool = False,
          describe: str = "") -> Verdict:
    """The outcome of a run from the pre-flight refusals and every host's result.

    `lost`: hosts that answered the pre-flight and then dropped out of the play. `describe`: what a
    successful run did, in one sentence (scenario-specific); by default the hosts' own summaries.
    """
    acted = {h: r for h, r in results.items() if r is not None}
    for host in lost:
        acted[host] = HostResult(host, failed=True, msg=f"{host}: lost during the run (unreachable or stopped)")
    hosts = {h: r.as_dict(check_mode) for h, r in sorted(acted.items())}
    if refusals:
        return Verdict("REFUSED", refusals, [], hosts, f"Refused before any change: {'; '.join(refusals)}.")
    changed = sorted(h for h, r in acted.items() if r.changed)
    refused = sorted(h for h, r in acted.items() if r.outcome == "REFUSED")
    failed = sorted(h for h, r in acted.items() if r.outcome == "FAILED")
    # A failed host's summary says where it was left (put back, or not): better than the bare error.
    failures = [_named(h, acted[h].summary or acted[h].msg) for h in failed]
    host_refusals = list(dict.fromkeys(_named(h, acted[h].msg) for h in refused))
    if error:
        failures.append(f"unexpected error: {error}")
    if failures or (refused and changed):
        if refused:
            failures += [f"{r} (refused while {', '.join(changed)} changed)" for r in host_refusals] if changed else (
                host_refusals)
        done = [_named(h, acted[h].summary.rstrip(".")) for h in changed
                if acted[h].summary and acted[h].outcome != "FAILED"]
        summary = "Failed: " + "; ".join(failures) + "."
        if done:
            summary += " Changed: " + "; ".join(done) + "."
        return Verdict("FAILED", [], failures, hosts, summary + " Escalated for manual intervention.")
    if refused:
        return Verdict("REFUSED", host_refusals, [], hosts, f"Refused before any change: {'; '.join(host_refusals)}.")
    if noop_reason or not changed:
        reason = noop_reason or "nothing needed changing: " + (
            " ".join(r.summary for r in acted.values() if r.summary) or "no host had anything to do")
        return Verdict("DRY-RUN" if check_mode else "NOOP", [], [], hosts, f"Nothing to do: {reason.rstrip('.')}.")
    summary = describe or " ".join(r.summary for _, r in sorted(acted.items()) if r.summary) or "Done."
    return Verdict("DRY-RUN" if check_mode else success, [], [], hosts, summary)


def _named(host: str, msg: str) -> str:
    return msg if msg.startswith(f"{host}:") else f"{host}: {msg or 'failed'}"


def restarted_services(results: dict[str, HostResult | None]) -> list[str]:
    """Service names in the order the hosts restarted them (from the steps each host returned)."""
    names: list[str] = []
    for result in results.values():
        for step in (result.steps if result else []):
            verb, _, name = str(step.get("step", "")).partition(" ")
            if verb in ("restart", "reload") and name and name not in names:
                names.append(name)
    return names


def level1_describe(results: dict[str, HostResult | None], targets: dict[str, str], check_mode: bool) -> str:
    web = sorted(h for h in targets if results.get(h))
    to = ", ".join(sorted(set(targets.values()))) or "?"
    services = ", ".join(restarted_services(results)) or "the services"
    verb = "Would roll back" if check_mode else "Rolled back"
    tail = " (nothing was changed)" if check_mode else " in that order and verified health"
    return f"{verb} {', '.join(web)} to {to}, {'would restart' if check_mode else 'restarted'} {services}{tail}."
