"""mayday: emergency response and rollback as code."""

__version__ = "0.1.0"
