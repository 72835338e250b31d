# Writing as root on a host. A symlink planted where we write is replaced, never followed; a file
# we replace keeps its mode and owner (a 0640 secret stays 0640); a directory is replaced by one
# rename, so readers see the old tree or the new one, never a mix. Standard library only.
from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import hashlib
import os
import secrets
import shlex
import shutil
import stat
import subprocess
import time

try:
    from ansible.module_utils.mayday_steps import Steps
except ImportError:  # imported directly (unit tests, controller)
    from mayday_steps import Steps  # type: ignore[no-redef]

STAGE_INFIX = ".mayday-new-"
KEEP_INFIX = ".mayday-replaced-"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class FilesError(Exception):
    """A refusal: nothing was changed."""


class SwapError(Exception):
    """config_swap failed; .result says what happened (refused is true when nothing changed)."""

    def __init__(self, msg, result):
        super().__init__(msg)
        self.result = result


# ---- single files -------------------------------------------------------------------------------

def _unlink_quiet(name, dir_fd):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def _write_new(dir_fd, name, chunks, mode, uid=-1, gid=-1, times_ns=None):
    """Create `name` in dir_fd (it must not exist), write, set owner then mode, fsync."""
    # 0600 until the final mode is set, so a secret is never readable by others on the way
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        st = os.fstat(fd)
        if (uid != -1 and uid != st.st_uid) or (gid != -1 and gid != st.st_gid):
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)  # after chown, which clears setuid/setgid bits
        if times_ns:
            os.utime(fd, ns=times_ns)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quiet(name, dir_fd)
        raise
    os.close(fd)


def write_file_nofollow(path, data, mode=None):
    """Replace `path` with `data` atomically (temp file in the same dir, fsync, rename).

    Keeps the mode and owner of the regular file it replaces; otherwise (absent, or a symlink
    planted there, which is replaced and its target never touched) uses `mode`, default 0600.
    """
    if isinstance(data, str):
        data = data.encode()
    parent, name = os.path.split(os.path.abspath(path))
    dir_fd = os.open(parent, _DIR_FLAGS)
    try:
        try:
            old = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            old = None
        if old is not None and stat.S_ISDIR(old.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if old is not None and stat.S_ISREG(old.st_mode):
            new_mode, uid, gid = stat.S_IMODE(old.st_mode), old.st_uid, old.st_gid
        else:
            new_mode, uid, gid = (0o600 if mode is None else mode), -1, -1
        tmp = f".{name}.mayday-tmp-{os.getpid()}-{secrets.token_hex(4)}"
        _write_new(dir_fd, tmp, [data], new_mode, uid, gid)
        try:
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            _unlink_quiet(tmp, dir_fd)
            raise
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def exchange(a, b):
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE): both exist before and after."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        func = libc.renameat2
    except AttributeError as exc:  # libc older than glibc 2.28
        raise OSError(errno.ENOSYS, "renameat2 not available in libc", a) from exc
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if func(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), a)


# ---- trees --------------------------------------------------------------------------------------

def _real_dir(path, what):
    try:
        st = os.lstat(path)
    except FileNotFoundError as exc:
        raise FilesError(f"{what} {path} does not exist") from exc
    if stat.S_ISLNK(st.st_mode):
        raise FilesError(f"{what} {path} is a symlink; refusing to follow it")
    if not stat.S_ISDIR(st.st_mode):
        raise FilesError(f"{what} {path} is not a directory")


def _node(st, **extra):
    kind = "dir" if stat.S_ISDIR(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode) else \
        "file" if stat.S_ISREG(st.st_mode) else "other"
    return dict(type=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid, **extra)


def _sha256(name, dir_fd):
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        digest = hashlib.sha256()
        while chunk := os.read(fd, _CHUNK):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)


def _chunks(fd):
    while chunk := os.read(fd, _CHUNK):
        yield chunk


def _scan_fd(dir_fd, rel, out):
    for name in sorted(os.listdir(dir_fd)):
        path = f"{rel}{name}"
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode):
            out[path] = _node(st, sha256=_sha256(name, dir_fd))
        elif stat.S_ISLNK(st.st_mode):
            out[path] = _node(st, target=os.readlink(name, dir_fd=dir_fd))
        elif stat.S_ISDIR(st.st_mode):
            out[path] = _node(st)
            sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                _scan_fd(sub, f"{path}/", out)
            finally:
                os.close(sub)
        else:
            out[path] = _node(st)


def scan_tree(root):
    """{relative path: node} for everything under root ('' is root itself); symlinks are not followed."""
    _real_dir(root, "directory")
    dir_fd = os.open(root, _DIR_FLAGS)
    try:
        out = {"": _node(os.fstat(dir_fd))}
        _scan_fd(dir_fd, "", out)
        return out
    finally:
        os.close(dir_fd)


def plan_tree(live, copy):
    """The tree staging would build: the copy's content; each node that replaces a live node of the
    same type takes that node's mode and owner, new nodes keep the copy's; the root takes the live dir's."""
    _real_dir(live, "live directory")
    _real_dir(copy, "copy")
    live_nodes, copy_nodes = scan_tree(live), scan_tree(copy)
    planned = {}
    for rel, node in copy_nodes.items():
        if node["type"] == "other":
            raise FilesError(f"{os.path.join(copy, rel)}: not a file, directory or symlink")
        old = live_nodes.get(rel)
        meta = old if old and old["type"] == node["type"] else node
        planned[rel] = dict(node, mode=meta["mode"], uid=meta["uid"], gid=meta["gid"])
    return planned, live_nodes


def tree_diff(planned, live_nodes):
    """Relative paths added, removed, or whose type, content, mode or owner differs (dirs end in /)."""
    changed = []
    for rel in sorted(set(planned) | set(live_nodes)):
        if planned.get(rel) != live_nodes.get(rel):
            node = planned.get(rel) or live_nodes[rel]
            changed.append(f"{rel}/" if node["type"] == "dir" and rel else rel or "./")
    return changed


def _set_meta(name, dir_fd, node):
    os.chown(name, node["uid"], node["gid"], dir_fd=dir_fd, follow_symlinks=False)
    if node["type"] != "link":  # a symlink's mode is meaningless on Linux
        os.chmod(name, node["mode"], dir_fd=dir_fd)


def _copy_fd(src_fd, dst_fd, rel, planned):
    for name in sorted(os.listdir(src_fd)):
        path = f"{rel}{name}"
        node = planned[path]
        st = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
        if _node(st)["type"] != node["type"]:
            raise FilesError(f"{path} changed type while being copied")
        if node["type"] == "link":
            os.symlink(os.readlink(name, dir_fd=src_fd), name, dir_fd=dst_fd)
            _set_meta(name, dst_fd, node)
        elif node["type"] == "dir":
            os.mkdir(name, 0o700, dir_fd=dst_fd)
            sub_src = os.open(name, _DIR_FLAGS, dir_fd=src_fd)
            try:
                sub_dst = os.open(name, _DIR_FLAGS, dir_fd=dst_fd)
                try:
                    _copy_fd(sub_src, sub_dst, f"{path}/", planned)
                    os.fsync(sub_dst)
                finally:
                    os.close(sub_dst)
            finally:
                os.close(sub_src)
            _set_meta(name, dst_fd, node)
        else:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_fd)
            try:
                _write_new(dst_fd, name, _chunks(fd), node["mode"], node["uid"], node["gid"],
                           (st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(fd)


def remove_tree(path):
    """Remove a directory tree (or a symlink in its place) without following symlinks."""
    if os.path.islink(path):
        os.unlink(path)
    elif os.path.lexists(path):
        shutil.rmtree(path)  # fd-based on Linux: symlinks inside are removed, not followed


def _remove_stale_stages(live):
    """Staged dirs left by a run that was killed (its pid is gone) are removed."""
    parent, base = os.path.split(live)
    for name in os.listdir(parent):
        pid = name[len(base) + len(STAGE_INFIX):] if name.startswith(base + STAGE_INFIX) else ""
        if not pid.isdigit():
            continue
        if int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
                continue  # still running
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        remove_tree(os.path.join(parent, name))


def stage_tree(live, copy, planned=None):
    """Copy `copy` into a new sibling <live>.mayday-new-<pid> per plan_tree; return its path.

    Symlinks in the copy are copied as symlinks; the live dir must not be a symlink.
    """
    live, copy = os.path.abspath(live), os.path.abspath(copy)
    if planned is None:
        planned, _ = plan_tree(live, copy)
    else:
        _real_dir(live, "live directory")
        _real_dir(copy, "copy")
    _remove_stale_stages(live)
    staged = f"{live}{STAGE_INFIX}{os.getpid()}"
    parent, name = os.path.split(staged)
    parent_fd = os.open(parent, _DIR_FLAGS)
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)  # private while it is filled
        try:
            src_fd = os.open(copy, _DIR_FLAGS)
            try:
                dst_fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
                try:
                    _copy_fd(src_fd, dst_fd, "", planned)
                    os.fsync(dst_fd)
                finally:
                    os.close(dst_fd)
            finally:
                os.close(src_fd)
            _set_meta(name, parent_fd, planned[""])
            os.fsync(parent_fd)
        except BaseException:
            remove_tree(staged)
            raise
    finally:
        os.close(parent_fd)
    return staged


# ---- config_swap --------------------------------------------------------------------------------

def _validate_args(template, path):
    args = shlex.split(template)
    if not any("%s" in a for a in args):
        raise FilesError(f"validate command {template!r} has no %s for the file")
    return [a.replace("%s", path) for a in args]


def _run_validate(template, path, rel):
    proc = subprocess.run(_validate_args(template, path), capture_output=True, text=True, timeout=120,
                          check=False)
    if proc.returncode != 0:
        output = " ".join((proc.stdout + proc.stderr).split())[:500]
        raise FilesError(f"{rel} fails validation ({template}, exit {proc.returncode}): {output}")
    return rel


def _default_keep(live):
    base = f"{live}{KEEP_INFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    keep, n = base, 2
    while os.path.lexists(keep):
        keep, n = f"{base}-{n}", n + 1
    return keep


def prune_kept(live, keep_last):
    """The newest `keep_last` directories <live>.mayday-replaced-<stamp> stay, older ones go: a weekly
    drill or a habit of Level 2 must not fill the disk. 0 keeps them all. Returns the removed paths."""
    if keep_last <= 0:
        return []
    parent, prefix = os.path.dirname(live), os.path.basename(live) + KEEP_INFIX
    # UTC stamps sort in time order; a same-second "-N" suffix sorts after its stamp.
    kept = sorted(name for name in os.listdir(parent) if name.startswith(prefix)
                  and os.path.isdir(os.path.join(parent, name)) and not os.path.islink(os.path.join(parent, name)))
    removed = [os.path.join(parent, name) for name in kept[:-keep_last]]
    for path in removed:
        remove_tree(path)
    return removed


def _inside(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


def config_swap(live, copy, validate=None, validate_glob="*.php", keep_dir=None, check_mode=False, keep_last=10):
    """Replace directory `live` by a copy of `copy` in one renameat2; keep the old one at keep_dir.

    Returns the module result; raises SwapError (its .result has refused=true when nothing changed).
    """
    steps = Steps()
    live, copy = os.path.abspath(live), os.path.abspath(copy)
    report = {"restored_from": copy, "kept_as": None, "files_changed": [], "validated": []}
    result = {"changed": False, "refused": False, "ok": False, "msg": "", "summary": "", "report": report,
              "steps": steps.items}
    staged = ""
    swapped = False
    planned: dict = {}
    live_nodes: dict = {}
    keep_to = ""
    what = "would be restored" if check_mode else "restored"

    def checks():
        _real_dir(live, "live directory")
        _real_dir(copy, "copy")
        real_copy, real_live = os.path.realpath(copy), os.path.realpath(live)
        if _inside(copy, live) or _inside(live, copy) or _inside(real_copy, real_live) or \
                _inside(real_live, real_copy):
            raise FilesError(f"copy {copy} and live directory {live} overlap")
        if validate:
            _validate_args(validate, "x")
        keep = os.path.abspath(keep_dir) if keep_dir else _default_keep(live)
        if os.path.lexists(keep):
            raise FilesError(f"keep_dir {keep} already exists")
        parent = os.path.dirname(keep)
        _real_dir(parent, "keep_dir's parent")
        if os.stat(parent).st_dev != os.stat(os.path.dirname(live)).st_dev:
            raise FilesError(f"keep_dir {keep} is on another filesystem than {live}; it must be renamed there")
        nonlocal keep_to
        keep_to = report["kept_as"] = keep
        return f"keep the replaced directory as {keep}"

    def plan():
        nonlocal planned, live_nodes
        planned, live_nodes = plan_tree(live, copy)
        report["files_changed"] = tree_diff(planned, live_nodes)
        return f"{len(report['files_changed'])} path(s) differ: {', '.join(report['files_changed'][:20])}"

    def validate_all(root):
        for rel, node in planned.items():
            if node["type"] == "file" and (fnmatch.fnmatch(os.path.basename(rel), validate_glob)
                                           or fnmatch.fnmatch(rel, validate_glob)):
                report["validated"].append(_run_validate(validate, os.path.join(root, rel), rel))
        return f"{len(report['validated'])} file(s) pass: {', '.join(report['validated'])}"

    def stage():
        nonlocal staged
        staged = stage_tree(live, copy, planned)
        return staged

    def swap():
        nonlocal swapped
        exchange(staged, live)
        swapped = True
        return f"{staged} <-> {live}"

    def keep():
        os.rename(staged, keep_to)
        dir_fd = os.open(os.path.dirname(live), _DIR_FLAGS)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return keep_to

    try:
        steps.run("check paths", checks)
        steps.run("plan", plan)
        if not report["files_changed"]:
            report["kept_as"] = None
            summary = f"{live} already matches {os.path.basename(copy)}; nothing changed"
            result.update(ok=True, msg=summary, summary=summary)
            return result
        if check_mode:
            if validate:
                steps.run("validate (copy)", validate_all, copy)
            for name in ("stage", "swap", "keep"):
                steps.skip(name, "check mode")
        else:
            steps.run("stage", stage)
            if validate:
                steps.run("validate", validate_all, staged)
            steps.run("swap", swap)
            steps.run("keep", keep)
            if not keep_dir:  # only our own default names are ever pruned
                try:
                    pruned = steps.run("prune", prune_kept, live, keep_last)
                    report["pruned"] = pruned
                except OSError:
                    pass  # the swap is done; an old copy left behind is no reason to fail it (the step says why)
    except Exception as exc:
        msg = str(exc) if isinstance(exc, FilesError) else f"{type(exc).__name__}: {exc}"
        if not swapped and staged:
            try:
                remove_tree(staged)
            except OSError as cleanup:
                msg += f" (staged {staged} not removed: {cleanup})"
        if swapped:
            report["kept_as"] = staged  # the old directory is still at the staged name
            msg = f"{live} was {what} from {copy} but the replaced directory was not moved: {msg}; it is at {staged}"
        else:
            report["kept_as"] = None
            msg = f"refused, nothing changed: {msg}"
        result.update(changed=swapped, refused=not swapped, ok=False, msg=msg, summary=msg)
        raise SwapError(msg, result) from exc
    files = report["files_changed"]
    summary = (f"{live} {what} from {os.path.basename(copy)}: {len(files)} path(s) changed "
               f"({', '.join(files[:10])}{', ...' if len(files) > 10 else ''}); replaced directory "
               f"{'would be ' if check_mode else ''}kept as {report['kept_as']}")
    result.update(changed=True, ok=True, msg=summary, summary=summary)
    return result
