"""Fixtures shared by the unit and integration tests: the real local notification receivers."""

from __future__ import annotations

from receivers import http_recorder, smtp_receiver

__all__ = ["http_recorder", "smtp_receiver"]
