"""Redis pattern-flush benchmark: mayday's flush against redis-cli, paired, in the same run.

On one lab web host, Redis holds 1,000,000 keys: 900,000 k:<n> that stay and 100,000 p:<n> that
every job deletes (re-seeded before each job, not timed). Jobs alternate, so drift hits both.

  raw:    docker exec <web1> sh -c "redis-cli --scan --pattern 'p:*' | xargs redis-cli unlink"
  mayday: ansible-playbook bench/redis_flush/flush.yml: the performance scenario's Redis step alone
          (module mayday_cache_flush: SCAN COUNT 1000 + UNLINK, each UNLINK pipelined with the next
          SCAN), ansible's start-up and the module's transfer included.

Timed: the flush itself, not the whole `mayday performance` run, whose latency samples, php-fpm
reload and incident record have no counterpart in the raw job. Prints the medians, the module's own
flush time, and, as its last line, the ratio mayday/raw (the goal: at most 1.5).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOCKER = "/usr/bin/docker"
LAB = os.environ.get("MAYDAY_LAB_NAME") or "mayday-lab"
HOST = "web1"
CONTAINER = f"{LAB}-{HOST}"
PASSWORD = os.environ.get("MAYDAY_LAB_REDIS_PASSWORD") or "lab-redis-not-a-secret"
KEEP, MATCH = 900_000, 100_000
STATE = tempfile.mkdtemp(prefix="mayday-bench-redis-")  # the timeline callback's run records


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)


def in_lab(script: str) -> subprocess.CompletedProcess[str]:
    return sh([DOCKER, "exec", "-e", f"REDISCLI_AUTH={PASSWORD}", CONTAINER, "sh", "-c", script])


def seed(prefix: str, count: int) -> None:
    # Inline commands through --pipe: a million SETs in a few seconds.
    r = in_lab(f"seq 1 {count} | awk '{{printf \"SET {prefix}:%d v\\r\\n\", $1}}' | redis-cli --pipe")
    if r.returncode != 0:
        raise SystemExit(f"seeding {prefix}:* failed: {r.stderr or r.stdout}")


def dbsize() -> int:
    return int(in_lab("redis-cli DBSIZE").stdout.strip())


def check_flushed() -> None:
    left = int(in_lab("redis-cli --scan --pattern 'p:*' --count 1000 | wc -l").stdout.strip())
    if left or dbsize() != KEEP:
        raise SystemExit(f"flush incomplete: {left} p:* keys left, DBSIZE {dbsize()} (expected {KEEP})")


def raw_job() -> float:
    t0 = time.monotonic()
    r = in_lab("redis-cli --scan --pattern 'p:*' | xargs redis-cli unlink >/dev/null")
    elapsed = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"raw job failed: {r.stderr}")
    return elapsed


def mayday_job() -> tuple[float, float]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
               MAYDAY_STATE_DIR=STATE, MAYDAY_LAB_NAME=LAB)
    t0 = time.monotonic()
    r = sh([str(BIN / "ansible-playbook"), str(ROOT / "bench" / "redis_flush" / "flush.yml"), "-e",
            f"bench_host={HOST}"], env=env, cwd=ROOT)
    elapsed = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"mayday job failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    result = json.loads(r.stdout)["plays"][0]["tasks"][0]["hosts"][HOST]
    if result["report"]["deleted"] != MATCH:
        raise SystemExit(f"mayday deleted {result['report']['deleted']} keys, expected {MATCH}")
    return elapsed, result["report"]["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per job")
    args = ap.parse_args()
    if in_lab("redis-cli PING").stdout.strip() != "PONG":
        raise SystemExit(f"Redis does not answer on {CONTAINER}: run `mayday lab up` first")
    in_lab("redis-cli FLUSHDB")
    seed("k", KEEP)
    times: dict[str, list[float]] = {"raw": [], "mayday": []}
    module_s: list[float] = []
    try:
        for round_no in range(args.rounds + 1):  # round 0 warms caches and is not counted
            order = ["raw", "mayday"] if round_no % 2 == 0 else ["mayday", "raw"]
            for job in order:
                seed("p", MATCH)
                if dbsize() != KEEP + MATCH:
                    raise SystemExit(f"seeding left DBSIZE {dbsize()}, expected {KEEP + MATCH}")
                if job == "raw":
                    t = raw_job()
                else:
                    t, inner = mayday_job()
                    if round_no:
                        module_s.append(inner)
                check_flushed()
                if round_no:
                    times[job].append(t)
    finally:
        in_lab("redis-cli FLUSHDB ASYNC")  # the lab's cache is disposable; a million keys are not
        shutil.rmtree(STATE, ignore_errors=True)
    med = {job: statistics.median(v) for job, v in times.items()}
    ratio = med["mayday"] / med["raw"]
    results = {"keys": KEEP + MATCH, "matching": MATCH, "median_s": med, "runs_s": times,
               "module_flush_median_s": statistics.median(module_s), "module_flush_s": module_s, "ratio": ratio}
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "redis-flush.json").write_text(json.dumps(results, indent=2))
    print(f"raw {med['raw']:.2f} s   mayday {med['mayday']:.2f} s (module's own flush "
          f"{results['module_flush_median_s']:.2f} s)")
    print(f"ratio mayday/raw: {ratio:.2f}")


if __name__ == "__main__":
    main()
