# Evidence capture on a host, in order of volatility, into a 0700 staging directory, packed as a
# 0600 tar.gz with a SHA-256 manifest inside and alongside. Standard library only (unit-tested on
# the controller). Contents are copied faithfully (config files may hold passwords) and never
# returned: the result names files, statuses and hashes only.
from __future__ import annotations

import collections
import contextlib
import errno
import glob
import hashlib
import json
import os
import pwd
import re
import selectors
import shutil
import socket
import stat
import subprocess
import tarfile
import time

FORMAT = "mayday-evidence/1"
ARCHIVE = "evidence.tar.gz"
MANIFEST = "manifest.json"
TOP = "evidence"  # the archive's top directory
_CHUNK = 1 << 16
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# (item, what it holds), most volatile first: the order they are taken in.
ITEMS = (
    ("system", "clock, uptime, kernel, hostname"),
    ("processes", "every process with its binary's path and sha256 (/proc), ps tree"),
    ("sockets", "ss -tanpu, listening unix sockets, /proc/net tables, addresses and routes"),
    ("firewall", "nft list ruleset, iptables-save, ip6tables-save"),
    ("logins", "who, last, lastlog, wtmp/btmp"),
    ("accounts", "/etc/passwd, /etc/group, shadow status (never hashes)"),
    ("sudoers", "/etc/sudoers, /etc/sudoers.d"),
    ("authorized_keys", "every user's authorized keys, sshd configuration"),
    ("cron", "crontabs, cron directories, systemd timers"),
    ("systemd", "units loaded and installed, local and runtime unit files"),
    ("journal", "journal of the window"),
    ("auth", "auth log files and auth journal of the window"),
    ("logs", "web and database logs changed within the window (tail, bounded)"),
    ("config", "web and database configuration"),
    ("release", "sha256 of every file of the live release"),
)


class CaptureError(Exception):
    """The capture as a whole failed (cannot write, cannot pack): no evidence was produced."""


def utc(ts=None):
    ts = time.time() if ts is None else ts
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def sha256_file(path, limit=None):
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
            if limit is not None and size > limit:
                raise OSError(errno.EFBIG, f"larger than {limit} bytes")
    return digest.hexdigest()


def valid_id(text):
    return bool(_ID.match(text or ""))


class Collector:
    """Writes items under `stage`; a source that fails is recorded in its item, a write that fails
    raises CaptureError."""

    def __init__(self, stage, since, log_max_bytes=16 << 20, total_max_bytes=512 << 20, command_timeout=30,
                 deadline=None, hash_max_bytes=512 << 20, max_files=20000):
        self.stage = stage
        self.since = since
        self.log_max = log_max_bytes
        self.total_max = total_max_bytes
        self.timeout = command_timeout
        self.deadline = deadline
        self.hash_max = hash_max_bytes
        self.max_files = max_files
        self.total = 0
        self.parts = []

    # --- writing into the stage ------------------------------------------------------------------
    def _path(self, rel):
        path = os.path.join(self.stage, rel)
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        except OSError as exc:
            raise CaptureError(f"cannot write {rel} in the staging directory: {exc}") from exc
        return path

    def write(self, rel, data):
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        path = self._path(rel)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        except OSError as exc:
            raise CaptureError(f"cannot write {rel} in the staging directory: {exc}") from exc
        self.total += len(data)
        return len(data)

    def part(self, what, status, rel=None, reason=None, size=0, truncated=False):
        entry = {"what": what, "status": status}
        if rel:
            entry["file"] = rel
        if reason:
            entry["reason"] = str(reason)[:300]
        if size:
            entry["bytes"] = size
        if truncated:
            entry["truncated"] = True
        self.parts.append(entry)
        return entry

    def _budget(self, cap):
        """Bytes this source may still take: its own cap within what is left of the total."""
        return max(0, min(cap, self.total_max - self.total))

    def left(self):
        return None if self.deadline is None else self.deadline - time.monotonic()

    # --- sources ---------------------------------------------------------------------------------
    def command(self, rel, argv, tail=False, cap=None, ok_codes=(0,)):
        """Runs argv (no shell) with a timeout; stdout into rel, bounded (tail keeps the newest part)."""
        what = " ".join(argv)
        if shutil.which(argv[0]) is None:
            return self.part(what, "missing", reason=f"{argv[0]} not installed")
        left = self.left()
        if left is not None and left <= 0:
            return self.part(what, "error", reason="time budget of the capture exhausted")
        timeout = self.timeout if left is None else max(1.0, min(self.timeout, left))
        budget = self._budget(self.log_max if cap is None else cap)
        env = dict(os.environ, LC_ALL="C", SYSTEMD_PAGER="", PAGER="cat", SYSTEMD_COLORS="0", COLUMNS="512")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=env, close_fds=True)
        except OSError as exc:
            return self.part(what, "error", reason=exc)
        kept: collections.deque[bytes] = collections.deque()
        size, dropped, err = 0, False, b""
        out, errp = proc.stdout, proc.stderr
        assert out is not None and errp is not None  # both piped
        timed_out = False
        end = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ, "out")
            sel.register(errp, selectors.EVENT_READ, "err")
            while sel.get_map():
                wait = end - time.monotonic()
                if wait <= 0:
                    timed_out = True
                    break
                for key, _ in sel.select(wait):
                    chunk = os.read(key.fd, _CHUNK)
                    if not chunk:
                        sel.unregister(key.fileobj)
                    elif key.data == "err":
                        err = (err + chunk)[-4096:]
                    elif tail:
                        kept.append(chunk)
                        size += len(chunk)
                        while size - len(kept[0]) >= budget and len(kept) > 1:
                            size -= len(kept.popleft())
                            dropped = True
                    elif size < budget:
                        kept.append(chunk[:budget - size])
                        dropped = dropped or len(chunk) > budget - size
                        size += len(kept[-1])
                    else:
                        dropped = True
                        break  # head mode: the cap is reached, the rest is not read
                else:
                    continue
                break
        if not (timed_out or dropped):
            try:  # both pipes closed: the process is ending, give it the rest of its time
                proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        out.close()
        errp.close()
        data = b"".join(kept)
        if tail and len(data) > budget:
            data, dropped = data[len(data) - budget:], True
        written = self.write(rel, data)
        if timed_out:
            return self.part(what, "error", rel, f"timed out after {timeout:.0f} s (output kept)", written, True)
        if proc.returncode not in ok_codes and not dropped:
            reason = f"exit {proc.returncode}: " + err.decode("utf-8", "replace").strip()
            return self.part(what, "error", rel, reason, written)
        return self.part(what, "ok", rel, size=written, truncated=dropped)

    def copy(self, rel, src, tail=False, cap=None):
        """Copies one regular file (never through a symlink, never a FIFO or device), bounded."""
        budget = self._budget(self.log_max if cap is None else cap)
        try:
            fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return self.part(src, "missing", reason="absent")
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return self.part(src, "ok", reason=f"symlink to {_readlink(src)} (not followed)")
            return self.part(src, "error", reason=exc)
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return self.part(src, "ok", reason=f"not a regular file (mode {stat.filemode(st.st_mode)})")
            truncated = st.st_size > budget
            try:
                if truncated and tail:
                    handle.seek(st.st_size - budget)
                data = handle.read(budget)
            except OSError as exc:
                return self.part(src, "error", reason=exc)
        written = self.write(rel, data)
        return self.part(src, "ok", rel, size=written, truncated=truncated)

    def copy_paths(self, item, paths, newer_than=None, tail=False, cap=None):
        """Mirrors files and trees under item/<absolute path>; symlinks are listed, not followed."""
        links = []
        count = 0
        for top in paths:
            if not os.path.lexists(top):
                self.part(top, "missing", reason="absent")
                continue
            for path in _walk(top):
                if count >= self.max_files:
                    self.part(top, "error", reason=f"more than {self.max_files} files: the rest left out",
                              truncated=True)
                    break
                try:
                    st = os.lstat(path)
                except OSError as exc:
                    self.part(path, "error", reason=exc)
                    continue
                if stat.S_ISLNK(st.st_mode):
                    links.append(f"{path} -> {_readlink(path)}")
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                if newer_than is not None and st.st_mtime < newer_than:
                    continue
                count += 1
                if path.endswith((".gz", ".xz", ".bz2", ".zst")) and st.st_size > self._budget(cap or self.log_max):
                    self.part(path, "ok", reason="compressed and over the size cap: left out", truncated=True)
                    continue
                self.copy(f"{item}/files{path}", path, tail=tail, cap=cap)
        if links:
            self.write(f"{item}/symlinks.txt", "\n".join(links) + "\n")
            self.part("symlinks", "ok", f"{item}/symlinks.txt")
        return count


def _readlink(path):
    try:
        return os.readlink(path)
    except OSError as exc:
        return f"? ({exc.strerror})"


def _walk(top):
    """Every entry under top (top itself when it is not a directory), sorted, symlinks not followed."""
    if os.path.islink(top) or not os.path.isdir(top):
        yield top
        return
    for root, dirs, files in os.walk(top, followlinks=False):
        dirs.sort()
        for name in sorted(files + [d for d in dirs if os.path.islink(os.path.join(root, d))]):
            yield os.path.join(root, name)


# --- items -----------------------------------------------------------------------------------------

def collect_system(c):
    c.write("system/clock.json", json.dumps({
        "utc": utc(), "epoch": time.time(), "hostname": socket.gethostname(), "fqdn": socket.getfqdn(),
        "uname": list(os.uname()), "uptime": _read_text("/proc/uptime").split()[:1],
        "loadavg": _read_text("/proc/loadavg").strip(), "boot_id": _read_text(
            "/proc/sys/kernel/random/boot_id").strip()}, indent=1))
    c.part("clock, hostname, uname, uptime", "ok", "system/clock.json")


def _read_text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def _users():
    users: dict[int, str] = {}
    for entry in pwd.getpwall():
        users.setdefault(entry.pw_uid, entry.pw_name)
    return users


def process_table(hash_max=512 << 20):
    """Every process in /proc: pid, ppid, user, state, start, exe and its sha256 (read through
    /proc/<pid>/exe, so a deleted binary is hashed too; each distinct binary once)."""
    users = _users()
    tick = os.sysconf("SC_CLK_TCK")
    btime = next((int(line.split()[1]) for line in _read_text("/proc/stat").splitlines()
                  if line.startswith("btime ")), 0)
    hashes = {}
    rows = []
    for name in sorted((d for d in os.listdir("/proc") if d.isdigit()), key=int):
        pid = int(name)
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                raw = handle.read().decode("utf-8", "replace")
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read().rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
            uid = next(int(line.split()[1]) for line in _read_text(f"/proc/{pid}/status").splitlines()
                       if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue  # gone meanwhile
        comm = raw[raw.find("(") + 1:raw.rfind(")")]
        fields = raw[raw.rfind(")") + 2:].split()
        row = {"pid": pid, "ppid": int(fields[1]), "uid": uid, "user": users.get(uid, str(uid)),
               "state": fields[0], "started": utc(btime + int(fields[19]) / tick) if btime else None,
               "comm": comm, "cmdline": cmdline, "exe": None, "sha256": None}
        try:
            row["exe"] = os.readlink(f"/proc/{pid}/exe")
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):  # another uid, and no CAP_SYS_PTRACE (a container)
                row["exe_error"] = "binary not readable: permission denied"
            rows.append(row)  # else a kernel thread, or gone
            continue
        try:
            fd = os.open(f"/proc/{pid}/exe", os.O_RDONLY | os.O_CLOEXEC)
            try:
                st = os.fstat(fd)
                key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                if key not in hashes:
                    hashes[key] = _hash_fd(fd, hash_max)
            finally:
                os.close(fd)
            row["sha256"] = hashes[key]
        except OSError as exc:
            row["hash_error"] = exc.strerror or str(exc)
        rows.append(row)
    return rows


def _hash_fd(fd, limit):
    digest, size = hashlib.sha256(), 0
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return digest.hexdigest()
        size += len(chunk)
        if size > limit:
            raise OSError(errno.EFBIG, f"binary larger than {limit} bytes: not hashed")
        digest.update(chunk)


def collect_processes(c):
    rows = process_table(c.hash_max)
    c.write("processes/processes.json", json.dumps(rows, indent=1))
    lines = [f"{r['pid']:>7} {r['ppid']:>7} {r['user']:<12} {r['state']} {r['started'] or '-':<24} "
             f"{r['sha256'] or '-':<64} {r['exe'] or '[' + r['comm'] + ']'} :: {r['cmdline']}" for r in rows]
    c.write("processes/processes.txt", "    PID    PPID USER         S STARTED                  SHA256"
            + " " * 58 + "EXE :: CMDLINE\n" + "\n".join(lines) + "\n")
    binaries = sorted({(r["sha256"], r["exe"]) for r in rows if r["sha256"]}, key=lambda x: x[1])
    c.write("processes/exe-sha256.txt", "".join(f"{h}  {exe}\n" for h, exe in binaries))
    unhashed = sum(1 for r in rows if (r["exe"] and not r["sha256"]) or r.get("exe_error"))
    c.part(f"/proc: {len(rows)} processes, {len(binaries)} binaries hashed", "ok", "processes/processes.json",
           reason=f"{unhashed} processes' binaries not hashed (see exe_error, hash_error)" if unhashed else None)
    c.command("processes/ps-tree.txt", ["ps", "-eww", "-o", "pid,ppid,user,lstart,stat,args", "--forest"])


def collect_sockets(c):
    c.command("sockets/ss-tanpu.txt", ["ss", "-tanpu"])
    c.command("sockets/ss-unix-listening.txt", ["ss", "-xlp"])
    for table in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6", "unix"):
        c.copy(f"sockets/proc-net-{table}.txt", f"/proc/net/{table}")
    c.command("sockets/ip-addr.txt", ["ip", "addr"])
    c.command("sockets/ip-route.txt", ["ip", "route", "show", "table", "all"])


def collect_firewall(c):
    c.command("firewall/nft-ruleset.txt", ["nft", "list", "ruleset"])
    c.command("firewall/iptables-save.txt", ["iptables-save"])
    c.command("firewall/ip6tables-save.txt", ["ip6tables-save"])


def collect_logins(c):
    c.command("logins/who.txt", ["who", "-a"])
    c.command("logins/last.txt", ["last", "-F", "-w", "-x", "-n", "500"])
    c.command("logins/lastb.txt", ["lastb", "-F", "-w", "-n", "500"])
    c.command("logins/lastlog.txt", ["lastlog"])
    for name in ("wtmp", "btmp"):  # lastlog is sparse (GBs apparent): its report above is enough
        c.copy(f"logins/{name}", f"/var/log/{name}", tail=True)


def shadow_status(text):
    """Per account: password state, last change and ageing; never the hash itself."""
    out = ["user\tstate\tlast_change\tmin\tmax\twarn\tinactive\texpire"]
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 8 or not fields[0]:
            continue
        secret = fields[1]
        state = ("no-password" if secret == "" else "locked" if secret.startswith("!")
                 else "disabled" if secret.startswith("*") else "password")
        last = (time.strftime("%Y-%m-%d", time.gmtime(int(fields[2]) * 86400)) if fields[2].isdigit()
                else fields[2] or "-")
        out.append("\t".join([fields[0], state, last, *[f or "-" for f in fields[3:8]]]))
    return "\n".join(out) + "\n"


def collect_accounts(c):
    for src in ("/etc/passwd", "/etc/group"):
        c.copy(f"accounts{src}", src)
    try:
        with open("/etc/shadow", encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError as exc:
        c.part("/etc/shadow", "missing" if exc.errno == errno.ENOENT else "error", reason=exc)
    else:
        c.write("accounts/shadow-status.tsv", shadow_status(text))
        c.part("/etc/shadow (status only, no hashes)", "ok", "accounts/shadow-status.tsv")
    sums = []
    for src in ("/etc/shadow", "/etc/gshadow"):
        with contextlib.suppress(OSError):
            sums.append(f"{sha256_file(src)}  {src}\n")
    c.write("accounts/shadow-sha256.txt", "".join(sums))  # proves later whether they changed
    c.part("sha256 of /etc/shadow, /etc/gshadow", "ok", "accounts/shadow-sha256.txt")


def collect_sudoers(c):
    c.copy_paths("sudoers", ["/etc/sudoers", "/etc/sudoers.d"])


def _key_files(sshd_text):
    patterns = []
    for line in sshd_text.splitlines():
        words = line.split()
        if len(words) > 1 and words[0].lower() == "authorizedkeysfile" and words[1].lower() != "none":
            patterns = words[1:]
    return patterns or [".ssh/authorized_keys", ".ssh/authorized_keys2"]


def collect_authorized_keys(c):
    c.copy_paths("authorized_keys", ["/etc/ssh/sshd_config", "/etc/ssh/sshd_config.d"])
    sshd = _read_text("/etc/ssh/sshd_config") + "".join(
        _read_text(p) for p in sorted(glob.glob("/etc/ssh/sshd_config.d/*.conf")))
    patterns = _key_files(sshd)
    seen = set()
    found = 0
    for entry in pwd.getpwall():
        home = entry.pw_dir or "/"
        for pattern in patterns:
            path = pattern.replace("%%", "\0").replace("%h", home).replace("%u", entry.pw_name).replace("\0", "%")
            path = os.path.normpath(path if path.startswith("/") else os.path.join(home, path))
            if path in seen or not os.path.lexists(path):
                continue
            seen.add(path)
            found += 1
            c.copy(f"authorized_keys/files{path}", path)
    c.write("authorized_keys/searched.txt", f"patterns: {' '.join(patterns)}\nfound: {found}\n"
            + "".join(f"{p}\n" for p in sorted(seen)))
    c.part(f"authorized keys of {len(pwd.getpwall())} accounts: {found} files", "ok", "authorized_keys/searched.txt")


def collect_cron(c):
    c.copy_paths("cron", ["/etc/crontab", "/etc/anacrontab", "/etc/cron.d", "/etc/cron.hourly", "/etc/cron.daily",
                          "/etc/cron.weekly", "/etc/cron.monthly", "/var/spool/cron", "/var/spool/anacron"])
    c.command("cron/systemd-timers.txt", ["systemctl", "list-timers", "--all", "--no-pager"])


def collect_systemd(c):
    c.command("systemd/list-units.txt", ["systemctl", "list-units", "--all", "--no-pager", "--plain"])
    c.command("systemd/list-unit-files.txt", ["systemctl", "list-unit-files", "--no-pager", "--plain"])
    c.command("systemd/failed.txt", ["systemctl", "--failed", "--no-pager", "--plain"])
    c.copy_paths("systemd", ["/etc/systemd/system", "/run/systemd/system", "/run/systemd/transient",
                             "/etc/systemd/user"])


def collect_journal(c):
    c.command("journal/journal.txt", ["journalctl", "--no-pager", "-o", "short-iso-precise", "--since",
                                      f"@{int(c.since)}"], tail=True)


def collect_auth(c):
    files = sorted(glob.glob("/var/log/auth.log*") + glob.glob("/var/log/secure*"))
    if files:
        c.copy_paths("auth", files, newer_than=c.since, tail=True)
    else:
        c.part("/var/log/auth.log", "missing", reason="no auth log file (journal only)")
    c.command("auth/journal-auth.txt", ["journalctl", "--no-pager", "-o", "short-iso-precise", "--since",
                                        f"@{int(c.since)}", "SYSLOG_FACILITY=4", "SYSLOG_FACILITY=10"], tail=True)


def collect_logs(c, patterns):
    paths = sorted({p for pattern in patterns for p in glob.glob(pattern)})
    if not paths:
        c.part(" ".join(patterns), "missing", reason="no log file found")
        return
    count = c.copy_paths("logs", paths, newer_than=c.since, tail=True)
    c.part(f"{count} log files changed since {utc(c.since)}", "ok")


def collect_config(c, paths):
    c.copy_paths("config", paths, cap=c.log_max)


def release_hashes(link, max_files=200000, hash_max=1 << 31):
    """(resolved root, sha256sum lines relative to it, symlink lines, errors)."""
    root = os.path.realpath(link)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{link} does not resolve to a directory")
    lines: list[str] = []
    links: list[str] = []
    errors: list[str] = []
    for path in _walk(root):
        rel = os.path.relpath(path, root)
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                links.append(f"{rel} -> {os.readlink(path)}")
            elif stat.S_ISREG(st.st_mode):
                if len(lines) >= max_files:
                    errors.append(f"more than {max_files} files: the rest not hashed")
                    break
                lines.append(f"{sha256_file(path, hash_max)}  {rel}")
        except OSError as exc:
            errors.append(f"{rel}: {exc.strerror or exc}")
    return root, lines, links, errors


def collect_release(c, link):
    if not link or not os.path.lexists(link):
        return c.part(link or "release", "missing", reason="no live release on this host")
    try:
        root, lines, links, errors = release_hashes(link, c.max_files * 10, c.hash_max)
    except OSError as exc:
        return c.part(link, "error", reason=exc)
    c.write("release/sha256sums.txt", "\n".join(lines) + ("\n" if lines else ""))
    c.write("release/symlinks.txt", "\n".join(links) + ("\n" if links else ""))
    c.write("release/release.json", json.dumps({"link": link, "target": _readlink(link), "root": root,
                                                "files": len(lines), "symlinks": len(links), "errors": errors},
                                               indent=1))
    return c.part(f"{root}: {len(lines)} files hashed", "error" if errors else "ok", "release/sha256sums.txt",
                  reason="; ".join(errors[:5]) or None)


def plan(params):
    """What a capture would take (check mode): each item with the commands and paths it reads."""
    out = []
    for name, what in ITEMS:
        entry: dict[str, object] = {"item": name, "what": what}
        if name == "logs":
            entry["paths"] = sorted({p for pattern in params["log_paths"] for p in glob.glob(pattern)})
        elif name == "config":
            entry["paths"] = [p for p in params["config_paths"] if os.path.lexists(p)]
        elif name == "release":
            entry["paths"] = [os.path.realpath(params["release_link"])] if os.path.lexists(
                params["release_link"] or "") else []
        out.append(entry)
    return out


# --- the capture -------------------------------------------------------------------------------------

def _secure_dir(path, create_parent=True):
    """Creates path 0700 (parents 0755), refusing a symlink or non-directory planted there."""
    parent = os.path.dirname(path)
    if create_parent and not os.path.isdir(parent):
        try:
            os.makedirs(parent, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise CaptureError(f"cannot create {parent}: {exc}") from exc
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise CaptureError(f"cannot create {path}: {exc}") from exc
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise CaptureError(f"{path} exists and is not a directory (a {stat.filemode(st.st_mode)[0]} entry): "
                           "refusing to write evidence there")
    if st.st_uid != os.geteuid():
        raise CaptureError(f"{path} is owned by uid {st.st_uid}, not by us: refusing")
    os.chmod(path, 0o700)


def file_list(stage):
    files = {}
    for root, dirs, names in os.walk(stage):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, stage)
            files[rel] = {"sha256": sha256_file(path), "size": os.lstat(path).st_size}
    return files


def pack(stage, archive, manifest):
    """Writes manifest.json into the stage, packs the stage as a 0600 tar.gz (created exclusively),
    returns the archive's sha256 and size."""
    text = json.dumps(manifest, indent=1, sort_keys=True).encode()
    path = os.path.join(stage, MANIFEST)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(text)
    fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for rel in [MANIFEST, *sorted(manifest["files"])]:
            tar.add(os.path.join(stage, rel), arcname=f"{TOP}/{rel}", recursive=False)
        raw.flush()
    with open(archive, "rb+") as handle:
        os.fsync(handle.fileno())
    return sha256_file(archive), os.path.getsize(archive)


def seal(run_dir, manifest):
    """run_dir/stage packed: the files' sha256 into the manifest, evidence.tar.gz (0600) with the
    manifest inside, manifest.json alongside with the archive's sha256; the stage removed."""
    stage = os.path.join(run_dir, "stage")
    manifest["files"] = file_list(stage)
    archive = os.path.join(run_dir, ARCHIVE)
    sha, size = pack(stage, archive, manifest)
    outside = dict(manifest, archive={"name": ARCHIVE, "sha256": sha, "size": size})
    path = os.path.join(run_dir, MANIFEST)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(json.dumps(outside, indent=1, sort_keys=True).encode())
    shutil.rmtree(stage)  # the archive holds it all; a loose copy of secrets helps no one
    return {"archive": archive, "archive_sha256": sha, "archive_size": size, "manifest": path,
            "manifest_sha256": sha256_file(path)}


def capture(params, host_label=None):
    """The whole capture; returns the result. Raises CaptureError when nothing usable was produced
    (the run directory is then removed)."""
    incident = params["incident"]
    if not valid_id(incident):
        raise CaptureError(f"incident id {incident!r} is not a plain name")
    os.umask(0o077)
    started_at, t0 = time.time(), time.monotonic()
    root = params["root"]
    _secure_dir(root)
    incident_dir = os.path.join(root, incident)
    _secure_dir(incident_dir, create_parent=False)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started_at))
    run_dir = None
    for n in range(1, 100):
        candidate = os.path.join(incident_dir, stamp if n == 1 else f"{stamp}-{n}")
        try:
            os.mkdir(candidate, 0o700)
        except FileExistsError:
            continue
        except OSError as exc:
            raise CaptureError(f"cannot create {candidate}: {exc}") from exc
        run_dir = candidate
        break
    if run_dir is None:
        raise CaptureError(f"no free capture directory under {incident_dir}")
    try:
        return _capture(params, host_label, started_at, t0, run_dir)
    except CaptureError:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    except OSError as exc:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise CaptureError(f"capture failed: {exc}") from exc


def _capture(params, host_label, started_at, t0, run_dir):
    stage = os.path.join(run_dir, "stage")
    os.mkdir(stage, 0o700)
    since = started_at - params["hours"] * 3600
    c = Collector(stage, since, log_max_bytes=params["log_max_bytes"], total_max_bytes=params["total_max_bytes"],
                  command_timeout=params["command_timeout"], deadline=t0 + params["time_budget"],
                  hash_max_bytes=params["hash_max_bytes"])
    steps = {
        "system": lambda: collect_system(c),
        "processes": lambda: collect_processes(c),
        "sockets": lambda: collect_sockets(c),
        "firewall": lambda: collect_firewall(c),
        "logins": lambda: collect_logins(c),
        "accounts": lambda: collect_accounts(c),
        "sudoers": lambda: collect_sudoers(c),
        "authorized_keys": lambda: collect_authorized_keys(c),
        "cron": lambda: collect_cron(c),
        "systemd": lambda: collect_systemd(c),
        "journal": lambda: collect_journal(c),
        "auth": lambda: collect_auth(c),
        "logs": lambda: collect_logs(c, params["log_paths"]),
        "config": lambda: collect_config(c, params["config_paths"]),
        "release": lambda: collect_release(c, params["release_link"]),
    }
    items = []
    for order, (name, what) in enumerate(ITEMS, 1):
        c.parts = []
        begun, m0 = utc(), time.monotonic()
        try:
            left = c.left()
            if left is not None and left <= 0:
                c.part(name, "error", reason="time budget of the capture exhausted: not taken")
            else:
                steps[name]()
        except CaptureError:
            raise
        except Exception as exc:  # one item failing must not lose the others
            c.part(name, "error", reason=f"{type(exc).__name__}: {exc}")
        statuses = {p["status"] for p in c.parts}
        status = "error" if "error" in statuses else "ok" if "ok" in statuses else "missing"
        reasons = [f"{p['what']}: {p['reason']}" for p in c.parts if p["status"] != "ok" and p.get("reason")]
        items.append({"order": order, "item": name, "what": what, "status": status,
                      "reason": "; ".join(reasons)[:500] or None,
                      "truncated": any(p.get("truncated") for p in c.parts),
                      "started": begun, "duration_s": round(time.monotonic() - m0, 3), "parts": c.parts})
    finished_at = time.time()
    manifest = {
        "format": FORMAT, "incident": params["incident"], "host": host_label or socket.gethostname(),
        "hostname": socket.gethostname(), "started": utc(started_at), "finished": utc(finished_at),
        "window": {"hours": params["hours"], "since": utc(since)},
        "limits": {"log_max_bytes": params["log_max_bytes"], "total_max_bytes": params["total_max_bytes"],
                   "command_timeout": params["command_timeout"], "time_budget": params["time_budget"]},
        "items": items,
    }
    try:
        sealed = seal(run_dir, manifest)
    except (OSError, tarfile.TarError) as exc:
        raise CaptureError(f"cannot pack the evidence: {exc}") from exc
    return {
        "run_dir": run_dir, **sealed, "started": manifest["started"], "finished": manifest["finished"],
        "duration_s": round(time.monotonic() - t0, 1), "hostname": manifest["hostname"],
        "files": len(manifest["files"]), "bytes": c.total,
        "items": [{k: i[k] for k in ("order", "item", "status", "reason", "truncated")} for i in items],
    }

