"""Pure logic of the MariaDB engine: quoting, fingerprint SQL, definition keys, the dump's start marker."""

from __future__ import annotations

from pathlib import Path

import pytest
from mayday_db_common import DbError
from mayday_db_mariadb import (
    MariaDB,
    columns_digest,
    compare_definitions,
    definition_key,
    fingerprinted_here,
    is_definition_key,
    past_snapshot,
    quote_ident,
    row_hash_sql,
)

HOSTILE = ["x`;CREATE DATABASE pwned;#", "it's \"q\"", "semi;colon", "new\nline", "tab\there", "pct%", "under_score"]


def unquote(quoted: str) -> str:
    """What the server reads from a backtick-quoted identifier."""
    assert quoted[0] == quoted[-1] == "`"
    inner = quoted[1:-1]
    assert "`" not in inner.replace("``", ""), f"a lone backtick ends the identifier early: {quoted!r}"
    return inner.replace("``", "`")


@pytest.mark.parametrize("name", HOSTILE)
def test_quote_ident_round_trips_hostile_names(name: str) -> None:
    assert unquote(quote_ident(name)) == name


@pytest.mark.parametrize("bad", ["", "a\0b", None, 5])
def test_quote_ident_refuses_what_no_identifier_can_be(bad: object) -> None:
    with pytest.raises(DbError):
        quote_ident(bad)


def test_row_hash_sql_quotes_every_column_and_distinguishes_null() -> None:
    sql = row_hash_sql("`app`.`t`", ["c`ol", "c;ol"])
    assert "CAST(`c``ol` AS BINARY)" in sql and "LENGTH(`c;ol`)" in sql
    assert sql.count("IFNULL(") == 2 and "'n'" in sql  # NULL is 'n'; a value starts with its length
    assert "GROUP_CONCAT" not in sql.upper()  # nothing a length limit cuts
    assert "SUM(" in sql and "COUNT(*)" in sql
    with pytest.raises(DbError):
        row_hash_sql("`app`.`t`", [])


def test_columns_digest_changes_with_shape() -> None:
    base = [["id", "int(11)"], ["note", "varchar(64)"]]
    assert columns_digest(base) == columns_digest([list(c) for c in base])
    assert columns_digest(base) != columns_digest(base[:1])
    assert columns_digest(base) != columns_digest([["id", "bigint(20)"], ["note", "varchar(64)"]])


@pytest.mark.parametrize("name", HOSTILE)
def test_definition_keys_cannot_be_table_names(name: str) -> None:
    key = definition_key("view", name)
    assert is_definition_key(key)
    assert key.endswith(" ")  # MariaDB identifiers cannot end with a space
    assert not is_definition_key(name)


def test_compare_definitions() -> None:
    a = {"@view `v` ": {"rows": 0, "checksum": "1"}, "@function `f` ": {"rows": 0, "checksum": "2"}}
    assert compare_definitions(a, dict(a)) == []
    b = {"@view `v` ": {"rows": 0, "checksum": "9"}, "@event `e` ": {"rows": 0, "checksum": "3"}}
    assert compare_definitions(a, b) == [("@event `e` ", "only in the backup"),
                                         ("@function `f` ", "only in the live database"),
                                         ("@view `v` ", "defined differently")]


HEADER = b"""
-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB, for debian-linux-gnu (x86_64)
--
-- Host: localhost    Database: app
-- ------------------------------------------------------
-- Server version\t10.11.19-MariaDB-0+deb12u1

/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;
/*!40111 SET @OLD_SQL_NOTES=@@SQL_NOTES, SQL_NOTES=0 */;
"""


@pytest.mark.parametrize("after", [b"--\n-- Table structure for table `t`\n",
                                   b"--\n-- Dumping events for database 'app'\n", b"-- Dump completed\n",
                                   b"--\n-- Temporary table structure for view `v`\n"])
def test_past_snapshot_after_the_header_only(after: bytes) -> None:
    assert not past_snapshot(HEADER)
    assert past_snapshot(HEADER + after)


def test_engine_names_and_dump_command() -> None:
    eng = MariaDB({"timeouts": {"lock": 3}})
    assert eng.max_name == 64 and eng.timeouts["lock"] == 3
    cmd = eng.dump_command("app")
    assert cmd[:2] == ["stdbuf", "-oL"]  # line-buffered: the start marker shows at once
    assert {"--single-transaction", "--routines", "--triggers", "--events"} <= set(cmd)
    assert cmd[-2:] == ["--", "app"]
    assert eng.dump_command("app", fast=True)[0] == "nice"


def test_too_long_names_refused_before_connecting() -> None:
    eng = MariaDB({"socket": "/nonexistent/mysqld.sock"})
    with pytest.raises(DbError, match="64 at most"):
        eng.preflight_restore("app", "app__mayday_shadow", "a" * 65)
    with pytest.raises(DbError):
        MariaDB({"timeouts": {"nap": 1}})


def test_dump_never_writes_through_an_existing_file_or_symlink(tmp_path: Path) -> None:
    eng = MariaDB({"socket": "/nonexistent/mysqld.sock"})
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    link = tmp_path / "dump.sql.partial"
    link.symlink_to(target)
    for path in (link, target):
        with pytest.raises(DbError, match="cannot create the dump file"):
            eng.dump_with_fingerprint("app", str(path))
    assert target.read_text() == "keep"


def test_manifests_of_this_fingerprint_are_told_apart() -> None:
    assert fingerprinted_here({"t": {"rows": 1, "checksum": "1bce5c2c7e09f8ed:92311"}})
    assert fingerprinted_here({definition_key("view", "v"): {"rows": 0, "checksum": "ab"}})
    assert not fingerprinted_here({"t": {"rows": 1, "checksum": "2114916914"}})  # CHECKSUM TABLE
