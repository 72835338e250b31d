"""Event-Driven Ansible on the real lab: ansible-rulebook runs a rulebook of extensions/eda/rulebooks/,
an Alertmanager-shaped group is posted to it while the broken release v2 is live, and the lab must
recover; a resolved alert, an alert no rule acts on and a repeat within the throttle window start
nothing; a request without the token (mayday-webhook.yml) is refused.

Needs a Java runtime and ansible-rulebook (`make eda` installs it into .venv when java is present);
mayday.yml also needs the ansible.eda collection (Galaxy). Each is skipped, naming what is missing.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import ROOT, VENV_BIN, WEB_HOSTS, Mayday, base_env, dexec, reset_lab

RULEBOOKS = ROOT / "extensions" / "eda" / "rulebooks"
START_TIMEOUT_S = 40
RUN_TIMEOUT_S = 60


def rulebook_binary() -> str | None:
    own = VENV_BIN / "ansible-rulebook"
    return str(own) if own.exists() else shutil.which("ansible-rulebook")


def ansible_eda_installed() -> bool:
    """As ansible-rulebook looks a collection up: through ansible-galaxy, with this environment."""
    out = subprocess.run([str(VENV_BIN / "ansible-galaxy"), "collection", "list", "ansible.eda", "--format", "json"],
                         cwd=ROOT, env=base_env(), capture_output=True, text=True, check=False, timeout=60)
    try:
        found = json.loads(out.stdout or "{}")
    except ValueError:
        return False
    return any("ansible.eda" in (paths or {}) for paths in found.values())


def missing(needs_collection: bool) -> str | None:
    if not shutil.which("java"):
        return "no Java runtime (java on PATH): ansible-rulebook needs one; Debian: openjdk-17-jre-headless"
    if not rulebook_binary():
        return "ansible-rulebook is not installed: `make eda` (pip install ansible-rulebook into .venv)"
    if needs_collection and not ansible_eda_installed():
        return ("the ansible.eda collection is not installed (its alertmanager source): "
                "`ansible-galaxy collection install ansible.eda`; no PyPI or Debian package ships it")
    return None


def _variant(name: str, rulebook: str, token: bool, needs_collection: bool) -> Any:
    reason = missing(needs_collection)
    return pytest.param(
        {"rulebook": RULEBOOKS / rulebook, "token": token, "alert_key": "alert" if needs_collection else None},
        id=name, marks=[pytest.mark.skip(reason=reason)] if reason else [])


VARIANTS = [
    _variant("webhook-token", "mayday-webhook.yml", token=True, needs_collection=False),
    _variant("ansible-eda-alertmanager", "mayday.yml", token=False, needs_collection=True),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def rulebook_running(rulebook: Path, state_dir: Path, port: int, token: str | None,
                     logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = base_env(state_dir)
    env.update(MAYDAY_EDA_HOST="127.0.0.1", MAYDAY_EDA_PORT=str(port))
    names = ["MAYDAY_EDA_HOST", "MAYDAY_EDA_PORT"]
    if token:
        env["MAYDAY_EDA_TOKEN"] = token
        names.append("MAYDAY_EDA_TOKEN")
    binary = rulebook_binary()
    assert binary
    with (logs / "rulebook.out").open("wb") as out, (logs / "rulebook.err").open("wb") as err:
        proc = subprocess.Popen([binary, "-r", str(rulebook), "-i", "inventories/lab", "--env-vars", ",".join(names)],
                                cwd=ROOT, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                assert proc.poll() is None, f"ansible-rulebook exited ({proc.returncode}):\n{tail(logs, token)}"
                with socket.socket() as sock:
                    sock.settimeout(0.5)
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        break
                assert time.monotonic() < deadline, f"ansible-rulebook did not listen in {START_TIMEOUT_S} s"
                time.sleep(0.2)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


def tail(logs: Path, token: str | None) -> str:
    text = "".join((logs / name).read_text(errors="replace")[-3000:] for name in ("rulebook.out", "rulebook.err"))
    return text.replace(token, "<token>") if token else text


def alert(status: str, alertname: str, host: str, scenario: str, starts_at: str) -> dict[str, Any]:
    return {"status": status,
            "labels": {"alertname": alertname, "scenario": scenario, "severity": "P0", "host": host},
            "annotations": {"summary": f"{alertname} on {host}"},
            "startsAt": starts_at,
            "endsAt": starts_at if status == "resolved" else "0001-01-01T00:00:00Z",
            "generatorURL": "http://mon1:9090/graph", "fingerprint": uuid.uuid4().hex[:16]}


def group(*alerts: dict[str, Any]) -> dict[str, Any]:
    """A webhook payload as Alertmanager (version 4) posts it: one group, firing and resolved mixed."""
    return {"version": "4", "groupKey": '{}:{alertname="HealthCheckFailing"}', "truncatedAlerts": 0,
            "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
            "receiver": "mayday", "groupLabels": {"alertname": "HealthCheckFailing"},
            "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://mon1:9093", "alerts": list(alerts)}


def post(port: int, body: dict[str, Any], token: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"http://127.0.0.1:{port}/alertmanager", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return int(refused.code)


def starts_ago(seconds: float) -> str:
    """Alertmanager's own form of startsAt: RFC 3339 with nanoseconds."""
    now = time.time() - seconds
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}Z"


def wait_for_run(mayday: Mayday, proc: subprocess.Popen[bytes], fingerprint: str, logs: Path,
                 token: str | None) -> dict[str, Any]:
    """The finished report of the run this alert started (runs are sequential: any run an earlier
    event started has opened its incident by then)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        for report in mayday.reports():
            if (report.get("alert") or {}).get("fingerprint") == fingerprint:
                return report
        assert proc.poll() is None, f"ansible-rulebook exited ({proc.returncode}):\n{tail(logs, token)}"
        time.sleep(0.3)
    raise AssertionError(f"no finished run for alert {fingerprint} in {RUN_TIMEOUT_S} s:\n{tail(logs, token)}")


def health_codes() -> dict[str, str]:
    return {h: dexec(h, "curl -s -o /dev/null -w '%{http_code}' --max-time 10 http://127.0.0.1/health-check",
                     check=False).strip() for h in WEB_HOSTS}


def incidents(mayday: Mayday) -> list[Path]:
    root = mayday.state_dir / "incidents"
    return sorted(root.glob("INC-*")) if root.is_dir() else []


@pytest.mark.skipif(bool(missing(needs_collection=False)), reason=missing(needs_collection=False) or "")
def test_webhook_rulebook_does_not_start_without_a_token(tmp_path: Path) -> None:
    """No lab needed: without MAYDAY_EDA_TOKEN ansible-rulebook stops, and nothing ever listened."""
    port = free_port()
    env = base_env(tmp_path / "state")
    env.pop("MAYDAY_EDA_TOKEN", None)
    env["MAYDAY_EDA_PORT"] = str(port)
    binary = rulebook_binary()
    assert binary
    out = subprocess.run([binary, "-r", str(RULEBOOKS / "mayday-webhook.yml"), "-i", "inventories/lab",
                          "--env-vars", "MAYDAY_EDA_PORT"], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=False, timeout=START_TIMEOUT_S)
    assert out.returncode != 0, f"started without a token:\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    assert not (tmp_path / "state" / "incidents").exists()


@pytest.mark.parametrize("variant", VARIANTS)
def test_alert_group_recovers_once_and_throttles(variant: dict[str, Any], lab: dict[str, str], broken_lab: Mayday,
                                                 tmp_path: Path, record_property: Any) -> None:
    mayday = broken_lab
    port = free_port()
    token = f"tok-{uuid.uuid4().hex}" if variant["token"] else None
    assert set(health_codes().values()) == {"500"}, "the broken release v2 should be live"
    started = time.monotonic()
    with rulebook_running(variant["rulebook"], mayday.state_dir, port, token, tmp_path) as proc:
        ready = time.monotonic() - started
        level1 = alert("firing", "HealthCheckFailing", "web1", "level1", starts_ago(40))
        if token:
            assert post(port, group(level1), None) == 401, "no token must be refused"
            assert post(port, group(level1), token[:-1] + "x") == 401, "a wrong token must be refused"

        # One group, as Alertmanager sends it: a resolved alert (same rule, web2), a firing alert
        # no rule acts on, then the firing Level 1 alert. Only the last may start a run.
        resolved = alert("resolved", "HealthCheckFailing", "web2", "level1", starts_ago(300))
        unknown = alert("firing", "DiskAlmostFull", "db1", "no-such-scenario", starts_ago(60))
        assert post(port, group(resolved, unknown, level1), token) in (200, 202)
        first = wait_for_run(mayday, proc, level1["fingerprint"], tmp_path, token)
        assert len(incidents(mayday)) == 1, f"only the firing Level 1 alert may start a run: {incidents(mayday)}"
        assert first["scenario"] == "level1" and first["outcome"] == "RECOVERED", first
        assert first["alert"]["alertname"] == "HealthCheckFailing"
        assert first["alert"]["starts_at"][:19] == level1["startsAt"][:19]
        assert health_codes() == {h: "200" for h in WEB_HOSTS}

        # Broken again. The same alert name and host within 5 minutes is throttled; the same alert
        # name on web2 (its earlier event was a resolved one, which set no throttle) runs.
        reset_lab(lab)
        assert set(health_codes().values()) == {"500"}
        again = alert("firing", "HealthCheckFailing", "web1", "level1", starts_ago(20))
        other_host = alert("firing", "HealthCheckFailing", "web2", "level1", starts_ago(20))
        assert post(port, group(again, other_host), token) in (200, 202)
        second = wait_for_run(mayday, proc, other_host["fingerprint"], tmp_path, token)
        assert len(incidents(mayday)) == 2, f"the throttled alert started a run: {incidents(mayday)}"
        assert second["outcome"] == "RECOVERED", second
        assert health_codes() == {h: "200" for h in WEB_HOSTS}

    if token:  # never in what ansible-rulebook printed, nor in the records
        assert not [n for n in ("rulebook.out", "rulebook.err") if token in (tmp_path / n).read_text(errors="replace")]
        assert not [p for p in mayday.state_dir.rglob("*") if p.is_file() and token in p.read_text(errors="replace")]
    timing = first.get("alert_timing") or {}
    record_property("mayday_outcome", f"eda {variant['rulebook'].name}: listening after {ready:.1f} s; "
                    f"received to run started {timing.get('time_to_respond_s')} s; "
                    f"run {first.get('duration_s')} s; whole test {time.monotonic() - started:.1f} s")

