"""Building blocks shared by the networks: pooling as modules, initialisers, BatchNorm's mask.

Pooling has no parameters, but it is written as a module (``MaxPool``,
``GlobalAveragePool``) so that it is a layer of its own in ``python -m jaxcnn.summary``,
with its window, stride and padding, like a convolution.
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


def torch_dense(features: int, in_features: int, name: str) -> nn.Dense:
    """Return a dense layer initialised as PyTorch's ``nn.Linear``: uniform in ±1/sqrt(fan_in)."""
    return nn.Dense(
        features,
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(in_features),
        name=name,
    )


#: torchvision's convolution weights for VGG and ResNet: ``kaiming_normal_(mode="fan_out",
#: nonlinearity="relu")``, a normal with variance 2 / fan_out.
he_normal_fan_out: Initializer = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


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


class MaxPool(nn.Module):
    """``window``×``window`` max-pooling with ``stride``, padded by ``padding`` (with -inf).

    The seed's 2×2, stride 2, unpadded pooling runs as :func:`max_pool_2x2`; any other
    as ``nn.max_pool``.
    """

    window: int = 2
    stride: int = 2
    padding: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Pool NHWC ``x`` over height and width."""
        if (self.window, self.stride, self.padding) == (2, 2, 0):
            return max_pool_2x2(x)
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
#: ResNet then use their small-image stems (see :mod:`jaxcnn.vgg`, :mod:`jaxcnn.resnet`).
SMALL_IMAGE_SIDE = 64


def is_small_image(images: jax.Array) -> bool:
    """Return whether NHWC ``images`` are small: height or width under :data:`SMALL_IMAGE_SIDE`."""
    return min(images.shape[1], images.shape[2]) < SMALL_IMAGE_SIDE
