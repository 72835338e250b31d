# Timed steps: every module returns the steps it took so the incident timeline can show them.
from __future__ import annotations

import time


def utc_now():
    now = time.time()  # one reading, so the milliseconds belong to the same second
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


class Steps:
    def __init__(self):
        self.items = []

    def run(self, name, func, *args, **kwargs):
        started, t0 = utc_now(), time.monotonic()
        try:
            detail = func(*args, **kwargs)
        except Exception as exc:
            self.items.append({"step": name, "started": started,
                               "duration_s": round(time.monotonic() - t0, 3), "result": "failed",
                               "detail": str(exc)})
            raise
        failed = isinstance(detail, dict) and detail.get("ok") is False
        self.items.append({"step": name, "started": started, "duration_s": round(time.monotonic() - t0, 3),
                           "result": "failed" if failed else "ok", "detail": detail})
        return detail

    @staticmethod
    def timed(name, func, *args, **kwargs):
        """Run func for another thread: returns (step, value, error) instead of raising."""
        steps = Steps()
        try:
            value = steps.run(name, func, *args, **kwargs)
        except Exception as exc:
            return steps.items[0], None, exc
        return steps.items[0], value, None

    def skip(self, name, why):
        self.items.append({"step": name, "started": utc_now(), "duration_s": 0.0, "result": "skipped",
                           "detail": why})
