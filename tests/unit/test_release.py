"""mayday_release: release discovery, deploy order, planning and atomic switching on real directories."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
from mayday_recover_core import apply
from mayday_release import (
    FAILED_MARKER,
    HISTORY_FILE,
    DirSwapLayout,
    ReleaseError,
    SymlinkLayout,
    deploy_order,
    natural_key,
)

BASE = 1_700_000_000  # epoch seconds; releases get BASE + 60 * position unless told otherwise


def make_symlink_root(tmp_path, releases=("v1", "v2", "v10"), current="v10", mtimes=None, history=None):
    """releases in deploy order: their directory mtimes follow it unless `mtimes` says otherwise."""
    for name in releases:
        (tmp_path / "releases" / name).mkdir(parents=True)
        (tmp_path / "releases" / name / "VERSION").write_text(name)
    for position, name in enumerate(releases):
        when = (mtimes or {}).get(name, BASE + 60 * position)
        os.utime(tmp_path / "releases" / name, (when, when))
    if current:
        os.symlink(os.path.join("releases", current), tmp_path / "current")
    if history is not None:
        (tmp_path / HISTORY_FILE).write_text(history)
    return SymlinkLayout(str(tmp_path))


def set_mtime(path, when):
    os.utime(path, (when, when))


def test_release_order_follows_directory_mtimes_names_break_ties(tmp_path):
    layout = make_symlink_root(tmp_path, releases=("v10", "v2", "v1"), current="v1")
    (tmp_path / "releases" / "stray-file").write_text("x")
    (tmp_path / "releases" / ".hidden-tmp").mkdir()
    assert layout.releases() == ["v10", "v2", "v1"]
    for name in ("v10", "v2", "v1"):
        set_mtime(tmp_path / "releases" / name, BASE)
    assert layout.releases() == ["v1", "v2", "v10"]
    assert sorted(["v10", "v9", "v1"], key=natural_key) == ["v1", "v9", "v10"]
    assert layout.current() == "v1"


def test_plan_picks_newest_good_release_before_current(tmp_path):
    layout = make_symlink_root(tmp_path, releases=("v1", "v2", "v3", "v10"), current="v10")
    assert layout.plan() == ("v3", False, "newest good release deployed before the current one")
    layout.mark_failed("v3", "INC-1", "bad build")
    target, done, _ = layout.plan()
    assert (target, done) == ("v2", False)


def test_plan_refuses_without_earlier_release(tmp_path):
    layout = make_symlink_root(tmp_path, releases=("v1", "v2"), current="v1")
    with pytest.raises(ReleaseError, match="no earlier good release before 'v1'"):
        layout.plan()


def test_plan_refuses_when_all_earlier_releases_failed(tmp_path):
    layout = make_symlink_root(tmp_path, releases=("v1", "v2"), current="v2")
    layout.mark_failed("v1", "INC-0", "known bad")
    with pytest.raises(ReleaseError, match="marked failed: v1"):
        layout.plan()


def test_plan_unknown_target_lists_valid_releases(tmp_path):
    layout = make_symlink_root(tmp_path)
    with pytest.raises(ReleaseError) as info:
        layout.plan("v7")
    assert "unknown release 'v7'" in str(info.value)
    assert "valid (oldest deploy first): v1, v2, v10" in str(info.value)


def test_plan_named_target(tmp_path):
    layout = make_symlink_root(tmp_path)
    assert layout.plan("v1") == ("v1", False, "named release")
    assert layout.plan("v10")[1] is True


def test_plan_refuses_when_current_is_not_a_symlink(tmp_path):
    layout = make_symlink_root(tmp_path, current=None)
    with pytest.raises(ReleaseError, match="is not a symlink"):
        layout.plan()


def test_already_done_when_every_newer_release_is_failed(tmp_path):
    layout = make_symlink_root(tmp_path, current="v2")
    layout.mark_failed("v10", "INC-1", "health check failed")
    assert layout.plan() == ("v2", True, "rollback already done: every release deployed after it is marked failed")


def test_not_done_when_a_newer_release_is_not_failed(tmp_path):
    layout = make_symlink_root(tmp_path, releases=("v1", "v2", "v3", "v10"), current="v2")
    layout.mark_failed("v10", "INC-1", "bad")
    target, done, _ = layout.plan()
    assert (target, done) == ("v1", False)


def test_switch_flips_relative_symlink_and_mark_failed_writes_marker(tmp_path):
    layout = make_symlink_root(tmp_path)
    target, done, _ = layout.plan()
    assert (target, done) == ("v2", False)

    layout.switch(target)
    link = tmp_path / "current"
    assert link.is_symlink()
    assert os.readlink(link) == os.path.join("releases", "v2")
    assert not os.path.isabs(os.readlink(link))
    assert (link / "VERSION").read_text() == "v2"
    assert layout.current() == "v2"
    # no temporary link left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "releases"]

    layout.mark_failed("v10", "INC-20250101-000000", "5xx after deploy")
    marker = json.loads((tmp_path / "releases" / "v10" / FAILED_MARKER).read_text())
    assert marker["incident"] == "INC-20250101-000000"
    assert marker["reason"] == "5xx after deploy"
    assert marker["marked_at"].endswith("Z")
    assert layout.state()["failed"] == {"v10": marker}
    assert layout.plan()[1] is True

    layout.clear_failed("v10")
    assert layout.state()["failed"] == {}


def test_switch_survives_stale_temp_link(tmp_path):
    layout = make_symlink_root(tmp_path)
    os.symlink("releases/nowhere", tmp_path / f"current.mayday-{os.getpid()}")
    layout.switch("v1")
    assert layout.current() == "v1"


def make_dirswap_root(tmp_path):
    (tmp_path / "upload").mkdir()
    (tmp_path / "upload" / "index.html").write_text("new broken release")
    (tmp_path / "upload_previous").mkdir()
    (tmp_path / "upload_previous" / "index.html").write_text("previous good release")
    return DirSwapLayout(str(tmp_path))


def test_dirswap_plan_and_swap(tmp_path):
    layout = make_dirswap_root(tmp_path)
    assert layout.plan() == ("upload_previous", False, "the upload_previous folder")
    with pytest.raises(ReleaseError, match="only roll back to upload_previous"):
        layout.plan("v1")

    failed_name = layout.switch("upload_previous")

    assert failed_name.startswith("upload_failed-")
    assert (tmp_path / "upload" / "index.html").read_text() == "previous good release"
    assert (tmp_path / failed_name / "index.html").read_text() == "new broken release"
    assert not (tmp_path / "upload_previous").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["upload", failed_name])

    target, done, reason = layout.plan()
    assert (target, done) == ("upload", True)
    assert "already done" in reason


def test_dirswap_refuses_without_previous(tmp_path):
    (tmp_path / "upload").mkdir()
    layout = DirSwapLayout(str(tmp_path))
    with pytest.raises(ReleaseError, match="upload_previous does not exist"):
        layout.plan()


# -- deploy order ------------------------------------------------------------------------------


def history_of(*entries):
    return "".join(f"{stamp}\t{name}\n" for stamp, name in entries)


def level1(root):
    """One level-1 rollback on the host, as the mayday_recover module runs it (no services or checks)."""
    return apply({"release": {"root": str(root), "layout": "symlink"}, "incident": "INC-1"})


def test_second_rollback_is_a_noop_not_a_move_backwards(tmp_path):
    # v1, v2 predate the history (v2 marked failed); a, b, then a broken c were deployed after.
    layout = make_symlink_root(
        tmp_path, releases=("v1", "v2", "a", "b", "c"), current="c",
        history=history_of(("2025-03-01T10:00:00Z", "a"), ("2025-03-01T11:00:00Z", "b"),
                           ("2025-03-01T12:00:00Z", "c")))
    (tmp_path / "releases" / "v2" / FAILED_MARKER).write_text("")
    set_mtime(tmp_path / "releases" / "v2", BASE + 60)
    assert layout.releases() == ["v1", "v2", "a", "b", "c"]

    first = level1(tmp_path)
    assert (first["release"]["target"], first["release"]["already_done"]) == ("b", False)
    assert layout.current() == "b"
    assert sorted(layout.state()["failed"]) == ["c", "v2"]

    second = level1(tmp_path)
    assert second["release"] == {"before": "b", "target": "b", "already_done": True,
                                 "reason": "rollback already done: every release deployed after it is marked failed"}
    assert second["changed"] is False
    assert layout.current() == "b"
    assert sorted(layout.state()["failed"]) == ["c", "v2"]  # healthy b is not marked failed


def test_release_names_that_do_not_sort_in_deploy_order(tmp_path):
    shas = make_symlink_root(tmp_path / "shas", releases=("9c44e10", "f3a9c1e", "0b7d2aa"), current="0b7d2aa")
    assert shas.plan() == ("f3a9c1e", False, "newest good release deployed before the current one")

    names = make_symlink_root(
        tmp_path / "names", releases=("v9", "v10", "release-9"), current="release-9",
        history=history_of(("2025-01-01T00:00:00Z", "v9"), ("2025-01-02T00:00:00Z", "v10"),
                           ("2025-01-03T00:00:00Z", "release-9")))
    for name in ("v9", "v10", "release-9"):  # same mtime: only the history can tell
        set_mtime(tmp_path / "names" / "releases" / name, BASE)
    assert names.releases() == ["v9", "v10", "release-9"]
    assert names.plan()[0] == "v10"


def test_history_wins_over_mtime_and_a_redeploy_moves_a_release_to_its_newest_time(tmp_path):
    history = history_of(("2025-01-01T00:00:00Z", "v1"), ("2025-01-02T00:00:00Z", "v2"),
                         ("2025-01-03T00:00:00Z", "v1"))
    layout = make_symlink_root(tmp_path, releases=("v2", "v1"), current="v1", history=history,
                               mtimes={"v1": BASE, "v2": BASE + 60})
    assert layout.releases() == ["v2", "v1"]
    assert deploy_order(["a", "b"], history_of(("2025-01-01T00:00:00Z", "b"), ("2025-01-01T00:00:00Z", "a"))) \
        == ["b", "a"]  # same second: the later line is the later deploy


def test_missing_history_falls_back_to_directory_mtime(tmp_path):
    layout = make_symlink_root(tmp_path, releases=("v2", "v9", "v10"), current="v2",
                               mtimes={"v10": BASE, "v9": BASE + 100, "v2": BASE + 200})
    assert not (tmp_path / HISTORY_FILE).exists()
    assert layout.releases() == ["v10", "v9", "v2"]
    assert layout.plan()[0] == "v9"
    # releases missing from a history fall back to their mtime next to the ones in it
    (tmp_path / HISTORY_FILE).write_text(history_of(("1970-01-01T00:00:00Z", "v2")))
    assert layout.releases() == ["v2", "v10", "v9"]


def test_garbled_history_lines_are_ignored(tmp_path):
    garbled = (
        "garbage\n"
        "not-a-time\tv2\n"
        "2025-01-05T00:00:00Z\n"
        "2025-01-05T00:00:00Z\t\n"
        "2025-13-45T99:00:00Z\tv2\n"
        "\x00\xff\t\tv2\n"
        "2025-01-01T00:00:00+00:00\tv10\n"
        "2025-01-02T00:00:00\tv1\n"  # no zone: UTC
        "2025-01-03T00:00:00.250Z\tv3\r\n"
        "\n"
        "2025-01-04T00:00:00Z\tv"  # no final newline: still a line
    )
    mtimes = {"v2": 1_800_000_000, "v1": 0, "v10": 0, "v3": 0}
    assert deploy_order(["v3", "v2", "v1", "v10", "v"], garbled, mtimes) == ["v10", "v1", "v3", "v", "v2"]
    assert deploy_order(["b", "a"], "", None) == ["a", "b"]

    layout = make_symlink_root(tmp_path, releases=("v1", "v2", "v3"), current="v3", history=garbled,
                               mtimes={"v2": 1_800_000_000})
    (tmp_path / HISTORY_FILE).write_bytes(b"\xff\xfe\x00junk\n" + garbled.encode())
    assert layout.releases() == ["v1", "v3", "v2"]  # v2 has no valid line: its mtime is newest


def test_failed_target_refused_unless_forced(tmp_path):
    layout = make_symlink_root(tmp_path, releases=("v1", "v2", "v3"), current="v3")
    layout.mark_failed("v1", "INC-7", "bad build")
    with pytest.raises(ReleaseError, match=r"^v1 is marked failed \(incident INC-7\): pass --force to roll back"):
        layout.plan("v1")
    with pytest.raises(ReleaseError) as info:
        layout.plan("v0")
    assert "valid (oldest deploy first): v1 (marked failed), v2, v3" in str(info.value)
    assert layout.plan("v1", force=True) == ("v1", False, "named release (marked failed, forced)")

    from mayday_recover_core import Refused
    with pytest.raises(Refused, match="marked failed"):
        apply({"release": {"root": str(tmp_path), "target": "v1", "force": False}})
    assert layout.current() == "v3"
    result = apply({"release": {"root": str(tmp_path), "target": "v1", "force": "true"}, "incident": "INC-8"})
    assert result["release"]["target"] == "v1"
    assert layout.current() == "v1"
    # the same forced command again changes nothing
    assert layout.plan("v1")[:2] == ("v1", True)


# -- markers never follow symlinks ---------------------------------------------------------------


def test_symlinked_marker_is_not_a_marker_and_is_never_written_through(tmp_path):
    outside = tmp_path / "motd"
    outside.write_text('{"incident": "INC-fake", "reason": "shipped by the release"}')
    root = tmp_path / "app"
    layout = make_symlink_root(root, releases=("v1", "v2"), current="v2")
    os.symlink(outside, root / "releases" / "v2" / FAILED_MARKER)
    os.symlink(tmp_path / "nowhere", root / "releases" / "v1" / FAILED_MARKER)
    before = outside.read_text()

    assert layout.state()["failed"] == {}
    assert layout.plan()[0] == "v1"

    layout.mark_failed("v2", "INC-1", "5xx")
    layout.mark_failed("v1", "INC-1", "5xx")
    assert outside.read_text() == before
    assert not (tmp_path / "nowhere").exists()
    marker = root / "releases" / "v2" / FAILED_MARKER
    assert not marker.is_symlink()
    assert oct(marker.stat().st_mode & 0o777) == "0o644"
    assert json.loads(marker.read_text())["incident"] == "INC-1"
    assert sorted(layout.state()["failed"]) == ["v1", "v2"]
    assert sorted(p.name for p in (root / "releases" / "v2").iterdir()) == [FAILED_MARKER, "VERSION"]
    assert layout.releases() == ["v1", "v2"]  # marking keeps the directory mtime (deploy order)

    os.unlink(marker)
    os.symlink(outside, marker)
    layout.clear_failed("v2")
    assert not os.path.lexists(marker)
    assert outside.read_text() == before


def test_dirswap_marker_is_never_written_through_a_symlink(tmp_path):
    outside = tmp_path / "motd"
    outside.write_text("message of the day")
    root = tmp_path / "app"
    root.mkdir()
    layout = make_dirswap_root(root)
    os.symlink(outside, root / "upload" / FAILED_MARKER)
    name = layout.switch("upload_previous")
    layout.mark_failed(name, "INC-2", "rolled back")
    assert outside.read_text() == "message of the day"
    assert layout.state()["failed"][name]["incident"] == "INC-2"


def test_switch_never_follows_a_planted_temp_link(tmp_path):
    outside = tmp_path / "outside"
    outside.write_text("keep")
    root = tmp_path / "app"
    layout = make_symlink_root(root)
    os.symlink(outside, root / f"current.mayday-{os.getpid()}")
    layout.switch("v1")
    assert outside.read_text() == "keep"
    assert os.readlink(root / "current") == os.path.join("releases", "v1")


# -- the controller-side probe orders and judges like the host --------------------------------------


def load_inspect():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "plugins", "action"))
    return importlib.import_module("mayday_inspect")


def test_probe_parse_orders_and_flags_like_the_host(tmp_path):
    inspect = load_inspect()
    releases = ("v10", "0b7d2aa", "release-9", "v2", "shipped-link", "empty-marker", "v1", "later")
    layout = make_symlink_root(
        tmp_path, releases=releases, current="v1",
        mtimes={"v10": BASE, "0b7d2aa": BASE, "later": BASE + 10_000},
        history="junk\n" + history_of(("2025-01-01T00:00:00Z", "release-9"), ("2025-01-02T00:00:00Z", "v2"),
                                      ("2025-01-02T00:00:00Z", "0b7d2aa"), ("garbled", "v10"),
                                      ("2025-01-03T00:00:00Z", "gone")))
    layout.mark_failed("later", "INC-20250101-000000", 'says "incident": "INC-evil"')
    layout.mark_failed("v2", "INC-3", "bad")
    os.symlink(tmp_path / "motd", tmp_path / "releases" / "shipped-link" / FAILED_MARKER)
    set_mtime(tmp_path / "releases" / "shipped-link", BASE + 240)
    (tmp_path / "releases" / "empty-marker" / FAILED_MARKER).write_text("")
    set_mtime(tmp_path / "releases" / "empty-marker", BASE + 300)
    (tmp_path / "releases" / "not-a-dir").write_text("x")

    release = {"root": str(tmp_path), "layout": "symlink", "target": ""}
    out = subprocess.run(["sh", "-c", inspect.probe_script(release, [], [])], capture_output=True, text=True,
                         check=True)
    seen = inspect.parse(out.stdout, release, [], "2025-01-01T00:00:00Z")["state"]
    host = layout.state()

    assert seen["releases"] == host["releases"]
    assert host["releases"] == ["v10", "shipped-link", "empty-marker", "v1", "later", "release-9", "v2", "0b7d2aa"]
    assert seen["current"] == host["current"] == "v1"
    assert sorted(seen["failed"]) == sorted(host["failed"]) == ["empty-marker", "later", "v2"]
    assert seen["failed"]["later"] == {"incident": "INC-20250101-000000"}

    verdict = inspect.judge(seen, release)
    assert verdict["order"] == host["releases"]
    assert verdict["failed"] == ["empty-marker", "later", "v2"]
    assert (verdict["target"], verdict["already_done"], verdict["reason"]) == layout.plan()
    assert verdict["refusal"] is None and verdict["current"] == "v1"

    refused = inspect.judge(seen, dict(release, target="v2"))
    assert refused["refusal"] == "v2 is marked failed (incident INC-3): pass --force to roll back to it anyway"
    assert inspect.judge(seen, dict(release, target="v2", force=True))["target"] == "v2"
