"""Building blocks shared by the networks: PyTorch-style layers, pooling, BatchNorm's mask.

``torch_conv`` and ``torch_dense`` are PyTorch's ``nn.Conv2d`` and ``nn.Linear`` with
their default initialisation. Pooling has no parameters, but it is written as a module
(``MaxPool``, ``GlobalAveragePool``) so that it is a layer of its own in
``python -m jaxcnn.summary``, with its window, stride and padding, like a convolution.
The tutorial's convolution and 2×2 pooling are computed in the forms that
:mod:`jaxcnn.models.cpu_forms` chooses for XLA:CPU (same values; that module says why).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxcnn.models import cpu_forms

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


def torch_dense(features: int, in_features: int, name: str) -> nn.Dense:
    """Return a dense layer initialised as PyTorch's ``nn.Linear``: uniform in ±1/sqrt(fan_in)."""
    return nn.Dense(
        features,
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(in_features),
        name=name,
    )


def torch_conv(features: int, in_channels: int, kernel_size: int, name: str) -> nn.Conv:
    """Return PyTorch's ``nn.Conv2d(in_channels, features, kernel_size, 1, kernel_size // 2)``.

    Stride 1 and 'same' padding, initialised as PyTorch does by default; computed by
    :func:`jaxcnn.models.cpu_forms.conv_general_dilated`.
    """
    pad = kernel_size // 2
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=1,
        padding=((pad, pad), (pad, pad)),
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(in_channels * kernel_size * kernel_size),
        conv_general_dilated=cpu_forms.conv_general_dilated,
        name=name,
    )


#: torchvision's convolution weights for VGG and ResNet: ``kaiming_normal_(mode="fan_out",
#: nonlinearity="relu")``, a normal with variance 2 / fan_out.
he_normal_fan_out: Initializer = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class MaxPool(nn.Module):
    """``window``×``window`` max-pooling with ``stride``, padded by ``padding`` (with -inf).

    The tutorial's 2×2, stride 2, unpadded pooling runs as
    :func:`jaxcnn.models.cpu_forms.max_pool_2x2`; any other as ``nn.max_pool``.
    """

    window: int = 2
    stride: int = 2
    padding: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Pool NHWC ``x`` over height and width."""
        if (self.window, self.stride, self.padding) == (2, 2, 0):
            return cpu_forms.max_pool_2x2(x)
        pad = (self.padding, self.padding)
        return nn.max_pool(
            x, (self.window, self.window), strides=(self.stride, self.stride), padding=(pad, pad)
        )


class GlobalAveragePool(nn.Module):
    """Average NHWC ``x`` over all of height and width: (N, H, W, C) → (N, C).

    An average pool whose window is the whole map (K = W, S = 1, P = 0).
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Return the per-channel mean of ``x``."""
        return jnp.mean(x, axis=(1, 2))


def example_mask(mask: jax.Array | None) -> jax.Array | None:
    """Return a per-example ``mask`` (N,) as the (N, 1, 1, 1) booleans BatchNorm takes.

    BatchNorm then computes its batch mean and variance over the real examples only
    (``mask`` 1), so the padding of a last, partial batch changes neither the
    normalisation of the real examples nor the running statistics.
    """
    return None if mask is None else (mask > 0)[:, None, None, None]


def batch_norm(name: str, train: bool) -> nn.BatchNorm:
    """Return a BatchNorm as PyTorch's ``BatchNorm2d``: momentum 0.1 (Flax: 0.9), eps 1e-5.

    Training normalises with the batch's statistics and updates the running ones in
    the ``batch_stats`` collection; evaluation normalises with the running ones.
    """
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


#: Inputs with a side shorter than this are "small" (MNIST's 28, CIFAR's 32): VGG and
#: ResNet then use their small-image stems (see :mod:`jaxcnn.models.vgg` and
#: :mod:`jaxcnn.models.resnet`).
SMALL_IMAGE_SIDE = 64


def is_small_image(images: jax.Array) -> bool:
    """Return whether NHWC ``images`` are small: height or width under :data:`SMALL_IMAGE_SIDE`."""
    return min(images.shape[1], images.shape[2]) < SMALL_IMAGE_SIDE
