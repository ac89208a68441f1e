"""Running out of resources: a full disk, a read-only work dir, a batch that cannot fit.

Every case runs a real process, most of them ``python -m jaxcnn.train``, and checks its
exit code, its one line on stderr and what it left in the work dir (SHA-256 of every
file). The disk cases then remove the cause and resume with the same command: the run
must end bitwise identical to an uninterrupted one, with the same ``metrics.jsonl``.

A full disk is a small ``tmpfs`` and a read-only work dir a read-only bind mount, both made
by the test; both need root, as CI has on these machines. Elsewhere the two tests are
skipped with a reason (``-ra`` lists it), unless ``JAXCNN_REQUIRE_ROOT`` is set, as CI sets
it, where they fail instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.common import file_digests, run_summary

#: Exit code of a run that could not write a file (README, "Exit codes").
EXIT_WRITE = 4
STEPS = 300
FLAGS = ["--max-steps", str(STEPS), "--checkpoint-every", "50", "--log-every", "50"]


def train_command(workdir: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "jaxcnn.train", *FLAGS, *extra,
        "--data-dir", str(data_dir), "--workdir", str(workdir), "--no-progress",
    ]  # fmt: skip


def run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})}
    )


def error_lines(process: subprocess.CompletedProcess) -> list[str]:
    return [line for line in process.stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def reference(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of STEPS steps, checkpointed every 50."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    process = run(train_command(workdir, data_dir))
    assert process.returncode == 0, process.stderr
    return workdir


@pytest.fixture
def as_root() -> None:
    """Skip (with a reason) or fail, where mounting is not allowed."""
    if os.geteuid() == 0:
        return
    message = "mounting a tmpfs or a read-only bind mount needs root"
    if os.environ.get("JAXCNN_REQUIRE_ROOT"):
        pytest.fail(f"{message}, and JAXCNN_REQUIRE_ROOT is set")
    pytest.skip(message)


@contextlib.contextmanager
def mounted(*options: str, source: str, target: Path) -> Iterator[Path]:
    """Mount ``source`` on ``target`` with ``options`` inside the block."""
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", *options, source, str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


def assert_one_line_naming(process: subprocess.CompletedProcess, *words: str) -> str:
    lines = error_lines(process)
    assert len(lines) == 1, process.stderr
    assert "Traceback" not in process.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.mark.slow
def test_full_disk_ends_with_one_line_and_the_resume_is_exact(
    as_root, data_dir, reference, tmp_path
):
    disk = tmp_path / "disk"
    with mounted("-t", "tmpfs", "-o", "size=1200k", source="tmpfs", target=disk):
        workdir = disk / "run"
        command = train_command(workdir, data_dir, "--keep", "10")
        failed = run(command)
        assert failed.returncode == EXIT_WRITE, failed.stderr
        line = assert_one_line_naming(failed, "No space left on device", str(workdir))
        complete = sorted(
            int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()
        )
        assert complete, "the disk should hold at least one checkpoint"
        assert f"step {complete[-1]}" in line and "--workdir" in line
        status = json.loads((workdir / "status.json").read_text())
        assert status["status"] == "failed" or "status.json" in line
        left = file_digests(workdir)

        # The cause removed: the same disk, made larger. Nothing complete was deleted.
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        assert all(
            left[name] == digest
            for name, digest in file_digests(workdir).items()
            if name.startswith(f"checkpoints/{complete[-1]}/")
        )
        resumed = run(command)
        assert resumed.returncode == 0, resumed.stderr
        assert f"resuming from the checkpoint at step {complete[-1]}" in resumed.stdout
        assert run_summary(workdir)["params_sha256"] == run_summary(reference)["params_sha256"]
        assert (workdir / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
        assert not list(workdir.glob("*.tmp"))


#: Saves checkpoints into argv[1] until one fails, prints the error's one line, and lives
#: on for a second, as long as Orbax's threads and tensorstore's callbacks take to finish.
SAVE_UNTIL_FULL = """
import sys, time
import jax, jax.numpy as jnp, optax
from jaxcnn import models
from jaxcnn.errors import WriteError
from jaxcnn.training.checkpoints import Checkpoints
from jaxcnn.training.state import create_train_state
from jaxcnn.training.timetable import Position

state = create_train_state(models.CNN(), optax.adam(1e-3), jax.random.key(0), (28, 28, 1))
checkpoints = Checkpoints(sys.argv[1], keep=100)
for step in range(1, 100):
    try:
        checkpoints.save(state.replace(step=jnp.asarray(step)), Position(0, step, 0), 0.5)
    except WriteError as error:
        print(error, file=sys.stderr)
        break
time.sleep(1)
"""


@pytest.mark.parametrize("disk_kib", [937, 1196, 1344])
def test_a_failed_checkpoint_write_leaves_only_its_own_line_on_stderr(as_root, disk_kib, tmp_path):
    # Before the echoes were silenced, Orbax's absl tracebacks, asyncio's "Task exception
    # was never retrieved" and tensorstore's "Event loop is closed" came with the line on
    # each of these disk sizes; which of them comes depends on which write fails first.
    disk = tmp_path / "disk"
    with mounted("-t", "tmpfs", "-o", f"size={disk_kib}k", source="tmpfs", target=disk):
        process = run([sys.executable, "-c", SAVE_UNTIL_FULL, str(disk / "run")])
    assert process.returncode == 0, process.stderr
    assert_one_line_naming(process, "No space left on device", str(disk / "run"))


#: A failed write, then a write coroutine that never ran, collected as the interpreter ends
#: (as Orbax's writes still queued when the disk filled are): the CI echo of 2026-12-01.
UNAWAITED_WRITE_AFTER_FAILURE = """
import sys
from jaxcnn.quiet import write_failure_echoes_silenced

async def write_fragment():
    pass

try:
    with write_failure_echoes_silenced():
        raise OSError(28, "No space left on device")
except OSError as error:
    print(f"could not write: {error}", file=sys.stderr)
pending = write_fragment()
"""


def test_a_write_that_never_ran_after_a_failure_does_not_warn_on_stderr():
    process = run([sys.executable, "-c", UNAWAITED_WRITE_AFTER_FAILURE])
    assert process.returncode == 0, process.stderr
    assert_one_line_naming(process, "No space left on device")


def wait_for_checkpoint(workdir: Path, step: int, process: subprocess.Popen) -> None:
    """Wait until checkpoint ``step`` is complete in ``workdir`` (jaxcnn's file list written)."""
    deadline = time.monotonic() + 300
    while not (workdir / "checkpoints" / str(step) / "jaxcnn-files.json").is_file():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)


@pytest.mark.slow
def test_work_dir_made_read_only_mid_run_ends_with_one_line_and_resumes_exactly(
    as_root, data_dir, reference, tmp_path
):
    workdir = tmp_path / "run"
    command = train_command(workdir, data_dir)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_checkpoint(workdir, 50, process)
        process.send_signal(signal.SIGSTOP)
        before = file_digests(workdir)
        with mounted("--bind", source=str(workdir), target=workdir):
            subprocess.run(["mount", "-o", "remount,bind,ro", str(workdir)], check=True)
            process.send_signal(signal.SIGCONT)
            stdout, stderr = process.communicate(timeout=300)
            after = file_digests(workdir)
    finally:
        process.kill()
    failed = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    assert failed.returncode == EXIT_WRITE, stderr
    line = assert_one_line_naming(failed, "Read-only file system", "--workdir")
    assert "step 50" in line
    assert after == before  # nothing was written, nothing was lost
    assert "status.json" in line  # it could not be marked failed, and says so

    resumed = run(command)
    assert resumed.returncode == 0, resumed.stderr
    assert run_summary(workdir)["params_sha256"] == run_summary(reference)["params_sha256"]
    assert (workdir / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()


@pytest.mark.parametrize(
    ("flag", "split"), [("--batch-size", "training"), ("--eval-batch-size", "test")]
)
def test_a_batch_larger_than_its_split_is_refused_before_any_allocation(
    flag, split, data_dir, tmp_path
):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "keep.txt").write_text("mine\n")
    before = file_digests(workdir)
    process = run(train_command(workdir, data_dir, flag, "100000000"))
    assert process.returncode == 2, process.stderr
    assert_one_line_naming(process, flag, "100000000", split)
    assert file_digests(workdir) == before


@pytest.mark.slow
def test_a_run_that_cannot_fit_its_memory_stops_at_once(data_dir, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "keep.txt").write_text("mine\n")
    before = file_digests(workdir)
    command = train_command(workdir, data_dir, "--model", "vgg16", "--batch-size", "512")
    process = run(command, env={"JAXCNN_MEMORY_LIMIT": "1G"})
    assert process.returncode == 2, process.stderr
    line = assert_one_line_naming(process, "JAXCNN_MEMORY_LIMIT", "--batch-size", "--model")
    assert "GiB" in line
    assert file_digests(workdir) == before
    assert "epoch 0" not in process.stdout  # stopped before the first step
