"""Helpers for the CLI tests against the real lab: docker exec, host snapshots, running mayday."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
MAYDAY = str(VENV_BIN / "mayday")
ANSIBLE_PLAYBOOK = str(VENV_BIN / "ansible-playbook")
DOCKER = "/usr/bin/docker"
# Under pytest-xdist (`make integration` runs two workers) each worker has its own lab and its own
# controller state, set here before anything reads them: gw0 keeps the lab's name, gw1 gets <name>-gw1.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER and _WORKER != "gw0":
    os.environ["MAYDAY_LAB_NAME"] = f"{os.environ.get('MAYDAY_LAB_NAME') or 'mayday-lab'}-{_WORKER}"
    os.environ.setdefault("MAYDAY_STATE_DIR", tempfile.mkdtemp(prefix=f"mayday-state-{_WORKER}-"))
# The lab under test: containers <MAYDAY_LAB_NAME>-web1 ... (default mayday-lab), as `mayday lab up` names them.
LAB_NAME = os.environ.get("MAYDAY_LAB_NAME") or "mayday-lab"
PREFIX = LAB_NAME + "-"
WEB_HOSTS = ("web1", "web2")
DB_HOST = "db1"
LAB_HOSTS = (*WEB_HOSTS, DB_HOST, "pg1")
APP = "/var/www/app"
DB_INI = "/etc/mayday-app/db.ini"
GOOD_RELEASES = ("v1", "v2")

MODULE_UTILS = str(ROOT / "plugins" / "module_utils")
if MODULE_UTILS not in sys.path:
    sys.path.insert(0, MODULE_UTILS)


def docker(*args: str, check: bool = True, timeout: float = 60,
           input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([DOCKER, *args], capture_output=True, text=True, check=False, timeout=timeout,
                         input=input_text)
    if check and out.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
    return out


def dexec(host: str, script: str, check: bool = True, timeout: float = 60) -> str:
    return docker("exec", PREFIX + host, "sh", "-c", script, check=check, timeout=timeout).stdout


def lab_address(host: str) -> str:
    """The host's IPv4 address on the lab network."""
    fmt = f'{{{{with index .NetworkSettings.Networks "{LAB_NAME}"}}}}{{{{.IPAddress}}}}{{{{end}}}}'
    found = docker("inspect", "-f", fmt, PREFIX + host).stdout.strip()
    assert found, f"{host} has no address on {LAB_NAME}"
    return found


def base_env(state_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_FORCE_COLOR="false",
        NO_COLOR="1",
        COLUMNS="400",  # rich wraps stderr at 80 columns otherwise
        PATH=os.pathsep.join([str(VENV_BIN), env.get("PATH", "/usr/bin:/bin")]),
        MAYDAY_TEST_FAULT_POINTS="1",  # restores honour the fault-point files the tests plant
    )
    env.pop("MAYDAY_HOME", None)
    if state_dir is not None:
        env["MAYDAY_STATE_DIR"] = str(state_dir)
    return env


def container_state(host: str) -> str:
    out = docker("inspect", "-f", "{{.State.Status}}", PREFIX + host, check=False)
    return out.stdout.strip() if out.returncode == 0 else "absent"


def wait_booted(hosts: tuple[str, ...] | list[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    pending = list(hosts)
    while pending and time.monotonic() < deadline:
        for host in list(pending):
            out = docker("exec", PREFIX + host, "systemctl", "is-system-running", check=False, timeout=15)
            if out.stdout.strip() in ("running", "degraded"):
                pending.remove(host)
        if pending:
            time.sleep(0.3)
    assert not pending, f"lab containers did not finish booting: {pending}"


def ensure_running() -> None:
    stopped = [h for h in LAB_HOSTS if container_state(h) != "running"]
    for host in stopped:
        assert container_state(host) != "absent", f"lab container {PREFIX}{host} is gone: run `mayday lab up`"
        docker("start", PREFIX + host)
    if stopped:
        wait_booted(stopped)


def lab_inventory_args() -> list[str]:
    """Nothing: inventories/lab reads MAYDAY_LAB_NAME itself. (An ansible_host extra var would also
    override delegate_to, sending the skeleton's delegated unlock to the wrong container.)"""
    return []


def run_setup_playbook() -> None:
    out = subprocess.run([ANSIBLE_PLAYBOOK, str(ROOT / "playbooks" / "lab" / "setup.yml"), *lab_inventory_args()],
                         cwd=ROOT, env=base_env(), capture_output=True, text=True, check=False, timeout=300)
    assert out.returncode == 0, f"playbooks/lab/setup.yml failed:\n{out.stdout[-3000:]}{out.stderr[-2000:]}"


def db_ini_digests() -> dict[str, str]:
    return {h: hashlib.sha256(dexec(h, f"cat {DB_INI} 2>/dev/null", check=False).encode()).hexdigest()
            for h in WEB_HOSTS}


def health(host: str) -> dict[str, Any]:
    out = dexec(host, "curl -s --max-time 10 http://127.0.0.1/health-check", check=False)
    try:
        doc = json.loads(out)
    except ValueError:
        return {"raw": out}
    return doc if isinstance(doc, dict) else {"raw": out}


@dataclass
class Mayday:
    """Runs the mayday CLI with an isolated state directory."""

    state_dir: Path

    def env(self) -> dict[str, str]:
        return base_env(self.state_dir)

    def run(self, *args: str, timeout: float = 180,
            stdin: Any = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
        return subprocess.run([MAYDAY, *args], cwd=ROOT, env=self.env(), stdin=stdin, capture_output=True,
                              text=True, check=False, timeout=timeout)

    def reports(self) -> list[dict[str, Any]]:
        root = self.state_dir / "incidents"
        files = sorted(root.glob("*/report.json"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
        return [json.loads(f.read_text()) for f in files]

    def last_report(self) -> dict[str, Any]:
        reports = self.reports()
        assert reports, f"no incident report under {self.state_dir / 'incidents'}"
        return reports[-1]

    def notifications(self) -> list[dict[str, Any]]:
        path = self.state_dir / "notifications.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def interrupted_cli(mayday: Mayday, args: list[str], seen: str, signals: int = 1,
                    timeout: float = 240) -> tuple[int, str]:
    """Runs `mayday ARGS` in its own process group and, once its stderr shows `seen`, sends SIGINT
    `signals` times to that group, as a terminal's Ctrl-C does. Returns the exit code and stderr."""
    proc = subprocess.Popen([MAYDAY, *args], cwd=ROOT, env=mayday.env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stderr is not None
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if seen in line:
                for _ in range(signals):
                    os.killpg(proc.pid, signal.SIGINT)
                    time.sleep(0.05)
                break
        lines.append(proc.stderr.read())
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = "".join(lines)
    assert seen in text, f"the run never showed {seen!r}:\n{text}"
    return rc, text


def snapshot(web_hosts: tuple[str, ...] = WEB_HOSTS) -> dict[str, Any]:
    """What a rollback changes: each web host's current release, failed markers and service PIDs,
    and the database's PID. Equal before and after means nothing was touched."""
    snap: dict[str, Any] = {}
    for host in web_hosts:
        out = dexec(host, f"""
            echo "current=$(readlink {APP}/current)"
            for m in {APP}/releases/*/.mayday-failed; do [ -e "$m" ] && echo "marker=$m"; done
            echo "nginx=$(systemctl show -p MainPID --value nginx)"
            echo "php=$(systemctl show -p MainPID --value php8.2-fpm)"
        """)
        fields: dict[str, Any] = {"markers": []}
        for line in out.splitlines():
            key, _, value = line.partition("=")
            if key == "marker":
                fields["markers"].append(value)
            elif key:
                fields[key] = value
        fields["markers"] = sorted(fields["markers"])
        snap[host] = fields
    snap[DB_HOST] = {"mariadb": dexec(DB_HOST, "systemctl show -p MainPID --value mariadb").strip()}
    return snap


PRUNE_RELEASES = (f"cd {APP}/releases && for d in */; do d=${{d%/}}; case \"$d\" in {'|'.join(GOOD_RELEASES)}) ;; "
                  f"*) rm -rf -- \"$d\" ;; esac; done; rm -f {APP}/releases/*/.mayday-failed")
RESET_WEB = f"""
set -e
{PRUNE_RELEASES}
ln -sfn releases/v2 {APP}/current.t && mv -T {APP}/current.t {APP}/current
# v1 then v2, newest last, as the fixture deployed them (a test may have deployed v1 again since)
now=$(date -u +%Y-%m-%dT%H:%M:%SZ); printf '%s\tv1\n%s\tv2\n' "$now" "$now" >> {APP}/.mayday-deploy-history
systemctl reset-failed
systemctl start nginx php8.2-fpm
"""


def reset_lab(good_db_ini: dict[str, str]) -> None:
    ensure_running()
    clear_host_locks()  # a run killed by an earlier test, or a lock it planted
    for host in WEB_HOSTS:
        dexec(host, RESET_WEB)
    dexec(DB_HOST, "systemctl reset-failed; systemctl start mariadb")
    if db_ini_digests() != good_db_ini:
        run_setup_playbook()
        assert db_ini_digests() == good_db_ini, "setup.yml did not restore /etc/mayday-app/db.ini"


# --- releases, failed markers and run locks on the hosts -----------------------------------------

HISTORY = f"{APP}/.mayday-deploy-history"
HOST_LOCK = "/var/lib/mayday/run.lock"  # mayday.locks.HOST_LOCK_DIR
# Deploy-time copies the lab's deploy helper keeps of each release it deployed (backup-dir convention).
DEPLOY_COPIES = ("/var/backups/mayday/api-config", "/var/backups/mayday/frontend")


def current_release(host: str) -> str:
    """The release `current` points at (its directory name), '' when it is not a symlink."""
    return os.path.basename(dexec(host, f"readlink {APP}/current", check=False).strip())


def markers(host: str) -> dict[str, str]:
    """Each release holding a .mayday-failed entry, and what that entry is: file, symlink or other."""
    out = dexec(host, f"""
        for m in {APP}/releases/*/.mayday-failed; do
            if [ -L "$m" ]; then t=symlink; elif [ -f "$m" ]; then t=file
            elif [ -e "$m" ]; then t=other; else continue; fi
            r=${{m%/.mayday-failed}}; echo "${{r##*/}} $t"
        done""")
    return dict(line.split(" ", 1) for line in out.splitlines() if line.strip())


def mark_failed_by_hand(release: str, incident: str = "INC-EARLIER", hosts: tuple[str, ...] = WEB_HOSTS) -> None:
    """The marker an earlier rollback leaves on the release it rolled back from."""
    doc = json.dumps({"marked_at": "2026-01-01T00:00:00Z", "incident": incident, "reason": "test"})
    for host in hosts:
        dexec(host, f"printf '%s' '{doc}' > {APP}/releases/{release}/.mayday-failed")


def serve_by_hand(release: str, hosts: tuple[str, ...] = WEB_HOSTS, timeout: float = 30) -> None:
    """Point `current` at a release (nginx resolves it per request) and wait until it answers healthy."""
    for host in hosts:
        dexec(host, f"ln -sfn releases/{release} {APP}/current.t && mv -T {APP}/current.t {APP}/current")
    for host in hosts:
        wait_healthy(host, release, timeout)


def wait_healthy(host: str, release: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        doc = health(host)
        if doc.get("status") == "healthy" and doc.get("version") == release:
            return
        assert time.monotonic() < deadline, f"{host} not healthy on {release} within {timeout:.0f} s: {doc}"
        time.sleep(0.3)


def live_as_last_deployed(release: str = "v1", hosts: tuple[str, ...] = WEB_HOSTS) -> None:
    """The world a drill expects on a staging host: `release` live, healthy and the newest line of the
    deploy history (as a redeploy of it leaves it), no test releases, no failed markers, no run locks.
    Earlier files on the same lab serve v1 by hand over a history that ends with v2, and a rollback
    there would pick v2."""
    clear_host_locks()
    prune_test_releases(hosts)
    for host in hosts:
        dexec(host, f"""
            set -e
            systemctl reset-failed; systemctl start nginx php8.2-fpm
            printf '%s\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" {release} >> {HISTORY}
        """)
    serve_by_hand(release, hosts, timeout=60)


# --- Alertmanager on mon1 -------------------------------------------------------------------------

def am(url: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        text = answer.read()
    return json.loads(text) if text.strip() else None


def am_delete(url: str, path: str) -> None:
    with urllib.request.urlopen(urllib.request.Request(url + path, method="DELETE"), timeout=5):
        pass


def firing(url: str, hosts: tuple[str, ...] = WEB_HOSTS) -> list[str]:
    """Alerts active and not silenced for these hosts (an alert without a host label counts for all)."""
    return [a["labels"].get("alertname", "?") for a in am(url, "/api/v2/alerts?active=true&silenced=false")
            if a["labels"].get("host", hosts[0]) in hosts]


def utc(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(at))


def silence(url: str, alertname: str, seconds: float, why: str) -> str:
    now = time.time()
    return str(am(url, "/api/v2/silences", {
        "matchers": [{"name": "alertname", "value": alertname, "isRegex": False, "isEqual": True}],
        "startsAt": utc(now), "endsAt": utc(now + seconds), "createdBy": "mayday tests", "comment": why})["silenceID"])


def wait_for(what: str, probe: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def install_release(release: str, broken: bool = False, hosts: tuple[str, ...] = WEB_HOSTS) -> None:
    """A deploy by hand, as playbooks/lab/deploy.yml does it minus the shared files (seconds instead of a
    minute): a copy of the good release v1 as releases/<release> (broken: reading a config file that does
    not exist), made current, and its line appended to the deploy history."""
    assert release not in GOOD_RELEASES, release
    breaking = (f"sed -i 's#{DB_INI}#/etc/mayday-app/db-{release}.ini#' {APP}/releases/{release}/lib/db.php"
                if broken else "true")
    for host in hosts:
        dexec(host, f"""
            set -e
            rm -rf {APP}/releases/{release}
            cp -a {APP}/releases/v1 {APP}/releases/{release}
            rm -f {APP}/releases/{release}/.mayday-failed
            {breaking}
            touch {APP}/releases/{release}
            ln -sfn releases/{release} {APP}/current.t && mv -T {APP}/current.t {APP}/current
            printf '%s\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" {release} >> {HISTORY}
        """)


def lab_deploy(release: str, broken: bool = False) -> None:
    """`mayday lab deploy`: the lab's real deploy helper (about a minute on a busy 2-core machine)."""
    out = subprocess.run([MAYDAY, "lab", "deploy", "--release", release, *(["--broken"] if broken else [])],
                         cwd=ROOT, env=base_env(), capture_output=True, text=True, check=False, timeout=600)
    assert out.returncode == 0, f"mayday lab deploy --release {release} failed:\n{out.stdout}\n{out.stderr}"


def prune_test_releases(hosts: tuple[str, ...] = WEB_HOSTS) -> None:
    """Releases other than v1 and v2 gone, with the deploy-time copies the deploy helper kept of them."""
    keep = "|".join(f"*-{r}" for r in GOOD_RELEASES)
    copies = " ".join(DEPLOY_COPIES)
    for host in hosts:
        dexec(host, f"""
            [ -d {APP}/releases ] && {{ {PRUNE_RELEASES}; }}
            for d in {copies}; do [ -d "$d" ] || continue; for c in "$d"/*/; do c=${{c%/}}
                case "$c" in {keep}) ;; *) rm -rf -- "$c" ;; esac; done; done
        """)


def host_lock(host: str) -> dict[str, Any] | None:
    """The run lock on a host: None when there is none; its owner record (raw text under "raw" when
    it is not JSON)."""
    out = dexec(host, f"[ -e {HOST_LOCK} ] || [ -L {HOST_LOCK} ] || exit 0; echo held; "
                      f"cat {HOST_LOCK}/owner 2>/dev/null")
    if not out.startswith("held"):
        return None
    raw = out.split("\n", 1)[1].strip() if "\n" in out else ""
    try:
        doc = json.loads(raw)
    except ValueError:
        return {"raw": raw}
    return doc if isinstance(doc, dict) else {"raw": raw}


def plant_host_lock(host: str, owner: dict[str, Any]) -> str:
    """A host lock as another run (of this or another controller) would have taken it; returns the owner text."""
    text = json.dumps(owner, sort_keys=True)
    docker("exec", "-i", PREFIX + host, "sh", "-c",
           f"umask 077; mkdir -p {HOST_LOCK} && cat > {HOST_LOCK}/owner", input_text=text + "\n")
    return text


def clear_host_locks(hosts: tuple[str, ...] = LAB_HOSTS) -> None:
    """No run lock left on the hosts (a stopped host is skipped)."""
    for host in hosts:
        dexec(host, f"rm -rf {HOST_LOCK} {HOST_LOCK}.stale.*", check=False)


# --- databases: db1 (MariaDB) and pg1 (PostgreSQL + pgbouncer) ---------------------------------

PG_HOST = "pg1"
BACKUP_DIR = "/var/backups/mayday"
SHADOW_DB = "app__mayday_shadow"
KEPT_DB_PREFIX = "app__mayday_pre_"
# What a restore runs on the database host: the module (python3) and the tools it starts.
RESTORE_COMMANDS = frozenset({"python3", "mariadb", "mysql", "mariadb-dump", "mysqldump", "pg_restore", "pg_dump",
                              "psql"})


@dataclass(frozen=True)
class LabDb:
    """The `app` database of one lab database host, inspected with the engine's own client."""

    engine: str  # mariadb | postgresql
    host: str
    table: str  # the big table the fingerprint covers
    key: str  # its primary key, the fingerprint's row order
    database: str = "app"

    @property
    def container(self) -> str:
        return PREFIX + self.host

    def client(self, db: str | None = None) -> list[str]:
        """argv of the SQL client: tab-separated rows, no headers; db None is the server itself."""
        if self.engine == "mariadb":
            return ["mariadb", "--batch", "--skip-column-names", *([db] if db else [])]
        return ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                "-d", db or "postgres"]

    def sql(self, query: str, db: str | None = None, check: bool = True, timeout: float = 120) -> str:
        return docker("exec", self.container, *self.client(db), "-c" if self.engine == "postgresql" else "-e",
                      query, check=check, timeout=timeout).stdout

    def bash(self, script: str, check: bool = True, timeout: float = 120) -> str:
        return docker("exec", self.container, "bash", "-o", "pipefail", "-euc", script, check=check,
                      timeout=timeout).stdout

    def answers(self) -> bool:
        out = docker("exec", self.container, *self.client(), "-c" if self.engine == "postgresql" else "-e",
                     "SELECT 1", check=False, timeout=15)
        return out.returncode == 0 and out.stdout.strip() == "1"

    def databases(self) -> list[str]:
        if self.engine == "mariadb":
            return self.sql("SELECT schema_name FROM information_schema.schemata ORDER BY 1").split()
        return self.sql("SELECT datname FROM pg_database ORDER BY 1").split()

    def exists(self, name: str) -> bool:
        if self.engine == "mariadb":
            return bool(self.sql(f"SELECT 1 FROM information_schema.schemata WHERE schema_name = '{name}'",
                                 timeout=15).strip())
        return bool(self.sql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'", timeout=15).strip())

    def writable(self) -> bool:
        """MariaDB: @@read_only is off; PostgreSQL: the live database accepts connections."""
        if self.engine == "mariadb":
            return self.sql("SELECT @@global.read_only").strip() == "0"
        return self.sql(f"SELECT datallowconn FROM pg_database WHERE datname = '{self.database}'").strip() == "t"

    def fingerprint(self) -> dict[str, Any]:
        """Columns, row count and md5 over every row of the big table in key order."""
        if self.engine == "mariadb":
            columns = (f"SELECT GROUP_CONCAT(column_name ORDER BY ordinal_position) FROM information_schema.columns "
                       f"WHERE table_schema = '{self.database}' AND table_name = '{self.table}'")
            script = (f'mariadb -N -B -e "{columns}"\n'
                      f'mariadb -N -B {self.database} -e "SELECT COUNT(*) FROM {self.table}"\n'
                      f'mariadb -N -B {self.database} -e "SELECT * FROM {self.table} ORDER BY {self.key}" | md5sum\n')
        else:
            psql = f"runuser -u postgres -- psql -X -q -A -t -v ON_ERROR_STOP=1 -d {self.database}"
            columns = (f"SELECT string_agg(column_name::text, ',' ORDER BY ordinal_position) "
                       f"FROM information_schema.columns WHERE table_schema = 'public' AND table_name = '{self.table}'")
            script = (f'{psql} -c "{columns}"\n'
                      f'{psql} -c "SELECT count(*) FROM {self.table}"\n'
                      f'{psql} -c "COPY (SELECT * FROM {self.table} ORDER BY {self.key}) TO STDOUT" | md5sum\n')
        lines = self.bash(script).splitlines()
        assert len(lines) == 3, f"unexpected fingerprint output from {self.host}: {lines}"
        return {"columns": lines[0].strip(), "rows": int(lines[1]), "md5": lines[2].split()[0]}

    def restore_processes(self) -> list[str]:
        """Processes of a restore still running on the host (the module and the tools it runs)."""
        out = docker("exec", self.container, "ps", "-eo", "pid=,comm=,args=", timeout=15).stdout
        return [line.strip() for line in out.splitlines()
                if len(line.split(None, 2)) > 1 and line.split(None, 2)[1] in RESTORE_COMMANDS]

    def manifests(self) -> list[dict[str, Any]]:
        """Every backup manifest in the backup directory, oldest first."""
        out = self.bash(f"cd {BACKUP_DIR} 2>/dev/null || exit 0; for f in *.manifest.json; do "
                        "[ -e \"$f\" ] || continue; tr -d '\\n' < \"$f\"; echo; done")
        found = [json.loads(line) for line in out.splitlines() if line.strip()]
        return sorted(found, key=lambda m: (m.get("time", ""), m.get("id", "")))


MARIADB = LabDb("mariadb", DB_HOST, "orders", "id")
POSTGRES = LabDb("postgresql", PG_HOST, "pgbench_accounts", "aid")
LAB_DBS = {db.engine: db for db in (MARIADB, POSTGRES)}


def take_backup(mayday: Mayday, db: LabDb) -> dict[str, Any]:
    """`mayday backup --limit <db host>`, which must succeed; returns the one manifest it wrote."""
    result = mayday.run("backup", "--limit", db.host, "--json", timeout=600)
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    taken = json.loads(result.stdout)["backups"]
    assert len(taken) == 1 and taken[0]["engine"] == db.engine, taken
    return dict(taken[0])


def wait_db_answers(db: LabDb, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not db.answers():
        assert time.monotonic() < deadline, f"{db.engine} on {db.host} did not answer within {timeout:.0f} s"
        time.sleep(0.5)


def start_playbook(playbook: str, env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[bytes]:
    """ansible-playbook in the background, in its own process group (killed with os.killpg)."""
    with open(log, "wb") as handle:
        return subprocess.Popen([ANSIBLE_PLAYBOOK, str(ROOT / "playbooks" / playbook), *args], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)
