"""The Event-Driven Ansible rulebooks (extensions/eda/rulebooks/) checked without Java or a lab: their
structure, that they agree with each other, with the scenario table, the Level 2 components, the
record's mayday_alert and mayday serve's throttle windows. tests/integration/test_eda.py runs them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jinja2 import StrictUndefined, UndefinedError
from jinja2.nativetypes import NativeEnvironment

from mayday import rules, timing
from mayday.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parents[2]
RULEBOOKS = ROOT / "extensions" / "eda" / "rulebooks"
ALERTMANAGER = RULEBOOKS / "mayday.yml"  # ansible.eda.alertmanager: events are {alert: ..., meta: ...}
WEBHOOK = RULEBOOKS / "mayday-webhook.yml"  # eda.builtin.webhook + event_splitter: events are the alerts
FIRING = 'event.status == "firing" and '
SCENARIO = re.compile(r'event\.labels\.scenario == "([a-z0-9-]+)"')
UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
RUN_VARS = {"mayday_alert", "mayday_confirmed"}  # every run's; the rest must be the scenario's inputs


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, list) and len(doc) == 1, f"{path.name}: one ruleset"
    return doc[0]


def same_shape(rule_text: str) -> str:
    """mayday.yml's event paths as mayday-webhook.yml writes them (the alert is the event there)."""
    return rule_text.replace("event.alert.", "event.")


def rules_of(path: Path) -> list[dict[str, Any]]:
    found = load(path)["rules"]
    if path == ALERTMANAGER:
        found = yaml.safe_load(same_shape(yaml.safe_dump(found)))
    return found


def runs(path: Path) -> list[dict[str, Any]]:
    return [r for r in rules_of(path) if "run_playbook" in r.get("action", {})]


def scenario_of(rule: dict[str, Any]) -> str:
    found = SCENARIO.search(" ".join(rule["condition"].split()))
    assert found, f"rule {rule['name']}: no scenario label in its condition"
    return found.group(1)


def seconds(window: str) -> int:
    count, unit = window.split()
    return int(count) * UNITS[unit.rstrip("s")]


def render(value: Any, context: dict[str, Any]) -> Any:
    """As ansible-rulebook renders action arguments: native types, undefined is an error."""
    env = NativeEnvironment(undefined=StrictUndefined)
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    return env.from_string(value).render(context) if isinstance(value, str) else value


@pytest.mark.parametrize("path", [ALERTMANAGER, WEBHOOK], ids=lambda p: p.name)
def test_one_ruleset_on_all_hosts_one_run_at_a_time(path: Path) -> None:
    ruleset = load(path)
    assert ruleset["hosts"] == "all"
    # In parallel two runs could each take some hosts' locks and refuse each other.
    assert ruleset.get("execution_strategy", "sequential") == "sequential"
    assert not ruleset.get("match_multiple_rules", False), "one rule per alert"


def test_alertmanager_source_one_event_per_alert_on_loopback() -> None:
    (source,) = load(ALERTMANAGER)["sources"]
    args = source["ansible.eda.alertmanager"]
    assert args["data_alerts_path"] == "alerts" and args["skip_original_data"] is True
    assert args["data_host_path"] == "", "no --limit from the alert: each playbook picks its hosts"
    assert render(args["host"], {}) == "127.0.0.1", "no authentication: loopback unless told otherwise"
    assert render(args["host"], {"MAYDAY_EDA_HOST": "172.30.0.1"}) == "172.30.0.1"
    assert render(args["port"], {"MAYDAY_EDA_PORT": "5077"}) == 5077


def test_webhook_source_needs_the_token_and_splits_the_group() -> None:
    (source,) = load(WEBHOOK)["sources"]
    args = source["eda.builtin.webhook"]
    assert args["token"] == "{{ MAYDAY_EDA_TOKEN | trim }}", "the token from the environment, no default"
    with pytest.raises(UndefinedError, match="MAYDAY_EDA_TOKEN"):  # ansible-rulebook stops at start
        render(args["token"], {})
    assert render(args["token"], {"MAYDAY_EDA_TOKEN": "t0k3n\n"}) == "t0k3n"
    assert render(args["host"], {}) == "127.0.0.1"
    assert source["filters"] == [{"eda.builtin.event_splitter": {"splitter_key": "payload.alerts"}}]


def test_both_rulebooks_have_the_same_rules() -> None:
    assert rules_of(ALERTMANAGER) == rules_of(WEBHOOK)


@pytest.mark.parametrize("path", [ALERTMANAGER, WEBHOOK], ids=lambda p: p.name)
def test_only_firing_alerts_start_runs(path: Path) -> None:
    every = rules_of(path)
    assert every[0]["condition"] == 'event.status == "resolved"' and "debug" in every[0]["action"]
    assert every[-1]["condition"] == 'event.status == "firing"' and "debug" in every[-1]["action"], \
        "a firing alert no rule acts on is reported, not run"
    assert runs(path), "no rule runs a playbook"
    for rule in runs(path):
        assert " ".join(rule["condition"].split()).startswith(FIRING), rule["name"]


def test_each_run_is_the_cli_scenario_playbook_with_its_inputs() -> None:
    for rule in runs(WEBHOOK):
        scenario = SCENARIOS[scenario_of(rule)]
        playbook = rule["action"]["run_playbook"]["name"]
        assert playbook == f"playbooks/{scenario.playbook}" and (ROOT / playbook).is_file(), rule["name"]
        inputs = set(rule["action"]["run_playbook"]["extra_vars"]) - RUN_VARS
        assert inputs <= {p.name for p in scenario.params}, f"{rule['name']}: {inputs} are not {scenario.name}'s"


def test_level2_components_are_the_playbooks() -> None:
    (level2,) = [r for r in runs(WEBHOOK) if scenario_of(r) == "level2"]
    listed = re.search(r"event\.labels\.component in \[([^]]*)\]", " ".join(level2["condition"].split()))
    assert listed, "level2 names its components"
    assert sorted(re.findall(r'"([a-z0-9_-]+)"', listed.group(1))) == rules.level2_components()
    assert level2["action"]["run_playbook"]["extra_vars"]["component"] == "{{ event.labels.component }}"


def test_throttle_per_alert_name_and_host() -> None:
    for rule in runs(WEBHOOK):
        assert rule["throttle"]["group_by_attributes"] == ["event.labels.alertname", "event.labels.host"], rule["name"]
        assert set(rule["throttle"]) == {"once_within", "group_by_attributes"}, rule["name"]


def test_throttle_windows_are_mayday_serve_default_policy() -> None:
    policy = pytest.importorskip("mayday.policy", reason="mayday serve's policies are not in this tree")
    loaded = policy.load(ROOT / "policies")
    for rule in runs(WEBHOOK):
        scenario = scenario_of(rule)
        serve = loaded.rule_for({"scenario": scenario})
        assert serve is not None, f"policies/ has no rule for {scenario}"
        assert seconds(rule["throttle"]["once_within"]) == serve.throttle_s, \
            f"{rule['name']}: {rule['throttle']['once_within']}, mayday serve {serve.throttle_s} s ({serve.name})"


ALERT = {"status": "firing", "fingerprint": "3b5c1e0f9a7d2c44", "startsAt": "2026-01-02T03:04:05.123456789Z",
         "labels": {"alertname": "HealthCheckFailing", "scenario": "level2", "severity": "P1", "host": "web1",
                    "component": "api"},
         "meta": {"received_at": "2026-01-02T03:04:35.000123+00:00"}}


@pytest.mark.parametrize("labels", [ALERT["labels"], {"alertname": "Bare", "scenario": "level1"}],
                         ids=["all-labels", "only-name-and-scenario"])
def test_mayday_alert_renders_to_what_the_record_accepts(labels: dict[str, str]) -> None:
    for rule in runs(WEBHOOK):
        extra = render(rule["action"]["run_playbook"]["extra_vars"], {"event": {**ALERT, "labels": labels}})
        clean, problems = timing.check_alert(extra["mayday_alert"])
        assert not problems, f"{rule['name']}: {problems}"
        assert clean["starts_at"] == "2026-01-02T03:04:05.123Z" and clean["received_at"] == "2026-01-02T03:04:35.000Z"
        assert clean["fingerprint"] == ALERT["fingerprint"] and clean["alertname"] == labels["alertname"]
        assert extra["mayday_confirmed"] is False, "production needs MAYDAY_EDA_CONFIRM_PRODUCTION"


@pytest.mark.parametrize("path", [ALERTMANAGER, WEBHOOK], ids=lambda p: p.name)
def test_ansible_rulebook_accepts_the_rulebook(path: Path) -> None:
    """Its own schema and condition parser (no Java needed), where ansible-rulebook is installed."""
    pytest.importorskip("ansible_rulebook", reason="ansible-rulebook is not installed (`make eda`)")
    from ansible_rulebook.json_generator import visit_rule
    from ansible_rulebook.rules_parser import parse_rules
    from ansible_rulebook.validators import Validate

    doc = yaml.safe_load(path.read_text())
    Validate.rulebook(doc)
    parsed = [visit_rule(rule, {})["Rule"] for rule in parse_rules(doc[0]["rules"], {})]
    status = "alert.status" if path == ALERTMANAGER else "status"
    for rule in parsed:
        if rule["actions"][0]["Action"]["action"] != "run_playbook":
            continue
        node = rule["condition"]["AllCondition"][0]
        while "AndExpression" in node:  # the leftmost term of the AND chain
            node = node["AndExpression"]["lhs"]
        assert node == {"EqualsExpression": {"lhs": {"Event": status}, "rhs": {"String": "firing"}}}, rule["name"]
