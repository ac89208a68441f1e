"""The forms of convolution and pooling that XLA:CPU runs fast: chosen here, and why.

The models are written as the tutorial writes them: a convolution, a ReLU, a 2×2
max-pooling. On a CPU, XLA runs two of these slowly in their usual form, so the layers
of :mod:`jaxcnn.models.layers` compute them through this module instead, which gives the
same values (and gradients) in a form XLA:CPU runs well. GPU and TPU keep the library's.

**A convolution with one input channel** (the tutorial's first layer: 28×28×1 → 16
channels, 5×5). XLA:CPU runs it as a generic convolution on one core, and slowly: 2.5 ms
for a batch of 64 on this project's machines, for 40 MFLOP. Written instead as a sum of
25 shifted copies of the image, each times one row of the kernel, the same convolution
is one fused elementwise loop, vectorised over the 16 output channels: about 0.5 ms.
Only the forward pass is rewritten. Its gradients (:func:`jax.custom_vjp`) are those of
``lax.conv_general_dilated``, which XLA:CPU computes well: the weight gradient is one
convolution, and the input gradient, which the first layer never needs, is removed by
XLA as dead code. The values agree with ``lax.conv_general_dilated`` up to the order of
the float32 additions (``tests/test_fastconv.py`` checks both the values and the
gradients against it). :func:`conv_general_dilated` is a drop-in for
``lax.conv_general_dilated`` (flax's ``nn.Conv(conv_general_dilated=...)``): it takes this
form on CPU only, for the case it covers, and is ``lax.conv_general_dilated`` everywhere
else.

**2×2 max-pooling with stride 2** (:func:`max_pool_2x2`). The gradient of
``reduce_window`` lowers to select-and-scatter, and a reshape-then-``max`` reduction
fused after a convolution runs several times slower than the convolution itself. So
inference takes the elementwise maximum of each window's four strided corners, and
training runs reshape-then-``max`` and its autodiff gradient, an elementwise mask.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

#: The only layout :func:`shifted_conv` handles, as flax's ``nn.Conv`` passes it for 2-D.
NHWC = ("NHWC", "HWIO", "NHWC")


def reference_conv(
    images: jax.Array, kernel: jax.Array, padding: Sequence[tuple[int, int]]
) -> jax.Array:
    """Return XLA's stride-1 convolution of NHWC ``images`` with HWIO ``kernel``."""
    return lax.conv_general_dilated(images, kernel, (1, 1), tuple(padding), dimension_numbers=NHWC)


def _shifted_forward(
    images: jax.Array, kernel: jax.Array, padding: Sequence[tuple[int, int]]
) -> jax.Array:
    """Sum over the kernel's taps of the shifted image times that tap's output row."""
    kernel_h, kernel_w, _, _ = kernel.shape
    (top, bottom), (left, right) = padding
    padded = jnp.pad(images, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out_h = padded.shape[1] - kernel_h + 1
    out_w = padded.shape[2] - kernel_w + 1
    total = None
    for i in range(kernel_h):
        for j in range(kernel_w):
            # (batch, out_h, out_w, 1) * (out_channels,) → (batch, out_h, out_w, out_channels)
            term = padded[:, i : i + out_h, j : j + out_w, :] * kernel[i, j, 0]
            total = term if total is None else total + term
    return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def shifted_conv(
    images: jax.Array, kernel: jax.Array, padding: tuple[tuple[int, int], ...]
) -> jax.Array:
    """Stride-1 convolution of one-channel NHWC ``images`` with HWIO ``kernel`` (I = 1).

    Computed as shifted multiply-adds; differentiated as ``lax.conv_general_dilated``.
    ``padding`` is ``((top, bottom), (left, right))``.
    """
    return _shifted_forward(images, kernel, padding)


def _shifted_conv_fwd(
    images: jax.Array, kernel: jax.Array, padding: tuple[tuple[int, int], ...]
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _shifted_forward(images, kernel, padding), (images, kernel)


def _shifted_conv_bwd(
    padding: tuple[tuple[int, int], ...],
    residuals: tuple[jax.Array, jax.Array],
    cotangent: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    images, kernel = residuals
    _, vjp = jax.vjp(lambda x, w: reference_conv(x, w, padding), images, kernel)
    return vjp(cotangent)


shifted_conv.defvjp(_shifted_conv_fwd, _shifted_conv_bwd)


def covers(
    lhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None,
    rhs_dilation: Sequence[int] | None,
    dimension_numbers: Any,
    feature_group_count: int,
) -> bool:
    """Return whether :func:`shifted_conv` computes this ``lax.conv_general_dilated`` call."""
    ones = (1,) * (lhs.ndim - 2)
    return (
        lhs.ndim == 4
        and lhs.shape[-1] == 1
        and tuple(window_strides) == ones
        and tuple(lhs_dilation or ones) == ones
        and tuple(rhs_dilation or ones) == ones
        and feature_group_count == 1
        and not isinstance(padding, str)
        and lax.conv_dimension_numbers(lhs.shape, (1, 1, 1, 1), NHWC)
        == lax.conv_dimension_numbers(lhs.shape, (1, 1, 1, 1), dimension_numbers)
    )


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    **kwargs: Any,
) -> jax.Array:
    """``lax.conv_general_dilated``, computed by :func:`shifted_conv` on CPU where it applies.

    The choice of form is made when the computation is lowered for a platform
    (``lax.platform_dependent``), so one traced model runs on any backend.
    """

    def library(x: jax.Array, w: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(
            x,
            w,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            precision=precision,
            **kwargs,
        )

    if not covers(
        lhs,
        window_strides,
        padding,
        lhs_dilation,
        rhs_dilation,
        dimension_numbers,
        feature_group_count,
    ):
        return library(lhs, rhs)
    pads = tuple((int(low), int(high)) for low, high in padding)
    return lax.platform_dependent(
        lhs, rhs, cpu=lambda x, w: shifted_conv(x, w, pads), default=library
    )


def _crop_even(x: jax.Array) -> jax.Array:
    """Drop an odd trailing row and column of NHWC ``x``, as PyTorch's 2×2 pooling does."""
    _, h, w, _ = x.shape
    return x[:, : h - h % 2, : w - w % 2, :]


def _window_max_by_reshape(x: jax.Array) -> jax.Array:
    """2×2/2 max-pooling as reshape-then-``max``: the form whose gradient XLA:CPU runs well."""
    x = _crop_even(x)
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """Max-pool NHWC ``x`` over 2×2 windows with stride 2 (PyTorch's ``MaxPool2d(2)``).

    The same values as ``nn.max_pool``, in two forms chosen for XLA:CPU, where the
    usual ones are slow: the gradient of ``reduce_window`` lowers to select-and-scatter,
    and a reshape-then-``max`` reduction fused after a convolution runs several times
    slower than the convolution itself. So inference (this function) takes the
    elementwise maximum of each window's four strided corners, while training
    (:func:`jax.custom_vjp`) runs reshape-then-``max`` and its autodiff gradient, an
    elementwise mask. Either way each window's gradient goes to its maximum, shared
    equally where several elements equal it (``jnp.max``'s rule). Odd trailing rows or
    columns are dropped, as PyTorch does.
    """
    x = _crop_even(x)
    corners = [x[:, row::2, col::2, :] for row in (0, 1) for col in (0, 1)]
    return jnp.maximum(jnp.maximum(corners[0], corners[1]), jnp.maximum(corners[2], corners[3]))


def _max_pool_2x2_fwd(x: jax.Array) -> tuple[jax.Array, Callable[..., tuple[jax.Array]]]:
    return jax.vjp(_window_max_by_reshape, x)


def _max_pool_2x2_bwd(
    pullback: Callable[..., tuple[jax.Array]], cotangent: jax.Array
) -> tuple[jax.Array]:
    return pullback(cotangent)


max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)
