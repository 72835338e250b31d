#!/usr/bin/python
# Evidence before change: one round trip that captures the host's state in order of volatility and
# packs it with a SHA-256 manifest (plugins/module_utils/mayday_evidence.py does the work).
from __future__ import annotations

DOCUMENTATION = r"""
module: mayday_evidence
short_description: Capture a host's evidence in order of volatility into a 0600 tar.gz with a SHA-256 manifest
description:
  - Items, most volatile first - system (clock, uptime), processes (every process in /proc with its
    binary's path and sha256, read through /proc/<pid>/exe so a deleted binary is hashed too),
    sockets (ss -tanpu, /proc/net), firewall (nft, iptables-save), logins (who, last, lastlog, wtmp),
    accounts (/etc/passwd, /etc/group, shadow status - never the hashes), sudoers, authorized keys of
    every account (sshd's AuthorizedKeysFile), cron and systemd timers, systemd units, the journal
    and the auth log of the last I(hours), web and database logs changed within the window,
    configuration (I(config_paths)), and the sha256 of every file of the live release.
  - Each item has a status (ok, missing, error with the reason), so one failing source does not lose
    the others; the capture as a whole fails (and leaves nothing) only when it cannot write or pack.
  - Bounded - each command has a timeout (I(command_timeout)), the capture a time budget
    (I(time_budget)); logs keep their newest I(log_max_bytes), marked truncated; the total is capped
    by I(total_max_bytes).
  - Writes under I(root)/<incident>/<UTC stamp>/ (0700) - a staging directory, packed into
    C(evidence.tar.gz) (0600, with C(evidence/manifest.json) inside) and C(manifest.json) alongside
    (the files' sha256 and the archive's); the staging directory is removed after packing.
  - Contents are copied faithfully (configuration may hold passwords) and never returned - the
    result names items, statuses and hashes only. Symlinks are listed, never followed.
  - Check mode lists what would be collected and writes nothing.
options:
  incident: {type: str, required: true, description: The incident id (a plain name), the directory under I(root).}
  root: {type: path, default: /var/lib/mayday/evidence, description: Where captures are written (0700).}
  hours: {type: int, default: 24, description: The window of the journal and the logs.}
  log_paths:
    type: list
    elements: str
    default: []
    description: Globs of web and database log files; those changed within the window are taken (tail).
  config_paths:
    type: list
    elements: path
    default: []
    description: Configuration files and trees, copied whole (bounded per file).
  release_link: {type: path, default: /var/www/app/current, description: "The live release's link."}
  log_max_bytes: {type: int, default: 16777216, description: Newest bytes kept per log, journal, command.}
  total_max_bytes: {type: int, default: 536870912, description: Cap of the whole capture before packing.}
  hash_max_bytes: {type: int, default: 536870912, description: A binary or release file larger than this is not hashed.}
  command_timeout: {type: int, default: 30, description: Seconds each command may run.}
  time_budget: {type: int, default: 600, description: Seconds the capture may take; items after it are errors.}
  host_label: {type: str, description: "Name of the host in the manifest and summary (inventory_hostname)."}
author: mayday
"""

EXAMPLES = r"""
- name: Evidence | capture
  mayday_evidence:
    incident: INC-20260101-000000
    hours: 24
    log_paths: ["/var/log/nginx/*"]
    config_paths: [/etc/nginx]
"""

RETURN = r"""
capture:
  description: >-
    run_dir, archive, archive_sha256, archive_size, manifest, manifest_sha256, started, finished,
    duration_s, hostname, files, bytes, items (order, item, status, reason, truncated); check mode -
    plan (each item and the paths it would read).
  type: dict
  returned: always
summary: {description: One line naming the host., type: str, returned: always}
"""

import socket

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.mayday_evidence import CaptureError, capture, plan, valid_id


def main():
    module = AnsibleModule(
        argument_spec={
            "incident": {"type": "str", "required": True},
            "root": {"type": "path", "default": "/var/lib/mayday/evidence"},
            "hours": {"type": "int", "default": 24},
            "log_paths": {"type": "list", "elements": "str", "default": []},
            "config_paths": {"type": "list", "elements": "path", "default": []},
            "release_link": {"type": "path", "default": "/var/www/app/current"},
            "log_max_bytes": {"type": "int", "default": 16 << 20},
            "total_max_bytes": {"type": "int", "default": 512 << 20},
            "hash_max_bytes": {"type": "int", "default": 512 << 20},
            "command_timeout": {"type": "int", "default": 30},
            "time_budget": {"type": "int", "default": 600},
            "host_label": {"type": "str"},
        },
        supports_check_mode=True,
    )
    p = module.params
    host = p["host_label"] or socket.gethostname()
    if not valid_id(p["incident"]):
        module.fail_json(msg=f"{host}: incident id {p['incident']!r} is not a plain name", changed=False,
                         capture={}, summary=f"{host}: evidence not captured (bad incident id)")
    if p["hours"] < 1 or p["log_max_bytes"] < 1 or p["command_timeout"] < 1:
        module.fail_json(msg=f"{host}: hours, log_max_bytes and command_timeout must be positive", changed=False,
                         capture={}, summary=f"{host}: evidence not captured (bad limits)")
    if module.check_mode:
        items = plan(p)
        summary = f"{host}: would capture {len(items)} evidence items under {p['root']}/{p['incident']}"
        module.exit_json(changed=True, capture={"plan": items}, msg=summary, summary=summary)
    try:
        result = capture(p, host)
    except CaptureError as exc:
        module.fail_json(msg=f"{host}: evidence capture failed: {exc}", changed=False, capture={},
                         summary=f"{host}: evidence capture failed ({exc})")
    bad = [i["item"] for i in result["items"] if i["status"] == "error"]
    summary = (f"{host}: evidence captured, {result['files']} files, archive sha256 {result['archive_sha256']}"
               + (f"; items with errors: {', '.join(bad)}" if bad else ""))
    module.exit_json(changed=True, capture=result, msg=summary, summary=summary)


if __name__ == "__main__":
    main()
