"""mayday.jsonfile: a reader sees the old document or the new one, and the file is private from its creation."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from mayday import jsonfile


def test_replaces_whole_and_private(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text('{"old": true}')
    os.chmod(path, 0o644)
    jsonfile.write(path, {"new": [1, 2]}, indent=2, durable=True)
    assert json.loads(path.read_text()) == {"new": [1, 2]}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary file left


def test_a_failed_write_leaves_the_old_document(tmp_path: Path) -> None:
    path = tmp_path / "journal.json"
    jsonfile.write(path, {"verdict": "PASSED"})

    class Unserialisable:
        def __str__(self) -> str:
            raise ValueError("no")

    with pytest.raises(ValueError):
        jsonfile.write(path, {"verdict": Unserialisable()})
    assert json.loads(path.read_text()) == {"verdict": "PASSED"}
