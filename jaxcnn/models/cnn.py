"""The tutorial's CNN, layer for layer.

The tutorial's PyTorch network::

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Sequential(nn.Conv2d(1, 16, 5, 1, 2), nn.ReLU(), nn.MaxPool2d(2))
            self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 5, 1, 2), nn.ReLU(), nn.MaxPool2d(2))
            self.out = nn.Linear(32 * 7 * 7, 10)

        def forward(self, x):
            x = self.conv1(x)
            x = self.conv2(x)
            x = x.view(x.size(0), -1)
            return self.out(x)

Here in Flax, channels last (NHWC). How XLA:CPU computes the convolution and the pooling
fast is chosen apart, in :mod:`jaxcnn.models.cpu_forms`.
"""

from __future__ import annotations

import jax
from flax import linen as nn

from jaxcnn.models.layers import MaxPool, torch_conv, torch_dense


class ConvReluPool(nn.Module):
    """``nn.Sequential(nn.Conv2d(C, features, 5, 1, 2), nn.ReLU(), nn.MaxPool2d(2))``."""

    features: int
    kernel_size: int = 5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply the block to NHWC ``x``; halves height and width."""
        x = torch_conv(self.features, x.shape[-1], self.kernel_size, name="conv")(x)
        x = nn.relu(x)
        return MaxPool(2, 2, name="pool")(x)


class CNN(nn.Module):
    """The tutorial's MNIST network, in NHWC.

    ``Conv(16, 5×5, pad 2) → ReLU → MaxPool 2 → Conv(32, 5×5, pad 2) → ReLU → MaxPool 2 →
    flatten → Dense(10)``: 28×28×1 → 14×14×16 → 7×7×32 → 1568 → 10, with
    416 + 12,832 + 15,690 = 28,938 parameters. Weights and biases are initialised as
    PyTorch's ``Conv2d`` and ``Linear`` do by default (uniform in ±1/sqrt(fan_in)), so the
    reimplementation starts from the tutorial's distribution. The names follow the tutorial's
    ``conv1``, ``conv2`` and ``out``.

    Note that flattening is in H×W×C order; PyTorch's ``view`` flattens C×H×W, so the
    dense kernel's rows are permuted relative to a PyTorch ``state_dict``.
    """

    num_classes: int = 10

    @nn.compact
    def __call__(
        self, images: jax.Array, train: bool = False, mask: jax.Array | None = None
    ) -> jax.Array:
        """Return logits of shape ``(batch, num_classes)`` for NHWC float ``images``."""
        del train, mask  # No dropout or BatchNorm in the tutorial's network.
        x = ConvReluPool(16, name="conv1")(images)
        x = ConvReluPool(32, name="conv2")(x)
        x = x.reshape(x.shape[0], -1)
        return torch_dense(self.num_classes, x.shape[-1], name="out")(x)
