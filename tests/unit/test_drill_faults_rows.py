"""The new host faults' logic that runs without a lab: the SQL a row fault feeds the engine, the
values it quotes, the limits it reads (plugins/module_utils/mayday_fault.py)."""

from __future__ import annotations

import base64

import mayday_fault
import pytest
from mayday_fault import FaultError

MARIADB_DUMP = (
    "/*M!999999\\- enable the sandbox mode */ \n"
    "INSERT INTO `users` VALUES (1,'ann',0);\n"
    "INSERT INTO `users` VALUES (2,'bob;\\nDROP TABLE users',1);\n"
    "INSERT INTO `users_archive` VALUES (9,'other table',0);\n"
)


def state(engine: str, saved: str, action: str = "drop", **extra: object) -> dict:
    return {"engine": engine, "database": "app", "table": "users", "key": "id", "columns": ["id", "name", "disabled"],
            "rows": 2, "action": action, "saved": base64.b64encode(saved.encode()).decode(), "set": {}, **extra}


def test_postgresql_script_loads_the_saved_rows_and_drops_exactly_them() -> None:
    script = mayday_fault.rows_script(state("postgresql", "1\tann\tf\n2\tbob\tt\n"), "drop")
    assert script.startswith("BEGIN;\nCREATE TEMP TABLE mayday_drill_saved (LIKE \"users\") ON COMMIT DROP;\n")
    assert "COPY mayday_drill_saved FROM STDIN;\n1\tann\tf\n2\tbob\tt\n\\.\n" in script
    assert 'DELETE FROM "users" t USING mayday_drill_saved s WHERE t."id" = s."id";' in script
    assert script.rstrip().endswith("COMMIT;")


def test_restore_puts_back_only_rows_not_back_as_they_were() -> None:
    script = mayday_fault.rows_script(state("postgresql", "1\tann\tf\n"), "restore")
    forget, delete, insert = script.splitlines()[5:8]
    assert forget.startswith("DELETE FROM mayday_drill_saved s WHERE EXISTS (SELECT 1 FROM \"users\" t WHERE")
    assert 't."name"::text IS NOT DISTINCT FROM s."name"::text' in forget  # NULLs and json compare too
    assert delete.startswith('DELETE FROM "users" t USING')
    assert insert == 'INSERT INTO "users" SELECT * FROM mayday_drill_saved;'


def test_mariadb_script_keeps_only_the_tables_rows_renamed_to_the_temporary_table() -> None:
    script = mayday_fault.rows_script(state("mariadb", MARIADB_DUMP), "check")
    assert script.startswith("SET time_zone = '+00:00';\nSTART TRANSACTION;\n"
                             "CREATE TEMPORARY TABLE mayday_drill_saved LIKE `users`;\n")
    inserts = [line for line in script.splitlines() if line.startswith("INSERT")]
    assert inserts == ["INSERT INTO `mayday_drill_saved` VALUES (1,'ann',0);",
                       "INSERT INTO `mayday_drill_saved` VALUES (2,'bob;\\nDROP TABLE users',1);"]
    assert "sandbox" not in script and "users_archive" not in script
    assert "t.`name` <=> s.`name`" in script
    assert script.rstrip().endswith("DROP TEMPORARY TABLE mayday_drill_saved;")


@pytest.mark.parametrize("engine, expected", [
    ("postgresql", 'UPDATE "users" t SET "disabled" = TRUE, "name" = NULL FROM mayday_drill_saved s'),
    ("mariadb", "UPDATE `users` t JOIN mayday_drill_saved s ON t.`id` = s.`id` SET t.`disabled` = TRUE, "
                "t.`name` = NULL;"),
])
def test_corruption_sets_the_values_on_the_saved_rows_only(engine: str, expected: str) -> None:
    saved = "1\tann\tf\n" if engine == "postgresql" else MARIADB_DUMP
    script = mayday_fault.rows_script(state(engine, saved, "corrupt", set={"disabled": True, "name": None}), "corrupt")
    assert expected in script


@pytest.mark.parametrize("value, literal", [(None, "NULL"), (True, "TRUE"), (False, "FALSE"), (7, "7"),
                                            (2.5, "2.5"), ("broken value", "'broken value'")])
def test_corrupt_values_become_literals(value: object, literal: str) -> None:
    assert mayday_fault.quote_value(value) == literal


@pytest.mark.parametrize("value", ["it's", "a\\b", "x; DROP TABLE users --'"])
def test_a_value_needing_an_escape_is_refused(value: str) -> None:
    with pytest.raises(FaultError, match="characters outside"):
        mayday_fault.quote_value(value)


@pytest.mark.parametrize("name", ["users; DROP", "u`x", 'u"x', "1users", "", None])
def test_identifiers_are_plain_or_refused(name: object) -> None:
    with pytest.raises(FaultError, match="plain identifier"):
        mayday_fault.quote_ident("postgresql", name)
    with pytest.raises(FaultError, match="plain identifier"):
        mayday_fault.rows_script(state("mariadb", MARIADB_DUMP, table=name), "drop")


@pytest.mark.parametrize("value, expected", [(1, 1), ("250", 250), (100000, 100000), ("all", "all")])
def test_row_counts(value: object, expected: object) -> None:
    assert mayday_fault.row_count_param(value) == expected


@pytest.mark.parametrize("value", [0, -1, 100001, "many", None])
def test_row_counts_out_of_range(value: object) -> None:
    with pytest.raises(FaultError, match=r"valid: 1\.\.100000 or all"):
        mayday_fault.row_count_param(value)


def test_corrupt_rows_refuses_a_change_of_the_key_before_touching_the_database(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sql(*args: object, **kwargs: object) -> None:
        raise AssertionError("the database was asked something")

    monkeypatch.setattr(mayday_fault, "run_sql", no_sql)
    monkeypatch.setattr(mayday_fault, "sh", no_sql)
    params = {"engine": "postgresql", "database": "app", "table": "users", "key": "id"}
    with pytest.raises(FaultError, match="key column"):
        mayday_fault.CorruptRows().inject("f1", {**params, "set": {"id": 0}})
    with pytest.raises(FaultError, match="needs set"):
        mayday_fault.CorruptRows().inject("f1", params)
    with pytest.raises(FaultError, match="engine 'sqlite' unknown"):
        mayday_fault.DropRows().inject("f1", {**params, "engine": "sqlite"})


SHOW_DATABASES = """name|host|port|database|force_user|pool_size|min_pool_size|reserve_pool|pool_mode|max_connections
app|/var/run/postgresql|5432|app||20|0|5||0
pgbouncer||6432|pgbouncer|pgbouncer|2|0|0|statement|0
(2 rows)
"""


def test_pgbouncer_pool_is_its_size_plus_the_reserve() -> None:
    assert mayday_fault.pgbouncer_pool_size(SHOW_DATABASES, "app") == 25
    assert mayday_fault.pgbouncer_pool_size(SHOW_DATABASES, "other") is None
    assert mayday_fault.pgbouncer_pool_size("", "app") is None


def test_session_limit_reads_server_and_role_limits_minus_the_reserved() -> None:
    pg = mayday_fault.session_limit_sql("postgresql", "app")
    assert "superuser_reserved_connections" in pg and "rolconnlimit" in pg and "rolname = 'app'" in pg
    maria = mayday_fault.session_limit_sql("mariadb", "app")
    assert "@@global.max_connections" in maria and "max_user_connections" in maria
    with pytest.raises(FaultError):
        mayday_fault.session_limit_sql("postgresql", "app' OR '1")


def test_saturation_over_the_bound_is_refused_before_anything_is_held(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: object) -> None:
    calls: list[object] = []
    monkeypatch.setattr(mayday_fault, "STATE_DIR", str(tmp_path))
    monkeypatch.setattr(mayday_fault, "sh", lambda *a, **k: calls.append(a))
    params = {"engine": "postgresql", "database": "app", "user": "app", "sessions": 150, "max_sessions": 100}
    with pytest.raises(FaultError, match="needs 150 sessions, over max_sessions 100"):
        mayday_fault.SaturateConnections().inject("f1", params)
    with pytest.raises(FaultError, match="max_sessions 5000 out of range"):
        mayday_fault.SaturateConnections().inject("f1", {**params, "max_sessions": 5000})
    with pytest.raises(FaultError, match="through"):
        mayday_fault.SaturateConnections().inject("f1", {**params, "through": "proxy"})
    assert calls == []  # no unit started


def test_the_faults_are_in_the_library_and_the_helper_can_hold() -> None:
    for name in ("drop_rows", "corrupt_rows", "saturate_connections"):
        assert name in mayday_fault.FAULTS
    assert mayday_fault.main(["hold"]) == 2


@pytest.mark.parametrize("migration", [
    "ALTER TABLE users DROP COLUMN disabled",
    "ALTER TABLE users RENAME COLUMN name TO username",
    "alter table users alter column name type varchar(3) using left(name, 3)",
    "ALTER TABLE users ADD COLUMN note TEXT NOT NULL DEFAULT 'x'",
])
def test_migrations_one_alter_table_on_the_table(migration: str) -> None:
    assert mayday_fault.check_migration("users", migration) == migration


@pytest.mark.parametrize("migration, expected", [
    ("ALTER TABLE users RENAME TO users_old", "renames the table"),
    ("ALTER TABLE users RENAME users_old", "renames the table"),
    ("ALTER TABLE sessions DROP COLUMN user_id", "valid: one ALTER TABLE users"),
    ("ALTER TABLE users DROP COLUMN x; DROP TABLE users", "valid: one ALTER TABLE users"),
    ("ALTER TABLE users DROP COLUMN x -- comment", "no ';' or comments"),
    ("DROP TABLE users", "valid: one ALTER TABLE users"),
    (None, "valid: one ALTER TABLE users"),
])
def test_other_migrations_are_refused(migration: str | None, expected: str) -> None:
    with pytest.raises(FaultError, match=expected):
        mayday_fault.check_migration("users", migration)


def test_definitions_compare_without_what_changes_between_dumps() -> None:
    dump = ("--\n-- PostgreSQL database dump\n--\n\\restrict abc123\nCREATE TABLE public.users (\n"
            "    id integer NOT NULL\n);\n\n\\unrestrict abc123\n")
    assert mayday_fault.schema_lines(dump) == "CREATE TABLE public.users (\n    id integer NOT NULL\n);"
    maria = "users\tCREATE TABLE `users` (\n  `id` int(11) NOT NULL\n) ENGINE=InnoDB AUTO_INCREMENT=201"
    assert mayday_fault.schema_lines(maria) == mayday_fault.schema_lines(maria.replace("=201", "=7"))


def test_mariadb_migration_is_undone_beside_the_table_then_swapped_in_at_once() -> None:
    definition = "CREATE TABLE `users` (\n  `id` int(11) NOT NULL,\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB"
    s = {"table": "users", "definition": base64.b64encode(definition.encode()).decode(),
         "saved": base64.b64encode(MARIADB_DUMP.encode()).decode()}
    lines = mayday_fault.mariadb_restore_script(s).splitlines()
    assert lines[:3] == ["SET time_zone = '+00:00';", "DROP TABLE IF EXISTS `mayday_drill_new`, `mayday_drill_old`;",
                         "CREATE TABLE `mayday_drill_new` ("]
    assert [line for line in lines if line.startswith("INSERT")] == [
        "INSERT INTO `mayday_drill_new` VALUES (1,'ann',0);",
        "INSERT INTO `mayday_drill_new` VALUES (2,'bob;\\nDROP TABLE users',1);"]
    assert lines[-2:] == ["RENAME TABLE `users` TO `mayday_drill_old`, `mayday_drill_new` TO `users`;",
                          "DROP TABLE `mayday_drill_old`;"]
    with pytest.raises(FaultError, match="does not start with"):
        mayday_fault.mariadb_restore_script({**s, "table": "other"})
