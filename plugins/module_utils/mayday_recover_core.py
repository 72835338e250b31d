# The per-host rollback unit, free of AnsibleModule so it can be tested and reused directly.
# apply:   switch (unless already done), restart services in order, verify health; when the
#          verification fails, put back `fallback_release` (the release last seen healthy) and
#          restart again, so the host ends in its best known state.
# restore: put a named release back and restart the services.
from __future__ import annotations

try:
    from ansible.module_utils.mayday_http import probe
    from ansible.module_utils.mayday_release import ReleaseError, is_true, layout_for
    from ansible.module_utils.mayday_service import ServiceError, restart
    from ansible.module_utils.mayday_steps import Steps
except ImportError:  # imported directly (unit tests, controller)
    from mayday_http import probe  # type: ignore[no-redef]
    from mayday_release import ReleaseError, is_true, layout_for  # type: ignore[no-redef]
    from mayday_service import ServiceError, restart  # type: ignore[no-redef]
    from mayday_steps import Steps  # type: ignore[no-redef]


class Refused(Exception):
    """Nothing was changed."""


def _checks(health, version):
    if version is None:
        return list(health)
    return [dict(c, json=dict(c.get("json") or {}, version=version)) for c in health]


def _verify(steps, health, version, retries=None):
    return [steps.run(f"health {c['url']}", probe, c, retries) for c in _checks(health, version)]


def _restart_all(steps, services, timeout):
    """Restart in order; stop at the first service that does not come back."""
    for service in services:
        try:
            steps.run(f"{service.get('action', 'restart')} {service['name']}", restart, service, timeout)
        except ServiceError as exc:
            return str(exc)
    return None


def _problems(health):
    return "; ".join(f"{h['url']}: {', '.join(h['problems'])}" for h in health if not h["ok"])


def apply(params, check_mode=False):
    steps = Steps()
    result = {"changed": False, "ok": False, "steps": steps.items, "health": []}
    release = params.get("release") or {}
    layout = layout_for(release) if release else None
    target = before = None
    if layout:
        try:
            target, done, reason = layout.plan(release.get("target") or None, force=is_true(release.get("force")))
        except ReleaseError as exc:
            raise Refused(str(exc)) from exc
        before = layout.state()["current"]
        result["release"] = {"before": before, "target": target, "already_done": done, "reason": reason}
        by_version = release.get("layout", "symlink") == "symlink" and params.get("expect_version", True)
        version = target if by_version else None
        if done:
            health = _verify(steps, params.get("health") or [], version, retries=0)
            if all(h["ok"] for h in health):
                result.update(ok=True, health=health)
                return result
            steps.skip(f"switch to {target}", "already current; restarting services because health fails")
        elif check_mode:
            steps.skip(f"switch {before} -> {target}", "check mode")
        else:
            left = steps.run(f"switch {before} -> {target}", layout.switch, target) or before
            if release.get("keep_failed", True) and left:
                steps.run(f"mark {left} failed", layout.mark_failed, left, params.get("incident", ""),
                          f"rolled back to {target}")
        result["changed"] = True
    else:
        version = None
    services = params.get("services") or []
    if check_mode:
        for service in services:
            steps.skip(f"{service.get('action', 'restart')} {service['name']}", "check mode")
        result.update(ok=True, changed=bool(services) or result["changed"])
        return result
    result["changed"] = result["changed"] or bool(services)
    error = _restart_all(steps, services, params.get("service_timeout", 30))
    if not error:
        result["health"] = _verify(steps, params.get("health") or [], version)
        result["ok"] = all(h["ok"] for h in result["health"])
        if result["ok"]:
            _where(result, layout, f"{before} -> {target}, services restarted, healthy" if layout
                   else "services restarted, healthy")
            return result
        error = _problems(result["health"])
    result["msg"] = error
    fallback = params.get("fallback_release")
    if layout and fallback and fallback != target and not check_mode:
        result["restored"] = restore(dict(params, restore_release=fallback), steps)
        back = result["restored"]
        state = "healthy" if back["ok"] else "still unhealthy: " + back["msg"]
        _where(result, layout, f"{target} did not recover ({error}); put back {fallback}, the release it served "
                               f"healthily before the run: {state}")
    elif layout:
        _where(result, layout, f"{target} did not recover ({error}); no release answered healthy here before the run, "
                               f"so the host is left on {target}")
    else:
        _where(result, layout, error)
    return result


def _where(result, layout, summary):
    """Where the host was left, for the incident report."""
    result["summary"] = summary
    result["report"] = dict(result.get("release") or {}, left_on=layout.state()["current"] if layout else None)
    if result.get("restored"):
        result["report"]["put_back"] = {"release": result["restored"]["release"], "ok": result["restored"]["ok"]}


def restore(params, steps=None):
    steps = steps or Steps()
    release = params.get("release") or {}
    layout = layout_for(release) if release else None
    back = params.get("restore_release")
    if layout and back and layout.state()["current"] != back:
        steps.run(f"put back {back}", layout.switch, back)
        steps.run(f"clear failed marker of {back}", layout.clear_failed, back)
    error = _restart_all(steps, params.get("services") or [], params.get("service_timeout", 30))
    expected = back if back and release and release.get("layout", "symlink") == "symlink" else None
    health = _verify(steps, params.get("health") or [], expected, retries=2) if not error else []
    return {"release": back, "ok": not error and all(h["ok"] for h in health), "health": health,
            "steps": steps.items, "msg": error or _problems(health)}
