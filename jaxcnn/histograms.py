"""Histograms of parameters and gradients, computed on the device inside a training step.

A training step with gradient statistics (``--log-grads``, at log points only) returns
for every parameter leaf the histogram of its weights and of its gradient, in the
fields of TensorBoard's ``HistogramProto`` (min, max, sum, sum of squares, bucket right
edges, bucket counts), which :mod:`jaxcnn.tb` writes. They are computed where the
arrays are, at a fixed number of buckets, so only a few numbers per leaf come back to
the host instead of the arrays (VGG-16 holds 15 million parameters). TensorBoard's own
``histogram_pb`` computes the same equal-width buckets, but in NumPy on the host and
into its tensor form, which ``EventAccumulator`` files under tensors, not histograms.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcnn.trees import named_leaves

#: Buckets per histogram: TensorBoard's default (``histogram.summary_v2.DEFAULT_BUCKET_COUNT``).
BUCKETS = 30

Histogram = dict[str, jax.Array]


def histogram(values: jax.Array, buckets: int = BUCKETS) -> Histogram:
    """Return the equal-width histogram of ``values`` from their minimum to their maximum.

    Jit-friendly: the shapes depend on ``buckets`` only. If all values are equal the
    range is widened by 0.5 on each side, as ``numpy.histogram`` does.

    Returns:
        ``min``, ``max``, ``sum``, ``sum_squares`` (scalars), ``bucket_limit`` (the
        buckets' right edges) and ``bucket`` (the counts), each of shape (buckets,).

    >>> h = histogram(jnp.array([0.0, 1.0, 1.0, 3.0]), buckets=3)
    >>> h["bucket"].tolist(), h["bucket_limit"].tolist()
    ([1.0, 2.0, 1.0], [1.0, 2.0, 3.0])
    """
    flat = values.ravel().astype(jnp.float32)
    low, high = jnp.min(flat), jnp.max(flat)
    spread = high > low
    counts, edges = jnp.histogram(
        flat,
        bins=buckets,
        range=(jnp.where(spread, low, low - 0.5), jnp.where(spread, high, high + 0.5)),
    )
    return {
        "min": low,
        "max": high,
        "sum": jnp.sum(flat),
        "sum_squares": jnp.sum(jnp.square(flat)),
        "bucket_limit": edges[1:],
        "bucket": counts,
    }


def tree_histograms(groups: dict[str, Any], buckets: int = BUCKETS) -> dict[str, Histogram]:
    """Return the histogram of every leaf of each pytree in ``groups``, by ``group/leaf path``.

    >>> tags = tree_histograms({"weights": {"out": {"bias": jnp.zeros(2)}}})
    >>> list(tags)
    ['weights/out/bias']
    """
    return {
        f"{group}/{path}": histogram(leaf, buckets)
        for group, tree in groups.items()
        for path, leaf in named_leaves(tree)
    }
