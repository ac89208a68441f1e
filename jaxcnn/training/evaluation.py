"""Evaluating a state over a whole split: padded batches placed on the devices, exact totals."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax

from jaxcnn import data
from jaxcnn.training.parallel import Placement, host_value
from jaxcnn.training.state import TrainState
from jaxcnn.training.step import Batch, Metrics

EvalFn = Callable[[TrainState, Batch], Metrics]


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Totals over a whole split, each example counted once."""

    loss: float
    accuracy: float
    correct: int
    count: int


def evaluate(eval_fn: EvalFn, state: TrainState, batches: Sequence[Batch]) -> EvalResult:
    """Return loss and accuracy of ``state`` over all ``batches`` (a whole split, padded)."""
    results = [eval_fn(state, batch) for batch in batches]  # dispatch all, then read back
    totals = [jax.tree.map(host_value, result) for result in results]
    loss_sum = sum(float(t["loss_sum"]) for t in totals)
    correct = sum(int(t["correct"]) for t in totals)
    count = sum(int(t["count"]) for t in totals)
    return EvalResult(loss=loss_sum / count, accuracy=correct / count, correct=correct, count=count)


def placed_eval_batches(split: data.Split, batch_size: int, placement: Placement) -> list[Batch]:
    """Return ``split`` as padded batches on ``placement``'s mesh, for :func:`evaluate`.

    The batch size is rounded up to a multiple of the device count; padding is masked,
    so every example still counts once.
    """
    size = placement.round_up(batch_size)
    rows = placement.local_rows(size)
    return [
        placement.put_batch({key: value[rows] for key, value in batch.items()}, size)
        for batch in data.fixed_batches(split, size)
    ]
