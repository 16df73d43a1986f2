"""The one base of every error strainstream raises for a user to act on.

Every exception class of the project derives from :class:`StrainstreamError`, beside the
standard class that says what kind of error it is (``ValueError`` for bad input,
``RuntimeError`` for a service that cannot be used, ``OSError`` for a file or directory,
...), so library callers can keep catching ``ValueError`` and the command line can catch
one class: whatever derives from :class:`StrainstreamError` is printed as one line
``strainstream COMMAND: error: MESSAGE`` with exit code 2, never as a traceback.

A message names what is wrong (the file, option, PV, uid, key) and what to do about it.

This module imports nothing: the analysis core may use it.
"""

from __future__ import annotations

__all__ = ["ServerError", "StrainstreamError", "UsageError"]


class StrainstreamError(Exception):
    """An error the user can fix; its message says what is wrong and what to do."""

    #: exit code of the command line for this error
    exit_code: int = 2


class UsageError(StrainstreamError, ValueError):
    """A command-line option or argument is wrong (value, range, combination)."""


class ServerError(StrainstreamError, RuntimeError):
    """The tiled server cannot be started, reached or used. The message says what to do."""
