"""PyTorch interop: the tutorial's ``state_dict`` to jaxcnn parameters and back.

The tutorial's ``CNN`` names its layers ``conv1.0``, ``conv2.0`` and ``out``. Two layouts
differ between the frameworks:

- convolution kernels: PyTorch stores them OIHW (out, in, height, width), Flax HWIO;
- the dense layer's inputs: PyTorch flattens the 32×7×7 feature map as C×H×W (its
  tensors are NCHW), Flax as H×W×C, so the rows of the dense kernel are permuted. Its
  weight is also stored (out, in) in PyTorch and (in, out) in Flax.

PyTorch is optional: only these conversions need it, and :func:`require_torch` says
how to install it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxcnn.errors import UsageError

#: The tutorial's state_dict: key -> shape.
SEED_STATE_DICT_SHAPES: dict[str, tuple[int, ...]] = {
    "conv1.0.weight": (16, 1, 5, 5),
    "conv1.0.bias": (16,),
    "conv2.0.weight": (32, 16, 5, 5),
    "conv2.0.bias": (32,),
    "out.weight": (10, 32 * 7 * 7),
    "out.bias": (10,),
}
_FEATURES = (32, 7, 7)  # C, H, W of the map the dense layer reads


def require_torch() -> Any:
    """Return the ``torch`` module, or raise a :class:`UsageError` saying how to get it."""
    try:
        import torch
    except ImportError as error:
        raise UsageError(
            "this needs PyTorch, which jaxcnn does not install by default: pip install "
            "'jaxcnn[bench]' (on this project's machines: pip install torch==2.13.0, the CPU "
            "build kept on disk)"
        ) from error
    return torch


def params_from_state_dict(state_dict: dict[str, np.ndarray]) -> dict[str, Any]:
    """Return jaxcnn's CNN parameters holding the tutorial's ``state_dict`` (NumPy arrays)."""
    conv = {
        block: {
            "conv": {
                "kernel": state_dict[f"{block}.0.weight"].transpose(2, 3, 1, 0),  # OIHW -> HWIO
                "bias": state_dict[f"{block}.0.bias"],
            }
        }
        for block in ("conv1", "conv2")
    }
    classes = state_dict["out.weight"].shape[0]
    # (out, C*H*W) -> (out, C, H, W) -> (H, W, C, out) -> (H*W*C, out)
    kernel = state_dict["out.weight"].reshape(classes, *_FEATURES).transpose(2, 3, 1, 0)
    return {**conv, "out": {"kernel": kernel.reshape(-1, classes), "bias": state_dict["out.bias"]}}


def state_dict_from_params(params: dict[str, Any]) -> dict[str, np.ndarray]:
    """Return the tutorial's ``state_dict`` (NumPy arrays) for jaxcnn's CNN parameters."""
    state_dict = {}
    for block in ("conv1", "conv2"):
        layer = params[block]["conv"]
        state_dict[f"{block}.0.weight"] = np.asarray(layer["kernel"]).transpose(3, 2, 0, 1)
        state_dict[f"{block}.0.bias"] = np.asarray(layer["bias"])
    kernel = np.asarray(params["out"]["kernel"])
    classes = kernel.shape[1]
    channels, height, width = _FEATURES
    # (H*W*C, out) -> (H, W, C, out) -> (out, C, H, W) -> (out, C*H*W)
    state_dict["out.weight"] = (
        kernel.reshape(height, width, channels, classes).transpose(3, 2, 0, 1).reshape(classes, -1)
    )
    state_dict["out.bias"] = np.asarray(params["out"]["bias"])
    return {key: np.ascontiguousarray(value) for key, value in state_dict.items()}


def check_state_dict(state_dict: dict[str, np.ndarray], source: str) -> None:
    """Raise :class:`UsageError` naming every missing, extra or misshapen key.

    Args:
        state_dict: the loaded tensors, as NumPy arrays.
        source: the file it came from, for the message.
    """
    missing = sorted(SEED_STATE_DICT_SHAPES.keys() - state_dict.keys())
    extra = sorted(state_dict.keys() - SEED_STATE_DICT_SHAPES.keys())
    wrong = [
        f"{key} {list(state_dict[key].shape)} (expected {list(shape)})"
        for key, shape in SEED_STATE_DICT_SHAPES.items()
        if key in state_dict and tuple(state_dict[key].shape) != shape
    ]
    problems = []
    if missing:
        problems.append("missing keys " + ", ".join(missing))
    if extra:
        problems.append("unexpected keys " + ", ".join(extra))
    if wrong:
        problems.append("wrong shapes " + ", ".join(wrong))
    if problems:
        raise UsageError(f"{source} is not the tutorial CNN's state_dict: " + "; ".join(problems))


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Load a ``torch.save``-d state_dict without running code from the file.

    ``torch.load(..., weights_only=True)`` unpickles tensors and plain containers only.

    Raises:
        UsageError: the file is missing, not loadable as weights, not a dict of tensors,
            or not the tutorial's keys and shapes.
    """
    torch = require_torch()
    if not path.is_file():
        raise UsageError(f"--from-torch {str(path)!r} does not exist or is not a file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors of many kinds
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UsageError(
            f"--from-torch {str(path)!r} cannot be loaded as PyTorch weights: "
            f"{type(error).__name__}: {first[:200]}"
        ) from error
    if not isinstance(loaded, dict) or not all(
        isinstance(value, torch.Tensor) for value in loaded.values()
    ):
        raise UsageError(f"--from-torch {str(path)!r} is not a state_dict (a dict of tensors)")
    state_dict = {str(key): value.detach().cpu().numpy() for key, value in loaded.items()}
    check_state_dict(state_dict, f"--from-torch {str(path)!r}")
    return state_dict


def save_state_dict(path: Path, state_dict: dict[str, np.ndarray]) -> None:
    """Write ``state_dict`` with ``torch.save``, as the tutorial's ``net.state_dict()`` would be."""
    torch = require_torch()
    torch.save({key: torch.from_numpy(value.copy()) for key, value in state_dict.items()}, path)


def seed_cnn() -> Any:
    """Return a new instance of the tutorial's PyTorch ``CNN`` (section 4.4)."""
    torch = require_torch()
    nn = torch.nn

    class CNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Sequential(nn.Conv2d(1, 16, 5, 1, 2), nn.ReLU(), nn.MaxPool2d(2))
            self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 5, 1, 2), nn.ReLU(), nn.MaxPool2d(2))
            self.out = nn.Linear(32 * 7 * 7, 10)

        def forward(self, x: Any) -> Any:
            x = self.conv2(self.conv1(x))
            return self.out(x.view(x.size(0), -1))

    return CNN()
