"""Keep library chatter off the user's terminal where it says nothing useful."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sys import UnraisableHookArgs


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


@contextlib.contextmanager
def write_failure_echoes_silenced() -> Iterator[None]:
    """Keep Orbax's echoes of a failed checkpoint write off stderr inside the block.

    When a write fails, the caller reports it in one line, but four echoes of it
    reach stderr besides: Orbax logs the traceback at ERROR from its own threads
    (through absl); asyncio logs "Task exception was never retrieved" for each of
    Orbax's writes that failed too; tensorstore's callbacks for writes still in
    flight find Orbax's event loop closed and report "Event loop is closed" as
    unraisable exceptions; and the writes that never started warn, when they are
    collected, "coroutine ... was never awaited" (a ``RuntimeWarning``). All four can
    come after the block has raised, so after a failure those two loggers stay
    disabled, the closed-loop reports stay dropped and that warning stays ignored for
    the rest of the process, which is about to end. Without a failure, the loggers'
    records from the block are passed on unchanged.
    """
    echo_loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    held_records: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        held_records.append(record)
        return False

    previous_hook = sys.unraisablehook

    def drop_closed_loop_reports(unraisable: UnraisableHookArgs) -> None:
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous_hook(unraisable)

    for logger in echo_loggers:
        logger.addFilter(hold)
    sys.unraisablehook = drop_closed_loop_reports
    try:
        yield
    except BaseException:
        for logger in echo_loggers:
            logger.disabled = True
        warnings.filterwarnings(
            "ignore", message="coroutine .* was never awaited", category=RuntimeWarning
        )
        raise
    finally:
        for logger in echo_loggers:
            logger.removeFilter(hold)
    sys.unraisablehook = previous_hook
    for record in held_records:
        logging.getLogger(record.name).handle(record)
