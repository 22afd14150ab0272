"""The one base class for problems a user can fix.

Everything raised as a `CbirError` carries a message that says what went wrong and what to do
next (usually a command to run). The command line (`cbir.cli.main`, which `app.py`, `build_index.py`
and `python -m cbir.evaluate` call) shows its message and exits with 2; anything else is a bug and
surfaces as one, with its traceback.
"""

from __future__ import annotations


class CbirError(Exception):
    """A problem the user can fix; the message names the fix."""


class SettingsError(CbirError, ValueError):
    """An argument or setting that cannot be used as given (unknown name, bad value)."""
