"""A progress bar per epoch on an interactive terminal, plain lines everywhere else.

The bar (tqdm's) shows the epoch, the steps done out of the epoch's, steps per second,
the time left in the epoch and the last loss known. It moves on the host's count of
steps dispatched (:meth:`EpochBars.advance`), so it never waits for the device; the
loss is the one read back at the last log point. Log lines are printed above it.
"""

from __future__ import annotations

from typing import Protocol, TextIO

from tqdm import tqdm


class Progress(Protocol):
    """What training reports its progress and log lines to."""

    def advance(self, steps_done: int) -> None:
        """Note that ``steps_done`` steps have been taken in all (per step or per scan)."""

    def show_loss(self, loss: float) -> None:
        """Show ``loss`` as the last known loss."""

    def write(self, line: str) -> None:
        """Print a log line."""

    def close(self) -> None:
        """End the display."""


class PlainLines:
    """No bar: each log line printed as it comes (pipes, files, CI, ``--no-progress``)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def advance(self, steps_done: int) -> None:
        """Do nothing: there is no bar."""

    def show_loss(self, loss: float) -> None:
        """Do nothing: there is no bar."""

    def write(self, line: str) -> None:
        """Print ``line`` and flush."""
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """Do nothing: there is no bar."""


class EpochBars:
    """One tqdm bar per epoch, left on screen when the epoch is done.

    Args:
        steps_in_epoch: steps in a whole epoch.
        total_steps: steps the run takes in all (the last epoch may stop short).
        start_step: steps already taken when the display starts (a resumed run).
        stream: the terminal.
    """

    def __init__(
        self, steps_in_epoch: int, total_steps: int, start_step: int, stream: TextIO
    ) -> None:
        self.steps_in_epoch = steps_in_epoch
        self.total_steps = total_steps
        self.stream = stream
        self._shown = start_step
        self._bar: tqdm | None = None
        self._loss: str = ""

    def advance(self, steps_done: int) -> None:
        """Move the bars to ``steps_done`` steps, closing each epoch's bar at its end."""
        while self._shown < steps_done:
            epoch = self._shown // self.steps_in_epoch
            epoch_end = min((epoch + 1) * self.steps_in_epoch, self.total_steps)
            if self._bar is None:
                self._bar = self._open(epoch, epoch_end)
            upto = min(steps_done, epoch_end)
            self._bar.update(upto - self._shown)
            self._shown = upto
            if upto == epoch_end:
                self._close_bar()

    def show_loss(self, loss: float) -> None:
        """Show ``loss`` on the bar from now on."""
        self._loss = f"loss {loss:.4f}"
        if self._bar is not None:
            self._bar.set_postfix_str(self._loss)

    def write(self, line: str) -> None:
        """Print ``line`` above the bar."""
        tqdm.write(line, file=self.stream)
        self.stream.flush()

    def close(self) -> None:
        """Close the open bar, if any."""
        self._close_bar()

    def _open(self, epoch: int, epoch_end: int) -> tqdm:
        """Return a new bar for ``epoch``, starting at the steps already shown."""
        first = epoch * self.steps_in_epoch
        bar = tqdm(
            total=epoch_end - first,
            initial=self._shown - first,
            desc=f"epoch {epoch}",
            unit="step",
            file=self.stream,
            dynamic_ncols=True,
            leave=True,
        )
        if self._loss:
            bar.set_postfix_str(self._loss)
        return bar

    def _close_bar(self) -> None:
        """Close the current bar, leaving it on screen."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def for_stream(
    wanted: bool, stream: TextIO, steps_in_epoch: int, total_steps: int, start_step: int
) -> Progress:
    """Return bars if ``wanted`` and ``stream`` is an interactive terminal, else plain lines."""
    if wanted and stream.isatty():
        return EpochBars(steps_in_epoch, total_steps, start_step, stream)
    return PlainLines(stream)
