"""Alert-to-recovery benchmark: a fault on the lab, Prometheus and Alertmanager (mon1) see it, `mayday serve`
starts Level 1, health comes back; nothing posted by hand.

Prometheus scrapes and evaluates every 5 s and the health rule keeps the seed's 30 s window
(MAYDAY_LAB_HEALTH_FOR is unset for the run). `mayday serve` runs as a real process on the lab
network's gateway with a policy of its own (Level 1 on the faults' alerts, mode auto, throttle 0s)
and its own state directory; mon1's Alertmanager is pointed at it for the run.

Each cycle, not timed: the lab quiet for --settle seconds (every health probe succeeding, no fault
alert pending or firing in Prometheus or Alertmanager, no run in flight). Then the fault, and the
clock starts (just before the `docker exec` that injects it):

  broken-release: a copy of v1 that reads a config file that does not exist (as `mayday lab deploy
                  --broken` makes v2) goes live on every web host at once (the `current` symlink flip)
  db-stop:        `systemctl stop mariadb` on db1; Level 1 recovers it by restarting the stack when
                  the hosts already serve the release it would roll back to (every newer release
                  marked failed: the state a broken-release cycle leaves, and the one this script sets;
                  on a fleet that never deployed past v1 Level 1 refuses). The first alert is usually
                  DatabaseConnectionFailuresRepeated (seed 001: 3 failed connections within a minute),
                  before the health rule's 30 s are up; detection is still held to the health rule's goal.

and the instants: fault injected; alert pending (Prometheus's activeAt); alert firing (its startsAt,
from the audit log); received by mayday, run started (audit log); health back (the run's incident
record). The goals: detection (fault -> firing) within the rule's window plus one scrape and one
evaluation interval, all three read from the live Prometheus; received -> run started under 1 s;
fault -> recovered under 2 minutes (seed 000's Level 1 target).

Always, at the end: the lab back on a healthy v1 (the bench's releases and markers gone, MariaDB up)
and mon1 alerting the session's `mayday serve` again with the session's settings.
Results: bench/results/alert-to-recovery.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from mayday import lab
from mayday.timing import parse_instant

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOCKER = "/usr/bin/docker"
APP = "/var/www/app"
DB_INI = "/etc/mayday-app/db.ini"
HISTORY = f"{APP}/.mayday-deploy-history"
GOOD = "v1"
KEEP = ("v1", "v2")  # the lab's own releases (conftest deploys both); anything else is the bench's
HEALTH_ALERT = "HealthCheckFailing"
# The seeds' Level 1 triggers these faults set off; other alerts (ErrorRateHigh after a long fault
# history, resource alerts) are left to no policy rule, so they never start a run mid-cycle.
FAULT_ALERTS = (HEALTH_ALERT, "DatabaseConnectionFailuresRepeated", "DatabaseConnectionsMostlyFailing")
FAULTS = ("broken-release", "db-stop")
RESPOND_GOAL_S = 1.0  # received -> run started
RECOVER_GOAL_S = 120.0  # seed 000: Level 1 back within 2 minutes
POLICY = {
    "settings": {"max_auto_runs_per_hour": 60},
    "rules": [{"name": "bench-level1", "match": {"scenario": "level1", "alertname": list(FAULT_ALERTS)},
               "scenario": "level1", "mode": "auto", "throttle": "0s",  # the next cycle comes within minutes
               "max_runs_per_hour": 60, "limit_label": None}],
}
MARKER = json.dumps({"marked_at": "2026-01-01T00:00:00Z", "incident": "bench-alert-to-recovery",
                     "reason": "marked by bench/alert_to_recovery so Level 1 rolls back to v1"})


def sh(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)


def dexec(host: str, script: str, check: bool = True) -> str:
    out = sh([DOCKER, "exec", lab.prefix() + host, "sh", "-c", script], timeout=120)
    if check and out.returncode != 0:
        raise SystemExit(f"{host}: {script.strip()[:80]}... failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout


def each(hosts: list[str], script: Callable[[str], str]) -> list[str]:
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        return list(pool.map(lambda h: dexec(h, script(h)), hosts))


def web_hosts() -> list[str]:
    names = [n.removeprefix(lab.prefix()) for n in lab.containers()]
    return sorted((n for n in names if n.startswith("web")), key=lambda n: int(n[3:]))


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())


def seconds(duration: str) -> float:
    """A Prometheus duration as the config API shows it (5s, 1m30s, 500ms)."""
    total, number = 0.0, ""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    i = 0
    while i < len(duration):
        if duration[i].isdigit():
            number += duration[i]
            i += 1
            continue
        unit = "ms" if duration.startswith("ms", i) else duration[i]
        total += int(number) * units[unit]
        number, i = "", i + len(unit)
    return total


def health(host: str) -> dict[str, Any]:
    out = dexec(host, "curl -s --max-time 5 http://127.0.0.1/health-check", check=False)
    try:
        doc = json.loads(out)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def healthy_on(host: str, release: str) -> bool:
    doc = health(host)
    return doc.get("status") == "healthy" and doc.get("version") == release


def wait(what: str, probe: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# -- mon1 ----------------------------------------------------------------------------------------

class Monitoring:
    def __init__(self, urls: dict[str, str]) -> None:
        self.prometheus, self.alertmanager = urls["prometheus"], urls["alertmanager"]

    def settings(self) -> dict[str, Any]:
        """The live health rule window and intervals (what the detection goal is made of), and every fault
        alert's own `for:`."""
        config = yaml.safe_load(get_json(self.prometheus + "/api/v1/status/config")["data"]["yaml"])
        rules = get_json(self.prometheus + "/api/v1/rules?type=alert")["data"]["groups"]
        windows = {r["name"]: float(r["duration"]) for g in rules for r in g["rules"] if r["name"] in FAULT_ALERTS}
        return {"window_s": windows[HEALTH_ALERT], "scrape_s": seconds(config["global"]["scrape_interval"]),
                "evaluation_s": seconds(config["global"]["evaluation_interval"]), "for_s": windows}

    def fault_alerts(self) -> list[dict[str, Any]]:
        """Fault alerts pending or firing in Prometheus."""
        found = get_json(self.prometheus + "/api/v1/alerts")["data"]["alerts"]
        return [a for a in found if a["labels"].get("alertname") in FAULT_ALERTS]

    def active_in_alertmanager(self) -> list[dict[str, Any]]:
        found = get_json(self.alertmanager + "/api/v2/alerts?active=true&silenced=false&inhibited=false")
        return [a for a in found if a["labels"].get("alertname") in FAULT_ALERTS]

    def probes_ok(self) -> bool:
        query = urllib.parse.quote('probe_success{job="health"}')
        found = get_json(self.prometheus + f"/api/v1/query?query={query}")["data"]["result"]
        return bool(found) and all(r["value"][1] == "1" for r in found)

    def receiver_port(self) -> int | None:
        original = get_json(self.alertmanager + "/api/v2/status")["config"]["original"]
        url = next((r["webhook_configs"][0]["url"] for r in yaml.safe_load(original)["receivers"]
                    if r.get("webhook_configs")), "")
        return int(url.split("/")[2].rsplit(":", 1)[1]) if url else None


# -- the receiver --------------------------------------------------------------------------------

class Serve:
    """`mayday serve` as Alertmanager's receiver, with a state directory of its own."""

    def __init__(self, work: Path, gateway: str, port: int, token_file: Path) -> None:
        self.state = work / "state"
        self.state.mkdir()
        policies = work / "policies"
        policies.mkdir()
        (policies / "bench.yml").write_text(yaml.safe_dump(POLICY, sort_keys=False))
        env = dict(os.environ, MAYDAY_STATE_DIR=str(self.state), MAYDAY_SERVE_PORT=str(port),
                   ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), NO_COLOR="1",
                   PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "/usr/bin:/bin")]))
        env.pop("MAYDAY_SERVE_TOKEN", None)  # the token file is the one mon1 sends
        self.log = work / "serve.log"  # a file, not a pipe nobody reads while it serves
        with open(self.log, "w") as output:
            self.process = subprocess.Popen(
                [str(BIN / "mayday"), "serve", "--policies", str(policies), "--listen", f"{gateway}:{port}",
                 "--token-file", str(token_file)], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=output,
                stderr=subprocess.STDOUT, text=True)
        url = f"http://{gateway}:{port}/healthz"

        def answers() -> bool:
            if self.process.poll() is not None:
                raise SystemExit(f"mayday serve exited {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    return answer.status == 200
            except OSError:
                return False

        wait("mayday serve to answer", answers, 60, every=0.2)

    def audit(self) -> list[dict[str, Any]]:
        path = self.state / "serve" / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def runs_in_flight(self) -> list[Path]:
        inflight = self.state / "serve" / "inflight"
        return sorted(inflight.glob("*.json")) if inflight.is_dir() else []

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


# -- the lab -------------------------------------------------------------------------------------

def releases(host: str) -> list[str]:
    return dexec(host, f"ls -1 {APP}/releases 2>/dev/null", check=False).split()


def prepare_lab(webs: list[str], faults: list[str]) -> list[str]:
    """v1 live and healthy, every other release marked failed (as an earlier rollback leaves them), MariaDB
    up. Returns the markers this added, as host:release, so the end takes away exactly those."""
    if any(GOOD not in releases(h) for h in webs):
        out = sh([str(BIN / "mayday"), "lab", "deploy", "--release", GOOD], cwd=ROOT, timeout=900)
        if out.returncode != 0:
            raise SystemExit(f"mayday lab deploy --release {GOOD} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    restore_lab(webs, [])  # leftovers of an earlier run gone
    if "db-stop" in faults and any(releases(h) == [GOOD] for h in webs):
        # Level 1 restarts the stack of a fleet already on the release it rolls back to; on a fleet that
        # never deployed past v1 it refuses (no earlier release). A release rolled back from, as a
        # broken-release cycle leaves one.
        each(webs, lambda _: f"""
            set -e
            cp -a {APP}/releases/{GOOD} {APP}/releases/bench-ar0
            printf '%s\\t%s\\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" bench-ar0 >> {HISTORY}""")
    added = []
    for host in webs:
        for release in releases(host):
            marker = f"{APP}/releases/{release}/.mayday-failed"
            if release != GOOD and not dexec(host, f"[ -e {marker} ] && echo marked", check=False).strip():
                dexec(host, f"printf '%s' '{MARKER}' > {marker}")
                added.append(f"{host}:{release}")
    return added


def restore_lab(webs: list[str], added_markers: list[str]) -> None:
    """v1 live, the bench's releases gone, the markers it added gone, services and MariaDB up; waits until
    every web host answers healthy on v1."""
    keep = "|".join(KEEP)
    for host in webs:
        markers = " ".join(f"{APP}/releases/{hr.partition(':')[2]}/.mayday-failed" for hr in added_markers
                           if hr.partition(":")[0] == host)
        dexec(host, f"""
            set -e
            cd {APP}/releases
            for d in */; do d=${{d%/}}; case "$d" in {keep}) ;; *) rm -rf -- "$d" ;; esac; done
            rm -f {markers} {APP}/releases/{GOOD}/.mayday-failed
            ln -sfn releases/{GOOD} {APP}/current.t && mv -T {APP}/current.t {APP}/current
            systemctl reset-failed
            systemctl start nginx php8.2-fpm""")
    dexec("db1", "systemctl reset-failed; systemctl start mariadb")
    wait(f"{', '.join(webs)} healthy on {GOOD}", lambda: all(healthy_on(h, GOOD) for h in webs), 60)


def next_release(webs: list[str], cycle: int) -> str:
    """A broken copy of v1 on every web host, not live yet (not timed)."""
    release = f"bench-ar{cycle}"
    each(webs, lambda _: f"""
        set -e
        rm -rf {APP}/releases/{release}
        cp -a {APP}/releases/{GOOD} {APP}/releases/{release}
        rm -f {APP}/releases/{release}/.mayday-failed
        sed -i 's#{DB_INI}#/etc/mayday-app/db-{release}.ini#' {APP}/releases/{release}/lib/db.php
        touch {APP}/releases/{release}""")
    return release


def inject(fault: str, webs: list[str], release: str) -> float:
    """The fault; returns the instant just before it (the clock starts then)."""
    started = time.time()
    if fault == "broken-release":
        each(webs, lambda _: f"""
            set -e
            ln -sfn releases/{release} {APP}/current.t && mv -T {APP}/current.t {APP}/current
            printf '%s\\t%s\\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" {release} >> {HISTORY}""")
    else:
        dexec("db1", "systemctl stop mariadb")
    return started


def quiet(mon: Monitoring, serve: Serve) -> bool:
    return (mon.probes_ok() and not mon.fault_alerts() and not mon.active_in_alertmanager()
            and not serve.runs_in_flight())


# -- one cycle -----------------------------------------------------------------------------------

def settle(mon: Monitoring, serve: Serve, hold: float) -> None:
    """Quiet for `hold` seconds on end: the last cycle's resolution has reached mayday, nothing carries over."""
    while True:
        wait("the lab quiet (probes healthy, no fault alert, no run in flight)", lambda: quiet(mon, serve), 300, 1)
        time.sleep(hold)
        if quiet(mon, serve):
            return


def cycle(number: int, fault: str, webs: list[str], mon: Monitoring, serve: Serve, timeout: float,
          hold: float) -> dict[str, Any]:
    settle(mon, serve, hold)
    release = next_release(webs, number) if fault == "broken-release" else ""
    seen = len(serve.audit())
    fault_at = inject(fault, webs, release)
    pending: dict[str, float] = {}  # alertname -> earliest activeAt after the fault
    finished: dict[str, Any] | None = None
    deadline = time.monotonic() + timeout
    while finished is None:
        for alert in mon.fault_alerts():
            # activeAt cut to the millisecond, as Alertmanager cuts startsAt (the same evaluation's instant)
            name, active = alert["labels"]["alertname"], math.floor(parse_instant(alert["activeAt"]) * 1000) / 1000
            if active >= fault_at - 1 and active < pending.get(name, float("inf")):
                pending[name] = active
        entries = serve.audit()[seen:]
        started = next((e for e in entries if e["event"] == "run-started"), None)
        if started:
            finished = next((e for e in entries if e["event"] == "run-finished"
                             and e["request"] == started["request"]), None)
        if time.monotonic() > deadline:
            raise SystemExit(f"cycle {number}: no finished run {timeout:.0f} s after the fault; audit: {entries}")
        time.sleep(0.5)
    assert started is not None
    if finished.get("outcome") != "RECOVERED":
        raise SystemExit(f"cycle {number}: the run ended {finished.get('outcome')}: {finished}")
    for host in webs:  # from inside the hosts, not only the run's word
        doc = health(host)
        if doc.get("status") != "healthy" or doc.get("version") != GOOD:
            raise SystemExit(f"cycle {number}: {host} not healthy on {GOOD} after the run: {doc}")
    entries = serve.audit()[seen:]
    decided = next(e for e in entries if e["event"] == "alert" and e.get("request") == started["request"])
    timing = finished.get("timing") or {}
    firing = parse_instant(decided["starts_at"])
    received = parse_instant(decided["received_at"])
    run_started = parse_instant(started["run_requested_at"])
    health_back = parse_instant(timing["health_back_at"])
    active = pending.get(decided["alertname"])

    def span(later: float | None, earlier: float | None) -> float | None:
        return None if later is None or earlier is None else round(later - earlier, 3)

    return {
        "cycle": number, "fault": fault, "release": release or None, "alert": decided["alertname"],
        "request": started["request"], "incident": finished.get("incident"), "outcome": finished["outcome"],
        "fault_at": fault_at, "pending_at": active, "firing_at": firing, "received_at": received,
        "run_started_at": run_started, "health_back_at": health_back,
        # Every decision on a fault alert up to the run's end (one run; the other hosts' alerts busy).
        "decisions": [f"{e['alertname']}: {e['decision']}" for e in entries if e["event"] == "alert"],
        "fault_to_pending_s": span(active, fault_at),
        "pending_to_firing_s": span(firing, active),
        "fault_to_firing_s": span(firing, fault_at),
        "firing_to_received_s": span(received, firing),
        "fault_to_received_s": span(received, fault_at),
        "received_to_run_s": span(run_started, received),
        "run_to_health_s": span(health_back, run_started),
        "fault_to_recovered_s": span(health_back, fault_at),
        "run_s": finished.get("worker_s"),
    }


# -- report --------------------------------------------------------------------------------------

def rows(settings: dict[str, Any], alert: str) -> list[tuple[str, str, float | None, str]]:
    """(key, label, goal, where the goal comes from). Detection is held to the seed's health rule whichever
    alert came first; the pending -> firing row to the `for:` of the alert that started the runs."""
    detect = settings["window_s"] + settings["scrape_s"] + settings["evaluation_s"]
    window = settings["for_s"].get(alert)
    return [
        ("fault_to_pending_s", "fault -> alert pending", None, ""),
        ("pending_to_firing_s", f"pending -> firing ({alert}'s window, for: {window or 0:.0f} s)", window or None,
         "its for:"),
        ("fault_to_firing_s", "fault -> alert firing (detection)", detect, f"{HEALTH_ALERT} window+scrape+eval"),
        ("firing_to_received_s", "firing -> received by mayday", None, ""),
        ("fault_to_received_s", "fault -> received by mayday", 60.0, "seed 002: < 1 min"),
        ("received_to_run_s", "received -> run started", RESPOND_GOAL_S, "issue 10: < 1 s"),
        ("run_to_health_s", "run started -> health back", None, ""),
        ("run_s", "run started -> run ended (report, notifications)", None, ""),
        ("fault_to_recovered_s", "fault -> recovered", RECOVER_GOAL_S, "seed 000: Level 1 < 2 min"),
    ]


def summarise(cycles: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    alerts = sorted({c["alert"] for c in cycles})
    for key, label, goal, source in rows(settings, alerts[0] if len(alerts) == 1 else HEALTH_ALERT):
        values = [c[key] for c in cycles if c.get(key) is not None]
        if not values:
            continue
        low, median, high = min(values), statistics.median(values), max(values)
        summary[key] = {"label": label, "min_s": low, "median_s": median, "max_s": high, "goal_s": goal,
                        "goal_from": source, "median_ratio": median / goal if goal else None,
                        "max_ratio": high / goal if goal else None}
    return summary


def table(summary: dict[str, Any]) -> str:
    def num(value: float | None, unit: str = "") -> str:
        return "-" if value is None else (f"{value:.3f}" if abs(value) < 1 else f"{value:.1f}") + unit

    lines = ["| interval | min | median | max | goal | median/goal | max/goal |",
             "| --- | ---: | ---: | ---: | --- | ---: | ---: |"]
    for row in summary.values():
        goal = f"{num(row['goal_s'])} s ({row['goal_from']})" if row["goal_s"] else "-"
        ratios = [f"{r:.2f}" if r is not None else "-" for r in (row["median_ratio"], row["max_ratio"])]
        lines.append(f"| {row['label']} | {num(row['min_s'])} s | {num(row['median_s'])} s | {num(row['max_s'])} s "
                     f"| {goal} | {ratios[0]} | {ratios[1]} |")
    return "\n".join(lines)


def cycles_table(cycles: list[dict[str, Any]]) -> str:
    keys = ("fault_to_firing_s", "firing_to_received_s", "received_to_run_s", "run_to_health_s",
            "fault_to_recovered_s")
    lines = ["| cycle | fault | alert that started the run | fault->firing | firing->received | received->run "
             "| run->health | fault->recovered | outcome |", "| ---: | --- | --- |" + " ---: |" * 5 + " --- |"]
    for c in cycles:
        shown = " | ".join(f"{c[k]:.3f} s" if c[k] < 1 else f"{c[k]:.1f} s" for k in keys)
        lines.append(f"| {c['cycle']} | {c['fault']} | {c['alert']} | {shown} | {c['outcome']} |")
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------

def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=2, help="timed cycles per fault (default 2)")
    ap.add_argument("--fault", action="append", choices=FAULTS,
                    help="fault to inject; repeat for several (default: broken-release)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds from a fault to its run's end, at most")
    ap.add_argument("--settle", type=float, default=10,
                    help="seconds the lab stays quiet before each fault (default 10: a scrape and a group interval)")
    ap.add_argument("--keep", action="store_true", help="keep the receiver's state (audit log, incident records)")
    ap.add_argument("--no-lab-up", action="store_true", help="skip `mayday lab up` (the lab already runs)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "alert-to-recovery.json")
    args = ap.parse_args()
    if args.cycles < 1:
        ap.error("--cycles must be at least 1")
    faults = list(dict.fromkeys(args.fault or ["broken-release"]))
    if not args.no_lab_up:
        up = sh([str(BIN / "mayday"), "lab", "up"], cwd=ROOT, timeout=1800)
        if up.returncode != 0:
            raise SystemExit(up.stdout + up.stderr)
    webs = web_hosts()
    if not webs:
        raise SystemExit(f"lab {lab.lab_name()} has no web host: run `mayday lab up` (or drop --no-lab-up)")
    saved = {k: os.environ.get(k) for k in ("MAYDAY_SERVE_PORT", "MAYDAY_LAB_HEALTH_FOR")}
    gateway = lab.gateway_ipv4(lab.lab_name())
    port = free_port(gateway)
    work = Path(tempfile.mkdtemp(prefix="mayday-bench-alert-"))
    serve: Serve | None = None
    added: list[str] = []
    cycles: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    try:
        added = prepare_lab(webs, faults)
        lab.ensure_serve_token()
        serve = Serve(work, gateway, port, lab.serve_token_path())
        os.environ["MAYDAY_SERVE_PORT"] = str(port)
        os.environ.pop("MAYDAY_LAB_HEALTH_FOR", None)  # the seed's 30 s
        mon = Monitoring(lab.configure_monitoring(len(webs)))
        wait("Alertmanager calling this run's receiver", lambda: mon.receiver_port() == port, 60)
        settings = mon.settings()
        print(f"mon1: scrape every {settings['scrape_s']:.0f} s, evaluate every {settings['evaluation_s']:.0f} s, "
              f"{HEALTH_ALERT} for: {settings['window_s']:.0f} s; receiver {gateway}:{port}", flush=True)
        number = 0
        for fault in faults:
            for _ in range(args.cycles):
                number += 1
                found = cycle(number, fault, webs, mon, serve, args.timeout, args.settle)
                cycles.append(found)
                print(f"cycle {number} {fault}: {found['alert']} firing {found['fault_to_firing_s']:.1f} s after "
                      f"the fault, received +{found['firing_to_received_s']:.1f} s, run +"
                      f"{found['received_to_run_s']:.3f} s, healthy +{found['run_to_health_s']:.1f} s: "
                      f"recovered {found['fault_to_recovered_s']:.1f} s after the fault "
                      f"({'; '.join(found['decisions'])})", flush=True)
    finally:
        if serve is not None:
            # A run still going (a cycle that failed) finishes before the lab is put back under it.
            with_runs = serve
            try:
                wait("runs in flight to end", lambda: not with_runs.runs_in_flight(), 300, every=2)
            finally:
                serve.stop()
        try:
            restore_lab(webs, added)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            lab.configure_monitoring(len(webs))
            if args.keep:
                print(f"receiver state kept: {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    results: dict[str, Any] = {"settings": settings, "cycles": cycles,
                               "command": " ".join(["python", "bench/alert_to_recovery/run.py", *sys.argv[1:]])}
    print()
    print(cycles_table(cycles))
    for fault in faults:
        summary = summarise([c for c in cycles if c["fault"] == fault], settings)
        results.setdefault("summary", {})[fault] = summary
        print(f"\n{fault}, {args.cycles} cycles:\n")
        print(table(summary))
        detect = summary["fault_to_firing_s"]
        window = summary.get("pending_to_firing_s") or {}
        print(f"\nbaseline: {HEALTH_ALERT}'s window (for:) {settings['window_s']:.0f} s "
              f"+ scrape {settings['scrape_s']:.0f} s + evaluation {settings['evaluation_s']:.0f} s "
              f"= {detect['goal_s']:.0f} s; the window as it played out (pending -> firing of the alert that "
              f"started the runs): median {window.get('median_s', 0):.1f} s; ratio detection/(window+scrape+eval): "
              f"median {detect['median_ratio']:.2f}, max {detect['max_ratio']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {args.out}")


if __name__ == "__main__":
    main()
