"""User-facing errors: each says what is wrong and what must change, naming the file or field."""

from __future__ import annotations


class SpinError(RuntimeError):
    """A problem the user can fix (bad input, missing file); printed as one line by the CLI."""


class DataError(SpinError):
    """Input or intermediate data is missing or malformed (the message names the file)."""


class ModelError(SpinError):
    """A model cannot be found or loaded (the message names the source)."""


class RunDirError(SpinError):
    """The run directory is missing, unreadable or holds something unexpected."""
