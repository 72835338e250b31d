"""The rate limit's nginx rule: keyed by the client address, and behind trusted proxies by the last
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
    assert "geo " not in rule and "map " not in rule


def test_behind_trusted_proxies_the_last_address_they_report_is_the_key() -> None:
    rule = rate_limit.config(5, 0, ["10.0.1.5", "2001:db8::/32"], "X-Real-IP")
    assert "geo $mayday_rate_limit_via_proxy {\n    default 0;\n    10.0.1.5 1;\n    2001:db8::/32 1;\n}" in rule
    assert "map $http_x_real_ip $mayday_rate_limit_forwarded {" in rule
    assert "limit_req_zone $mayday_rate_limit_client zone=mayday_rate_limit:10m rate=5r/s;" in rule
    # Only the limit's key: nothing that would change $remote_addr for the sites, logs and access rules.
    assert "real_ip_header" not in rule and "set_real_ip_from" not in rule


@pytest.mark.parametrize("proxies, header", [
    (["10.0.0.0/8;", "1.2.3.4"], "X-Forwarded-For"),
    (["lb.example.com"], "X-Forwarded-For"),
    (["unix:"], "X-Forwarded-For"),
    (["10.0.0.1\nreal_ip_header X"], "X-Forwarded-For"),
    (["10.0.0.1\n"], "X-Forwarded-For"),
    (["10.0.0.1"], "X-Real-IP\n"),
    (["10.0.0.1"], "X-Forwarded-For; deny all"),
    (["10.0.0.1"], ""),
])
def test_what_would_break_or_inject_nginx_configuration_is_refused(proxies: list[str], header: str) -> None:
    with pytest.raises(rate_limit.RateLimitError, match="valid:"):
        rate_limit.check_proxies(proxies, header)


def test_addresses_and_cidrs_pass() -> None:
    rate_limit.check_proxies(["10.0.0.0/8", "192.0.2.10", "fd00::1", "2001:db8::/32"], "X-Forwarded-For")
