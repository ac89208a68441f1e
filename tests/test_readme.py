"""Every command the README shows an output for runs, and prints output of that shape.

The commands come from the README's example blocks themselves (between the
``<!-- example:NAME:begin -->`` markers), so the README and this test cannot diverge.
They run in this process, in order, in one fresh folder (later blocks use the runs of
earlier ones), on the real MNIST files; a block's ``test-args`` (the tutorial's 3-epoch
job) are appended to its command. Each output must have the README's shape: the same
lines and columns, numbers aside, which differ between CPU types.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from helpers.common import run_cli

REPO = Path(__file__).resolve().parents[1]


def load_examples_module():
    """Import ``experiments/readme_examples.py``, which parses and renders the blocks."""
    spec = importlib.util.spec_from_file_location(
        "readme_examples", REPO / "experiments" / "readme_examples.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


examples = load_examples_module()
BLOCKS = examples.parse_blocks(examples.README.read_text())


def run_in_process(command: str) -> tuple[int, list[str]]:
    """Run ``python -m jaxcnn.X ARGS`` through the module's ``cli_main``; return its exit
    code and the lines it printed."""
    program, flag, module, *argv = shlex.split(command)
    assert (program, flag) == ("python", "-m") and module.startswith("jaxcnn."), command
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_cli(importlib.import_module(module).cli_main, argv)
    return code, out.getvalue().rstrip("\n").splitlines()


@pytest.fixture(scope="module")
def outputs(data_dir, manual_dir, tmp_path_factory) -> dict[str, list[tuple[int, list[str]]]]:
    """Run every block's commands in order in one folder; return their codes and outputs."""
    folder = tmp_path_factory.mktemp("readme")
    for path in examples.INPUTS:
        shutil.copytree(REPO / path, folder / path)
    results = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("TFDS_DATA_DIR", str(data_dir))
        patch.setenv("JAXCNN_MANUAL_DIR", str(manual_dir))
        for block in BLOCKS:
            extra = block.attrs.get("test-args", "")
            results[block.name] = [
                run_in_process(f"{example.command} {extra}".strip()) for example in block.examples
            ]
    return results


def test_the_readme_shows_the_examples_of_its_guided_path():
    names = [block.name for block in BLOCKS]
    assert names[:4] == [
        "quickstart-train",
        "quickstart-evaluate",
        "quickstart-predict",
        "tutorial-job",
    ]
    assert {"runs", "plot", "visualize", "grads", "explain", "summary"} <= set(names)
    assert all(block.examples and block.examples[0].shown for block in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_each_example_prints_what_the_readme_shows_but_its_numbers(block, outputs):
    for example, (code, output) in zip(block.examples, outputs[block.name], strict=True):
        assert code == 0, f"$ {example.command} exited with {code}"
        assert examples.shape_differences(example, output) == [], f"$ {example.command}"


def test_a_changed_word_and_a_missing_line_are_found_but_not_a_changed_number():
    elided = examples.Example("python -m jaxcnn.x", ["a 1.5  b", "...", "done 2 steps"])
    assert examples.shape_differences(elided, ["a 0.25 b", "x", "y", "done 30 steps"]) == []
    assert examples.shape_differences(elided, ["a 0.25 c", "done 30 steps"]) == [
        "line 0: 'a 0.25 c' has not the shape of 'a 1.5  b'"
    ]
    whole = examples.Example("python -m jaxcnn.x", ["a 1", "b 2"])
    assert examples.shape_differences(whole, ["a 1"]) == ["1 lines, README shows 2"]
