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
    (["lease", "release"], "valid: an id listed by `mayday status`"),
    (["lease", "extend", "read-only-1", "--for", "soon"], "valid: a number with a unit"),
    (["db", "kill-long", "--older-than", "5"], "has no unit"),
    (["db", "kill-long", "--match-query", "("], "not a regular expression"),
    (["performance", "--pattern", "*"], "would match every key"),
    (["performance", "--escalate", "level9"], "valid: none, level1"),
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


# --- leases: extend and release --------------------------------------------------------------------
def test_lease_commands_run_one_playbook_with_the_operation_fixed() -> None:
    extend, release = SCENARIOS["lease-extend"], SCENARIOS["lease-release"]
    assert extend.playbook == release.playbook == "lease.yml"
    assert (extend.command, extend.fixed, release.command, release.fixed) == (
        "extend", {"op": "extend"}, "release", {"op": "release"})


@pytest.mark.parametrize("value", ["", "Read-Only", "../x", "a b", "x" * 64])
def test_bad_lease_ids_are_refused(value: str) -> None:
    with pytest.raises(BadValue, match="valid: an id listed by `mayday status`"):
        rules.lease_id(value)


def test_lease_preflight_finds_the_holder_or_names_the_active_leases() -> None:
    from mayday.verdict import lease_preflight

    probes = {"db1": {"leases": [{"id": "read-only-1"}]}, "pg1": {"leases": []}, "web1": {"leases": []}}
    assert lease_preflight(probes, "read-only-1").detail == {"lease_hosts": ["db1"]}
    refused = lease_preflight(probes, "gone")
    assert not refused.go and "valid: read-only-1 (db1)" in refused.refusals[0]
    assert "none: no lease is active" in lease_preflight({"db1": {"leases": []}}, "x").refusals[0]
    assert lease_preflight({"db1": None}, "x").refusals == ["unreachable: db1"]


# --- kill-long, corruption, performance: input rules ---------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [("5m", "5m"), ("90s", "1m30s"), ("1h", "1h"), (" 2S ", "2s")])
def test_older_than_durations(value: str, expected: str) -> None:
    assert rules.older_than(value) == expected


@pytest.mark.parametrize("value", ["5", "", "0s", "abc", "8d", True])
def test_bad_older_than_names_the_format(value: object) -> None:
    with pytest.raises(BadValue, match=r"older-than .*valid: a number with a unit"):
        rules.older_than(value)


@pytest.mark.parametrize("value", ["(", "[a-", "x" * 201, ""])
def test_bad_regular_expressions(value: str) -> None:
    with pytest.raises(BadValue, match="valid"):
        rules.match_regex(value)


@pytest.mark.parametrize("value", ["0", "10001", "-1", "ten"])
def test_bad_max_victims(value: str) -> None:
    with pytest.raises(BadValue, match=r"valid: 1\.\.10000"):
        rules.max_victims(value)


@pytest.mark.parametrize("value", ["profile:*", "cache:*:html", "*:profile", "a?"])
def test_redis_patterns_with_a_literal_part(value: str) -> None:
    assert rules.redis_pattern(value) == value


@pytest.mark.parametrize("value", ["*", "**", "?*", "[a-z]*", "*[^x]*", "\\*", "", "a b"])
def test_redis_patterns_that_could_match_every_key_are_refused(value: str) -> None:
    with pytest.raises(BadValue, match="valid: a Redis glob with a literal part"):
        rules.redis_pattern(value)


def test_kill_long_defaults_and_refusals_together() -> None:
    clean, problems = check_params(SCENARIOS["kill-long"].params, {"older_than": "abc", "max_victims": "0"})
    assert len(problems) == 2 and clean["grace"] == 10 and clean["force"] is False
    clean, problems = check_params(SCENARIOS["kill-long"].params, {})
    assert problems == [] and clean["older_than"] == "5m" and clean["max_victims"] == 10


# --- lockdown and security: the verdict before anything changes, and the inputs -------------------------
def test_lockdown_preflight_one_at_a_time_and_confirm_or_lift_need_one() -> None:
    from mayday.verdict import lockdown_preflight

    active = {"incident": "INC-1", "started": "2026-11-26T00:00:00Z", "steps": ["rate_limit"], "expired": False}
    probes = {"web1": {"lockdown": active}, "web2": {"lockdown": None}}
    started = lockdown_preflight(probes, "start")
    assert not started.go and "already active on web1 (incident INC-1)" in started.refusals[0]
    assert lockdown_preflight(probes, "lift").detail == {"lockdown_hosts": ["web1"]}
    assert lockdown_preflight({"web1": {"lockdown": dict(active, confirmed=True)}}, "confirm").noop
    idle = {"web1": {"lockdown": None}, "web2": {"lockdown": dict(active, expired=True)}}
    assert lockdown_preflight(idle, "start").go, "an expired lockdown must not block a new one"
    assert "no lockdown is active on web1, web2; nothing to lift" in lockdown_preflight(idle, "lift").refusals[0]


@pytest.mark.parametrize(("given", "problem"), [
    ({}, "no containment step chosen; valid: one or more of --isolate, --no-new-logins"),
    ({"internal_only": True, "rate_limit": True}, "--internal-only only widens --isolate"),
    ({"rate_limit": True, "skip_evidence": True}, "no reason given"),
    ({"rate_limit": True, "for": "9d"}, "longer than 7d"),
])
def test_lockdown_input_refusals(given: dict[str, object], problem: str) -> None:
    _, problems = SCENARIOS["lockdown"].check(given)
    assert any(problem in p for p in problems), problems


def test_lockdown_skip_evidence_keeps_the_reason_as_one_line() -> None:
    params, problems = SCENARIOS["lockdown"].check({"rate_limit": True, "skip_evidence": True,
                                                    "reason": "disk  full\n on web1"})
    assert problems == [] and params["reason"] == "disk full on web1" and params["op"] == "start"


@pytest.mark.parametrize("value", ["root;x", "Intruder", "9lives", "a" * 33, ""])
def test_bad_account_names(value: str) -> None:
    with pytest.raises(BadValue, match="is not an account name"):
        rules.account_name(value)


def test_rotation_targets_keep_the_order_that_keeps_the_app_up() -> None:
    assert rules.rotate_targets("app,mariadb") == ["mariadb", "app"]
    assert rules.rotate_targets(["postgresql", "pgbouncer"]) == ["postgresql", "pgbouncer"]
    with pytest.raises(BadValue, match="valid: mariadb, postgresql, pgbouncer, app"):
        rules.rotate_targets("redis")
