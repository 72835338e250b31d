"""Level-1 benchmark: mayday against the raw bash job, paired, in the same run.

For each fleet size N the lab runs web1..webN and db1. Every round resets the fleet to "v2 live
and broken, v1 good" (not timed), then times one job; raw and mayday alternate, so drift hits both.

  raw:    per host in parallel (docker exec): flip current to v1, restart nginx, php-fpm
          (mariadb on db1), then one curl per web host (retried until the DB is back)
  mayday: `mayday level1 -i <fleet inventory>` (pre-flight, lock, incident record, rollback,
          verification, notification, report), and plain ansible-playbook for reference

Prints the medians and, as its last line, the ratio mayday/raw for the largest fleet.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOCKER = "/usr/bin/docker"
PREFIX = "mayday-lab-"


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)


def fleet_inventory(n: int, where: Path) -> Path:
    inv = where / f"fleet-{n}"
    inv.mkdir(parents=True, exist_ok=True)
    web = "\n".join(f"        web{i}:\n          ansible_host: {PREFIX}web{i}" for i in range(1, n + 1))
    (inv / "hosts.yml").write_text(
        "all:\n  children:\n    web:\n      hosts:\n" + web + "\n    db:\n      hosts:\n        db1:\n"
        f"          ansible_host: {PREFIX}db1\n")
    link = inv / "group_vars"
    if not link.exists():
        link.symlink_to(ROOT / "inventories" / "lab" / "group_vars")
    return inv


def each(hosts: list[str], script: str) -> list[subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        return list(pool.map(lambda h: sh([DOCKER, "exec", PREFIX + h, "bash", "-c", script]), hosts))


RESET = ("rm -f /var/www/app/releases/*/.mayday-failed && ln -sfn releases/v2 /var/www/app/current.reset "
         "&& mv -T /var/www/app/current.reset /var/www/app/current")
RAW_WEB = ("set -e; ln -sfn releases/v1 /var/www/app/current.raw && mv -T /var/www/app/current.raw "
           "/var/www/app/current; systemctl restart nginx; systemctl restart php8.2-fpm; "
           "curl -fsS -o /dev/null --retry 40 --retry-delay 0 --retry-all-errors --max-time 2 "
           "http://127.0.0.1/health-check")
RAW_DB = "systemctl restart mariadb"


def reset(web: list[str]) -> None:
    # Every round restarts the same services: clear systemd's start rate limit first (not timed).
    for r in each(web, RESET + " && systemctl reset-failed") + each(["db1"], "systemctl reset-failed"):
        if r.returncode != 0:
            raise SystemExit(f"reset failed: {r.stderr}")


def check_recovered(web: list[str]) -> None:
    probe = "readlink /var/www/app/current; curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1/health-check"
    for host, r in zip(web, each(web, probe), strict=True):
        if r.stdout.split() != ["releases/v1", "200"]:
            raise SystemExit(f"{host} not recovered after the job: {r.stdout!r}")


def raw_job(web: list[str]) -> float:
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(web) + 1) as pool:
        futures = [pool.submit(sh, [DOCKER, "exec", PREFIX + h, "bash", "-c", RAW_WEB]) for h in web]
        futures.append(pool.submit(sh, [DOCKER, "exec", PREFIX + "db1", "bash", "-c", RAW_DB]))
        results = [f.result() for f in futures]
    elapsed = time.monotonic() - t0
    if any(r.returncode for r in results):
        raise SystemExit(f"raw job failed: {[r.stderr for r in results if r.returncode]}")
    return elapsed


def mayday_job(inv: Path, state: Path, plain: bool) -> float:
    env = dict(os.environ, MAYDAY_STATE_DIR=str(state), ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    if plain:
        cmd = [str(BIN / "ansible-playbook"), "-i", str(inv), str(ROOT / "playbooks" / "rollback-level1.yml")]
    else:
        cmd = [str(BIN / "mayday"), "level1", "-i", str(inv), "--json"]
    t0 = time.monotonic()
    r = sh(cmd, env=env, cwd=ROOT)
    elapsed = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"mayday job failed ({' '.join(cmd)}):\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,10", help="fleet sizes (web hosts)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per job and size")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="mayday-bench-"))
    try:
        up = sh([str(BIN / "mayday"), "lab", "up", "--web", str(max(2, *sizes))], cwd=ROOT)
        if up.returncode != 0:
            raise SystemExit(up.stdout + up.stderr)
        results = {}
        for n in sizes:
            web = [f"web{i}" for i in range(1, n + 1)]
            inv = fleet_inventory(n, work)
            for playbook, extra in (("setup.yml", []), ("deploy.yml", ["-e", "lab_release=v1"]),
                                    ("deploy.yml", ["-e", "lab_release=v2", "-e", "lab_broken=true"])):
                r = sh([str(BIN / "ansible-playbook"), "-i", str(inv), str(ROOT / "playbooks" / "lab" / playbook),
                        *extra], cwd=ROOT, env=dict(os.environ, MAYDAY_STATE_DIR=str(work / "lab-state")))
                if r.returncode != 0:
                    raise SystemExit(r.stdout[-3000:])
            times: dict[str, list[float]] = {"raw": [], "mayday": [], "ansible-playbook": []}
            for round_no in range(args.rounds + 1):  # round 0 warms caches and is not counted
                order = ["raw", "mayday", "ansible-playbook"]
                if round_no % 2:
                    order.reverse()
                for job in order:
                    reset(web)
                    if job == "raw":
                        t = raw_job(web)
                    else:
                        t = mayday_job(inv, work / "state", plain=job == "ansible-playbook")
                    check_recovered(web)
                    if round_no:
                        times[job].append(t)
            med = {job: statistics.median(v) for job, v in times.items()}
            results[n] = {"median_s": med, "runs_s": times,
                          "ratio_mayday": med["mayday"] / med["raw"],
                          "ratio_ansible_playbook": med["ansible-playbook"] / med["raw"]}
            print(f"N={n:>2}  raw {med['raw']:.2f} s   mayday {med['mayday']:.2f} s   "
                  f"ansible-playbook {med['ansible-playbook']:.2f} s   "
                  f"ratio mayday/raw {results[n]['ratio_mayday']:.2f}   "
                  f"ansible-playbook/raw {results[n]['ratio_ansible_playbook']:.2f}", flush=True)
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        (out / "level1.json").write_text(json.dumps(results, indent=2))
        largest = max(sizes)
        print(f"ratio mayday/raw at N={largest}: {results[largest]['ratio_mayday']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
