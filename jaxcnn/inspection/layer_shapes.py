"""A network layer by layer, with the tutorial's arithmetic (``python -m jaxcnn.summary``).

The tutorial's section 2.2.4 gives the two formulas every row shows. A convolution (or
pooling) with kernel K, stride S and padding P turns a side of length W into

    (W + 2P − K)/S + 1      (rounded down when S does not divide it)

and a convolution of F filters of K×K×C has F·K·K·C weights plus F biases: 10 filters
of 5×5×3 have 10·5·5·3 + 10 = 760 parameters.

The shapes come from ``jax.eval_shape`` of the model's ``init``, so nothing is
allocated, not even VGG-16's 138 million parameters at 224×224. Flax's own
``nn.tabulate`` runs the same way and lists every module's inputs, outputs and
variables, but it knows nothing of kernels, strides and padding; so the layers are
collected with ``nn.intercept_methods`` (the hook Flax offers for watching module
calls), and each row's formula is computed from its layer's attributes and checked
against the shape Flax produced.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxcnn import models
from jaxcnn.errors import UsageError
from jaxcnn.models.layers import GlobalAveragePool, MaxPool

Pad = tuple[int, int]

# ----------------------------------------------------------------------------- arithmetic


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int | Pad = 0) -> int:
    """Return ``(W + 2P − K)/S + 1``, rounded down: the output side of a convolution or pooling.

    ``padding`` is P on both ends, or ``(before, after)``.

    >>> conv_output_size(32, kernel=5, stride=1, padding=2)
    32
    >>> conv_output_size(32, kernel=5)
    28
    >>> conv_output_size(224, kernel=7, stride=2, padding=3)
    112
    """
    before, after = _pair(padding)
    return (size + before + after - kernel) // stride + 1


def conv_output_shape(
    input_shape: tuple[int, int, int],
    filters: int,
    kernel: int,
    stride: int = 1,
    padding: int | Pad = 0,
) -> tuple[int, int, int]:
    """Return the (H, W, C) a convolution of ``filters`` K×K filters makes of ``input_shape``.

    >>> conv_output_shape((32, 32, 3), filters=10, kernel=5, stride=1, padding=2)
    (32, 32, 10)
    """
    height, width, _ = input_shape
    return (
        conv_output_size(height, kernel, stride, padding),
        conv_output_size(width, kernel, stride, padding),
        filters,
    )


def conv_parameters(in_channels: int, filters: int, kernel: int, bias: bool = True) -> int:
    """Return ``F·K·K·C (+ F)``: the weights (and biases) of a convolution.

    >>> conv_parameters(in_channels=3, filters=10, kernel=5)
    760
    """
    return filters * kernel * kernel * in_channels + (filters if bias else 0)


def size_formula(size: int, kernel: int, stride: int, padding: int | Pad) -> str:
    """Return the tutorial's formula for one side, worked out.

    >>> size_formula(32, kernel=5, stride=1, padding=2)
    '(32 + 2*2 - 5)/1 + 1 = 32'
    >>> size_formula(224, kernel=7, stride=2, padding=3)
    'floor((224 + 2*3 - 7)/2) + 1 = 112'
    >>> size_formula(27, kernel=3, stride=1, padding=(3, 4))
    '(27 + 3 + 4 - 3)/1 + 1 = 32'
    """
    before, after = _pair(padding)
    pad = f"2*{before}" if before == after else f"{before} + {after}"
    fraction = f"({size} + {pad} - {kernel})/{stride}"
    if (size + before + after - kernel) % stride:
        fraction = f"floor({fraction})"
    return f"{fraction} + 1 = {conv_output_size(size, kernel, stride, padding)}"


def _pair(padding: int | Pad) -> Pad:
    """Return ``padding`` as ``(before, after)``."""
    return (padding, padding) if isinstance(padding, int) else (padding[0], padding[1])


# ----------------------------------------------------------------------------- layers


@dataclasses.dataclass(frozen=True)
class Layer:
    """One row of the summary.

    Attributes:
        path: the layer's name in the parameter tree, ``block1/conv1``.
        kind: what it is, with its kernel, stride and padding: ``conv 3x3 /1 p1``.
        output_shape: its output without the batch axis, from ``jax.eval_shape``.
        shape_formula: how that shape follows from the input's.
        formula_shape: the shape the formula gives (equal to ``output_shape``).
        params: its own trained parameters.
        params_formula: how that count follows from its shape.
        statistics: its BatchNorm running statistics (not parameters).
    """

    path: str
    kind: str
    output_shape: tuple[int, ...]
    shape_formula: str
    formula_shape: tuple[int, ...]
    params: int
    params_formula: str
    statistics: int = 0


@dataclasses.dataclass(frozen=True)
class Summary:
    """A model's layers for one input shape, and its totals."""

    model: str
    input_shape: tuple[int, int, int]
    num_classes: int
    layers: tuple[Layer, ...]
    total_params: int
    total_statistics: int


def _spatial_formula(
    in_shape: tuple[int, ...], kernels: Sequence[int], strides: Sequence[int], pads: Sequence[Pad]
) -> tuple[str, tuple[int, int]]:
    """Return the H and W formulas as one text, and the (H, W) they give."""
    parts = [
        size_formula(size, kernel, stride, pad)
        for size, kernel, stride, pad in zip(in_shape[:2], kernels, strides, pads, strict=True)
    ]
    sides = tuple(
        conv_output_size(size, kernel, stride, pad)
        for size, kernel, stride, pad in zip(in_shape[:2], kernels, strides, pads, strict=True)
    )
    text = parts[0] if parts[0] == parts[1] else f"H {parts[0]}; W {parts[1]}"
    return text, sides


def _conv_geometry(module: nn.Conv, in_shape: tuple[int, ...]) -> tuple[list, list, list[Pad]]:
    """Return the kernel, stride and (before, after) padding of a convolution, per side."""
    kernels = list(module.kernel_size)
    strides = [module.strides] * 2 if isinstance(module.strides, int) else list(module.strides)
    padding = module.padding
    if isinstance(padding, int):
        pads = [(padding, padding)] * 2
    elif isinstance(padding, str):  # 'SAME' or 'VALID', as lax resolves them
        pads = list(jax.lax.padtype_to_pads(in_shape[:2], kernels, strides, padding))
    else:
        pads = [_pair(p) for p in padding]
    return kernels, strides, pads


def _shape_text(shape: Sequence[int]) -> str:
    """Return ``(28, 28, 1)`` as ``28x28x1``."""
    return "x".join(map(str, shape))


def describe_layer(
    path: str, module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> Layer | None:
    """Return the row of a call of ``module`` (shapes without the batch axis), or None.

    Convolutions, dense layers, BatchNorm and pooling are layers; modules made of them
    (blocks, the network) are not rows of their own.
    """
    params, statistics = 0, 0
    if isinstance(module, nn.Conv):
        kernels, strides, pads = _conv_geometry(module, in_shape)
        text, sides = _spatial_formula(in_shape, kernels, strides, pads)
        channels = in_shape[-1]
        weights = math.prod(kernels) * channels * module.features
        params = weights + (module.features if module.use_bias else 0)
        k = "*".join(map(str, kernels))
        bias = f" + {module.features}" if module.use_bias else ""
        params_text = f"{k}*{channels}*{module.features}{bias} = {params:,}"
        pad_text = "/".join(sorted({str(p[0]) if p[0] == p[1] else f"{p[0]},{p[1]}" for p in pads}))
        kind = f"conv {'x'.join(map(str, kernels))} /{strides[0]} p{pad_text}"
        return Layer(path, kind, out_shape, text, (*sides, module.features), params, params_text)
    if isinstance(module, MaxPool):
        window, stride, pad = [module.window] * 2, [module.stride] * 2, [(module.padding,) * 2] * 2
        text, sides = _spatial_formula(in_shape, window, stride, pad)
        kind = f"max-pool {module.window}x{module.window} /{module.stride} p{module.padding}"
        return Layer(path, kind, out_shape, text, (*sides, in_shape[-1]), 0, "-")
    if isinstance(module, GlobalAveragePool):
        text, _ = _spatial_formula(in_shape, in_shape[:2], [1, 1], [(0, 0)] * 2)
        kind = f"avg-pool {in_shape[0]}x{in_shape[1]}"
        return Layer(path, kind, out_shape, f"{text}, flattened", (in_shape[-1],), 0, "-")
    if isinstance(module, nn.Dense):
        inputs = in_shape[-1]
        params = inputs * module.features + (module.features if module.use_bias else 0)
        bias = f" + {module.features}" if module.use_bias else ""
        text = f"{inputs} features -> {module.features}"
        params_text = f"{inputs}*{module.features}{bias} = {params:,}"
        return Layer(path, "dense", out_shape, text, (module.features,), params, params_text)
    if isinstance(module, nn.BatchNorm):
        channels = in_shape[-1]
        params, statistics = 2 * channels, 2 * channels
        text = "normalised per channel, shape kept"
        params_text = f"2*{channels} = {params:,}"
        return Layer(path, "batchnorm", out_shape, text, in_shape, params, params_text, statistics)
    return None


def summarize(model_name: str, input_shape: tuple[int, int, int], num_classes: int) -> Summary:
    """Return the layers of ``model_name`` for one image of ``input_shape``, without allocating.

    Raises:
        UsageError: the model cannot take images of ``input_shape`` (too small).
    """
    model = models.create_model(model_name, num_classes)
    calls: list[tuple[str, nn.Module, tuple[int, ...], tuple[int, ...]]] = []

    def record(next_fun: Any, args: Any, kwargs: Any, context: nn.module.InterceptorContext):
        outputs = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.path:
            path = "/".join(context.module.path)
            calls.append((path, context.module, args[0].shape[1:], outputs.shape[1:]))
        return outputs

    def init(images: jax.Array) -> Any:
        with nn.intercept_methods(record):
            return model.init(jax.random.key(0), images, train=False)

    image = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    try:
        variables = jax.eval_shape(init, image)
    except Exception as error:  # lax and the initialisers fail in many ways on tiny inputs
        first_line = (str(error).splitlines() or [""])[0]
        raise UsageError(
            f"--input-shape {','.join(map(str, input_shape))}: {model_name} cannot be built for it "
            f"({type(error).__name__}: {first_line})"
        ) from error
    rows = [row for call in calls if (row := describe_layer(*call)) is not None]
    for row in rows:
        if min(row.output_shape) < 1:
            raise UsageError(
                f"--input-shape {','.join(map(str, input_shape))}: too small for {model_name}: "
                f"{row.path} would output {_shape_text(row.output_shape)}"
            )

    def count(collection: str) -> int:
        return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables.get(collection)))

    return Summary(
        model=model_name,
        input_shape=input_shape,
        num_classes=num_classes,
        layers=tuple(rows),
        total_params=count("params"),
        total_statistics=count("batch_stats"),
    )


def format_summary(summary: Summary) -> str:
    """Return the summary as a text table, then the totals."""
    header = ("layer", "type", "output", "output side: (W + 2P - K)/S + 1", "parameters")
    table = [("input", "", _shape_text(summary.input_shape), "", "")]
    table += [
        (
            row.path,
            row.kind,
            _shape_text(row.output_shape),
            row.shape_formula,
            row.params_formula,
        )
        for row in summary.layers
    ]
    widths = [max(len(line[i]) for line in [header, *table]) for i in range(len(header))]
    lines = [
        f"{summary.model} on {_shape_text(summary.input_shape)} images, "
        f"{summary.num_classes} classes (shapes by jax.eval_shape; nothing allocated)",
        "  ".join(text.ljust(width) for text, width in zip(header, widths, strict=True)).rstrip(),
    ]
    lines += [
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in table
    ]
    total = f"total: {summary.total_params:,} parameters"
    if summary.total_statistics:
        total += (
            f" (and {summary.total_statistics:,} BatchNorm running statistics, "
            "which are not trained)"
        )
    return "\n".join([*lines, total])
