"""The optimizer and its learning-rate schedule, built from the config.

The tutorial's optimizer is ``optim.Adam(lr=0.001)``: :func:`create_optimizer` returns
``optax.adam`` with a constant rate for it. The fast recipe (``--recipe fast``) uses a
one-cycle schedule instead: the rate rises from ``learning_rate / 25`` to
``learning_rate`` over the first quarter of training and then anneals (cosine) to
nearly zero at the last step, the schedule of Smith and Topin's "super-convergence".
"""

from __future__ import annotations

import optax

from jaxcnn import data
from jaxcnn.config import TrainConfig
from jaxcnn.training.timetable import Timetable


def planned_steps(config: TrainConfig) -> int:
    """Return the number of steps of ``config``'s whole run (its epochs, or max steps)."""
    return Timetable.of(config, data.DATASETS[config.dataset].train_size).total_steps


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    """Return the learning rate as a function of the step count (from 0)."""
    if config.schedule == "constant":
        return optax.constant_schedule(config.learning_rate)
    return optax.cosine_onecycle_schedule(
        transition_steps=max(planned_steps(config), 1),
        peak_value=config.learning_rate,
        pct_start=0.25,
        div_factor=25.0,
        final_div_factor=1e3,
    )


def create_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Return Adam with ``config``'s learning rate or schedule.

    A constant rate is passed as a number, which is exactly the tutorial's optimizer
    (and keeps checkpoints of constant-rate runs unchanged); a schedule adds a step
    counter to Adam's state.
    """
    if config.schedule == "constant":
        return optax.adam(config.learning_rate)
    return optax.adam(learning_rate_schedule(config))
