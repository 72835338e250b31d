"""Pure logic of the performance scenario: the RESP client's encoding and parsing, the pattern
guard (same verdict as the CLI's rule), the latency verdict, FastCGI records, the app cache
directory emptied without following symlinks."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import mayday_perf
import mayday_redis
import pytest

from mayday import rules
from mayday.rules import BadValue


def test_encode_is_a_resp_array_of_bulk_strings() -> None:
    assert mayday_redis.encode("SCAN", 0, "MATCH", "p:*") == (
        b"*4\r\n$4\r\nSCAN\r\n$1\r\n0\r\n$5\r\nMATCH\r\n$3\r\np:*\r\n")
    assert mayday_redis.encode("UNLINK", b"a\r\nb") == b"*2\r\n$6\r\nUNLINK\r\n$4\r\na\r\nb\r\n"


def chunks(data: bytes, size: int):
    parts = [data[i:i + size] for i in range(0, len(data), size)]

    def recv(_n: int) -> bytes:
        return parts.pop(0) if parts else b""

    return recv


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_reader_parses_every_reply_kind_across_chunk_boundaries(size: int) -> None:
    data = (b"+OK\r\n-ERR wrong\r\n:42\r\n$-1\r\n$5\r\nab\r\nc\r\n"
            b"*2\r\n$3\r\n120\r\n*2\r\n$3\r\np:1\r\n$3\r\np:2\r\n")
    reader = mayday_redis.Reader(chunks(data, size))
    assert reader.reply() == "OK"
    error = reader.reply()
    assert isinstance(error, mayday_redis.RedisError) and str(error) == "ERR wrong"
    assert reader.reply() == 42
    assert reader.reply() is None
    assert reader.reply() == b"ab\r\nc"
    assert reader.reply() == [b"120", [b"p:1", b"p:2"]]
    with pytest.raises(mayday_redis.RedisError, match="closed"):
        reader.reply()


@pytest.mark.parametrize("pattern", ["*", "?", "**", "[abc]*", "\\*", "*?[a-z]", "^-", "profile:*", "sess:*",
                                     "cache:*:html", "a", "[x]b", "\\a"])
def test_module_guard_agrees_with_the_cli_rule(pattern: str) -> None:
    try:
        rules.redis_pattern(pattern)
        cli_ok = True
    except BadValue:
        cli_ok = False
    assert bool(mayday_redis.literal_part(pattern)) == cli_ok, pattern


def test_flush_pattern_refuses_a_pattern_matching_every_key_before_talking_to_redis() -> None:
    with pytest.raises(mayday_redis.RedisError, match="every key"):
        mayday_redis.flush_pattern(None, "*")


def latency(*medians: float, ok: bool = True) -> list[dict]:
    return [{"url": f"u{i}", "median_ms": m, "ok": ok} for i, m in enumerate(medians)]


def test_verdict_judges_the_slowest_endpoint_against_the_threshold() -> None:
    assert mayday_perf.verdict(latency(900), latency(100, 300), 400) == {
        "before_ms": 900, "after_ms": 300, "threshold_ms": 400, "still_slow": False, "healthy": True,
        "recovered": True}
    slow = mayday_perf.verdict(latency(900), latency(100, 401), 400)
    assert slow["still_slow"] and not slow["recovered"]
    unhealthy = mayday_perf.verdict(latency(900), latency(10, ok=False), 400)
    assert not unhealthy["still_slow"] and not unhealthy["recovered"]
    assert mayday_perf.verdict([], [], 400)["after_ms"] == 0.0


def test_fastcgi_request_and_response_records() -> None:
    request = mayday_perf.fcgi_request({"SCRIPT_NAME": "/status", "X": "y" * 200})
    assert request[:2] == b"\x01\x01" and request.endswith(mayday_perf._record(mayday_perf.FCGI_STDIN, b""))
    assert b"\x0b\x07SCRIPT_NAME/status" in request
    assert b"\x01\x80\x00\x00\xc8X" in request  # a value over 127 bytes: four-byte length
    response = (mayday_perf._record(mayday_perf.FCGI_STDOUT, b"Content-Type: application/json\r\n\r\n{\"pool\"")
                + mayday_perf._record(mayday_perf.FCGI_STDERR, b"warn")
                + mayday_perf._record(mayday_perf.FCGI_STDOUT, b": \"www\"}")
                + mayday_perf._record(mayday_perf.FCGI_END, b"\0" * 8))
    out, err, done = mayday_perf.fcgi_parse(response)
    assert done and err == b"warn" and out.endswith(b'{"pool": "www"}')
    assert mayday_perf.fcgi_parse(response[:-3])[2] is False


def test_fpm_status_without_a_socket_is_an_error_not_an_exception(tmp_path: Path) -> None:
    assert "error" in mayday_perf.fpm_status(str(tmp_path / "nope.sock"))


@pytest.fixture
def cache(tmp_path: Path) -> tuple[Path, Path]:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("precious")
    cache = tmp_path / "cache"
    (cache / "pages" / "deep").mkdir(parents=True)
    (cache / "profile-1.html").write_text("x" * 10)
    (cache / "pages" / "deep" / "a.html").write_text("y")
    (cache / ".hidden").write_text("z")
    (cache / "link-to-outside").symlink_to(outside)
    (cache / "pages" / "link-file").symlink_to(outside / "keep.txt")
    return cache, outside


def test_clear_dir_empties_the_directory_and_never_follows_symlinks(cache: tuple[Path, Path]) -> None:
    path, outside = cache
    done = mayday_perf.clear_dir(str(path))
    assert done["entries"] == 4 and done["removed"] == 4 and done["bytes"] == 11
    assert path.is_dir() and not any(path.iterdir())
    assert (outside / "keep.txt").read_text() == "precious"


def test_clear_dir_check_mode_counts_only(cache: tuple[Path, Path]) -> None:
    path, _ = cache
    before = sorted(p.name for p in path.iterdir())
    assert mayday_perf.clear_dir(str(path), delete=False)["removed"] == 0
    assert sorted(p.name for p in path.iterdir()) == before


def test_clear_dir_refuses_a_symlink_at_the_path(cache: tuple[Path, Path], tmp_path: Path) -> None:
    _, outside = cache
    link = tmp_path / "cache-link"
    link.symlink_to(outside)
    with pytest.raises(OSError) as caught:
        mayday_perf.clear_dir(str(link))
    assert caught.value.errno in (errno.ELOOP, errno.ENOTDIR)
    assert os.listdir(outside) == ["keep.txt"]


def test_query_rows_are_split_on_tabs() -> None:
    text = "1\tapp\tapp\tQuery\t12\tSending data\tSELECT 1\n\n"
    assert mayday_perf.rows(text, mayday_perf.COLUMNS["processlist"]) == [
        {"id": "1", "user": "app", "db": "app", "command": "Query", "time_s": "12", "state": "Sending data",
         "query": "SELECT 1"}]
