# Long queries: who is a victim, whether cutting them is allowed, how each is recorded.
# Pure logic, no database access and no AnsibleModule: shipped to the host as
# ansible.module_utils.mayday_kill_long, and unit-tested directly (tests/unit/test_kill_long.py).
from __future__ import annotations

import re
from dataclasses import dataclass, field

# Over half of the server's client sessions is a share no single runaway explains: --force.
MAX_SHARE = 0.5
# One or two sessions are never "a share" (a runaway or two on a quiet server is the usual case).
SHARE_FLOOR = 2
QUERY_CHARS = 200
# Secrets a query may carry; the victim record keeps the query, never these.
SECRETS = re.compile(r"""(?ix)
    ( \b(?:password|identified\s+by(?:\s+password)?|(?:un)?encrypted\s+password)\s*(?:=\s*)?(?:\(\s*)? )
    ( '(?:[^']|'')*' | "(?:[^"]|"")*" | \$\$.*?\$\$ )""")


@dataclass
class Seen:
    """One client session as the engine lists it."""

    key: str  # identity across the run: pid and backend start (PostgreSQL), connection id (MariaDB)
    pid: int
    user: str
    database: str
    client: str
    state: str  # PostgreSQL: active, idle, idle in transaction...; MariaDB: COMMAND (Query, Sleep...)
    running: bool  # a statement is running now
    seconds: float  # how long the current statement has run (0 when none runs)
    started: float  # epoch when the current statement started (identity of the statement)
    query: str = ""
    extra: dict = field(default_factory=dict)


def redact(text):
    """The query with quoted secrets (PASSWORD '...', IDENTIFIED BY '...') replaced by '***'."""
    return SECRETS.sub(lambda m: m.group(1) + "'***'", text or "")


def cut(text, length=QUERY_CHARS):
    """One line, secrets hidden, at most `length` characters (an ellipsis says it was cut)."""
    flat = " ".join(redact(text).split())
    return flat if len(flat) <= length else flat[:max(0, length - 1)] + "\u2026"


def compile_filters(match_user=None, match_db=None, match_query=None):
    filters = {}
    for name, pattern in (("user", match_user), ("database", match_db), ("query", match_query)):
        if pattern:
            try:
                filters[name] = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"match_{name if name != 'database' else 'db'} {pattern!r} is not a regular "
                                 f"expression ({exc})") from None
    return filters


def pick(sessions, threshold_s, allowlist=(), filters=None):
    """(victims, kept): running statements at least `threshold_s` old that match every filter (searched,
    case-sensitive); those of allowlisted users are kept, with the reason."""
    filters = filters or {}
    allowed = set(allowlist or ())
    victims, kept = [], []
    for seen in sessions:
        if not seen.running or seen.seconds < threshold_s:
            continue
        values = {"user": seen.user, "database": seen.database, "query": seen.query}
        if not all(regex.search(values[name] or "") for name, regex in filters.items()):
            continue
        if seen.user in allowed:
            kept.append((seen, f"user {seen.user} is on the allowlist"))
        else:
            victims.append(seen)
    victims.sort(key=lambda s: -s.seconds)
    return victims, kept


def refusal(victims, clients, max_victims, force=False, max_share=MAX_SHARE):
    """Why cutting `victims` of the server's `clients` client sessions needs --force; '' when it does not."""
    if force:
        return ""
    if victims > max_victims:
        return (f"{victims} sessions would be cut, more than --max-victims {max_victims}; "
                "narrow the match (--older-than, --match-user/--match-db/--match-query) or add --force")
    if victims > SHARE_FLOOR and clients and victims > max_share * clients:
        return (f"{victims} of the {clients} client sessions would be cut, over {max_share:.0%} of them; "
                "narrow the match or add --force")
    return ""


def record(seen, query_chars=QUERY_CHARS):
    """A victim (or a kept session) as the incident records it."""
    return {"pid": seen.pid, "user": seen.user, "database": seen.database, "client": seen.client or "local",
            "duration_s": round(seen.seconds, 1), "query": cut(seen.query, query_chars)}


def still_running(seen, now):
    """Whether `now` (the same session listed again, or None: gone) still runs the statement seen."""
    return now is not None and now.running and abs(now.started - seen.started) < 0.5


def counts(sessions):
    """Connections as the report shows them: client sessions, and how many run a statement."""
    return {"client_sessions": len(sessions), "running": sum(1 for s in sessions if s.running)}


def describe(victims, limit=5):
    """'4242 app@app 12.0s, ...' for a refusal or a dry run."""
    text = ", ".join(f"{v.pid} {v.user}@{v.database or '-'} {v.seconds:.0f}s" for v in victims[:limit])
    return text + (f" and {len(victims) - limit} more" if len(victims) > limit else "")
