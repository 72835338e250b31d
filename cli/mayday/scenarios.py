"""The scenario table: each scenario is one playbook plus one entry here.

The CLI builds a command from each entry (name, help, options); the scenario skeleton
(roles/scenario) reads the same entry to check the playbook's extra vars, title the incident and
name the phases. Adding a scenario: write playbooks/<name>.yml on the skeleton, add an entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mayday import rules
from mayday.rules import Param


@dataclass(frozen=True)
class Scenario:
    name: str
    playbook: str
    help: str
    title: str  # formatted with the checked parameters
    severity: int
    phases: tuple[str, ...]
    params: list[Param] = field(default_factory=list)
    # RECOVERED for a rollback; DONE for a routine job such as a backup.
    success: str = "RECOVERED"
    # Emergency jobs take the lock, so two never act on one inventory at the same time. A routine
    # job (a backup) only reads it: it waits out an emergency but never holds one up.
    takes_lock: bool = True
    # Extra vars the CLI always passes (the restore command is Level 2's database component).
    fixed: dict[str, str] = field(default_factory=dict)
    # Commands of a group are nested under it in the CLI (group "db": `mayday db read-only`).
    group: str = ""
    # The CLI command's name when it differs (`mayday lease extend` runs scenario lease-extend).
    command: str = ""
    # "security": the outcome goes to the inventory's security channels (mayday_notify_channels_security,
    # else the usual ones), success included: a lockdown or a locked account is news for the team.
    channel: str = ""
    # Checks across inputs (at least one lockdown step): problems, in the rules' words.
    cross_check: Callable[[dict[str, Any]], list[str]] | None = None

    def check(self, given: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The inputs checked by their rules, then across each other (the CLI and the playbook both)."""
        params, problems = rules.check_params(self.params, {**given, **self.fixed})
        if not problems and self.cross_check:
            problems = self.cross_check(params)
        return params, problems


RELEASE = Param("release", "Roll back to this release id (default: the newest good one deployed before the live one).",
                rules.release_id)
FORCE = Param("force", "Allow --release to name a release marked failed.", rules.flag, default=False, is_flag=True)
COMPONENT = Param("component", "The component to roll back.", rules.component, required=True,
                  choices=rules.level2_components)
LEVEL2_BACKUP = Param("backup", "database: backup id; api, frontend: the deploy-time copy to restore.",
                      rules.backup_id, default="latest",
                      applies=lambda p: p.get("component") in ("database", "api", "frontend"))
MINUTES = Param("minutes", "webhook: remove rows added in the last N minutes (1..10080).", rules.minutes, default=60,
                applies=lambda p: p.get("component") == "webhook")
BACKUP = Param("backup", "Backup id to restore, or latest.", rules.backup_id, default="latest")

PGBOUNCER_MODE = Param("mode", "graceful: PAUSE (bounded), RECONNECT, RESUME; hard: KILL and RESUME.",
                       rules.pgbouncer_mode, default="graceful", choices=lambda: list(rules.PGBOUNCER_MODES))
PAUSE_TIMEOUT = Param("timeout", "graceful: the longest the PAUSE may wait, in seconds (1..600).", rules.pause_timeout,
                      default=30)
DB_MODE_STATE = Param("state", "on: read-only (the default); off: read-write, the same as `read-write`.",
                      rules.db_mode_state, default="on", choices=lambda: list(rules.DB_MODE_STATES))
LEASE_FOR = Param("for", "How long read-only holds before the host reverts it (30m, 2h; 1m to the inventory's "
                  "mayday_lease_max, default 4h).", rules.lease_duration, default="30m",
                  applies=lambda p: p.get("state") == "on")
OLDER_THAN = Param("older_than", "Only queries running at least this long (30s, 5m, 1h).", rules.older_than,
                   default="5m")
MATCH_USER = Param("match_user", "Only sessions whose user matches this regular expression.", rules.match_regex)
MATCH_DB = Param("match_db", "Only sessions whose database matches this regular expression.", rules.match_regex)
MATCH_QUERY = Param("match_query", "Only sessions whose query matches this regular expression.", rules.match_regex)
MAX_VICTIMS = Param("max_victims", "Refuse (without --force) when more sessions than this would be cut.",
                    rules.max_victims, default=10)
GRACE = Param("grace", "Seconds between cancelling a query and terminating its session (0..300).",
              rules.grace_seconds, default=10)
KILL_FORCE = Param("force", "Cut more than --max-victims (or over half of all client sessions).", rules.flag,
                   default=False, is_flag=True)
CORRUPTION_RESTORE = Param("restore", "After the assessment, restore the last verified backup and go back to "
                           "read-write (without it: stop read-only under the lease, evidence in the report).",
                           rules.flag, default=False, is_flag=True)
CORRUPTION_BACKUP = Param("backup", "--restore: backup id to restore, or latest.", rules.backup_id, default="latest")
CORRUPTION_FOR = Param("for", "How long the databases stay read-only before the hosts revert it, when the run "
                       "stops after the assessment.", rules.lease_duration, default="30m")
REDIS_PATTERN = Param("pattern", "Redis keys to remove (SCAN + UNLINK in batches), a glob with a literal part.",
                      rules.redis_pattern)
FLUSH_ALL = Param("flush_all", "Empty the whole Redis database (FLUSHDB ASYNC) instead of a pattern.", rules.flag,
                  default=False, is_flag=True)
THRESHOLD_MS = Param("threshold_ms", "Health-endpoint latency over which the run says it did not recover.",
                     rules.latency_ms, default=2000)
ESCALATE = Param("escalate", "When latency stays over the threshold: none (say so) or level1 (run it).",
                 rules.escalation, default="none", choices=lambda: list(rules.ESCALATIONS))
LEASE_OP = Param("op", "extend or release.", rules.lease_op, required=True, choices=lambda: list(rules.LEASE_OPS))
LEASE_ID = Param("id", "The lease id (`mayday status` lists them).", rules.lease_id, required=True, positional=True)
LEASE_EXTEND_FOR = Param("for", "The lease now expires this long from now (30m, 2h; within the inventory's bounds).",
                         rules.lease_duration, required=True)
LEASE_PHASES = ("Open", "Pre-flight", "Lease", "Report")
LOCKDOWN_STEPS = ("isolate", "no_new_logins", "rate_limit", "db_restrict")
ISOLATE = Param("isolate", "Network isolation (nftables, IPv4 and IPv6): only the management allowlist and this "
                "controller reach the hosts; undone at the lease's end unless confirmed.", rules.flag, default=False,
                is_flag=True)
INTERNAL_ONLY = Param("internal_only", "With --isolate: the inventory's internal networks may reach the hosts too.",
                      rules.flag, default=False, is_flag=True)
NO_NEW_LOGINS = Param("no_new_logins", "No new SSH logins but the operator's and the break-glass group's; active "
                      "sessions stay (sshd -t before the reload).", rules.flag, default=False, is_flag=True)
RATE_LIMIT = Param("rate_limit", "An nginx rate limit on the web hosts (429 over the inventory's rate), proven by a "
                   "burst.", rules.flag, default=False, is_flag=True)
DB_RESTRICT = Param("db_restrict", "Databases read-only (proven by a write that fails) and their ports only "
                    "from the app hosts.", rules.flag, default=False,
                    is_flag=True)
LOCKDOWN_FOR = Param("for", "How long the lockdown holds before the hosts undo it, unless `lockdown confirm` "
                     "(30m, 2h; within the inventory's bounds).", rules.lease_duration, default="30m")
SKIP_EVIDENCE = Param("skip_evidence", "Contain without capturing evidence first (needs --reason).", rules.flag,
                      default=False, is_flag=True)
SKIP_REASON = Param("reason", "Why evidence is skipped; written in the report.", rules.reason_text, required=True,
                    applies=lambda p: bool(p.get("skip_evidence")))
ACCOUNT_USER = Param("user", "The compromised account (OS user, or the app's user when it is one).",
                     rules.account_name, required=True, positional=True)
ACCOUNT_RESTORE = Param("restore", "Put back exactly what an earlier `security account` changed.", rules.flag,
                        default=False, is_flag=True)
ROTATE_ONLY = Param("only", "Only these credentials (comma separated).", rules.rotate_targets,
                    default=list(rules.ROTATE_TARGETS), choices=lambda: list(rules.ROTATE_TARGETS))
LOCKDOWN_OP = Param("op", "start, confirm or lift.", rules.lockdown_op, default="start",
                    choices=lambda: list(rules.LOCKDOWN_OPS))
LOCKDOWN_PHASES = ("Open", "Pre-flight", "Evidence", "Contain", "Verify", "Report")


def lockdown_steps_chosen(params: dict[str, Any]) -> list[str]:
    problems = []
    if not any(params.get(step) for step in LOCKDOWN_STEPS):
        problems.append("no containment step chosen; valid: one or more of "
                        + ", ".join("--" + step.replace("_", "-") for step in LOCKDOWN_STEPS))
    if params.get("internal_only") and not params.get("isolate"):
        problems.append("--internal-only only widens --isolate; valid: --isolate --internal-only")
    return problems


DB_PHASES = ("Open", "Pre-flight", "Switch", "Verify", "Report")

ROLLBACK_PHASES = ("Open", "Pre-flight", "Rollback", "Verify", "Notify", "Report")

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("level1", "rollback-level1.yml",
             "Level 1, production down: roll every web host back, restart services, verify, notify.",
             "Production down, full rollback to the previous release", 1, ROLLBACK_PHASES, [RELEASE, FORCE]),
    Scenario("level2", "rollback-level2.yml", "Level 2, partial failure: roll one component back.",
             "Partial failure, {component} rolled back", 2, ROLLBACK_PHASES, [COMPONENT, LEVEL2_BACKUP, MINUTES]),
    Scenario("restore", "db-restore.yml", "Restore the database from a verified backup (interruption-safe).",
             "Partial failure, database rolled back", 2, ROLLBACK_PHASES, [BACKUP],
             fixed={"component": "database"}),
    Scenario("backup", "db-backup.yml",
             "Back up every database host's database, with a manifest, then apply retention.",
             "Database backup", 4, ("Open", "Pre-flight", "Backup", "Report"), [], success="DONE",
             takes_lock=False),
    Scenario("pgbouncer-reset", "pgbouncer-reset.yml",
             "Reset pgbouncer's pool: graceful (PAUSE, RECONNECT, RESUME) or hard (KILL, RESUME).",
             "pgbouncer reset ({mode})", 2, ("Open", "Pre-flight", "Reset", "Verify", "Report"),
             [PGBOUNCER_MODE, PAUSE_TIMEOUT], group="db"),
    Scenario("read-only", "db-read-only.yml",
             "Switch the databases read-only under a lease the hosts revert at expiry; proven by a write that fails.",
             "Databases read-only for {for}", 2, DB_PHASES, [DB_MODE_STATE, LEASE_FOR], group="db"),
    Scenario("read-write", "db-read-only.yml",
             "Switch the databases back to read-write and release their lease; proven by a write that goes through.",
             "Databases back to read-write", 2, DB_PHASES, [], fixed={"state": "off"}, group="db"),
    Scenario("lease-extend", "lease.yml", "Extend a lease: the host now reverts its change this long from now.",
             "Lease {id} extended by {for}", 3, LEASE_PHASES, [LEASE_OP, LEASE_ID, LEASE_EXTEND_FOR], success="DONE",
             fixed={"op": "extend"}, group="lease", command="extend"),
    Scenario("lease-release", "lease.yml", "Release a lease now: the host reverts its change and forgets the lease.",
             "Lease {id} released", 3, LEASE_PHASES, [LEASE_OP, LEASE_ID], success="DONE", fixed={"op": "release"},
             group="lease", command="release"),
    Scenario("lockdown", "security-lockdown.yml",
             "Security lockdown: evidence first, then the chosen containment steps under a lease, each proven. "
             "`lockdown confirm` keeps it until `lockdown lift`.",
             "Security lockdown", 1, LOCKDOWN_PHASES,
             [LOCKDOWN_OP, ISOLATE, INTERNAL_ONLY, NO_NEW_LOGINS, RATE_LIMIT, DB_RESTRICT, LOCKDOWN_FOR, SKIP_EVIDENCE,
              SKIP_REASON],
             success="DONE", fixed={"op": "start"}, group="lockdown", cross_check=lockdown_steps_chosen,
             channel="security"),
    Scenario("lockdown-confirm", "security-lockdown.yml",
             "Keep the active lockdown until `lockdown lift`: its leases end without undoing it, the isolation "
             "survives a restart.", "Security lockdown confirmed", 1, ("Open", "Pre-flight", "Confirm", "Report"),
             [LOCKDOWN_OP], success="DONE", fixed={"op": "confirm"}, group="lockdown", command="confirm",
             channel="security"),
    Scenario("lockdown-lift", "security-lockdown.yml",
             "Undo the active lockdown on every host and prove each host is back to its state before it.",
             "Security lockdown lifted", 1, ("Open", "Pre-flight", "Lift", "Verify", "Report"), [LOCKDOWN_OP],
             success="DONE", fixed={"op": "lift"}, group="lockdown", command="lift", channel="security"),
    Scenario("security-account", "security-account.yml",
             "Compromised account: lock it, end its sessions, move its keys aside, revoke its app sessions and tokens, "
             "then its evidence; --restore puts back exactly what was changed.",
             "Compromised account {user}", 1, ("Open", "Pre-flight", "Evidence", "Contain", "Verify", "Report"),
             [ACCOUNT_USER, ACCOUNT_RESTORE], success="DONE", group="security", command="account",
             channel="security"),
    Scenario("rotate", "rotate-credentials.yml",
             "Rotate credentials (MariaDB, PostgreSQL, pgbouncer, the app's configuration) in the order that keeps "
             "the app up; proven: old rejected, new accepted, app healthy.",
             "Credential rotation", 1, ("Open", "Pre-flight", "Rotate", "Verify", "Report"), [ROTATE_ONLY],
             success="DONE", group="security", command="rotate", channel="security"),
    Scenario("kill-long", "db-kill-long-queries.yml",
             "Cancel, then terminate, client queries running too long (never replication, workers, mayday, "
             "allowlisted roles).",
             "Long queries cut (older than {older_than})", 2, ("Open", "Pre-flight", "Kill", "Verify", "Report"),
             [OLDER_THAN, MATCH_USER, MATCH_DB, MATCH_QUERY, MAX_VICTIMS, GRACE, KILL_FORCE], group="db"),
    Scenario("corruption", "data-corruption.yml",
             "Data corruption: read-only, emergency backup, integrity check; with --restore the verified restore, "
             "a consistency check and read-write.",
             "Data corruption", 1, ("Open", "Pre-flight", "Freeze", "Backup", "Assess", "Restore", "Verify", "Report"),
             [CORRUPTION_RESTORE, CORRUPTION_BACKUP, CORRUPTION_FOR], group="db"),
    Scenario("performance", "performance-recovery.yml",
             "Performance degradation: measure, flush caches (opcache, app cache, Redis by pattern), reload "
             "php-fpm, measure again; escalate to Level 1 if asked.",
             "Performance degradation", 2, ("Open", "Pre-flight", "Measure", "Flush", "Verify", "Report"),
             [REDIS_PATTERN, FLUSH_ALL, THRESHOLD_MS, ESCALATE]),
)}


def by_playbook(playbook: str) -> Scenario | None:
    return next((s for s in SCENARIOS.values() if s.playbook == playbook), None)
