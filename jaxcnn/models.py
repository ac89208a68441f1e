"""Flax linen models and their registry. No training logic lives here.

Every model is called as ``model(images, train=..., mask=...)`` on NHWC images in
[0, 1] and returns logits. ``train`` and ``mask`` (1 for a real example, 0 for the
padding of a last, partial batch) do nothing for the seed's CNN; they are part of the
signature so that models with BatchNorm (:mod:`jaxcnn.resnet`) fit the same training
step: batch statistics in training, over the real examples only, running ones in
evaluation. VGG-16 lives in :mod:`jaxcnn.vgg`, ResNet-18/34 in :mod:`jaxcnn.resnet`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxcnn import fastconv
from jaxcnn.layers import MaxPool, torch_bias_init, torch_dense, torch_kernel_init
from jaxcnn.layers import max_pool_2x2 as max_pool_2x2  # re-exported: explain and tests use it
from jaxcnn.resnet import ResNet18, ResNet34
from jaxcnn.vgg import VGG16


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
            conv_general_dilated=fastconv.conv_general_dilated,
            name="conv",
        )(x)
        return MaxPool(2, 2, name="pool")(nn.relu(x))


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
    def __call__(
        self, images: jax.Array, train: bool = False, mask: jax.Array | None = None
    ) -> jax.Array:
        """Return logits of shape ``(batch, num_classes)`` for NHWC float ``images``."""
        del train, mask  # No dropout or BatchNorm in the seed's network.
        x = ConvReluPool(16, name="conv1")(images)
        x = ConvReluPool(32, name="conv2")(x)
        x = x.reshape(x.shape[0], -1)
        return torch_dense(self.num_classes, x.shape[-1], name="out")(x)


MODELS: dict[str, type[nn.Module]] = {
    "cnn": CNN,
    "vgg16": VGG16,
    "resnet18": ResNet18,
    "resnet34": ResNet34,
}


def create_model(name: str, num_classes: int) -> nn.Module:
    """Return the model registered as ``name`` for ``num_classes`` classes.

    Raises:
        KeyError: ``name`` is not one of :data:`MODELS`.

    """
    return MODELS[name](num_classes=num_classes)


def uses_batch_statistics(name: str) -> bool:
    """Return whether model ``name`` keeps variables besides its parameters (BatchNorm's).

    Found by tracing the model's initialisation on one 28×28 image, without computing it.
    """
    model = create_model(name, num_classes=10)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False)
    )
    return any(collection != "params" for collection in variables)
