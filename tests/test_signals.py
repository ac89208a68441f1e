"""SIGINT and SIGTERM: a stop request in the training loop, unless ignored; Ctrl-C never lost."""

import _thread
import contextlib
import gc
import os
import signal
import time
from collections.abc import Iterator

import pytest

from jaxcnn.training.signals import StopRequest, ctrl_c_never_lost, stop_on_signals


@pytest.fixture
def sigint_ignored():
    """SIGINT ignored, as in a job started with ``&`` by a script or under ``nohup``."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def ctrl_c_raises():
    """SIGINT unblocked, with Python's own handler, as a terminal starts Python.

    A test worker may run with SIGINT ignored or blocked.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def ctrl_c_in_a_collection() -> Iterator[list[int]]:
    """Make a Ctrl-C arrive inside the garbage collector's callback, as it can in JAX's.

    Yields the Ctrl-Cs sent, one by the callback at the start of the block's first
    ``gc.collect()`` (automatic collections are off inside the block).
    """
    sent = []

    def callback(phase: str, info: dict) -> None:
        if phase == "start" and not sent:
            _thread.interrupt_main()  # Ctrl-C: its handler runs at the next bytecode, here
            sent.append(signal.SIGINT)

    gc.disable()
    gc.callbacks.append(callback)
    try:
        yield sent
    finally:
        gc.callbacks.remove(callback)
        gc.enable()


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
    with stop_on_signals(request), ctrl_c_never_lost():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        assert not request()
        os.kill(os.getpid(), signal.SIGTERM)
        assert request.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_ctrl_c_in_a_garbage_collector_callback_is_raised_after_it(ctrl_c_raises):
    """Python's own handler would raise inside the callback, where the error is lost."""
    with (
        ctrl_c_never_lost(),
        ctrl_c_in_a_collection() as sent,
        pytest.raises(KeyboardInterrupt) as raised,
    ):
        gc.collect()
        time.sleep(10)  # the time it has to arrive again
    assert raised.traceback[-1].name == "raise_keyboard_interrupt"
    assert raised.traceback[-2].name.startswith("test_a_ctrl_c_in")  # not in the callback
    assert sent == [signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_signal_in_a_garbage_collector_callback_still_aborts_the_loop(ctrl_c_raises):
    request = StopRequest()
    with ctrl_c_never_lost(), stop_on_signals(request):
        os.kill(os.getpid(), signal.SIGTERM)
        assert request.signum == signal.SIGTERM  # the first signal: a stop request
        with ctrl_c_in_a_collection() as sent, pytest.raises(KeyboardInterrupt) as raised:
            gc.collect()  # the second, a Ctrl-C inside the callback
            time.sleep(10)
    assert raised.traceback[-1].name == "handle"
    assert raised.traceback[-2].name.startswith("test_a_second_signal")
    assert sent == [signal.SIGINT]
