"""jaxcnn: the seed tutorial's MNIST CNN in JAX/Flax, with every part of a step in view."""

__version__ = "0.1.0"
