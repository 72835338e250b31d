"""Evidence: the host-side packing (module_utils) and the controller's verification and custody
(cli/mayday/evidence.py), on real archives made in tmp_path."""

from __future__ import annotations

import gzip
import json
import os
import stat
import sys
import tarfile
import time
from pathlib import Path

import mayday_evidence as host
import pytest

from mayday import evidence

SECRET = "s3cr3t-db-password"


def make_capture(tmp_path: Path, files: dict[str, bytes] | None = None) -> Path:
    """A capture as the role leaves it on the controller: sealed by the host-side code, custody written."""
    run_dir = tmp_path / "run"
    stage = run_dir / "stage"
    for rel, data in (files or {"config/files/etc/mayday-app/db.ini": f"password={SECRET}\n".encode(),
                                "processes/processes.json": b"[]\n", "release/sha256sums.txt": b""}).items():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_bytes(data)
    sealed = host.seal(str(run_dir), {"format": host.FORMAT, "incident": "INC-1", "host": "web1",
                                      "hostname": "web1", "items": []})
    assert not stage.exists(), "the stage is removed once packed"
    dest = tmp_path / "incident" / "evidence" / "web1"
    dest.mkdir(parents=True)
    for name in (evidence.ARCHIVE, evidence.MANIFEST):
        (dest / name).write_bytes((run_dir / name).read_bytes())
        (dest / name).chmod(0o644)  # as a copy may land; write_custody tightens it
    evidence.write_custody(dest, incident="INC-1", host="web1", source={"run_dir": str(run_dir)},
                           expected_sha256=sealed["archive_sha256"])
    return dest


def test_a_sealed_capture_verifies_and_is_private(tmp_path: Path) -> None:
    dest = make_capture(tmp_path)
    assert evidence.verify(dest) == []
    assert evidence.verify(tmp_path / "incident") == [], "an incident's evidence dir verifies every host"
    for name in (evidence.ARCHIVE, evidence.MANIFEST, evidence.CUSTODY):
        assert stat.S_IMODE((dest / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    custody = json.loads((dest / evidence.CUSTODY).read_text())
    assert custody["archive"]["sha256"] == evidence.sha256_file(dest / evidence.ARCHIVE)
    assert custody["manifest"]["sha256"] == evidence.sha256_file(dest / evidence.MANIFEST)
    assert {custody["host"], custody["incident"]} == {"web1", "INC-1"} and custody["operator"] and custody["received"]
    # faithful: the secret is in the archive, never in the manifest or the custody record
    with tarfile.open(dest / evidence.ARCHIVE) as tar:
        member = tar.extractfile("evidence/config/files/etc/mayday-app/db.ini")
        assert member is not None and SECRET.encode() in member.read()
    assert SECRET not in (dest / evidence.MANIFEST).read_text() + (dest / evidence.CUSTODY).read_text()


def test_one_byte_changed_in_the_archive_is_reported(tmp_path: Path) -> None:
    dest = make_capture(tmp_path)
    archive = dest / evidence.ARCHIVE
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    problems = evidence.verify(dest)
    assert any("evidence.tar.gz: sha256" in p and "custody" in p for p in problems), problems


def test_a_member_rewritten_with_a_valid_archive_is_reported(tmp_path: Path) -> None:
    """Even a re-packed archive whose own hash was updated everywhere fails on the member's hash."""
    dest = make_capture(tmp_path)
    archive = dest / evidence.ARCHIVE
    work = tmp_path / "repack"
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    (work / "evidence/processes/processes.json").write_bytes(b"[{}]\n")
    archive.unlink()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(work / "evidence", arcname="evidence")
    archive.chmod(0o600)
    sha = evidence.sha256_file(archive)
    manifest = json.loads((dest / evidence.MANIFEST).read_text())
    manifest["archive"]["sha256"] = sha
    (dest / evidence.MANIFEST).write_text(json.dumps(manifest))
    custody = json.loads((dest / evidence.CUSTODY).read_text())
    custody["archive"]["sha256"] = sha
    custody["manifest"]["sha256"] = evidence.sha256_file(dest / evidence.MANIFEST)
    (dest / evidence.CUSTODY).write_text(json.dumps(custody))
    problems = evidence.verify(dest)
    assert any("processes/processes.json" in p and "differs from the manifest" in p for p in problems), problems
    assert not any("evidence.tar.gz: sha256" in p for p in problems), problems


def test_manifest_edits_and_extra_or_missing_members_are_reported(tmp_path: Path) -> None:
    dest = make_capture(tmp_path)
    manifest = json.loads((dest / evidence.MANIFEST).read_text())
    manifest["files"]["logins/who.txt"] = {"sha256": "0" * 64, "size": 1}
    del manifest["files"]["release/sha256sums.txt"]
    (dest / evidence.MANIFEST).write_text(json.dumps(manifest))
    problems = evidence.verify(dest)
    assert any("manifest.json: sha256" in p for p in problems), problems
    assert any("logins/who.txt: in the manifest, not in the archive" in p for p in problems), problems
    assert any("release/sha256sums.txt: in the archive, not in the manifest" in p for p in problems), problems
    assert any("differs from the one inside the archive" in p for p in problems), problems


def test_open_modes_missing_custody_and_garbage_are_reported(tmp_path: Path) -> None:
    dest = make_capture(tmp_path)
    (dest / evidence.ARCHIVE).chmod(0o644)
    assert any("readable beyond its owner" in p for p in evidence.verify(dest))
    (dest / evidence.ARCHIVE).chmod(0o600)
    (dest / evidence.ARCHIVE).write_bytes(gzip.compress(b"not a tar"))
    assert any("archive unreadable" in p for p in evidence.verify(dest))
    (dest / evidence.CUSTODY).unlink()
    assert evidence.verify(dest) == [f"{dest}: no custody.json found"]


def test_custody_refuses_a_bad_copy_and_never_overwrites(tmp_path: Path) -> None:
    dest = make_capture(tmp_path)
    with pytest.raises(ValueError, match="exists already"):
        evidence.write_custody(dest, incident="INC-1", host="web1", source={}, expected_sha256="x")
    (dest / evidence.CUSTODY).unlink()
    with pytest.raises(ValueError, match="on the host"):
        evidence.write_custody(dest, incident="INC-1", host="web1", source={}, expected_sha256="0" * 64)
    assert not (dest / evidence.CUSTODY).exists()


# --- host-side collection: bounds, statuses, no secrets in what it returns ------------------------

def collector(tmp_path: Path, **kw: int) -> host.Collector:
    stage = tmp_path / "stage"
    stage.mkdir(mode=0o700)
    return host.Collector(str(stage), time.time() - 3600, **kw)


def test_command_output_is_capped_and_tail_keeps_the_newest(tmp_path: Path) -> None:
    c = collector(tmp_path, log_max_bytes=1000)
    script = "import sys\nfor i in range(5000): print(f'line {i:05d}')"
    part = c.command("a/tail.txt", [sys.executable, "-c", script], tail=True)
    data = (tmp_path / "stage/a/tail.txt").read_bytes()
    assert part["status"] == "ok" and part["truncated"] and len(data) == 1000
    assert data.endswith(b"line 04999\n")
    part = c.command("a/head.txt", [sys.executable, "-c", script])
    data = (tmp_path / "stage/a/head.txt").read_bytes()
    assert part["truncated"] and len(data) == 1000 and data.startswith(b"line 00000\n")


def test_a_hanging_or_missing_or_failing_command_is_an_item_status(tmp_path: Path) -> None:
    c = collector(tmp_path, command_timeout=1)
    t0 = time.monotonic()
    hang = c.command("a/hang.txt", [sys.executable, "-c", "import time; print('x', flush=True); time.sleep(30)"])
    assert time.monotonic() - t0 < 10
    assert hang["status"] == "error" and "timed out" in hang["reason"]
    assert c.command("a/none.txt", ["no-such-tool-mayday"])["status"] == "missing"
    fail = c.command("a/fail.txt", [sys.executable, "-c", "import sys; sys.exit('boom')"])
    assert fail["status"] == "error" and "exit 1" in fail["reason"] and "boom" in fail["reason"]


def test_copies_never_follow_symlinks_nor_read_fifos(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "real.conf").write_text("ok\n")
    (src / "link.conf").symlink_to("/etc/hostname")
    os.mkfifo(src / "fifo")
    c = collector(tmp_path)
    count = c.copy_paths("config", [str(src)])
    assert count == 1
    copied = tmp_path / "stage/config/files" / str(src).lstrip("/")
    assert (copied / "real.conf").read_text() == "ok\n"
    assert not (copied / "link.conf").exists()
    assert f"{src}/link.conf -> /etc/hostname" in (tmp_path / "stage/config/symlinks.txt").read_text()


def test_shadow_status_never_holds_a_hash() -> None:
    text = ("root:$6$salt$abcdefhashhash:19700:0:99999:7:::\nlocked:!$6$x$y:19000::::::\n"
            "svc:*:19000:0:99999:7:::\nopen::19000:0:99999:7:::\n")
    out = host.shadow_status(text)
    assert "$6$" not in out and "abcdefhashhash" not in out
    rows = {line.split("\t")[0]: line.split("\t")[1] for line in out.splitlines()[1:]}
    assert rows == {"root": "password", "locked": "locked", "svc": "disabled", "open": "no-password"}


def test_release_hashes_are_sha256sum_lines_of_every_file(tmp_path: Path) -> None:
    release = tmp_path / "releases" / "v1"
    (release / "lib").mkdir(parents=True)
    (release / "index.php").write_text("<?php echo 1;\n")
    (release / "lib" / "db.php").write_text("<?php\n")
    (release / "shared").symlink_to("/var/www/app/shared")
    (tmp_path / "current").symlink_to("releases/v1")
    root, lines, links, errors = host.release_hashes(str(tmp_path / "current"))
    assert root == str(release) and errors == []
    assert lines == [f"{evidence.sha256_file(release / 'index.php')}  index.php",
                     f"{evidence.sha256_file(release / 'lib' / 'db.php')}  lib/db.php"]
    assert links == ["shared -> /var/www/app/shared"]


def test_a_staging_root_that_is_a_file_fails_the_whole_capture(tmp_path: Path) -> None:
    root = tmp_path / "evidence"
    root.write_text("in the way")
    params = {"incident": "INC-1", "root": str(root), "hours": 1}
    with pytest.raises(host.CaptureError, match=r"not a directory|cannot create"):
        host.capture(params, "web1")
    with pytest.raises(host.CaptureError, match="not a plain name"):
        host.capture(dict(params, incident="../etc"), "web1")


def test_cli_verifies_an_incident_by_id_and_fails_on_a_changed_byte(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from mayday.cli import cli

    dest = make_capture(tmp_path)
    (tmp_path / "state" / "incidents").mkdir(parents=True)
    (tmp_path / "state" / "incidents" / "INC-1").symlink_to(tmp_path / "incident")
    monkeypatch.setenv("MAYDAY_STATE_DIR", str(tmp_path / "state"))
    ok = CliRunner().invoke(cli, ["evidence", "verify", "INC-1", "--json"])
    assert ok.exit_code == 0 and json.loads(ok.output)["problems"] == [], ok.output
    archive = dest / evidence.ARCHIVE
    archive.write_bytes(archive.read_bytes()[:-1] + bytes([archive.read_bytes()[-1] ^ 1]))
    bad = CliRunner().invoke(cli, ["evidence", "verify", str(dest), "--json"])
    assert bad.exit_code == 1 and json.loads(bad.output)["problems"], bad.output
