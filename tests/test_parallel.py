"""Data parallelism: 8 forced CPU devices and 2 processes train exactly like 1 device.

The multi-device runs are processes of their own, because the number of CPU devices
and the distributed runtime are fixed when JAX starts. Tolerance: the devices sum the
gradients of their slices in another order than one device does, so results agree to
float32 rounding, not bitwise: losses to 1e-5 relative, parameters to 1e-5 absolute
after 12 steps (measured: 1.0e-7).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.common import run_cli, run_metrics, run_summary

from jaxcnn import train
from jaxcnn.training import workdir as workdir_lib
from jaxcnn.trees import named_leaves

HELPERS = Path(__file__).parent / "helpers"
STEPS = ["--max-steps", "12", "--log-every", "6"]


def losses(workdir: Path) -> list[float]:
    """Return the logged batch losses of a run."""
    return [record["loss"] for record in run_metrics(workdir)]


def final_params(workdir: Path) -> dict:
    """Return the parameters of a run's newest checkpoint, restored in this process."""
    return workdir_lib.restore_run(workdir)[1].params


def assert_same_training(run: Path, reference: Path) -> None:
    """Assert that ``run`` logged the losses and reached the parameters of ``reference``."""
    np.testing.assert_allclose(losses(run), losses(reference), rtol=1e-5)
    expected, got = dict(named_leaves(final_params(reference))), named_leaves(final_params(run))
    assert [path for path, _ in got] == list(expected)
    for path, value in got:
        np.testing.assert_allclose(value, expected[path], atol=1e-5, err_msg=path)


def train_process(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``python -m jaxcnn.train args`` as a process of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "jaxcnn.train", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    """Wait for ``process``; return its exit code, stdout and stderr."""
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def eight_devices() -> dict[str, str]:
    """Return the environment that gives a process 8 CPU devices."""
    return {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


@pytest.fixture(scope="module")
def one_device(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-step run on one device: the reference the parallel runs must match."""
    workdir = tmp_path_factory.mktemp("one_device") / "run"
    argv = [*STEPS, "--devices", "1", "--data-dir", str(data_dir), "--workdir", str(workdir)]
    assert run_cli(train.cli_main, argv) == 0
    return workdir


@pytest.mark.slow
def test_eight_devices_train_like_one(one_device, data_dir, tmp_path):
    workdir = tmp_path / "run"
    args = [*STEPS, "--devices", "8", "--data-dir", str(data_dir), "--workdir", str(workdir)]
    code, out, err = finish(train_process(args, eight_devices()))
    assert code == 0, err
    assert "CpuDevice(id=7)" in out.splitlines()[0]
    assert_same_training(workdir, one_device)


@pytest.mark.slow
def test_the_sharded_step_all_reduces_the_gradients():
    process = subprocess.run(
        [sys.executable, str(HELPERS / "sharded_step_hlo.py"), "8"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr
    counts = json.loads(process.stdout)
    assert counts["1"] == 0  # one device: nothing to sum
    assert counts["8"] >= 1


def test_a_batch_size_that_does_not_split_among_the_devices_is_refused(data_dir, tmp_path):
    workdir = tmp_path / "run"
    args = ["--devices", "8", "--batch-size", "60", "--data-dir", str(data_dir)]
    code, _, err = finish(train_process([*args, "--workdir", str(workdir)], eight_devices()))
    assert code == 2
    assert err.strip().splitlines() == [
        "python -m jaxcnn.train: error: --batch-size 60 does not split evenly among 8 "
        "devices; use a multiple of 8, such as 56 or 64"
    ]
    assert not workdir.exists()


def free_port() -> int:
    """Return a TCP port on localhost that is free now."""
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def run_pair(args: list[str]) -> list[tuple[int, str, str]]:
    """Run ``python -m jaxcnn.train args`` as two processes of one job; return their ends."""
    coordinator = ["--coordinator", f"localhost:{free_port()}", "--num-processes", "2"]
    pair = [train_process([*args, *coordinator, "--process-id", str(i)]) for i in (0, 1)]
    results = [finish(process) for process in pair]
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    return results


@pytest.fixture(scope="module")
def two_processes(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[tuple[int, str, str]]]:
    """The 12-step run in two processes: its work dir, and each process's end."""
    workdir = tmp_path_factory.mktemp("two_processes") / "run"
    return workdir, run_pair([*STEPS, "--data-dir", str(data_dir), "--workdir", str(workdir)])


@pytest.mark.slow
def test_two_processes_train_like_one_and_their_checkpoint_resumes_in_one(
    one_device, two_processes, data_dir, tmp_path
):
    pair_run, results = two_processes
    assert "in 2 processes" in results[0][1]
    assert results[1][1] == ""  # only process 0 prints
    assert_same_training(pair_run, one_device)

    # The pair's checkpoint continues in a single process, on its one device.
    workdir = shutil.copytree(pair_run, tmp_path / "run")
    more = ["--max-steps", "14", "--log-every", "6", "--data-dir", str(data_dir)]
    assert run_cli(train.cli_main, [*more, "--workdir", str(workdir)]) == 0
    summary = run_summary(workdir)
    assert summary["steps"] == 14
    assert summary["processes"] == 1


@pytest.mark.slow
def test_two_processes_resume_their_own_checkpoint_exactly(two_processes, data_dir, tmp_path):
    workdir = tmp_path / "run"
    common = ["--log-every", "6", "--data-dir", str(data_dir), "--workdir", str(workdir)]
    run_pair(["--max-steps", "6", *common])  # ends at step 6 with a checkpoint
    resumed = run_pair(["--max-steps", "12", *common])
    assert "resuming from the checkpoint at step 6 (epoch 0, batch 6)" in resumed[0][1]
    summary, uninterrupted = run_summary(workdir), two_processes[0]
    assert summary["processes"] == 2
    assert losses(workdir) == losses(uninterrupted)
    assert summary["params_sha256"] == run_summary(uninterrupted)["params_sha256"]


def test_a_multi_process_run_needs_a_workdir(capsys):
    argv = ["--coordinator", "localhost:1", "--num-processes", "2", "--process-id", "0"]
    assert run_cli(train.cli_main, argv) == 2
    assert "needs --workdir" in capsys.readouterr().err
