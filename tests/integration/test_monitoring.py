"""The lab's monitoring (mon1) end to end: Prometheus scrapes every target, a broken health check on web1
fires the Level 1 alert, and Alertmanager posts it, then its resolution, to a receiver on this
controller (at the lab network's gateway, on a port of the test's own) with the lab's bearer token.

The receiver records what it gets, as `mayday serve` would; the health rule's window is
MAYDAY_LAB_HEALTH_FOR=10s so the whole run stays under a minute. mon1 is put back to the session's
settings afterwards.
"""

from __future__ import annotations

import json
import stat
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Generator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import WEB_HOSTS, am, install_release, prune_test_releases, serve_by_hand, utc

from mayday import lab

HEALTH_FOR = "10s"
BROKEN = "mon-broken"
JOBS = {"health", "nginx", "mysqld", "postgres", "node", "monitoring"}


class Receiver(ThreadingHTTPServer):
    """Records every POST: when it came, its path, its Authorization header and its JSON body."""

    daemon_threads = True

    def __init__(self, host: str) -> None:
        self.posts: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        super().__init__((host, 0), Handler)

    def received(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.posts)


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.posts.append({"at": time.time(), "path": self.path,
                                      "authorization": self.headers.get("Authorization"),
                                      "payload": json.loads(body)})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def api(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.load(answer)["data"]


def wait_for(what: str, probe: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.5)


def epoch(rfc3339: str) -> float:
    """Alertmanager's startsAt (nanoseconds, Z) as seconds since the epoch."""
    head, _, frac = rfc3339.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float(f"0.{frac or 0}")


@pytest.fixture
def monitoring(lab_up: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Generator[dict[str, Any], None, None]:
    """mon1 alerting a receiver of this test's own with a 10 s health window; the session's settings back after."""
    server = Receiver(lab.gateway_ipv4(lab.lab_name()))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("MAYDAY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("MAYDAY_SERVE_PORT", str(server.server_address[1]))
    monkeypatch.setenv("MAYDAY_LAB_HEALTH_FOR", HEALTH_FOR)
    try:
        urls = lab.configure_monitoring(len(WEB_HOSTS))
        yield {"server": server, "urls": urls, "token_path": lab.serve_token_path()}
    finally:
        server.shutdown()
        serve_by_hand("v1", hosts=("web1",))
        prune_test_releases(("web1",))
        monkeypatch.undo()
        lab.configure_monitoring(len(WEB_HOSTS))


Alert = tuple[dict[str, Any], dict[str, Any]]  # (the POST, one alert of its payload)


def health_alerts(posts: list[dict[str, Any]], status: str, since: float) -> list[Alert]:
    """(post, alert) pairs for HealthCheckFailing alerts with this status that started after `since`."""
    return [(post, alert) for post in posts for alert in post["payload"]["alerts"]
            if alert["labels"].get("alertname") == "HealthCheckFailing" and alert["status"] == status
            and epoch(alert["startsAt"]) >= since]


def is_web1_health(alert: dict[str, Any]) -> bool:
    """The health alert of web1, the host this test breaks (Prometheus's and Alertmanager's shapes alike)."""
    return bool(alert["labels"].get("alertname") == "HealthCheckFailing" and alert["labels"].get("host") == "web1")


def test_broken_health_check_alerts_the_controller_and_resolves(monitoring: dict[str, Any],
                                                                record_property: Any) -> None:
    server: Receiver = monitoring["server"]
    prometheus = monitoring["urls"]["prometheus"]
    token_path: Path = monitoring["token_path"]
    token = token_path.read_text().strip()
    assert len(token) >= 32 and stat.S_IMODE(token_path.stat().st_mode) == 0o600
    assert monitoring["urls"]["receiver"] == (f"http://{server.server_address[0]}:{server.server_address[1]}"
                                              "/alertmanager")
    # The token lives in its own file in mon1 (0640, root:prometheus), never in alertmanager.yml.
    mon1 = lab.prefix() + "mon1"
    config = lab.docker("exec", mon1, "cat", "/etc/prometheus/alertmanager.yml").stdout
    assert token not in config and "credentials_file: /etc/prometheus/mayday-serve-token" in config
    assert lab.docker("exec", mon1, "stat", "-c", "%a %U:%G", "/etc/prometheus/mayday-serve-token").stdout.split() == [
        "640", "root:prometheus"]
    assert lab.docker("exec", mon1, "cat", "/etc/prometheus/mayday-serve-token").stdout.strip() == token

    # Every target up, each web host probed and scraped under its inventory name.
    def all_up() -> list[dict[str, Any]] | None:
        targets = api(prometheus, "/api/v1/targets", state="active")["activeTargets"]
        ok = targets and all(t["health"] == "up" for t in targets) and {t["labels"]["job"] for t in targets} == JOBS
        return targets if ok else None

    targets = wait_for("every Prometheus target up", all_up, 30)
    for job in ("health", "nginx"):
        assert sorted(t["labels"].get("host") for t in targets if t["labels"]["job"] == job) == list(WEB_HOSTS)
    assert {t["labels"].get("host") for t in targets if t["labels"]["job"] in ("mysqld", "postgres")} == {"db1", "pg1"}
    rule = next(r for g in api(prometheus, "/api/v1/rules")["groups"] for r in g["rules"]
                if r["name"] == "HealthCheckFailing")
    assert rule["duration"] == 10, rule
    wait_for("both web hosts probed healthy", lambda: sorted(
        r["metric"]["host"] for r in api(prometheus, "/api/v1/query", query="probe_success == 1")["result"]) ==
        list(WEB_HOSTS), 30)

    # No health alert for web1 left active from an earlier file: one still firing when the fault comes
    # keeps its old start and is not sent again (repeat_interval), which the rehearsal's failure was.
    wait_for("no HealthCheckFailing alert left for web1", lambda: not [
        a for a in api(prometheus, "/api/v1/alerts")["alerts"] if is_web1_health(a)], 60)
    # Nor in Alertmanager: one left by an earlier file whose resolution it never got stays active until
    # its endsAt, minutes away, and absorbs the new alert with its old start (ci-22). Resolved here as
    # Prometheus would have resolved it.
    alertmanager = monitoring["urls"]["alertmanager"]

    def stale() -> list[dict[str, Any]]:
        return [a for a in am(alertmanager, "/api/v2/alerts?active=true") if is_web1_health(a)]

    for alert in stale():
        am(alertmanager, "/api/v2/alerts", [{"labels": alert["labels"], "startsAt": alert["startsAt"],
                                             "endsAt": utc(time.time() - 1)}])
    wait_for("no HealthCheckFailing alert for web1 active in Alertmanager", lambda: not stale(), 30)

    # The fault: a broken release on web1 alone.
    fault = time.time()
    install_release(BROKEN, broken=True, hosts=("web1",))

    def firing() -> float | None:
        alerts = api(prometheus, "/api/v1/alerts")["alerts"]
        return time.time() if any(is_web1_health(a) and a["state"] == "firing" for a in alerts) else None

    fired = wait_for("HealthCheckFailing firing for web1", firing, 45)
    post, alert = wait_for("the firing alert at the receiver",
                           lambda: health_alerts(server.received(), "firing", fault - 1), 20)[0]
    assert post["path"] == "/alertmanager"
    assert post["authorization"] == f"Bearer {token}"
    assert post["payload"]["status"] == "firing" and post["payload"]["groupLabels"]["host"] == "web1"
    assert {k: alert["labels"].get(k) for k in ("alertname", "scenario", "severity", "host", "job")} == {
        "alertname": "HealthCheckFailing", "scenario": "level1", "severity": "P0", "host": "web1", "job": "health"}
    assert alert["annotations"]["summary"] == "web1: health check failing" and alert["annotations"]["description"]
    # web2 stayed healthy: no health alert for it started since the fault (earlier tests' faults may
    # still be resolving, and the slow error-rate rule remembers them).
    assert not [a for a in health_alerts(server.received(), "firing", fault - 1)
                if a[1]["labels"].get("host") == "web2"]

    # Healthy again: the same alert (fingerprint) comes back resolved.
    restored = time.time()
    serve_by_hand("v1", hosts=("web1",))
    resolved_post, resolved = wait_for(
        "the resolved alert at the receiver",
        lambda: [(p, a) for p, a in health_alerts(server.received(), "resolved", fault - 1)
                 if a["fingerprint"] == alert["fingerprint"]], 45)[0]
    assert resolved_post["authorization"] == f"Bearer {token}"
    assert resolved["labels"] == alert["labels"]
    record_property("mayday_outcome", f"monitoring: fault -> firing {fired - fault:.1f} s, firing -> webhook "
                    f"{post['at'] - fired:.1f} s (fault -> webhook {post['at'] - fault:.1f} s, rule window "
                    f"{HEALTH_FOR}); restored -> resolved webhook {resolved_post['at'] - restored:.1f} s")
    assert post["at"] - fault < 10 + 5 + 5 + 10, "detection: window + scrape + evaluation + a margin"

