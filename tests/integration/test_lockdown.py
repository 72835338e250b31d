"""Security lockdown on the lab: the rate limit (web1, web2) and the database restriction (db1, pg1)
under the lockdown's leases, one lockdown at a time, confirm, lift, and the hosts undoing it alone.

Every assertion is on host state: nginx answering 429 to a burst, its configuration (`nginx -T`),
the databases' read-only settings and a write as the app's role, the lease records and the lockdown
record on the hosts.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor

import pytest
from lab_helpers import APP, Mayday, dexec, interrupted_cli, lab_address
from test_db_emergencies import (
    DB1,
    LEASES,
    PG1,
    back_to_normal,
    leases,
    my_read_only,
    my_write_as_app,
    pg_read_only,
    pg_write_as_app,
    playbook,
    sh,
    wait_for,
)
from test_network_isolate import FORCE_CLEAN, TABLE

from mayday.evidence import verify

WEB = ("web1", "web2")
ALL = (*WEB, DB1, PG1)
RECORD = "/var/lib/mayday/lockdown.json"
LIMIT_CONF = "/etc/nginx/conf.d/mayday-rate-limit.conf"
GUARD = "inet mayday_dbguard"
SSH_TREE = "find /etc/ssh -type f | sort | xargs sha256sum; stat -c '%a %U %n' /etc/ssh/sshd_config.d/*"


def burst_codes(host: str, count: int = 40) -> list[str]:
    return sh(host, f"for i in $(seq {count}); do curl -s -o /dev/null -w '%{{http_code}} ' "
                    "http://127.0.0.1/health-check; done").split()


def nginx_config(host: str) -> str:
    return hashlib.sha256(sh(host, "nginx -T 2>/dev/null").encode()).hexdigest()


def reaches(source: str, target: str, port: int) -> bool:
    """A TCP connection from one lab host to another's port (bash's /dev/tcp; a reset fails at once)."""
    return sh(source, f"timeout 5 bash -c '</dev/tcp/{target}/{port}' 2>/dev/null && echo open || echo shut",
              check=False).strip() == "open"


def app_reads(host: str) -> bool:
    """The app's own code (release v1's db.php, as www-data) reads from MariaDB and through pgbouncer."""
    php = ('require "lib/db.php"; app_db()->query("SELECT 1"); app_pg_query(app_pg(), "SELECT 1", []); echo "read";')
    return sh(host, f"cd {APP}/releases/v1 && runuser -u www-data -- php -r '{php}'", check=False).strip() == "read"


def record_mode(host: str) -> str:
    return sh(host, f"stat -c %a {RECORD} 2>/dev/null || echo none").strip()


def state() -> dict[str, object]:
    """What a refused or dry run must leave as it was."""
    return {
        "nginx": {h: nginx_config(h) for h in WEB},
        "records": {h: sh(h, f"cat {RECORD} 2>/dev/null || echo none") for h in ALL},
        "leases": {h: sorted(leases(h)["records"]) for h in ALL},
        "read_only": (my_read_only(), pg_read_only()),
        "nft": {h: sh(h, "nft -s list ruleset") for h in (DB1, PG1)},
    }


def no_lockdown() -> None:
    for host in WEB:
        dexec(host, FORCE_CLEAN, check=False)
        sh(host, f"rm -f {LIMIT_CONF} {RECORD}; systemctl reload nginx", check=False)
        sh(host, f"""for u in $(systemctl list-units 'mayday-lease-*' --all --plain --no-legend | awk '{{print $1}}')
            do systemctl stop "$u"; done; rm -f {LEASES}/*.json /var/lib/mayday/run.lock -r""", check=False)
    for host in (DB1, PG1):
        sh(host, f"rm -f {RECORD}; nft 'add table {GUARD}; delete table {GUARD}'", check=False)
    back_to_normal()


@pytest.fixture
def calm(lab: dict[str, str], mayday: Mayday) -> Generator[Mayday, None, None]:
    """The lab's web hosts on a release (the `lab` fixture), no lockdown, databases read-write."""
    no_lockdown()
    yield mayday
    no_lockdown()


def test_lockdown_rate_limit_and_db_restrict_then_one_at_a_time_confirm_and_lift(calm: Mayday) -> None:
    before = state()
    assert "429" not in burst_codes("web1")

    for bad in (["lockdown"], ["lockdown", "--rate-limit", "--skip-evidence"],
                ["lockdown", "--rate-limit", "--for", "soon"], ["lockdown", "--internal-only", "--rate-limit"]):
        out = calm.run(*bad)
        assert out.returncode == 2, (bad, out.stdout + out.stderr)
    out = calm.run("lockdown", "--rate-limit", "--for", "9h")  # over the inventory's 4h: refused on the hosts
    assert out.returncode == 2, out.stdout + out.stderr
    dry = calm.run("lockdown", "--rate-limit", "--db-restrict", "--check")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert state() == before, "bad input or a dry run changed a host"

    started = time.time()
    out = calm.run("lockdown", "--rate-limit", "--db-restrict", "--for", "20m")
    assert out.returncode == 0, out.stdout + out.stderr
    incident = calm.last_report()["incident"]
    security = calm.state_dir / "security-notifications.jsonl"
    sent = [json.loads(line) for line in security.read_text().splitlines()] if security.exists() else []
    assert [n["incident"] for n in sent] == [incident], "the lockdown was not announced on the security channel"
    assert not calm.notifications(), "a security event went to the general channel"
    for host in WEB:
        codes = burst_codes(host)
        assert "429" in codes and codes[0] != "429", f"{host}: no rate limit seen: {codes}"
    assert my_read_only() == "1" and pg_read_only().endswith("=on")
    assert not my_write_as_app("lock-my") and not pg_write_as_app("lock-pg")
    # The database ports answer the app hosts only: web1 gets in, pg1 and db1 (not app hosts) do not.
    assert reaches("web1", DB1, 3306) and reaches("web2", PG1, 6432)
    assert not reaches(PG1, DB1, 3306) and not reaches(DB1, PG1, 6432)
    assert app_reads("web1"), "the app host lost its database"
    for host in ALL:
        assert record_mode(host) == "600"
        found = [r["doc"] for r in leases(host)["records"].values()]
        # web: the rate limit; db1, pg1: read-only and the port guard.
        assert len(found) == (1 if host in WEB else 2), f"{host}: {found}"
        assert {f["incident"] for f in found} == {incident}, f"{host}: {found}"
        assert all(abs(f["expires_epoch"] - (started + 1200)) < 90 for f in found)

    during = state()
    again = calm.run("lockdown", "--rate-limit")
    assert again.returncode == 2, again.stdout + again.stderr
    assert incident in " ".join(calm.last_report()["refusals"])
    dry_lift = calm.run("lockdown", "lift", "--check")
    assert dry_lift.returncode == 0, dry_lift.stdout + dry_lift.stderr
    assert state() == during, "a refused second lockdown or a dry lift changed a host"

    out = calm.run("lockdown", "confirm")
    assert out.returncode == 0, out.stdout + out.stderr
    for host in ALL:
        assert leases(host) == {"records": {}, "timers": []}, f"{host}: confirm left a lease that would undo it"
    assert "429" in burst_codes("web2") and my_read_only() == "1", "confirm undid the lockdown"
    assert not reaches(PG1, DB1, 3306), "confirm undid the database guard"

    out = calm.run("lockdown", "lift")
    assert out.returncode == 0, out.stdout + out.stderr
    assert {h: nginx_config(h) for h in WEB} == before["nginx"], "lift did not restore nginx's configuration"
    assert "429" not in burst_codes("web1")
    assert my_read_only() == "0" and pg_read_only() == ""
    assert my_write_as_app("lock-my-after") and pg_write_as_app("lock-pg-after")
    assert reaches(PG1, DB1, 3306) and reaches(DB1, PG1, 6432)
    assert {h: sh(h, "nft -s list ruleset") for h in (DB1, PG1)} == before["nft"], "lift left a table behind"
    assert all(record_mode(h) == "none" for h in ALL)
    again = calm.run("lockdown", "lift")
    assert again.returncode == 2, "a lift with no lockdown active should be refused"


def test_ctrl_c_during_the_evidence_stops_before_containment(calm: Mayday) -> None:
    """The verdict said go, the evidence is being captured, the operator presses Ctrl-C: no step is
    taken on any host (REFUSED, exit 2), the evidence is kept in the incident."""
    before = state()
    rc, text = interrupted_cli(calm, ["lockdown", "--rate-limit", "--for", "10m"], "] Evidence")
    assert rc == 2, text[-3000:]
    report = calm.last_report()
    assert report["outcome"] == "REFUSED", report
    assert state() == before, "a step was taken after the interrupt"
    assert "429" not in burst_codes("web1")
    kept = list((calm.state_dir / "incidents" / report["incident"] / "evidence").glob("*/*"))
    assert kept, "the evidence captured before the interrupt should be kept"


def test_unconfirmed_lockdown_is_undone_by_the_hosts_and_no_longer_counts(calm: Mayday) -> None:
    before = {h: nginx_config(h) for h in WEB}
    # 40 s: room for the run itself on a loaded machine before the burst that proves the limit.
    out = playbook(calm, "security-lockdown.yml", "--limit", "web1", "-e", "rate_limit=true", "-e", "for=40s",
                   "-e", "mayday_lease_min=1s")
    assert out.returncode == 0, out.stdout[-3000:]
    assert "429" in burst_codes("web1")
    wait_for("web1 removes the limit at the lease's end", lambda: nginx_config("web1") == before["web1"], 75)
    assert "429" not in burst_codes("web1")
    status = calm.run("lockdown", "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    out = calm.run("lockdown", "--rate-limit", "--limit", "web1", "--for", "1m")
    assert out.returncode == 0, "an expired lockdown should not block a new one: " + out.stdout + out.stderr


def test_a_slow_health_check_still_proves_the_limit(calm: Mayday) -> None:
    """A loaded host answers slowly. The proof's requests sent one after another (ci-19) stayed under
    the rate, got no 429, and the lockdown failed with the limit taken back; sent as a flood arrives,
    the limit shows at any speed."""
    slow = f"{APP}/current/.lab-slow-ms"  # the lab app sleeps this long in every health check
    sh("web1", f"echo 300 > {slow}")
    try:
        took = float(sh("web1", "curl -s -o /dev/null -w '%{time_total}' http://127.0.0.1/health-check"))
        assert took >= 0.3, f"the health check answered in {took} s: not slowed"
        out = calm.run("lockdown", "--rate-limit", "--limit", "web1", "--for", "10m", "--skip-evidence",
                       "--reason", "test: slow health check")
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
        assert sh("web1", f"test -f {LIMIT_CONF} && echo on", check=False).strip() == "on"
        assert "nginx rate limit" in json.dumps(leases("web1")["records"])
    finally:
        sh("web1", f"rm -f {slow}")
    out = calm.run("lockdown", "lift", "--limit", "web1")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert sh("web1", f"test -f {LIMIT_CONF} && echo on || echo off").strip() == "off"


def forwarded(url: str, headers: list[str], at_once: int) -> list[int]:
    """One request per X-Forwarded-For value, from this machine (the lab network's gateway, the lab's
    load balancer), as a load balancer forwards them; `at_once` of them in flight."""
    def one(header: str) -> int:
        request = urllib.request.Request(url, headers={"X-Forwarded-For": header})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    with ThreadPoolExecutor(max_workers=at_once) as pool:
        return list(pool.map(one, headers))


def test_behind_a_load_balancer_each_client_gets_its_own_limit(calm: Mayday) -> None:
    """Behind a load balancer every user arrives from its address. Keyed by that address (before
    mayday_rate_limit.trusted_proxies), one client's flood got every user 429s; keyed by the client
    the balancer names, the flood is limited and the next user is served. Addresses a client writes
    into the header itself, or a header from a host that is not a trusted proxy, buy no fresh limit.
    Every host at once, as production runs it: no --limit, both web hosts behind the balancer."""
    out = calm.run("lockdown", "--rate-limit", "--for", "10m", "--skip-evidence",
                   "--reason", "test: behind a load balancer")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    other = f"http://{lab_address('web2')}/health-check"
    assert 429 in forwarded(other, ["198.51.100.7"] * 60, at_once=30), "web2 was not limited"
    assert 429 not in forwarded(other, ["198.51.100.8"] * 5, at_once=1), "another client paid on web2"
    url = f"http://{lab_address('web1')}/health-check"
    flood = forwarded(url, ["198.51.100.7"] * 60, at_once=30)
    assert 429 in flood, f"a client's flood through the balancer was not limited: {flood}"
    served = forwarded(url, ["198.51.100.8"] * 5, at_once=1)
    assert 429 not in served, f"another client paid for the flood: {served}"
    # A client that writes addresses of its own into the header: the balancer appends the one it saw.
    written = forwarded(url, [f"203.0.113.{i}, 198.51.100.9" for i in range(60)], at_once=30)
    assert 429 in written, f"a client escaped the limit by writing made-up addresses before its own: {written}"
    spoofed = sh("web2", "for i in $(seq 60); do curl -s -o /dev/null -w '%{http_code} ' "
                         f"-H \"X-Forwarded-For: 203.0.113.$i\" {url} & done; wait").split()
    assert "429" in spoofed, f"an untrusted host escaped the limit with made-up client addresses: {spoofed}"
    out = calm.run("lockdown", "lift")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    for where in (url, other):
        assert 429 not in forwarded(where, ["198.51.100.7"] * 60, at_once=30), f"the limit outlived the lift: {where}"


def test_lift_goes_through_when_the_limit_settings_turned_invalid(calm: Mayday) -> None:
    """A lift never depends on the rate limit's settings. With mayday_rate_limit changed since the
    lockdown to values a lockdown refuses (rate 0, a proxy that is not an address), the limit in force
    was kept: the lift was refused and the site stayed throttled until the lease ran out."""
    out = calm.run("lockdown", "--rate-limit", "--limit", "web1", "--for", "10m", "--skip-evidence",
                   "--reason", "test: lift with settings gone bad")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert sh("web1", f"test -f {LIMIT_CONF} && echo on", check=False).strip() == "on"
    bad = json.dumps({"mayday_rate_limit": {"rate": 0, "trusted_proxies": ["not-an-address"]}})
    out = playbook(calm, "security-lockdown.yml", "--limit", "web1", "-e", "op=lift", "-e", bad)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert sh("web1", f"test -f {LIMIT_CONF} && echo on || echo off").strip() == "off"
    assert "429" not in burst_codes("web1"), "the limit is still in force after the lift"


def test_evidence_first_then_isolation_and_lift_restores_the_ruleset(calm: Mayday) -> None:
    rules_before = sh("web1", "nft -s list ruleset")
    ssh_before = sh("web1", SSH_TREE)
    out = calm.run("lockdown", "--isolate", "--no-new-logins", "--limit", "web1", "--for", "10m")
    assert out.returncode == 0, out.stdout + out.stderr
    report = calm.last_report()
    assert sh("web1", f"nft list table {TABLE} >/dev/null && echo live").strip() == "live"
    # Logins: a user other than the operator is held to the break-glass group (sshd's own view).
    assert "allowgroups mayday-breakglass" in sh("web1", "sshd -T -C user=outsider,host=x,addr=192.0.2.1")
    assert "allowgroups" not in sh("web1", "sshd -T -C user=mayday,host=x,addr=192.0.2.1")
    evidence = calm.state_dir / "incidents" / report["incident"] / "evidence"
    assert verify(evidence) == [], "the evidence copied to the controller does not verify"
    archive = evidence / "web1" / "evidence.tar.gz"
    assert stat.S_IMODE(os.stat(archive).st_mode) == 0o600
    custody = json.loads((evidence / "web1" / "custody.json").read_text())
    assert custody["host"] == "web1" and custody["incident"] == report["incident"] and custody["verified"]
    with tarfile.open(archive) as packed:  # taken before the change: no isolation table in it yet
        captured = packed.extractfile("evidence/firewall/nft-ruleset.txt")
        assert captured is not None and b"mayday_isolate" not in captured.read()

    out = calm.run("lockdown", "lift", "--limit", "web1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert sh("web1", "nft -s list ruleset") == rules_before, "lift did not restore the ruleset byte for byte"
    assert sh("web1", SSH_TREE) == ssh_before, "lift did not restore sshd's configuration byte for byte"

    out = calm.run("lockdown", "--rate-limit", "--limit", "web2", "--skip-evidence", "--reason", "disk full")
    assert out.returncode == 0, out.stdout + out.stderr
    report = calm.last_report()
    assert report["results"]["web2"]["evidence_skipped_reason"] == "disk full"
    assert not (calm.state_dir / "incidents" / report["incident"] / "evidence").exists()


@pytest.mark.parametrize("command", [["lockdown", "--rate-limit"], ["lockdown", "lift"],
                                     ["security", "account", "alice"], ["security", "rotate"]])
def test_security_commands_on_production_need_yes(mayday: Mayday, command: list[str]) -> None:
    out = mayday.run(*command, "-i", "production")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "--yes" in out.stderr
    assert not (mayday.state_dir / "incidents").exists() or not mayday.reports(), "a run started without --yes"
