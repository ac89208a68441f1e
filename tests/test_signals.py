"""SIGINT and SIGTERM: a stop request in the training loop, unless ignored; Ctrl-C never lost."""

import _thread
import contextlib
import gc
import os
import signal
import time
import weakref
from collections.abc import Callable, Iterator

import pytest

from jaxcnn.training import signals
from jaxcnn.training.signals import StopRequest, ctrl_c_never_lost, stop_on_signals


@contextlib.contextmanager
def sigint_unblocked() -> Iterator[None]:
    """SIGINT unblocked in this thread (a test worker may run with it blocked)."""
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


@pytest.fixture
def sigint_ignored():
    """SIGINT ignored, as in a job started with ``&`` by a script or under ``nohup``."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    with sigint_unblocked():  # so that an ignored SIGINT is dropped, not left pending
        yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def ctrl_c_raises():
    """SIGINT unblocked, with Python's own handler, as a terminal starts Python.

    A test worker may run with SIGINT ignored or blocked.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    with sigint_unblocked():
        yield
    signal.signal(signal.SIGINT, previous)


def ctrl_c() -> None:
    """Press Ctrl-C: SIGINT's Python handler runs at the next bytecode, in the code running."""
    _thread.interrupt_main()
    time.sleep(0)  # a bytecode more here, where the KeyboardInterrupt is raised


@contextlib.contextmanager
def in_a_gc_callback(then: Callable[[], None]) -> Iterator[Callable[[], None]]:
    """Yield a function that runs ``then`` inside the garbage collector's callback, as JAX's."""

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            then()

    enabled = gc.isenabled()
    gc.disable()  # no automatic collection in the block: only the one asked for
    gc.callbacks.append(callback)
    try:
        yield lambda: gc.collect(0)  # the youngest generation: quick, and the callbacks run
    finally:
        gc.callbacks.remove(callback)
        if enabled:
            gc.enable()


@contextlib.contextmanager
def in_a_weakref_callback(then: Callable[[], None]) -> Iterator[Callable[[], None]]:
    """Yield a function that runs ``then`` inside a weakref callback (``weakref.finalize``)."""

    class Thing:
        pass

    things = [Thing()]
    weakref.finalize(things[0], then)
    yield things.clear  # the last reference gone: the callback runs


WHERE_PYTHON_LOSES_IT = [in_a_gc_callback, in_a_weakref_callback]


def test_sigterm_requests_a_stop_and_the_handlers_come_back():
    sigterm_before = signal.getsignal(signal.SIGTERM)
    request = StopRequest()
    with stop_on_signals(request):
        assert not request()
        os.kill(os.getpid(), signal.SIGTERM)
        assert request()
        assert request.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is sigterm_before


def test_an_ignored_sigint_stays_ignored_and_sigterm_still_stops(sigint_ignored):
    request = StopRequest()
    with ctrl_c_never_lost(), stop_on_signals(request):
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        assert not request()
        os.kill(os.getpid(), signal.SIGTERM)
        assert request.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.parametrize("where", WHERE_PYTHON_LOSES_IT)
def test_a_ctrl_c_where_python_would_lose_it_is_raised_after(where, ctrl_c_raises):
    with (
        ctrl_c_never_lost(),
        where(then=ctrl_c) as run_it,
        pytest.raises(KeyboardInterrupt) as raised,
    ):
        run_it()
        time.sleep(10)  # the time it has to arrive again
    assert raised.traceback[-1].name == "raise_keyboard_interrupt"  # SIGINT's handler
    assert raised.traceback[-2].name == "test_a_ctrl_c_where_python_would_lose_it_is_raised_after"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("where", WHERE_PYTHON_LOSES_IT)
def test_a_second_signal_where_python_would_lose_it_still_aborts_the_loop(where, ctrl_c_raises):
    request = StopRequest()
    with ctrl_c_never_lost(), stop_on_signals(request):
        os.kill(os.getpid(), signal.SIGTERM)
        assert request.signum == signal.SIGTERM  # the first signal: a stop request
        with where(then=ctrl_c) as run_it, pytest.raises(KeyboardInterrupt) as raised:
            run_it()  # the second, a Ctrl-C where Python loses it
            time.sleep(10)
    assert raised.traceback[-1].name == "handle"


def test_a_lost_ctrl_c_not_yet_sent_again_is_raised_at_the_end_and_nothing_after(
    ctrl_c_raises, monkeypatch
):
    monkeypatch.setattr(signals, "FIRST_WAIT_SECONDS", 0.5)  # longer than the block lasts
    sent = []
    monkeypatch.setattr(signal, "pthread_kill", lambda *args: sent.append(args))
    with (
        pytest.raises(KeyboardInterrupt) as raised,
        ctrl_c_never_lost(),
        in_a_gc_callback(then=ctrl_c) as run_it,
    ):
        run_it()
    assert raised.traceback[-1].name == "ctrl_c_never_lost"
    time.sleep(0.7)  # past the wait
    assert sent == []  # nothing was sent after the block
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
