"""SIGINT and SIGTERM as a request to stop training after a checkpoint; a Ctrl-C never lost.

Python runs a signal's handler between two bytecodes of whatever code is running, also
of a garbage collector callback (JAX installs one, ``_xla_gc_callback``), a weakref
callback or a ``__del__`` method, where an exception cannot propagate: Python passes it
to ``sys.unraisablehook``, which prints "Exception ignored", and goes on. A Ctrl-C whose
``KeyboardInterrupt`` was raised there was lost, and the job ran to its end: 5 of 51
Ctrl-Cs sent to ``python -m jaxcnn.train`` while it traced and compiled, on this
project's 2-core machine. :func:`ctrl_c_never_lost` has such a signal sent again (0 of
51 lost).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

#: How long a lost Ctrl-C waits to be sent again, the first time; each further time
#: (it was lost again) twice as long, up to :data:`LONGEST_WAIT_SECONDS`.
FIRST_WAIT_SECONDS = 0.001
LONGEST_WAIT_SECONDS = 0.05


class _Resender:
    """A thread that sends SIGINT to the main thread again, once for each Ctrl-C lost.

    A Ctrl-C sent again to ``own_handler`` is in flight until that handler says it has
    arrived; sent to another (the training loop's), it is not followed.
    """

    def __init__(self, own_handler: Callable[[int, FrameType | None], None]) -> None:
        self.own_handler = own_handler
        self.condition = threading.Condition()  # reentrant: a handler may run inside it
        self.active, self.pending, self.in_flight, self.times_lost = True, False, False, 0
        self.thread = threading.Thread(target=self._send_when_lost, daemon=True)
        self.thread.start()

    def lost(self) -> None:
        """Have the Ctrl-C whose ``KeyboardInterrupt`` was lost sent again."""
        with self.condition:
            self.pending = True
            self.condition.notify()

    def arrived(self) -> None:
        """Note that a Ctrl-C sent again has reached SIGINT's handler."""
        self.in_flight = False

    def _send_when_lost(self) -> None:
        """Wait for a lost Ctrl-C, wait a moment more (longer each time), send it again.

        ``signal.pthread_kill`` also wakes a main thread that waits (for a compilation,
        say), as a Ctrl-C from the terminal does.
        """
        with self.condition:
            while self.active:
                if not self.condition.wait_for(lambda: self.pending or not self.active, 0.1):
                    continue
                wait = min(FIRST_WAIT_SECONDS * 2**self.times_lost, LONGEST_WAIT_SECONDS)
                if self.condition.wait_for(lambda: not self.active, wait):
                    return
                self.pending = False
                self.in_flight = signal.getsignal(signal.SIGINT) is self.own_handler
                self.times_lost += 1
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def end(self) -> bool:
        """Send nothing more; return whether a Ctrl-C lost is still to be raised."""
        self.active = False
        with self.condition:
            self.condition.notify()
        if self.in_flight:  # its handler raises in this wait, inside the block
            time.sleep(LONGEST_WAIT_SECONDS)
        return self.pending or self.in_flight


@contextlib.contextmanager
def ctrl_c_never_lost() -> Iterator[None]:
    """Raise every Ctrl-C inside the block, in code that can propagate its exception.

    A ``KeyboardInterrupt`` that reaches ``sys.unraisablehook`` (raised by SIGINT's
    handler inside a garbage collector callback, a weakref callback or a ``__del__``;
    or by the training loop's, whose handler aborts at a second signal) is not printed
    but sent again as SIGINT a moment later; if lost again, again, waiting longer each
    time. SIGINT's handler raises as Python's own does, except inside that hook, where
    it has the signal sent again instead. One not yet sent when the block ends is raised
    at its end. Where SIGINT does not have Python's own handler (ignored under ``nohup``,
    or in a thread other than the main one), or on Windows, nothing changes.
    """
    if (
        not hasattr(signal, "pthread_kill")
        or threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    previous_hook = sys.unraisablehook
    in_hook = [False]

    def send_lost_interrupts_again(unraisable: Any) -> None:
        if resender.active and isinstance(unraisable.exc_value, KeyboardInterrupt):
            in_hook[0] = True
            resender.lost()
            in_hook[0] = False
        else:
            previous_hook(unraisable)

    def raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
        resender.arrived()
        if in_hook[0]:  # here it would be lost again
            resender.lost()
            return
        raise KeyboardInterrupt

    resender = _Resender(own_handler=raise_keyboard_interrupt)
    try:
        sys.unraisablehook = send_lost_interrupts_again
        signal.signal(signal.SIGINT, raise_keyboard_interrupt)
        yield
    finally:
        try:
            if resender.end():
                raise KeyboardInterrupt
        finally:
            if sys.unraisablehook is send_lost_interrupts_again:  # not replaced for good
                sys.unraisablehook = previous_hook
            _restore_python_sigint_handler()


def _restore_python_sigint_handler() -> None:
    """Give SIGINT Python's own handler again.

    ``signal.signal`` first runs the handlers of signals that have arrived, which may
    raise: the handler is then set once more before the ``KeyboardInterrupt`` goes on.
    """
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise


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
