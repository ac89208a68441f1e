"""SIGINT and SIGTERM as a request to stop training after a checkpoint; a Ctrl-C never lost.

Python runs a signal's handler between two bytecodes of whatever code is running, also
of a garbage collector callback (JAX installs one, ``_xla_gc_callback``), a weakref
callback or a ``__del__`` method, where an exception cannot propagate: Python passes it
to ``sys.unraisablehook``, which prints "Exception ignored", and goes on. A Ctrl-C whose
``KeyboardInterrupt`` was raised there was lost, and the job ran to its end: 3 of 36
Ctrl-Cs sent to ``python -m jaxcnn.train`` while it traced and compiled, on this
project's 2-core machine. :func:`ctrl_c_never_lost` has such a signal sent again.
"""

from __future__ import annotations

import _thread
import contextlib
import gc
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
    """A thread that sends SIGINT again to the main thread while a Ctrl-C is pending.

    A Ctrl-C is pending from the moment it is found lost (:meth:`lost`) until
    ``own_handler`` raises its ``KeyboardInterrupt`` in code that can propagate it
    (:meth:`raised`), both in the main thread; the lock keeps the thread from sending
    after that. Sent to another handler (the training loop's), it is sent once: that
    handler does not say whether it raised, and if it was lost again, it comes back.
    """

    def __init__(self, own_handler: Callable[..., Any]) -> None:
        self.own_handler = own_handler
        self.condition = threading.Condition()  # reentrant: a handler may run inside it
        self.active, self.pending, self.sent = True, False, False
        self.thread = threading.Thread(target=self._send_while_pending, daemon=True)
        self.thread.start()

    def lost(self) -> None:
        """Send a Ctrl-C again: its ``KeyboardInterrupt`` could not be raised, or was lost."""
        with self.condition:
            self.pending = True
            self.condition.notify()

    def raised(self) -> None:
        """Send nothing more: the Ctrl-C's ``KeyboardInterrupt`` is raised where it propagates."""
        with self.condition:
            self.pending = self.sent = False

    def _send_while_pending(self) -> None:
        """Send SIGINT (SIGTERM where SIGINT is ignored) while pending, waiting longer each time.

        ``signal.pthread_kill`` also wakes a main thread that waits (for a compilation,
        say); where there is none (Windows), ``_thread.interrupt_main`` runs the handler
        at the main thread's next bytecode.
        """
        wait = FIRST_WAIT_SECONDS
        with self.condition:
            while True:
                self.condition.wait_for(lambda: self.pending or not self.active)
                self.condition.wait(wait)  # the lock is free meanwhile
                signum = _signal_with_python_handler()
                if not self.active:
                    return
                if self.pending and signum is not None:
                    self.sent = True
                    self.pending = signal.getsignal(signum) is self.own_handler
                    if hasattr(signal, "pthread_kill"):
                        signal.pthread_kill(threading.main_thread().ident, signum)
                    else:
                        _thread.interrupt_main(signum)
                wait = min(2 * wait, LONGEST_WAIT_SECONDS) if self.pending else FIRST_WAIT_SECONDS

    def end(self) -> tuple[bool, bool]:
        """Stop the thread; return whether a Ctrl-C was pending, and whether it was sent."""
        with self.condition:
            self.active = False
            self.condition.notify()
            return self.pending, self.sent


def _signal_with_python_handler() -> int | None:
    """Return SIGINT, or SIGTERM where SIGINT is ignored (``nohup``), if Python handles it."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        if callable(signal.getsignal(signum)):
            return signum
    return None


def where_exceptions_are_lost(frame: FrameType | None, also: Callable[..., Any]) -> bool:
    """Return whether ``frame`` runs in a garbage collector callback, a ``__del__`` or ``also``."""
    lost_in = {getattr(callback, "__code__", None) for callback in [*gc.callbacks, also]}
    while frame is not None:
        if frame.f_code in lost_in or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def ctrl_c_never_lost() -> Iterator[None]:
    """Raise every Ctrl-C inside the block, in code that can propagate its exception.

    SIGINT's handler raises ``KeyboardInterrupt`` as Python's own does, except inside a
    garbage collector callback or a ``__del__``, where it has the signal sent again a
    moment later instead. A ``KeyboardInterrupt`` lost elsewhere (a weakref callback; or
    the training loop's second signal, whose handler is the loop's) reaches
    ``sys.unraisablehook``, which has it sent again too. One still pending when the block
    ends is raised at its end. Where SIGINT does not have Python's own handler (ignored
    under ``nohup``, or in a thread other than the main one), nothing changes.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    previous_hook = sys.unraisablehook

    def send_lost_interrupts_again(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            resender.lost()
        else:
            previous_hook(unraisable)

    def raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
        if where_exceptions_are_lost(frame, also=send_lost_interrupts_again):
            resender.lost()
            return
        resender.raised()
        raise KeyboardInterrupt

    resender = _Resender(own_handler=raise_keyboard_interrupt)
    sys.unraisablehook = send_lost_interrupts_again
    signal.signal(signal.SIGINT, raise_keyboard_interrupt)
    try:
        yield
    finally:
        try:
            pending, sent = resender.end()
            if pending:
                if sent:  # on its way: its handler raises during this wait
                    time.sleep(LONGEST_WAIT_SECONDS)
                raise KeyboardInterrupt
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            sys.unraisablehook = previous_hook


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
