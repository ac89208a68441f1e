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
from flax import linen as nn

Initializer = Callable[..., jax.Array]

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


class ConvReluPool(nn.Module):
    """``Conv2d(k×k, stride 1, 'same' padding) → ReLU → MaxPool2d(2)``, one of the seed's blocks."""

    features: int
    kernel_size: int = 5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply the block to NHWC ``x``; halves height and width."""
        pad = self.kernel_size // 2
        fan_in = x.shape[-1] * self.kernel_size * self.kernel_size
        x = nn.Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            strides=1,
            padding=((pad, pad), (pad, pad)),
            kernel_init=torch_kernel_init,
            bias_init=torch_bias_init(fan_in),
            name="conv",
        )(x)
        return max_pool_2x2(nn.relu(x))


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
