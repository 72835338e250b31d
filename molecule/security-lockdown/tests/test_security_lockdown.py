"""The lockdown verified on the hosts: each step in force under a lease of the incident, the database
port closed to a client that is not an app host (this controller), and the evidence taken first."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

testinfra_hosts = ["ansible://all"]

STATE = Path(os.environ["MAYDAY_STATE_DIR"])


def lockdown_report() -> dict:
    found = [json.loads(p.read_text()) for p in STATE.glob("incidents/*/report.json")]
    done = [r for r in found if r["scenario"] == "lockdown" and not r.get("dry_run")]
    assert len(done) == 1, [(r["scenario"], r["outcome"]) for r in found]
    return done[0]


def test_report_done_with_evidence_and_announced(host):
    report = lockdown_report()
    assert report["outcome"] == "DONE", report["summary"]
    name = host.backend.host
    assert (STATE / "incidents" / report["incident"] / "evidence" / name / "custody.json").exists()
    sent = (STATE / "security-notifications.jsonl").read_text().splitlines()
    assert [json.loads(line)["incident"] for line in sent] == [report["incident"]]


def test_each_step_under_a_lease_of_the_incident(host):
    incident = lockdown_report()["incident"]
    record = json.loads(host.check_output("cat /var/lib/mayday/lockdown.json"))
    assert record["incident"] == incident and not record["confirmed"]
    expected = {"no_new_logins", "rate_limit"} if host.backend.host == "web1" else \
        {"no_new_logins", "db_restrict", "db_guard"}
    assert set(record["steps"]) == expected
    leases = [json.loads(host.check_output(f"cat /var/lib/mayday/leases/{name}"))
              for name in host.check_output("ls /var/lib/mayday/leases").split()]
    assert len(leases) == len(expected) and {lease["incident"] for lease in leases} == {incident}


def test_no_new_logins_but_the_operator(host):
    # sshd's own view of who may log in: another user is held to the break-glass group.
    assert "allowgroups mayday-breakglass" in host.check_output("sshd -T -C user=outsider,host=x,addr=192.0.2.1")
    assert "allowgroups" not in host.check_output("sshd -T -C user=mayday,host=x,addr=192.0.2.1")


def test_rate_limit_answers_a_burst_with_429(host):
    if host.backend.host != "web1":
        pytest.skip("a web host's step")
    # Ten clients at once from one address: well over 10 requests a second plus the burst of 20.
    codes = host.check_output("seq 60 | xargs -P 10 -I{} curl -s -o /dev/null -w '%{http_code}\\n' "
                              "http://127.0.0.1/health-check").split()
    assert "200" in codes and "429" in codes, codes


def test_database_read_only_and_only_for_the_app_host(host):
    if host.backend.host != "db1":
        pytest.skip("a database host's step")
    assert host.check_output("mariadb -N -B -e 'SELECT @@global.read_only'") == "1"
    assert "mayday_dbguard" in host.check_output("nft list tables")
    address = host.check_output("hostname -I").split()[0]
    # This controller is neither an app host nor in the allowlist: turned away at once.
    try:
        socket.create_connection((address, 3306), timeout=5).close()
        reached = True
    except OSError:
        reached = False
    assert not reached, "the database port answered a client that is not an app host"
    # The app host still gets in.
    web = host.get_host("ansible://web1", ansible_inventory=host.backend.ansible_inventory)
    assert web.run(f"timeout 5 bash -c '</dev/tcp/{address}/3306'").rc == 0
