"""The communication drill's failing channel (fault `fail_channel`, on the controller, where mayday's
notifications are sent from).

The named channels are made to fail for real, for this one message only: a file channel writes under
/dev/null (NotADirectoryError), a webhook, Slack or e-mail channel is pointed at a loopback port
nothing listens on (connection refused). Every channel of the inventory then gets a test message
through `mayday.notify.send`, the same path a run's notifications take, and the drill checks what
seed 001 asks of a failing channel: it is reported as not delivered, its message reaches the fallback
(for a file fallback: the line is read back, naming the failed channel), and every other channel
still delivers. Nothing outside this process changes, so there is nothing for a lease to undo if the
controller dies mid-drill.

    python -m mayday.drills.channel_fault -i INVENTORY --fail NAME [--fallback JSON] --json
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Any

from mayday import notify
from mayday.errors import BadInput
from mayday.paths import state_dir

FAILABLE = ("file", "webhook", "slack", "email")
BROKEN_FILE = "/dev/null/mayday-drill/notifications.jsonl"  # a path under a device: never writable


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def broken(channel: dict[str, Any], port: int | None = None) -> dict[str, Any]:
    """A copy of the channel that fails when used, the way a dead endpoint fails."""
    kind = channel.get("type")
    if kind == "file":
        return {**channel, "path": BROKEN_FILE}
    dead = f"http://127.0.0.1:{port or closed_port()}/mayday-drill-failing-channel"
    if kind == "webhook" or (kind == "slack" and (channel.get("url") or channel.get("url_env"))):
        return {**{k: v for k, v in channel.items() if k != "url_env"}, "url": dead}
    if kind == "email":
        return {**channel, "host": "127.0.0.1", "port": port or closed_port(), "security": "none",
                "username": "", "password": "", "password_env": ""}
    raise BadInput(f"channel {channel.get('name')!r} ({kind}) cannot be made to fail by a drill; valid: "
                   f"{', '.join(FAILABLE)} (Slack with an incoming-webhook url)")


def fallback_record(fallback: Any, channels: list[dict[str, Any]], failing: list[str]) -> Path | None:
    """The file the fallback writes to, when it is a file: the channel mayday.notify.send picks (a
    channel of its own, one named that did not fail, else the default file)."""
    _, channel = notify._fallback_channel(fallback, [(str(c.get("name")), c) for c in channels], set(failing))
    if channel.get("type") != "file":
        return None
    return Path(os.path.join(state_dir(), str(channel["path"])))


def received(path: Path, token: str, failed: list[str]) -> bool:
    """The fallback's file holds this drill's message, naming every failed channel as undelivered."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        if token not in line:
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and set(failed) <= set(doc.get("undelivered_on") or []):
            return True
    return False


def judge(entries: list[dict[str, Any]], failing: list[str], fallback_received: bool | None) -> list[str]:
    """What is wrong with the failover (empty: the failing channels were reported and fell back, the
    others delivered). fallback_received None: not a file fallback, its delivery answer is the proof."""
    problems = []
    by_name = {str(e.get("channel")): e for e in entries}
    for name in failing:
        entry = by_name.get(name)
        if entry is None:
            problems.append(f"{name}: no delivery attempt reported")
        elif entry.get("ok"):
            problems.append(f"{name}: reported delivered although it was made to fail")
        elif not entry.get("fallback"):
            problems.append(f"{name}: failed without falling back")
        elif not entry.get("fallback_ok"):
            problems.append(f"{name}: the fallback {entry['fallback']} did not take the message either")
    problems += [f"{e.get('channel')}: did not deliver ({e.get('detail')})" for e in entries
                 if str(e.get("channel")) not in failing and not e.get("ok")]
    if fallback_received is False:
        problems.append("the fallback's file does not hold the drill's message naming the failed channels")
    return problems


def run(channels: list[dict[str, Any]], failing: list[str], fallback: Any = None,
        inventory: str = "") -> dict[str, Any]:
    names = [str(c.get("name")) for c in channels]
    unknown = [n for n in failing if n not in names]
    if not failing or unknown:
        raise BadInput(f"fail_channel: channel(s) {', '.join(unknown) or 'none named'} not in the inventory; "
                       f"valid: {', '.join(names) or 'none configured'}")
    # Pages are no part of a failover: PagerDuty never takes a fallback (mayday.notify.send).
    sent = [broken(c) if c["name"] in failing else c for c in channels if c.get("type") != "pagerduty"]
    token = f"mayday-drill-failover-{secrets.token_hex(4)}"
    entries = notify.send(sent, f"mayday communication drill: {', '.join(failing)} made to fail ({token}).",
                          "test", None, {"title": "communication drill: failing channel", "severity": "P3",
                                         "inventory": inventory, "why": token, "outcome": "test"},
                          fallback=fallback)
    record = fallback_record(fallback, channels, failing)
    got = received(record, token, failing) if record is not None else None
    problems = judge(entries, failing, got)
    shown = [{k: e.get(k) for k in ("channel", "type", "ok", "detail", "attempts", "fallback", "fallback_ok")}
             for e in entries]
    return {"ok": not problems, "rc": 0 if not problems else 1, "channels": shown, "failing": failing,
            "fallback": {"record": str(record) if record else None, "received": got}, "token": token,
            "problems": problems, "msg": "; ".join(problems)}


def main(argv: list[str]) -> int:
    import argparse

    from mayday import inventory as inv
    from mayday.notify_cli import inventory_channels

    parser = argparse.ArgumentParser(prog="python -m mayday.drills.channel_fault")
    parser.add_argument("-i", "--inventory", default=None)
    parser.add_argument("--fail", action="append", default=[], required=True)
    parser.add_argument("--fallback", default="", help="mayday_notify_fallback as JSON (a name or a channel)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        path = inv.resolve(args.inventory)
        fallback = json.loads(args.fallback) if args.fallback else None
        outcome = run(inventory_channels(path), args.fail, fallback, str(path))
    except (BadInput, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(json.dumps(outcome, indent=2) if args.json else outcome["msg"] or "failover ok")
    return int(outcome["rc"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
