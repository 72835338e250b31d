"""Every shipped drill not covered by a file of its own runs on the lab addressed as staging, passes
within its SLA, and leaves every host as it found it. Every drill from plain ansible-playbook: test_drills_plain.py.

Covered elsewhere: level1, restore-test and communication (test_drills.py), level1-alert
(test_drills_alert.py), the database faults' drills (test_drill_faults.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from lab_helpers import APP, LAB_HOSTS, WEB_HOSTS, Mayday, dexec, health
from test_drills import journal_of

from mayday.drills import schema

pytestmark = pytest.mark.usefixtures("drill_lab")

SHIPPED_HERE = ("level2-api", "level2-frontend", "level2-webhook", "db-long-query", "security-lockdown")

# What a drill's fault, its recovery and its cleanup may touch, per host; logs and records excluded (Level 2
# keeps the configuration it replaced beside it, <dir>.mayday-replaced-<stamp>, for the postmortem).
WEB_STATE = f"""
    echo "current=$(readlink {APP}/current)"
    echo "releases=$(ls {APP}/releases | tr '\\n' ' ')"
    echo "markers=$(ls {APP}/releases/*/.mayday-failed 2>/dev/null | tr '\\n' ' ')"
    echo "history=$(md5sum < {APP}/.mayday-deploy-history | cut -c1-32)"
    echo "shared=$(cd {APP}/shared && find . -path './*.mayday-replaced-*' -prune -o -type f -exec md5sum {{}} + \
        | sort | md5sum | cut -c1-32)"
    echo "nginx=$(cd /etc/nginx && find . -type f -exec md5sum {{}} + | sort | md5sum | cut -c1-32)"
"""
EVERY_HOST_STATE = """
    echo "nft=$(nft -s list ruleset 2>/dev/null | md5sum | cut -c1-32)"
    echo "faults=$(ls /var/lib/mayday/drill-faults 2>/dev/null | tr '\\n' ' ')"
    echo "leases=$(ls /var/lib/mayday/leases 2>/dev/null | tr '\\n' ' ')"
    echo "lockdown=$(test -e /var/lib/mayday/lockdown.json && echo yes)"
    echo "failed_units=$(systemctl list-units --failed --plain --no-legend | wc -l)"
"""
PG_STATE = """
    echo "long=$(runuser -u postgres -- psql -XAtq -d app -c "SELECT count(*) FROM pg_stat_activity
        WHERE backend_type = 'client backend' AND state = 'active' AND pid <> pg_backend_pid()
        AND now() - query_start > interval '5 seconds'")"
"""


def host_state() -> dict[str, dict[str, str]]:
    found = {}
    for host in LAB_HOSTS:
        script = EVERY_HOST_STATE + (WEB_STATE if host in WEB_HOSTS else "") + (PG_STATE if host == "pg1" else "")
        found[host] = dict(line.split("=", 1) for line in dexec(host, script).splitlines() if "=" in line)
    return found


def assert_as_found(before: dict[str, dict[str, str]]) -> None:
    after = host_state()
    changed = [f"{host} {key}: {value!r} -> {after[host].get(key)!r}"
               for host, fields in before.items() for key, value in fields.items() if after[host].get(key) != value]
    assert not changed, "the drill left hosts changed:\n" + "\n".join(changed)


def assert_within_sla(name: str, summary: dict[str, Any]) -> None:
    sla, fig = schema.load(name).sla, summary["figures"]
    assert summary["verdict"] == "PASSED", summary
    if "detect" in sla:
        assert 0 < fig["time_to_detect_s"] <= sla["detect"], fig
    assert 0 < fig["time_to_recover_s"] <= sla["recover"], fig


@pytest.mark.parametrize("name", SHIPPED_HERE)
def test_shipped_drill_passes_on_staging_and_leaves_every_host_as_found(mayday: Mayday, name: str) -> None:
    before = host_state()
    out = mayday.run("drill", "run", name, "-i", "lab-staging", "--json", timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert_within_sla(name, json.loads(out.stdout))
    _, doc = journal_of(mayday, name)
    assert doc["environment"] == "staging"
    assert all(f["outcome"] == "removed" for e in doc["events"] if e["event"] == "cleanup" for f in e["faults"])
    assert_as_found(before)
    assert all(health(h).get("status") == "healthy" for h in WEB_HOSTS)
