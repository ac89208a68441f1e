"""``python -m jaxcnn.evaluate``: test loss, accuracy, per-class accuracy and confusion matrix.

Restores a checkpoint of a run (the newest, or ``--step N``) and evaluates it on the
whole test set of the run's dataset, each image counted once. With ``--gallery PNG`` it
also draws the misclassified test images, most confident first (see jaxcnn.inspection.gallery).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxcnn import cli, data
from jaxcnn.config import TrainConfig
from jaxcnn.errors import UsageError
from jaxcnn.inspection import gallery
from jaxcnn.training import workdir
from jaxcnn.training.evaluation import EvalResult, evaluate
from jaxcnn.training.state import TrainState
from jaxcnn.training.step import Batch, eval_step, predict_logits

PROG = "python -m jaxcnn.evaluate"


def build_parser() -> cli.ArgumentParser:
    """Return the command-line parser."""
    parser = cli.checkpoint_command_parser(
        PROG,
        "Evaluate a checkpoint of a jaxcnn run on the whole test set: loss, "
        "accuracy, per-class accuracy and the confusion matrix (rows: true class, columns: "
        "predicted class).",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--gallery",
        metavar="PNG",
        help="also save a grid of the misclassified test images to this new .png file, "
        "the most confident mistakes first, each with its true and predicted class and "
        "the model's probability; an existing file is refused, never overwritten",
    )
    parser.add_argument(
        "--gallery-max",
        type=int,
        default=gallery.DEFAULT_LIMIT,
        metavar="N",
        help="draw at most N mistakes, the most confident ones (default: %(default)s)",
    )
    return parser


def predict_probabilities(
    state: TrainState, batches: Sequence[Batch]
) -> tuple[np.ndarray, np.ndarray]:
    """Return the class probabilities (N, classes) and the true class of every real example."""
    predict = jax.jit(lambda state, images: jax.nn.softmax(predict_logits(state, images)))
    probabilities, labels = [], []
    for batch in batches:
        real = batch["mask"] > 0
        probabilities.append(np.asarray(predict(state, batch["image"]))[real])
        labels.append(batch["label"][real])
    return np.concatenate(probabilities), np.concatenate(labels)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Return counts ``[true, predicted]`` of shape (num_classes, num_classes)."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def build_report(
    config: TrainConfig, step: int, totals: EvalResult, matrix: np.ndarray
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
    if "gallery" in report:
        drawn = report["gallery"]
        lines += [
            "",
            f"wrote {drawn['path']}: {drawn['drawn']} of {drawn['mistakes']} misclassified "
            "test images, most confident first",
        ]
    return "\n".join(lines)


def write_gallery(
    path: Path,
    split: data.Split,
    mistakes: gallery.Mistakes,
    config: TrainConfig,
    title: str,
) -> dict[str, Any]:
    """Draw ``mistakes`` of the test ``split`` into a new PNG; return what was drawn."""
    names = data.DATASETS[config.dataset].class_names
    picture = gallery.draw(split.images[mistakes.indices], mistakes, names, title)
    gallery.save(picture, mistakes, path)
    return {"path": str(path), "drawn": len(mistakes.indices), "mistakes": mistakes.total}


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate a run's checkpoint; return the process exit code."""
    args = build_parser().parse_args(argv)
    cli.prepare_jax()  # the XLA:CPU switches and the compilation cache
    target = Path(args.gallery) if args.gallery else None
    if target is not None:
        cli.check_new_file("--gallery", target, ".png")
    if args.gallery_max <= 0:
        raise UsageError(f"--gallery-max {args.gallery_max}: must be a positive integer")
    config, state, _, step = workdir.restore_run(args.workdir, args.step)
    splits = cli.load_data(args, config.dataset, ("test",))
    batches = data.fixed_batches(splits["test"], config.eval_batch_size)
    totals = evaluate(jax.jit(eval_step), state, batches)
    probabilities, labels = predict_probabilities(state, batches)
    num_classes = data.DATASETS[config.dataset].num_classes
    matrix = confusion_matrix(labels, probabilities.argmax(-1), num_classes)
    report = build_report(config, step, totals, matrix)
    if target is not None:
        mistakes = gallery.find_mistakes(probabilities, labels, args.gallery_max)
        title = (
            f"{len(mistakes.indices)} of {mistakes.total} misclassified test images, most "
            f"confident first: {config.model} on {config.dataset}, step {step} of {args.workdir}"
        )
        report["gallery"] = write_gallery(target, splits["test"], mistakes, config, title)
    print(json.dumps(report, indent=2) if args.json else format_report(report, args.workdir))
    return 0


cli_main = cli.run_command(PROG, main)

if __name__ == "__main__":
    cli.exit_process(cli_main())
