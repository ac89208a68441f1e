"""The training configuration: one frozen dataclass, each flag declared once.

Every field of :class:`TrainConfig` is a flag of ``python -m jaxcnn.train``: its default,
its help text and how it is parsed are written here only, in the field's ``metadata``
(see :func:`flag`); :func:`jaxcnn.cli.add_config_flags` builds the flags from them, and
the README's flag table is made from those flags (:func:`jaxcnn.cli.flag_table`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from typing import Any

from jaxcnn.data import DATASETS
from jaxcnn.errors import UsageError
from jaxcnn.models import MODELS, uses_batch_statistics

#: Learning-rate schedules (see :mod:`jaxcnn.training.optim`).
SCHEDULES = ("constant", "one-cycle")

#: The ways to run the steps between two sync points: ``python`` dispatches one compiled
#: step at a time; ``scan`` runs them as one compiled loop over device-resident data;
#: ``auto`` picks ``python`` on CPUs (where XLA runs convolutions inside a compiled
#: loop many times slower) and ``scan`` on GPUs and TPUs.
LOOPS = ("auto", "python", "scan")


def positive_int(text: str) -> int:
    """Parse a positive integer."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def parse_chunks(text: str) -> int | None:
    """Return ``--chunks``'s value: None for ``auto``, else the positive integer given."""
    if text == "auto":
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'auto' or a positive integer") from None


def flag(
    default: Any,
    help: str,
    *,
    parse: Callable[[str], Any] | None = None,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
    shown_default: str | None = None,
    from_recipe: bool = False,
) -> Any:
    """Declare a config field and its flag: the default, the help, and how to parse it.

    Args:
        default: the field's default.
        help: what the flag does, without its default (added from ``default``).
        parse: turns the flag's text into the value (default: from the field's type).
        choices: the values allowed, listed by ``--help``.
        metavar: the value's name in ``--help``.
        shown_default: how ``--help`` shows the default (default: the default itself).
        from_recipe: the default comes from ``--recipe`` (see :data:`RECIPES`).
    """
    metadata = {
        "help": help,
        "parse": parse,
        "choices": choices,
        "metavar": metavar,
        "shown_default": shown_default,
        "from_recipe": from_recipe,
    }
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a training run; the defaults are the PyTorch tutorial's.

    Each field's meaning is the ``help`` of its :func:`flag`, shown by
    ``python -m jaxcnn.train --help``.
    """

    model: str = flag("cnn", f"network: {', '.join(MODELS)}", metavar="NAME")
    dataset: str = flag("mnist", f"tfds dataset: {', '.join(DATASETS)}", metavar="NAME")
    epochs: int = flag(
        3,
        "passes over the training set (0 evaluates the initial weights)",
        from_recipe=True,
        metavar="N",
    )
    batch_size: int = flag(
        64, "training examples per step, across all devices", from_recipe=True, metavar="B"
    )
    learning_rate: float = flag(
        1e-3,
        "Adam's learning rate; with a one-cycle schedule its peak",
        from_recipe=True,
        metavar="LR",
    )
    seed: int = flag(
        0,
        "seeds the initial weights and every epoch's shuffle; the same seed gives the same run",
        metavar="S",
    )
    log_every: int = flag(
        100, "batches between log lines; each one also evaluates the whole test set", metavar="K"
    )
    max_steps: int | None = flag(
        None, "stop after this many training steps in all", shown_default="no limit", metavar="N"
    )
    eval_batch_size: int = flag(1000, "test examples per evaluation batch", metavar="B")
    checkpoint_every: int | None = flag(
        None,
        "steps between checkpoints; one is also written when training ends or is interrupted",
        shown_default="one at the end of every epoch",
        metavar="STEPS",
    )
    keep: int = flag(
        3, "newest checkpoints to keep; the best by test accuracy is kept besides", metavar="N"
    )
    log_grads: bool = flag(
        False,
        "add each layer's gradient norm and update-to-parameter "
        "ratio to every log line, metrics.jsonl and TensorBoard (computed "
        "at log points only)",
    )
    schedule: str = flag(
        "constant",
        "the learning rate over the run: constant, or one-cycle "
        "(warm up over the first quarter, then cosine down to nearly 0)",
        choices=SCHEDULES,
        from_recipe=True,
    )
    loop: str = flag(
        "auto",
        "how the steps between two log points run: 'python' dispatches "
        "one compiled step at a time, 'scan' runs them as one compiled lax.scan "
        "over the training set kept on the devices; 'auto' takes python on CPUs "
        "and scan on GPUs/TPUs",
        choices=LOOPS,
    )
    chunks: int | None = flag(
        None,
        "compute each batch in N independent parts, their gradients summed: the same step "
        "up to float rounding, which XLA:CPU runs on several cores at once; 'auto' takes 4 "
        "on one CPU device for a model without BatchNorm, else 1",
        parse=parse_chunks,
        metavar="{auto,N}",
        shown_default="auto",
    )

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

#: Named sets of defaults for ``--recipe``; flags given explicitly win. ``tutorial`` is the
#: PyTorch tutorial's: :class:`TrainConfig`'s own defaults. No run stores the recipe's name
#: (``config.json`` holds the values it chose), so a name can change without breaking a run.
RECIPES: dict[str, dict[str, Any]] = {
    "tutorial": {
        field.name: field.default
        for field in dataclasses.fields(TrainConfig)
        if field.metadata["from_recipe"]
    },
    "fast": {"epochs": 3, "batch_size": 128, "learning_rate": 4e-3, "schedule": "one-cycle"},
}

#: Recipe names that were changed, and their new names: ``seed`` was easily taken for
#: ``--seed``.
RENAMED_RECIPES = {"seed": "tutorial"}


def parse_recipe(text: str) -> str:
    """Return the recipe named ``text``; an old name is refused with its new one."""
    if text in RENAMED_RECIPES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is now called {RENAMED_RECIPES[text]!r} (the tutorial's settings)"
        )
    return text
