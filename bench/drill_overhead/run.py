"""Drill harness overhead: what `mayday drill run` costs beyond the scenario it drills.

For each drill (default: level1 and level2-frontend), N runs (default 3) on the lab as an operator
starts them (`mayday drill run NAME --json`, the wall clock around the whole command). Per run:

  overhead = wall time - the scenario's own time - the detection wait

where the scenario's time is the recovery step's elapsed time (the `mayday` scenario the drill
started, or with `by: alert` the alert to the end of serve's run) and the detection wait is the time
to detect (fault injected -> first failing probe, or the alert firing). The issue's goal: under 3 s.
Also shown per run: where the overhead goes, from the journal's event times (start-up before the
journal opens, steady-state probes, injection, recovery probes and verification, cleanup, reports).
The summary gives the median (the goal is judged on it), mean, min and max per drill, the median per
stage, and the machine's 1-minute load average (on a shared machine the figures scale with it).

The lab must be up and healthy (`mayday lab up`; v1 live). Every run must pass; the script stops at
the first that does not. Results: bench/results/drill-overhead.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MAYDAY = str(ROOT / ".venv" / "bin" / "mayday")
GOAL_S = 3.0


def phases(doc: dict[str, Any], started_wall: float, ended_wall: float) -> dict[str, float]:
    """Seconds per stage from the journal's event times (an event is written when its step ends)."""
    evs = doc.get("events") or []

    def last(pred: Any) -> float | None:
        found = [e["at"] for e in evs if pred(e)]
        return max(found) if found else None

    ends = [("start-up (mayday, ansible-playbook, open)", evs[0]["at"] if evs else None),
            ("steady state", last(lambda e: e.get("phase") == "steady_before")),
            ("inject", last(lambda e: e.get("event") == "injected")),
            ("detect (not overhead)", last(lambda e: e.get("phase") == "detect")),
            ("scenario (not overhead)", last(lambda e: e.get("event") == "scenario")),
            ("recover probes, verify", last(lambda e: e.get("phase") in ("recover", "steady_after")
                                            and e.get("event") == "probe")),
            ("cleanup", last(lambda e: e.get("event") == "cleanup")),
            ("reports, exit", ended_wall)]
    out: dict[str, float] = {}
    previous = started_wall
    for name, at in ends:
        if at is not None:
            out[name] = round(max(at - previous, 0.0), 2)
            previous = at
    return out


def one_run(drill: str, env: dict[str, str]) -> dict[str, Any]:
    started_wall = time.time()
    started = time.monotonic()
    out = subprocess.run([MAYDAY, "drill", "run", drill, "--json"], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=False, timeout=900)
    wall = time.monotonic() - started
    ended_wall = time.time()
    try:
        summary = json.loads(out.stdout)
    except ValueError:
        raise SystemExit(f"{drill}: no summary (exit {out.returncode}):\n{out.stderr[-2000:]}") from None
    if summary.get("verdict") != "PASSED":
        raise SystemExit(f"{drill}: {summary.get('verdict')}: {summary.get('reasons')}")
    directory = Path(summary["report"]).parent
    doc = json.loads((directory / "journal.json").read_text())
    scenario: dict[str, Any] = next((e for e in doc["events"] if e.get("event") == "scenario"), {})
    scenario_s = float(scenario.get("elapsed_s") or 0.0)
    detect_s = float(summary["figures"].get("time_to_detect_s") or 0.0)
    overhead = wall - scenario_s - detect_s
    return {"drill": drill, "run_id": summary["run_id"], "wall_s": round(wall, 2), "scenario_s": round(scenario_s, 2),
            "time_to_detect_s": round(detect_s, 2), "time_to_recover_s": summary["figures"].get("time_to_recover_s"),
            "overhead_s": round(overhead, 2), "journal_harness_s": summary["figures"].get("harness_s"),
            "phases": phases(doc, started_wall, ended_wall), "load_1m": round(os.getloadavg()[0], 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("drills", nargs="*", default=["level1", "level2-frontend"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "drill-overhead.json")
    args = parser.parse_args()
    env = dict(os.environ)
    env.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))
    results: list[dict[str, Any]] = []
    for drill in args.drills:
        for index in range(args.runs):
            run = one_run(drill, env)
            results.append(run)
            print(f"{drill} #{index + 1}: wall {run['wall_s']} s = scenario {run['scenario_s']} s + detect "
                  f"{run['time_to_detect_s']} s + overhead {run['overhead_s']} s (load {run['load_1m']}); "
                  f"{run['phases']}", flush=True)
    summary = []
    print(f"\n{'drill':<18} {'runs':>4} {'median':>7} {'mean':>6} {'min':>6} {'max':>6} {'goal':>5} {'ratio':>6}  "
          "median per stage")
    for drill in args.drills:
        mine = [r for r in results if r["drill"] == drill]
        values = [r["overhead_s"] for r in mine]
        median = statistics.median(values)
        stages = {name: round(statistics.median(r["phases"].get(name, 0.0) for r in mine), 2)
                  for name in mine[0]["phases"]}
        row = {"drill": drill, "runs": len(values), "overhead_median_s": round(median, 2),
               "overhead_mean_s": round(statistics.mean(values), 2), "overhead_min_s": round(min(values), 2),
               "overhead_max_s": round(max(values), 2), "goal_s": GOAL_S, "ratio_to_goal": round(median / GOAL_S, 2),
               "stages_median_s": stages, "load_1m": round(os.getloadavg()[0], 1)}
        summary.append(row)
        print(f"{drill:<18} {len(values):>4} {median:>6.2f}s {row['overhead_mean_s']:>5.2f}s {min(values):>5.2f}s "
              f"{max(values):>5.2f}s {GOAL_S:>4.0f}s {row['ratio_to_goal']:>6.2f}  {stages}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "goal_s": GOAL_S, "summary": summary, "runs": results}, indent=1) + "\n")
    print(f"results: {args.out}")
    return 0 if all(r["overhead_median_s"] < GOAL_S for r in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
