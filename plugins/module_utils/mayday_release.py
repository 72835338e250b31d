# Release layout logic shared by the release_switch and rollback_host modules.
# Layouts:
#   symlink: <root>/releases/<id>/ with <root>/current -> releases/<id> (flipped atomically)
#   dirswap: <root>/upload (live) and <root>/upload_previous (the runbooks' blue-green folders)
from __future__ import annotations

import ctypes
import json
import os
import re
import time

FAILED_MARKER = ".mayday-failed"


class ReleaseError(Exception):
    """A refusal: nothing was changed."""


def natural_key(name):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _read_marker(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


class SymlinkLayout:
    def __init__(self, root, releases_dir="releases", current_link="current"):
        self.root = root
        self.releases_path = os.path.join(root, releases_dir)
        self.releases_dir = releases_dir
        self.current_path = os.path.join(root, current_link)

    def releases(self):
        if not os.path.isdir(self.releases_path):
            raise ReleaseError(f"no release directory {self.releases_path}")
        names = [n for n in os.listdir(self.releases_path) if os.path.isdir(os.path.join(self.releases_path, n))]
        return sorted(names, key=natural_key)

    def current(self):
        if not os.path.islink(self.current_path):
            return None
        return os.path.basename(os.path.normpath(os.readlink(self.current_path)))

    def failed_marker(self, release):
        return _read_marker(os.path.join(self.releases_path, release, FAILED_MARKER))

    def state(self):
        names = self.releases()
        return {
            "layout": "symlink",
            "releases": names,
            "current": self.current(),
            "failed": {n: self.failed_marker(n) for n in names if self.failed_marker(n)},
        }

    def plan(self, target=None):
        return plan_symlink(self.state(), target, self.current_path)

    def switch(self, target):
        link_target = os.path.join(self.releases_dir, target)
        tmp = f"{self.current_path}.mayday-{os.getpid()}"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(link_target, tmp)
        os.replace(tmp, self.current_path)  # rename(2) is atomic: readers see old or new, never neither

    def mark_failed(self, release, incident, reason):
        path = os.path.join(self.releases_path, release, FAILED_MARKER)
        with open(path, "w") as handle:
            json.dump({"marked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "incident": incident, "reason": reason}, handle)

    def clear_failed(self, release):
        path = os.path.join(self.releases_path, release, FAILED_MARKER)
        if os.path.exists(path):
            os.unlink(path)


def plan_symlink(state, target=None, where="current"):
    """Decide what a rollback does from a layout state. Returns (target, already_done, reason).

    Pure, so the controller can plan from a listing taken over any connection.
    """
    names, current, failed = state["releases"], state["current"], state["failed"]
    if target:
        if target not in names:
            raise ReleaseError(f"unknown release {target!r}; valid: {', '.join(names) or 'none'}")
        return target, target == current, "named release"
    if current is None:
        raise ReleaseError(f"{where} is not a symlink to a release")
    if current not in names:
        raise ReleaseError(f"current release {current!r} is not among the releases ({', '.join(names)})")
    newer = names[names.index(current) + 1 :]
    if newer and all(n in failed for n in newer) and current not in failed:
        return current, True, "rollback already done: every newer release is marked failed"
    older = [n for n in names[: names.index(current)] if n not in failed]
    if not older:
        raise ReleaseError(
            f"no earlier good release before {current!r} (releases: {', '.join(names)}; "
            f"marked failed: {', '.join(sorted(failed)) or 'none'})"
        )
    return older[-1], False, "newest good release before the current one"


def plan_dirswap(state, target=None):
    if target not in (None, "", "upload_previous"):
        raise ReleaseError(f"the dirswap layout can only roll back to upload_previous, not {target!r}")
    if "upload" not in state["releases"]:
        raise ReleaseError("the live folder upload does not exist")
    if "upload_previous" not in state["releases"]:
        if state["failed"]:
            return "upload", True, "rollback already done: upload_previous was swapped in"
        raise ReleaseError("no earlier release: upload_previous does not exist")
    return "upload_previous", False, "the upload_previous folder"


def plan_for(state, target=None):
    if state.get("layout") == "dirswap":
        return plan_dirswap(state, target)
    return plan_symlink(state, target)


_RENAME_EXCHANGE = 2


def _exchange(a, b):
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE)."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    rc = libc.renameat2(at_fdcwd, a.encode(), at_fdcwd, b.encode(), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), a)


class DirSwapLayout:
    """The runbooks' `upload` / `upload_previous` folders. Releases are named by folder."""

    def __init__(self, root, live_dir="upload", previous_dir="upload_previous"):
        self.root = root
        self.live = os.path.join(root, live_dir)
        self.previous = os.path.join(root, previous_dir)

    def state(self):
        failed = sorted(n for n in os.listdir(self.root) if n.startswith("upload_failed")) if os.path.isdir(
            self.root) else []
        return {
            "layout": "dirswap",
            "releases": [n for n in ("upload_previous", "upload") if os.path.isdir(os.path.join(self.root, n))],
            "current": "upload" if os.path.isdir(self.live) else None,
            "failed": {n: _read_marker(os.path.join(self.root, n, FAILED_MARKER)) or {} for n in failed},
        }

    def plan(self, target=None):
        return plan_dirswap(self.state(), target)

    def switch(self, target):
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
        name = f"upload_failed-{stamp}"
        for n in range(2, 100):
            if not os.path.lexists(os.path.join(self.root, name)):
                break
            name = f"upload_failed-{stamp}-{n}"
        _exchange(self.live, self.previous)
        os.rename(self.previous, os.path.join(self.root, name))
        return name

    def mark_failed(self, release, incident, reason):
        path = os.path.join(self.root, release, FAILED_MARKER)
        with open(path, "w") as handle:
            json.dump({"incident": incident, "reason": reason}, handle)


def layout_for(params):
    if params.get("layout", "symlink") == "dirswap":
        return DirSwapLayout(params["root"])
    return SymlinkLayout(params["root"], params.get("releases_dir", "releases"), params.get("current_link", "current"))
