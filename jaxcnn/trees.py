"""Pytree helpers: ``conv1/conv/kernel``-style leaf paths and per-layer norms."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def key_name(key: Any) -> str:
    """Return one path entry as text, whatever the container (dict, sequence, dataclass)."""
    for attribute in ("key", "idx", "name"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def named_leaves(tree: Any) -> list[tuple[str, Any]]:
    """Return ``(path, leaf)`` for every leaf of ``tree``, paths joined with ``/``.

    >>> named_leaves({"conv": {"kernel": 1, "bias": 2}, "out": [3]})
    [('conv/bias', 2), ('conv/kernel', 1), ('out/0', 3)]
    """
    return [
        ("/".join(key_name(key) for key in path), leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    ]


def layer_of(path: str) -> str:
    """Return the layer a parameter path belongs to: the path without its last part.

    >>> layer_of("conv1/conv/kernel")
    'conv1/conv'
    """
    return path.rsplit("/", 1)[0] if "/" in path else path


def layer_norms(tree: PyTree) -> dict[str, jax.Array]:
    """Return the L2 norm of each layer's leaves together (kernel and bias), jit-friendly.

    >>> import jax.numpy as jnp
    >>> norms = layer_norms({"out": {"bias": jnp.array([4.0]), "kernel": jnp.array([3.0])}})
    >>> {layer: float(norm) for layer, norm in norms.items()}
    {'out': 5.0}
    """
    squares: dict[str, jax.Array] = {}
    for path, leaf in named_leaves(tree):
        layer = layer_of(path)
        squares[layer] = squares.get(layer, 0.0) + jnp.sum(jnp.square(leaf))
    return {layer: jnp.sqrt(total) for layer, total in squares.items()}


def update_ratios(params: PyTree, updates: PyTree) -> dict[str, jax.Array]:
    """Return, per layer, ``|update| / |params|``: how far one step moves the layer.

    A common rule of thumb puts healthy values near 1e-3; much larger means the learning
    rate is too high for that layer, much smaller that it hardly learns.

    >>> import jax.numpy as jnp
    >>> ratios = update_ratios({"out": {"kernel": jnp.array([3.0, 4.0])}},
    ...                        {"out": {"kernel": jnp.array([0.003, 0.004])}})
    >>> round(float(ratios["out"]), 6)
    0.001
    """
    param_norms, update_norms = layer_norms(params), layer_norms(updates)
    return {layer: update_norms[layer] / param_norms[layer] for layer in param_norms}
