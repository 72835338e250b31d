"""mayday.policy: policy files checked with clear errors, and the decisions the receiver takes on each
alert (resolved never runs, de-duplication, throttle per rule and target, circuit breaker, busy,
rejections), replayed by `mayday policy test` without running anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mayday import policy as pol
from mayday.alertmanager import Alert
from mayday.errors import BadInput

REPO = Path(__file__).resolve().parents[2]
HOSTS = {"web1", "web2", "db1", "pg1"}
NOW = 1_800_000_000.0


def alert(fingerprint: str = "fp1", status: str = "firing", starts_at: str = "2026-11-26T03:00:00.000Z",
          **labels: str) -> Alert:
    return Alert(fingerprint, status, {"alertname": "HealthCheckFailing", "severity": "P0", **labels}, starts_at)


def write(tmp_path: Path, text: str, name: str = "p.yml") -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path


def rule(**given: object) -> pol.Rule:
    fields: dict[str, object] = {"name": "r", "file": "f.yml", "match": {"scenario": ("level1",)}, "scenario": "level1",
                                 "mode": "auto", "throttle_s": 600, "max_runs_per_hour": 3, "approve_timeout_s": 900,
                                 "vars": {}, "limit_label": "host"}
    fields.update(given)
    return pol.Rule(**fields)  # type: ignore[arg-type]


def policy(*rules: pol.Rule, max_auto: int = 6) -> pol.Policy:
    return pol.Policy(list(rules) or [rule()], ["f.yml"], max_auto)


# --- the policy files ----------------------------------------------------------------------------

def test_the_shipped_policy_is_valid_and_matches_the_alert_rules() -> None:
    loaded = pol.load(REPO / "policies")
    modes = {r.name: (r.mode, r.scenario) for r in loaded.rules}
    assert modes["level1-production-down"] == ("auto", "level1")
    assert modes["level2-partial-failure"] == ("approve", "level2")
    catch_all = loaded.rules[-1]
    assert catch_all.match == {} and catch_all.scenario is None and catch_all.mode == "dry-run"
    level2 = loaded.rule_for({"alertname": "ApiSlow", "scenario": "level2", "component": "api"})
    assert level2 is not None and level2.vars == {"component": "component"}


@pytest.mark.parametrize(("text", "expected"), [
    ("rules:\n  - name: a\n    mode: automatic\n", "rule 1 (a): mode 'automatic' is not valid; valid: auto, approve, "
     "dry-run"),
    ("rules:\n  - name: a\n    mode: auto\n    scenario: level9\n", "rule 1 (a): scenario 'level9' is not a scenario; "
     "valid: level1, level2"),
    ("rules:\n  - name: a\n    mode: auto\n    colour: red\n", "rule 1 (a): unknown key colour; valid: name,"),
    ("rules:\n  - name: a\n    mode: auto\n    throttle: soon\n", "throttle 'soon' is not a duration; valid:"),
    ("rules:\n  - name: a\n    mode: auto\n    throttle: 2d\n", "throttle '2d' is out of range"),
    ("rules:\n  - name: a\n    mode: auto\n    max_runs_per_hour: 0\n", "max_runs_per_hour 0 is not valid; valid: a "
     "whole number from 1 to 1000"),
    ("rules:\n  - name: a\n    mode: approve\n    approve_timeout: 5s\n", "approve_timeout '5s' is out of range"),
    ("rules:\n  - name: a\n    mode: auto\n    scenario: level2\n    vars: {release: component}\n",
     "vars: 'release' is not an input of level2; valid: component, backup, minutes"),
    ("rules:\n  - name: a\n    mode: auto\n    match: {scenario: {x: 1}}\n", "valid: a string or a list of strings"),
    ("rules:\n  - name: Upper\n    mode: auto\n", "rule 1 (Upper): name 'Upper' is not valid"),
    ("rules:\n  - name: a\n    mode: auto\n    confirm_production: maybe\n", "valid: true, false"),
    ("rules:\n  - name: a\n    mode: auto\n  - name: a\n    mode: dry-run\n", "rule 2 (a): name 'a' is already used"),
    ("settings: {max_auto_runs_per_hour: -1}\nrules:\n  - name: a\n    mode: auto\n",
     "settings: max_auto_runs_per_hour"),
    ("settings: {breaker: 3}\nrules:\n  - name: a\n    mode: auto\n", "settings: valid keys: max_auto_runs_per_hour, "
     "approve_timeout"),
    ("rule:\n  - name: a\n", "valid top-level keys: settings, rules"),
    ("rules: [\n", "not readable YAML"),
])
def test_a_bad_policy_is_refused_naming_file_rule_and_valid_choices(tmp_path: Path, text: str, expected: str) -> None:
    directory = write(tmp_path, text)
    with pytest.raises(pol.PolicyError) as caught:
        pol.load(directory)
    assert any(expected in p and p.startswith(str(directory)) for p in caught.value.problems), caught.value.problems


def test_every_problem_is_listed_not_only_the_first(tmp_path: Path) -> None:
    write(tmp_path, "rules:\n  - name: a\n    mode: nope\n  - name: b\n    mode: auto\n    scenario: x\n")
    with pytest.raises(pol.PolicyError) as caught:
        pol.load(tmp_path)
    assert [p.split(": ", 2)[1] for p in caught.value.problems] == ["rule 1 (a)", "rule 2 (b)"]


def test_an_empty_or_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(pol.PolicyError, match="no policy file"):
        pol.load(tmp_path)
    with pytest.raises(pol.PolicyError, match="not a directory"):
        pol.load(tmp_path / "absent")
    write(tmp_path, "---\n# nothing yet\n")
    with pytest.raises(pol.PolicyError, match="no rule in"):
        pol.load(tmp_path)


def test_files_are_read_in_name_order_and_a_later_file_overrides_settings(tmp_path: Path) -> None:
    write(tmp_path, "settings: {max_auto_runs_per_hour: 2}\nrules:\n  - name: second\n    mode: dry-run\n", "20.yml")
    write(tmp_path, "settings: {max_auto_runs_per_hour: 9}\nrules:\n  - name: first\n    mode: auto\n"
                    "    match: {scenario: level1}\n", "10.yml")
    loaded = pol.load(tmp_path)
    assert [r.name for r in loaded.rules] == ["first", "second"]
    assert loaded.max_auto_runs_per_hour == 2
    assert loaded.rule_for({"scenario": "level1"}).name == "first"  # type: ignore[union-attr]
    assert loaded.rule_for({"scenario": "performance"}).name == "second"  # type: ignore[union-attr]


def test_match_lists_mean_any_of_them() -> None:
    found = rule(match={"scenario": ("level1",), "severity": ("P0", "P1")})
    assert found.matches({"scenario": "level1", "severity": "P1"})
    assert not found.matches({"scenario": "level1", "severity": "P2"})
    assert not found.matches({"severity": "P0"})


def test_policy_check_command_exits_2_with_the_problems(tmp_path: Path) -> None:
    from mayday.cli import cli

    write(tmp_path, "rules:\n  - name: a\n    mode: automatic\n")
    result = CliRunner().invoke(cli, ["policy", "check", str(tmp_path)], standalone_mode=False)
    assert isinstance(result.exception, BadInput) and result.exception.exit_code == 2
    assert "valid: auto, approve, dry-run" in result.output
    good = CliRunner().invoke(cli, ["policy", "check", str(REPO / "policies")], standalone_mode=False)
    assert good.exception is None and "level1-production-down" in good.output


# --- decisions -----------------------------------------------------------------------------------

def decide(found: Alert, memory: pol.Memory, the_policy: pol.Policy | None = None, now: float = NOW,
           busy: str | None = None) -> pol.Decision:
    decision = pol.decide(found, the_policy or policy(), memory, now, HOSTS, lambda check: busy)
    if decision.decision in pol.ACTS:
        decision.request = f"req-{len(memory.acted)}"
    pol.remember(memory, decision, now)
    return decision


def test_a_resolved_alert_never_runs_and_ends_the_firing() -> None:
    memory = pol.Memory()
    assert decide(alert(scenario="level1"), memory).decision == "run"
    resolved = decide(alert(status="resolved", scenario="level1"), memory, now=NOW + 700)
    assert resolved.decision == "resolved" and resolved.rule is None
    assert memory.acted == {}  # forgotten: the next firing is a new one
    # Even as the only alert, with nothing done before, a resolved alert starts nothing.
    assert decide(alert("fp9", status="resolved", scenario="level1"), pol.Memory()).decision == "resolved"


def test_a_firing_already_acted_on_is_a_duplicate_and_a_new_firing_is_not() -> None:
    memory = pol.Memory()
    first = decide(alert(scenario="level1"), memory)
    again = decide(alert(scenario="level1"), memory, now=NOW + 3000)
    assert (first.decision, again.decision) == ("run", "duplicate")
    assert again.request == first.request
    # The same alert firing again later (Alertmanager keeps the fingerprint, a new startsAt).
    later = decide(alert(scenario="level1", starts_at="2026-11-26T05:00:00.000Z"), memory, now=NOW + 3000)
    assert later.decision == "run"


def test_throttle_is_per_rule_and_target() -> None:
    memory = pol.Memory()
    assert decide(alert("a", scenario="level1", host="web1"), memory).decision == "run"
    throttled = decide(alert("b", scenario="level1", host="web1"), memory, now=NOW + 60)
    assert throttled.decision == "throttled" and "throttle 600 s" in throttled.reason
    assert decide(alert("c", scenario="level1", host="web2"), memory, now=NOW + 60).decision == "run"  # other target
    assert decide(alert("d", scenario="level1", host="web1"), memory, now=NOW + 601).decision == "run"  # window over


def test_the_breaker_opens_after_n_automatic_runs_an_hour_and_closes_after() -> None:
    memory = pol.Memory()
    the_policy = policy(rule(max_runs_per_hour=2, throttle_s=0))
    decisions = [decide(alert(f"fp{n}", scenario="level1"), memory, the_policy, now=NOW + n).decision
                 for n in range(4)]
    assert decisions == ["run", "run", "breaker-open", "breaker-open"]
    assert decide(alert("fp3", scenario="level1"), memory, the_policy, now=NOW + 10).decision == "duplicate"  # paged
    assert decide(alert("fp5", scenario="level1"), memory, the_policy, now=NOW + 3601).decision == "run"


def test_the_global_breaker_counts_every_rule() -> None:
    memory = pol.Memory()
    rules = [rule(name=f"r{n}", match={"alertname": (f"A{n}",)}, throttle_s=0) for n in range(3)]
    the_policy = policy(*rules, max_auto=2)
    found = [decide(Alert(f"fp{n}", "firing", {"alertname": f"A{n}", "scenario": "level1"}, "2026-11-26T03:00:00.000Z"),
                    memory, the_policy, now=NOW + n) for n in range(3)]
    assert [d.decision for d in found] == ["run", "run", "breaker-open"]
    assert "2 in all (at most 2)" in found[2].reason


def test_dry_runs_and_approvals_do_not_count_towards_the_breaker() -> None:
    memory = pol.Memory()
    the_policy = policy(rule(mode="dry-run", max_runs_per_hour=1, throttle_s=0))
    found = [decide(alert(f"fp{n}", scenario="level1"), memory, the_policy).decision for n in range(3)]
    assert found == ["dry-run"] * 3


def test_busy_means_not_started() -> None:
    decision = decide(alert(scenario="level1"), pol.Memory(), busy="level1 run req-1 in flight")
    assert decision.decision == "busy" and "busy, not started: level1 run req-1" in decision.reason
    assert decision.request is None


@pytest.mark.parametrize(("labels", "expected"), [
    ({"scenario": "level9"}, "scenario 'level9' is not a scenario; valid: level1, level2"),
    ({}, "the alert has no 'scenario' label"),
    ({"scenario": "level1", "host": "web9"}, "host 'web9' (label host) is not in the inventory; valid: db1, pg1, web1"),
    ({"scenario": "level2", "component": "kitchen"}, "valid:"),
    ({"scenario": "level2"}, "component"),
])
def test_unknown_scenario_host_or_input_is_rejected(labels: dict[str, str], expected: str) -> None:
    catch_all = rule(name="any", match={}, scenario=None, vars={"component": "component"})
    decision = decide(alert(**labels), pol.Memory(), policy(catch_all))
    assert decision.decision == "rejected" and expected in decision.reason, decision.reason


def test_an_alert_no_rule_matches_is_recorded_as_such() -> None:
    assert decide(alert(scenario="performance"), pol.Memory()).decision == "no-rule"


def test_labels_become_the_scenarios_inputs_and_the_limit() -> None:
    level2 = rule(name="l2", match={"scenario": ("level2",)}, scenario="level2", mode="approve",
                  vars={"component": "component"})
    decision = decide(alert(scenario="level2", component="api", host="web1"), pol.Memory(), policy(level2))
    assert decision.decision == "approval-requested"
    assert decision.params["component"] == "api" and decision.limit == "web1"
    assert decision.target == "level2[component=api]@web1"


def test_level1_in_the_shipped_policy_is_the_full_rollback_whatever_host_alerts() -> None:
    shipped = pol.load(REPO / "policies")
    memory = pol.Memory()
    first = decide(alert("a", scenario="level1", host="web1"), memory, shipped)
    second = decide(alert("b", scenario="level1", host="web2"), memory, shipped, now=NOW + 5)
    assert (first.decision, first.limit, second.decision) == ("run", None, "throttled")
    slow = decide(alert("c", scenario="level2", component="api", host="web2"), memory, shipped)
    assert (slow.decision, slow.limit) == ("approval-requested", "web2")


def test_a_rule_may_confirm_production_runs() -> None:
    assert decide(alert(scenario="level1"), pol.Memory(), policy(rule(confirm_production=True))).confirmed
    assert not decide(alert(scenario="level1"), pol.Memory()).confirmed


def test_memory_survives_as_a_document_and_prunes_old_entries() -> None:
    memory = pol.Memory()
    decide(alert(scenario="level1"), memory)
    copy = pol.Memory.from_doc(json.loads(json.dumps(memory.as_doc())))
    assert decide(alert(scenario="level1"), copy).decision == "duplicate"
    copy.prune(NOW + pol.DEDUP_KEEP_S + 1)
    assert copy.acted == {} and copy.starts == []


# --- replay --------------------------------------------------------------------------------------

def payload(*alerts: dict[str, object]) -> dict[str, object]:
    return {"version": "4", "status": "firing", "receiver": "mayday", "groupLabels": {}, "commonLabels": {},
            "externalURL": "http://mon1:9093", "alerts": list(alerts)}


def wire(fingerprint: str, status: str = "firing", **labels: str) -> dict[str, object]:
    return {"status": status, "labels": {"alertname": "HealthCheckFailing", **labels}, "annotations": {},
            "startsAt": "2026-11-26T03:00:00.123456789Z", "endsAt": "0001-01-01T00:00:00Z", "fingerprint": fingerprint}


def test_policy_test_replays_a_payload_and_starts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mayday.cli import cli

    state = tmp_path / "state"
    monkeypatch.setenv("MAYDAY_STATE_DIR", str(state))
    recorded = tmp_path / "payload.json"
    recorded.write_text(json.dumps(payload(
        wire("r1", "resolved", scenario="level1"), wire("f1", scenario="level1"), wire("f1", scenario="level1"),
        wire("f2", scenario="level2", component="api", host="web9"), wire("f3", scenario="level2", component="api"),
        wire("f4", scenario="performance"))))
    result = CliRunner().invoke(cli, ["policy", "test", str(recorded), "--json"], standalone_mode=False)
    assert result.exception is None, result.output
    decisions = [(a["fingerprint"], a["decision"]) for a in json.loads(result.output)["alerts"]]
    assert decisions == [("r1", "resolved"), ("f1", "run"), ("f1", "duplicate"), ("f2", "rejected"),
                         ("f3", "approval-requested"), ("f4", "busy")]
    assert not state.exists()  # no audit log, no memory, no run


def test_policy_test_refuses_what_is_not_an_alertmanager_payload(tmp_path: Path) -> None:
    from mayday.cli import cli

    recorded = tmp_path / "payload.json"
    recorded.write_text(json.dumps({"version": "3", "alerts": []}))
    result = CliRunner().invoke(cli, ["policy", "test", str(recorded)], standalone_mode=False)
    assert isinstance(result.exception, BadInput) and "valid: '4'" in str(result.exception)
