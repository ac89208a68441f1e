"""Every error jaxcnn reports to its user, in one place.

Each is an input or run error whose message names what is wrong: the commands print it
as one line and exit with one of the codes below, without a traceback.
"""

from __future__ import annotations

#: Exit code for a usage or input error.
EXIT_USAGE = 2
#: Exit code when the loss or a gradient stops being finite.
EXIT_NONFINITE = 3
#: Exit code for Ctrl-C outside the training loop (128 + SIGINT).
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A flag or input is wrong; the message names it and says what is expected."""


class DataError(Exception):
    """The data cannot be found, read or prepared; the message says what to do."""


class CheckpointError(Exception):
    """A checkpoint is missing, incomplete, corrupted or of another model; says which."""


class NonFiniteError(Exception):
    """The loss or a gradient became NaN or Inf; the message says at which step and where."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step
