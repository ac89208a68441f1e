"""The networks, as Flax linen modules, and the registry ``--model`` reads.

No training logic lives here, and nothing here imports from :mod:`jaxcnn.training`.
Every model is called as ``model(images, train=..., mask=...)`` on NHWC images in
[0, 1] and returns logits. ``train`` and ``mask`` (1 for a real example, 0 for the
padding of a last, partial batch) do nothing for the tutorial's CNN; they are part of the
signature so that models with BatchNorm (ResNet) fit the same training step: batch
statistics in training, over the real examples only, running ones in evaluation.

- :mod:`~jaxcnn.models.cnn`: the tutorial's CNN.
- :mod:`~jaxcnn.models.vgg`, :mod:`~jaxcnn.models.resnet`: VGG-16, ResNet-18/34.
- :mod:`~jaxcnn.models.layers`: the pieces they share.
- :mod:`~jaxcnn.models.cpu_forms`: the forms of convolution and pooling XLA:CPU runs fast.
- :mod:`~jaxcnn.models.torch_interop`: the tutorial's PyTorch CNN and its ``state_dict``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxcnn.models.cnn import CNN
from jaxcnn.models.resnet import ResNet18, ResNet34
from jaxcnn.models.vgg import VGG16

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
