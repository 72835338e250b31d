"""The alert receiver behind `mayday serve`: authenticate, split, decide, act, audit.

Every request is authenticated first (a bearer token, or an HMAC-SHA256 of the body keyed with the
same token); anything else gets 401 and starts nothing. A valid payload is split into its alerts and
each is decided on its own (mayday.policy). What the receiver does is appended to the audit log and
fsync'd before it answers. A run is started as a detached worker process (mayday.serve_run), so the
receiver answers at once and a receiver restarted mid-run neither kills the run nor forgets it: the
decision memory (de-duplication, throttle, breaker) and the runs in flight are files in the state
directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mayday import alertmanager, audit, locks, notify
from mayday import policy as pol
from mayday.policy import Decision, Memory, Policy

log = logging.getLogger("mayday.serve")

MAX_BODY = 1 << 20  # Alertmanager's groups are small; a bigger body is not one of its calls
APPROVAL_ID = re.compile(r"^apr-[0-9a-f]{8}$")
APPROVE_PATH = re.compile(r"^/(approve|deny)/([^/]+)$")
SIGNATURE = "X-Mayday-Signature"
WATCH_INTERVAL_S = 0.5
LATE_START_S = 10  # an approval acted on this long after its timeout is not started any more
SAFE_TEXT = re.compile(r"[^A-Za-z0-9_.:@/ -]")


def plain_text(value: str) -> str:
    """A label value as it may travel in extra vars: Ansible templates extra vars, so nothing that
    could open a template ({, }, %, #) gets through from a sender's labels."""
    return SAFE_TEXT.sub("_", value)[:128]


def new_request_id() -> str:
    return "req-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def new_approval_id() -> str:
    return "apr-" + secrets.token_hex(4)


def approvals_dir() -> Path:
    return audit.serve_dir() / "approvals"


def runs_dir() -> Path:
    return audit.serve_dir() / "runs"


def inflight_dir() -> Path:
    return audit.serve_dir() / "inflight"


def memory_path() -> Path:
    return audit.serve_dir() / "memory.json"


# -- authentication ------------------------------------------------------------------------------

def authenticate(token: bytes, authorization: str | None, signature: str | None, body: bytes) -> str | None:
    """None when the request carries the token (bearer) or a valid HMAC of its body; else why not.
    Constant-time comparisons; the reason never repeats what was sent."""
    if authorization:
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token):
            return None
    if signature:
        algorithm, _, given = signature.partition("=")
        expected = hmac.new(token, body, hashlib.sha256).hexdigest()
        if algorithm.strip().lower() == "sha256" and hmac.compare_digest(given.strip().lower().encode(),
                                                                          expected.encode()):
            return None
    if not authorization and not signature:
        return f"no credentials: send Authorization: Bearer <token> or {SIGNATURE}: sha256=<hmac of the body>"
    return "wrong token or signature"


def sign(token: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(token, body, hashlib.sha256).hexdigest()


# -- approvals: files, so `mayday approve ID` works without the network and a restart keeps them -----

def approval_file(approval_id: str) -> Path:
    return approvals_dir() / f"{approval_id}.json"


def answer_file(approval_id: str) -> Path:
    return approvals_dir() / f"{approval_id}.answer"


def pending_approvals() -> list[dict[str, Any]]:
    found = []
    for path in sorted(approvals_dir().glob("apr-*.json")) if approvals_dir().is_dir() else []:
        doc = audit.read_json(path)
        if isinstance(doc, dict) and doc.get("status") == "pending":
            found.append(doc)
    return found


class UnknownApproval(ValueError):
    """No such approval (HTTP 404), as against one that cannot be answered any more (409)."""


def answer(approval_id: str, approve: bool, by: str) -> dict[str, Any]:
    """Record a human's answer (approve or deny) to a pending approval; ValueError naming the pending
    ones when it cannot be answered. The receiver acts on it within a second."""
    pending = [a["id"] for a in pending_approvals() if a.get("expires_at", 0) > time.time()]
    valid = f"pending: {', '.join(pending)}" if pending else "no approval is pending"
    if not APPROVAL_ID.match(approval_id):
        raise UnknownApproval(f"{approval_id!r} is not an approval id (apr- and 8 hex digits); {valid}")
    doc = audit.read_json(approval_file(approval_id))
    if not isinstance(doc, dict):
        raise UnknownApproval(f"no approval {approval_id}; {valid}")
    if doc.get("status") != "pending":
        raise ValueError(f"approval {approval_id} is already closed ({doc.get('status')}); {valid}")
    if doc.get("expires_at", 0) <= time.time():
        raise ValueError(f"approval {approval_id} expired at {doc.get('expires_utc')}: no answer in time means no; "
                         f"{valid}")
    record = {"answer": "approve" if approve else "deny", "by": by[:100], "at": audit.now_utc()}
    try:
        fd = os.open(answer_file(approval_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ValueError(f"approval {approval_id} was already answered") from None
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return dict(doc, answer=record)


# -- runs ----------------------------------------------------------------------------------------

@dataclass
class RunRequest:
    request: str
    scenario: str
    inventory: str
    params: dict[str, Any]
    limit: str | None
    check: bool
    alert: dict[str, Any]
    rule: str | None
    confirmed: bool = False
    operator: str = "mayday-serve"

    def as_doc(self) -> dict[str, Any]:
        return dict(self.__dict__)


def launch_worker(request: RunRequest) -> int:
    """Start the run as its own process group (python -m mayday.serve_run): a receiver stopped or
    killed mid-run leaves it running, and the worker records the outcome itself. Returns its pid."""
    runs_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    request_file = runs_dir() / f"{request.request}.request.json"
    audit.write_json(request_file, request.as_doc())
    env = {k: v for k, v in os.environ.items() if k not in ("MAYDAY_SERVE_TOKEN",)}  # never handed on
    env["MAYDAY_OPERATOR"] = request.operator
    env["MAYDAY_STATE_DIR"] = str(audit.state_dir())
    with open(runs_dir() / f"{request.request}.log", "ab") as output:
        worker = subprocess.Popen([sys.executable, "-m", "mayday.serve_run", str(request_file)], env=env,
                                  stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                  start_new_session=True, close_fds=True)
    return worker.pid


def inflight_runs(record_lost: bool = True) -> list[dict[str, Any]]:
    """Runs started and not finished. A worker gone without a result is recorded as lost, once."""
    live = []
    for path in sorted(inflight_dir().glob("*.json")) if inflight_dir().is_dir() else []:
        doc = audit.read_json(path)
        if not isinstance(doc, dict):
            continue
        if not locks.is_stale(doc):
            live.append(doc)
            continue
        if record_lost and not (runs_dir() / f"{doc.get('request')}.result.json").exists():
            audit.append({"event": "run-lost", "request": doc.get("request"), "fingerprint": doc.get("fingerprint"),
                          "rule": doc.get("rule"), "reason": f"worker pid {doc.get('pid')} ended without an outcome"})
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return live


# -- the receiver --------------------------------------------------------------------------------

@dataclass
class Receiver:
    policy: Policy
    inventory: Path
    hosts: set[str] | None
    token: bytes
    channels: list[dict[str, Any]] = field(default_factory=list)
    public_url: str = ""
    launch: Callable[[RunRequest], int] = launch_worker

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        doc = audit.read_json(memory_path())
        self.memory = Memory.from_doc(doc if isinstance(doc, dict) else {})
        self.notifier_threads: list[threading.Thread] = []

    # the state that outlives the process
    def _save_memory(self) -> None:
        audit.write_json(memory_path(), self.memory.as_doc())

    def busy(self, check_mode: bool) -> str | None:
        for run in inflight_runs():
            if check_mode or not run.get("check"):
                return (f"{run.get('scenario')} run {run.get('request')} (pid {run.get('pid')}) in flight since "
                        f"{run.get('started')}")
        if not check_mode:
            holder = locks.holder([str(self.inventory.resolve())])
            if holder:
                return f"the run lock is held: {locks.describe(holder)}"
        return None

    # an authenticated webhook call
    def receive(self, body: bytes, received_at: float, client: str = "") -> dict[str, Any]:
        """Decide on every alert of a payload; raises alertmanager.BadPayload for anything else."""
        received = audit.now_utc(received_at)
        try:
            alerts = alertmanager.parse(body)
        except alertmanager.BadPayload as exc:
            audit.append({"event": "bad-payload", "client": client, "reason": str(exc)})
            raise
        answers = []
        with self.lock:  # one decision at a time: the second of two alerts sees the first one's run
            now = time.time()
            self.memory.prune(now)
            for alert in alerts:
                decision = pol.decide(alert, self.policy, self.memory, now, self.hosts, self.busy)
                if decision.decision in pol.ACTS:
                    decision.request = new_approval_id() if decision.decision == "approval-requested" \
                        else new_request_id()
                entry = self._act(decision, received)
                answers.append(entry)
        return {"received_at": received, "alerts": answers}

    def _entry(self, decision: Decision, received: str) -> dict[str, Any]:
        return {"event": "alert", "received_at": received, **decision.as_dict()}

    def _act(self, decision: Decision, received: str) -> dict[str, Any]:
        # Remembered and written down before anything starts: a crash after this never runs it twice.
        pol.remember(self.memory, decision, time.time())
        if decision.decision in pol.ACTS or decision.decision == "resolved":
            self._save_memory()
        entry = audit.append(self._entry(decision, received))
        if decision.decision in pol.STARTS:
            self._start(decision, received, decision.decision == "dry-run", confirmed=decision.confirmed)
        elif decision.decision == "approval-requested":
            self._ask(decision, received)
        elif decision.decision == "breaker-open":
            self._page(decision)
        elif decision.decision == "resolved":
            self._cancel_approvals(decision.alert.fingerprint)
        return {k: entry.get(k) for k in ("fingerprint", "alertname", "status", "rule", "mode", "scenario", "limit",
                                          "decision", "reason", "request")}

    def _alert_vars(self, decision: Decision, received: str, requested: str) -> dict[str, Any]:
        alert = decision.alert
        return {"alertname": plain_text(alert.name), "fingerprint": plain_text(alert.fingerprint),
                "starts_at": alert.starts_at, "received_at": received, "run_requested_at": requested,
                "rule": decision.rule or "", "request": decision.request or "",
                "severity": plain_text(alert.labels.get("severity", ""))}

    def _start(self, decision: Decision, received: str, check: bool, confirmed: bool,
               request_id: str | None = None) -> dict[str, Any]:
        assert decision.scenario
        request = request_id or decision.request or new_request_id()
        started = time.time()
        run = RunRequest(request=request, scenario=decision.scenario, inventory=str(self.inventory.resolve()),
                         params=decision.params, limit=decision.limit, check=check,
                         alert=self._alert_vars(decision, received, audit.now_utc(started)), rule=decision.rule,
                         confirmed=confirmed, operator=f"mayday-serve ({decision.rule})")
        try:
            pid = self.launch(run)
        except OSError as exc:
            return audit.append({"event": "run-not-started", "request": request, "rule": decision.rule,
                                 "fingerprint": decision.alert.fingerprint, "reason": f"{type(exc).__name__}: {exc}"})
        holder = {"request": request, "pid": pid, "pid_start": locks.process_start(pid),
                  "controller": socket.gethostname(), "scenario": decision.scenario, "check": check,
                  "rule": decision.rule, "fingerprint": decision.alert.fingerprint, "started": audit.now_utc(started)}
        audit.write_json(inflight_dir() / f"{request}.json", holder)
        return audit.append({"event": "run-started", "request": request, "rule": decision.rule,
                             "fingerprint": decision.alert.fingerprint, "alertname": decision.alert.name,
                             "scenario": decision.scenario, "limit": decision.limit, "check": check, "pid": pid,
                             "received_at": received, "run_requested_at": run.alert["run_requested_at"],
                             "received_to_started_s": round(started - _epoch(received), 3)})

    # approve mode
    def _ask(self, decision: Decision, received: str) -> None:
        assert decision.request
        now = time.time()
        expires = now + decision.approve_timeout_s
        doc = {"id": decision.request, "status": "pending", "requested_at": audit.now_utc(now),
               "expires_at": expires, "expires_utc": audit.now_utc(expires), "received_at": received,
               "decision": decision.as_dict(), "params": decision.params, "alert_labels": decision.alert.labels}
        audit.write_json(approval_file(decision.request), doc)
        url = f"{self.public_url}/approve/{decision.request}" if self.public_url else ""
        text = (f"{decision.alert.name} ({decision.alert.labels.get('severity', '-')}): rule {decision.rule} asks to "
                f"run {decision.scenario} on {decision.limit or 'every host'} ({decision.target}). Approve within "
                f"{decision.approve_timeout_s // 60} min: `mayday approve {decision.request}`"
                + (f" or POST {url} (bearer token)" if url else "") + ". No answer means no.")
        self._notify(text, "approval-requested", decision,
                     {"approval": decision.request, "approve_command": f"mayday approve {decision.request}",
                      "approve_url": url, "expires": doc["expires_utc"]})

    def _cancel_approvals(self, fingerprint: str) -> None:
        for doc in pending_approvals():
            if doc["decision"].get("fingerprint") == fingerprint:
                self._close(doc, "cancelled", "the alert resolved before an answer")

    def _close(self, doc: dict[str, Any], status: str, reason: str, **more: Any) -> dict[str, Any]:
        audit.write_json(approval_file(doc["id"]), dict(doc, status=status, closed_at=audit.now_utc()))
        decision = doc["decision"]
        return audit.append({"event": "approval", "approval": doc["id"], "decision": status, "reason": reason,
                             "fingerprint": decision.get("fingerprint"), "alertname": decision.get("alertname"),
                             "rule": decision.get("rule"), **more})

    def watch_approvals(self) -> None:
        """Act on answers and expiries (called every half second, and once at start-up)."""
        with self.lock:
            for doc in pending_approvals():
                answered = audit.read_json(answer_file(doc["id"]))
                late = time.time() - doc.get("expires_at", 0) > LATE_START_S
                if isinstance(answered, dict) and answered.get("answer") == "approve" and late:
                    # Approved in time, but no receiver acted on it until long after: too stale to start.
                    self._close(doc, "expired", f"approved by {answered.get('by')} at {answered.get('at')}, but no "
                                "receiver ran until after the approve timeout: not started")
                elif isinstance(answered, dict) and answered.get("answer") == "approve":
                    self._approved(doc, answered)
                elif isinstance(answered, dict) and answered.get("answer") == "deny":
                    self._close(doc, "denied", f"denied by {answered.get('by')}")
                elif doc.get("expires_at", 0) <= time.time():
                    self._close(doc, "expired", "no answer within the approve timeout: not started")

    def _approved(self, doc: dict[str, Any], answered: dict[str, Any]) -> None:
        in_the_way = self.busy(False)
        if in_the_way:
            self._close(doc, "approved-busy", f"approved by {answered.get('by')}; busy, not started: {in_the_way}")
            return
        raw = doc["decision"]
        alert = alertmanager.Alert(raw["fingerprint"], "firing", doc.get("alert_labels") or {}, raw["starts_at"])
        decision = Decision(alert, "run", "approved", rule=raw.get("rule"), mode="approve",
                            scenario=raw.get("scenario"), params=doc.get("params") or {}, limit=raw.get("limit"),
                            target=raw.get("target") or "", request=new_request_id())
        self._close(doc, "approved", f"approved by {answered.get('by')}", request=decision.request)
        self._start(decision, doc["received_at"], check=False, confirmed=True)

    # pages and notifications: never on the answering path (a slow channel must not delay Alertmanager)
    def _page(self, decision: Decision) -> None:
        text = (f"{decision.alert.name} ({decision.alert.labels.get('severity', '-')}): automatic response stopped. "
                f"{decision.reason}. Rule {decision.rule} would have run {decision.scenario} on "
                f"{decision.limit or 'every host'}: run it by hand if it is still needed.")
        self._notify(text, "escalation", decision, {"breaker": "open"})

    def _notify(self, text: str, event: str, decision: Decision, fields: dict[str, Any]) -> None:
        # The fields the channels lay out (what, where, why) and the alert's own.
        base = {"title": f"{decision.alert.name}: {event} ({decision.scenario})", "why": decision.reason,
                "hosts": [decision.limit] if decision.limit else [], "inventory": str(self.inventory),
                "alertname": decision.alert.name, "fingerprint": decision.alert.fingerprint,
                "severity": decision.alert.labels.get("severity"), "rule": decision.rule,
                "scenario": decision.scenario, "host": decision.limit, **fields}

        def send() -> None:
            try:
                delivered = notify.send(list(self.channels), text, event, None, base)
            except Exception as exc:  # a notification must never take the receiver down
                delivered = [{"channel": "-", "ok": False, "detail": type(exc).__name__}]
            audit.append({"event": "notified", "notify_event": event, "request": decision.request,
                          "fingerprint": decision.alert.fingerprint, "rule": decision.rule,
                          "delivered": [{k: d.get(k) for k in ("channel", "type", "ok", "detail")} for d in delivered]})

        thread = threading.Thread(target=send, name=f"notify-{decision.request}", daemon=True)
        self.notifier_threads = [t for t in self.notifier_threads if t.is_alive()] + [thread]
        thread.start()

    def wait_notifications(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        for thread in list(self.notifier_threads):
            thread.join(max(0.0, deadline - time.monotonic()))


def _epoch(stamp: str) -> float:
    from mayday.timing import parse_instant

    return parse_instant(stamp)


# -- HTTP ----------------------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    server_version = "mayday-serve"
    sys_version = ""
    timeout = 15  # a client that stalls mid-request does not hold a thread for long
    receiver: Receiver  # set on the subclass the server is built with

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _answer(self, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        body = (json.dumps(doc, indent=1) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._answer(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"})
            return None
        if int(length) > MAX_BODY:
            self.close_connection = True
            self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body over {MAX_BODY} bytes"})
            return None
        return self.rfile.read(int(length))

    def _authorized(self, body: bytes) -> bool:
        why = authenticate(self.receiver.token, self.headers.get("Authorization"), self.headers.get(SIGNATURE), body)
        if why is None:
            return True
        audit.append({"event": "unauthorized", "client": self.client_address[0], "path": urlsplit(self.path).path,
                      "reason": why})
        self._answer(HTTPStatus.UNAUTHORIZED, {"error": f"unauthorized: {why}"},
                     {"WWW-Authenticate": 'Bearer realm="mayday"'})
        return False

    def do_POST(self) -> None:
        received_at = time.time()
        path = urlsplit(self.path).path
        approve = APPROVE_PATH.match(path)
        if path != "/alertmanager" and not approve:
            self._answer(HTTPStatus.NOT_FOUND, {"error": "valid: POST /alertmanager, POST /approve/ID, "
                                                "POST /deny/ID, GET /healthz"})
            return
        body = self._body()
        if body is None or not self._authorized(body):
            return
        if approve:
            try:
                doc = answer(approve.group(2), approve.group(1) == "approve", f"http {self.client_address[0]}")
            except ValueError as exc:
                self._answer(HTTPStatus.NOT_FOUND if isinstance(exc, UnknownApproval) else HTTPStatus.CONFLICT,
                             {"error": str(exc)})
                return
            self.receiver.watch_approvals()
            self._answer(HTTPStatus.OK, {"approval": doc["id"], "answer": doc["answer"]["answer"],
                                         "status": (audit.read_json(approval_file(doc["id"])) or {}).get("status")})
            return
        try:
            result = self.receiver.receive(body, received_at, self.client_address[0])
        except alertmanager.BadPayload as exc:
            self._answer(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        result["answered_in_ms"] = round((time.time() - received_at) * 1000, 1)
        self._answer(HTTPStatus.OK, result)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._answer(HTTPStatus.OK, {"status": "ok"})
            return
        found = APPROVE_PATH.match(path)
        if found and self._authorized(b""):
            doc = audit.read_json(approval_file(found.group(2))) if APPROVAL_ID.match(found.group(2)) else None
            if not isinstance(doc, dict):
                self._answer(HTTPStatus.NOT_FOUND, {"error": f"no approval {found.group(2)!r}"})
                return
            self._answer(HTTPStatus.OK, {k: doc.get(k) for k in ("id", "status", "requested_at", "expires_utc",
                                                                 "decision")})
            return
        if not found:
            self._answer(HTTPStatus.NOT_FOUND, {"error": "valid: GET /healthz, GET /approve/ID"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def make_server(receiver: Receiver, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"receiver": receiver})
    server_class = _Server6 if ":" in host else _Server
    return server_class((host, port), handler)


def run_forever(receiver: Receiver, server: ThreadingHTTPServer, stop: threading.Event) -> None:
    """Serve until stop is set; the approval watcher runs beside the HTTP threads."""
    def watch() -> None:
        while not stop.wait(WATCH_INTERVAL_S):
            try:
                receiver.watch_approvals()
            except Exception:  # keep watching: one bad approval file must not stop the others
                log.exception("approval watcher")

    receiver.watch_approvals()
    watcher = threading.Thread(target=watch, name="approvals", daemon=True)
    watcher.start()
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True)
    serving.start()
    stop.wait()
    server.shutdown()
    server.server_close()
    receiver.wait_notifications(timeout=10)
