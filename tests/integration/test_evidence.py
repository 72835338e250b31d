"""Evidence before change (roles/evidence, playbooks/evidence.yml) on web1 and db1 of the lab.

One capture through mayday's own runner (so its artifacts exist to be searched), then: the copies
on the controller are private and verify, one changed byte is caught, the process list hashes the
real nginx and mariadbd binaries, the release hash list is the live release's, the app's database
password is in the archive (faithful) and nowhere else; check mode writes nothing; a capture that
cannot write fails, and skipping it needs and returns a reason.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import ANSIBLE_PLAYBOOK, ROOT, base_env, dexec, lab_inventory_args

from mayday import evidence
from mayday.runner import run_playbook

HOSTS = ("web1", "db1")
SECRET = os.environ.get("MAYDAY_LAB_DB_PASSWORD") or "lab-only-not-a-secret"  # in web1's db.ini
SECRET_ARGV_MARK = "mayday-evidence-test"
HOST_ROOT = "/var/lib/mayday/evidence"


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        out = {}
        for m in tar.getmembers():
            handle = tar.extractfile(m)
            assert handle is not None
            out[m.name.removeprefix("evidence/")] = handle.read()
        return out


def host_tree(host: str, root: str = HOST_ROOT) -> str:
    return dexec(host, f"[ -e {root} ] && find {root} -printf '%p %y %m\\n' | sort || echo absent", check=False)


def playbook(state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ANSIBLE_PLAYBOOK, str(ROOT / "playbooks" / "evidence.yml"), *lab_inventory_args(),
                           *extra], cwd=ROOT, env=base_env(state), capture_output=True, text=True, check=False,
                          timeout=180)


@pytest.fixture(scope="module")
def capture(lab_up: None, tmp_path_factory: pytest.TempPathFactory) -> Generator[dict[str, Any], None, None]:
    """web1 and db1 captured once through the runner, with a process on web1 whose argv holds the secret."""
    state = tmp_path_factory.mktemp("state-evidence")
    pid = dexec("web1", f"setsid python3 -c 'import time; time.sleep(300)' {SECRET_ARGV_MARK} '{SECRET}' "
                        ">/dev/null 2>&1 < /dev/null & echo $!").strip()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MAYDAY_STATE_DIR", str(state))
            result = run_playbook("evidence.yml", ROOT / "inventories" / "lab", limit=",".join(HOSTS))
    finally:
        dexec("web1", f"kill {pid}", check=False)
    assert result.rc == 0, f"evidence.yml failed: {result.failures}"
    assert result.incident, "the standalone playbook opens an incident record"
    incident_dir = state / "incidents" / result.incident
    yield {"state": state, "incident_dir": incident_dir, "run_id": result.run_id, "secret_pid": pid,
           "report": json.loads((incident_dir / "report.json").read_text())}


def test_archives_are_private_on_the_controller_and_verify(capture: dict[str, Any]) -> None:
    root = capture["incident_dir"] / "evidence"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for host in HOSTS:
        dest = root / host
        assert stat.S_IMODE(dest.stat().st_mode) == 0o700
        for name in ("evidence.tar.gz", "manifest.json", "custody.json"):
            assert stat.S_IMODE((dest / name).stat().st_mode) == 0o600, f"{host}/{name}"
        custody = json.loads((dest / "custody.json").read_text())
        assert custody["host"] == host and custody["incident"] == capture["report"]["incident"]
        assert custody["archive"]["sha256"] == evidence.sha256_file(dest / "evidence.tar.gz")
        assert custody["operator"] and custody["controller"] and custody["received"].endswith("Z")
        assert capture["report"]["evidence"][host]["archive_sha256"] == custody["archive"]["sha256"]
        # the host's own copy is gone once the controller verified its copy
        assert dexec(host, f"test -e {custody['source']['run_dir']} && echo kept || echo gone").strip() == "gone"
    assert evidence.verify(root) == []
    assert capture["report"]["outcome"] == "DONE"


def test_one_changed_byte_is_reported(capture: dict[str, Any], tmp_path: Path) -> None:
    dest = tmp_path / "web1"
    shutil.copytree(capture["incident_dir"] / "evidence" / "web1", dest)
    assert evidence.verify(dest) == []
    archive = dest / "evidence.tar.gz"
    data = bytearray(archive.read_bytes())
    data[len(data) // 3] ^= 0x20
    archive.write_bytes(bytes(data))
    assert any("evidence.tar.gz: sha256" in p for p in evidence.verify(dest))


@pytest.mark.parametrize("host", HOSTS)
def test_process_list_hashes_the_running_binaries(capture: dict[str, Any], host: str) -> None:
    files = members(capture["incident_dir"] / "evidence" / host / "evidence.tar.gz")
    rows = json.loads(files["processes/processes.json"])
    # Only binaries readable to root here are hashed: in a container without CAP_SYS_PTRACE, not
    # those of processes running as another user (nginx's workers, mariadbd), which say so instead.
    assert all(r["exe_error"] for r in rows if not r["exe"] and r["cmdline"]), "unhashed without a reason"
    hashed = {r["exe"]: r["sha256"] for r in rows if r["sha256"] and not r["exe"].endswith(" (deleted)")}
    assert hashed
    actual = dict(reversed(line.split(None, 1)) for line in dexec(host, "sha256sum " + " ".join(hashed)).splitlines())
    assert hashed == actual
    listed = files["processes/exe-sha256.txt"].decode().splitlines()
    assert sorted(listed) == sorted(f"{h}  {exe}" for exe, h in hashed.items())
    if host == "web1":
        nginx = [r for r in rows if r["comm"] == "nginx" and r["sha256"]]
        assert nginx and nginx[0]["exe"] == "/usr/sbin/nginx", "nginx's master (root) is hashed"
        assert nginx[0]["sha256"] == dexec(host, "sha256sum /usr/sbin/nginx").split()[0]


def test_release_hash_list_is_the_live_release(capture: dict[str, Any]) -> None:
    files = members(capture["incident_dir"] / "evidence" / "web1" / "evidence.tar.gz")
    listed = sorted(files["release/sha256sums.txt"].decode().splitlines())
    live = dexec("web1", "cd \"$(readlink -f /var/www/app/current)\" && find . -type f -printf '%P\\0' "
                         "| xargs -0 sha256sum")
    assert listed and listed == sorted(live.splitlines())
    release = json.loads(files["release/release.json"])
    assert release["root"] == dexec("web1", "readlink -f /var/www/app/current").strip()
    # db1 has no release: the item says so instead of failing the capture
    db_items = {i["item"]: i for i in capture["report"]["evidence"]["db1"]["items"]}
    assert db_items["release"]["status"] == "missing"


def test_the_secret_is_kept_in_the_archive_and_nowhere_else(capture: dict[str, Any]) -> None:
    files = members(capture["incident_dir"] / "evidence" / "web1" / "evidence.tar.gz")
    assert SECRET.encode() in files["config/files/etc/mayday-app/db.ini"], "config is copied faithfully"
    assert any(SECRET in r["cmdline"] for r in json.loads(files["processes/processes.json"])
               if str(r["pid"]) == capture["secret_pid"])
    # every file the run left on the controller: runner artifacts (stdout, events), incident record,
    # timeline, report, manifests, custody; the archive is compressed, so searched decompressed above
    searched = 0
    for path in capture["state"].rglob("*"):
        if path.is_file() and path.name != "evidence.tar.gz":
            searched += 1
            assert SECRET.encode() not in path.read_bytes(), f"the secret leaked into {path}"
    runs = capture["state"] / "runs" / capture["run_id"]
    assert (runs / "stdout").is_file() and any((runs / "job_events").iterdir()), "runner artifacts searched"
    assert searched > 20


def test_check_mode_writes_nothing(capture: dict[str, Any], tmp_path: Path) -> None:
    before = {h: host_tree(h) for h in HOSTS}
    incident_dir = tmp_path / "INC-CHECK"
    incident_dir.mkdir()
    out = playbook(tmp_path / "state", "--check", "-l", ",".join(HOSTS), "-e",
                   json.dumps({"evidence_incident_dir": str(incident_dir)}))
    assert out.returncode == 0, out.stdout[-3000:]
    assert list(incident_dir.iterdir()) == []
    assert {h: host_tree(h) for h in HOSTS} == before
    assert SECRET not in out.stdout + out.stderr


def test_a_capture_that_cannot_write_fails_and_a_skip_needs_and_returns_a_reason(lab_up: None,
                                                                                  tmp_path: Path) -> None:
    blocked = "/var/lib/mayday/evidence-blocked"
    dexec("db1", f"mkdir -p /var/lib/mayday && rm -rf {blocked} && echo in-the-way > {blocked}")
    try:
        failed_state = tmp_path / "failed"
        out = playbook(failed_state, "-l", "db1", "-e", json.dumps({"evidence_host_root": blocked}))
        assert out.returncode != 0
        report = json.loads(next(failed_state.glob("incidents/*/report.json")).read_text())
        assert report["outcome"] == "FAILED" and report["evidence"]["db1"]["failed"] is True
        assert not list(failed_state.glob("incidents/*/evidence/db1/custody.json"))
        assert dexec("db1", f"cat {blocked}").strip() == "in-the-way"

        no_reason = playbook(tmp_path / "no-reason", "-l", "db1", "-e",
                             json.dumps({"evidence_host_root": blocked, "evidence_skip": True}))
        assert no_reason.returncode != 0

        skipped_state = tmp_path / "skipped"
        reason = "host is wiping itself, contain first"
        out = playbook(skipped_state, "-l", "db1", "-e",
                       json.dumps({"evidence_host_root": blocked, "evidence_skip": True,
                                   "evidence_skip_reason": reason}))
        assert out.returncode == 0, out.stdout[-3000:]
        report = json.loads(next(skipped_state.glob("incidents/*/report.json")).read_text())
        assert report["evidence"]["db1"] == {"skipped": True, "reason": reason}
        assert not list(skipped_state.glob("incidents/*/evidence"))
    finally:
        dexec("db1", f"rm -f {blocked}", check=False)
