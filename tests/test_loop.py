"""The two ways to run the steps between sync points, the scan plan, and the recipes."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
from pathlib import Path

import numpy as np
import optax
import pytest
from helpers.common import run_cli, run_metrics, run_summary

from jaxcnn import train
from jaxcnn.config import TrainConfig
from jaxcnn.training import job, loop, optim
from jaxcnn.training import workdir as workdir_lib
from jaxcnn.training.evaluation import evaluate
from jaxcnn.training.scan_loop import scan_shapes
from jaxcnn.training.timetable import Position, Timetable
from jaxcnn.trees import named_leaves


def scans_from(timetable: Timetable, epoch: int, batch: int) -> list[tuple[int, range]]:
    """Return (epoch, batches) of every scan from ``batch`` of ``epoch`` to the run's end."""
    return [
        (e, batches)
        for e in range(epoch, timetable.epochs_with_steps)
        for batches in timetable.batches_between_sync_points(e, batch if e == epoch else 0)
    ]


def test_the_scans_end_at_every_log_checkpoint_epoch_end_and_the_last_step():
    config = TrainConfig(log_every=100, checkpoint_every=250, max_steps=1000)
    timetable = Timetable.of(config, 60_000)
    assert (timetable.steps_per_epoch, timetable.total_steps) == (938, 1000)
    plan = scans_from(timetable, 0, 0)
    ends = [epoch * 938 + batches[-1] + 1 for epoch, batches in plan]
    assert ends[:4] == [1, 101, 201, 250]
    assert 938 in ends and ends[-1] == 1000
    assert sum(len(batches) for _, batches in plan) == 1000
    assert all(batches[0] <= batches[-1] < 938 for _, batches in plan)
    resumed = scans_from(timetable, 0, 120)
    assert resumed[0] == (0, range(120, 201))
    assert [(e, b) for e, b in plan if e * 938 + b[0] >= 250] == resumed[2:]


def test_scan_shapes_are_few():
    config = TrainConfig(log_grads=True)
    shapes = scan_shapes(config, 60_000, Position(0, 0, 0))
    # 1 (batch 0), 100 (to each log point), 37 (to the epoch's end), with stats at log points
    assert shapes == [(1, True), (37, False), (100, True)]


def run_steps(data_dir: Path, workdir: Path, *flags: str) -> Path:
    argv = ["--max-steps", "12", "--log-every", "5", *flags]
    assert (
        run_cli(train.cli_main, [*argv, "--data-dir", str(data_dir), "--workdir", str(workdir)])
        == 0
    )
    return workdir


def spy_on_the_steps(monkeypatch, before_each_step) -> list:
    """Have the job's Python loop call ``before_each_step(dispatched)`` before each step.

    Returns the list that gathers each step's metrics as it is dispatched.
    """
    dispatched = []

    def spied(setup, state, position):
        def step(state, batch):
            before_each_step(dispatched)
            state, metrics = setup.compiled.step(state, batch)
            dispatched.append(metrics)
            return state, metrics

        compiled = dataclasses.replace(setup.compiled, step=step)
        return loop.train_and_evaluate(
            dataclasses.replace(setup, compiled=compiled), state, position
        )

    monkeypatch.setattr(job, "train_and_evaluate", spied)
    return dispatched


def test_the_loop_queues_at_most_steps_in_flight_so_a_stop_comes_soon(
    data_dir, tmp_path, monkeypatch
):
    """Unbounded, the host queued up to 32 steps (XLA:CPU's limit) before its next sync
    point, and a Ctrl-C waited for all of them: 12 minutes for VGG-16 on the CPU."""
    queued_before_each_step = []
    spy_on_the_steps(
        monkeypatch,
        lambda dispatched: queued_before_each_step.append(
            sum(not m["loss"].is_ready() for m in dispatched)
        ),
    )
    run_steps(data_dir, tmp_path / "run", "--log-every", "1000", "--max-steps", "40")
    assert len(queued_before_each_step) == 40
    assert max(queued_before_each_step) <= loop.STEPS_IN_FLIGHT


def test_a_stop_between_log_points_checkpoints_without_a_test_pass(
    data_dir, tmp_path, monkeypatch, capsys
):
    """A test pass of VGG-16 takes 5 minutes on a 2-core CPU: a stop must not wait for one."""

    def sigterm_before_step_6(dispatched):
        if len(dispatched) == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    dispatched = spy_on_the_steps(monkeypatch, sigterm_before_step_6)
    test_passes = []

    def counted_evaluate(*args):
        test_passes.append(len(dispatched))
        return evaluate(*args)

    monkeypatch.setattr(loop, "evaluate", counted_evaluate)
    workdir = tmp_path / "run"
    argv = ["--log-every", "1000", "--data-dir", str(data_dir), "--workdir", str(workdir)]
    assert run_cli(train.cli_main, argv) == 143
    stopped_at = int(re.search(r"after step (\d+)", capsys.readouterr().out)[1])
    assert 6 <= stopped_at <= 6 + loop.STEPS_IN_FLIGHT
    assert test_passes == [1]  # the log line of step 1 only
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [stopped_at]
    assert not (workdir / "summary.json").exists()


@pytest.mark.slow
def test_the_compiled_loop_trains_like_the_python_loop(data_dir, tmp_path, capsys):
    python = run_steps(data_dir, tmp_path / "python", "--loop", "python", "--log-grads")
    scan = run_steps(data_dir, tmp_path / "scan", "--loop", "scan", "--log-grads")
    assert "(scan loop, 4 chunks per batch; " in capsys.readouterr().out
    lines = [run_metrics(run) for run in (python, scan)]
    assert [r["step"] for r in lines[0]] == [r["step"] for r in lines[1]] == [1, 6, 11]
    for a, b in zip(*lines, strict=True):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
        assert a["train_accuracy"] == b["train_accuracy"]
        np.testing.assert_allclose(
            list(a["grad_norm"].values()), list(b["grad_norm"].values()), rtol=1e-4
        )
    expected = dict(named_leaves(workdir_lib.restore_run(python)[1].params))
    for path, value in named_leaves(workdir_lib.restore_run(scan)[1].params):
        np.testing.assert_allclose(value, expected[path], atol=1e-6, err_msg=path)
    assert run_summary(scan)["loop"] == "scan"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--loop", "while"], "--loop: invalid choice: 'while'"),
        (["--recipe", "slow"], "--recipe: invalid choice: 'slow'"),
        (["--recipe", "seed"], "--recipe: 'seed' is now called 'tutorial'"),
        (["--schedule", "linear"], "--schedule: invalid choice: 'linear'"),
    ],
)
def test_bad_loop_recipe_or_schedule_is_refused(flags, message, tmp_path, capsys):
    assert run_cli(train.cli_main, [*flags, "--workdir", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_fast_recipe_and_explicit_flags():
    args = train.build_parser().parse_args(["--recipe", "fast", "--epochs", "1"])
    config = train.config_from_args(args)
    assert (config.epochs, config.batch_size, config.schedule) == (1, 128, "one-cycle")
    assert config.learning_rate == 4e-3
    tutorial = train.config_from_args(train.build_parser().parse_args([]))
    assert tutorial == TrainConfig()
    named = train.build_parser().parse_args(["--recipe", "tutorial"])
    assert train.config_from_args(named) == tutorial


def test_the_one_cycle_schedule_rises_to_its_peak_then_falls_to_nearly_zero():
    config = TrainConfig(epochs=2, batch_size=128, learning_rate=4e-3, schedule="one-cycle")
    schedule = optim.learning_rate_schedule(config)
    total = optim.planned_steps(config)
    assert total == 2 * 469
    rates = np.array([float(schedule(step)) for step in range(total)])
    assert rates[0] == pytest.approx(4e-3 / 25)
    assert rates.max() == pytest.approx(4e-3, rel=1e-3)
    assert int(rates.argmax()) == pytest.approx(total // 4, abs=1)
    assert rates[-1] < 1e-5
    constant = optim.create_optimizer(TrainConfig())
    assert isinstance(constant, optax.GradientTransformation)
