"""The outcomes a run can end with, and the exit code each maps to."""

from __future__ import annotations

# RECOVERED: the scenario changed hosts and verified them; DONE: a routine job (a backup) finished;
# NOOP: nothing needed doing; DRY-RUN: --check; REFUSED: pre-flight said no, nothing changed;
# FAILED: something changed or may have, and it did not end well (escalated); ABANDONED: the operator
# interrupted the CLI twice, and the run was stopped where it stood (hosts may be mid-change).
EXIT_CODES = {"RECOVERED": 0, "DONE": 0, "NOOP": 0, "DRY-RUN": 0, "REFUSED": 2, "FAILED": 1, "ABANDONED": 1}
OUTCOMES = tuple(EXIT_CODES)
