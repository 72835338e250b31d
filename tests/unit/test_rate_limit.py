"""The rate limit's nginx rule: keyed by the client address, and behind trusted proxies by the
address they report; what is not an address or a header name is refused before anything is written."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import mayday_lease
import pytest

sys.modules.setdefault("ansible.module_utils.mayday_lease", mayday_lease)
_SPEC = importlib.util.spec_from_file_location(
    "mayday_rate_limit", Path(__file__).resolve().parents[2] / "plugins" / "modules" / "mayday_rate_limit.py")
assert _SPEC and _SPEC.loader
rate_limit = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(rate_limit)


def test_without_proxies_the_rule_is_keyed_by_the_connecting_address() -> None:
    rule = rate_limit.config(10, 20)
    assert "limit_req_zone $binary_remote_addr zone=mayday_rate_limit:10m rate=10r/s;" in rule
    assert "limit_req zone=mayday_rate_limit burst=20 nodelay;" in rule
    assert "real_ip" not in rule and "set_real_ip_from" not in rule


def test_behind_trusted_proxies_the_client_they_name_is_the_key() -> None:
    rule = rate_limit.config(5, 0, ["10.0.1.5", "2001:db8::/32"], "X-Real-IP").splitlines()
    assert rule[1:5] == ["set_real_ip_from 10.0.1.5;", "set_real_ip_from 2001:db8::/32;",
                         "real_ip_header X-Real-IP;", "real_ip_recursive on;"]
    assert rule[5].startswith("limit_req_zone $binary_remote_addr ")


@pytest.mark.parametrize("proxies, header", [
    (["10.0.0.0/8;", "1.2.3.4"], "X-Forwarded-For"),
    (["lb.example.com"], "X-Forwarded-For"),
    (["10.0.0.1\nreal_ip_header X"], "X-Forwarded-For"),
    (["10.0.0.1\n"], "X-Forwarded-For"),
    (["10.0.0.1"], "X-Real-IP\n"),
    (["10.0.0.1"], "X-Forwarded-For; deny all"),
    (["10.0.0.1"], ""),
])
def test_what_would_break_or_inject_nginx_configuration_is_refused(proxies: list[str], header: str) -> None:
    with pytest.raises(rate_limit.RateLimitError, match="valid:"):
        rate_limit.check_proxies(proxies, header)


def test_addresses_cidrs_and_unix_sockets_pass() -> None:
    rate_limit.check_proxies(["10.0.0.0/8", "192.0.2.10", "fd00::1", "2001:db8::/32", "unix:"], "X-Forwarded-For")
