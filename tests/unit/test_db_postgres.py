"""Pure logic of the PostgreSQL engine: quoting, settings, the fingerprint's shape, pg_restore output parsing."""

from __future__ import annotations

import pytest
from mayday_db_common import DbError
from mayday_db_postgres import (
    META,
    SEQUENCE_SET,
    SETVAL,
    Postgres,
    ident,
    meta_entry,
    pct,
    qualified,
    setting_values,
    too_long,
)

HOSTILE = ["it's", 'dq"uote', "semi;colon", "new\nline", "tab\tbed", "pct%_under", "back`tick",
           'x"; CREATE DATABASE pwned; --']


@pytest.mark.parametrize("name", HOSTILE)
def test_ident_doubles_quotes_and_keeps_everything_else(name: str) -> None:
    quoted = ident(name)
    assert quoted.startswith('"') and quoted.endswith('"')
    inner = quoted[1:-1]
    assert inner.replace('""', '"') == name
    assert '"' not in inner.replace('""', "")  # no lone quote ends the identifier early


@pytest.mark.parametrize("bad", ["", "a\x00b", None, 5])
def test_ident_refuses_what_cannot_be_a_name(bad: object) -> None:
    with pytest.raises(DbError):
        ident(bad)


def test_qualified_and_pct() -> None:
    assert qualified("public", 'a"b') == '"public"."a""b"'
    assert pct(ident("50%_off")) == '"50%%_off"'


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("work_mem", "7MB", ["7MB"]),
    ("search_path", '"$user", public', ["$user", "public"]),
    ("search_path", '"a,b", "c""d", e', ["a,b", 'c"d', "e"]),
    ("application_name", "x, y", ["x, y"]),  # not a list setting: one value
])
def test_setting_values(name: str, value: str, expected: list[str]) -> None:
    assert setting_values(name, value) == expected


def test_too_long_counts_bytes() -> None:
    assert too_long("a" * 63) == []
    assert too_long("a" * 64) == ["a" * 64]
    assert too_long("é" * 32) == ["é" * 32]  # 64 bytes in UTF-8


def test_max_name_and_meta_keys_cannot_clash_with_tables() -> None:
    assert Postgres.max_name == 63
    assert all(key.startswith("@") for key in META)  # a table key is schema.name, never "@..."
    assert {"@database", "@relations", "@routines", "@views", "@triggers", "@extensions"} <= set(META)


def test_meta_entry_is_order_independent_and_counts_no_rows() -> None:
    a = meta_entry([["orders", "app"], ["items", "app"]])
    b = meta_entry([["items", "app"], ["orders", "app"]])
    assert a == b and a["rows"] == 0 and a["items"] == 2
    assert meta_entry([["items", "postgres"], ["orders", "app"]]) != a  # an owner changed: it differs


def test_setval_and_listing_parsing_with_hostile_names() -> None:
    script = ("--\n-- Name: x; Type: SEQUENCE SET\n--\n\n"
              "SELECT pg_catalog.setval('public.\"it''s\"_id_seq', 42, true);\n\n"
              "SELECT pg_catalog.setval('public.\"a;\nb\"', 1, false);\n")
    assert SETVAL.findall(script) == [("public.\"it''s\"_id_seq", "42", "true"), ('public."a;\nb"', "1", "false")]
    listing = ("215; 1259 16390 TABLE public SEQUENCE SET x app\n"
               "3390; 0 0 SEQUENCE SET public orders_id_seq app\n")
    assert SEQUENCE_SET.findall(listing) == ["3390"]
