"""The lab's monitoring as mon1 gets it (mayday.lab_monitoring), the alert rules' contract with
`mayday serve` (monitoring/rules/*.yml), and the serve token (mayday.lab). No Docker: promtool checks
the rules themselves in `make lint` (monitoring/tests/*.yml)."""

from __future__ import annotations

import io
import os
import re
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from mayday import lab
from mayday import lab_monitoring as mon
from mayday.errors import BadInput
from mayday.rules import level2_components
from mayday.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "monitoring" / "rules").glob("*.yml"))
TOKEN = "t0ken-for-the-unit-tests-0123456789abcdef"
PASSWORD = "pa ss@w/rd%"


def spec(**changes: Any) -> mon.MonSpec:
    values: dict[str, Any] = dict(web_hosts=("web1", "web2", "web3"), serve_host="172.30.0.1", serve_port=9753,
                                  health_window="30s", db_password=PASSWORD, token=TOKEN)
    values.update(changes)
    return mon.MonSpec(**values)


def rendered(**changes: Any) -> dict[str, mon.MonFile]:
    return {f.path: f for f in mon.render(spec(**changes), ROOT)}


def alerts() -> list[dict[str, Any]]:
    return [rule for path in RULES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule]


# --- the rules' contract ------------------------------------------------------------------------

def test_every_alert_names_a_scenario_a_severity_and_says_what_and_why() -> None:
    found = alerts()
    assert len(found) >= 8 and len({a["alert"] for a in found}) == len(found)
    for alert in found:
        labels = alert["labels"]
        assert labels["scenario"] in SCENARIOS, alert["alert"]
        assert re.fullmatch(r"P[0-3]", labels["severity"]), alert["alert"]
        assert alert["annotations"]["summary"].strip() and alert["annotations"]["description"].strip()
        if labels["scenario"] == "level2":
            assert labels["component"] in level2_components(), alert["alert"]
        else:
            assert "component" not in labels, alert["alert"]


def test_the_seeds_triggers_are_all_there() -> None:
    by_name = {a["alert"]: a for a in alerts()}
    assert by_name["HealthCheckFailing"]["for"] == "30s"
    assert by_name["HealthCheckFailing"]["labels"] == {"scenario": "level1", "severity": "P0"}
    assert by_name["ApiResponseSlow"]["for"] == "2m" and "> 2" in by_name["ApiResponseSlow"]["expr"]
    assert by_name["DatabaseConnectionsMostlyFailing"]["labels"]["scenario"] == "level1"
    assert ">= 3" in by_name["DatabaseConnectionFailuresRepeated"]["expr"]
    assert by_name["ErrorRateHigh"]["expr"].count("> 0.05") == 3
    assert {by_name[n]["for"] for n in ("CpuSaturated", "MemorySaturated", "DiskAlmostFull")} == {"2m"}


# --- what mon1 gets -----------------------------------------------------------------------------

def test_prometheus_scrapes_every_host_under_its_inventory_name_every_5_seconds() -> None:
    config = yaml.safe_load(rendered()["/etc/prometheus/prometheus.yml"].content)
    assert config["global"]["scrape_interval"] == "5s" and config["global"]["evaluation_interval"] == "5s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    health = jobs["health"]["static_configs"]
    assert [c["targets"] for c in health] == [[f"http://web{n}/health-check"] for n in (1, 2, 3)]
    assert [c["labels"]["host"] for c in health] == ["web1", "web2", "web3"]
    nginx = jobs["nginx"]["static_configs"]
    assert [c["labels"]["host"] for c in nginx] == ["web1", "web2", "web3"]
    assert len({c["targets"][0] for c in nginx}) == 3, "one exporter, one port per web host"
    assert jobs["mysqld"]["static_configs"][0]["labels"]["host"] == "db1"
    assert jobs["postgres"]["static_configs"][0]["labels"]["host"] == "pg1"
    assert "host" not in jobs["node"]["static_configs"][0]["labels"], "the shared machine is no inventory host"


def test_one_nginx_exporter_per_web_host_each_on_its_own_port() -> None:
    files = rendered()
    envs = {p: f for p, f in files.items() if p.startswith(mon.NGINX_ENV_DIR)}
    assert [f.unit for f in envs.values()] == [f"mayday-nginx-exporter@web{n}.service" for n in (1, 2, 3)]
    ports = set(re.findall(r"listen-address=127\.0\.0\.1:(\d+)", "".join(f.content for f in envs.values())))
    assert len(ports) == 3 and not ports & {str(p) for p in mon.PORTS.values()}
    assert "-nginx.scrape-uri=http://web2:8080/stub_status" in files[f"{mon.NGINX_ENV_DIR}/web2.env"].content
    assert mon.units(spec())[-3:] == [f"mayday-nginx-exporter@web{n}.service" for n in (1, 2, 3)]


def test_alertmanager_sends_every_group_at_once_with_the_token_from_a_file() -> None:
    files = rendered(serve_port=18080)
    config = yaml.safe_load(files["/etc/prometheus/alertmanager.yml"].content)
    route = config["route"]
    assert route["receiver"] == "mayday" and "routes" not in route
    assert route["group_wait"] in ("0s", "1s")
    hook = config["receivers"][0]["webhook_configs"][0]
    assert hook["url"] == "http://172.30.0.1:18080/alertmanager" and hook["send_resolved"] is True
    assert hook["http_config"]["authorization"] == {"type": "Bearer", "credentials_file": mon.TOKEN_FILE}
    token_file = files[mon.TOKEN_FILE]
    assert token_file.content == TOKEN and (token_file.mode, token_file.group) == ("640", "prometheus")


def test_secrets_only_in_their_own_files() -> None:
    files = rendered()
    holding = {p for p, f in files.items() if TOKEN in f.content or "pa ss" in f.content or "pa%20ss" in f.content}
    assert holding == {mon.TOKEN_FILE, "/etc/prometheus/mysqld-exporter.cnf",
                       "/etc/default/prometheus-postgres-exporter"}
    assert {files[p].mode for p in holding} <= {"600", "640"}
    dsn = files["/etc/default/prometheus-postgres-exporter"].content
    assert "mayday_monitor:pa%20ss%40w%2Frd%25@pg1:5432/postgres" in dsn, "the password URL-encoded"


def test_the_health_rule_window_is_the_labs_and_the_rest_as_written() -> None:
    files = rendered(health_window="10s")
    installed = [yaml.safe_load(files[f"/etc/prometheus/rules/{p.name}"].content) for p in RULES]
    source = [yaml.safe_load(p.read_text()) for p in RULES]
    health = next(r for doc in installed for g in doc["groups"] for r in g["rules"] if r["alert"] == mon.HEALTH_ALERT)
    assert health["for"] == "10s"
    health["for"] = "30s"
    assert installed == source


def test_blackbox_wants_what_the_inventory_calls_healthy() -> None:
    module = yaml.safe_load(rendered()["/etc/prometheus/blackbox.yml"].content)["modules"]["http_health"]
    assert module["http"]["valid_status_codes"] == [200]
    pattern = module["http"]["fail_if_body_not_matches_regexp"][0]
    assert re.search(pattern, '{"status":"healthy","version":"v1"}')
    assert not re.search(pattern, '{"status":"unhealthy","version":"v2"}')


def test_the_digest_changes_with_what_mon1_gets() -> None:
    base = mon.digest(mon.render(spec(), ROOT), mon.units(spec()))
    assert base == mon.digest(mon.render(spec(), ROOT), mon.units(spec()))
    for change in ({"token": "another-token"}, {"serve_port": 9754}, {"health_window": "10s"},
                   {"web_hosts": ("web1", "web2")}):
        assert mon.digest(mon.render(spec(**change), ROOT), mon.units(spec(**change))) != base, change


def test_the_bundle_holds_every_file_and_its_manifest_line() -> None:
    files = mon.render(spec(), ROOT)
    with tarfile.open(fileobj=io.BytesIO(mon.bundle(files, mon.units(spec()), "abc")), mode="r") as tar:
        names = set(tar.getnames())
        manifest = tar.extractfile("manifest").read().decode().splitlines()  # type: ignore[union-attr]
    assert {"files" + f.path for f in files} | {"manifest", "units", "applied"} == names
    assert [line.split()[0] for line in manifest] == [f.path for f in files]
    assert all(len(line.split()) == 5 for line in manifest)


def test_the_apply_script_is_valid_shell() -> None:
    assert subprocess.run(["sh", "-n", "-c", mon.APPLY_SCRIPT], check=False).returncode == 0


# --- settings from the environment ----------------------------------------------------------------

def test_serve_port_and_health_window_defaults() -> None:
    assert mon.serve_port({}) == 9753 and mon.serve_port({"MAYDAY_SERVE_PORT": "18080"}) == 18080
    assert mon.health_for({}) == "30s" and mon.health_for({"MAYDAY_LAB_HEALTH_FOR": "10s"}) == "10s"


@pytest.mark.parametrize("value", ["0", "65536", "http", "-1", "80 "])
def test_a_bad_serve_port_is_refused(value: str) -> None:
    with pytest.raises(BadInput, match=r"MAYDAY_SERVE_PORT=.* a number from 1 to 65535") as refused:
        mon.serve_port({"MAYDAY_SERVE_PORT": value})
    assert refused.value.exit_code == 2


@pytest.mark.parametrize("value", ["10", "ten", "1.5s", "10 s", "5d"])
def test_a_bad_health_window_is_refused(value: str) -> None:
    with pytest.raises(BadInput, match=r"MAYDAY_LAB_HEALTH_FOR=.* ms, s, m, h"):
        mon.health_for({"MAYDAY_LAB_HEALTH_FOR": value})


def test_lab_up_refuses_bad_settings_before_starting_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    def must_not_start(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the lab was started despite bad input")

    monkeypatch.setattr(lab, "up", must_not_start)
    monkeypatch.setenv("MAYDAY_LAB_HEALTH_FOR", "soon")
    with pytest.raises(BadInput):
        CliRunner().invoke(lab.lab, ["up"], catch_exceptions=False, standalone_mode=False)


# --- the serve token ----------------------------------------------------------------------------

def test_serve_token_is_made_once_0600_in_the_labs_state_directory(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAYDAY_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("MAYDAY_LAB_NAME", "unit-lab")
    path = lab.serve_token_path()
    assert path == tmp_path / "lab" / "unit-lab" / "serve-token"
    token = lab.ensure_serve_token()
    assert len(token) >= 32 and path.read_text() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert lab.ensure_serve_token() == token, "kept across `lab up`s"
    os.chmod(path, 0o644)
    path.write_text("")
    renewed = lab.ensure_serve_token()
    assert renewed and renewed != token and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["serve-token"], "no temporary file left"
