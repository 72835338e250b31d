"""Verdicts (mayday.verdict): every outcome, and mixed multi-host runs."""

from __future__ import annotations

from mayday import verdict
from mayday.verdict import HostResult, final, host_result, level1_preflight


def changed(host: str, summary: str = "") -> HostResult:
    return HostResult(host, changed=True, summary=summary or f"{host}: restored.")


def refused(host: str, msg: str = "no manifest") -> HostResult:
    return HostResult(host, refused=True, failed=True, msg=f"{host}: {msg}")


def failed(host: str, msg: str = "unhealthy") -> HostResult:
    return HostResult(host, changed=True, failed=True, msg=f"{host}: {msg}")


def test_preflight_refusal_wins_and_nothing_is_claimed_changed() -> None:
    v = final(["bad input: minutes 'abc' is not a whole number; valid: 1..10080"], {}, [])
    assert v.outcome == "REFUSED" and "valid: 1..10080" in v.summary


def test_every_host_changed_and_ok_is_recovered() -> None:
    v = final([], {"db1": changed("db1"), "pg1": changed("pg1")}, [])
    assert v.outcome == "RECOVERED" and v.hosts["db1"]["outcome"] == "RECOVERED"
    assert "db1: restored." in v.summary and "pg1: restored." in v.summary


def test_success_word_is_the_scenarios() -> None:
    assert final([], {"db1": changed("db1")}, [], success="DONE").outcome == "DONE"


def test_one_host_refused_and_none_changed_is_refused() -> None:
    v = final([], {"db1": refused("db1"), "pg1": HostResult("pg1")}, [])
    assert v.outcome == "REFUSED" and v.refusals == ["db1: no manifest"]


def test_one_host_refused_while_another_changed_is_failed_with_each_hosts_outcome() -> None:
    v = final([], {"db1": refused("db1"), "pg1": changed("pg1")}, [])
    assert v.outcome == "FAILED"
    assert v.hosts["db1"]["outcome"] == "REFUSED" and v.hosts["pg1"]["outcome"] == "RECOVERED"
    assert "pg1: restored." in v.summary and "Escalated" in v.summary
    assert any("db1: no manifest" in f and "pg1 changed" in f for f in v.failures)


def test_a_failed_host_fails_the_run_even_if_others_recovered() -> None:
    v = final([], {"web1": changed("web1"), "web2": failed("web2")}, [])
    assert v.outcome == "FAILED" and v.failures == ["web2: unhealthy"]


def test_a_host_lost_during_the_run_fails_it() -> None:
    v = final([], {"web1": changed("web1")}, ["web2"])
    assert v.outcome == "FAILED" and v.hosts["web2"]["outcome"] == "FAILED"


def test_unexpected_error_fails() -> None:
    assert final([], {"web1": changed("web1")}, [], error="boom").outcome == "FAILED"


def test_nothing_changed_is_noop_and_dry_run_in_check_mode() -> None:
    assert final([], {"web1": HostResult("web1")}, []).outcome == "NOOP"
    assert final([], {}, [], noop_reason="production is up").summary == "Nothing to do: production is up."
    assert final([], {"web1": changed("web1")}, [], check_mode=True).outcome == "DRY-RUN"
    assert final([], {"web1": refused("web1")}, [], check_mode=True).outcome == "REFUSED"


def test_host_result_reads_module_results() -> None:
    assert host_result("web1", None) is None
    assert host_result("web1", {"skipped": True, "skip_reason": "when"}) is None
    unhealthy = host_result("web1", {"changed": True, "ok": False, "msg": "HTTP 500"})
    assert unhealthy is not None and unhealthy.outcome == "FAILED"
    refusal = host_result("web1", {"failed": True, "refused": True, "changed": False, "msg": "no release"})
    assert refusal is not None and refusal.outcome == "REFUSED"
    # Claimed refused, but it changed something: not a refusal.
    half = host_result("db1", {"failed": True, "refused": True, "changed": True, "msg": "swap failed"})
    assert half is not None and half.outcome == "FAILED"
    gone = host_result("web2", {"unreachable": True, "msg": "connection lost"})
    assert gone is not None and gone.outcome == "FAILED"


def inspected(current: str, target: str, ok: bool, done: bool = False, refusal: str | None = None) -> dict:
    return {"ok": ok, "release": {"current": current, "target": target, "already_done": done, "refusal": refusal}}


def test_level1_production_up_is_noop_whatever_the_plan() -> None:
    probes = {"web1": inspected("b", "a", ok=True), "web2": inspected("b", "a", ok=True), "db1": {"ok": True}}
    found = level1_preflight(probes, ["web1", "web2"], None)
    assert found.noop and not found.go and verdict.PRODUCTION_UP in found.reason


def test_level1_named_release_that_does_not_exist_is_refused_on_a_healthy_fleet() -> None:
    refusal = "unknown release 'nope'; valid: v1, v2, a, b"
    probes = {h: inspected("b", "", ok=True, refusal=refusal) for h in ("web1", "web2")}
    found = level1_preflight(probes, ["web1", "web2"], "nope")
    assert found.refusals == [refusal] and not found.go


def test_level1_unreachable_and_disagreeing_hosts_are_refused() -> None:
    probes = {"web1": inspected("c", "b", ok=False), "web2": {"unreachable": True, "msg": "gone"}}
    assert level1_preflight(probes, ["web1", "web2"], None).refusals == ["unreachable: web2"]
    probes = {"web1": inspected("c", "b", ok=False), "web2": inspected("c", "a", ok=False)}
    refusals = level1_preflight(probes, ["web1", "web2"], None).refusals
    assert refusals and "disagree" in refusals[0] and "web1=b" in refusals[0]


def test_level1_go_with_fallback_only_for_hosts_that_were_healthy() -> None:
    probes = {"web1": inspected("c", "b", ok=False), "web2": inspected("c", "b", ok=True)}
    found = level1_preflight(probes, ["web1", "web2"], None)
    assert found.go and found.detail["fallback"] == {"web2": "c"} and found.detail["targets"] == {"web1": "b",
                                                                                                  "web2": "b"}


def test_level1_already_done_and_healthy_is_noop_for_a_named_release() -> None:
    probes = {"web1": inspected("b", "b", ok=True, done=True)}
    assert level1_preflight(probes, ["web1"], "b").noop


def test_level1_without_web_hosts_is_refused() -> None:
    assert level1_preflight({"db1": {"ok": True}}, [], None).refusals


def test_level1_summary_names_targets_and_services_in_order() -> None:
    steps = [{"step": "switch c -> b"}, {"step": "restart nginx"}, {"step": "restart php8.2-fpm"}]
    results: dict[str, HostResult | None] = {
        "web1": HostResult("web1", changed=True, steps=steps),
        "db1": HostResult("db1", changed=True, steps=[{"step": "restart mariadb"}])}
    text = verdict.level1_describe(results, {"web1": "b"}, check_mode=False)
    assert text == "Rolled back web1 to b, restarted nginx, php8.2-fpm, mariadb in that order and verified health."


def test_a_failed_hosts_summary_says_where_it_was_left() -> None:
    left = HostResult("web1", changed=True, failed=True, msg="http://x: status 500",
                      summary="b did not recover (status 500); put back a, the release it served healthily before "
                              "the run: healthy")
    v = final([], {"web1": left}, [])
    assert v.outcome == "FAILED" and "web1: b did not recover" in v.summary and "put back a" in v.summary


def test_a_dry_run_reports_hosts_as_dry_run_not_recovered() -> None:
    v = final([], {"web1": changed("web1"), "web2": HostResult("web2")}, [], check_mode=True)
    assert v.outcome == "DRY-RUN"
    assert v.hosts["web1"]["outcome"] == "DRY-RUN" and v.hosts["web2"]["outcome"] == "NOOP"
