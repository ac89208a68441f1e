"""experiments/tutorial.ipynb runs top to bottom on the real MNIST files, as CI runs it.

The notebook is executed by nbclient in a kernel of this test's own interpreter (a
kernelspec written to a temporary folder, so no user-level ``python3`` kernel can stand in
for it), with the files it writes under the test's temporary folder. Any error in a cell,
a missing package or a kernel that does not start fails the test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from helpers.common import run_summary
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from jaxcnn import data

NOTEBOOK = Path(__file__).resolve().parents[1] / "experiments" / "tutorial.ipynb"
KERNEL = "jaxcnn-test"
#: Seconds one cell may run; the training cell takes about a minute on 2 cores.
CELL_TIMEOUT = 600
#: Pictures the notebook shows: loss, accuracy, gradients; kernels, feature maps, saliency,
#: probabilities.
PICTURES = 7


def kernel_manager(folder: Path) -> KernelManager:
    """Return a manager of a kernel run by this interpreter, from a kernelspec in ``folder``."""
    spec = folder / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec_json = {"argv": argv, "display_name": "jaxcnn test", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(spec_json))
    return KernelManager(
        kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(folder)])
    )


def outputs_of(notebook: nbformat.NotebookNode, output_type: str) -> list[dict]:
    """Return every output of ``output_type`` of the notebook's code cells."""
    return [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output["output_type"] == output_type
    ]


def test_notebook_is_committed_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(
    tmp_path: Path, manual_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel inherits this environment: the real files, and a temporary folder of its own.
    monkeypatch.setenv(data.MANUAL_DIR_ENV, str(manual_dir))
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)  # the notebook prepares MNIST itself
    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setenv("TMPDIR", str(work))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        km=kernel_manager(tmp_path / "kernels"),
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()

    assert not outputs_of(notebook, "error")
    text = "".join(output["text"] for output in outputs_of(notebook, "stream"))
    assert "parameters:  10*5*5*3 + 10 = 760" in text
    assert "flax Conv: 760 parameters, output (32, 32, 10)" in text
    assert "total: 28,938 parameters" in text
    assert "backend cpu" in text
    pictures = [o for o in outputs_of(notebook, "display_data") if "image/png" in o["data"]]
    assert len(pictures) == PICTURES
    (run,) = work.glob("jaxcnn-tutorial-*/run")
    summary = run_summary(run)
    assert summary["steps"] == 300 and summary["test_accuracy"] > 0.9
    assert summary["config"]["log_grads"] is True
