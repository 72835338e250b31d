"""`mayday performance` / playbooks/performance-recovery.yml against the lab's Redis, app cache and php-fpm.

Every assertion is on host state: Redis itself (keys by prefix, counted with SCAN), the app cache
directory, php-fpm's master and worker pids, the release `current` points at, health latency; and
the incident reports' outcomes. Each test starts with web1 and web2 serving v1 healthy and fast,
Redis seeded with profile:* (the pattern), sess:* (sessions, real ones from the app plus seeded)
and other:* keys, and pages in the app cache directory.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest
from lab_helpers import (
    ANSIBLE_PLAYBOOK,
    APP,
    DOCKER,
    PREFIX,
    ROOT,
    WEB_HOSTS,
    Mayday,
    clear_host_locks,
    current_release,
    dexec,
    docker,
    health,
    install_release,
    lab_deploy,
    prune_test_releases,
    serve_by_hand,
)

REDIS_PASSWORD = os.environ.get("MAYDAY_LAB_REDIS_PASSWORD") or "lab-redis-not-a-secret"
CACHE_DIR = f"{APP}/shared/cache"
SEEDED = {"profile": 300, "sess": 40, "other": 25}
SLOW_RELEASE = "perf-slow"


def redis(host: str, *args: str) -> str:
    return docker("exec", "-e", f"REDISCLI_AUTH={REDIS_PASSWORD}", PREFIX + host, "redis-cli", "--no-raw",
                  *args).stdout


def redis_sh(host: str, script: str) -> str:
    return docker("exec", "-e", f"REDISCLI_AUTH={REDIS_PASSWORD}", PREFIX + host, "sh", "-c", script).stdout


def count(host: str, prefix: str) -> int:
    return int(redis_sh(host, f"redis-cli --scan --pattern '{prefix}:*' | wc -l").strip())


def keyspace(host: str) -> dict[str, int]:
    return {p: count(host, p) for p in (*SEEDED, "lab")}


def cache_files(host: str) -> list[str]:
    return sorted(dexec(host, f"ls -A {CACHE_DIR}").split())


def fpm_pids(host: str) -> tuple[str, frozenset[str]]:
    master = dexec(host, "systemctl show -p MainPID --value php8.2-fpm").strip()
    workers = frozenset(dexec(host, f"pgrep -P {master} || true").split())
    return master, workers


def snapshot() -> dict[str, Any]:
    """What the scenario may change: Redis keys, the app cache, php-fpm's processes, the release."""
    return {h: {"keys": keyspace(h), "dbsize": redis(h, "DBSIZE").strip(), "cache": cache_files(h),
                "fpm": fpm_pids(h), "current": current_release(h)} for h in WEB_HOSTS}


def latency_ms(host: str) -> float:
    out = dexec(host, "curl -s -o /dev/null -w '%{time_total}' --max-time 10 http://127.0.0.1/health-check")
    return float(out) * 1000


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"rc={result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-3000:]}"


def playbook(mayday: Mayday, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ANSIBLE_PLAYBOOK, str(ROOT / "playbooks" / "performance-recovery.yml"),
                           *args], cwd=ROOT, env=mayday.env(), capture_output=True, text=True,
                          check=False, timeout=300)


@pytest.fixture(scope="module")
def perf_lab(lab_up: None) -> None:
    """v1 with the app's Redis cache (lib/cache.php) on both web hosts, Redis answering."""
    if any(dexec(h, f"[ -f {APP}/releases/v1/lib/cache.php ] && echo yes", check=False).strip() != "yes"
           for h in WEB_HOSTS):
        lab_deploy("v1")
    for host in WEB_HOSTS:
        assert redis(host, "PING").strip() == "PONG", f"Redis does not answer on {host}"


@pytest.fixture
def seeded(perf_lab: None, mayday: Mayday) -> Mayday:
    clear_host_locks()
    prune_test_releases()
    for host in WEB_HOSTS:
        dexec(host, f"rm -f {APP}/releases/*/.lab-slow-ms; systemctl start php8.2-fpm redis-server")
    serve_by_hand("v1")
    for host in WEB_HOSTS:
        redis(host, "FLUSHDB")
        dexec(host, f"find {CACHE_DIR} -mindepth 1 -delete")
        # Real traffic: profile pages (profile:<id> in Redis, a page in the cache dir) and sessions.
        dexec(host, "for i in 1 2 3 4 5; do curl -s -o /dev/null -c /tmp/jar$i "
                    "http://127.0.0.1/profile.php?id=$i; done")
        real = {p: count(host, p) for p in ("profile", "sess")}
        assert real == {"profile": 5, "sess": 5}, f"the app did not cache in Redis on {host}: {real}"
        seed = "".join(f"for i in $(seq {first} {last}); do echo \"SET {name}$i x\"; done | redis-cli >/dev/null; "
                       for name, first, last in (("profile:", 6, SEEDED["profile"]), ("sess:seed", 6, SEEDED["sess"]),
                                                 ("other:", 1, SEEDED["other"])))
        redis_sh(host, seed)
        assert keyspace(host) == {**SEEDED, "lab": 0}, host
        assert len(cache_files(host)) == 5, host
    return mayday


def test_pattern_flush_keeps_sessions_and_reloads_php_fpm_gracefully(seeded: Mayday) -> None:
    before = snapshot()
    # Requests keep coming during the run: every one must be answered 200.
    traffic = subprocess.Popen(
        [DOCKER, "exec", PREFIX + "web1", "sh", "-c",
         "rm -f /tmp/stop; while [ ! -e /tmp/stop ]; do curl -s -o /dev/null -w '%{http_code}\\n' --max-time 5 "
         "http://127.0.0.1/health-check; done"], stdout=subprocess.PIPE, text=True)
    try:
        result = seeded.run("performance", "--pattern", "profile:*")
    finally:
        dexec("web1", "touch /tmp/stop")
        codes = traffic.communicate(timeout=30)[0].split()
    assert result.returncode == 0, output(result)
    report = seeded.last_report()
    assert report["outcome"] == "RECOVERED", report
    for host in WEB_HOSTS:
        assert keyspace(host) == {"profile": 0, "sess": SEEDED["sess"], "other": SEEDED["other"], "lab": 0}, host
        assert cache_files(host) == [], host
        master, workers = fpm_pids(host)
        assert master == before[host]["fpm"][0], f"{host}: php-fpm master restarted instead of reloaded"
        assert workers and not workers & before[host]["fpm"][1], f"{host}: php-fpm workers were not replaced"
        assert report["results"][host]["redis"]["deleted"] == SEEDED["profile"], report["results"][host]
        assert health(host).get("status") == "healthy"
    assert len(codes) > 20 and set(codes) == {"200"}, f"requests during the run: {codes}"


def test_pattern_matching_every_key_is_refused_and_nothing_changes(seeded: Mayday) -> None:
    before = snapshot()
    for pattern in ("*", "*?[ab]"):
        result = seeded.run("performance", "--pattern", pattern)
        assert result.returncode == 2, output(result)
        assert "every key" in " ".join(result.stderr.split()), output(result)
    plain = playbook(seeded, "-e", "pattern=*")
    assert plain.returncode != 0, output(plain)
    assert seeded.last_report()["outcome"] == "REFUSED"
    assert snapshot() == before


def test_dry_run_changes_nothing(seeded: Mayday) -> None:
    before = snapshot()
    result = seeded.run("performance", "--pattern", "profile:*", "--check")
    assert result.returncode == 0, output(result)
    report = seeded.last_report()
    assert report["outcome"] == "DRY-RUN", report
    assert snapshot() == before
    assert report["results"]["web1"]["redis"]["matched"] == SEEDED["profile"], report["results"]["web1"]


def test_bad_cache_entry_is_flushed_and_latency_recovers(seeded: Mayday) -> None:
    redis("web1", "SET", "lab:slow-ms", "700")
    assert latency_ms("web1") > 600
    result = seeded.run("performance", "--pattern", "lab:*", "--threshold-ms", "400", "--limit", "web1")
    assert result.returncode == 0, output(result)
    report = seeded.last_report()
    assert report["outcome"] == "RECOVERED", report
    assert keyspace("web1") == {**SEEDED, "lab": 0}
    assert latency_ms("web1") < 400
    assert report["results"]["web1"]["before"]["latency"][0]["median_ms"] > 600, report["results"]["web1"]
    assert keyspace("web2") == {**SEEDED, "lab": 0} and len(cache_files("web2")) == 5, "web2 was not in --limit"


def test_still_slow_says_so_and_escalate_level1_rolls_back(seeded: Mayday) -> None:
    # A slow release (not a cache problem): live perf-slow, v1 the good one before it.
    install_release(SLOW_RELEASE)
    for host in WEB_HOSTS:
        dexec(host, f"echo 700 > {APP}/releases/{SLOW_RELEASE}/.lab-slow-ms; cd {APP}/releases; for r in */; do "
                    f"r=${{r%/}}; case $r in v1|{SLOW_RELEASE}) ;; *) echo '{{}}' > $r/.mayday-failed ;; esac; done")
    try:
        result = seeded.run("performance", "--pattern", "profile:*", "--threshold-ms", "400")
        assert result.returncode == 1, output(result)
        report = seeded.last_report()
        assert report["outcome"] == "FAILED" and report["handover"] == "none", report
        assert all(current_release(h) == SLOW_RELEASE for h in WEB_HOSTS), "no escalation was asked"

        # The CLI's exit code and summary follow the hand-over: Level 1 recovered, so 0.
        escalated = seeded.run("performance", "--pattern", "profile:*", "--threshold-ms", "400", "--escalate",
                               "level1", "--json")
        reports = {r["scenario"]: r for r in seeded.reports()[-2:]}
        assert reports["performance"]["outcome"] == "FAILED", output(escalated)
        assert reports["performance"]["handover"] == "level1"
        assert reports["level1"]["outcome"] == "RECOVERED", output(escalated)
        assert escalated.returncode == 0, output(escalated)
        assert json.loads(escalated.stdout)["handed_over_to"] == {
            "incident": reports["level1"]["incident"], "scenario": "level1", "outcome": "RECOVERED"}
        # Level 1's own steps are in its own incident's timeline, not the performance one's.
        assert any(step["phase"] == "Rollback" for step in reports["level1"]["steps"]), reports["level1"]["steps"]
        for host in WEB_HOSTS:
            assert current_release(host) == "v1", host
            assert latency_ms(host) < 400, host
    finally:
        prune_test_releases()
        serve_by_hand("v1")
