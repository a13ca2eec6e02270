"""Errors a user can act on.

Every exception derived from `HtmpError` reaches the user as one line on stderr and exit code 2;
anything else is a bug and shows a traceback only with `--debug`.
"""


class HtmpError(Exception):
    """An input or usage problem, stated in one line."""


class CheckpointError(HtmpError):
    """The checkpoint is missing, unreadable, truncated or malformed."""


class OptionError(HtmpError):
    """An option value is out of range or inconsistent with another."""
