"""The receiver of `mayday serve` over real HTTP on loopback, with a real state directory: auth,
payload checks, splitting, resolved alerts, de-duplication across a restart, busy, the breaker's
page, approvals, the audit log. A run is stood in for by a real process (sleep) whose pid the
receiver tracks as it tracks its workers; real runs are in tests/integration/test_serve.py."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mayday import alertmanager, audit, locks, receiver
from mayday import policy as pol
from mayday.errors import BadInput

TOKEN = b"unit-test-token-0123456789abcdef"
HOSTS = {"web1", "web2", "db1", "pg1"}
REPO = Path(__file__).resolve().parents[2]


@dataclass
class StandIn:
    """Launches a real process per run (sleep), as long-lived as a run, and records each request."""

    requests: list[receiver.RunRequest] = field(default_factory=list)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __call__(self, request: receiver.RunRequest) -> int:
        self.requests.append(request)
        process = subprocess.Popen(["sleep", "60"])
        self.processes[request.request] = process
        return process.pid

    def finish(self, request: str, recorded: bool = True) -> None:
        """The run ends; a real worker writes its result first (recorded), a killed one does not."""
        if recorded:
            audit.write_json(receiver.runs_dir() / f"{request}.result.json", {"outcome": "RECOVERED"})
        self.processes[request].kill()
        self.processes[request].wait()

    def stop(self) -> None:
        for process in self.processes.values():
            process.kill()
            process.wait()


@dataclass
class Live:
    receiver: receiver.Receiver
    url: str
    state: Path
    launched: StandIn

    def post(self, doc: Any, path: str = "/alertmanager", token: bytes | None = TOKEN,
             headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
        body = raw if raw is not None else json.dumps(doc).encode()
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token.decode()}"
        request = urllib.request.Request(self.url + path, data=body, method="POST", headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def audit(self) -> list[dict[str, Any]]:
        return audit.read()


def rule(**given: Any) -> pol.Rule:
    fields: dict[str, Any] = {"name": "level1-auto", "file": "f.yml", "match": {"scenario": ("level1",)},
                              "scenario": "level1", "mode": "auto", "throttle_s": 600, "max_runs_per_hour": 3,
                              "approve_timeout_s": 900, "vars": {}, "limit_label": "host"}
    fields.update(given)
    return pol.Rule(**fields)


DEFAULT_RULES = [rule(), rule(name="level2-approve", match={"scenario": ("level2",)}, scenario="level2", mode="approve",
                              vars={"component": "component"}, approve_timeout_s=2),
                 rule(name="perf-dry", match={"scenario": ("performance",)}, scenario="performance", mode="dry-run")]


def start(state: Path, rules: list[pol.Rule] | None = None, max_auto: int = 6,
          launched: StandIn | None = None) -> tuple[Live, Any]:
    channels = [{"type": "file", "name": "pager", "path": "pages.jsonl"}]
    live = receiver.Receiver(pol.Policy(rules or DEFAULT_RULES, ["f.yml"], max_auto), REPO / "inventories" / "lab",
                             HOSTS, TOKEN, channels, launch=launched or StandIn())
    server = receiver.make_server(live, "127.0.0.1", 0)
    live.public_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return Live(live, live.public_url, state, live.launch), server  # type: ignore[arg-type]


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MAYDAY_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def live(state: Path) -> Iterator[Live]:
    found, server = start(state)
    yield found
    server.shutdown()
    server.server_close()
    found.receiver.wait_notifications()
    found.launched.stop()


def wire(fingerprint: str, status: str = "firing", starts_at: str = "2026-11-26T03:00:00.123456789Z",
         **labels: str) -> dict[str, Any]:
    return {"status": status, "labels": {"alertname": "HealthCheckFailing", "severity": "P0", **labels},
            "annotations": {"summary": "x"}, "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://mon1:9090/graph", "fingerprint": fingerprint}


def payload(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {"version": "4", "groupKey": "{}:{alertname=\"HealthCheckFailing\"}", "truncatedAlerts": 0,
            "status": "firing", "receiver": "mayday", "groupLabels": {"alertname": "HealthCheckFailing"},
            "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://mon1:9093", "alerts": list(alerts)}


def decisions(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["fingerprint"], a["decision"]) for a in answer["alerts"]]


# --- authentication ------------------------------------------------------------------------------

def test_authenticate_accepts_the_bearer_token_or_an_hmac_of_the_body() -> None:
    body = b'{"version": "4"}'
    assert receiver.authenticate(TOKEN, f"Bearer {TOKEN.decode()}", None, body) is None
    assert receiver.authenticate(TOKEN, f"bearer {TOKEN.decode()}", None, body) is None
    assert receiver.authenticate(TOKEN, None, receiver.sign(TOKEN, body), body) is None
    assert receiver.authenticate(TOKEN, None, None, body).startswith("no credentials")  # type: ignore[union-attr]
    for authorization, signature in ((f"Bearer {TOKEN.decode()}x", None), (f"Basic {TOKEN.decode()}", None),
                                     (f"Bearer {TOKEN.decode()[:-1]}", None), ("Bearer ", None),
                                     (None, receiver.sign(TOKEN, body + b" ")), (None, receiver.sign(b"other", body)),
                                     (None, "sha1=" + receiver.sign(TOKEN, body)[7:]), (None, "sha256=")):
        assert receiver.authenticate(TOKEN, authorization, signature, body) == "wrong token or signature"


def test_anything_unauthenticated_gets_401_and_starts_nothing(live: Live) -> None:
    body = payload(wire("fp1", scenario="level1"))
    for token, headers in ((None, {}), (b"wrong-token-wrong-token", {}),
                           (None, {"X-Mayday-Signature": receiver.sign(b"not-the-token", json.dumps(body).encode())})):
        status, answer = live.post(body, token=token, headers=headers)
        assert status == 401 and answer["error"].startswith("unauthorized"), answer
    assert live.launched.requests == []
    assert [e["event"] for e in live.audit()] == ["unauthorized"] * 3
    assert not receiver.memory_path().exists()


def test_an_hmac_signed_call_is_accepted(live: Live) -> None:
    raw = json.dumps(payload(wire("fp1", scenario="level1"))).encode()
    status, answer = live.post(None, raw=raw, token=None, headers={"X-Mayday-Signature": receiver.sign(TOKEN, raw)})
    assert status == 200 and decisions(answer) == [("fp1", "run")]


def test_the_token_never_reaches_the_audit_log_or_any_state_file(live: Live) -> None:
    live.post(payload(wire("fp1", scenario="level1"), wire("fp2", scenario="level2", component="api")))
    live.post(payload(wire("fp3", scenario="level1")), token=TOKEN + b"x")
    live.post(payload(wire("fp4", scenario="level1")), token=None, headers={"Authorization": f"Basic {TOKEN.decode()}"})
    live.receiver.wait_notifications()
    files = [p for p in live.state.rglob("*") if p.is_file()]
    assert any(p.name == "audit.jsonl" for p in files) and any(p.name == "pages.jsonl" for p in files)
    for path in files:
        assert TOKEN not in path.read_bytes(), path
    assert all(TOKEN.decode() not in json.dumps(r.as_doc()) for r in live.launched.requests)


# --- payloads ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    (b"not json", "the body is not JSON"),
    (b'{"alerts": []}', "Alertmanager webhook version None; valid: '4'"),
    (b'{"version": "4", "alerts": []}', "alerts must be a non-empty list"),
    (b'{"hello": "world"}', "not an Alertmanager webhook payload"),
    (json.dumps(payload(dict(wire("fp1"), status="burning"))).encode(), "alerts[0].status is 'burning'; valid: firing"),
    (json.dumps(payload(dict(wire("fp1"), fingerprint=""))).encode(), "alerts[0].fingerprint is missing"),
    (json.dumps(payload(dict(wire("fp1"), startsAt="yesterday"))).encode(), "alerts[0].startsAt: 'yesterday' is not"),
    (json.dumps(payload(dict(wire("fp1"), labels={"scenario": "level1"}))).encode(), "labels.alertname is missing"),
    (json.dumps(payload(dict(wire("fp1"), labels={"alertname": "A", "n": 1}))).encode(), "labels.n must be a string"),
])
def test_a_payload_that_is_not_alertmanagers_gets_400_and_starts_nothing(live: Live, raw: bytes, expected: str) -> None:
    status, answer = live.post(None, raw=raw)
    assert status == 400 and expected in answer["error"], answer
    assert live.launched.requests == []
    assert [e["event"] for e in live.audit()] == ["bad-payload"]


def test_other_paths_and_oversized_bodies_are_refused(live: Live) -> None:
    assert live.post(payload(wire("fp1")), path="/webhook")[0] == 404
    connection = http.client.HTTPConnection(urllib.parse.urlsplit(live.url).netloc, timeout=5)
    connection.putrequest("POST", "/alertmanager")  # announced too big: refused before it is read
    connection.putheader("Authorization", f"Bearer {TOKEN.decode()}")
    connection.putheader("Content-Length", str(receiver.MAX_BODY + 1))
    connection.endheaders()
    assert connection.getresponse().status == 413
    connection.close()
    with urllib.request.urlopen(live.url + "/healthz", timeout=5) as answer:
        assert json.loads(answer.read()) == {"status": "ok"}
    assert live.launched.requests == []


def test_parse_keeps_each_alerts_own_status_and_normalises_its_start() -> None:
    alerts = alertmanager.parse(json.dumps(payload(
        wire("a", "resolved"), wire("b", starts_at="2026-11-26T04:00:00.5+01:00"))).encode())
    assert [(a.fingerprint, a.status, a.starts_at) for a in alerts] == [
        ("a", "resolved", "2026-11-26T03:00:00.123Z"), ("b", "firing", "2026-11-26T03:00:00.500Z")]


# --- decisions over HTTP -------------------------------------------------------------------------

def test_a_group_is_split_and_each_alert_decided_on_its_own(live: Live) -> None:
    status, answer = live.post(payload(
        wire("r1", "resolved", scenario="level1"), wire("f1", scenario="level1"),
        wire("f2", scenario="level1", host="web9"),
        wire("f3", scenario="level9"), wire("f4", alertname_other="x")))
    assert status == 200
    assert decisions(answer) == [("r1", "resolved"), ("f1", "run"), ("f2", "rejected"), ("f3", "no-rule"),
                                 ("f4", "no-rule")]
    assert "valid: db1, pg1, web1, web2" in answer["alerts"][2]["reason"]
    assert [r.scenario for r in live.launched.requests] == ["level1"]
    run = live.launched.requests[0]
    assert run.alert["fingerprint"] == "f1" and run.alert["starts_at"] == "2026-11-26T03:00:00.123Z"
    assert run.alert["received_at"] <= run.alert["run_requested_at"]
    assert not run.check and not run.confirmed and run.limit is None
    events = [(e["event"], e.get("fingerprint"), e.get("decision")) for e in live.audit()]
    assert events == [("alert", "r1", "resolved"), ("alert", "f1", "run"), ("run-started", "f1", None),
                      ("alert", "f2", "rejected"), ("alert", "f3", "no-rule"), ("alert", "f4", "no-rule")]


def test_a_resolved_alert_alone_starts_nothing(live: Live) -> None:
    status, answer = live.post(payload(wire("fp1", "resolved", scenario="level1")))
    assert status == 200 and decisions(answer) == [("fp1", "resolved")]
    assert live.launched.requests == []


def test_the_answer_comes_within_a_second_for_a_large_group(live: Live) -> None:
    group = payload(*[wire(f"fp{n}", scenario="level1", host=f"web{1 + n % 2}") for n in range(50)])
    started = time.monotonic()
    status, answer = live.post(group)
    assert status == 200 and time.monotonic() - started < 1.0, answer.get("answered_in_ms")
    # web1 runs, web1's others are throttled (same rule and target), web2's find web1's run in flight.
    assert sorted({d for _, d in decisions(answer)}) == ["busy", "run", "throttled"]
    assert len(live.launched.requests) == 1


def test_a_second_alert_while_a_run_is_in_flight_is_busy_not_started(live: Live) -> None:
    assert decisions(live.post(payload(wire("f1", scenario="level1", host="web1")))[1]) == [("f1", "run")]
    answer = live.post(payload(wire("f2", scenario="level1", host="web2")))[1]
    assert decisions(answer) == [("f2", "busy")] and "busy, not started" in answer["alerts"][0]["reason"]
    live.launched.finish(live.launched.requests[0].request)
    assert decisions(live.post(payload(wire("f3", scenario="level1", host="web2")))[1]) == [("f3", "run")]
    assert [e["event"] for e in live.audit()].count("run-lost") == 0


def test_a_run_lock_held_by_someone_else_means_busy(live: Live) -> None:
    sources = [str((REPO / "inventories" / "lab").resolve())]
    holder = locks.owner("INC-BY-HAND")
    holder.update(pid=os.getpid(), pid_start=locks.process_start(os.getpid()))
    assert locks.acquire(sources, holder)["acquired"]
    try:
        answer = live.post(payload(wire("f1", scenario="level1")))[1]
        assert decisions(answer) == [("f1", "busy")] and "INC-BY-HAND" in answer["alerts"][0]["reason"]
        # A dry run does not need the lock.
        assert decisions(live.post(payload(wire("f2", scenario="performance")))[1]) == [("f2", "dry-run")]
        assert live.launched.requests[0].check
    finally:
        locks.release(sources, os.getpid())


def test_a_worker_gone_without_an_outcome_is_recorded_as_lost(live: Live) -> None:
    live.post(payload(wire("f1", scenario="level1")))
    live.launched.finish(live.launched.requests[0].request, recorded=False)
    assert decisions(live.post(payload(wire("f2", scenario="level1", host="web1")))[1]) == [("f2", "run")]
    lost = [e for e in live.audit() if e["event"] == "run-lost"]
    assert len(lost) == 1 and lost[0]["fingerprint"] == "f1"


def test_a_restarted_receiver_neither_repeats_nor_forgets(state: Path) -> None:
    first, server = start(state)
    try:
        assert decisions(first.post(payload(wire("f1", scenario="level1")))[1]) == [("f1", "run")]
    finally:
        server.shutdown()
        server.server_close()
    again, server = start(state, launched=StandIn())
    try:
        # Alertmanager sends the group again after the restart: the same firing is a duplicate, and a
        # new alert finds the first run still in flight.
        answer = again.post(payload(wire("f1", scenario="level1"), wire("f2", scenario="level1", host="web2")))[1]
        assert decisions(answer) == [("f1", "duplicate"), ("f2", "busy")]
        assert answer["alerts"][0]["request"] == first.launched.requests[0].request
        assert again.launched.requests == []
    finally:
        server.shutdown()
        server.server_close()
        first.launched.stop()
    events = [e["event"] for e in audit.read()]
    assert events.count("run-started") == 1


def test_the_breaker_pages_a_human_instead_of_running(state: Path) -> None:
    live, server = start(state, rules=[rule(max_runs_per_hour=1)])
    try:
        live.post(payload(wire("f1", scenario="level1", host="web1")))
        live.launched.finish(live.launched.requests[0].request)
        answer = live.post(payload(wire("f2", scenario="level1", host="web2")))[1]
        assert decisions(answer) == [("f2", "breaker-open")]
        assert "circuit breaker: 1 automatic runs of rule level1-auto (at most 1)" in answer["alerts"][0]["reason"]
        live.receiver.wait_notifications()
        pages = [json.loads(line) for line in (state / "pages.jsonl").read_text().splitlines()]
        assert [(p["event"], p["fingerprint"], p["breaker"]) for p in pages] == [("escalation", "f2", "open")]
        assert "run it by hand" in pages[0]["text"]
        assert len(live.launched.requests) == 1
        # Alertmanager repeats the alert: no second page.
        assert decisions(live.post(payload(wire("f2", scenario="level1", host="web2")))[1]) == [("f2", "duplicate")]
        notified = [e for e in audit.read() if e["event"] == "notified"]
        assert len(notified) == 1 and notified[0]["delivered"][0]["ok"]
    finally:
        server.shutdown()
        server.server_close()
        live.launched.stop()


# --- approvals -----------------------------------------------------------------------------------

def ask(live: Live, fingerprint: str = "f1", component: str = "api") -> str:
    answer = live.post(payload(wire(fingerprint, scenario="level2", component=component)))[1]
    assert decisions(answer) == [(fingerprint, "approval-requested")]
    return str(answer["alerts"][0]["request"])


def test_approve_over_http_starts_the_run_confirmed(live: Live) -> None:
    approval = ask(live)
    live.receiver.wait_notifications()
    asked = json.loads((live.state / "pages.jsonl").read_text().splitlines()[0])
    assert asked["event"] == "approval-requested" and f"mayday approve {approval}" in asked["text"]
    assert asked["approve_url"] == f"{live.url}/approve/{approval}"
    assert live.post(None, path=f"/approve/{approval}", raw=b"", token=b"wrong-token-wrong")[0] == 401
    assert live.launched.requests == []
    status, answer = live.post(None, path=f"/approve/{approval}", raw=b"")
    assert status == 200 and answer["status"] == "approved"
    [run] = live.launched.requests
    assert (run.scenario, run.params["component"], run.confirmed, run.check) == ("level2", "api", True, False)
    assert live.post(None, path=f"/approve/{approval}", raw=b"")[0] == 409  # answered already
    assert live.post(None, path="/approve/apr-00000000", raw=b"")[0] == 404


def test_no_answer_within_the_timeout_means_no(live: Live) -> None:
    approval = ask(live)
    time.sleep(2.1)
    live.receiver.watch_approvals()
    assert live.launched.requests == []
    closed = [e for e in audit.read() if e["event"] == "approval"]
    assert [(e["approval"], e["decision"]) for e in closed] == [(approval, "expired")]
    from mayday.cli import cli

    late = CliRunner().invoke(cli, ["approve", approval], standalone_mode=False)
    assert isinstance(late.exception, BadInput) and "closed (expired)" in str(late.exception)


def test_an_approval_answered_while_no_receiver_ran_is_not_started_long_after(live: Live) -> None:
    approval = ask(live)
    receiver.answer(approval, True, "operator")  # in time, but the receiver only looks later
    doc = json.loads(receiver.approval_file(approval).read_text())
    audit.write_json(receiver.approval_file(approval), dict(doc, expires_at=time.time() - receiver.LATE_START_S - 1))
    live.receiver.watch_approvals()
    assert live.launched.requests == []
    [closed] = [e for e in audit.read() if e["event"] == "approval"]
    assert closed["decision"] == "expired" and "approved by operator" in closed["reason"]


def test_mayday_approve_and_deny_from_the_command_line(live: Live) -> None:
    from mayday.cli import cli

    first, second = ask(live, "f1"), ask(live, "f2", "frontend")  # another target: not throttled
    unknown = CliRunner().invoke(cli, ["approve", "apr-00000000"], standalone_mode=False)
    assert isinstance(unknown.exception, BadInput) and unknown.exception.exit_code == 2
    assert f"pending: {first}, {second}" in str(unknown.exception) or f"pending: {second}, {first}" in str(
        unknown.exception)
    denied = CliRunner().invoke(cli, ["approve", second, "--deny"], standalone_mode=False)
    assert denied.exception is None and denied.output.startswith(f"denied {second}")
    approved = CliRunner().invoke(cli, ["approve", first], standalone_mode=False)
    assert approved.exception is None, approved.output
    live.receiver.watch_approvals()
    assert [r.params["component"] for r in live.launched.requests] == ["api"]
    assert {(e["approval"], e["decision"]) for e in audit.read() if e["event"] == "approval"} == {
        (first, "approved"), (second, "denied")}


def test_a_resolved_alert_cancels_its_pending_approval(live: Live) -> None:
    approval = ask(live)
    live.post(payload(wire("f1", "resolved", scenario="level2", component="api")))
    assert [(e["approval"], e["decision"]) for e in audit.read() if e["event"] == "approval"] == [
        (approval, "cancelled")]
    assert live.post(None, path=f"/approve/{approval}", raw=b"")[0] == 409
    assert live.launched.requests == []


# --- the command: token and address --------------------------------------------------------------

def test_serve_refuses_to_start_without_a_token(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mayday.cli import cli

    monkeypatch.delenv("MAYDAY_SERVE_TOKEN", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--listen", "127.0.0.1:0"], standalone_mode=False)
    assert isinstance(result.exception, BadInput) and result.exception.exit_code == 2
    assert "no token configured" in str(result.exception) and "serve-token" in str(result.exception)
    assert not (state / "serve" / "audit.jsonl").exists()


def test_the_token_comes_from_the_file_systemd_the_environment_or_the_lab(
        state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mayday import serve

    lab = REPO / "inventories" / "lab"
    monkeypatch.delenv("MAYDAY_SERVE_TOKEN", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    lab_token = serve.lab_token_path()
    lab_token.parent.mkdir(parents=True)
    lab_token.write_text("lab-token-0123456789abcdef\n")
    assert serve.resolve_token(None, lab) == (b"lab-token-0123456789abcdef", str(lab_token))
    with pytest.raises(BadInput, match="no token configured"):
        serve.resolve_token(None, REPO / "inventories" / "production")  # not the lab: no lab token
    monkeypatch.setenv("MAYDAY_SERVE_TOKEN", "env-token-0123456789abcdef")
    assert serve.resolve_token(None, lab)[1] == "MAYDAY_SERVE_TOKEN"
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / serve.CREDENTIAL_NAME).write_text("cred-token-0123456789abcdef")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert serve.resolve_token(None, lab)[0] == b"cred-token-0123456789abcdef"
    given = tmp_path / "token"
    given.write_text("short")
    with pytest.raises(BadInput, match="valid: at least 16 characters"):
        serve.resolve_token(given, lab)
    with pytest.raises(BadInput, match="No such file"):
        serve.resolve_token(tmp_path / "absent", lab)


def test_listen_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    from mayday import serve

    other = REPO / "inventories" / "production"
    monkeypatch.delenv("MAYDAY_SERVE_PORT", raising=False)
    assert serve.parse_listen(None, other) == ("127.0.0.1", 9753)
    monkeypatch.setenv("MAYDAY_SERVE_PORT", "19000")
    assert serve.parse_listen(None, other) == ("127.0.0.1", 19000)
    assert serve.parse_listen("[::1]:8080", other) == ("::1", 8080)
    for bad in ("localhost", ":80", "host:port", "1.2.3.4:70000"):
        with pytest.raises(BadInput, match="valid: HOST:PORT"):
            serve.parse_listen(bad, other)
    monkeypatch.setenv("MAYDAY_SERVE_PORT", "http")
    with pytest.raises(BadInput, match="valid: 1 to 65535"):
        serve.parse_listen(None, other)


def test_a_second_receiver_on_the_same_state_directory_is_refused(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mayday.cli import cli

    monkeypatch.setenv("MAYDAY_SERVE_TOKEN", TOKEN.decode())
    with audit.exclusive(audit.serve_dir() / "serve.lock") as got:
        assert got
        result = CliRunner().invoke(cli, ["serve", "--listen", "127.0.0.1:0"], standalone_mode=False)
    assert isinstance(result.exception, BadInput) and "another mayday serve" in str(result.exception)


def test_the_audit_log_is_append_only_jsonl_with_private_permissions(state: Path) -> None:
    audit.append({"event": "one"})
    audit.append({"event": "two"})
    path = audit.audit_path()
    assert [e["event"] for e in audit.read()] == ["one", "two"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert all(json.loads(line)["at"].endswith("Z") for line in path.read_text().splitlines())


def test_the_systemd_unit_is_hardened_and_matches_what_serve_reads() -> None:
    import configparser

    from mayday import serve

    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    unit.optionxform = str  # type: ignore[assignment,method-assign]  (keys are case-sensitive)
    unit.read(REPO / "extensions" / "systemd" / "mayday-serve.service")
    service = unit["Service"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                       "CapabilityBoundingSet": "", "KillMode": "process", "UMask": "0077"}.items():
        assert service.get(key) == value, key
    assert service["LoadCredential"].startswith(f"{serve.CREDENTIAL_NAME}:")
    assert "mayday serve" in service["ExecStart"] and "MAYDAY_SERVE_TOKEN" not in service.get("Environment", "")
    assert "ProtectProc" not in service  # other users' run locks must not look stale


def test_label_values_reach_the_runs_extra_vars_without_anything_ansible_would_template(live: Live) -> None:
    hostile = "{{ lookup('pipe', 'touch /tmp/owned') }}{% raw %}#"
    live.post(payload(wire("f1", scenario="level1", severity=hostile)))
    [run] = live.launched.requests
    assert not set("{}%#'") & set(json.dumps(run.alert["severity"]).strip('"'))
    assert run.alert["severity"] == "__ lookup__pipe__ _touch /tmp/owned__ ____ raw ___"
