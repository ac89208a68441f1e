"""Every error jaxcnn reports to its user, in one place.

Each is an input or run error whose message names what is wrong: the commands print it
as one line and exit with one of the codes below, without a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

#: Exit code for a usage or input error.
EXIT_USAGE = 2
#: Exit code when the loss or a gradient stops being finite.
EXIT_NONFINITE = 3
#: Exit code when a file could not be written: a full disk, a quota, a read-only folder,
#: a permission lost. Nothing complete is lost; the message says how to continue.
EXIT_WRITE = 4
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


#: The system's reasons for a write to fail that a user can fix: a full disk, a quota, a
#: read-only file system, a permission, a file too large.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


class WriteError(Exception):
    """A file or folder could not be written; says which, and the system's reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"could not write {path}: {reason}")
        self.path, self.reason = Path(path), reason
        #: Whether ``status.json`` could still be marked failed afterwards.
        self.status_written = False


def describe_os_error(error: BaseException) -> str:
    """Return the system's reason for a failed write in one line.

    An ``OSError`` gives its errno's text; other errors (Orbax's and tensorstore's wrap
    the OS error in their own message) are searched for a known errno text.
    """
    if isinstance(error, OSError) and error.errno is not None:
        return f"[Errno {error.errno}] {os.strerror(error.errno)}"
    message = str(error)
    for code in WRITE_ERRNOS:
        if os.strerror(code) in message:
            return f"[Errno {code}] {os.strerror(code)}"
    lines = message.strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block into a :class:`WriteError` naming ``path``."""
    try:
        yield
    except OSError as error:
        raise WriteError(path, describe_os_error(error)) from error
