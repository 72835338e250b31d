"""mayday_http: probes against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import mayday_http
import pytest


class Handler(BaseHTTPRequestHandler):
    hits: dict[str, int]

    def log_message(self, *args):
        pass

    def _send(self, code, body, ctype="application/json"):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.server.hits[self.path] = self.server.hits.get(self.path, 0) + 1  # type: ignore[attr-defined]
        if self.path == "/health":
            self._send(200, json.dumps({"status": "healthy", "version": "v1"}))
        elif self.path == "/broken":
            self._send(500, json.dumps({"status": "error"}))
        elif self.path == "/slow":
            time.sleep(0.3)
            self._send(200, json.dumps({"status": "healthy", "version": "v1"}))
        elif self.path == "/text":
            self._send(200, "OK", "text/plain")
        else:
            self._send(404, "not found", "text/plain")


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.hits = {}  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def url(server, path):
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_probe_once_healthy(server):
    check = {"url": url(server, "/health"), "json": {"status": "healthy", "version": "v1"}}
    result = mayday_http.probe_once(check)
    assert result["ok"] is True, result
    assert result["status"] == 200
    assert result["problems"] == []
    assert json.loads(result["body"]) == {"status": "healthy", "version": "v1"}
    assert result["latency_ms"] >= 0
    assert result["checked_at"].endswith("Z")


def test_probe_once_wrong_json_field(server):
    result = mayday_http.probe_once({"url": url(server, "/health"), "json": {"version": "v2"}})
    assert result["ok"] is False
    assert result["status"] == 200
    assert result["problems"] == ["version='v1', expected 'v2'"]


def test_probe_once_non_json_body(server):
    result = mayday_http.probe_once({"url": url(server, "/text"), "json": {"status": "healthy"}})
    assert result["ok"] is False
    assert "body is not JSON" in result["problems"]


def test_probe_once_server_error(server):
    result = mayday_http.probe_once({"url": url(server, "/broken")})
    assert result["ok"] is False
    assert result["status"] == 500
    assert result["problems"] == ["status 500, expected 200"]
    assert "error" in result["body"]
    # the expected status is configurable
    assert mayday_http.probe_once({"url": url(server, "/broken"), "status": 500})["ok"] is True


def test_probe_once_latency_threshold(server):
    slow = mayday_http.probe_once({"url": url(server, "/slow"), "max_latency_ms": 100})
    assert slow["status"] == 200
    assert slow["latency_ms"] >= 300
    assert slow["ok"] is False
    assert slow["problems"] and slow["problems"][0].startswith("latency ")
    assert "over 100 ms" in slow["problems"][0]
    relaxed = mayday_http.probe_once({"url": url(server, "/slow"), "max_latency_ms": 5000})
    assert relaxed["ok"] is True


def test_probe_once_timeout(server):
    result = mayday_http.probe_once({"url": url(server, "/slow"), "timeout": 0.05})
    assert result["ok"] is False
    assert result["status"] is None
    assert "timed out" in result["body"].lower() or "timeout" in result["body"].lower()


def test_probe_once_connection_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = mayday_http.probe_once({"url": f"http://127.0.0.1:{port}/health", "timeout": 1})
    assert result["ok"] is False
    assert result["status"] is None
    assert result["problems"] == ["status None, expected 200"]


def test_probe_retries_are_bounded(server):
    before = server.hits.get("/broken", 0)
    started = time.monotonic()
    result = mayday_http.probe({"url": url(server, "/broken")}, retries=2, delay=0.01)
    assert time.monotonic() - started < 5
    assert result["ok"] is False
    assert result["attempts"] == 3  # the first try plus two retries
    assert server.hits["/broken"] - before == 3


def test_probe_stops_at_first_success(server):
    before = server.hits.get("/health", 0)
    result = mayday_http.probe({"url": url(server, "/health"), "retries": 5, "delay": 0.01})
    assert result["ok"] is True
    assert result["attempts"] == 1
    assert server.hits["/health"] - before == 1


def test_probe_zero_retries_means_one_attempt(server):
    result = mayday_http.probe({"url": url(server, "/broken"), "retries": 0, "delay": 5})
    assert result["attempts"] == 1


@pytest.mark.parametrize("body", ["[1, 2]", "null", '"healthy"'])
def test_json_check_rejects_non_object_body(body):
    result = mayday_http.evaluate({"url": "http://x/", "json": {"status": "healthy"}}, 200, body, 1.0, "now")
    assert result["ok"] is False
