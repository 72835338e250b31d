# Restart services in order and wait until each is active and its port answers.
from __future__ import annotations

import socket
import subprocess
import time


class ServiceError(Exception):
    pass


def is_active(name):
    out = subprocess.run(["systemctl", "is-active", name], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def unit_exists(name):
    out = subprocess.run(["systemctl", "show", "-p", "LoadState", "--value", name],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() == "loaded"


def _start_limit_hit(name):
    out = subprocess.run(["systemctl", "show", "-p", "Result", "--value", name],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() == "start-limit-hit"


def port_answers(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def wait_ready(name, port, timeout):
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = is_active(name)
        if state == "active" and (not port or port_answers(port)):
            return
        if state == "failed":
            break
        time.sleep(0.05)
    where = f" and port {port}" if port else ""
    raise ServiceError(f"{name} not ready{where} within {timeout}s (state: {state or 'unknown'})")


def restart(service, timeout):
    name, action = service["name"], service.get("action", "restart")
    if not unit_exists(name):
        raise ServiceError(f"unit {name} is not installed on this host")
    out = subprocess.run(["systemctl", action, name], capture_output=True, text=True, check=False)
    if out.returncode != 0 and _start_limit_hit(name):
        # Restarted too often in a short time: systemd refuses until the counter is reset.
        subprocess.run(["systemctl", "reset-failed", name], capture_output=True, check=False)
        out = subprocess.run(["systemctl", action, name], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise ServiceError(f"systemctl {action} {name} failed: {out.stderr.strip()}")
    wait_ready(name, service.get("port"), timeout)
    return f"{action.rstrip('e')}ed, active" + (f", port {service['port']} answers" if service.get("port") else "")


def inspect(services):
    return {s["name"]: is_active(s["name"]) for s in services}
