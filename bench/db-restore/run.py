"""Database restore benchmark: mayday's verified, interruption-safe restore against the native tool.

A dedicated container (not the lab's) holds a database whose dump is at least 300 MB (MariaDB:
plain SQL; PostgreSQL: custom format). Each round, not timed: the live database is changed (a bad
migration). Then, timed and alternating:

  native: the best plain invocation of the engine's own tool on the same file, into an empty
          database: `mariadb scratch < dump`, `pg_restore -j <cores> -d scratch dump`
  mayday: `ansible-playbook playbooks/db-restore.yml` (verify the backup, restore into a shadow,
          verify it, stop writes, swap, resume writes, verify the live database, then the safety
          dump of the replaced database)

Prints each phase of mayday's run from the incident record, the time writes were stopped, and the
ratios the issue sets goals for: restore phase / native (goal <= 1.1), whole job / native (goal
<= 1.5), writes stopped (goal < 1 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
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
ENGINES = {
    "mariadb": {
        "image": "mayday-lab-db:latest", "group": "db", "ext": "sql",
        "ready": "mariadb -e 'SELECT 1'",
        "sql": "mariadb app -e {q}", "admin": "mariadb -e {q}",
        "create_table": "CREATE TABLE orders (id INT PRIMARY KEY, customer_id INT, amount DECIMAL(10,2), "
                        "ref CHAR(32), note VARCHAR(200), created_at DATETIME)",
        "fill": "INSERT INTO orders SELECT seq, 1 + seq MOD 50000, (seq * 37) MOD 100000 / 100, MD5(seq), "
                "CONCAT(MD5(seq * 7), MD5(seq * 11), MD5(seq * 13)), '2026-01-01' + INTERVAL seq SECOND "
                "FROM seq_{first}_to_{last}",
        "native": "mariadb -e 'DROP DATABASE IF EXISTS scratch; CREATE DATABASE scratch'",
        "native_run": "mariadb scratch < {dump}",
        "native_drop": "mariadb -e 'DROP DATABASE scratch'",
        "cleanup": "for d in $(mariadb -N -B -e \"SHOW DATABASES LIKE 'app__mayday_pre_%'\"); do "
                   "mariadb -e \"DROP DATABASE $d\"; done",
    },
    "postgresql": {
        "image": "mayday-lab-pg:latest", "group": "pg", "ext": "pgdump",
        "ready": "runuser -u postgres -- psql -c 'SELECT 1'",
        "sql": "runuser -u postgres -- psql -q -d app -c {q}", "admin": "runuser -u postgres -- psql -q -c {q}",
        "create_table": "CREATE TABLE orders (id INT PRIMARY KEY, customer_id INT, amount NUMERIC(10,2), "
                        "ref CHAR(32), note VARCHAR(200), created_at TIMESTAMP)",
        "fill": "INSERT INTO orders SELECT g, 1 + g % 50000, (g * 37) % 100000 / 100.0, md5(g::text), "
                "md5((g * 7)::text) || md5((g * 11)::text) || md5((g * 13)::text), "
                "'2026-01-01'::timestamp + g * interval '1 second' FROM generate_series({first}, {last}) g",
        "native": "runuser -u postgres -- psql -q -c 'DROP DATABASE IF EXISTS scratch' -c 'CREATE DATABASE scratch'",
        # A copy the postgres user can open by name (the backup directory is root's, 0700), made untimed.
        "native_prepare": "install -o postgres -m 0600 {dump} /var/lib/postgresql/native.pgdump",
        "native_run": "runuser -u postgres -- pg_restore -j $(nproc) -d scratch /var/lib/postgresql/native.pgdump",
        "native_drop": "runuser -u postgres -- psql -q -c 'DROP DATABASE scratch'",
        "cleanup": "for d in $(runuser -u postgres -- psql -At -c \"SELECT datname FROM pg_database "
                   "WHERE datname LIKE 'app__mayday_pre_%'\"); do runuser -u postgres -- psql -q -c "
                   "\"DROP DATABASE \\\"$d\\\"\"; done",
    },
}
NAME = "mayday-bench-db1"
WRITES_STOPPED = ("stop writes", "swap in", "resume writes")  # the restore's steps while writes wait
SYSTEMD = ["--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
           "--tmpfs", "/run", "--tmpfs", "/run/lock", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro"]


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(cmd), capture_output=True, text=True, check=False, **kw)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)[:200]} failed: {out.stdout[-1500:]}{out.stderr[-1500:]}")
    return out


def inside(script: str) -> str:
    return sh(DOCKER, "exec", NAME, "bash", "-c", script).stdout


def start_container(eng: dict) -> None:
    subprocess.run([DOCKER, "rm", "-f", NAME], capture_output=True, check=False)
    sh(DOCKER, "run", "-d", "--name", NAME, "--hostname", "bench-db1", *SYSTEMD, eng["image"])
    for _ in range(120):
        state = subprocess.run([DOCKER, "exec", NAME, "bash", "-c", eng["ready"]], capture_output=True, check=False)
        if state.returncode == 0:
            return
        time.sleep(0.5)
    raise SystemExit("bench container did not start its database")


def load_data(eng: dict, rows: int) -> None:
    step = 500_000
    inside(eng["sql"].format(q=shlex.quote(eng["create_table"])))
    for first in range(1, rows + 1, step):
        last = min(rows, first + step - 1)
        inside(eng["sql"].format(q=shlex.quote(eng["fill"].format(first=first, last=last))))


def inventory(where: Path, eng: dict) -> Path:
    inv = where / "bench-inventory"
    inv.mkdir()
    (inv / "hosts.yml").write_text(f"all:\n  children:\n    {eng['group']}:\n      hosts:\n        bench-db1:\n"
                                   f"          ansible_host: {NAME}\n")
    (inv / "group_vars").symlink_to(ROOT / "inventories" / "lab" / "group_vars")
    return inv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000, help="rows in the benchmark table")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds of each job")
    ap.add_argument("--engine", choices=sorted(ENGINES), default="mariadb")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mayday-dbbench-"))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), MAYDAY_STATE_DIR=str(work / "state"))
    try:
        eng = ENGINES[args.engine]
        start_container(eng)
        inv = inventory(work, eng)
        # The lab's set-up gives the container its app database (and, for PostgreSQL, pgbouncer).
        sh(str(BIN / "ansible-playbook"), "-i", str(inv), str(ROOT / "playbooks" / "lab" / "setup.yml"), env=env,
           cwd=ROOT)
        load_data(eng, args.rows)
        sh(str(BIN / "ansible-playbook"), "-i", str(inv), str(ROOT / "playbooks" / "db-backup.yml"), env=env, cwd=ROOT)
        manifest = json.loads(inside(f"cat /var/backups/mayday/{args.engine}-app-*[0-9]Z.manifest.json"))
        dump = f"/var/backups/mayday/{manifest['file']}"
        if eng.get("native_prepare"):
            inside(eng["native_prepare"].format(dump=dump))
        print(f"dump {manifest['file']}: {manifest['size'] / 1e6:.0f} MB, "
              f"{sum(t['rows'] for t in manifest['tables'].values())} rows", flush=True)
        native: list[float] = []
        whole: list[float] = []
        phases: dict[str, list[float]] = {}
        for round_no in range(args.rounds):
            for job in (["native", "mayday"] if round_no % 2 == 0 else ["mayday", "native"]):
                if job == "native":
                    inside(eng["native"])
                    t0 = time.monotonic()
                    inside(eng["native_run"].format(dump=dump))
                    native.append(time.monotonic() - t0)
                    inside(eng["native_drop"])
                    continue
                # A bad migration, and room on disk: drop what earlier rounds kept (not timed).
                inside(eng["sql"].format(q=shlex.quote("UPDATE orders SET amount = 0 WHERE id % 9 = 0")))
                inside(eng["cleanup"] + "; rm -f /var/backups/mayday/*-safety*")
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
        tool = eng["native_run"].split(" <")[0]
        print(f"native restore ({tool}): median {med_native:.1f} s  runs {[round(x, 1) for x in native]}")
        print(f"mayday whole job (ansible-playbook db-restore.yml): median {med_whole:.1f} s  "
              f"runs {[round(x, 1) for x in whole]}")
        for name, values in phases.items():
            print(f"  phase {name[:70]:<70} median {statistics.median(values):7.2f} s")
        stopped = [sum(v[i] for k, v in phases.items() if k.startswith(WRITES_STOPPED) and len(v) > i)
                   for i in range(len(whole))]
        print(f"writes stopped (stop writes, swap, resume writes): median {statistics.median(stopped):.2f} s "
              "(goal < 1 s)")
        print(f"ratio restore phase / native: {med_restore / med_native:.2f} (goal <= 1.1)")
        print(f"ratio whole job / native: {med_whole / med_native:.2f} (goal <= 1.5)")
    finally:
        subprocess.run([DOCKER, "rm", "-f", NAME], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
