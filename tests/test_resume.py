"""Interrupted runs resume exactly: SIGTERM, SIGINT, SIGKILL (also mid-save), NaN, configs.

Every interrupted run is compared with one uninterrupted reference run of the same
length: the final parameters must be bitwise identical (SHA-256 of their bytes) and
``metrics.jsonl`` identical line for line, so no step is missing or repeated.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers.common import (
    PYTHON_WITH_CTRL_C,
    file_digests,
    read_pictures,
    read_scalars,
    run_cli,
    run_summary,
)

from jaxcnn import train
from jaxcnn.training import workdir as workdir_lib

#: Every test here trains in processes it signals, kills and resumes.
pytestmark = pytest.mark.slow

STEPS = 120
RUN_FLAGS = ["--max-steps", str(STEPS), "--checkpoint-every", "40", "--log-every", "30"]
HELPER = Path(__file__).parent / "helpers" / "kill_mid_save.py"


def train_argv(workdir: Path, data_dir: Path) -> list[str]:
    return [*RUN_FLAGS, "--data-dir", str(data_dir), "--workdir", str(workdir)]


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory) -> Path:
    """An uninterrupted run of STEPS steps."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    assert run_cli(train.cli_main, train_argv(workdir, data_dir)) == 0
    return workdir


def start_training(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a training process whose stdout can be read line by line, and Ctrl-C stops."""
    process = subprocess.Popen(
        [*PYTHON_WITH_CTRL_C, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    watchdog = threading.Timer(300, process.kill)  # never let a test hang
    watchdog.daemon = True
    watchdog.start()
    return process


def read_until(process: subprocess.Popen, text: str) -> list[str]:
    """Read stdout lines until one contains ``text``; return them."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"the run ended before printing {text!r}: {''.join(lines)}")


def resume_and_compare(workdir: Path, data_dir: Path, reference: Path, capsys) -> str:
    """Resume ``workdir`` in this process; check it ends as the reference did."""
    assert run_cli(train.cli_main, train_argv(workdir, data_dir)) == 0
    out = capsys.readouterr().out
    assert run_summary(workdir)["params_sha256"] == run_summary(reference)["params_sha256"]
    assert (workdir / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
    assert_same_tensorboard_steps(workdir, reference)
    return out


def assert_same_tensorboard_steps(workdir: Path, reference: Path) -> None:
    """TensorBoard shows the resumed run's steps as the reference's: none twice, none lost."""
    resumed, expected = read_scalars(workdir / "tb"), read_scalars(reference / "tb")
    assert sorted(resumed) == sorted(expected)
    for tag, points in expected.items():
        assert [step for step, _ in resumed[tag]] == [step for step, _ in points], tag
    assert [s for s, _ in resumed["test/accuracy"]] == [1, 31, 61, 91]
    assert resumed["test/accuracy"] == expected["test/accuracy"]
    resumed_images, expected_images = (
        read_pictures(workdir / "tb")[0],
        read_pictures(reference / "tb")[0],
    )
    assert [event.step for event in resumed_images["first_layer_kernels"]] == [1, 31, 61, 91]
    for tag, events in expected_images.items():  # the same kernels, drawn the same
        assert [e.encoded_image_string for e in resumed_images[tag]] == [
            e.encoded_image_string for e in events
        ], tag


@pytest.mark.parametrize(
    ("signum", "after_line", "exit_code"),
    [(signal.SIGTERM, "[1920/60000", 143), (signal.SIGINT, "[3840/60000", 130)],
)
def test_signal_checkpoints_and_the_resumed_run_is_bitwise_identical(
    signum, after_line, exit_code, data_dir, reference, tmp_path, capsys
):
    workdir = tmp_path / "run"
    process = start_training(["-m", "jaxcnn.train", *train_argv(workdir, data_dir)])
    read_until(process, after_line)
    process.send_signal(signum)
    out, err = process.communicate()
    assert process.returncode == exit_code, err
    assert f"stopped by {signal.Signals(signum).name} after step" in out
    assert f"Resume with: python -m jaxcnn.train {' '.join(RUN_FLAGS)}" in out
    stopped_at = int(out.split("after step ")[1].split()[0])
    assert 0 < stopped_at < STEPS
    assert (workdir / "checkpoints" / str(stopped_at)).is_dir()
    assert not (workdir / "summary.json").exists()
    status = json.loads((workdir / "status.json").read_text())
    assert status == {
        "status": "interrupted",
        "step": stopped_at,
        "exit_code": exit_code,
        "reason": signal.Signals(signum).name,
    }
    resumed = resume_and_compare(workdir, data_dir, reference, capsys)
    assert f"resuming from the checkpoint at step {stopped_at}" in resumed.splitlines()[1]


@pytest.mark.parametrize(
    ("where", "newest_left"),
    [("before any checkpoint", None), ("after a checkpoint", 40)],
)
def test_sigkill_then_resume_is_bitwise_identical(
    where, newest_left, data_dir, reference, tmp_path, capsys
):
    workdir = tmp_path / "run"
    process = start_training(["-m", "jaxcnn.train", *train_argv(workdir, data_dir)])
    if newest_left is None:
        read_until(process, "epoch 0 [0/60000")
    else:
        while not (workdir / "checkpoints" / str(newest_left)).is_dir():
            assert process.poll() is None, "the run ended before its first checkpoint"
            time.sleep(0.02)
    process.kill()
    process.wait()
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").glob("[0-9]*"))
    if newest_left is None:
        assert steps == []
    else:
        assert steps[0] == newest_left and max(steps) < STEPS
    resume_and_compare(workdir, data_dir, reference, capsys)


@pytest.mark.parametrize("finalize_call", [5, 6])
def test_sigkill_in_the_middle_of_a_save_leaves_the_previous_checkpoint(
    finalize_call, data_dir, reference, tmp_path, capsys
):
    """Killed during the second save (step 80): step 40 stays the newest, and restorable."""
    workdir = tmp_path / "run"
    process = start_training(
        [str(HELPER), *train_argv(workdir, data_dir)], env={"KILL_AT_FINALIZE": str(finalize_call)}
    )
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    names = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    assert "40" in names and "80" not in names
    assert any(name.startswith("80.orbax-checkpoint-tmp") for name in names)  # the torn save
    resumed = resume_and_compare(workdir, data_dir, reference, capsys)
    assert "resuming from the checkpoint at step 40" in resumed
    assert not any(".orbax-checkpoint-tmp" in p.name for p in (workdir / "checkpoints").iterdir())


def test_resuming_with_other_hyperparameters_is_refused_unless_overridden(
    data_dir, reference, tmp_path, capsys
):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    shutil.rmtree(workdir / "checkpoints" / str(STEPS))  # as if stopped between 80 and 120
    before = file_digests(workdir)
    changed = [*RUN_FLAGS, "--learning-rate", "0.01", "--seed", "5", "--batch-size", "32"]
    base = ["--data-dir", str(data_dir), "--workdir", str(workdir)]
    assert run_cli(train.cli_main, [*changed, *base]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    for difference in (
        "--learning-rate: 0.001 -> 0.01",
        "--seed: 0 -> 5",
        "--batch-size: 64 -> 32",
    ):
        assert difference in err
    assert file_digests(workdir) == before
    override = [*RUN_FLAGS, "--learning-rate", "0.01", "--override", *base]
    assert run_cli(train.cli_main, override) == 0
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["learning_rate"] == 0.01
    assert (
        json.loads((workdir / "config-before-step-80.json").read_text())["learning_rate"] == 0.001
    )
    shutil.rmtree(workdir / "checkpoints" / str(STEPS))
    again = [*RUN_FLAGS, "--learning-rate", "0.02", "--override", *base]
    assert run_cli(train.cli_main, again) == 0  # a second change at the same step keeps both
    for name, learning_rate in (("80", 0.001), ("80-2", 0.01)):
        kept = json.loads((workdir / f"config-before-step-{name}.json").read_text())
        assert kept["learning_rate"] == learning_rate


def test_a_finished_run_started_again_trains_nothing_and_changes_no_file(
    data_dir, reference, tmp_path, capsys
):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    before = file_digests(workdir)
    assert run_cli(train.cli_main, train_argv(workdir, data_dir)) == 0
    out = capsys.readouterr().out.splitlines()
    accuracy = 100 * run_summary(reference)["test_accuracy"]
    assert out[1].startswith(f"resuming from the checkpoint at step {STEPS}")
    assert out[2] == (
        f"nothing to train: the run in {workdir} finished its {STEPS} steps already (test "
        f"accuracy {accuracy:.2f}%); its files are unchanged. To train on, raise --epochs or "
        "--max-steps"
    )
    assert len(out) == 3 and file_digests(workdir) == before


def test_fewer_steps_than_a_run_has_taken_are_refused(data_dir, reference, tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    before = file_digests(workdir)
    fewer = ["--max-steps", "100", "--data-dir", str(data_dir), "--workdir", str(workdir)]
    assert run_cli(train.cli_main, fewer) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert (
        f"holds a run already at step {STEPS}, past the 100 steps of --epochs 3, --max-steps 100"
        in err
    )
    assert file_digests(workdir) == before


@pytest.mark.parametrize("name", ["status.json", "metrics.jsonl", "summary.json"])
def test_a_folder_in_place_of_a_run_file_is_refused_before_anything_is_written(
    name, data_dir, reference, tmp_path, capsys
):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    (workdir / name).unlink()
    (workdir / name).mkdir()
    before = file_digests(workdir)
    assert run_cli(train.cli_main, train_argv(workdir, data_dir)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{workdir / name} is not a file" in err
    assert file_digests(workdir) == before and (workdir / name).is_dir()


def test_checkpoints_that_are_not_a_folder_are_refused_not_started_over(
    data_dir, reference, tmp_path, capsys
):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    shutil.rmtree(workdir / "checkpoints")
    (workdir / "checkpoints").write_text("x")
    before = file_digests(workdir)
    assert run_cli(train.cli_main, train_argv(workdir, data_dir)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoints is not a folder" in err
    assert file_digests(workdir) == before


def test_nan_stops_at_its_step_with_exit_3_and_keeps_the_last_good_checkpoint(
    data_dir, tmp_path, capsys
):
    workdir = tmp_path / "run"
    argv = ["--learning-rate", "1e30", "--checkpoint-every", "1", "--max-steps", "50"]
    assert (
        run_cli(train.cli_main, [*argv, "--data-dir", str(data_dir), "--workdir", str(workdir)])
        == 3
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "not finite at step 2 (epoch 0, batch 1)" in err
    assert "conv1/conv/kernel" in err and "last good checkpoint is step 1" in err
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1"]
    assert not (workdir / "summary.json").exists()
    status = json.loads((workdir / "status.json").read_text())
    assert (status["status"], status["step"], status["exit_code"]) == ("failed", 2, 3)


def test_a_workdir_in_use_by_another_process_is_refused(data_dir, reference, tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    before = file_digests(workdir)
    with workdir_lib.exclusive(workdir):  # as another training process would hold it
        assert run_cli(train.cli_main, train_argv(workdir, data_dir)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "in use by another jaxcnn.train" in err
    assert file_digests(workdir) == before


def test_a_log_line_cut_short_is_dropped_and_the_resume_is_exact(data_dir, reference, tmp_path):
    """A power cut mid-append leaves a last line without its end; the resume drops it."""
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    shutil.rmtree(workdir / "checkpoints" / "120")  # as if stopped between 91 and 120
    lines = (reference / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert [json.loads(line)["step"] for line in lines] == [1, 31, 61, 91]
    (workdir / "metrics.jsonl").write_text("".join(lines[:3]) + lines[3][:25])
    assert run_cli(train.cli_main, train_argv(workdir, data_dir)) == 0
    assert (workdir / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
    assert run_summary(workdir)["params_sha256"] == run_summary(reference)["params_sha256"]


def test_a_damaged_log_line_is_refused_before_anything_is_written(
    data_dir, reference, tmp_path, capsys
):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    lines = (reference / "metrics.jsonl").read_text().splitlines(keepends=True)
    (workdir / "metrics.jsonl").write_text("".join([lines[0], "not json\n", *lines[2:]]))
    before = file_digests(workdir)
    assert run_cli(train.cli_main, train_argv(workdir, data_dir)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.jsonl, line 2: not a line of jaxcnn's log" in err
    assert file_digests(workdir) == before
