"""SIGINT and SIGTERM inside the training loop: a stop request, unless the signal is ignored."""

import os
import signal

import pytest

from jaxcnn.training.signals import StopRequest, stop_on_signals


@pytest.fixture
def sigint_ignored():
    """SIGINT ignored, as in a job started with ``&`` by a script or under ``nohup``."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGINT, previous)


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
    with stop_on_signals(request):
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        assert not request()
        os.kill(os.getpid(), signal.SIGTERM)
        assert request.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
