"""mayday_release: release discovery, planning and atomic switching on real directories."""

from __future__ import annotations

import json
import os

import pytest
from mayday_release import FAILED_MARKER, DirSwapLayout, ReleaseError, SymlinkLayout, natural_key


def make_symlink_root(tmp_path, releases=("v1", "v2", "v10"), current="v10"):
    for name in releases:
        (tmp_path / "releases" / name).mkdir(parents=True)
        (tmp_path / "releases" / name / "VERSION").write_text(name)
    if current:
        os.symlink(os.path.join("releases", current), tmp_path / "current")
    return SymlinkLayout(str(tmp_path))


def test_natural_ordering(tmp_path):
    layout = make_symlink_root(tmp_path, releases=("v10", "v2", "v1"))
    (tmp_path / "releases" / "stray-file").write_text("x")
    assert layout.releases() == ["v1", "v2", "v10"]
    assert sorted(["v10", "v9", "v1"], key=natural_key) == ["v1", "v9", "v10"]
    assert layout.current() == "v10"


def test_plan_picks_newest_good_release_before_current(tmp_path):
    layout = make_symlink_root(tmp_path, releases=("v1", "v2", "v3", "v10"), current="v10")
    assert layout.plan() == ("v3", False, "newest good release before the current one")
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
    assert "valid: v1, v2, v10" in str(info.value)


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
    assert layout.plan() == ("v2", True, "rollback already done: every newer release is marked failed")


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
