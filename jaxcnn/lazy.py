"""Modules loaded when first used, so that a command starts without them.

TensorBoard's protocol buffers, matplotlib and Pillow are first needed at the first log
point of a run (:mod:`jaxcnn.tb`), and Orbax at its first checkpoint
(:mod:`jaxcnn.training.checkpoints`), so training reaches its first step without them.
(tfds is imported only to prepare a dataset or to read one whose arrays are not kept:
:mod:`jaxcnn.data`.)
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_import(name: str) -> ModuleType:
    """Return module ``name``, executed on first attribute access (Python's ``LazyLoader``).

    The recipe of the ``importlib`` documentation ("Implementing lazy imports"). Its parent
    packages are imported now; a module already imported is returned as it is.
    """
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent:  # as the import system binds a submodule: ``import PIL.Image`` gives PIL.Image
        setattr(sys.modules[parent], child, module)
    return module
