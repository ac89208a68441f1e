"""Knowing before the first step whether a run fits: batch sizes and memory.

A batch larger than its split is refused, so a mistyped ``--batch-size`` never becomes a
huge padded allocation. Then, once the steps are compiled, XLA's own account of each
compiled step (``memory_analysis()``: arguments, outputs, temporaries) plus the data the
loop keeps on the devices is compared with the memory the process can still use: the
host's available RAM (and its cgroup's limit) on a CPU, the device's free memory on a
GPU or TPU, or ``$JAXCNN_MEMORY_LIMIT`` if that is lower. A run that cannot fit stops
there, before it writes anything, instead of being killed for memory an hour later.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax

from jaxcnn import data
from jaxcnn.config import TrainConfig
from jaxcnn.errors import UsageError
from jaxcnn.training.compile import CompiledSteps
from jaxcnn.training.parallel import Placement
from jaxcnn.training.state import TrainState

#: Environment variable capping the memory a run may plan to use, e.g. ``8G`` or ``512M``.
MEMORY_LIMIT_ENV = "JAXCNN_MEMORY_LIMIT"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
GIB = 2**30


def check_batch_sizes(config: TrainConfig, splits: dict[str, data.Split]) -> None:
    """Refuse a training or evaluation batch larger than its split.

    Raises:
        UsageError: naming the flag, its value and the split's size.
    """
    check_batch_size("--batch-size", config.batch_size, config.dataset, "train", splits["train"])
    check_batch_size(
        "--eval-batch-size", config.eval_batch_size, config.dataset, "test", splits["test"]
    )


def check_batch_size(flag: str, size: int, dataset: str, name: str, split: data.Split) -> None:
    """Refuse a batch of ``size`` larger than ``split`` (``train`` or ``test`` of ``dataset``).

    Raises:
        UsageError: naming ``flag``, its value and the split's size.
    """
    examples = len(split)
    if size > examples:
        kind = "training" if name == "train" else "test"
        raise UsageError(
            f"{flag} {size} is larger than the {kind} split of {dataset} "
            f"({examples} examples); use at most {examples}"
        )


def parse_bytes(text: str) -> int:
    """Parse a size such as ``1073741824``, ``512M``, ``1.5G`` or ``2GiB`` into bytes.

    Raises:
        UsageError: ``text`` is not such a size.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise UsageError(
            f"${MEMORY_LIMIT_ENV} {text!r} is not a size; write it like 8G, 512M or 1073741824"
        )
    return int(float(match[1]) * _UNITS[match[2].upper()])


def host_available_bytes() -> int | None:
    """Return the RAM this process can still use: the system's and its cgroup's, if known."""
    candidates = []
    try:
        meminfo = Path("/proc/meminfo").read_text()
        available = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.MULTILINE)
        if available:
            candidates.append(int(available[1]) * 1024)
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            candidates.append(int(limit) - int(used))
    except (OSError, ValueError):
        pass
    return min(candidates) if candidates else None


def available_bytes(device: Any) -> tuple[int | None, str]:
    """Return the memory a run may still use on ``device``, and where that figure comes from."""
    if device.platform == "cpu":
        measured, source = host_available_bytes(), "available host memory"
    else:
        stats = device.memory_stats() or {}
        limit = stats.get("bytes_limit")
        measured = None if limit is None else limit - stats.get("bytes_in_use", 0)
        source = f"free memory of {device}"
    cap = os.environ.get(MEMORY_LIMIT_ENV)
    limit = parse_bytes(cap) if cap else None
    if limit is not None and (measured is None or limit < measured):
        return limit, f"${MEMORY_LIMIT_ENV}={cap}"
    return measured, source


def executable_bytes(executable: Any) -> int:
    """Return what one compiled function holds while it runs, by XLA's memory analysis."""
    analysis = getattr(executable, "memory_analysis", lambda: None)()
    if analysis is None:  # not compiled ahead of time (--debug-nans), or not reported
        return 0
    return (
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )


def kept_data_bytes(config: TrainConfig, splits: dict[str, data.Split], scan: bool) -> int:
    """Return the bytes of data the loop keeps on a device.

    That is the test batches, and for ``--loop scan`` the training split too.
    """
    test = splits["test"]
    batches = data.steps_per_epoch(len(test), config.eval_batch_size)
    per_example = test.images[0].nbytes + test.labels.itemsize + 4  # image, label, mask
    kept = batches * config.eval_batch_size * per_example
    if scan:
        kept += splits["train"].images.nbytes + splits["train"].labels.nbytes
    return kept


def check_memory(
    config: TrainConfig,
    splits: dict[str, data.Split],
    compiled: CompiledSteps,
    state: TrainState,
    placement: Placement,
) -> None:
    """Stop a run whose compiled steps and data cannot fit in the memory it can use.

    The state is already allocated when this runs, so it counts against what is left
    only through the steps' outputs and temporaries. On a CPU all local devices share
    the host's memory.

    Raises:
        UsageError: one line: what the run needs, what there is, and what to lower.
    """
    device = placement.mesh.devices.flat[0]
    available, source = available_bytes(device)
    if available is None:
        return
    functions = [compiled.step, compiled.step_with_grad_stats, compiled.eval]
    functions += list((compiled.scans or {}).values())
    state_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    step_bytes = max(executable_bytes(function) for function in _present(functions))
    needed = max(step_bytes - state_bytes, 0) + kept_data_bytes(
        config, splits, compiled.scans is not None
    )
    if device.platform == "cpu":
        needed *= len(jax.local_devices())
    if needed > available:
        raise UsageError(
            f"--model {config.model} at --batch-size {config.batch_size} and "
            f"--eval-batch-size {config.eval_batch_size} needs about {needed / GIB:.2f} GiB "
            f"(XLA's memory analysis of the compiled steps plus the data kept on the device) "
            f"but {source} allows {available / GIB:.2f} GiB; lower --batch-size or "
            "--eval-batch-size, or choose a smaller --model"
        )


def _present(functions: Iterable[Any]) -> list[Any]:
    """Return the functions that exist (``step_with_grad_stats`` may be None)."""
    return [function for function in functions if function is not None]
