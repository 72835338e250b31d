"""The lab's monitoring (mon1): Prometheus, Alertmanager and exporters, configured from monitoring/.

What goes into mon1 is computed here, without Docker (unit-tested): the rendered templates, the alert
rules (the health rule's `for:` from MAYDAY_LAB_HEALTH_FOR), the exporters' arguments, and one shell
script that checks it all with promtool and amtool before any of it goes live. cli/mayday/lab.py sends
it into the container and keeps the serve token.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
import yaml

from mayday.errors import BadInput, MaydayError

MON_HOST = "mon1"
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
# Exporters listen on mon1's loopback; only Prometheus reads them.
PORTS = {"blackbox": 9115, "node": 9100, "mysqld": 9104, "postgres": 9187}
NGINX_EXPORTER_PORT_BASE = 9300  # web<N>'s exporter: 9300 + N
STUB_STATUS_PORT = 8080  # nginx's counters on the web hosts (playbooks/lab/setup.yml)
MONITOR_USER = "mayday_monitor"  # read-only, created by playbooks/lab/setup.yml on db1 and pg1
MARIADB_HOSTS = ("db1",)
POSTGRES_HOSTS = ("pg1",)

DEFAULT_SERVE_PORT = 9753
DEFAULT_HEALTH_FOR = "30s"
HEALTH_ALERT = "HealthCheckFailing"
DURATION = re.compile(r"^[0-9]{1,6}(ms|s|m|h)$")

TOKEN_FILE = "/etc/prometheus/mayday-serve-token"
APPLIED = "/etc/mayday-mon/applied"
NGINX_ENV_DIR = "/etc/mayday-mon/nginx-exporter"
PACKAGE_UNITS = ("prometheus", "prometheus-alertmanager", "prometheus-blackbox-exporter", "prometheus-node-exporter",
                 "prometheus-mysqld-exporter", "prometheus-postgres-exporter")


def serve_port(env: Mapping[str, str]) -> int:
    """The port `mayday serve` listens on: MAYDAY_SERVE_PORT, default 9753."""
    raw = env.get("MAYDAY_SERVE_PORT") or str(DEFAULT_SERVE_PORT)
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise BadInput(f"MAYDAY_SERVE_PORT={raw!r} is not a port: a number from 1 to 65535 "
                       f"(default {DEFAULT_SERVE_PORT})")
    return int(raw)


def health_for(env: Mapping[str, str]) -> str:
    """The `for:` of the lab's health rule: MAYDAY_LAB_HEALTH_FOR, default the seed's 30s."""
    raw = env.get("MAYDAY_LAB_HEALTH_FOR") or DEFAULT_HEALTH_FOR
    if not DURATION.match(raw):
        raise BadInput(f"MAYDAY_LAB_HEALTH_FOR={raw!r} is not a duration: a number and one of the units "
                       f"ms, s, m, h (e.g. 10s; default {DEFAULT_HEALTH_FOR})")
    return raw


def nginx_exporter_port(host: str) -> int:
    return NGINX_EXPORTER_PORT_BASE + int(host.removeprefix("web"))


@dataclass(frozen=True)
class HealthCheck:
    path: str
    status: int
    body_patterns: tuple[str, ...]


def health_check(group_vars: Path) -> HealthCheck:
    """What a healthy answer is, from the web hosts' first mayday_health_checks entry (group_vars all/,
    then web/): its URL's path, its status and the JSON fields it expects (as body patterns for the
    blackbox exporter)."""
    checks: list[dict[str, Any]] = []
    for path in [*sorted(group_vars.glob("all/*.yml")), *sorted(group_vars.glob("web/*.yml"))]:
        doc = yaml.safe_load(path.read_text()) or {}
        checks = doc.get("mayday_health_checks") or checks
    if not checks:
        raise MaydayError(f"no mayday_health_checks in {group_vars}/{{all,web}}: the lab's monitoring probes it")
    first = checks[0]
    patterns = tuple(f'"{re.escape(str(key))}":\\s*{re.escape(json.dumps(value))}'
                     for key, value in (first.get("json") or {}).items())
    return HealthCheck(urlsplit(str(first["url"])).path or "/", int(first.get("status", 200)), patterns)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) stay blocks, as in the repository's files."""


_BlockDumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def lab_rules(rules_dir: Path, health_window: str) -> dict[str, str]:
    """monitoring/rules/*.yml as the lab installs them: the health rule's `for:` replaced."""
    rendered = {}
    found = False
    for path in sorted(rules_dir.glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        for group in doc.get("groups", []):
            for rule in group.get("rules", []):
                if rule.get("alert") == HEALTH_ALERT:
                    rule["for"] = health_window
                    found = True
        rendered[path.name] = (f"# monitoring/rules/{path.name} as `mayday lab up` installs it: {HEALTH_ALERT} "
                               f"waits {health_window} (MAYDAY_LAB_HEALTH_FOR).\n"
                               + yaml.dump(doc, Dumper=_BlockDumper, sort_keys=False, width=120))
    if not found:
        raise MaydayError(f"no alert {HEALTH_ALERT} in {rules_dir}/*.yml: the lab's health rule is missing")
    return rendered


@dataclass(frozen=True)
class MonFile:
    """A file in mon1: its content, mode, group (owner root), and the unit that reads it (restarted for
    arguments, reloaded for configuration)."""

    path: str
    content: str
    unit: str
    action: str = "reload"  # or restart
    mode: str = "644"
    group: str = "root"


@dataclass(frozen=True)
class MonSpec:
    web_hosts: tuple[str, ...]
    serve_host: str  # the lab network's IPv4 gateway: this controller
    serve_port: int
    health_window: str
    db_password: str
    token: str


def _render(template: Path, **values: Any) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True, autoescape=False)
    return env.from_string(template.read_text()).render(**values)


def _args(*args: str) -> str:
    return f'# Written by `mayday lab up`.\nARGS="{" ".join(args)}"\n'


def render(spec: MonSpec, root: Path) -> list[MonFile]:
    """Every file mon1 needs, from the checkout at `root` (monitoring/, the lab inventory)."""
    if "\n" in spec.db_password or not spec.token or "\n" in spec.token:
        raise BadInput("the lab database password and the serve token must be single lines")
    monitoring = root / "monitoring"
    health = health_check(root / "inventories" / "lab" / "group_vars")
    values = dict(web_hosts=spec.web_hosts, health_path=health.path, ports=PORTS, prometheus_port=PROMETHEUS_PORT,
                  alertmanager_port=ALERTMANAGER_PORT, mariadb_hosts=MARIADB_HOSTS, postgres_hosts=POSTGRES_HOSTS,
                  nginx_exporter_ports={h: nginx_exporter_port(h) for h in spec.web_hosts},
                  serve_host=spec.serve_host, serve_port=spec.serve_port, token_file=TOKEN_FILE,
                  health_status=health.status, health_body_patterns=health.body_patterns)
    files = [
        MonFile("/etc/prometheus/prometheus.yml", _render(monitoring / "prometheus.yml.j2", **values), "prometheus"),
        MonFile("/etc/default/prometheus",
                _args("--config.file=/etc/prometheus/prometheus.yml", f"--web.listen-address=:{PROMETHEUS_PORT}",
                      "--storage.tsdb.retention.time=2d", "--storage.tsdb.retention.size=512MB"),
                "prometheus", "restart"),
        MonFile("/etc/prometheus/alertmanager.yml", _render(monitoring / "alertmanager.yml.j2", **values),
                "prometheus-alertmanager"),
        MonFile(TOKEN_FILE, spec.token, "prometheus-alertmanager", mode="640", group="prometheus"),
        MonFile("/etc/default/prometheus-alertmanager",
                _args("--config.file=/etc/prometheus/alertmanager.yml", f"--web.listen-address=:{ALERTMANAGER_PORT}",
                      "--storage.path=/var/lib/prometheus/alertmanager",
                      "--cluster.listen-address="),  # one Alertmanager: no gossip port
                "prometheus-alertmanager", "restart"),
        MonFile("/etc/prometheus/blackbox.yml", _render(monitoring / "blackbox.yml.j2", **values),
                "prometheus-blackbox-exporter"),
        MonFile("/etc/default/prometheus-blackbox-exporter",
                _args("--config.file=/etc/prometheus/blackbox.yml",
                      f"--web.listen-address=127.0.0.1:{PORTS['blackbox']}"),
                "prometheus-blackbox-exporter", "restart"),
        MonFile("/etc/default/prometheus-node-exporter", _args(f"--web.listen-address=127.0.0.1:{PORTS['node']}"),
                "prometheus-node-exporter", "restart"),
        MonFile("/etc/prometheus/mysqld-exporter.cnf",
                f"[client]\nuser = {MONITOR_USER}\npassword = {spec.db_password}\nhost = {MARIADB_HOSTS[0]}\n"
                f"port = 3306\n", "prometheus-mysqld-exporter", "restart", mode="640", group="prometheus"),
        MonFile("/etc/default/prometheus-mysqld-exporter",
                _args("--config.my-cnf=/etc/prometheus/mysqld-exporter.cnf",
                      f"--web.listen-address=127.0.0.1:{PORTS['mysqld']}"),
                "prometheus-mysqld-exporter", "restart"),
        MonFile("/etc/default/prometheus-postgres-exporter",
                f"# Written by `mayday lab up`.\nDATA_SOURCE_NAME='postgresql://{MONITOR_USER}:"
                f"{quote(spec.db_password, safe='')}@{POSTGRES_HOSTS[0]}:5432/postgres?sslmode=disable'\n"
                f'ARGS="--web.listen-address=127.0.0.1:{PORTS["postgres"]}"\n',
                "prometheus-postgres-exporter", "restart", mode="600"),
    ]
    files += [MonFile(f"/etc/prometheus/rules/{name}", text, "prometheus")
              for name, text in lab_rules(monitoring / "rules", spec.health_window).items()]
    files += [MonFile(f"{NGINX_ENV_DIR}/{host}.env",
                      _args(f"-nginx.scrape-uri=http://{host}:{STUB_STATUS_PORT}/stub_status",
                            f"-web.listen-address=127.0.0.1:{nginx_exporter_port(host)}"),
                      nginx_unit(host), "restart")
              for host in spec.web_hosts]
    return files


def nginx_unit(host: str) -> str:
    return f"mayday-nginx-exporter@{host}.service"


def units(spec: MonSpec) -> list[str]:
    return [*PACKAGE_UNITS, *(nginx_unit(h) for h in spec.web_hosts)]


def digest(files: list[MonFile], unit_names: list[str]) -> str:
    """One hash of everything applied: unchanged, `lab up` only makes sure the services run."""
    h = hashlib.sha256(APPLY_SCRIPT.encode())
    for f in files:
        h.update(json.dumps([f.path, f.content, f.unit, f.action, f.mode, f.group]).encode())
    h.update(json.dumps(unit_names).encode())
    return h.hexdigest()


def bundle(files: list[MonFile], unit_names: list[str], applied: str) -> bytes:
    """The tar mon1 reads on stdin: files/<path>, a manifest (path mode group unit action per line), the
    units to run, and the digest to record once applied."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        def add(name: str, text: str) -> None:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))

        for f in files:
            add("files" + f.path, f.content)
        add("manifest", "".join(f"{f.path} {f.mode} {f.group} {f.unit} {f.action}\n" for f in files))
        add("units", "".join(f"{u}\n" for u in unit_names))
        add("applied", applied + "\n")
    return out.getvalue()


# Runs in mon1 with the bundle on stdin. Everything is checked (promtool, amtool, the blackbox exporter)
# before any file goes live; then only changed files are installed and only their units reloaded or
# restarted; rule files and nginx exporters of hosts no longer monitored are removed.
APPLY_SCRIPT = r"""
set -eu
stage=/run/mayday-mon
rm -rf "$stage"; mkdir -m 0700 "$stage"; cd "$stage"; tar -x
f=files/etc/prometheus
if ! { promtool check rules $f/rules/*.yml && promtool check config --syntax-only $f/prometheus.yml \
       && amtool check-config $f/alertmanager.yml \
       && prometheus-blackbox-exporter --config.check --config.file=$f/blackbox.yml; } >check.log 2>&1; then
  cat check.log >&2; rm -rf "$stage"; exit 3
fi
: > restart; : > reload
while read -r path mode group unit action; do
  if ! cmp -s "files$path" "$path" || [ "$(stat -c %a:%G "$path")" != "$mode:$group" ]; then
    install -D -m "$mode" -o root -g "$group" "files$path" "$path"
    echo "$unit" >> "$action"
  fi
done < manifest
for old in /etc/prometheus/rules/*.yml /etc/mayday-mon/nginx-exporter/*.env; do
  if [ -e "$old" ] && [ ! -e "files$old" ]; then rm -f "$old"; echo prometheus >> reload; fi
done
for unit in $(systemctl list-units --all --plain --no-legend 'mayday-nginx-exporter@*' | awk '{print $1}'); do
  grep -qx "$unit" units || systemctl disable -q --now "$unit"
done
systemctl enable -q $(cat units)
sort -u restart | xargs -r systemctl restart
# A unit just restarted read every file already; a reload of it at once can race its start (a fresh
# prometheus failed its SIGHUP reload), so only the others reload, and a failed reload restarts.
sort -u reload | grep -vxF -f restart | while read -r unit; do
  systemctl reload-or-restart "$unit" || systemctl restart "$unit"
done
systemctl start $(cat units)
install -D -m 644 applied /etc/mayday-mon/applied
cd /; rm -rf "$stage"
"""
