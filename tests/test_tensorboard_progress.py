"""TensorBoard event files of a real run, read back by TensorBoard; the progress bar."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
import threading

import pytest
from helpers.common import read_scalars, run_metrics

from jaxcnn import tb
from jaxcnn.training import progress

#: What the ``trained`` fixture's run (``--log-grads``) writes at each log point.
EXPECTED_TAGS = {
    "train/loss",
    "train/accuracy",
    "test/accuracy",
    "test/loss",
    "learning_rate",
    "step_time",
    *(f"{group}/{layer}" for group in ("grad_norm", "update_ratio")
      for layer in ("conv1/conv", "conv2/conv", "out")),
}  # fmt: skip


def test_tensorboard_reads_every_scalar_of_a_short_run_at_its_log_steps(trained):
    scalars = read_scalars(trained / "tb")
    assert set(scalars) == EXPECTED_TAGS
    for tag, points in scalars.items():
        assert [step for step, _ in points] == [1, 101, 201], tag
    records = run_metrics(trained)
    for tag, key in [("test/accuracy", "test_accuracy"), ("train/loss", "loss")]:
        assert [value for _, value in scalars[tag]] == pytest.approx(
            [record[key] for record in records], rel=1e-6
        )
    assert [value for _, value in scalars["grad_norm/out"]] == pytest.approx(
        [record["grad_norm"]["out"] for record in records], rel=1e-6
    )
    assert [value for _, value in scalars["learning_rate"]] == pytest.approx([1e-3] * 3)
    assert all(0 < value < 10 for _, value in scalars["step_time"])
    # one file per span between checkpoints (100, 200, 300), named by its first step
    assert [tb.first_step_of(path) for path in sorted((trained / "tb").iterdir())] == [1, 101, 201]


def test_truncate_drops_the_files_after_a_checkpoint_only(tmp_path):
    names = [f"events.out.tfevents.step{step:010d}.jaxcnn" for step in (1, 41, 81)]
    for name in [*names, "events.out.tfevents.1.other-writer"]:
        (tmp_path / name).write_bytes(b"")
    dropped = tb.truncate(tmp_path, 40)
    assert [path.name for path in dropped] == [
        "events.out.tfevents.step0000000041.jaxcnn",
        "events.out.tfevents.step0000000081.jaxcnn",
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "events.out.tfevents.1.other-writer",
        "events.out.tfevents.step0000000001.jaxcnn",
    ]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_follow_the_host_step_count_per_epoch_and_lines_go_above():
    terminal = FakeTerminal()
    bars = progress.for_stream(True, terminal, steps_in_epoch=10, total_steps=25, start_step=3)
    assert isinstance(bars, progress.EpochBars)
    bars.write("epoch 0 [192/640 (30%)]")
    bars.show_loss(0.25)
    bars.advance(4)
    bars.advance(17)  # a chunk of steps across the end of epoch 0
    bars.advance(25)
    bars.close()
    shown = terminal.getvalue()
    assert "epoch 0 [192/640 (30%)]\n" in shown
    for done in ["epoch 0: 100%", "10/10", "epoch 1: 100%", "epoch 2: 100%", "5/5", "loss 0.2500"]:
        assert done in shown, done
    assert "step/s" in shown


def test_no_bar_when_the_output_is_not_a_terminal_or_with_no_progress():
    pipe = io.StringIO()
    plain = progress.for_stream(True, pipe, steps_in_epoch=10, total_steps=25, start_step=0)
    assert isinstance(plain, progress.PlainLines)
    plain.advance(5)
    plain.show_loss(0.5)
    plain.write("epoch 0 [0/640 (0%)]")
    plain.close()
    assert pipe.getvalue() == "epoch 0 [0/640 (0%)]\n"
    off = progress.for_stream(False, FakeTerminal(), 10, 25, 0)
    assert isinstance(off, progress.PlainLines)


def run_in_terminal(args: list[str]) -> tuple[int, str]:
    """Run ``python -m jaxcnn.train ARGS`` with a 150-column terminal as its stdout."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 150, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "jaxcnn.train", *args],
        stdout=follower,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TERM": "xterm"},
    )
    os.close(follower)
    watchdog = threading.Timer(300, process.kill)
    watchdog.daemon = True
    watchdog.start()
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closes when the process ends
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    watchdog.cancel()
    return process.wait(), b"".join(chunks).decode()


@pytest.mark.slow
def test_a_terminal_gets_a_bar_under_the_unchanged_log_lines(data_dir, tmp_path):
    argv = ["--max-steps", "30", "--log-every", "10", "--data-dir", str(data_dir)]
    code, shown = run_in_terminal([*argv, "--workdir", str(tmp_path / "run")])
    assert code == 0
    assert "epoch 0:" in shown and "step/s" in shown and "30/30" in shown and "loss " in shown
    lines = [line.split("\r")[-1] for line in shown.split("\r\n")]  # what stays on screen
    log_lines = [line for line in lines if line.startswith("epoch 0 [")]
    assert [line.split("\t")[0] for line in log_lines] == [
        "epoch 0 [0/60000 (0%)]",
        "epoch 0 [640/60000 (1%)]",
        "epoch 0 [1280/60000 (2%)]",
    ]
    assert all(line.count("\t") == 3 and line.endswith("%") for line in log_lines)
    assert any(line.startswith("epoch 0: 100%") for line in lines)
