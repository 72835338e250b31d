"""The drill probes' polling (plugins/module_utils/mayday_drill_probe.py), shared by the modules
mayday_drill_probe and mayday_fault (probes alone, and in the injection's and the removal's round trip), against
a real HTTP server on loopback whose answer the test switches."""

from __future__ import annotations

import importlib
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.modules.setdefault("ansible.module_utils.mayday_http", importlib.import_module("mayday_http"))
import mayday_drill_probe  # noqa: E402 (after the shipped-name alias above)


class App(BaseHTTPRequestHandler):
    healthy = True

    def do_GET(self) -> None:
        body = b'{"status": "healthy"}' if App.healthy else b'{"status": "unhealthy"}'
        self.send_response(200 if App.healthy else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def app() -> Iterator[str]:
    App.healthy = True
    server = ThreadingHTTPServer(("127.0.0.1", 0), App)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/health-check"
    server.shutdown()
    server.server_close()


def checks(url: str) -> list[dict[str, object]]:
    return [{"name": "health", "http": {"url": url, "status": 200, "json": {"status": "healthy"}, "timeout": 2}}]


def test_until_fail_sees_the_fault_and_once_reports(app: str, tmp_path: Path) -> None:
    stop = str(tmp_path / "drill-stop")
    assert mayday_drill_probe.poll(checks(app), "once", stop_file=stop)["ok"] is True
    threading.Timer(0.3, lambda: setattr(App, "healthy", False)).start()
    # Window and interval as the playbook templates them: text.
    out = mayday_drill_probe.poll(checks(app), "until_fail", "5", "0.1", stop)
    assert out["changed_at"] and not out["ok"] and out["rounds"] > 1
    assert out["results"][0]["problems"]


def test_until_ok_confirms_and_times_out(app: str, tmp_path: Path) -> None:
    stop = str(tmp_path / "drill-stop")
    App.healthy = False
    started = time.monotonic()
    out = mayday_drill_probe.poll(checks(app), "until_ok", 0.5, 0.1, stop, confirm=True)
    assert out["changed_at"] is None and out["confirmed"] is None and time.monotonic() - started < 2
    threading.Timer(0.3, lambda: setattr(App, "healthy", True)).start()
    out = mayday_drill_probe.poll(checks(app), "until_ok", 5, 0.1, stop, confirm="true")
    assert out["ok"] and out["changed_at"] and [r["ok"] for r in out["confirmed"]] == [True]


def test_host_kill_switch_stops_before_a_round(app: str, tmp_path: Path) -> None:
    stop = tmp_path / "drill-stop"
    stop.touch()
    out = mayday_drill_probe.poll(checks(app), "until_ok", 5, 0.1, str(stop), confirm=True)
    assert out["stopped"] and out["rounds"] == 0 and out["confirmed"] is None


def test_confirm_round_waits_from_when_the_state_was_back(app: str) -> None:
    # What ran meanwhile (a fault's removal) counts toward the pause: no second wait.
    since = time.time() - 0.4
    started = time.monotonic()
    results = mayday_drill_probe.confirm_round(checks(app), since, "1")
    assert 0.05 <= time.monotonic() - started < 0.4 and [r["ok"] for r in results] == [True]
    started = time.monotonic()
    mayday_drill_probe.confirm_round(checks(app), time.time() - 5, 1)
    assert time.monotonic() - started < 0.3
    App.healthy = False
    assert [r["ok"] for r in mayday_drill_probe.confirm_round(checks(app), time.time(), 0.1)] == [False]


def manifest(directory: Path, backup_id: str, taken: float) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(taken))
    (directory / f"{backup_id}.manifest.json").write_text(f'{{"id": "{backup_id}", "time": "{stamp}"}}')


def test_backup_probe_judges_the_newest_manifest(tmp_path: Path) -> None:
    check = {"dir": str(tmp_path), "max_age_s": 3600}
    missing = mayday_drill_probe.backup_probe(check)
    assert not missing["ok"] and "run `mayday backup` first" in missing["problems"][0]
    manifest(tmp_path, "app-old", time.time() - 7200)
    (tmp_path / "stray.manifest.json").write_text("not json")  # not ours: ignored, not fatal
    stale = mayday_drill_probe.backup_probe(check)
    assert not stale["ok"] and 7100 < stale["value"] < 7300 and "over max_age 3600 s" in stale["problems"][0]
    manifest(tmp_path, "app-new", time.time() - 60)
    fresh = mayday_drill_probe.backup_probe(check)
    assert fresh["ok"] and fresh["value"] < 120 and fresh["problems"] == []
    gone = mayday_drill_probe.backup_probe({"dir": str(tmp_path / "nope"), "max_age_s": 60})
    assert not gone["ok"] and "nope" in gone["problems"][0]
