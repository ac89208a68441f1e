"""SIGINT and SIGTERM as a request to stop training after a checkpoint; a Ctrl-C never lost.

Python runs a signal's handler between two bytecodes of whatever code is running, also
of a garbage collector callback (JAX installs one, ``_xla_gc_callback``) or a ``__del__``
method, where an exception cannot propagate: Python prints it as "Exception ignored"
and goes on. A Ctrl-C that raised its ``KeyboardInterrupt`` there was lost, and the
job ran to its end: 3 of 36 Ctrl-Cs sent to ``python -m jaxcnn.train`` while it traced
and compiled, on this project's 2-core machine. The handlers here have the signal sent
again instead, a moment later (none of 77 lost).
"""

from __future__ import annotations

import _thread
import contextlib
import gc
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType


def where_exceptions_are_lost(frame: FrameType | None) -> bool:
    """Return whether ``frame`` runs inside a garbage collector callback or a ``__del__``."""
    callbacks = {getattr(callback, "__code__", None) for callback in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


#: How long a signal that arrived where it could not raise waits to be sent again.
RESEND_SECONDS = 0.001


def raise_again_later(signum: int, frame: FrameType | None) -> bool:
    """Send signal ``signum`` again soon if ``frame`` could not raise; return whether it did.

    A thread sends it to the main thread a moment later (``signal.pthread_kill``, which
    also wakes a main thread that waits, for a compilation say), when the collection or
    ``__del__`` is most likely over; if it is not, the signal is sent again.
    """
    if not where_exceptions_are_lost(frame):
        return False
    threading.Thread(target=_send_to_main_thread, args=(signum,), daemon=True).start()
    return True


def _send_to_main_thread(signum: int) -> None:
    """Send signal ``signum`` to the main thread after :data:`RESEND_SECONDS`."""
    time.sleep(RESEND_SECONDS)
    if hasattr(signal, "pthread_kill"):
        signal.pthread_kill(threading.main_thread().ident, signum)
    else:  # Windows: Python's handler runs at the main thread's next bytecode
        _thread.interrupt_main(signum)


def raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGINT's handler: Python's own, except where the ``KeyboardInterrupt`` would be lost."""
    if not raise_again_later(signum, frame):
        raise KeyboardInterrupt


@contextlib.contextmanager
def ctrl_c_never_lost() -> Iterator[None]:
    """Raise Ctrl-C's ``KeyboardInterrupt`` inside the block only where it can propagate.

    Only where SIGINT has Python's own handler, in the main thread: an ignored SIGINT
    (``nohup``) or another handler is left as it is.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    previous = signal.signal(signal.SIGINT, raise_keyboard_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class StopRequest:
    """Set by SIGINT or SIGTERM; the training loop polls it after every step.

    A second signal while a stop is pending raises ``KeyboardInterrupt`` at once.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        """Return whether a stop was requested."""
        return self.signum is not None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: remember the first signal; a second one aborts."""
        if self.signum is None:
            self.signum = signum
        elif not raise_again_later(signum, frame):
            raise KeyboardInterrupt

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
