"""The decisions playbooks/drill.yml takes between its steps (mayday.drills.play)."""

from __future__ import annotations

from mayday.drills import play

HOSTS = {"all": ["web1", "web2", "db1", "pg1"], "fault": ["pg1"], "probes": {"web1": [{}], "web2": [{}], "pg1": [{}]}}


def test_only_the_drills_hosts_go_on_and_the_controller_host_always() -> None:
    assert play.involved("fault", HOSTS, "web1") == ["web1", "web2", "pg1"]
    # The host that runs the controller steps stays, even with nothing of its own to do.
    assert play.involved("fault", HOSTS, "db1") == ["db1", "web1", "web2", "pg1"]
    assert play.involved("communication", {"all": ["web1", "db1"], "fault": [], "probes": {}}, "web1") == ["web1"]
    # A restore test runs on its databases, named by the drill's hosts.
    assert play.involved("restore_test", {"all": ["db1", "pg1"], "fault": [], "probes": {}}, "web1") == \
        ["web1", "db1", "pg1"]


def test_cleanup_scenario_only_after_a_scenario_that_did_not_refuse() -> None:
    lift = {"scenario": "lockdown-lift"}
    assert play.cleanup_due(lift, "RECOVERED") and play.cleanup_due(lift, "FAILED")
    assert not play.cleanup_due(lift, "REFUSED")
    assert not play.cleanup_due(lift, "")  # the scenario never ran (stopped, refused at open)
    assert not play.cleanup_due({}, "RECOVERED")
