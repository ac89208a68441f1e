"""Looking inside a model and a run: gradients, the step by hand, shapes, curves, mistakes.

The commands ``python -m jaxcnn.grads``, ``explain``, ``summary``, ``plot`` and
``evaluate --gallery`` print or draw what these modules compute.
"""
