"""Input rules: one definition of every id pattern and parameter check.

The CLI checks its options with these before a run; the scenario skeleton checks the playbook's
extra vars with the same functions before any host is touched, so plain ansible-playbook and AWX
get the same refusals and messages as the CLI.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mayday.paths import PACKAGE_DIR

RELEASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
BACKUP_ID = re.compile(r"^(latest|[A-Za-z0-9][A-Za-z0-9._-]{0,127})$")
MINUTES_RANGE = (1, 7 * 24 * 60)
TRUE_WORDS = {"true", "yes", "on", "1"}
FALSE_WORDS = {"false", "no", "off", "0", ""}


class BadValue(ValueError):
    """An input that breaks its rule; the message names what would be valid."""


def release_id(value: Any) -> str:
    text = str(value)
    if not RELEASE_ID.match(text):
        raise BadValue(f"release {text!r} is not a release id; valid: letters, digits, '.', '_', '-', "
                       "starting with a letter or digit, at most 128 characters")
    return text


def backup_id(value: Any) -> str:
    text = str(value)
    if not BACKUP_ID.match(text):
        raise BadValue(f"backup {text!r} is not a backup id; valid: latest or an id from `mayday backups`")
    return text


def minutes(value: Any) -> int:
    low, high = MINUTES_RANGE
    if isinstance(value, bool) or not re.fullmatch(r"\s*\d+\s*", str(value)):
        raise BadValue(f"minutes {value!r} is not a whole number; valid: {low}..{high}")
    number = int(str(value))
    if not low <= number <= high:
        raise BadValue(f"minutes {number} is out of range; valid: {low}..{high} (up to 7 days)")
    return number


def flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise BadValue(f"{value!r} is not true or false")


def level2_dir() -> Path:
    """Level 2 components are files: playbooks/level2/<component>.yml."""
    from mayday.paths import project_root

    try:
        return project_root() / "playbooks" / "level2"
    except FileNotFoundError:
        return PACKAGE_DIR.parent.parent / "playbooks" / "level2"


def level2_components() -> list[str]:
    return sorted(p.stem for p in level2_dir().glob("*.yml"))


HOSTS_HEADER = re.compile(r"^#\s*hosts:\s*(\S+)\s*$", re.MULTILINE)


def level2_hosts(component: str) -> str:
    """The host pattern a component acts on, from its file's `# hosts: <pattern>` line."""
    path = level2_dir() / f"{component}.yml"
    if component not in level2_components():
        return "all"  # the skeleton refuses the unknown component before touching any host
    found = HOSTS_HEADER.search(path.read_text())
    return found.group(1) if found else "all"


def component(value: Any) -> str:
    text = str(value or "")
    valid = level2_components()
    if text not in valid:
        what = "no component given" if not text else f"unknown component {text!r}"
        raise BadValue(f"{what}; valid: {', '.join(valid)}")
    return text


# Leases (read-only, later lockdown): a duration with a unit. The inventory's own bounds
# (mayday_lease_min, default 1m; mayday_lease_max, default 4h) are enforced on each host before
# anything changes (plugins/module_utils/mayday_lease.py check_bounds); this rule is the ceiling.
DURATION_PART = re.compile(r"(\d+)([smhd])")
DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
LEASE_CEILING_S = 7 * 86400
PGBOUNCER_MODES = ("graceful", "hard")
PAUSE_TIMEOUT_RANGE = (1, 600)
DB_MODE_STATES = ("on", "off")


def duration_seconds(value: Any) -> int:
    """'30m', '2h', '1h30m', '45s', '1d' -> seconds; anything else, zero or over 7 days is refused."""
    text = "" if isinstance(value, bool) else str(value).strip().lower()
    pos, total = 0, 0
    for found in DURATION_PART.finditer(text):
        if found.start() != pos:
            break
        total += int(found.group(1)) * DURATION_UNITS[found.group(2)]
        pos = found.end()
    valid = "valid: a number with a unit s, m, h or d, such as 30m, 2h, 1h30m (1m to the inventory's mayday_lease_max)"
    if not text or pos != len(text):
        raise BadValue(f"duration {value!r} does not parse; {valid}")
    if total <= 0:
        raise BadValue(f"duration {value!r} is zero; {valid}")
    if total > LEASE_CEILING_S:
        raise BadValue(f"duration {value!r} is longer than 7d; {valid}")
    return total


def format_duration(seconds: int) -> str:
    """The shortest form duration_seconds reads back (5400 -> '1h30m')."""
    left, parts = int(seconds), []
    for unit, size in DURATION_UNITS.items():
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def lease_duration(value: Any) -> str:
    """The `for` of a lease, in its canonical form (it passes this rule again unchanged)."""
    return format_duration(duration_seconds(value))


def pgbouncer_mode(value: Any) -> str:
    text = str(value or "").strip().lower()
    if text not in PGBOUNCER_MODES:
        raise BadValue(f"mode {value!r} is not a reset mode; valid: {', '.join(PGBOUNCER_MODES)}")
    return text


def pause_timeout(value: Any) -> int:
    low, high = PAUSE_TIMEOUT_RANGE
    if isinstance(value, bool) or not re.fullmatch(r"\s*\d+\s*", str(value)):
        raise BadValue(f"timeout {value!r} is not a whole number of seconds; valid: {low}..{high}")
    number = int(str(value))
    if not low <= number <= high:
        raise BadValue(f"timeout {number} is out of range; valid: {low}..{high} seconds")
    return number


def db_mode_state(value: Any) -> str:
    """on (read-only) or off (read-write); YAML's booleans for those words are accepted."""
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value or "").strip().lower()
    if text not in DB_MODE_STATES:
        raise BadValue(f"state {value!r} is not a database mode; valid: {', '.join(DB_MODE_STATES)}")
    return text


LEASE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
INCIDENT_ID = re.compile(r"^INC-\d{8}-\d{6}(-\d{1,2})?$")


def _id_matching(value: Any, pattern: re.Pattern[str], problem: str) -> str:
    """The stripped text when it matches; else BadValue with `problem` ({!r} is the text)."""
    text = str(value or "").strip()
    if not pattern.match(text):
        raise BadValue(problem.format(text))
    return text


def lease_id(value: Any) -> str:
    return _id_matching(value, LEASE_ID, "lease {!r} is not a lease id; valid: an id listed by `mayday status` "
                                         "(lower-case letters, digits, '-')")


def incident_id(value: Any) -> str:
    return _id_matching(value, INCIDENT_ID, "{!r} is not an incident id; valid: INC-YYYYMMDD-HHMMSS, as a lock "
                                            "refusal or `mayday status` names it")


REASON_MAX = 500


def reason_text(value: Any) -> str:
    """Why a safety step is skipped, for the report: one line of plain text."""
    text = " ".join(str(value or "").split())
    if not text:
        raise BadValue("no reason given; valid: a sentence saying why, e.g. --reason 'disk full, evidence by hand'")
    if len(text) > REASON_MAX or not text.isprintable():
        raise BadValue(f"reason is over {REASON_MAX} characters or not plain text; valid: one short sentence")
    return text


ACCOUNT_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
ROTATE_TARGETS = ("mariadb", "postgresql", "pgbouncer", "app")


def account_name(value: Any) -> str:
    """An OS or application account name (POSIX-portable, as useradd takes it)."""
    text = str(value or "").strip()
    if not ACCOUNT_NAME.match(text):
        raise BadValue(f"account {text!r} is not an account name; valid: lower-case letters, digits, '_', '.', '-', "
                       "starting with a letter or '_', at most 32 characters")
    return text


def rotate_targets(value: Any) -> list[str]:
    """--only mariadb,postgresql: a subset of the rotation targets, in the order that keeps the app up."""
    given = value if isinstance(value, list) else [v for v in re.split(r"[,\s]+", str(value or "")) if v]
    unknown = [v for v in given if v not in ROTATE_TARGETS]
    if unknown or not given:
        raise BadValue(f"--only {','.join(unknown) or '(empty)'}: not a credential mayday rotates; "
                       f"valid: {', '.join(ROTATE_TARGETS)} (comma separated)")
    return [t for t in ROTATE_TARGETS if t in given]


LOCKDOWN_OPS = ("start", "confirm", "lift")


def lockdown_op(value: Any) -> str:
    text = str(value or "start").strip().lower()
    if text not in LOCKDOWN_OPS:
        raise BadValue(f"op {value!r} is not a lockdown operation; valid: {', '.join(LOCKDOWN_OPS)}")
    return text


LEASE_OPS = ("extend", "release")


def lease_op(value: Any) -> str:
    text = str(value or "").strip().lower()
    if text not in LEASE_OPS:
        raise BadValue(f"op {value!r} is not a lease operation; valid: {', '.join(LEASE_OPS)}")
    return text


# Long queries (kill-long): who may be cut and how many at once.
OLDER_THAN_RANGE_S = (1, 7 * 86400)
MAX_VICTIMS_RANGE = (1, 10000)
GRACE_RANGE_S = (0, 300)
MATCH_MAX_LEN = 200


def older_than(value: Any) -> str:
    """How long a query must have run to be a victim: 30s, 5m, 1h (1s .. 7d), canonical form."""
    text = "" if isinstance(value, bool) else str(value).strip().lower()
    if re.fullmatch(r"\d+", text):
        raise BadValue(f"older-than {value!r} has no unit; valid: a number with a unit s, m, h or d, such as 30s, 5m")
    try:
        return format_duration(duration_seconds(value))
    except BadValue as exc:
        raise BadValue(str(exc).replace("duration", "older-than", 1)
                       .replace(" (1m to the inventory's mayday_lease_max)", " (1s to 7d)")) from None


def match_regex(value: Any) -> str:
    """A Python regular expression (searched, case-sensitive) on a session's user, database or query."""
    text = str(value)
    if not text or len(text) > MATCH_MAX_LEN:
        raise BadValue(f"pattern {text[:40]!r} must be 1..{MATCH_MAX_LEN} characters; valid: a regular expression")
    try:
        re.compile(text)
    except re.error as exc:
        raise BadValue(f"pattern {text!r} is not a regular expression ({exc}); "
                       "valid: e.g. '^report_', 'SELECT .* FROM big'") from None
    return text


def _whole_number(name: str, value: Any, low: int, high: int, unit: str = "") -> int:
    if isinstance(value, bool) or not re.fullmatch(r"\s*\d+\s*", str(value)):
        raise BadValue(f"{name} {value!r} is not a whole number; valid: {low}..{high}{unit}")
    number = int(str(value))
    if not low <= number <= high:
        raise BadValue(f"{name} {number} is out of range; valid: {low}..{high}{unit}")
    return number


def max_victims(value: Any) -> int:
    return _whole_number("max-victims", value, *MAX_VICTIMS_RANGE)


def grace_seconds(value: Any) -> int:
    return _whole_number("grace", value, *GRACE_RANGE_S, " seconds")


# Performance recovery: Redis keys are flushed by a glob pattern, never one that matches every key.
REDIS_GLOB_SPECIAL = set("*?[]\\^-")
LATENCY_RANGE_MS = (10, 60000)
ESCALATIONS = ("none", "level1")


def redis_pattern(value: Any) -> str:
    """A Redis glob (SCAN MATCH) with at least one literal character, so it cannot match every key."""
    text = str(value or "").strip()
    valid = "valid: a Redis glob with a literal part, such as 'profile:*' or 'cache:*:html'"
    if not text:
        raise BadValue(f"no Redis key pattern given; {valid}")
    if len(text) > MATCH_MAX_LEN or any(ch.isspace() or not ch.isprintable() for ch in text):
        raise BadValue(f"pattern {text[:40]!r} has spaces or is over {MATCH_MAX_LEN} characters; {valid}")
    literal = re.sub(r"\[[^\]]*\]", "", text.replace("\\", ""))
    if not any(ch not in REDIS_GLOB_SPECIAL for ch in literal):
        raise BadValue(f"pattern {text!r} would match every key; {valid} (--flush-all empties the cache on purpose)")
    return text


def latency_ms(value: Any) -> int:
    return _whole_number("threshold-ms", value, *LATENCY_RANGE_MS, " milliseconds")


def escalation(value: Any) -> str:
    text = str(value or "").strip().lower()
    if text not in ESCALATIONS:
        raise BadValue(f"escalate {value!r} is not an escalation; valid: {', '.join(ESCALATIONS)}")
    return text


@dataclass(frozen=True)
class Param:
    """One input of a scenario: a CLI option and the playbook's extra var of the same name."""

    name: str
    help: str
    check: Callable[[Any], Any]
    default: Any = None
    required: bool = False
    is_flag: bool = False
    # Only checked when this says it applies (minutes only for the webhook component).
    applies: Callable[[dict[str, Any]], bool] = field(default=lambda params: True)
    choices: Callable[[], list[str]] | None = None
    # A CLI argument rather than an option (`mayday lease release ID`).
    positional: bool = False


def check_params(params: list[Param], given: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Returns (clean values with defaults, problems), in declaration order.

    A parameter that does not apply to what came before it (minutes, unless the component is
    webhook) is neither checked nor passed on.
    """
    clean: dict[str, Any] = {}
    problems: list[str] = []
    for param in params:
        if not param.applies(clean):
            continue
        value = given.get(param.name)
        if (value is None or value == "") and not param.required:
            clean[param.name] = param.default
            continue
        try:
            clean[param.name] = param.check(value)
        except BadValue as exc:
            problems.append(str(exc))
            if param.required:
                break  # what follows depends on it
    return clean, problems
