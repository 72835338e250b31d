"""Long-query benchmark: `mayday db kill-long` against the same pg_terminate_backend SQL typed by hand.

Each round, not timed: a holder process on pg1 opens 220 sessions as the app's role, straight to
PostgreSQL (200 idle, 20 running `pg_sleep(600)`), and waits until the 20 statements are older than
the threshold. Then one job is timed; raw and mayday alternate, so drift hits both:

  raw:    docker exec pg1 psql -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE
          <client backend, active, older than the threshold, not postgres>"
  mayday: `mayday db kill-long --limit pg1 --older-than 2s --max-victims 25 --grace 1 --json`, CLI
          start to report (open, lock, list, judge, cancel, wait, terminate the rest, list again,
          incident record), and plain ansible-playbook for reference

After each job: no long statement runs and (mayday) the 200 idle sessions are all still there.
Prints the medians, the host-side kill (the module's own steps, from the incident record) and, as
its last line, the ratio mayday/raw. Results: bench/results/kill-long.json.
"""

from __future__ import annotations

import argparse
import json
import os
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
PG1 = f"{LAB}-pg1"
PASSWORD = os.environ.get("MAYDAY_LAB_DB_PASSWORD") or "lab-only-not-a-secret"
IDLE, ACTIVE, OLDER_S = 200, 20, 2
PSQL = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t", "-d", "postgres", "-c"]
RAW_SQL = ("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE backend_type = 'client backend' "
           f"AND state = 'active' AND now() - query_start >= interval '{OLDER_S} seconds' "
           "AND pid <> pg_backend_pid() AND usename <> 'postgres'")
# Runs inside pg1: opens the sessions, says "ready", then holds them until its stdin closes.
HOLDER = f"""
import sys, threading, psycopg2
def connect():
    conn = psycopg2.connect(host="/var/run/postgresql", dbname="app", user="app", password=sys.argv[1])
    conn.autocommit = True
    return conn
idle = [connect() for _ in range({IDLE})]
for conn in idle:
    conn.cursor().execute("SELECT 1")
def sleep(conn):
    try:
        conn.cursor().execute("SELECT pg_sleep(600), 'bench-kill-long'")
    except psycopg2.Error:
        pass  # cancelled or terminated: what the job does
active = [connect() for _ in range({ACTIVE})]
for conn in active:
    threading.Thread(target=sleep, args=(conn,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)


def sql(query: str) -> str:
    out = sh([DOCKER, "exec", PG1, *PSQL, query])
    if out.returncode != 0:
        raise SystemExit(f"psql failed: {out.stderr}")
    return out.stdout.strip()


def app_sessions() -> dict[str, int]:
    rows = sql("SELECT state, count(*) FROM pg_stat_activity WHERE usename = 'app' GROUP BY state")
    return {state: int(n) for state, n in (line.split("|") for line in rows.splitlines() if line)}


def clear() -> None:
    sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'")
    deadline = time.monotonic() + 30
    while app_sessions():
        if time.monotonic() > deadline:
            raise SystemExit(f"app sessions left: {app_sessions()}")
        time.sleep(0.2)


def hold() -> subprocess.Popen[str]:
    clear()
    proc = subprocess.Popen([DOCKER, "exec", "-i", PG1, "python3", "-c", HOLDER, PASSWORD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise SystemExit(f"holder failed: {line} {proc.stderr.read() if proc.stderr else ''}")
    deadline = time.monotonic() + 30
    while app_sessions() != {"idle": IDLE, "active": ACTIVE}:
        if time.monotonic() > deadline:
            raise SystemExit(f"sessions not held as expected: {app_sessions()}")
        time.sleep(0.1)
    time.sleep(OLDER_S + 0.5)  # every statement is past the threshold
    return proc


def release(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(timeout=30)
    clear()


def raw_job() -> float:
    t0 = time.monotonic()
    out = sh([DOCKER, "exec", PG1, *PSQL, RAW_SQL])
    elapsed = time.monotonic() - t0
    if out.returncode != 0 or out.stdout.strip() != str(ACTIVE):
        raise SystemExit(f"raw job failed: {out.stdout} {out.stderr}")
    return elapsed


def mayday_job(state: Path, plain: bool) -> tuple[float, dict]:
    env = dict(os.environ, MAYDAY_STATE_DIR=str(state), ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    args = {"older_than": f"{OLDER_S}s", "max_victims": str(ACTIVE + 5), "grace": "1"}
    if plain:
        cmd = [str(BIN / "ansible-playbook"), str(ROOT / "playbooks" / "db-kill-long-queries.yml"), "--limit", "pg1",
               "-e", json.dumps(args)]
        if LAB != "mayday-lab":
            cmd += ["-e", json.dumps({"ansible_host": LAB + "-{{ inventory_hostname }}"})]
    else:
        cmd = [str(BIN / "mayday"), "db", "kill-long", "--limit", "pg1", "--older-than", args["older_than"],
               "--max-victims", args["max_victims"], "--grace", args["grace"], "--json"]
    t0 = time.monotonic()
    r = sh(cmd, env=env, cwd=ROOT)
    elapsed = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"mayday job failed ({' '.join(cmd)}):\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    reports = sorted((state / "incidents").glob("*/report.json"), key=lambda p: p.stat().st_mtime)
    return elapsed, json.loads(reports[-1].read_text())


def host_kill_s(report: dict) -> float:
    """The module's own kill on the host: its top-level step in the incident timeline."""
    return sum(s["duration_s"] for s in report.get("steps", [])
               if s.get("host") == "pg1" and s.get("phase") == "Kill" and s.get("step", "").startswith("cancel, then"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per job")
    args = ap.parse_args()
    up = sh([str(BIN / "mayday"), "lab", "up"], cwd=ROOT)
    if up.returncode != 0:
        raise SystemExit(up.stdout + up.stderr)
    need = IDLE + ACTIVE + 10
    if int(sql("SHOW max_connections")) < need:
        raise SystemExit(f"pg1 takes fewer than {need} sessions: run playbooks/lab/setup.yml (it sets 300)")
    times: dict[str, list[float]] = {"raw": [], "mayday": [], "ansible-playbook": []}
    host_kill: list[float] = []
    with tempfile.TemporaryDirectory(prefix="mayday-bench-kill-") as work:
        state = Path(work)
        for round_no in range(args.rounds + 1):  # round 0 warms caches and is not counted
            order = ["raw", "mayday", "ansible-playbook"]
            if round_no % 2:
                order.reverse()
            for job in order:
                proc = hold()
                try:
                    if job == "raw":
                        t = raw_job()
                    else:
                        t, report = mayday_job(state, plain=job == "ansible-playbook")
                        cut = report["results"]["pg1"]["victims"]
                        if report["outcome"] != "RECOVERED" or len(cut) != ACTIVE:
                            raise SystemExit(f"{job}: {report['outcome']}, {len(cut)} victims: {report['summary']}")
                        if app_sessions().get("idle", 0) != IDLE + ACTIVE:  # cancelled: idle, kept
                            raise SystemExit(f"{job}: sessions after the run: {app_sessions()}")
                        if round_no and job == "mayday":
                            host_kill.append(host_kill_s(report))
                    if app_sessions().get("active"):
                        raise SystemExit(f"{job}: long statements still running: {app_sessions()}")
                    if round_no:
                        times[job].append(t)
                finally:
                    release(proc)
    med = {job: statistics.median(v) for job, v in times.items()}
    results = {"sessions": {"idle": IDLE, "active": ACTIVE}, "older_than_s": OLDER_S, "median_s": med,
               "runs_s": times, "host_kill_median_s": statistics.median(host_kill),
               "ratio_mayday": med["mayday"] / med["raw"],
               "ratio_ansible_playbook": med["ansible-playbook"] / med["raw"],
               "ratio_host_kill": statistics.median(host_kill) / med["raw"]}
    print(f"raw {med['raw']:.2f} s   mayday {med['mayday']:.2f} s   ansible-playbook {med['ansible-playbook']:.2f} s"
          f"   host-side kill (module) {results['host_kill_median_s']:.2f} s")
    print(f"ratio ansible-playbook/raw {results['ratio_ansible_playbook']:.2f}   "
          f"host-side kill/raw {results['ratio_host_kill']:.2f}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "kill-long.json").write_text(json.dumps(results, indent=2))
    print(f"ratio mayday/raw: {results['ratio_mayday']:.2f}")


if __name__ == "__main__":
    main()
