"""Real local receivers for notification tests, on 127.0.0.1 only.

- HttpRecorder: a ThreadingHTTPServer that records every request (method, path, headers, JSON
  body) and answers as Slack (incoming webhook, chat.postMessage, chat.update), PagerDuty's Events
  API v2 (/v2/enqueue) or any webhook would; it can be told to fail the next N requests with a
  status, or to hang past the client's timeout, to test retries.
- SmtpReceiver: aiosmtpd with STARTTLS required before AUTH (a self-signed certificate made at
  test time), recording each mail with whether it came over TLS and who logged in.

Fixtures: `http_recorder` and `smtp_receiver` (tests/conftest.py makes them visible everywhere).
"""

from __future__ import annotations

import datetime
import email
import email.policy
import ipaddress
import json
import logging
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the recorder answered (0: it hung and never answered)

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None


@dataclass
class _Fault:
    path_prefix: str
    times: int
    status: int = 500
    hang_s: float = 0.0


class HttpRecorder:
    """Records requests; answers like Slack, PagerDuty or a plain webhook by path."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._ts = 0
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                recorder._handle(self)

            def do_GET(self) -> None:
                recorder._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> HttpRecorder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()  # hung handlers return at once
        self.server.shutdown()
        self.server.server_close()

    # -- what tests set up -----------------------------------------------------------------------
    def fail(self, times: int = 1, status: int = 500, path_prefix: str = "") -> None:
        """Answer the next `times` requests under `path_prefix` with `status`."""
        with self._lock:
            self._faults.append(_Fault(path_prefix, times, status=status))

    def hang(self, times: int = 1, seconds: float = 30.0, path_prefix: str = "") -> None:
        """Hold the next `times` requests for `seconds` without answering (a timeout for the client)."""
        with self._lock:
            self._faults.append(_Fault(path_prefix, times, status=0, hang_s=seconds))

    # -- what tests read -------------------------------------------------------------------------
    def under(self, path_prefix: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith(path_prefix)]

    def wait_for(self, path_prefix: str, count: int = 1, timeout: float = 10.0) -> list[Request]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.under(path_prefix)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        return self.under(path_prefix)

    # -- serving ---------------------------------------------------------------------------------
    def _fault_for(self, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and path.startswith(fault.path_prefix):
                    fault.times -= 1
                    return fault
        return None

    def _answer(self, path: str, body: Any) -> tuple[int, Any]:
        body = body if isinstance(body, dict) else {}
        if path.endswith("/chat.postMessage"):
            with self._lock:
                self._ts += 1
                ts = f"{int(time.time())}.{self._ts:06d}"
            return 200, {"ok": True, "channel": body.get("channel"), "ts": ts}
        if path.endswith("/chat.update"):
            return 200, {"ok": True, "channel": body.get("channel"), "ts": body.get("ts")}
        if path.endswith("/enqueue"):
            return 202, {"status": "success", "message": "Event processed", "dedup_key": body.get("dedup_key")}
        return 200, {"ok": True}

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        fault = self._fault_for(handler.path)
        request = Request(handler.command, handler.path, {k.lower(): v for k, v in handler.headers.items()}, raw,
                          fault.status if fault else 0)
        if fault and fault.hang_s:
            with self._lock:
                self.requests.append(request)
            self._released.wait(fault.hang_s)
            handler.close_connection = True
            return
        if fault:
            status, answer = fault.status, {"ok": False, "error": "injected failure"}
        else:
            status, answer = self._answer(handler.path, request.json)
        request.status = status
        with self._lock:
            self.requests.append(request)
        data = json.dumps(answer).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:
            pass  # the client gave up first


# -- SMTP ----------------------------------------------------------------------------------------
def self_signed_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """cert.pem and key.pem for `host` (IP or name), valid for a day; the cert is its own CA."""
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if not shutil.which("openssl"):
            raise
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "1", "-subj", f"/CN={host}", "-addext", f"subjectAltName=IP:{host}",
                        "-keyout", str(key_path), "-out", str(cert_path)], check=True, capture_output=True)
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    login: str | None


@dataclass
class SmtpReceiver:
    """aiosmtpd on 127.0.0.1 with STARTTLS required before anything else, and AUTH (LOGIN, PLAIN)
    checked against `users`. `ca_file` is the certificate a client must trust."""

    directory: Path
    users: dict[str, str] = field(default_factory=lambda: {"mayday": "smtp-test-password-9c1e"})
    mails: list[Mail] = field(default_factory=list)
    failed_logins: list[str] = field(default_factory=list)

    def start(self) -> SmtpReceiver:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.ca_file, key = self_signed_certificate(self.directory)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.ca_file), str(key))
        receiver = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                message = email.message_from_bytes(envelope.original_content or envelope.content,
                                                   policy=email.policy.default)
                auth = session.auth_data
                login = auth.login.decode() if isinstance(auth, LoginPassword) else None
                receiver.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), message,  # type: ignore[arg-type]
                                           session.ssl is not None, login))
                return "250 OK"

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
            if isinstance(auth_data, LoginPassword):
                login, password = auth_data.login.decode(), auth_data.password.decode()
                if receiver.users.get(login) == password:
                    return AuthResult(success=True, auth_data=auth_data)
                receiver.failed_logins.append(login)
            return AuthResult(success=False, handled=False)

        logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd warns about its own deprecations
        with socket.socket() as probe:  # aiosmtpd's readiness check needs a real port, not 0
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, tls_context=context,
                                     require_starttls=True, authenticator=authenticator, auth_require_tls=True,
                                     auth_required=bool(self.users))
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[Mail]:
        deadline = time.monotonic() + timeout
        while len(self.mails) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.mails)

    def channel(self, name: str = "mail", **settings: Any) -> dict[str, Any]:
        """An e-mail channel pointing here, trusting this receiver's certificate."""
        login, password = next(iter(self.users.items())) if self.users else ("", "")
        return {"type": "email", "name": name, "host": "127.0.0.1", "port": self.port, "ca_file": str(self.ca_file),
                "from": "mayday@example.test", "to": ["oncall@example.test"], "username": login,
                "password": password, "timeout": 3, **settings}


@pytest.fixture
def http_recorder() -> Iterator[HttpRecorder]:
    recorder = HttpRecorder().start()
    try:
        yield recorder
    finally:
        recorder.stop()


@pytest.fixture
def smtp_receiver() -> Iterator[SmtpReceiver]:
    directory = Path(tempfile.mkdtemp(prefix="mayday-smtp-"))
    receiver = SmtpReceiver(directory).start()
    try:
        yield receiver
    finally:
        receiver.stop()
        shutil.rmtree(directory, ignore_errors=True)


def closed_port() -> int:
    """A loopback port nothing listens on (a channel that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
