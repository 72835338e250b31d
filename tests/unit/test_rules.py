"""Input rules (mayday.rules) and the scenario table: one definition for the CLI and the playbooks."""

from __future__ import annotations

import pytest

from mayday import rules
from mayday.rules import BadValue, check_params
from mayday.scenarios import SCENARIOS


@pytest.mark.parametrize("value", ["abc", "0", "-5", "10081", "99999999", "1.5", True])
def test_minutes_out_of_rule_are_refused_naming_the_range(value: object) -> None:
    with pytest.raises(BadValue, match=r"valid: 1\.\.10080"):
        rules.minutes(value)


@pytest.mark.parametrize(("value", "expected"), [("1", 1), (60, 60), (" 10080 ", 10080)])
def test_minutes_in_range(value: object, expected: int) -> None:
    assert rules.minutes(value) == expected


@pytest.mark.parametrize("value", ["", "../etc", "a b", "-x", "x" * 129, "v1;rm"])
def test_bad_release_ids(value: str) -> None:
    with pytest.raises(BadValue, match="valid: letters"):
        rules.release_id(value)


def test_level2_components_are_the_files() -> None:
    assert rules.level2_components() == ["api", "database", "frontend", "webhook"]
    assert rules.level2_hosts("database") == "db:pg" and rules.level2_hosts("api") == "web"
    assert rules.level2_hosts("nope") == "all"


def test_level2_params_checked_in_order_and_only_where_they_apply() -> None:
    params = SCENARIOS["level2"].params
    assert check_params(params, {}) == ({}, ["no component given; valid: api, database, frontend, webhook"])
    clean, problems = check_params(params, {"component": "webhook", "minutes": "0"})
    assert problems == ["minutes 0 is out of range; valid: 1..10080 (up to 7 days)"]
    clean, problems = check_params(params, {"component": "api", "minutes": "abc"})
    assert problems == [] and clean == {"component": "api", "backup": "latest"}
    clean, problems = check_params(params, {"component": "webhook"})
    assert clean == {"component": "webhook", "minutes": 60}


def test_level1_params_default() -> None:
    assert check_params(SCENARIOS["level1"].params, {}) == ({"release": None, "force": False}, [])
    assert check_params(SCENARIOS["level1"].params, {"force": "maybe"})[1] == ["'maybe' is not true or false"]


def test_every_scenario_has_its_playbook() -> None:
    from mayday.paths import project_root

    for scenario in SCENARIOS.values():
        assert (project_root() / "playbooks" / scenario.playbook).is_file(), scenario.name
