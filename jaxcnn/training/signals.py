"""SIGINT and SIGTERM as a request to stop training after a checkpoint."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any


class StopRequest:
    """Set by SIGINT or SIGTERM; the training loop polls it after every step.

    A second signal while a stop is pending raises ``KeyboardInterrupt`` at once.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        """Return whether a stop was requested."""
        return self.signum is not None

    def handle(self, signum: int, frame: Any) -> None:
        """Signal handler: remember the first signal; a second one aborts."""
        del frame
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal's number (SIGTERM's if another process of the run got it)."""
        return 128 + (self.signum or signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals(request: StopRequest) -> Iterator[None]:
    """Route SIGINT and SIGTERM to ``request`` inside the block.

    A signal the process was started with ignored stays ignored, as Python itself leaves
    it: a job started in the background of a script (``python -m jaxcnn.train ... &``) or
    under ``nohup`` is not stopped by the Ctrl-C meant for its parent.
    """
    previous = {
        sig: signal.signal(sig, request.handle)
        for sig in (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(sig) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
