"""Gradients as values: compute them, summarise them, compare them.

In PyTorch, ``loss.backward()`` leaves gradients in ``.grad`` buffers. In JAX the
gradient is returned: a pytree shaped exactly like the parameters, which can be
printed, saved, compared and plotted like any other value. This module is the toolbox
for that (:func:`loss_and_gradients` comes from :mod:`jaxcnn.training.step`, and
:func:`layer_norms` and :func:`update_ratios`, which also run inside the compiled step,
from :mod:`jaxcnn.trees`), and ``python -m jaxcnn.grads`` shows the
gradient of a checkpoint.

>>> import jax.numpy as jnp
>>> tree = {"out": {"bias": jnp.array([0.0, 0.0]), "kernel": jnp.array([[3.0], [-4.0]])}}
>>> print(format_table(summarize(tree)))
leaf        shape      L2 norm        RMS     max |g|   zeros
out/bias    (2,)      0.000000   0.000000    0.000000  100.0%
out/kernel  (2, 1)    5.000000   3.535534    4.000000    0.0%
>>> global_norm(tree)
5.0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxcnn.training.step import loss_and_gradients
from jaxcnn.trees import layer_norms, named_leaves, update_ratios

__all__ = [
    "LeafDifference",
    "LeafStats",
    "compare",
    "format_table",
    "global_norm",
    "layer_norms",
    "loss_and_gradients",
    "save_npz",
    "summarize",
    "update_ratios",
]

PyTree = Any


@dataclasses.dataclass(frozen=True)
class LeafStats:
    """Summary of one leaf of a pytree (of gradients, parameters or updates).

    Attributes:
        path: where the leaf sits, as ``conv1/conv/kernel``.
        shape: the leaf's shape.
        l2_norm: sqrt of the sum of squares.
        rms: sqrt of the mean of squares.
        max_abs: largest absolute value.
        zero_fraction: share of elements exactly 0 (for a gradient: the share that ReLU
            masks and max-pool routing cut off).
    """

    path: str
    shape: tuple[int, ...]
    l2_norm: float
    rms: float
    max_abs: float
    zero_fraction: float


@dataclasses.dataclass(frozen=True)
class LeafDifference:
    """How two pytrees differ at one leaf.

    ``max_relative`` is ``max_abs`` divided by the largest magnitude in the second
    tree's leaf (the reference), so it reads as "agrees to about this many parts".
    """

    path: str
    max_abs: float
    max_relative: float


def summarize(tree: PyTree) -> list[LeafStats]:
    """Return a :class:`LeafStats` for every leaf of ``tree``, in tree order.

    >>> import jax.numpy as jnp
    >>> [s.zero_fraction for s in summarize({"a": jnp.array([0.0, 1.0, 0.0, 2.0])})]
    [0.5]
    """
    stats = []
    for path, leaf in named_leaves(tree):
        values = np.asarray(leaf, np.float64)
        stats.append(
            LeafStats(
                path=path,
                shape=tuple(values.shape),
                l2_norm=float(np.sqrt(np.sum(values**2))),
                rms=float(np.sqrt(np.mean(values**2))) if values.size else 0.0,
                max_abs=float(np.max(np.abs(values))) if values.size else 0.0,
                zero_fraction=float(np.mean(values == 0)) if values.size else 0.0,
            )
        )
    return stats


def global_norm(tree: PyTree) -> float:
    """Return the L2 norm of all leaves of ``tree`` together (what gradient clipping uses)."""
    return float(np.sqrt(sum(s.l2_norm**2 for s in summarize(tree))))


def compare(a: PyTree, b: PyTree) -> list[LeafDifference]:
    """Compare two pytrees of the same structure leaf by leaf; ``b`` is the reference.

    >>> import jax.numpy as jnp
    >>> compare({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([1.0, 2.5])})
    [LeafDifference(path='w', max_abs=0.5, max_relative=0.2)]
    """
    differences = []
    for (path, leaf_a), (_, leaf_b) in zip(named_leaves(a), named_leaves(b), strict=True):
        x, y = np.asarray(leaf_a, np.float64), np.asarray(leaf_b, np.float64)
        max_abs = float(np.max(np.abs(x - y))) if x.size else 0.0
        scale = float(np.max(np.abs(y))) if y.size else 0.0
        differences.append(LeafDifference(path, max_abs, max_abs / scale if scale else max_abs))
    return differences


def format_table(stats: Sequence[LeafStats]) -> str:
    """Return ``stats`` as an aligned text table, one leaf per row."""
    path_width = max(len("leaf"), *(len(s.path) for s in stats))
    shape_width = max(len("shape"), *(len(str(s.shape)) for s in stats))
    header = ["leaf".ljust(path_width), "shape".ljust(shape_width), ""]
    lines = ["  ".join(header) + f"{'L2 norm':>10} {'RMS':>10} {'max |g|':>11} {'zeros':>7}"]
    for s in stats:
        lines.append(
            f"{s.path:<{path_width}}  {s.shape!s:<{shape_width}}  {s.l2_norm:>10.6f} "
            f"{s.rms:>10.6f} {s.max_abs:>11.6f} {100 * s.zero_fraction:>6.1f}%"
        )
    return "\n".join(lines)


def save_npz(path: Path, tree: PyTree) -> None:
    """Save ``tree``'s leaves to an ``.npz`` file, keyed by their paths."""
    np.savez(path, **{name: np.asarray(leaf) for name, leaf in named_leaves(tree)})
