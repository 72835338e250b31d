"""`mayday serve` (the Alertmanager receiver), `mayday approve` and `mayday policy check|test`.

The receiver itself is mayday.receiver; the decisions are mayday.policy. This module resolves the
command line: the token, the address, the inventory's hosts and notification channels.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from mayday import alertmanager, audit, receiver
from mayday import inventory as inv
from mayday import policy as pol
from mayday.errors import BadInput, MaydayError
from mayday.paths import project_root, state_dir

DEFAULT_PORT = 9753
TOKEN_MIN = 16
CREDENTIAL_NAME = "mayday-serve-token"  # systemd LoadCredential=mayday-serve-token:/etc/mayday/serve-token


def lab_token_path() -> Path:
    """The lab's token (the lab's Alertmanager sends it): <state dir>/lab/<lab name>/serve-token."""
    from mayday import lab

    found = getattr(lab, "serve_token_path", None)
    if callable(found):
        return Path(found())
    return state_dir() / "lab" / lab.lab_name() / "serve-token"


def is_lab(path: Path) -> bool:
    return path.resolve() == (project_root() / "inventories" / "lab").resolve()


def read_token(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        token = path.read_bytes().strip()
    except OSError as exc:
        raise BadInput(f"token file {path}: {exc.strerror}") from None
    if mode & stat.S_IROTH:
        click.echo(f"mayday serve: warning: {path} is readable by every user; chmod 600 it", err=True)
    return check_token(token, str(path))


def check_token(token: bytes, where: str) -> bytes:
    if len(token) < TOKEN_MIN or any(c in token for c in b" \t\r\n"):
        raise BadInput(f"the token in {where} is not valid; valid: at least {TOKEN_MIN} characters, no whitespace "
                       "(such as the output of `openssl rand -hex 32`)")
    return token


def resolve_token(token_file: Path | None, inventory: Path) -> tuple[bytes, str]:
    """(token, where it came from); BadInput naming every place looked at when there is none."""
    if token_file:
        return read_token(token_file), str(token_file)
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / CREDENTIAL_NAME).exists():
        path = Path(credentials) / CREDENTIAL_NAME
        return read_token(path), f"systemd credential {CREDENTIAL_NAME}"
    if os.environ.get("MAYDAY_SERVE_TOKEN"):
        return check_token(os.environ["MAYDAY_SERVE_TOKEN"].strip().encode(), "MAYDAY_SERVE_TOKEN"), \
            "MAYDAY_SERVE_TOKEN"
    looked = ["--token-file", f"$CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME}", "MAYDAY_SERVE_TOKEN"]
    if is_lab(inventory):
        path = lab_token_path()
        if path.exists():
            return read_token(path), str(path)
        looked.append(str(path))
    raise BadInput("no token configured, so nothing could authenticate Alertmanager: refusing to start; valid: "
                   + ", ".join(looked))


def lab_gateway() -> str:
    """The lab network's IPv4 gateway: this controller, as the lab's containers reach it."""
    from mayday import lab

    try:
        return lab.gateway_ipv4(lab.lab_name())
    except MaydayError as exc:  # no lab network: bad input for serve (exit 2), with the way out
        raise BadInput(f"{exc}: `mayday lab up` first, or --listen HOST:PORT") from None


def default_port() -> int:
    text = os.environ.get("MAYDAY_SERVE_PORT") or str(DEFAULT_PORT)
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise BadInput(f"MAYDAY_SERVE_PORT={text!r} is not a port; valid: 1 to 65535")
    return int(text)


def parse_listen(listen: str | None, inventory: Path) -> tuple[str, int]:
    if not listen:
        return (lab_gateway() if is_lab(inventory) else "127.0.0.1"), default_port()
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise BadInput(f"--listen {listen!r} is not an address; valid: HOST:PORT such as 127.0.0.1:9753 or [::1]:9753")
    return host, int(port)


def inventory_channels(path: Path, host: str) -> list[dict[str, Any]]:
    """The inventory's mayday_notify_channels as Ansible renders them (vault, lookups) for one host.
    Read once at start-up; the values (webhook URLs are secrets) stay in this process."""
    tool = Path(sys.executable).parent / "ansible"
    env = dict(os.environ, ANSIBLE_CONFIG=str(project_root() / "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="json",
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_CALLBACKS_ENABLED="json")  # no run record for this
    out = subprocess.run([str(tool), "-i", str(path), host, "-m", "ansible.builtin.debug", "-a",
                          "var=mayday_notify_channels"], capture_output=True, text=True, env=env, check=False,
                         timeout=120, cwd=project_root())
    try:
        result = json.loads(out.stdout)["plays"][0]["tasks"][0]["hosts"][host]
    except (ValueError, KeyError, IndexError):
        raise ValueError(f"ansible could not read mayday_notify_channels (exit {out.returncode})") from None
    channels = result.get("mayday_notify_channels")
    if not isinstance(channels, list):
        return []  # "VARIABLE IS NOT DEFINED!"
    return [c for c in channels if isinstance(c, dict)]


def load_policy(directory: Path | None) -> pol.Policy:
    try:
        return pol.load(directory)
    except pol.PolicyError as exc:
        for problem in exc.problems:
            click.echo(f"- {problem}", err=True)
        raise BadInput(f"the policies have {len(exc.problems)} problem(s), listed above") from None


@click.command("serve")
@click.option("--listen", default=None, help="HOST:PORT to listen on (default: the lab network's gateway for the lab "
              "inventory, else 127.0.0.1; port MAYDAY_SERVE_PORT or 9753).")
@click.option("-i", "--inventory", "inventory_name", default=None, help="Inventory (default: the lab).")
@click.option("--policies", "policies_dir", default=None, type=click.Path(path_type=Path),
              help="Directory of policy files (default: policies/ in the checkout).")
@click.option("--token-file", default=None, type=click.Path(path_type=Path),
              help="File holding the token (else systemd credential mayday-serve-token, MAYDAY_SERVE_TOKEN, or the "
                   "lab's token file).")
@click.option("--public-url", default=None, help="Base URL in approve links (default: http://HOST:PORT).")
def serve(listen: str | None, inventory_name: str | None, policies_dir: Path | None, token_file: Path | None,
          public_url: str | None) -> None:
    """Receive Alertmanager's webhook and respond by policy: run, ask for approval, dry-run, or page."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    policy = load_policy(policies_dir)
    path = inv.resolve(inventory_name)
    token, token_source = resolve_token(token_file, path)
    host, port = parse_listen(listen, path)
    hosts = set(inv.load(path).hosts)
    with audit.exclusive(audit.serve_dir() / "serve.lock") as got:
        if not got:
            raise BadInput(f"another mayday serve already uses {state_dir()} ({audit.serve_dir() / 'serve.lock'})")
        try:
            channels = inventory_channels(path, sorted(hosts)[0]) if hosts else []
        except (ValueError, subprocess.TimeoutExpired) as exc:
            click.echo(f"mayday serve: warning: no notification channel: {exc}", err=True)
            channels = []
        live = receiver.Receiver(policy, path, hosts, token, channels)
        try:
            server = receiver.make_server(live, host, port)
        except OSError as exc:
            raise BadInput(f"cannot listen on {host}:{port}: {exc.strerror}; valid: --listen HOST:PORT with a free "
                           "port on an address of this machine") from None
        bound = server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        live.public_url = (public_url or f"http://{shown}:{bound}").rstrip("/")
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        audit.append({"event": "serve-started", "pid": os.getpid(), "listen": f"{shown}:{bound}",
                      "inventory": str(path), "rules": len(policy.rules), "token_source": token_source,
                      "channels": [c.get("name") or c.get("type") for c in channels]})
        click.echo(f"mayday serve: listening on http://{shown}:{bound}/alertmanager (pid {os.getpid()}); "
                   f"{len(policy.rules)} rules from {', '.join(policy.files)}; inventory {path}; token from "
                   f"{token_source}; audit log {audit.audit_path()}", err=True)
        receiver.run_forever(live, server, stop)
        audit.append({"event": "serve-stopped", "pid": os.getpid()})


@click.command("approve")
@click.argument("approval_id")
@click.option("--deny", is_flag=True, help="Say no instead (the run is not started).")
def approve(approval_id: str, deny: bool) -> None:
    """Answer an approval `mayday serve` asked for (policy mode approve); no answer in time means no."""
    try:
        doc = receiver.answer(approval_id, not deny, os.environ.get("MAYDAY_OPERATOR") or getpass.getuser())
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    decision = doc.get("decision") or {}
    what = f"{decision.get('scenario')} on {decision.get('limit') or 'every host'}"
    with audit.exclusive(audit.serve_dir() / "serve.lock") as free:
        running = not free
    click.echo(f"{'denied' if deny else 'approved'} {approval_id}: {what}"
               + ("" if deny else (": mayday serve starts it within a second" if running else
                                   ": it starts when mayday serve runs again (before "
                                   f"{doc.get('expires_utc')})")))


@click.group("policy")
def policy_group() -> None:
    """Policies that map alerts to responses (policies/*.yml): check them, replay a payload through them."""


@policy_group.command("check")
@click.argument("directory", required=False, type=click.Path(path_type=Path))
def policy_check(directory: Path | None) -> None:
    """Validate the policy files; exit 2 with every problem named."""
    policy = load_policy(directory)
    click.echo(f"ok: {len(policy.rules)} rules in {', '.join(policy.files)}; circuit breaker: at most "
               f"{policy.max_auto_runs_per_hour} automatic runs an hour")
    for rule in policy.rules:
        match = ", ".join(f"{k}={'|'.join(v)}" for k, v in rule.match.items()) or "every alert"
        click.echo(f"  {rule.name:<28} {rule.mode:<8} {rule.scenario or '(label scenario)':<18} when {match}; "
                   f"throttle {rule.throttle_s} s, at most {rule.max_runs_per_hour} runs an hour")


@policy_group.command("test")
@click.argument("payload", type=click.Path(path_type=Path))
@click.option("--policies", "policies_dir", default=None, type=click.Path(path_type=Path),
              help="Directory of policy files (default: policies/).")
@click.option("-i", "--inventory", "inventory_name", default=None, help="Inventory whose hosts are valid targets.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def policy_test(payload: Path, policies_dir: Path | None, inventory_name: str | None, as_json: bool) -> None:
    """Replay a recorded Alertmanager payload: print each alert's decision, run nothing.

    As a receiver with nothing done before would decide: alerts of the payload count against each
    other (duplicates, throttle, breaker); nothing is in flight."""
    policy = load_policy(policies_dir)
    try:
        alerts = alertmanager.parse(payload.read_bytes())
    except OSError as exc:
        raise BadInput(f"{payload}: {exc.strerror}") from None
    except alertmanager.BadPayload as exc:
        raise BadInput(f"{payload}: {exc}") from None
    hosts = set(inv.load(inv.resolve(inventory_name)).hosts)
    memory, now = pol.Memory(), time.time()
    found: list[dict[str, Any]] = []

    def busy(check_mode: bool) -> str | None:
        # A run this payload would have started is still in flight for the alerts after it.
        started = [d for d in found if d["decision"] == "run" or (check_mode and d["decision"] == "dry-run")]
        return f"{started[0]['scenario']} run for {started[0]['fingerprint']} in flight" if started else None

    for alert in alerts:
        decision = pol.decide(alert, policy, memory, now, hosts, busy)
        pol.remember(memory, decision, now)
        found.append(decision.as_dict() | {"params": decision.params})
    if as_json:
        click.echo(json.dumps({"alerts": found}, indent=2))
        return
    click.echo(f"{'fingerprint':<18} {'alertname':<24} {'status':<9} {'rule':<24} {'decision':<19} reason")
    for d in found:
        click.echo(f"{d['fingerprint'][:18]:<18} {d['alertname'][:24]:<24} {d['status']:<9} {(d['rule'] or '-'):<24} "
                   f"{d['decision']:<19} {d['reason']}")
