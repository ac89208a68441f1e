"""The training configuration: one frozen dataclass, checked before anything runs."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jaxcnn.data import DATASETS
from jaxcnn.models import MODELS, uses_batch_statistics


class UsageError(Exception):
    """A flag or input is wrong; the message names it and says what is expected."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a training run; the defaults are the seed tutorial's.

    Attributes:
        model: a key of :data:`jaxcnn.models.MODELS`.
        dataset: a key of :data:`jaxcnn.data.DATASETS`.
        epochs: passes over the training set.
        batch_size: training examples per step.
        learning_rate: Adam's step size.
        seed: seeds the parameter initialisation and every epoch's shuffle.
        log_every: batches between log lines, each with a pass over the test set.
        max_steps: stop after this many steps in all (None: run every epoch).
        eval_batch_size: test examples per evaluation batch.
        checkpoint_every: steps between checkpoints (None: at each epoch's end).
        keep: newest checkpoints to keep.
        log_grads: measure gradient statistics at log points.
        schedule: the learning rate over the run, one of :data:`SCHEDULES`.
        loop: how the steps between sync points run, one of :data:`LOOPS`.
        chunks: independent parts each batch is computed in (None: chosen per backend,
            see :func:`jaxcnn.loop.resolve_chunks`).

    """

    model: str = "cnn"
    dataset: str = "mnist"
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    log_every: int = 100
    max_steps: int | None = None
    eval_batch_size: int = 1000
    checkpoint_every: int | None = None
    keep: int = 3
    log_grads: bool = False
    schedule: str = "constant"
    loop: str = "auto"
    chunks: int | None = None

    def validate(self) -> TrainConfig:
        """Return ``self`` if every field is usable.

        Raises:
            UsageError: naming the first flag that is wrong and why.

        """
        checks = [
            (self.model in MODELS, "--model", f"must be one of {', '.join(MODELS)}"),
            (self.dataset in DATASETS, "--dataset", f"must be one of {', '.join(DATASETS)}"),
            (self.epochs >= 0, "--epochs", "must be 0 or more"),
            (self.batch_size > 0, "--batch-size", "must be a positive integer"),
            (
                math.isfinite(self.learning_rate) and self.learning_rate > 0,
                "--learning-rate",
                "must be a finite number greater than 0",
            ),
            (self.log_every > 0, "--log-every", "must be a positive integer"),
            (self.max_steps is None or self.max_steps >= 0, "--max-steps", "must be 0 or more"),
            (self.eval_batch_size > 0, "--eval-batch-size", "must be a positive integer"),
            (
                self.checkpoint_every is None or self.checkpoint_every > 0,
                "--checkpoint-every",
                "must be a positive integer",
            ),
            (self.keep > 0, "--keep", "must be a positive integer"),
            (self.schedule in SCHEDULES, "--schedule", f"must be one of {', '.join(SCHEDULES)}"),
            (self.loop in LOOPS, "--loop", f"must be one of {', '.join(LOOPS)}"),
            (
                self.chunks is None or 1 <= self.chunks <= self.batch_size,
                "--chunks",
                f"must be 'auto' or an integer from 1 to the batch size ({self.batch_size})",
            ),
        ]
        for ok, flag, problem in checks:
            if not ok:
                value = getattr(self, flag[2:].replace("-", "_"))
                raise UsageError(f"{flag} {value!r}: {problem}")
        if self.chunks not in (None, 1) and uses_batch_statistics(self.model):
            raise UsageError(
                f"--chunks {self.chunks}: {self.model} has BatchNorm, whose statistics "
                "need the whole batch; use 1 or auto"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Return the config that :meth:`to_dict` wrote (unknown keys are ignored)."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})

    def differences(self, other: TrainConfig) -> list[str]:
        """Return ``flag: mine -> other's`` for each hyperparameter that differs.

        Only the fields that change what a resumed run computes count; the length of the
        run (epochs, max steps), logging and checkpointing may change between runs.
        """
        names = HYPERPARAMETERS + (("epochs", "max_steps") if self.schedule != "constant" else ())
        return [
            f"--{name.replace('_', '-')}: {getattr(self, name)!r} -> {getattr(other, name)!r}"
            for name in names
            if getattr(self, name) != getattr(other, name)
        ]


#: The fields a resumed run must share with the run it continues (and, with a schedule
#: other than constant, whose length follows the run's, its epochs and max steps).
HYPERPARAMETERS = ("model", "dataset", "batch_size", "learning_rate", "seed", "schedule")

#: Learning-rate schedules (see :mod:`jaxcnn.optim`).
SCHEDULES = ("constant", "one-cycle")

#: The ways to run the steps between two sync points: ``python`` dispatches one compiled
#: step at a time; ``scan`` runs them as one compiled loop over device-resident data;
#: ``auto`` picks ``python`` on CPUs (where XLA runs convolutions inside a compiled
#: loop many times slower) and ``scan`` on GPUs and TPUs.
LOOPS = ("auto", "python", "scan")

#: Named sets of hyperparameters for ``--recipe``; flags given explicitly win.
RECIPES: dict[str, dict[str, Any]] = {
    "seed": {"epochs": 3, "batch_size": 64, "learning_rate": 1e-3, "schedule": "constant"},
    "fast": {"epochs": 3, "batch_size": 128, "learning_rate": 4e-3, "schedule": "one-cycle"},
}
