# The database engines mayday drives on the DB host, by name. Each engine lives in its own file
# (mayday_db_postgres, mayday_db_mariadb) over mayday_db_common; no AnsibleModule, imported
# directly by the tests.
from __future__ import annotations

try:
    from ansible.module_utils.mayday_db_common import DbError, check_name, stamp
    from ansible.module_utils.mayday_db_mariadb import MariaDB
    from ansible.module_utils.mayday_db_postgres import PgBouncer, Postgres
except ImportError:  # imported directly (unit tests, bench)
    from mayday_db_common import DbError, check_name, stamp  # type: ignore[no-redef]
    from mayday_db_mariadb import MariaDB  # type: ignore[no-redef]
    from mayday_db_postgres import PgBouncer, Postgres  # type: ignore[no-redef]

__all__ = ["ENGINES", "DbError", "MariaDB", "PgBouncer", "Postgres", "check_name", "engine_for", "stamp"]

ENGINES = {"postgresql": Postgres, "mariadb": MariaDB}


def engine_for(params):
    if params.get("engine") not in ENGINES:
        raise DbError(f"unknown engine {params.get('engine')!r}; valid: {', '.join(ENGINES)}")
    return ENGINES[params["engine"]](params)
