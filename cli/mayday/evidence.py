"""Evidence on the controller: the custody record, and verification of a capture against it.

A capture directory (`<incident dir>/evidence/<host>/`) holds `evidence.tar.gz`, `manifest.json`
(the sha256 of every file in the archive and of the archive) and `custody.json`. `verify` re-hashes
the archive and every member without extracting anything, and returns what does not match.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
import stat
import tarfile
from pathlib import Path
from typing import Any

from mayday.records import utc_now

ARCHIVE = "evidence.tar.gz"
MANIFEST = "manifest.json"
CUSTODY = "custody.json"
TOP = "evidence"
FORMAT = "mayday-evidence/1"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def capture_dirs(path: str | Path) -> list[Path]:
    """The capture directories at or under path (a capture, a host's, or an incident's evidence)."""
    root = Path(path)
    if (root / CUSTODY).is_file():
        return [root]
    return sorted(p.parent for p in root.rglob(CUSTODY) if p.is_file())


def verify(path: str | Path) -> list[str]:
    """Problems found in every capture at or under path; empty when all verify."""
    dirs = capture_dirs(path)
    if not dirs:
        return [f"{path}: no {CUSTODY} found"]
    problems: list[str] = []
    for capture in dirs:
        problems.extend(f"{capture}: {p}" for p in verify_capture(capture))
    return problems


def _load(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"{path.name} unreadable: {exc}"
    return (doc, None) if isinstance(doc, dict) else (None, f"{path.name} is not a JSON object")


def verify_capture(capture: str | Path) -> list[str]:
    capture = Path(capture)
    problems: list[str] = []
    custody, err = _load(capture / CUSTODY)
    if custody is None:
        return [str(err)]
    archive = capture / str((custody.get("archive") or {}).get("name") or ARCHIVE)
    manifest_path = capture / str((custody.get("manifest") or {}).get("name") or MANIFEST)
    for entry in (capture / CUSTODY, archive, manifest_path):
        try:
            mode = entry.lstat().st_mode
        except OSError as exc:
            problems.append(f"{entry.name} missing: {exc.strerror}")
            continue
        if not stat.S_ISREG(mode):
            problems.append(f"{entry.name} is not a regular file")
        elif mode & 0o077:
            problems.append(f"{entry.name} is readable beyond its owner (mode {stat.S_IMODE(mode):04o})")
    if problems:
        return problems
    mode = capture.lstat().st_mode
    if mode & 0o077:
        problems.append(f"directory is open beyond its owner (mode {stat.S_IMODE(mode):04o})")
    manifest, err = _load(manifest_path)
    if manifest is None:
        return [*problems, str(err)]
    archive_sha = sha256_file(archive)
    if archive_sha != (custody.get("archive") or {}).get("sha256"):
        problems.append(f"{archive.name}: sha256 {archive_sha} differs from the custody record's")
    if archive_sha != (manifest.get("archive") or {}).get("sha256"):
        problems.append(f"{archive.name}: sha256 {archive_sha} differs from the manifest's")
    manifest_sha = sha256_file(manifest_path)
    if manifest_sha != (custody.get("manifest") or {}).get("sha256"):
        problems.append(f"{manifest_path.name}: sha256 {manifest_sha} differs from the custody record's")
    for key in ("incident", "host"):
        if custody.get(key) != manifest.get(key):
            problems.append(f"{key} {manifest.get(key)!r} in the manifest, {custody.get(key)!r} in the custody record")
    problems.extend(verify_archive(archive, manifest))
    return problems


def verify_archive(archive: str | Path, manifest: dict[str, Any]) -> list[str]:
    """Every member of the archive against the manifest's files (and the manifest inside it)."""
    expected: dict[str, Any] = manifest.get("files") or {}
    problems: list[str] = []
    seen: set[str] = set()
    inner: dict[str, Any] | None = None
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                name = member.name
                if not name.startswith(TOP + "/") or ".." in name.split("/") or name.startswith("/"):
                    problems.append(f"unexpected member {name!r}")
                    continue
                if not member.isfile():
                    problems.append(f"{name}: not a regular file in the archive")
                    continue
                rel = name[len(TOP) + 1:]
                handle = tar.extractfile(member)
                assert handle is not None  # a regular member
                data_sha = hashlib.sha256()
                raw = b""
                while chunk := handle.read(1 << 20):
                    data_sha.update(chunk)
                    if rel == MANIFEST:
                        raw += chunk
                if rel == MANIFEST:
                    try:
                        inner = json.loads(raw)
                    except ValueError:
                        problems.append("manifest.json inside the archive is not JSON")
                    continue
                seen.add(rel)
                want = expected.get(rel)
                if want is None:
                    problems.append(f"{rel}: in the archive, not in the manifest")
                elif want.get("sha256") != data_sha.hexdigest():
                    problems.append(f"{rel}: sha256 {data_sha.hexdigest()} differs from the manifest's")
    except (OSError, EOFError, tarfile.TarError, ValueError) as exc:
        problems.append(f"archive unreadable: {exc}")
        return problems
    problems.extend(f"{rel}: in the manifest, not in the archive" for rel in sorted(set(expected) - seen))
    if inner is None:
        problems.append("no manifest.json inside the archive")
    elif {k: v for k, v in manifest.items() if k != "archive"} != inner:
        problems.append("manifest.json alongside differs from the one inside the archive")
    return problems


def write_custody(capture: str | Path, *, incident: str, host: str, source: dict[str, Any],
                  expected_sha256: str, run_id: str | None = None) -> dict[str, Any]:
    """After a copy: modes tightened (dir 0700, files 0600), the copy verified against the sha256
    the host reported and the manifest, then custody.json written (never over an existing one).
    Raises ValueError with the problems when the copy does not verify."""
    capture = Path(capture)
    os.chmod(capture, 0o700)
    for name in (ARCHIVE, MANIFEST):
        os.chmod(capture / name, 0o600)
    if (capture / CUSTODY).exists():
        raise ValueError(f"{capture / CUSTODY} exists already: evidence is never overwritten")
    archive_sha = sha256_file(capture / ARCHIVE)
    manifest, err = _load(capture / MANIFEST)
    problems = [] if manifest is not None else [str(err)]
    if archive_sha != expected_sha256:
        problems.append(f"archive sha256 {archive_sha} after the copy, {expected_sha256} on the host")
    if manifest is not None:
        if (manifest.get("archive") or {}).get("sha256") != archive_sha:
            problems.append("archive sha256 differs from the manifest's")
        problems.extend(verify_archive(capture / ARCHIVE, manifest))
    if problems:
        raise ValueError("; ".join(problems))
    assert manifest is not None
    record = {
        "format": FORMAT,
        "incident": incident,
        "host": host,
        "hostname": manifest.get("hostname"),
        "collected": {"started": manifest.get("started"), "finished": manifest.get("finished")},
        "received": utc_now(),
        "operator": os.environ.get("MAYDAY_OPERATOR") or getpass.getuser(),
        "controller": socket.getfqdn(),
        "run_id": run_id,
        "source": source,
        "archive": {"name": ARCHIVE, "sha256": archive_sha, "size": (capture / ARCHIVE).stat().st_size},
        "manifest": {"name": MANIFEST, "sha256": sha256_file(capture / MANIFEST)},
        "files": len(manifest.get("files") or {}),
        "verified": True,
    }
    tmp = capture / f".{CUSTODY}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle, indent=2)
        handle.write("\n")
    os.link(tmp, capture / CUSTODY)  # fails when one appeared meanwhile: never replaced
    os.unlink(tmp)
    return record
