"""``jaxcnn.runs``: a finished and an interrupted real run, listed as they are."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
from helpers.common import run_cli, run_metrics, run_summary

from jaxcnn import runs, train
from jaxcnn.training import job, workdir
from jaxcnn.training.signals import StopRequest


class SigintAfter(StopRequest):
    """A stop request that receives SIGINT after a number of steps, as Ctrl-C would."""

    steps = 50

    def __call__(self) -> bool:
        self.steps -= 1
        if self.steps == 0:
            self.handle(signal.SIGINT, None)
        return super().__call__()


@pytest.fixture(scope="module")
def runs_dir(trained, data_dir, tmp_path_factory) -> Path:
    """``finished``: the 300-step run; ``interrupted``: Ctrl-C after step 50 of 300."""
    folder = tmp_path_factory.mktemp("runs")
    shutil.copytree(trained, folder / "finished")
    argv = ["--max-steps", "300", "--log-every", "20", "--data-dir", str(data_dir)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(job, "StopRequest", SigintAfter)
        code = train.cli_main([*argv, "--workdir", str(folder / "interrupted")])
    assert code == 128 + signal.SIGINT
    return folder


def test_lists_a_finished_and_an_interrupted_run(runs_dir, capsys):
    assert run_cli(runs.cli_main, [str(runs_dir), "--json"]) == 0
    finished, interrupted = json.loads(capsys.readouterr().out)
    summary = run_summary(runs_dir / "finished")
    logged = [r["test_accuracy"] for r in run_metrics(runs_dir / "finished")]
    assert finished == {
        "run": "finished",
        "model": "cnn",
        "dataset": "mnist",
        "steps": 300,
        "best_test_accuracy": max([*logged, summary["test_accuracy"]]),
        "last_test_accuracy": summary["test_accuracy"],
        "status": "finished",
        "newest_checkpoint": 300,
    }
    logged = run_metrics(runs_dir / "interrupted")
    assert [r["step"] for r in logged] == [1, 21, 41]
    assert interrupted == {
        "run": "interrupted",
        "model": "cnn",
        "dataset": "mnist",
        "steps": 50,
        "best_test_accuracy": max(r["test_accuracy"] for r in logged),
        "last_test_accuracy": logged[-1]["test_accuracy"],
        "status": "interrupted (SIGINT)",
        "newest_checkpoint": 50,
    }


def test_the_table_and_a_run_killed_or_still_running(runs_dir, tmp_path, capsys):
    folder = tmp_path / "runs"
    shutil.copytree(runs_dir, folder)
    shutil.copytree(folder / "interrupted", folder / "killed")
    workdir.write_status(folder / "killed", workdir.RUNNING, 0)  # as SIGKILL leaves it
    shutil.copytree(folder / "killed", folder / "running")
    with workdir.exclusive(folder / "running"):  # as a training process holds it
        assert run_cli(runs.cli_main, [str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "model", "dataset", "steps", "best", "test", "last", "test",
                                "status", "newest", "checkpoint"]  # fmt: skip
    rows = {line.split()[0]: line for line in lines[1:]}
    assert sorted(rows) == ["finished", "interrupted", "killed", "running"]
    assert rows["finished"].split()[-2:] == ["finished", "300"]
    assert rows["interrupted"].split()[-3:] == ["interrupted", "(SIGINT)", "50"]
    assert rows["killed"].split()[-3:] == ["interrupted", "(killed)", "50"]
    assert rows["running"].split()[-2:] == ["running", "50"]


def test_a_missing_dir_is_one_line_and_exit_2(tmp_path, capsys):
    assert run_cli(runs.cli_main, [str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing" in err and "not an existing folder" in err


def test_a_run_with_a_damaged_log_is_listed_with_a_note(runs_dir, tmp_path, capsys):
    folder = tmp_path / "runs"
    shutil.copytree(runs_dir, folder)
    with (folder / "interrupted" / "metrics.jsonl").open("ab") as log:
        log.write(b"\xff\xfe garbage\n5\n")
    assert run_cli(runs.cli_main, [str(folder), "--json"]) == 0
    captured = capsys.readouterr()
    finished, interrupted = json.loads(captured.out)
    assert finished["best_test_accuracy"] is not None and finished["status"] == "finished"
    assert interrupted["best_test_accuracy"] is None and interrupted["newest_checkpoint"] == 50
    assert captured.err.count("\n") == 1
    assert "interrupted/metrics.jsonl, line 4: not a line of jaxcnn's log" in captured.err
