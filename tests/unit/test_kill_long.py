"""Long queries: who is a victim, when cutting needs --force, how a victim is recorded
(plugins/module_utils/mayday_kill_long.py)."""

from __future__ import annotations

import pytest
from mayday_kill_long import Seen, compile_filters, cut, pick, record, redact, refusal, still_running


def seen(pid: int, seconds: float, user: str = "app", db: str = "app", query: str = "SELECT pg_sleep(600)",
         running: bool = True) -> Seen:
    return Seen(key=f"{pid}:1", pid=pid, user=user, database=db, client="10.0.0.5:5000", state="active",
                running=running, seconds=seconds, started=1000.0, query=query)


def test_only_running_statements_past_the_threshold_are_victims_oldest_first() -> None:
    sessions = [seen(1, 299), seen(2, 300), seen(3, 900), seen(4, 4000, running=False)]
    victims, kept = pick(sessions, 300)
    assert [v.pid for v in victims] == [3, 2] and kept == []


def test_allowlisted_users_are_kept_with_the_reason() -> None:
    victims, kept = pick([seen(1, 600, user="postgres"), seen(2, 600)], 300, allowlist=["postgres"])
    assert [v.pid for v in victims] == [2]
    assert [(s.pid, why) for s, why in kept] == [(1, "user postgres is on the allowlist")]


def test_every_filter_must_match_searched_and_case_sensitive() -> None:
    sessions = [seen(1, 600, user="report_job", query="SELECT * FROM big"), seen(2, 600, user="app"),
                seen(3, 600, user="report_x", db="other", query="select * from big")]
    victims, _ = pick(sessions, 60, filters=compile_filters(match_user="^report_", match_query="FROM big"))
    assert [v.pid for v in victims] == [1]
    victims, _ = pick(sessions, 60, filters=compile_filters(match_db="^app$"))
    assert sorted(v.pid for v in victims) == [1, 2]


def test_a_bad_pattern_is_refused_naming_the_option() -> None:
    with pytest.raises(ValueError, match="match_query '\\(' is not a regular expression"):
        compile_filters(match_query="(")


@pytest.mark.parametrize(("victims", "clients", "force", "says"), [
    (11, 1000, False, "more than --max-victims 10"),
    (10, 1000, False, ""),
    (11, 1000, True, ""),
    (3, 5, False, "3 of the 5 client sessions"),
    (3, 6, False, ""),  # half, not over
    (2, 2, False, ""),  # one or two runaways are never a share
    (1, 1, False, ""),
    (3, 4, True, ""),
])
def test_limits(victims: int, clients: int, force: bool, says: str) -> None:
    found = refusal(victims, clients, 10, force)
    assert (says in found and found) if says else found == ""


@pytest.mark.parametrize(("query", "hidden"), [
    ("ALTER ROLE app PASSWORD 'hunter2'", "hunter2"),
    ("ALTER USER app WITH ENCRYPTED PASSWORD 'it''s-secret'", "s-secret"),
    ("SET PASSWORD FOR 'app'@'%' = PASSWORD('hunter2')", "hunter2"),
    ("ALTER USER 'app'@'%' IDENTIFIED BY 'hunter2'", "hunter2"),
    ("CREATE USER x IDENTIFIED BY PASSWORD '*ABCDEF'", "ABCDEF"),
])
def test_quoted_passwords_never_reach_the_record(query: str, hidden: str) -> None:
    assert hidden not in redact(query) and "'***'" in redact(query)
    assert hidden not in cut(query)


def test_the_query_is_one_line_cut_to_length() -> None:
    text = "SELECT *\n  FROM   orders WHERE note = '" + "x" * 500 + "'"
    assert cut(text, 40) == "SELECT * FROM orders WHERE note = 'xxxx\u2026"
    assert len(cut(text, 40)) == 40 and cut("SELECT 1") == "SELECT 1"


def test_the_record_names_the_session() -> None:
    doc = record(seen(42, 312.345, query="SELECT 1"))
    assert doc == {"pid": 42, "user": "app", "database": "app", "client": "10.0.0.5:5000", "duration_s": 312.3,
                   "query": "SELECT 1"}


def test_a_statement_is_still_running_only_when_the_same_one_runs() -> None:
    before = seen(1, 600)
    assert still_running(before, seen(1, 601))
    assert not still_running(before, None)  # session gone
    assert not still_running(before, seen(1, 0, running=False))  # cancelled, session idle
    later = seen(1, 0.2)
    later.started = 1600.0
    assert not still_running(before, later)  # a new statement in the same session
