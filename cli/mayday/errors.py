"""Domain errors, turned into clean exits in one place (cli.main)."""

from __future__ import annotations


class MaydayError(Exception):
    """Anything the CLI reports to the operator without a traceback."""

    exit_code = 1


class BadInput(MaydayError):
    """The operator's input is wrong; nothing on any host was touched."""

    exit_code = 2
