#!/usr/bin/python
# Redis cache flush on the host in one round trip: keys matching a pattern (SCAN + UNLINK in
# batches), or the whole database only when asked (FLUSHDB ASYNC).
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_cache_flush
short_description: Delete Redis keys by pattern with SCAN and UNLINK in batches, or FLUSHDB ASYNC on request
description:
  - With I(pattern), walks the keyspace with C(SCAN cursor MATCH pattern COUNT batch) and deletes
    each batch found with C(UNLINK) (freed in the background), pipelined with the next C(SCAN). Never
    C(KEYS) (blocks the server for the whole keyspace).
  - A pattern without a literal character (C(*), C(?*)) is refused - it would match every key,
    sessions included. I(flush_all=true) empties the database on purpose with C(FLUSHDB ASYNC).
  - The password (I(password), from the inventory) goes only to the socket; it is never on a
    command line or in the output.
  - Check mode only counts the keys a real run would delete.
options:
  pattern: {type: str, description: "Redis glob (SCAN MATCH) with a literal part, such as C(profile:*)."}
  flush_all: {type: bool, default: false, description: "Empty the whole database (FLUSHDB ASYNC) instead."}
  host: {type: str, default: 127.0.0.1, description: Redis host, as the app reaches it.}
  port: {type: int, default: 6379, description: Redis port.}
  unix_socket: {type: str, description: Redis unix socket, instead of host and port.}
  db: {type: int, default: 0, description: The database number the app uses.}
  username: {type: str, description: ACL user (Redis 6+); none uses the default user.}
  password: {type: str, no_log: true, description: "requirepass / the ACL user's password (vault)."}
  batch: {type: int, default: 1000, description: SCAN COUNT and the largest UNLINK.}
  host_label: {type: str, description: "Name of the host in the summary (inventory_hostname)."}
author: mayday
"""

EXAMPLES = r"""
- name: Flush | profile cache keys
  mayday_cache_flush:
    pattern: "profile:*"
    password: "{{ mayday_redis_password }}"
"""

RETURN = r"""
report:
  description: >-
    mode (pattern, flush_all), pattern, matched, deleted, scans, seconds, complete, dbsize_before,
    dbsize_after, info (version, memory, clients, hits/misses), error.
  type: dict
  returned: always
summary: {description: One line naming the host., type: str, returned: always}
"""

import socket

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.mayday_redis import Client, RedisError, flush_pattern, info, literal_part


def main():
    module = AnsibleModule(
        argument_spec={
            "pattern": {"type": "str"},
            "flush_all": {"type": "bool", "default": False},
            "host": {"type": "str", "default": "127.0.0.1"},
            "port": {"type": "int", "default": 6379},
            "unix_socket": {"type": "str"},
            "db": {"type": "int", "default": 0},
            "username": {"type": "str"},
            "password": {"type": "str", "no_log": True},
            "batch": {"type": "int", "default": 1000},
            "host_label": {"type": "str"},
        },
        supports_check_mode=True,
    )
    p = module.params
    host = p["host_label"] or socket.gethostname()
    pattern = (p["pattern"] or "").strip()
    mode = "flush_all" if p["flush_all"] else "pattern"
    report: dict = {"mode": mode, "pattern": pattern or None}
    if mode == "pattern" and not literal_part(pattern):
        why = f"pattern {pattern!r} would match every key (sessions too); name a pattern with a literal part"
        module.fail_json(msg=f"{host}: {why}", refused=True, changed=False, report=dict(report, error=why),
                         summary=f"{host}: refused, {why}")
    try:
        client = Client(p["host"], p["port"], p["password"], p["username"], p["db"], unix_socket=p["unix_socket"])
    except RedisError as exc:
        module.fail_json(msg=f"{host}: {exc}", changed=False, report=dict(report, error=str(exc)),
                         summary=f"{host}: Redis not reached, nothing flushed ({exc})")
    try:
        report["info"] = info(client)
        report["dbsize_before"] = report["info"]["dbsize"]
        if mode == "flush_all":
            report.update(matched=report["dbsize_before"], deleted=0)
            if not module.check_mode:
                client.call("FLUSHDB", "ASYNC")
                report["deleted"] = report["dbsize_before"]
        else:
            report.update(flush_pattern(client, pattern, batch=max(1, p["batch"]), delete=not module.check_mode))
        report["dbsize_after"] = client.call("DBSIZE")
    except RedisError as exc:
        report["error"] = str(exc)
        module.fail_json(msg=f"{host}: Redis flush failed: {exc}", changed=bool(report.get("deleted")), report=report,
                         summary=f"{host}: Redis flush failed ({exc})")
    finally:
        client.close()
    what = "every key (FLUSHDB ASYNC)" if mode == "flush_all" else f"keys matching {pattern!r}"
    if module.check_mode:
        summary = f"{host}: would delete {report['matched']} Redis {what}"
    else:
        summary = f"{host}: deleted {report['deleted']} Redis {what}"
    module.exit_json(changed=report["matched"] > 0, report=report, msg=summary, summary=summary)


if __name__ == "__main__":
    main()
