#!/usr/bin/python
# Performance recovery steps on a host, each mode one round trip: measure (evidence), recover (app
# cache directory, graceful php-fpm reload, measure again, verdict), queries (a database host's
# busiest queries).
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_perf
short_description: Measure a web host's latency, empty the app cache, reload php-fpm gracefully, judge
description:
  - C(measure) (read-only) samples each health endpoint I(samples) times and reads php-fpm's status
    page over FastCGI on the pool socket (needs C(pm.status_path) on the pool).
  - C(recover) empties I(cache_dir) (its contents, never the directory; symlinks are removed, never
    followed), reloads php-fpm gracefully (C(systemctl reload) - workers finish their requests, the
    master keeps its pid and its listening socket, opcache starts empty), waits until the pool
    answers, measures again and judges against I(threshold_ms). The host fails when the slowest
    endpoint's median stays over the threshold (C(still_slow)), or when I(flush) (the Redis step's
    result) failed.
  - C(queries) (read-only, on a database host) lists the busiest queries - MariaDB's processlist,
    PostgreSQL's pg_stat_statements when installed, else pg_stat_activity.
  - Check mode - C(recover) counts what it would remove and reloads nothing.
options:
  mode: {type: str, choices: [measure, recover, queries], default: measure, description: What to do.}
  health: {type: list, elements: dict, default: [], description: "Health checks (mayday_health_checks)."}
  samples: {type: int, default: 3, description: Probes per endpoint; the median is judged.}
  threshold_ms: {type: int, default: 2000, description: Latency over which the host has not recovered.}
  cache_dir: {type: str, default: "", description: "The app cache directory to empty ('' leaves it)."}
  fpm_service: {type: str, default: php8.2-fpm, description: php-fpm's systemd unit.}
  fpm_socket: {type: str, default: /run/php/php8.2-fpm.sock, description: The pool's FastCGI socket.}
  fpm_status_path: {type: str, default: /status, description: The pool's pm.status_path.}
  reload: {type: bool, default: true, description: Reload php-fpm gracefully.}
  before: {type: dict, default: {}, description: "recover: the measure result (report), kept in this report."}
  flush: {type: dict, default: {}, description: "recover: the Redis step's result, judged with this host."}
  engine: {type: str, choices: [mariadb, postgresql], description: "queries: the database engine."}
  limit: {type: int, default: 10, description: "queries: at most this many."}
  host_label: {type: str, description: "Name of the host in the summary (inventory_hostname)."}
author: mayday
"""

RETURN = r"""
report:
  description: >-
    measure: latency (per endpoint median_ms, max_ms, samples_ms, statuses), fpm (status page);
    recover: before, after, cache (path, entries, bytes, removed), reload (pid_before, pid_after,
    seconds, answers), redis (the flush report), verdict (before_ms, after_ms, threshold_ms,
    still_slow, recovered); queries: source, rows.
  type: dict
  returned: always
steps: {description: Every step with its result and duration., type: list, returned: recover}
still_slow: {description: The slowest endpoint's median is over the threshold after the flush., type: bool}
summary: {description: One line naming the host., type: str, returned: always}
"""

import socket

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.mayday_perf import clear_dir, fpm_status, reload_fpm, sample_latency, top_queries, verdict
from ansible.module_utils.mayday_steps import Steps


def measure(p):
    return {"latency": sample_latency(p["health"], p["samples"]),
            "fpm": fpm_status(p["fpm_socket"], p["fpm_status_path"])}


def main():
    module = AnsibleModule(
        argument_spec={
            "mode": {"type": "str", "choices": ["measure", "recover", "queries"], "default": "measure"},
            "health": {"type": "list", "elements": "dict", "default": []},
            "samples": {"type": "int", "default": 3},
            "threshold_ms": {"type": "int", "default": 2000},
            "cache_dir": {"type": "str", "default": ""},
            "fpm_service": {"type": "str", "default": "php8.2-fpm"},
            "fpm_socket": {"type": "str", "default": "/run/php/php8.2-fpm.sock"},
            "fpm_status_path": {"type": "str", "default": "/status"},
            "reload": {"type": "bool", "default": True},
            "before": {"type": "dict", "default": {}},
            "flush": {"type": "dict", "default": {}},
            "engine": {"type": "str", "choices": ["mariadb", "postgresql"]},
            "limit": {"type": "int", "default": 10},
            "host_label": {"type": "str"},
        },
        supports_check_mode=True,
    )
    p = module.params
    host = p["host_label"] or socket.gethostname()
    if p["mode"] == "queries":
        try:
            report = top_queries(p["engine"], p["limit"])
        except (RuntimeError, OSError) as exc:
            report = {"error": str(exc), "rows": []}  # evidence only: never fails the run
        module.exit_json(changed=False, report=report, summary=f"{host}: {len(report['rows'])} busy queries")
    if p["mode"] == "measure":
        report = measure(p)
        slow = max((e["median_ms"] for e in report["latency"]), default=0.0)
        module.exit_json(changed=False, report=report, summary=f"{host}: slowest endpoint median {slow:g} ms")

    if p["flush"].get("refused"):  # a pattern matching every key: this host changes nothing
        module.fail_json(msg=p["flush"].get("msg") or f"{host}: Redis flush refused", refused=True, changed=False,
                         report={"before": p["before"], "redis": p["flush"].get("report") or {}},
                         summary=p["flush"].get("summary") or f"{host}: refused")
    steps = Steps()
    redis = dict(p["flush"].get("report") or {})
    report = {"before": p["before"], "redis": redis}
    problems = []
    if p["flush"].get("failed"):
        problems.append(str(p["flush"].get("msg") or "Redis flush failed").removeprefix(f"{host}: "))
    changed = bool(p["flush"].get("changed"))
    if p["cache_dir"]:
        try:
            report["cache"] = steps.run(f"empty {p['cache_dir']}", clear_dir, p["cache_dir"],
                                        delete=not module.check_mode)
            changed = changed or report["cache"]["entries"] > 0
        except FileNotFoundError:
            report["cache"] = {"path": p["cache_dir"], "entries": 0, "removed": 0, "missing": True}
        except OSError as exc:  # a symlink at the path (ELOOP), not a directory, ...
            problems.append(f"app cache {p['cache_dir']} not emptied: {exc.strerror or exc}")
            report["cache"] = {"path": p["cache_dir"], "error": str(exc)}
    if module.check_mode:
        entries = (report.get("cache") or {}).get("entries", 0)
        would = ([f"delete {redis.get('matched', 0)} Redis keys"] if redis else []) + (
            [f"empty {entries} entries of {p['cache_dir']}"] if p["cache_dir"] else []) + (
            [f"reload {p['fpm_service']}"] if p["reload"] else [])
        summary = f"{host}: would " + ", ".join(would or ["do nothing"])
        module.exit_json(changed=True, report=report, steps=steps.items, still_slow=False, msg=summary,
                         summary=summary)
    if p["reload"]:
        try:
            report["reload"] = steps.run(f"reload {p['fpm_service']} (graceful)", reload_fpm, p["fpm_service"],
                                         p["fpm_socket"], p["fpm_status_path"])
            changed = True
            if not report["reload"]["answers"]:
                problems.append(f"{p['fpm_service']} did not answer within 30 s of the reload")
        except (RuntimeError, OSError) as exc:
            problems.append(str(exc))
    report["after"] = steps.run("measure again", measure, p)
    found = verdict((p["before"] or {}).get("latency") or [], report["after"]["latency"], p["threshold_ms"])
    report["verdict"] = found
    flushed = f"{redis.get('deleted', 0)} Redis keys, " if redis else ""
    cache = report.get("cache") or {}
    done = (f"flushed {flushed}{cache.get('removed', 0)} cache entries, reloaded {p['fpm_service']}; "
            f"latency {found['before_ms']:g} -> {found['after_ms']:g} ms (threshold {p['threshold_ms']} ms)")
    if found["still_slow"]:
        problems.append(f"still slow: {found['after_ms']:g} ms over {p['threshold_ms']} ms after the flush; "
                        "hand over to Level 1")
    elif not found["healthy"]:
        problems.append("health check failing after the flush: "
                        + "; ".join(x for e in report["after"]["latency"] for x in e["problems"]))
    if problems:
        module.fail_json(msg=f"{host}: " + "; ".join(problems), changed=changed, report=report, steps=steps.items,
                         still_slow=found["still_slow"], summary=f"{host}: not recovered ({'; '.join(problems)}); "
                         + done)
    module.exit_json(changed=changed, report=report, steps=steps.items, still_slow=False, msg=done,
                     summary=f"{host}: {done}")


if __name__ == "__main__":
    main()
