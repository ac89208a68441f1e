"""Training curves of a run, drawn from its ``metrics.jsonl`` (``python -m jaxcnn.plot``).

``loss.png`` (batch loss and test loss), ``accuracy.png`` (running train accuracy and
test accuracy) and, for runs trained with ``--log-grads``, ``gradients.png`` (each
layer's gradient norm and update-to-parameter ratio), all against the training step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt

from jaxcnn.errors import UsageError
from jaxcnn.training import workdir

#: The fields of each record that the loss and accuracy curves draw.
PLOTTED = ("loss", "test_loss", "train_accuracy", "test_accuracy")


def read_records(path: Path) -> list[dict[str, Any]]:
    """Return the records of ``path/metrics.jsonl``.

    Raises:
        UsageError: the work dir or its metrics are missing, empty or unreadable.
    """
    metrics = path / workdir.METRICS
    if not metrics.is_file():
        raise UsageError(f"--workdir {str(path)!r} has no {workdir.METRICS}")
    records = workdir.read_metrics(path, required=PLOTTED)
    if not records:
        raise UsageError(f"{metrics} is empty: the run has not logged yet")
    return records


def _save(figure: plt.Figure, path: Path) -> Path:
    """Write ``figure`` to ``path`` as PNG and close it."""
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_curves(records: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """Draw loss and accuracy against the step; return the files written."""
    steps = [r["step"] for r in records]
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(steps, [r["loss"] for r in records], label="batch loss (train)")
    axes.plot(steps, [r["test_loss"] for r in records], label="test loss")
    axes.set(xlabel="step", ylabel="cross-entropy", yscale="log", title="Loss")
    axes.legend()
    written = [_save(figure, out / "loss.png")]
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(steps, [100 * r["train_accuracy"] for r in records], label="train (running)")
    axes.plot(steps, [100 * r["test_accuracy"] for r in records], label="test")
    axes.set(xlabel="step", ylabel="accuracy (%)", title="Accuracy")
    axes.legend()
    written.append(_save(figure, out / "accuracy.png"))
    return written


def plot_gradients(records: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """Draw each layer's gradient norm and update ratio, if the run logged them."""
    logged = [r for r in records if "grad_norm" in r]
    if not logged:
        return []
    steps = [r["step"] for r in logged]
    figure, (norms, ratios) = plt.subplots(1, 2, figsize=(11, 4))
    for layer in logged[0]["grad_norm"]:
        norms.plot(steps, [r["grad_norm"][layer] for r in logged], label=layer)
        ratios.plot(steps, [r["update_ratio"][layer] for r in logged], label=layer)
    norms.set(xlabel="step", ylabel="L2 norm", yscale="log", title="Gradient norm per layer")
    ratios.set(xlabel="step", ylabel="|update| / |param|", yscale="log",
               title="Update-to-parameter ratio")  # fmt: skip
    norms.legend()
    ratios.legend()
    return [_save(figure, out / "gradients.png")]
