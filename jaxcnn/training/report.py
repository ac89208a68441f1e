"""What a run says about itself: the tutorial's log line, ``metrics.jsonl`` and ``summary.json``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax

from jaxcnn.config import TrainConfig
from jaxcnn.training import workdir
from jaxcnn.training.checkpoints import tree_sha256
from jaxcnn.training.loop import LogRecord, TrainResult
from jaxcnn.training.parallel import Placement


def format_log_line(record: LogRecord, num_train: int, steps_per_epoch: int) -> str:
    """Return the tutorial's log line for ``record`` (its fields, in English)."""
    percent = 100.0 * record.batch / steps_per_epoch
    return (
        f"epoch {record.epoch} [{record.images_seen}/{num_train} ({percent:.0f}%)]\t"
        f"loss: {record.loss:.6f}\t"
        f"train accuracy: {100 * record.train_accuracy:.2f}%\t"
        f"test accuracy: {100 * record.test_accuracy:.2f}%"
    )


def format_grad_line(record: LogRecord) -> str:
    """Return the ``--log-grads`` line: each layer's gradient norm and update ratio."""
    norms = "  ".join(f"{layer} {value:.4f}" for layer, value in record.grad_norm.items())
    ratios = "  ".join(f"{layer} {value:.1e}" for layer, value in record.update_ratio.items())
    return f"\tgradient norm: {norms}\t|update|/|param|: {ratios}"


def metrics_fields(record: LogRecord) -> dict[str, Any]:
    """Return the fields of ``record`` that ``metrics.jsonl`` keeps.

    The timing is left out: a resumed run would not reproduce it.
    """
    return {
        key: value
        for key, value in dataclasses.asdict(record).items()
        if value is not None and key != "step_seconds"
    }


@dataclasses.dataclass(frozen=True)
class RunFacts:
    """How a run was computed, for ``summary.json``: what the flags left to the backend."""

    compile_seconds: float
    loop: str
    chunks: int
    placement: Placement


def write_summary(path: Path, config: TrainConfig, result: TrainResult, facts: RunFacts) -> None:
    """Write ``summary.json`` and print the closing line."""
    summary = {
        "test_accuracy": result.test.accuracy,
        "test_loss": result.test.loss,
        "steps": result.steps,
        "epochs": result.epochs,
        "train_seconds": result.train_seconds,
        "test_pass_seconds": result.test_pass_seconds,
        "compile_seconds": facts.compile_seconds,
        "backend": jax.default_backend(),
        "devices": [str(device) for device in facts.placement.mesh.devices.flat],
        "processes": facts.placement.num_processes,
        "loop": facts.loop,
        "chunks": facts.chunks,
        "params_sha256": tree_sha256(result.state.params),
        "config": config.to_dict(),
    }
    workdir.write_json(path / workdir.SUMMARY, summary)
    print(
        f"done: {result.steps} steps, test accuracy {100 * result.test.accuracy:.2f}%, "
        f"test loss {result.test.loss:.4f}, {result.train_seconds:.1f} s training; "
        f"wrote {path}",
        flush=True,
    )
