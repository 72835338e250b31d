"""mayday_files: root-safe writes and the one-rename configuration swap, on real directories."""

from __future__ import annotations

import os
import stat

import pytest
from mayday_files import (
    STAGE_INFIX,
    FilesError,
    SwapError,
    config_swap,
    exchange,
    stage_tree,
    write_file_nofollow,
)

# A real validator without PHP: a file containing BROKEN fails, like `php -l` on a syntax error.
VALIDATE = "sh -c '! grep -q BROKEN \"$1\"' validate %s"
OTHER_UID = 4242


def snapshot(root):
    """Everything under root, symlinks not followed: type, mode, owner, bytes or link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                body = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    body = handle.read()
            else:
                body = None
            out[os.path.relpath(path, root)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                                st.st_uid, st.st_gid, body)
    st = os.lstat(root)
    out["."] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_ino)
    return out


def put(path, text, mode=0o644):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


@pytest.fixture
def trees(tmp_path):
    """shared/config (live) with a 0640 secret, and a deploy-time copy of an older version."""
    live = tmp_path / "shared" / "config"
    copy = tmp_path / "backups" / "20240101T000000Z-v1"
    put(live / "api.php", "<?php return ['v' => 2];\n")
    put(live / "secret.php", "<?php return ['key' => 'new'];\n", 0o640)
    put(live / "only-live.ini", "x=1\n")
    put(copy / "api.php", "<?php return ['v' => 1];\n")
    put(copy / "secret.php", "<?php return ['key' => 'old'];\n", 0o644)
    put(copy / "sub" / "routes.php", "<?php return [];\n", 0o600)
    return live, copy


def siblings(live):
    return sorted(os.listdir(live.parent))


def test_secret_keeps_0640_and_new_files_keep_the_copys_mode(trees):
    live, copy = trees
    result = config_swap(str(live), str(copy), validate=VALIDATE)
    assert result["changed"] and result["ok"] and not result["refused"]
    assert stat.S_IMODE(os.stat(live / "secret.php").st_mode) == 0o640
    assert (live / "secret.php").read_text() == "<?php return ['key' => 'old'];\n"
    assert stat.S_IMODE(os.stat(live / "sub" / "routes.php").st_mode) == 0o600
    assert not (live / "only-live.ini").exists()  # the live dir is the copy, not a merge
    assert sorted(result["report"]["validated"]) == ["api.php", "secret.php", "sub/routes.php"]
    assert set(result["report"]["files_changed"]) == {"api.php", "secret.php", "only-live.ini", "sub/",
                                                      "sub/routes.php"}


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_owner_of_replaced_files_and_live_dir_is_kept(trees):
    live, copy = trees
    os.chown(live / "secret.php", OTHER_UID, OTHER_UID)
    os.chown(live, OTHER_UID, OTHER_UID)
    os.chmod(live, 0o750)
    config_swap(str(live), str(copy))
    st = os.stat(live / "secret.php")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (OTHER_UID, OTHER_UID, 0o640)
    st = os.stat(live)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (OTHER_UID, OTHER_UID, 0o750)
    assert os.stat(live / "api.php").st_uid == os.stat(copy / "api.php").st_uid


def test_symlink_planted_in_live_dir_is_replaced_and_its_target_untouched(trees, tmp_path):
    live, copy = trees
    target = tmp_path / "elsewhere" / "passwd"
    put(target, "root:x:0:0\n", 0o644)
    (live / "api.php").unlink()
    os.symlink(target, live / "api.php")
    config_swap(str(live), str(copy))
    assert not os.path.islink(live / "api.php")
    assert (live / "api.php").read_text() == "<?php return ['v' => 1];\n"
    assert target.read_text() == "root:x:0:0\n"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644


def test_symlinks_in_the_copy_are_copied_as_symlinks(trees, tmp_path):
    live, copy = trees
    outside = tmp_path / "outside.php"
    put(outside, "<?php BROKEN\n")
    os.symlink(outside, copy / "linked.php")
    result = config_swap(str(live), str(copy), validate=VALIDATE)
    assert os.readlink(live / "linked.php") == str(outside)
    assert "linked.php" not in result["report"]["validated"]  # a symlink is not read through


def test_validation_failure_leaves_live_byte_identical_and_nothing_staged(trees):
    live, copy = trees
    put(copy / "api.php", "<?php BROKEN\n")
    before, listing = snapshot(live), siblings(live)
    with pytest.raises(SwapError) as caught:
        config_swap(str(live), str(copy), validate=VALIDATE)
    result = caught.value.result
    assert result["refused"] and not result["changed"] and not result["ok"]
    assert "api.php fails validation" in result["msg"]
    assert result["report"]["kept_as"] is None
    assert snapshot(live) == before
    assert siblings(live) == listing  # no staged or kept dir left behind
    assert [s["result"] for s in result["steps"]][-1] == "failed"


def test_swap_is_one_rename_and_the_old_dir_is_kept(trees):
    live, copy = trees
    before = snapshot(live)
    inode = os.stat(live).st_ino
    result = config_swap(str(live), str(copy))
    kept = result["report"]["kept_as"]
    assert kept.startswith(f"{live}.mayday-replaced-")
    assert os.stat(live).st_ino != inode
    assert os.stat(kept).st_ino == inode
    assert snapshot(kept) == before  # the replaced directory, untouched
    assert [s["step"] for s in result["steps"]] == ["check paths", "plan", "stage", "swap", "keep", "prune"]
    assert not [n for n in siblings(live) if STAGE_INFIX in n]


def test_only_the_newest_replaced_directories_are_kept(trees):
    """A weekly drill of Level 2's API keeps a replaced directory each time: the oldest go, the newest stay,
    and a directory of someone else's naming beside them is never touched."""
    live, copy = trees
    for stamp in ("20240101T000000Z", "20240102T000000Z", "20240103T000000Z", "20240103T000000Z-2"):
        put(live.parent / f"config.mayday-replaced-{stamp}" / "api.php", "old")
    put(live.parent / "config.mine" / "api.php", "not mayday's")
    result = config_swap(str(live), str(copy), keep_last=3)
    kept = os.path.basename(result["report"]["kept_as"])
    assert [n for n in siblings(live) if "replaced" in n] == ["config.mayday-replaced-20240103T000000Z",
                                                              "config.mayday-replaced-20240103T000000Z-2", kept]
    assert result["report"]["pruned"] == [str(live.parent / f"config.mayday-replaced-{s}")
                                          for s in ("20240101T000000Z", "20240102T000000Z")]
    assert (live.parent / "config.mine" / "api.php").read_text() == "not mayday's"
    put(copy / "api.php", "<?php return ['v' => 3];\n")
    config_swap(str(live), str(copy), keep_last=0)  # 0: none removed
    assert len([n for n in siblings(live) if "replaced" in n]) == 4


def test_check_mode_changes_nothing_and_reports_the_diff(trees):
    live, copy = trees
    before, listing = snapshot(live), siblings(live)
    result = config_swap(str(live), str(copy), validate=VALIDATE, check_mode=True)
    assert result["changed"] and result["ok"]
    assert "secret.php" in result["report"]["files_changed"]
    assert "would be restored" in result["summary"]
    assert snapshot(live) == before
    assert siblings(live) == listing


def test_check_mode_reports_a_refusal_too(trees):
    live, copy = trees
    put(copy / "api.php", "<?php BROKEN\n")
    with pytest.raises(SwapError) as caught:
        config_swap(str(live), str(copy), validate=VALIDATE, check_mode=True)
    assert caught.value.result["refused"]


def test_second_run_is_idempotent(trees):
    live, copy = trees
    assert config_swap(str(live), str(copy))["changed"]
    listing, before = siblings(live), snapshot(live)
    again = config_swap(str(live), str(copy), validate=VALIDATE)
    assert not again["changed"] and again["ok"] and again["report"]["files_changed"] == []
    assert again["report"]["kept_as"] is None
    assert siblings(live) == listing and snapshot(live) == before


def test_only_what_differs_is_reported(trees):
    live, copy = trees
    config_swap(str(live), str(copy))
    put(live / "api.php", "<?php return ['v' => 3];\n", 0o600)  # edited by hand after the rollback
    result = config_swap(str(live), str(copy))
    assert result["report"]["files_changed"] == ["api.php"]
    assert (live / "api.php").read_text() == "<?php return ['v' => 1];\n"
    assert stat.S_IMODE(os.stat(live / "api.php").st_mode) == 0o600  # the live file's mode wins


def test_live_dir_that_is_a_symlink_is_refused(trees, tmp_path):
    live, copy = trees
    real = tmp_path / "real-config"
    live.rename(real)
    os.symlink(real, live)
    before = snapshot(real)
    with pytest.raises(SwapError) as caught:
        config_swap(str(live), str(copy))
    assert caught.value.result["refused"] and "symlink" in caught.value.result["msg"]
    assert os.path.islink(live) and snapshot(real) == before
    with pytest.raises(FilesError, match="symlink"):
        stage_tree(str(live), str(copy))


def test_existing_keep_dir_is_refused_before_anything_changes(trees):
    live, copy = trees
    keep = live.parent / "kept"
    keep.mkdir()
    before = snapshot(live)
    with pytest.raises(SwapError) as caught:
        config_swap(str(live), str(copy), keep_dir=str(keep))
    assert caught.value.result["refused"] and snapshot(live) == before


def test_stale_staged_dir_from_a_killed_run_is_removed(trees):
    live, copy = trees
    stale = live.parent / f"{live.name}{STAGE_INFIX}999999999"
    put(stale / "half.php", "<?php\n")
    config_swap(str(live), str(copy))
    assert not stale.exists()


def test_write_file_nofollow_keeps_mode_and_owner(tmp_path):
    path = tmp_path / "secret.ini"
    put(path, "old\n", 0o640)
    if os.geteuid() == 0:
        os.chown(path, OTHER_UID, OTHER_UID)
    owner = os.stat(path).st_uid, os.stat(path).st_gid
    inode = os.stat(path).st_ino
    write_file_nofollow(str(path), "new\n", mode=0o644)
    st = os.stat(path)
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(st.st_mode) == 0o640 and (st.st_uid, st.st_gid) == owner
    assert st.st_ino != inode  # replaced by rename, not rewritten in place
    assert os.listdir(tmp_path) == ["secret.ini"]  # no temp file left


def test_write_file_nofollow_replaces_a_planted_symlink(tmp_path):
    target = tmp_path / "shadow"
    put(target, "precious\n", 0o600)
    path = tmp_path / "app.ini"
    os.symlink(target, path)
    write_file_nofollow(str(path), b"mine\n", mode=0o640)
    assert not os.path.islink(path) and path.read_text() == "mine\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert target.read_text() == "precious\n" and stat.S_IMODE(os.stat(target).st_mode) == 0o600
    write_file_nofollow(str(tmp_path / "fresh.ini"), "x")
    assert stat.S_IMODE(os.stat(tmp_path / "fresh.ini").st_mode) == 0o600


def test_exchange_swaps_two_directories(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    put(a / "f", "a")
    put(b / "f", "b")
    exchange(str(a), str(b))
    assert (a / "f").read_text() == "b" and (b / "f").read_text() == "a"
    with pytest.raises(FileNotFoundError):
        exchange(str(a), str(tmp_path / "missing"))
