"""Keep library chatter off the user's terminal where it says nothing useful."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def absl_errors_only() -> Iterator[None]:
    """Silence absl's warnings (tfds and Orbax log through absl) inside the block."""
    absl_logger = logging.getLogger("absl")
    previous = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl_logger.setLevel(previous)
