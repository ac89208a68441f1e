"""Modules loaded on first use: a command starts without them, and they work when used."""

from __future__ import annotations

import subprocess
import sys


def test_train_starts_without_matplotlib_and_tensorboard_and_they_load_when_used():
    code = """
import sys
import jaxcnn.train
from jaxcnn import tb
print(sorted(m for m in ("matplotlib.colors", "PIL.PngImagePlugin", "tensorboard.summary")
             if m in sys.modules))
print(tb.matplotlib.colormaps["RdBu_r"].name, "matplotlib.colors" in sys.modules)
import PIL.Image
print(PIL.Image is tb.pil_image, PIL.Image.new("L", (2, 3)).size)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "RdBu_r True", "True (2, 3)"]


def test_train_starts_without_orbax_and_a_checkpoint_loads_it(tmp_path):
    code = f"""
import sys
import jaxcnn.train
from jaxcnn.training.checkpoints import Checkpoints
checkpoints = Checkpoints({str(tmp_path)!r})
print("orbax.checkpoint.checkpoint_manager" in sys.modules, checkpoints.steps())
print("orbax.checkpoint.checkpoint_manager" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["False []", "True"]
