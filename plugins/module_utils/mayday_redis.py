# A small Redis client (RESP2 over a socket) for cache flushes on the host: no python3-redis needed.
# Pattern deletes walk the keyspace with SCAN MATCH and delete with UNLINK in batches (never KEYS,
# which blocks the server; never FLUSHDB unless asked, which also wipes sessions). Each UNLINK is
# pipelined with the next SCAN, so a batch costs one round trip.
from __future__ import annotations

import re
import socket
import time

# Characters with a meaning in a Redis glob; a pattern needs one other character (mayday.rules.redis_pattern).
GLOB_SPECIAL = frozenset("*?[]^-\\")


class RedisError(Exception):
    """An error reply from Redis, or a connection that failed."""


def encode(*args):
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Reader:
    """Parses RESP2 replies from a byte stream (a socket's recv, or bytes in tests)."""

    def __init__(self, recv):
        self.recv = recv
        self.buf = b""

    def _fill(self):
        chunk = self.recv(1 << 16)
        if not chunk:
            raise RedisError("connection closed by Redis")
        self.buf += chunk

    def _line(self):
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line, self.buf = self.buf[:end], self.buf[end + 2:]
                return line
            self._fill()

    def _exact(self, size):
        while len(self.buf) < size + 2:
            self._fill()
        data, self.buf = self.buf[:size], self.buf[size + 2:]
        return data

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RedisError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exact(size)
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self.reply() for _ in range(size)]
        raise RedisError(f"unexpected reply from Redis: {line[:40]!r}")


class Client:
    def __init__(self, host="127.0.0.1", port=6379, password=None, username=None, db=0, timeout=10.0,
                 unix_socket=None):
        if unix_socket:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target = unix_socket
        else:
            self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            target = (host, port)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(target)
        except OSError as exc:
            self.sock.close()
            raise RedisError(f"cannot connect to Redis at {unix_socket or f'{host}:{port}'}: {exc}") from exc
        self.reader = Reader(self.sock.recv)
        if password:
            # The password goes only to the socket; an error names the user, never the secret.
            self.call(*(["AUTH", username, password] if username else ["AUTH", password]))
        if db:
            self.call("SELECT", db)

    def close(self):
        self.sock.close()

    def pipeline(self, commands):
        """Send every command, then read every reply (errors returned, not raised)."""
        self.sock.sendall(b"".join(encode(*c) for c in commands))
        return [self.reader.reply() for _ in commands]

    def call(self, *args):
        reply = self.pipeline([args])[0]
        if isinstance(reply, RedisError):
            raise reply
        return reply


def literal_part(pattern):
    """The pattern's plain characters, read as mayday.rules.redis_pattern reads them (escapes dropped,
    [classes] dropped, glob characters dropped): empty means it could match every key."""
    text = re.sub(r"\[[^\]]*\]", "", pattern.replace("\\", ""))
    return "".join(ch for ch in text if ch not in GLOB_SPECIAL)


def flush_pattern(client, pattern, batch=1000, delete=True, max_seconds=None):
    """SCAN MATCH pattern COUNT batch; UNLINK each batch found (pipelined with the next SCAN).

    Returns {matched, deleted, scans, seconds, complete}. delete=False (check mode) only counts. A key
    SCAN returns twice is unlinked once: `deleted` is Redis's own count.
    """
    if not literal_part(pattern):
        raise RedisError(f"pattern {pattern!r} would match every key; refusing a pattern delete")
    started = time.monotonic()
    cursor, matched, deleted, scans = b"0", 0, 0, 0
    pending: list = []  # keys found by the last SCAN, unlinked together with the next one
    seen: set = set()  # check mode: SCAN may return a key twice
    while True:
        commands = [("SCAN", cursor, "MATCH", pattern, "COUNT", batch)]
        if pending:
            commands.insert(0, ("UNLINK", *pending))
        replies = client.pipeline(commands)
        for reply in replies:
            if isinstance(reply, RedisError):
                raise reply
        if pending:
            deleted += replies[0]
        cursor, keys = replies[-1]
        scans += 1
        if delete:
            matched += len(keys)
            pending = keys
        else:
            seen.update(keys)
            pending = []
        if cursor == b"0" or (max_seconds and time.monotonic() - started > max_seconds):
            break
    if pending:
        deleted += client.call("UNLINK", *pending)
    return {"matched": matched if delete else len(seen), "deleted": deleted, "scans": scans,
            "seconds": round(time.monotonic() - started, 3), "complete": cursor == b"0"}


def info(client):
    """A few INFO fields for the report: memory, clients, keys of the current database."""
    raw = client.call("INFO")
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))
    keep = ("redis_version", "used_memory_human", "connected_clients", "evicted_keys", "keyspace_hits",
            "keyspace_misses", "instantaneous_ops_per_sec")
    doc = {k: fields[k] for k in keep if k in fields}
    doc["dbsize"] = client.call("DBSIZE")
    return doc
