"""The database emergency scenarios in the table and their input rules: pgbouncer-reset, read-only,
read-write (group db). Bad input is refused before any run, naming what is valid."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mayday import rules
from mayday.rules import BadValue, check_params
from mayday.scenarios import SCENARIOS


def test_db_scenarios_are_in_group_db_and_others_in_none() -> None:
    assert {n for n, s in SCENARIOS.items() if s.group == "db"} == {"pgbouncer-reset", "read-only", "read-write",
                                                                   "kill-long", "corruption"}
    assert all(s.group == "" for n, s in SCENARIOS.items() if n in ("level1", "level2", "restore", "backup"))


def test_read_only_and_read_write_share_one_playbook() -> None:
    assert SCENARIOS["read-only"].playbook == SCENARIOS["read-write"].playbook == "db-read-only.yml"
    assert SCENARIOS["read-write"].fixed == {"state": "off"} and SCENARIOS["read-write"].params == []


@pytest.mark.parametrize(("value", "expected"), [("graceful", "graceful"), ("HARD", "hard"), (" hard ", "hard")])
def test_pgbouncer_modes(value: str, expected: str) -> None:
    assert rules.pgbouncer_mode(value) == expected


@pytest.mark.parametrize("value", ["sideways", "", "kill", None])
def test_bad_pgbouncer_modes_name_the_choices(value: object) -> None:
    with pytest.raises(BadValue, match="valid: graceful, hard"):
        rules.pgbouncer_mode(value)


@pytest.mark.parametrize("value", ["0", "601", "abc", "1.5", True, "-1"])
def test_bad_pause_timeouts(value: object) -> None:
    with pytest.raises(BadValue, match=r"valid: 1\.\.600"):
        rules.pause_timeout(value)


@pytest.mark.parametrize(("value", "expected"), [("on", "on"), ("OFF", "off"), (True, "on"), (False, "off")])
def test_db_mode_states(value: object, expected: str) -> None:
    assert rules.db_mode_state(value) == expected


def test_bad_db_mode_state() -> None:
    with pytest.raises(BadValue, match="valid: on, off"):
        rules.db_mode_state("sideways")


def test_pgbouncer_reset_params() -> None:
    params = SCENARIOS["pgbouncer-reset"].params
    assert check_params(params, {}) == ({"mode": "graceful", "timeout": 30}, [])
    assert check_params(params, {"mode": "hard", "timeout": "5"}) == ({"mode": "hard", "timeout": 5}, [])
    _, problems = check_params(params, {"mode": "sideways"})
    assert problems == ["mode 'sideways' is not a reset mode; valid: graceful, hard"]


def test_read_only_params_and_for_only_when_on() -> None:
    params = SCENARIOS["read-only"].params
    assert check_params(params, {}) == ({"state": "on", "for": "30m"}, [])
    assert check_params(params, {"for": "2h"}) == ({"state": "on", "for": "2h"}, [])
    for bad in ("abc", "0", "0m"):
        _, problems = check_params(params, {"for": bad})
        assert len(problems) == 1 and "valid: a number with a unit s, m, h or d" in problems[0], problems
    # state=off (the playbook's read-write): `for` does not apply, so it is neither checked nor passed on.
    assert check_params(params, {"state": "off", "for": "abc"}) == ({"state": "off"}, [])


def test_titles_format_with_the_checked_params() -> None:
    assert SCENARIOS["read-only"].title.format(**{"state": "on", "for": "1h30m"}) == "Databases read-only for 1h30m"
    assert SCENARIOS["pgbouncer-reset"].title.format(mode="hard", timeout=30) == "pgbouncer reset (hard)"


@pytest.mark.parametrize(("args", "valid"), [
    (["db", "pgbouncer-reset", "--mode", "sideways"], "valid: graceful, hard"),
    (["db", "pgbouncer-reset", "--timeout", "0"], "valid: 1..600"),
    (["db", "read-only", "--for", "abc"], "valid: a number with a unit"),
    (["db", "read-only", "--for", "0"], "valid: a number with a unit"),
])
def test_cli_refuses_bad_input_before_any_run(args: list[str], valid: str) -> None:
    """`mayday db <scenario>`: refused by the rule before a playbook starts (no inventory, no lab needed):
    BadInput, exit 2."""
    from mayday.cli import cli
    from mayday.errors import BadInput

    result = CliRunner().invoke(cli, args, standalone_mode=False)
    assert isinstance(result.exception, BadInput), result.output
    assert result.exception.exit_code == 2
    assert valid in str(result.exception)
