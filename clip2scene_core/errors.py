"""The one base of every error a user can cause and fix.

A command that meets a UserError prints its message (which names the input and the fix) and exits 2,
without a traceback; anything else is a bug and keeps its traceback. The concrete classes live where
the condition is found (ConfigError in config.py, CheckpointError in student/checkpoint.py, ...) and
also derive from the built-in exception a caller would expect (ValueError, FileNotFoundError).
"""

from __future__ import annotations


class UserError(Exception):
    """A condition the user caused (a path, a value, a file's content); the message says what to do."""


class UsageError(UserError, ValueError):
    """An option or argument that cannot be used as given."""


class DivergedError(UserError, ArithmeticError):
    """A computation went numerically wrong (a NaN or infinite loss); the message names the cause."""
