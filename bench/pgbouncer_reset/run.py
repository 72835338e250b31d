"""pgbouncer reset benchmark: a graceful reset under pgbench must cost no transaction and no client.

On the lab's pg1 (`mayday lab up` first; MAYDAY_LAB_NAME picks another lab), pgbouncer is switched
to transaction pooling for the benchmark and back afterwards. Each round, in the same run:

  baseline: `mayday lab load` (pgbench, 16 clients, through pgbouncer) with no reset
  graceful: the same load, and `ansible-playbook playbooks/pgbouncer-reset.yml -e mode=graceful`
            started during it
  hard:     the same load and `-e mode=hard`: the clients it drops are counted

Prints failed transactions and aborted clients (goal for graceful: 0 and 0), the longest client
stall (the longest transaction pgbench logged) against the baseline's longest transaction (goal:
at most 1 s more), and hard mode's dropped clients beside pgbench's aborted ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "cli"))
from mayday import lab  # noqa: E402  (the lab's own helpers: container names, the load)

BIN = Path(sys.executable).parent
POOL_MODE = "sed -i 's/^pool_mode = .*//; s/^\\[pgbouncer\\]$/[pgbouncer]\\npool_mode = {mode}/' " \
            "/etc/pgbouncer/pgbouncer.ini && systemctl reload pgbouncer"


def pg1(script: str) -> str:
    return lab.docker("exec", lab.prefix() + "pg1", "bash", "-c", script).stdout


def reset(mode: str, state: Path, env: dict[str, str]) -> dict[str, Any]:
    inventory = ["-i", str(ROOT / "inventories" / "lab")]
    out = subprocess.run([str(BIN / "ansible-playbook"), str(ROOT / "playbooks" / "pgbouncer-reset.yml"),
                          *inventory, "--limit", "pg1", "-e", f"mode={mode}", "-e", "timeout=10"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=300)
    report = json.loads(sorted((state / "incidents").glob("*/report.json"))[-1].read_text())
    return {"rc": out.returncode, "outcome": report["outcome"], "result": report["results"].get("pg1") or {}}


def loaded(mode: str | None, clients: int, seconds: int, state: Path, env: dict[str, str]) -> dict[str, Any]:
    """pgbench for `seconds`; the reset (if any) starts a quarter of the way in."""
    found: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: found.update(load=lab.load("postgresql", clients, seconds)))
    worker.start()
    if mode:
        time.sleep(seconds / 4)
        found["reset"] = reset(mode, state, env)
    worker.join()
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=20)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mayday-pgbbench-"))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), MAYDAY_STATE_DIR=str(work / "state"))
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "graceful": [], "hard": []}
    pg1(POOL_MODE.format(mode="transaction"))
    try:
        for round_no in range(args.rounds):
            order = ["baseline", "graceful", "hard"] if round_no % 2 == 0 else ["graceful", "baseline", "hard"]
            for kind in order:
                runs[kind].append(loaded(None if kind == "baseline" else kind, args.clients, args.seconds,
                                         work / "state", env))
    finally:
        pg1(POOL_MODE.format(mode="session"))
    for kind, found in runs.items():
        loads = [f["load"] for f in found]
        line = (f"{kind:<9} failed transactions {[x['failed'] for x in loads]}  aborted clients "
                f"{[x['aborted_clients'] for x in loads]}  longest transaction (s) "
                f"{[round(x['max_latency_s'], 3) for x in loads]}  processed {[x['processed'] for x in loads]}")
        if kind != "baseline":
            line += f"  outcome {[f['reset']['outcome'] for f in found]}"
        if kind == "hard":
            line += f"  dropped by KILL {[f['reset']['result'].get('dropped') for f in found]}"
        print(line)
    base = statistics.median(x["load"]["max_latency_s"] for x in runs["baseline"])
    graceful = [x["load"] for x in runs["graceful"]]
    stall = max(x["max_latency_s"] for x in graceful)
    print(f"graceful: failed transactions {sum(x['failed'] for x in graceful)}, aborted clients "
          f"{sum(x['aborted_clients'] for x in graceful)} (goal 0 and 0)")
    print(f"graceful: longest client stall {stall:.3f} s; longest transaction without a reset {base:.3f} s; "
          f"stall beyond it {stall - base:.3f} s (goal <= 1 s)")
    hard = runs["hard"]
    print(f"hard: dropped by KILL (report) {[x['reset']['result'].get('dropped') for x in hard]}, "
          f"aborted pgbench clients {[x['load']['aborted_clients'] for x in hard]}")


if __name__ == "__main__":
    main()
