"""``python -m jaxcnn.evaluate``: test loss, accuracy, per-class accuracy and confusion matrix.

Restores a checkpoint of a run (the newest, or ``--step N``) and evaluates it on the
whole test set of the run's dataset, each image counted once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxcnn import data, loop, steps, workdir
from jaxcnn.cli import (
    ArgumentParser,
    add_data_flags,
    add_restore_flags,
    exit_process,
    load_data,
    run_command,
)
from jaxcnn.config import TrainConfig

PROG = "python -m jaxcnn.evaluate"


def build_parser() -> ArgumentParser:
    """Return the command-line parser."""
    parser = ArgumentParser(
        prog=PROG,
        description="Evaluate a checkpoint of a jaxcnn run on the whole test set: loss, "
        "accuracy, per-class accuracy and the confusion matrix (rows: true class, columns: "
        "predicted class).",
    )
    add_restore_flags(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_data_flags(parser)
    return parser


def predict_classes(
    state: steps.TrainState, batches: Sequence[steps.Batch]
) -> tuple[np.ndarray, np.ndarray]:
    """Return the predicted and the true class of every real example in ``batches``."""
    predict = jax.jit(lambda state, images: steps.predict_logits(state, images).argmax(-1))
    predicted, labels = [], []
    for batch in batches:
        real = batch["mask"] > 0
        predicted.append(np.asarray(predict(state, batch["image"]))[real])
        labels.append(batch["label"][real])
    return np.concatenate(predicted), np.concatenate(labels)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Return counts ``[true, predicted]`` of shape (num_classes, num_classes)."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def build_report(
    config: TrainConfig, step: int, totals: loop.EvalResult, matrix: np.ndarray
) -> dict[str, Any]:
    """Return the evaluation as a JSON-ready dict."""
    names = data.DATASETS[config.dataset].class_names
    per_class = np.diag(matrix) / np.maximum(matrix.sum(axis=1), 1)
    return {
        "step": step,
        "dataset": config.dataset,
        "model": config.model,
        "test_loss": totals.loss,
        "test_accuracy": totals.accuracy,
        "correct": totals.correct,
        "count": totals.count,
        "class_names": list(names),
        "per_class_accuracy": dict(zip(names, per_class.tolist(), strict=True)),
        "confusion_matrix": matrix.tolist(),
    }


def format_report(report: dict[str, Any], workdir_name: str) -> str:
    """Return the report as text: totals, per-class accuracy, then the confusion matrix."""
    names = report["class_names"]
    matrix = np.array(report["confusion_matrix"])
    width = max(6, *(len(name) for name in names))
    lines = [
        f"checkpoint step {report['step']} of {workdir_name} ({report['model']} on "
        f"{report['dataset']})",
        f"test loss {report['test_loss']:.4f}, accuracy {100 * report['test_accuracy']:.2f}% "
        f"({report['correct']}/{report['count']})",
        "",
        "per-class accuracy:",
    ]
    for index, name in enumerate(names):
        accuracy = report["per_class_accuracy"][name]
        lines.append(
            f"  {name:>{width}}  {100 * accuracy:6.2f}%  ({matrix[index, index]}/"
            f"{matrix[index].sum()})"
        )
    lines += ["", "confusion matrix (rows: true class, columns: predicted class):"]
    lines.append(" " * (width + 2) + "".join(f"{i:>6}" for i in range(len(names))))
    for index, name in enumerate(names):
        lines.append(f"  {name:>{width}}" + "".join(f"{count:>6}" for count in matrix[index]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate a run's checkpoint; return the process exit code."""
    args = build_parser().parse_args(argv)
    config, state, _, step = workdir.restore_run(args.workdir, args.step)
    splits = load_data(args, config.dataset, ("test",))
    batches = data.fixed_batches(splits["test"], config.eval_batch_size)
    totals = loop.evaluate(jax.jit(steps.eval_step), state, batches)
    predicted, labels = predict_classes(state, batches)
    num_classes = data.DATASETS[config.dataset].num_classes
    report = build_report(config, step, totals, confusion_matrix(labels, predicted, num_classes))
    print(json.dumps(report, indent=2) if args.json else format_report(report, args.workdir))
    return 0


cli_main = run_command(PROG, main)

if __name__ == "__main__":
    exit_process(cli_main())
