# Release layout logic shared by the release_switch and rollback_host modules.
# Layouts:
#   symlink: <root>/releases/<id>/ with <root>/current -> releases/<id> (flipped atomically)
#   dirswap: <root>/upload (live) and <root>/upload_previous (the runbooks' blue-green folders)
# Releases are ordered by when they were deployed (<root>/.mayday-deploy-history, else the release
# directory's mtime), never by name: git SHAs and `release-9` vs `v10` do not sort in deploy order.
from __future__ import annotations

import contextlib
import ctypes
import datetime
import json
import os
import re
import secrets
import stat
import time

FAILED_MARKER = ".mayday-failed"
HISTORY_FILE = ".mayday-deploy-history"
HISTORY_LINES = 1000  # the shell probe reads `tail -n 1000`; both sides must see the same lines
_HISTORY_BYTES = 1 << 20
_NOFOLLOW_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK  # NONBLOCK: a planted FIFO must not hang us


class ReleaseError(Exception):
    """A refusal: nothing was changed."""


def natural_key(name):
    """Tie-break only: `v2` before `v10` when two releases were deployed in the same second."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def is_true(value) -> bool:
    """A flag from a release dict, which may arrive templated as a string."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "on", "1")
    return bool(value)


def _parse_utc(text):
    text = text.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.datetime.fromisoformat(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)  # noqa: UP017 (runs on host Pythons < 3.11)
        return when.timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def _history_lines(history_text):
    lines = (history_text or "").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines[-HISTORY_LINES:]


def deploy_order(names, history_text="", mtimes=None) -> list[str]:
    """Release ids oldest deploy first.

    history_text: `<UTC ISO timestamp>\\t<release id>` lines, append-only; an id's last line is its
    deploy time (a re-deploy moves it to the newest). Malformed lines are ignored. Releases absent
    from the history fall back to mtimes[id] (epoch seconds of the release directory); names only
    break ties. Pure: the host-side layout and the controller-side probe parse both call it.
    """
    deployed = {}
    for index, line in enumerate(_history_lines(history_text), start=1):
        stamp, sep, release = line.rstrip("\r").partition("\t")
        release = release.strip()
        when = _parse_utc(stamp) if sep and release and "\t" not in release else None
        if when is not None:
            deployed[release] = (when, index)
    mtimes = mtimes or {}

    def key(name):
        # Same-second history entries keep their line order before names decide.
        when, index = deployed.get(name) or (float(mtimes.get(name) or 0), 0)
        return (when, index, natural_key(name))

    return sorted(names, key=key)


def _read_marker(path):
    """The marker's content ({} when not JSON), or None when there is no mayday marker.

    A symlink (or anything but a regular file) is not a mayday marker: a release could ship one.
    """
    try:
        fd = os.open(path, _NOFOLLOW_READ)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            data = json.loads(handle.read(65536).decode("utf-8"))
        except (OSError, ValueError):
            return {}
    return data if isinstance(data, dict) else {}


def _write_marker(directory, payload):
    """Write <directory>/.mayday-failed without ever following a symlink planted there.

    A fresh O_EXCL|O_NOFOLLOW temp file is renamed over the name: rename(2) replaces a link
    itself, never its target.
    """
    path = os.path.join(directory, FAILED_MARKER)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    for _ in range(10):
        tmp = os.path.join(directory, f"{FAILED_MARKER}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            fd = os.open(tmp, flags, 0o644)
        except FileExistsError:
            continue
        break
    else:
        raise OSError(f"cannot create a temporary marker in {directory}")
    try:
        os.fchmod(fd, 0o644)  # whatever the umask
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _remove_marker(directory):
    """Remove a regular marker or a link itself; leave anything else (a directory) alone."""
    path = os.path.join(directory, FAILED_MARKER)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
        os.unlink(path)


@contextlib.contextmanager
def _same_mtime(directory):
    """The release directory's mtime is the deploy-order fallback: marking must not move it."""
    try:
        before = os.stat(directory)
    except OSError:
        before = None
    yield
    if before is not None:
        with contextlib.suppress(OSError):
            os.utime(directory, ns=(before.st_atime_ns, before.st_mtime_ns))


def read_history(root) -> str:
    """The deploy history's tail ('' when missing, not a regular file, or a symlink)."""
    try:
        fd = os.open(os.path.join(root, HISTORY_FILE), _NOFOLLOW_READ)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return ""
        skip = max(0, info.st_size - _HISTORY_BYTES)
        handle.seek(skip)
        data = handle.read(_HISTORY_BYTES)
    if skip:  # the first line read is partial
        data = data.partition(b"\n")[2]
    return data.decode("utf-8", "replace")


class SymlinkLayout:
    def __init__(self, root, releases_dir="releases", current_link="current"):
        self.root = root
        self.releases_path = os.path.join(root, releases_dir)
        self.releases_dir = releases_dir
        self.current_path = os.path.join(root, current_link)

    def releases(self):
        """Release ids in deploy order, oldest first."""
        if not os.path.isdir(self.releases_path):
            raise ReleaseError(f"no release directory {self.releases_path}")
        mtimes = {}
        for name in os.listdir(self.releases_path):
            if name.startswith("."):  # as the probe's `*/` glob: hidden dirs are not releases
                continue
            try:
                info = os.stat(os.path.join(self.releases_path, name))
            except OSError:
                continue
            if stat.S_ISDIR(info.st_mode):
                mtimes[name] = int(info.st_mtime)  # whole seconds, as the probe's `stat -c %Y`
        return deploy_order(list(mtimes), read_history(self.root), mtimes)

    def current(self):
        if not os.path.islink(self.current_path):
            return None
        return os.path.basename(os.path.normpath(os.readlink(self.current_path)))

    def failed_marker(self, release):
        return _read_marker(os.path.join(self.releases_path, release, FAILED_MARKER))

    def state(self):
        names = self.releases()
        markers = {n: self.failed_marker(n) for n in names}
        return {
            "layout": "symlink",
            "releases": names,
            "current": self.current(),
            "failed": {n: m for n, m in markers.items() if m is not None},
        }

    def plan(self, target=None, force=False):
        return plan_symlink(self.state(), target, self.current_path, force)

    def switch(self, target):
        link_target = os.path.join(self.releases_dir, target)
        tmp = f"{self.current_path}.mayday-{os.getpid()}"
        # Never follows a link planted at tmp: unlink removes the link itself, symlink(2) fails on
        # an existing name, and rename(2) replaces `current` itself.
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(link_target, tmp)
        os.replace(tmp, self.current_path)  # rename(2) is atomic: readers see old or new, never neither

    def mark_failed(self, release, incident, reason):
        directory = os.path.join(self.releases_path, release)
        with _same_mtime(directory):
            _write_marker(directory, {"marked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                      "incident": incident, "reason": reason})

    def clear_failed(self, release):
        directory = os.path.join(self.releases_path, release)
        with _same_mtime(directory):
            _remove_marker(directory)


def plan_symlink(state, target=None, where="current", force=False):
    """Decide what a rollback does from a layout state. Returns (target, already_done, reason).

    state["releases"] is in deploy order, oldest first. Pure, so the controller can plan from a
    listing taken over any connection.
    """
    names, current, failed = state["releases"], state["current"], state["failed"]
    if target:
        if target not in names:
            listing = ", ".join(f"{n} (marked failed)" if n in failed else n for n in names) or "none"
            raise ReleaseError(f"unknown release {target!r}; valid (oldest deploy first): {listing}")
        if target == current:
            return target, True, "named release is already current"
        if target in failed and not force:
            incident = (failed[target] or {}).get("incident") or "unknown"
            raise ReleaseError(f"{target} is marked failed (incident {incident}): "
                               "pass --force to roll back to it anyway")
        return target, False, "named release" + (" (marked failed, forced)" if target in failed else "")
    if current is None:
        raise ReleaseError(f"{where} is not a symlink to a release")
    if current not in names:
        raise ReleaseError(f"current release {current!r} is not among the releases ({', '.join(names)})")
    position = names.index(current)
    newer = names[position + 1 :]
    if newer and all(n in failed for n in newer) and current not in failed:
        return current, True, "rollback already done: every release deployed after it is marked failed"
    older = [n for n in names[:position] if n not in failed]
    if not older:
        raise ReleaseError(
            f"no earlier good release before {current!r} (releases, oldest deploy first: {', '.join(names)}; "
            f"marked failed: {', '.join(n for n in names if n in failed) or 'none'})"
        )
    return older[-1], False, "newest good release deployed before the current one"


def plan_dirswap(state, target=None, force=False):
    if target not in (None, "", "upload_previous"):
        raise ReleaseError(f"the dirswap layout can only roll back to upload_previous, not {target!r}")
    if "upload" not in state["releases"]:
        raise ReleaseError("the live folder upload does not exist")
    if "upload_previous" not in state["releases"]:
        if state["failed"]:
            return "upload", True, "rollback already done: upload_previous was swapped in"
        raise ReleaseError("no earlier release: upload_previous does not exist")
    return "upload_previous", False, "the upload_previous folder"


def plan_for(state, target=None, force=False):
    if state.get("layout") == "dirswap":
        return plan_dirswap(state, target, force)
    return plan_symlink(state, target, force=force)


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

    def plan(self, target=None, force=False):
        return plan_dirswap(self.state(), target, force)

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
        _write_marker(os.path.join(self.root, release), {"incident": incident, "reason": reason})

    def clear_failed(self, release):
        _remove_marker(os.path.join(self.root, release))


def layout_for(params):
    if params.get("layout", "symlink") == "dirswap":
        return DirSwapLayout(params["root"])
    return SymlinkLayout(params["root"], params.get("releases_dir", "releases"), params.get("current_link", "current"))
