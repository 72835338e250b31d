"""Database restore benchmark: mayday's verified, interruption-safe restore against the native tool.

A dedicated container (not the lab's db1) holds a MariaDB database whose plain SQL dump is at
least 300 MB. Each round, not timed: the live database is changed (a bad migration). Then, timed
and alternating:

  native: `mariadb <scratch db> < dump` (the same dump file, into an empty database)
  mayday: `ansible-playbook playbooks/db-restore.yml` (verify the backup, safety backup of the live
          database, restore into a shadow, verify it, swap, verify the live database)

Prints each phase of mayday's run from the incident record, then the two ratios the issue sets
goals for: restore phase / native (goal <= 1.2) and whole job / native (goal <= 2.5).
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
NAME = "mayday-bench-db1"
SYSTEMD = ["--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
           "--tmpfs", "/run", "--tmpfs", "/run/lock", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro"]


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(cmd), capture_output=True, text=True, check=False, **kw)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)[:200]} failed: {out.stdout[-1500:]}{out.stderr[-1500:]}")
    return out


def inside(script: str) -> str:
    return sh(DOCKER, "exec", NAME, "bash", "-c", script).stdout


def start_container() -> None:
    subprocess.run([DOCKER, "rm", "-f", NAME], capture_output=True, check=False)
    sh(DOCKER, "run", "-d", "--name", NAME, "--hostname", "bench-db1", *SYSTEMD, "mayday-lab-db:latest")
    for _ in range(120):
        state = subprocess.run([DOCKER, "exec", NAME, "mariadb", "-e", "SELECT 1"], capture_output=True, check=False)
        if state.returncode == 0:
            return
        time.sleep(0.5)
    raise SystemExit("bench container did not start MariaDB")


def load_data(rows: int) -> None:
    inside("mariadb -e 'CREATE DATABASE app'")
    inside("mariadb app -e \"CREATE TABLE orders (id INT PRIMARY KEY, customer_id INT, amount DECIMAL(10,2), "
           "ref CHAR(32), note VARCHAR(200), created_at DATETIME)\"")
    step = 500_000
    for first in range(1, rows + 1, step):
        last = min(rows, first + step - 1)
        inside(f"mariadb app -e \"INSERT INTO orders SELECT seq, 1 + seq MOD 50000, (seq * 37) MOD 100000 / 100, "
               f"MD5(seq), CONCAT(MD5(seq * 7), MD5(seq * 11), MD5(seq * 13)), "
               f"'2026-01-01' + INTERVAL seq SECOND FROM seq_{first}_to_{last}\"")


def inventory(where: Path) -> Path:
    inv = where / "bench-inventory"
    inv.mkdir()
    (inv / "hosts.yml").write_text(f"all:\n  children:\n    db:\n      hosts:\n        bench-db1:\n"
                                   f"          ansible_host: {NAME}\n")
    (inv / "group_vars").symlink_to(ROOT / "inventories" / "lab" / "group_vars")
    return inv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000, help="rows in the benchmark table")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds of each job")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mayday-dbbench-"))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), MAYDAY_STATE_DIR=str(work / "state"))
    try:
        start_container()
        load_data(args.rows)
        inv = inventory(work)
        sh(str(BIN / "ansible-playbook"), "-i", str(inv), str(ROOT / "playbooks" / "db-backup.yml"), env=env, cwd=ROOT)
        manifest = json.loads(inside("cat /var/backups/mayday/mariadb-app-*[0-9]Z.manifest.json | head -c 100000"))
        dump = f"/var/backups/mayday/{manifest['file']}"
        print(f"dump {manifest['file']}: {manifest['size'] / 1e6:.0f} MB, "
              f"{sum(t['rows'] for t in manifest['tables'].values())} rows", flush=True)
        native: list[float] = []
        whole: list[float] = []
        phases: dict[str, list[float]] = {}
        for round_no in range(args.rounds):
            for job in (["native", "mayday"] if round_no % 2 == 0 else ["mayday", "native"]):
                if job == "native":
                    inside("mariadb -e 'DROP DATABASE IF EXISTS scratch; CREATE DATABASE scratch'")
                    t0 = time.monotonic()
                    inside(f"mariadb scratch < {dump}")
                    native.append(time.monotonic() - t0)
                    inside("mariadb -e 'DROP DATABASE scratch'")
                    continue
                # A bad migration, and room on disk: drop what earlier rounds kept (not timed).
                inside("mariadb app -e 'UPDATE orders SET amount = 0 WHERE id % 9 = 0'; "
                       "for d in $(mariadb -N -B -e \"SHOW DATABASES LIKE 'app__mayday_pre_%'\"); do "
                       "mariadb -e \"DROP DATABASE $d\"; done; rm -f /var/backups/mayday/*-safety*")
                t0 = time.monotonic()
                sh(str(BIN / "ansible-playbook"), "-i", str(inv), str(ROOT / "playbooks" / "db-restore.yml"),
                   env=env, cwd=ROOT)
                whole.append(time.monotonic() - t0)
                reports = sorted((work / "state" / "incidents").glob("*/report.json"))
                report = json.loads(reports[-1].read_text())
                assert report["outcome"] == "RECOVERED", report["outcome"]
                for step in report["steps"]:
                    if step["host"] == "bench-db1" and step["step"].startswith("  "):
                        phases.setdefault(step["step"].strip().split(" (")[0], []).append(step["duration_s"])
        restore_key = next(k for k in phases if k.startswith("restore "))
        med_native, med_whole = statistics.median(native), statistics.median(whole)
        med_restore = statistics.median(phases[restore_key])
        print(f"native restore (mariadb < dump): median {med_native:.1f} s  runs {[round(x, 1) for x in native]}")
        print(f"mayday whole job (ansible-playbook db-restore.yml): median {med_whole:.1f} s  "
              f"runs {[round(x, 1) for x in whole]}")
        for name, values in phases.items():
            print(f"  phase {name[:70]:<70} median {statistics.median(values):7.2f} s")
        print(f"ratio restore phase / native: {med_restore / med_native:.2f} (goal <= 1.2)")
        print(f"ratio whole job / native: {med_whole / med_native:.2f} (goal <= 2.5)")
    finally:
        subprocess.run([DOCKER, "rm", "-f", NAME], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
