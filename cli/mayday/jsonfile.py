"""Controller-side JSON files replaced whole: a reader sees the old document or the new, never half."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(path: Path | str, doc: Any, *, indent: int | None = 1, sort_keys: bool = False,
          durable: bool = False) -> None:
    """Write to a temporary file beside `path` (0600 from its creation: records may name hosts and
    people), then rename it over `path`. `durable` also fsyncs the file and the directory, for state
    that must survive a power cut (the serve's audit trail and approvals)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = (json.dumps(doc, indent=indent, sort_keys=sort_keys, default=str) + "\n").encode()
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)
