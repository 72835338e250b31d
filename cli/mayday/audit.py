"""The receiver's audit log and its state, in the state directory (serve/).

audit.jsonl is append-only: one JSON line per decision or event, written in one write() under an
exclusive lock and fsync'd before the receiver answers or starts anything, so a crash loses nothing
that was acted on. The receiver and its run workers both append to it. It never holds a secret:
entries are built from the alert's labels and mayday's own decisions, never from request headers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mayday import jsonfile
from mayday.paths import state_dir


def serve_dir() -> Path:
    return state_dir() / "serve"


def audit_path() -> Path:
    return serve_dir() / "audit.jsonl"


def now_utc(at: float | None = None) -> str:
    at = time.time() if at is None else at
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"


def append(entry: dict[str, Any], path: Path | None = None) -> dict[str, Any]:
    """Append one entry (stamped with `at`) and fsync it; returns the entry as written."""
    path = path or audit_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    doc = {"at": now_utc(), **entry}
    line = (json.dumps(doc, default=str, sort_keys=False) + "\n").encode()
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)  # closing drops the lock
    if created:
        jsonfile.fsync_dir(path.parent)
    return doc


def read(path: Path | None = None) -> list[dict[str, Any]]:
    path = path or audit_path()
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            entries.append(json.loads(line))
    return entries


def write_json(path: Path, doc: Any) -> None:
    """Replace a file atomically and durably (write, fsync, rename, fsync the directory)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    jsonfile.write(path, doc, durable=True)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return None


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[bool]:
    """A non-blocking exclusive lock on a file, held while the block runs: yields whether it was got."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield True
    finally:
        os.close(fd)
