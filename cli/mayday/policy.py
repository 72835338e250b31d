"""Policies: which alert starts which scenario, how (auto, approve, dry-run) and how often.

policies/*.yml, read in file-name order; the first rule whose labels match an alert decides.

    settings:
      max_auto_runs_per_hour: 6   # circuit breaker over every rule: past it, page a human instead
      approve_timeout: 15m        # approve mode: no answer within this means no
    rules:
      - name: level1-production-down
        match: {scenario: level1}  # label: value, or label: [value, ...] (any of)
        scenario: level1           # omitted: the alert's `scenario` label
        mode: auto                 # auto | approve | dry-run
        throttle: 10m              # per rule and target: one run per window
        max_runs_per_hour: 3       # circuit breaker of this rule
        vars: {component: component}  # the scenario's input <- the alert's label
        limit_label: host          # --limit <- this label when the alert has it; null: never limit
        confirm_production: false  # auto on a production inventory: this rule is the confirmation

The decisions are plain functions of the alert, the policy and what was done before (Memory), so
`mayday policy test` replays a payload through the same code the receiver runs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mayday.alertmanager import Alert
from mayday.rules import DURATION_PART, DURATION_UNITS
from mayday.scenarios import SCENARIOS

MODES = ("auto", "approve", "dry-run")
RULE_KEYS = ("name", "description", "match", "scenario", "mode", "throttle", "max_runs_per_hour", "approve_timeout",
             "vars", "limit_label", "confirm_production")
SETTINGS_KEYS = ("max_auto_runs_per_hour", "approve_timeout")
TOP_KEYS = ("settings", "rules")
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,127}$")
SCENARIO_LABEL = "scenario"
HOUR = 3600.0
# Bounds: a throttle of 0 means none; a breaker needs at least one run; approvals wait 1 min to 1 day.
THROTTLE_RANGE = (0, 86400)
APPROVE_RANGE = (60, 86400)
RUNS_RANGE = (1, 1000)
DEFAULTS = {"throttle": "10m", "max_runs_per_hour": 3, "approve_timeout": "15m", "max_auto_runs_per_hour": 6,
            "limit_label": "host"}
# Kept this long after an alert's firing was acted on (Alertmanager resends a firing alert until it resolves).
DEDUP_KEEP_S = 7 * 86400


class PolicyError(ValueError):
    """Problems found in the policy files, each naming file, rule and what is valid."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Rule:
    name: str
    file: str
    match: dict[str, tuple[str, ...]]
    scenario: str | None  # None: from the alert's scenario label
    mode: str
    throttle_s: int
    max_runs_per_hour: int
    approve_timeout_s: int
    vars: dict[str, str]
    limit_label: str | None  # None: the scenario acts on all its hosts, whatever host an alert names
    confirm_production: bool = False

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(label) in values for label, values in self.match.items())


@dataclass(frozen=True)
class Policy:
    rules: list[Rule]
    files: list[str]
    max_auto_runs_per_hour: int

    def rule_for(self, labels: dict[str, str]) -> Rule | None:
        return next((r for r in self.rules if r.matches(labels)), None)


def default_dir() -> Path:
    from mayday.paths import project_root

    return project_root() / "policies"


def seconds(value: Any, what: str, bounds: tuple[int, int]) -> int:
    """'90s', '10m', '1h30m' or a whole number of seconds, within bounds; ValueError naming the valid forms."""
    valid = (f"valid: a number of seconds or a duration such as 30s, 10m, 1h30m, from "
             f"{bounds[0]} s to {bounds[1] // 3600} h")
    if isinstance(value, bool):
        raise ValueError(f"{what} {value!r} is not a duration; {valid}")
    if isinstance(value, int):
        total = value
    else:
        text, pos, total = str(value).strip().lower(), 0, 0
        for found in DURATION_PART.finditer(text):
            if found.start() != pos:
                break
            total += int(found.group(1)) * DURATION_UNITS[found.group(2)]
            pos = found.end()
        if not text or pos != len(text):
            raise ValueError(f"{what} {value!r} is not a duration; {valid}")
    if not bounds[0] <= total <= bounds[1]:
        raise ValueError(f"{what} {value!r} is out of range; {valid}")
    return total


def whole(value: Any, what: str, bounds: tuple[int, int]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"{what} {value!r} is not valid; valid: a whole number from {bounds[0]} to {bounds[1]}")
    return value


def _match(raw: Any) -> dict[str, tuple[str, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError("match must be a mapping of label: value or label: [values]")
    found: dict[str, tuple[str, ...]] = {}
    for label, value in raw.items():
        if not isinstance(label, str) or not LABEL.match(label):
            raise ValueError(f"match label {label!r} is not a label name; valid: letters, digits, '_'")
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in values):
            raise ValueError(f"match {label}: {value!r}; valid: a string or a list of strings")
        found[label] = tuple(str(v) for v in values)
    return found


def _rule(doc: Any, file: str, settings: dict[str, Any]) -> Rule:
    if not isinstance(doc, dict):
        raise ValueError("a rule must be a mapping")
    unknown = sorted(set(doc) - set(RULE_KEYS))
    if unknown:
        raise ValueError(f"unknown key {', '.join(map(str, unknown))}; valid: {', '.join(RULE_KEYS)}")
    name = doc.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(f"name {name!r} is not valid; valid: lower-case letters, digits, '.', '_', '-'")
    mode = doc.get("mode")
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not valid; valid: {', '.join(MODES)}")
    scenario = doc.get("scenario")
    if scenario is not None and scenario not in SCENARIOS:
        raise ValueError(f"scenario {scenario!r} is not a scenario; valid: {', '.join(SCENARIOS)} "
                         f"(or leave it out to take the alert's {SCENARIO_LABEL!r} label)")
    variables = doc.get("vars") or {}
    if not isinstance(variables, dict) or not all(isinstance(v, str) and LABEL.match(v) for v in variables.values()):
        raise ValueError("vars must map a scenario input to a label name, such as {component: component}")
    if scenario is not None:
        inputs = [p.name for p in SCENARIOS[scenario].params]
        for var in variables:
            if var not in inputs:
                raise ValueError(f"vars: {var!r} is not an input of {scenario}; valid: {', '.join(inputs) or 'none'}")
    limit_label = doc.get("limit_label", DEFAULTS["limit_label"]) or None
    if limit_label is not None and (not isinstance(limit_label, str) or not LABEL.match(limit_label)):
        raise ValueError(f"limit_label {limit_label!r} is not a label name; valid: letters, digits, '_', or null "
                         "(never limit)")
    confirm = doc.get("confirm_production", False)
    if not isinstance(confirm, bool):
        raise ValueError(f"confirm_production {confirm!r} is not valid; valid: true, false")
    return Rule(
        name=name, file=file, match=_match(doc.get("match")), scenario=scenario, mode=mode,
        throttle_s=seconds(doc.get("throttle", DEFAULTS["throttle"]), "throttle", THROTTLE_RANGE),
        max_runs_per_hour=whole(doc.get("max_runs_per_hour", DEFAULTS["max_runs_per_hour"]), "max_runs_per_hour",
                                RUNS_RANGE),
        approve_timeout_s=seconds(doc.get("approve_timeout", settings["approve_timeout"]), "approve_timeout",
                                  APPROVE_RANGE),
        vars={str(k): v for k, v in variables.items()}, limit_label=limit_label, confirm_production=confirm)


def load(directory: Path | None = None) -> Policy:
    """Every policies/*.yml checked; PolicyError lists every problem found, not only the first."""
    directory = directory or default_dir()
    if not directory.is_dir():
        raise PolicyError([f"{directory}: not a directory of policy files (*.yml)"])
    files = sorted([*directory.glob("*.yml"), *directory.glob("*.yaml")])
    if not files:
        raise PolicyError([f"{directory}: no policy file (*.yml)"])
    problems: list[str] = []
    rules: list[Rule] = []
    settings: dict[str, Any] = {"approve_timeout": DEFAULTS["approve_timeout"],
                                "max_auto_runs_per_hour": DEFAULTS["max_auto_runs_per_hour"]}
    docs: list[tuple[str, dict[str, Any]]] = []
    for path in files:
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            problems.append(f"{path}: not readable YAML: {' '.join(str(exc).split())}")
            continue
        if doc is None:
            continue
        if not isinstance(doc, dict) or set(doc) - set(TOP_KEYS):
            problems.append(f"{path}: valid top-level keys: {', '.join(TOP_KEYS)}")
            continue
        given = doc.get("settings") or {}
        if not isinstance(given, dict) or set(given) - set(SETTINGS_KEYS):
            problems.append(f"{path}: settings: valid keys: {', '.join(SETTINGS_KEYS)}")
        else:
            settings.update(given)  # a later file overrides an earlier one
        docs.append((str(path), doc))
    try:
        seconds(settings["approve_timeout"], "approve_timeout", APPROVE_RANGE)
        whole(settings["max_auto_runs_per_hour"], "max_auto_runs_per_hour", RUNS_RANGE)
    except ValueError as exc:
        problems.append(f"{directory}: settings: {exc}")
        settings = {"approve_timeout": DEFAULTS["approve_timeout"], "max_auto_runs_per_hour": 1}
    seen: dict[str, str] = {}
    for file, doc in docs:
        found = doc.get("rules") or []
        if not isinstance(found, list):
            problems.append(f"{file}: rules must be a list")
            continue
        for index, raw in enumerate(found, 1):
            label = f"{file}: rule {index}" + (f" ({raw['name']})" if isinstance(raw, dict) and raw.get("name") else "")
            try:
                rule = _rule(raw, file, settings)
            except ValueError as exc:
                problems.append(f"{label}: {exc}")
                continue
            if rule.name in seen:
                problems.append(f"{label}: name {rule.name!r} is already used in {seen[rule.name]}; names are unique")
                continue
            seen[rule.name] = file
            rules.append(rule)
    if not problems and not rules:
        problems.append(f"{directory}: no rule in {', '.join(str(f) for f in files)}")
    if problems:
        raise PolicyError(problems)
    return Policy(rules, [str(f) for f in files], int(settings["max_auto_runs_per_hour"]))


# -- what was done before: de-duplication, throttling, the circuit breaker -------------------------

@dataclass
class Memory:
    """Persisted by the receiver (state dir), so a restart neither repeats nor forgets."""

    acted: dict[str, dict[str, Any]] = field(default_factory=dict)  # alert key -> what was done
    starts: list[dict[str, Any]] = field(default_factory=list)  # runs started: rule, target, mode, at

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Memory:
        return cls(dict(doc.get("acted") or {}), list(doc.get("starts") or []))

    def as_doc(self) -> dict[str, Any]:
        return {"acted": self.acted, "starts": self.starts}

    def prune(self, now: float) -> None:
        self.acted = {k: v for k, v in self.acted.items() if now - float(v.get("at", 0)) < DEDUP_KEEP_S}
        self.starts = [s for s in self.starts if now - float(s.get("at", 0)) < THROTTLE_RANGE[1]]

    def forget(self, fingerprint: str) -> None:
        """The alert resolved: its next firing is a new one."""
        self.acted = {k: v for k, v in self.acted.items() if v.get("fingerprint") != fingerprint}

    def runs_since(self, since: float, rule: str | None = None) -> int:
        return sum(1 for s in self.starts if s["at"] >= since and s.get("mode") == "auto"
                   and (rule is None or s["rule"] == rule))

    def last_start(self, rule: str, target: str) -> float | None:
        found = [s["at"] for s in self.starts if s["rule"] == rule and s["target"] == target]
        return max(found) if found else None


# Decisions. Only run and dry-run start something; approval-requested may later.
STARTS = ("run", "dry-run")
ACTS = (*STARTS, "approval-requested", "breaker-open")


@dataclass
class Decision:
    alert: Alert
    decision: str
    reason: str
    rule: str | None = None
    mode: str | None = None
    scenario: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    limit: str | None = None
    target: str = ""
    approve_timeout_s: int = 0
    confirmed: bool = False  # the rule confirms a run on a production inventory
    request: str | None = None  # the receiver's id for what it started or asked

    def as_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.alert.fingerprint, "alertname": self.alert.name, "status": self.alert.status,
                "starts_at": self.alert.starts_at, "severity": self.alert.labels.get("severity"),
                "rule": self.rule, "mode": self.mode, "scenario": self.scenario, "limit": self.limit,
                "target": self.target, "decision": self.decision, "reason": self.reason, "request": self.request}


def target_of(scenario: str, limit: str | None, params: dict[str, Any]) -> str:
    shown = ",".join(f"{k}={v}" for k, v in sorted(params.items()) if v not in (None, False, ""))
    return f"{scenario}[{shown}]@{limit or 'all'}"


def plan(alert: Alert, rule: Rule, hosts: set[str] | None) -> Decision:
    """Scenario, inputs and --limit from the rule and the alert's labels; rejected when they do not hold."""
    decision = Decision(alert, "", "", rule=rule.name, mode=rule.mode, approve_timeout_s=rule.approve_timeout_s,
                        confirmed=rule.confirm_production)
    name = rule.scenario or alert.labels.get(SCENARIO_LABEL)
    if not name or name not in SCENARIOS:
        decision.decision = "rejected"
        decision.reason = (f"scenario {name!r} is not a scenario; valid: {', '.join(SCENARIOS)}" if name else
                           f"the alert has no {SCENARIO_LABEL!r} label and rule {rule.name} names no scenario")
        return decision
    scenario = SCENARIOS[name]
    decision.scenario = name
    given = {var: alert.labels[label] for var, label in rule.vars.items() if label in alert.labels}
    params, problems = scenario.check(given)
    limit = alert.labels.get(rule.limit_label) or None if rule.limit_label else None
    if limit is not None and hosts is not None and limit not in hosts:
        problems.append(f"host {limit!r} (label {rule.limit_label}) is not in the inventory; valid: "
                        f"{', '.join(sorted(hosts))}")
    if problems:
        decision.decision, decision.reason = "rejected", "; ".join(problems)
        return decision
    decision.params = {k: v for k, v in {**params, **scenario.fixed}.items() if v is not None}
    decision.limit = limit
    decision.target = target_of(name, limit, {k: v for k, v in given.items()})
    return decision


def decide(alert: Alert, policy: Policy, memory: Memory, now: float, hosts: set[str] | None,
           busy: Callable[[bool], str | None] = lambda check: None) -> Decision:
    """What to do with one alert. busy(check_mode) names the run in the way, or None."""
    if alert.status == "resolved":
        return Decision(alert, "resolved", "resolved alerts are recorded, never acted on")
    earlier = memory.acted.get(alert.key)
    if earlier:
        return Decision(alert, "duplicate", f"this firing was already acted on ({earlier.get('decision')} at "
                        f"{earlier.get('at_utc')}, {earlier.get('request') or '-'}) and is still firing",
                        rule=earlier.get("rule"), request=earlier.get("request"))
    rule = policy.rule_for(alert.labels)
    if rule is None:
        return Decision(alert, "no-rule", "no policy rule matches the alert's labels")
    decision = plan(alert, rule, hosts)
    if decision.decision:
        return decision
    last = memory.last_start(rule.name, decision.target)
    if last is not None and now - last < rule.throttle_s:
        decision.decision = "throttled"
        decision.reason = (f"rule {rule.name} ran for {decision.target} {now - last:.0f} s ago; throttle "
                           f"{rule.throttle_s} s")
        return decision
    if rule.mode == "approve":
        decision.decision = "approval-requested"
        decision.reason = f"rule {rule.name} asks a human; no answer within {rule.approve_timeout_s} s means no"
        return decision
    if rule.mode == "auto":
        ours, everyone = memory.runs_since(now - HOUR, rule.name), memory.runs_since(now - HOUR)
        if ours >= rule.max_runs_per_hour or everyone >= policy.max_auto_runs_per_hour:
            decision.decision = "breaker-open"
            decision.reason = (f"circuit breaker: {ours} automatic runs of rule {rule.name} (at most "
                               f"{rule.max_runs_per_hour}) and {everyone} in all (at most "
                               f"{policy.max_auto_runs_per_hour}) in the last hour; a human is paged instead")
            return decision
    in_the_way = busy(rule.mode == "dry-run")
    if in_the_way:
        decision.decision, decision.reason = "busy", f"busy, not started: {in_the_way}"
        return decision
    decision.decision = "run" if rule.mode == "auto" else "dry-run"
    decision.reason = f"rule {rule.name}: {decision.scenario}" + (" in check mode" if rule.mode == "dry-run" else "")
    return decision


def remember(memory: Memory, decision: Decision, now: float) -> None:
    """Record what a decision did, for the ones after it."""
    if decision.decision == "resolved":
        memory.forget(decision.alert.fingerprint)
        return
    if decision.decision not in ACTS:
        return
    memory.acted[decision.alert.key] = {"decision": decision.decision, "rule": decision.rule, "at": now,
                                        "at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                                        "request": decision.request, "fingerprint": decision.alert.fingerprint}
    if decision.decision in STARTS or decision.decision == "approval-requested":
        memory.starts.append({"rule": decision.rule, "target": decision.target, "at": now,
                              "mode": decision.mode if decision.decision != "approval-requested" else "approve"})
