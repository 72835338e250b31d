"""Drill files (drills/*.yml): loaded, checked field by field, turned into a plan.

Every problem names the file, the field and the valid choices, so `mayday drill check` and the
playbook refuse a bad drill before any host is touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mayday import rules
from mayday.errors import BadInput
from mayday.paths import project_root
from mayday.scenarios import SCENARIOS

# What an inventory must be declared (mayday_environment) for a drill to run or be scheduled on it.
ALLOWED_ENVIRONMENTS = ("lab", "staging")
# The fault library (plugins/module_utils/mayday_fault.py FAULTS) and each fault's required params.
FAULTS: dict[str, tuple[str, ...]] = {
    "broken_release": (),
    "stop_service": ("service",),
    "kill_service": ("service",),
    "break_file": ("path",),
    "fill_disk": ("path", "level_pct"),
    "hold_long_query": ("engine", "database", "user"),
    "block_port": ("port",),
    "insert_rows": ("engine", "database", "table", "tag_column"),
    "drop_rows": ("engine", "database", "table"),
    "corrupt_rows": ("engine", "database", "table", "set"),
    "saturate_connections": ("engine", "database", "user"),
    "bad_migration": ("engine", "database", "table", "migration"),
}
# Faults on the controller (mayday.drills.channel_fault), for communication drills: what they
# change lives in the drill's own process, so nothing is left for a lease to undo.
CONTROLLER_FAULTS: dict[str, tuple[str, ...]] = {"fail_channel": ("channel",)}
# Row faults: at most this many rows saved and put back (mayday_fault.MAX_ROWS); sessions held at most.
MAX_FAULT_ROWS = 100000
MAX_FAULT_SESSIONS = 1000
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# One ALTER TABLE on the drill's table (the host checks the same: mayday_fault.check_migration).
MIGRATION = re.compile(r"^ALTER TABLE ([A-Za-z_][A-Za-z0-9_]{0,62}) [A-Za-z0-9_ ,().'=:+-]{1,300}$", re.IGNORECASE)
RENAMES_TABLE = re.compile(r"\bRENAME\s+(?!COLUMN\b|INDEX\b|KEY\b|CONSTRAINT\b)", re.IGNORECASE)
CORRUPT_VALUE = re.compile(r"^[A-Za-z0-9 _.:,{}\"/@+=-]{0,200}$")
KINDS = ("fault", "response", "restore_test", "communication")
RECOVERY_BY = ("scenario", "alert")
PROBE_KINDS = ("http", "sql", "service", "backup", "alerts_quiet")
SQL_ENGINES = ("postgresql", "mariadb")
BACKUP_DIR = "/var/backups/mayday"  # where `mayday backup` writes its dumps and manifests on a database host
TOP_FIELDS = {"description", "seed", "kind", "steady_state", "fault", "recovery", "cleanup", "sla", "lease",
              "probe_interval", "hosts", "notify"}
SLA_FIELDS = ("detect", "recover", "rpo", "restore")
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Inventory variables a fault may take secrets from (never written to the journal).
SECRET_VARS = {"password_var"}


@dataclass
class Probe:
    name: str
    hosts: str
    kind: str
    spec: Any

    def check(self) -> dict[str, Any]:
        return {"name": self.name, self.kind: self.spec}


@dataclass
class Drill:
    name: str
    path: Path
    kind: str
    description: str
    steady_state: list[Probe]
    fault: dict[str, Any] = field(default_factory=dict)
    recovery: dict[str, Any] = field(default_factory=dict)
    cleanup: dict[str, Any] = field(default_factory=dict)
    sla: dict[str, int] = field(default_factory=dict)  # seconds
    lease_s: int = 600
    probe_interval_s: float = 1.0
    hosts: str = "all"
    notify: dict[str, Any] = field(default_factory=dict)
    seed: str = ""

    def plan(self) -> dict[str, Any]:
        """What the playbook needs, as plain data (the playbook never reads the YAML itself)."""
        by_hosts: dict[str, list[dict[str, Any]]] = {}
        for probe in self.steady_state:
            if probe.kind != "alerts_quiet":
                by_hosts.setdefault(probe.hosts, []).append(probe.check())
        return {"name": self.name, "kind": self.kind, "description": self.description,
                "probes": [{"hosts": h, "checks": c} for h, c in by_hosts.items()],
                "alerts_quiet": [p.spec for p in self.steady_state if p.kind == "alerts_quiet"],
                "fault": self.fault, "recovery": self.recovery, "cleanup": self.cleanup, "sla": self.sla,
                "lease": rules.format_duration(self.lease_s), "lease_s": self.lease_s,
                "probe_interval_s": self.probe_interval_s, "hosts": self.hosts, "notify": self.notify,
                "seed": self.seed}


def drills_dir() -> Path:
    return project_root() / "drills"


def known() -> list[str]:
    return sorted(p.stem for p in drills_dir().glob("*.yml"))


def resolve(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yml", ".yaml") and path.is_file():
        return path
    candidate = drills_dir() / f"{name_or_path}.yml"
    if NAME.match(name_or_path) and candidate.is_file():
        return candidate
    raise BadInput(f"drill {name_or_path!r} not found; valid: a drill file, or one of {', '.join(known())}")


def seconds(value: Any, where: str, problems: list[str]) -> int:
    try:
        return rules.duration_seconds(value)
    except rules.BadValue:
        problems.append(f"{where}: {value!r} is not a duration; valid: a number with a unit s, m, h or d (30s, 15m)")
        return 0


def _probe(raw: Any, where: str, problems: list[str], default_hosts: str) -> Probe | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a mapping with name, hosts and one of {', '.join(PROBE_KINDS)}")
        return None
    kinds = [k for k in PROBE_KINDS if k in raw]
    unknown = set(raw) - set(PROBE_KINDS) - {"name", "hosts"}
    if unknown:
        problems.append(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; valid: name, hosts, "
                        + ", ".join(PROBE_KINDS))
    if len(kinds) != 1:
        problems.append(f"{where}: needs exactly one probe kind; valid: {', '.join(PROBE_KINDS)}")
        return None
    kind, spec = kinds[0], raw[kinds[0]]
    name = str(raw.get("name") or f"{kind}-{where.rsplit('[', 1)[-1].rstrip(']')}")
    if kind == "http" and not (isinstance(spec, dict) and str(spec.get("url", "")).startswith(("http://", "https://"))):
        problems.append(f"{where}.http.url: required, an http:// or https:// URL (fetched on the host)")
    if kind == "sql":
        if not isinstance(spec, dict) or not spec.get("query"):
            problems.append(f"{where}.sql.query: required (run on the host as the engine's superuser)")
        elif spec.get("engine", "postgresql") not in SQL_ENGINES:
            problems.append(f"{where}.sql.engine: {spec.get('engine')!r} unknown; valid: {', '.join(SQL_ENGINES)}")
    if kind == "service" and not (isinstance(spec, dict) and spec.get("name")):
        problems.append(f"{where}.service.name: required (a systemd unit)")
    if kind == "alerts_quiet" and not (isinstance(spec, list) and all(isinstance(a, str) for a in spec)):
        problems.append(f"{where}.alerts_quiet: a list of alert names that must not be firing")
    if kind == "backup":  # a recovery that restores needs a backup to restore: refused before the fault
        if not (isinstance(spec, dict) and "max_age" in spec):
            problems.append(f"{where}.backup.max_age: required (the newest backup's oldest allowed age, e.g. 26h)")
            return None
        directory = str(spec.get("dir", BACKUP_DIR))
        if not directory.startswith("/") or set(spec) - {"dir", "max_age"}:
            problems.append(f"{where}.backup: valid fields dir (an absolute path, default {BACKUP_DIR}) and max_age")
        spec = {"dir": directory, "max_age_s": seconds(spec["max_age"], f"{where}.backup.max_age", problems)}
    return Probe(name, str(raw.get("hosts") or default_hosts), kind, spec)


def _recovery(raw: Any, problems: list[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        problems.append(f"recovery: required for a fault drill; valid: by: {' | '.join(RECOVERY_BY)}, scenario, params")
        return {}
    by = raw.get("by", "scenario")
    if by not in RECOVERY_BY:
        problems.append(f"recovery.by: {by!r} unknown; valid: {', '.join(RECOVERY_BY)}")
    alerts = raw.get("alerts")
    if by == "alert" and not (isinstance(alerts, list) and alerts and all(isinstance(a, str) and a for a in alerts)):
        problems.append("recovery.alerts: required with by: alert; the alert names (monitoring/rules) whose "
                        "firing for a fault host is the detection, for example [HealthCheckFailing]")
    if by != "alert" and alerts is not None:
        problems.append("recovery.alerts: only with by: alert")
    unknown = set(raw) - {"by", "scenario", "params", "alerts"}
    if unknown:
        problems.append(f"recovery: unknown field(s) {', '.join(sorted(unknown))}; valid: by, scenario, params, alerts")
    call = {"by": by, **_scenario_call(raw, "recovery", problems, required=True)}
    if by == "alert" and isinstance(alerts, list):
        call["alerts"] = [str(a) for a in alerts]
    return call


def _scenario_call(raw: dict[str, Any], where: str, problems: list[str], required: bool) -> dict[str, Any]:
    name = raw.get("scenario")
    if name is None and not required:
        return {}
    if name not in SCENARIOS:
        problems.append(f"{where}.scenario: {name!r} unknown; valid: {', '.join(sorted(SCENARIOS))}")
        return {}
    scenario = SCENARIOS[name]
    given = raw.get("params") or {}
    if not isinstance(given, dict):
        problems.append(f"{where}.params: must be a mapping of the scenario's inputs")
        return {}
    valid = {p.name for p in scenario.params}
    unknown = set(given) - valid
    if unknown:
        problems.append(f"{where}.params: {', '.join(sorted(unknown))} not an input of {name}; valid: "
                        + (", ".join(sorted(valid)) or "none"))
    clean, found = scenario.check(given)
    problems += [f"{where}.params: {p}" for p in found]
    return {"scenario": name, "params": {k: v for k, v in given.items() if k in valid},
            "checked": {k: v for k, v in clean.items() if not isinstance(v, list)}}


def _fault(raw: Any, problems: list[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        problems.append("fault: required for a fault drill; valid: type, hosts, params")
        return {}
    kind = raw.get("type")
    if kind in CONTROLLER_FAULTS:
        problems.append(f"fault.type: {kind} is a communication drill's fault (kind: communication); valid here: "
                        + ", ".join(sorted(FAULTS)))
        return {}
    if kind not in FAULTS:
        problems.append(f"fault.type: {kind!r} unknown; valid: {', '.join(sorted(FAULTS))}")
        return {}
    params = raw.get("params") or {}
    if not isinstance(params, dict):
        problems.append("fault.params: must be a mapping")
        return {}
    missing = [p for p in FAULTS[kind] if p not in params]
    if missing:
        problems.append(f"fault.params: {kind} needs {', '.join(missing)}")
    if kind in ("hold_long_query", "insert_rows", "drop_rows", "corrupt_rows", "saturate_connections",
                "bad_migration") \
            and params.get("engine") not in SQL_ENGINES:
        problems.append(f"fault.params.engine: {params.get('engine')!r} unknown; valid: {', '.join(SQL_ENGINES)}")
    if kind == "fill_disk":
        try:
            if not 0 < float(params.get("level_pct", 0)) < 100:
                raise ValueError
        except (TypeError, ValueError):
            problems.append("fault.params.level_pct: a percentage between 0 and 100 (exclusive)")
    if kind == "block_port" and not (isinstance(params.get("port"), int) and 0 < params["port"] < 65536):
        problems.append("fault.params.port: a TCP port, 1..65535")
    if kind in ("drop_rows", "corrupt_rows"):
        problems += _rows_problems(params)
    if kind == "saturate_connections":
        problems += _sessions_problems(params)
    if kind == "bad_migration" and "migration" in params:
        found = MIGRATION.match(str(params["migration"]))
        if not found or found.group(1) != params.get("table") or "--" in str(params["migration"]):
            problems.append(f"fault.params.migration: {params['migration']!r}; valid: one ALTER TABLE "
                            f"{params.get('table')} ... (letters, digits, spaces and _ , ( ) . ' = : + -; no ';')")
        elif RENAMES_TABLE.search(str(params["migration"])):
            problems.append("fault.params.migration: renames the table (its removal could not find it); valid: "
                            "RENAME COLUMN, DROP COLUMN, ALTER COLUMN ... TYPE, ADD ...")
    if not raw.get("hosts"):
        problems.append("fault.hosts: required; the hosts or group the fault goes on")
    return {"type": kind, "hosts": str(raw.get("hosts", "")), "params": params}


def _channel_fault(raw: Any, problems: list[str]) -> dict[str, Any]:
    """A communication drill's fault: fail_channel, the channel(s) named made to fail for its message."""
    if not isinstance(raw, dict) or raw.get("type") not in CONTROLLER_FAULTS:
        problems.append(f"fault.type: {(raw or {}).get('type') if isinstance(raw, dict) else raw!r} unknown in a "
                        f"communication drill; valid: {', '.join(CONTROLLER_FAULTS)}")
        return {}
    params = raw.get("params") or {}
    names = params.get("channel") if isinstance(params, dict) else None
    names = [names] if isinstance(names, str) else names
    if not (isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)):
        problems.append("fault.params.channel: the name (or a list of names) of mayday_notify_channels entries "
                        "to make fail")
        return {}
    unknown = set(params) - {"channel"} | set(raw) - {"type", "params"}
    if unknown:
        problems.append(f"fault: unknown field(s) {', '.join(sorted(unknown))}; valid: type, params.channel")
    return {"type": raw["type"], "hosts": "", "params": {"channel": names}}


def _rows_problems(params: dict[str, Any]) -> list[str]:
    """drop_rows / corrupt_rows: plain identifiers, a bounded row count, corrupt values the host quotes."""
    problems = [f"fault.params.{name}: {params[name]!r} is not a plain identifier; valid: letters, digits and _"
                for name in ("table", "key") if name in params and not IDENTIFIER.match(str(params[name]))]
    rows = params.get("rows", 100)
    if rows != "all" and not (isinstance(rows, int) and not isinstance(rows, bool) and 1 <= rows <= MAX_FAULT_ROWS):
        problems.append(f"fault.params.rows: {rows!r}; valid: 1..{MAX_FAULT_ROWS} or all")
    values = params.get("set")
    if "set" in params and not (isinstance(values, dict) and values):
        problems.append("fault.params.set: a mapping of column to corrupt value ({disabled: true})")
    for column, value in (values or {}).items() if isinstance(values, dict) else ():
        if not IDENTIFIER.match(str(column)):
            problems.append(f"fault.params.set: column {column!r} is not a plain identifier")
        elif column == params.get("key", "id"):
            problems.append(f"fault.params.set: {column} is the key the rows are matched by; valid: another column")
        if not (value is None or isinstance(value, bool | int | float) or CORRUPT_VALUE.match(str(value))):
            problems.append(f"fault.params.set.{column}: {value!r}; valid: null, true/false, a number, or text of "
                            "letters, digits and {}\":,./@+=- (no quotes)")
    return problems


def _sessions_problems(params: dict[str, Any]) -> list[str]:
    """saturate_connections: how many sessions (auto: the free connections), bounded by max_sessions."""
    problems = []
    if not IDENTIFIER.match(str(params.get("user", ""))):
        problems.append(f"fault.params.user: {params.get('user')!r} is not a plain identifier")
    through = params.get("through", "server")
    if through not in ("server", "pgbouncer") or (through == "pgbouncer" and params.get("engine") != "postgresql"):
        problems.append(f"fault.params.through: {through!r}; valid: server, or pgbouncer with engine postgresql")
    cap = params.get("max_sessions", 100)
    if not (isinstance(cap, int) and not isinstance(cap, bool) and 1 <= cap <= MAX_FAULT_SESSIONS):
        problems.append(f"fault.params.max_sessions: {cap!r}; valid: 1..{MAX_FAULT_SESSIONS}")
        cap = MAX_FAULT_SESSIONS
    sessions = params.get("sessions", "auto")
    if sessions != "auto" and not (isinstance(sessions, int) and not isinstance(sessions, bool)
                                   and 1 <= sessions <= cap):
        problems.append(f"fault.params.sessions: {sessions!r}; valid: auto (the free connections) or 1..{cap} "
                        "(max_sessions)")
    return problems


def parse(doc: Any, path: Path) -> Drill:
    """A Drill, or BadInput listing every problem as `file: field: what is wrong; valid: ...`."""
    problems: list[str] = []
    if not isinstance(doc, dict):
        raise BadInput(f"{path}: a drill file is a mapping; valid fields: {', '.join(sorted(TOP_FIELDS))}")
    unknown = set(doc) - TOP_FIELDS
    if unknown:
        problems.append(f"{', '.join(sorted(unknown))}: unknown field(s); valid: {', '.join(sorted(TOP_FIELDS))}")
    kind = doc.get("kind", "fault")
    if kind not in KINDS:
        problems.append(f"kind: {kind!r} unknown; valid: {', '.join(KINDS)}")
    hosts = str(doc.get("hosts", "all"))
    raw_probes = doc.get("steady_state") or []
    if not isinstance(raw_probes, list) or (kind in ("fault", "response") and not raw_probes):
        problems.append("steady_state: a non-empty list of probes (http, sql, service, backup, alerts_quiet)")
        raw_probes = []
    probes = [p for i, raw in enumerate(raw_probes) if (p := _probe(raw, f"steady_state[{i}]", problems, hosts))]
    names = [p.name for p in probes]
    problems += [f"steady_state: probe name {n!r} used twice" for n in sorted({n for n in names if names.count(n) > 1})]
    if kind == "fault":
        fault = _fault(doc.get("fault"), problems)
    elif kind == "communication" and doc.get("fault") is not None:
        fault = _channel_fault(doc.get("fault"), problems)
    else:
        fault = {}
    recovery = _recovery(doc.get("recovery"), problems) if kind in ("fault", "response") else {}
    cleanup_raw = doc.get("cleanup") or {}
    cleanup = _scenario_call(cleanup_raw, "cleanup", problems, required=False) if isinstance(cleanup_raw, dict) else {}
    sla_raw = doc.get("sla") or {}
    if not isinstance(sla_raw, dict):
        problems.append(f"sla: a mapping of {', '.join(SLA_FIELDS)} to durations")
        sla_raw = {}
    bad_sla = set(sla_raw) - set(SLA_FIELDS)
    if bad_sla:
        problems.append(f"sla: {', '.join(sorted(bad_sla))} unknown; valid: {', '.join(SLA_FIELDS)}")
    sla = {k: (0 if str(v) in ("0", "0s") else seconds(v, f"sla.{k}", problems))
           for k, v in sla_raw.items() if k in SLA_FIELDS}
    if kind == "response" and "recover" not in sla:
        problems.append("sla.recover: required for a response drill (how long the scenario may take)")
    if kind == "fault":
        problems += [f"sla.{k}: required for a fault drill (a duration)" for k in ("detect", "recover") if k not in sla]
    if kind == "restore_test" and "rpo" not in sla:
        problems.append("sla.rpo: required for a restore test (the oldest data age allowed)")
    lease_s = seconds(doc.get("lease", "10m"), "lease", problems)
    if lease_s and not 10 <= lease_s <= 4 * 3600:
        problems.append(f"lease: {doc.get('lease')} out of range; valid: 10s..4h")
    interval = doc.get("probe_interval", "1s")
    interval_s = float(seconds(interval, "probe_interval", problems)) if not isinstance(interval, float) else interval
    if problems:
        raise BadInput("\n".join(f"{path}: {p}" for p in problems))
    notify = doc.get("notify") or {}
    return Drill(path.stem, path, kind, str(doc.get("description", "")), probes, fault, recovery, cleanup, sla,
                 lease_s, interval_s, hosts, notify if isinstance(notify, dict) else {}, str(doc.get("seed", "")))


def load(name_or_path: str) -> Drill:
    path = resolve(name_or_path)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise BadInput(f"{path}: not valid YAML: {exc}") from None
    return parse(doc, path)
