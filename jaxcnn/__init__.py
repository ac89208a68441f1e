"""jaxcnn: the tutorial's MNIST CNN in JAX/Flax, with every part of a step in view.

- :mod:`jaxcnn.models`: the networks (the tutorial's CNN in ``models/cnn.py``).
- :mod:`jaxcnn.training`: the step (``training/step.py``), the loop
  (``training/loop.py``) and everything around them.
- :mod:`jaxcnn.inspection`: gradients, the step by hand, layer shapes, curves, mistakes.
- The commands, ``python -m jaxcnn.<command>``: ``train``, ``evaluate``, ``predict``,
  ``runs``, ``convert``, ``grads``, ``explain``, ``summary``, ``plot``.
"""

__version__ = "0.1.0"
