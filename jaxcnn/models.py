"""Flax linen models. No training logic lives here.

Every model takes NHWC images in [0, 1] and a ``train`` flag, and returns logits.
The flag does nothing for the seed's CNN; it is part of the signature so that models
with state beyond their parameters (BatchNorm statistics) fit the same training step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

Initializer = Callable[..., jax.Array]
_NHWC = ("NHWC", "HWIO", "NHWC")

#: Weights as PyTorch's ``Conv2d``/``Linear`` draw them by default:
#: ``kaiming_uniform_(a=sqrt(5))`` is uniform in ±sqrt(6 / ((1 + 5) * fan_in)) = ±1/sqrt(fan_in),
#: which is variance scaling with scale 1/3 (limit sqrt(3 * scale / fan_in)).
torch_kernel_init: Initializer = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Initializer:
    """Return PyTorch's default bias initializer: uniform in ±1/sqrt(fan_in).

    Args:
        fan_in: inputs feeding each output unit (in_channels * kh * kw for a convolution).

    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """Max-pool NHWC ``x`` over 2×2 windows with stride 2 (PyTorch's ``MaxPool2d(2)``).

    Written as reshape-then-max rather than ``nn.max_pool``: the two agree in value, but
    the gradient of ``reduce_window`` lowers to select-and-scatter, which is slow on
    XLA:CPU, while this one's gradient is an elementwise mask. Odd trailing rows or
    columns are dropped, as PyTorch does. Where a window holds several equal maxima,
    the gradient is shared equally among them (``jnp.max``'s rule).
    """
    n, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2, :]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _block_kernel_indices(kernel_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return where each tap of the space-to-depth block kernel reads the k×k kernel.

    See :func:`conv_max_pool_space_to_depth`. Entry ``[s, t, di, dj, a, c]`` is the
    (row, column) of the kernel, padded by one on every side, that multiplies input
    pixel ``(di, dj)`` of block offset ``(s, t)`` for output pixel ``(a, c)`` of a block;
    taps that fall outside the k×k kernel read the zero padding.
    """
    half, reach = kernel_size // 2, kernel_size // 4 + 1  # blocks each side: 1 for k = 5
    offsets = np.arange(-reach, reach + 1)
    s, t, di, dj, a, c = np.ix_(offsets, offsets, *[np.arange(2)] * 4)
    rows = np.clip(2 * s + di - a + half + 1, 0, kernel_size + 1)
    cols = np.clip(2 * t + dj - c + half + 1, 0, kernel_size + 1)
    return np.broadcast_arrays(rows, cols)


def conv_max_pool_space_to_depth(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Return ``max_pool_2x2(conv(x, kernel))`` for a k×k 'same' convolution, computed fast.

    The same numbers as :func:`conv2d_same` followed by :func:`max_pool_2x2` (up to the
    order of float32 sums), for inputs with few channels, where XLA:CPU's convolution is
    slow (the seed's first layer has one input channel). The image is cut into 2×2
    blocks that become channels (28×28×1 → 14×14×4); a 3×3 convolution over blocks, with
    the k×k kernel rearranged into a block kernel (mostly zeros where a tap falls outside
    it), gives each block's four outputs as channels (14×14×(4·C)), and the 2×2 max-pool
    becomes a max over those four. The block kernel is a gather of ``kernel``, so the
    gradient flows back to the k×k weights; parameters stay in the usual HWIO layout.
    Height and width must be even.
    """
    n, h, w, cin = x.shape
    size, _, _, cout = kernel.shape
    blocks = x.reshape(n, h // 2, 2, w // 2, 2, cin).transpose(0, 1, 3, 2, 4, 5)
    blocks = blocks.reshape(n, h // 2, w // 2, 4 * cin)
    rows, cols = _block_kernel_indices(size)
    taps = rows.shape[0]
    padded = jnp.pad(kernel, ((1, 1), (1, 1), (0, 0), (0, 0)))
    block_kernel = padded[rows, cols]  # (s, t, di, dj, a, c, cin, cout)
    block_kernel = block_kernel.transpose(0, 1, 2, 3, 6, 4, 5, 7).reshape(
        taps, taps, 4 * cin, 4 * cout
    )
    pad = taps // 2
    out = lax.conv_general_dilated(
        blocks, block_kernel, (1, 1), [(pad, pad), (pad, pad)], dimension_numbers=_NHWC
    )
    return out.reshape(n, h // 2, w // 2, 4, cout).max(axis=3)


def conv2d_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Return the stride-1 convolution of NHWC ``x`` with HWIO ``kernel``, zero-padded to size."""
    pad = kernel.shape[0] // 2
    return lax.conv_general_dilated(
        x, kernel, (1, 1), [(pad, pad), (pad, pad)], dimension_numbers=_NHWC
    )


class ConvParams(nn.Module):
    """A k×k convolution's kernel (HWIO) and bias, initialised as PyTorch's ``Conv2d``."""

    features: int
    kernel_size: int

    @nn.compact
    def __call__(self, in_channels: int) -> tuple[jax.Array, jax.Array]:
        """Return ``(kernel, bias)`` for ``in_channels`` input channels."""
        fan_in = in_channels * self.kernel_size * self.kernel_size
        shape = (self.kernel_size, self.kernel_size, in_channels, self.features)
        kernel = self.param("kernel", torch_kernel_init, shape)
        bias = self.param("bias", torch_bias_init(fan_in), (self.features,))
        return kernel, bias


class ConvReluPool(nn.Module):
    """``Conv2d(k×k, stride 1, 'same' padding) → ReLU → MaxPool2d(2)``, one of the seed's blocks.

    Computed as conv → max-pool → (+ bias) → ReLU, which gives the same numbers: the
    bias is the same at every position of a window and ReLU is monotonic, so both
    commute with the max; this way they touch a quarter of the values. With fewer
    than 4 input channels the convolution and pooling go through
    :func:`conv_max_pool_space_to_depth`.
    """

    features: int
    kernel_size: int = 5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply the block to NHWC ``x``; halves height and width."""
        kernel, bias = ConvParams(self.features, self.kernel_size, name="conv")(x.shape[-1])
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)
        if x.shape[-1] < 4 and x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0:
            pooled = conv_max_pool_space_to_depth(x, kernel)
        else:
            pooled = max_pool_2x2(conv2d_same(x, kernel))
        return nn.relu(pooled + bias)


class CNN(nn.Module):
    """The seed tutorial's MNIST network, in NHWC.

    ``Conv(16, 5×5, pad 2) → ReLU → MaxPool 2 → Conv(32, 5×5, pad 2) → ReLU → MaxPool 2 →
    flatten → Dense(10)``: 28×28×1 → 14×14×16 → 7×7×32 → 1568 → 10, with
    416 + 12,832 + 15,690 = 28,938 parameters. Weights and biases are initialised as
    PyTorch's ``Conv2d`` and ``Linear`` do by default (uniform in ±1/sqrt(fan_in)), so the
    reimplementation starts from the seed's distribution. The names follow the seed's
    ``conv1``, ``conv2`` and ``out``.

    Note that flattening is in H×W×C order; PyTorch's ``view`` flattens C×H×W, so the
    dense kernel's rows are permuted relative to a PyTorch ``state_dict``.
    """

    num_classes: int = 10

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        """Return logits of shape ``(batch, num_classes)`` for NHWC float ``images``."""
        del train  # No dropout or BatchNorm in the seed's network.
        x = ConvReluPool(16, name="conv1")(images)
        x = ConvReluPool(32, name="conv2")(x)
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(
            self.num_classes,
            kernel_init=torch_kernel_init,
            bias_init=torch_bias_init(x.shape[-1]),
            name="out",
        )(x)


MODELS: dict[str, type[nn.Module]] = {"cnn": CNN}


def create_model(name: str, num_classes: int) -> nn.Module:
    """Return the model registered as ``name`` for ``num_classes`` classes.

    Raises:
        KeyError: ``name`` is not one of :data:`MODELS`.

    """
    return MODELS[name](num_classes=num_classes)
