"""Scheduled drills: inject a fault mayday owns, let a scenario recover it, measure against the SLA,
always clean up (issue 11). schema: drill files; journal: events and the verdict; report: JUnit,
Markdown, trend; runs: controller helpers the playbook and the CLI share; hooks: the alert path and
notifications; schedule: systemd timers; cli: `mayday drill`."""
