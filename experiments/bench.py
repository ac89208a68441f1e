"""jaxcnn against the PyTorch reference, side by side on this machine.

    pip install -e '.[bench]'
    python experiments/bench.py --manual-dir ../shared/data/mnist

Measures, alternating jaxcnn (A) and PyTorch (B) so that both see the same machine:

1. the train step at batch 64 (a batch gathered from the training set in memory, the
   forward pass, the gradient and the Adam update), per step, over ``--steps`` steps;
2. the forward pass over the 10,000 test images, in batches of 1000;
3. the tutorial's whole job, process start to finish (``python -m jaxcnn.train`` against
   ``experiments/torch_seed.py``: ``--job-epochs`` epochs with a test pass every 100
   batches), with the dataset already prepared;
4. the peak resident memory of each whole-job process;
5. the tutorial's own program (``experiments/tutorial_program.py``: torchvision's MNIST
   and DataLoader, as the tutorial prints it) against ``python -m jaxcnn.train``, whole
   process, ``--job-epochs`` epochs, with where each one's time goes: imports, data,
   initialisation, compilation, training, test passes, exit (``--tutorial-python``: a
   Python with torch and torchvision; ``--tutorial-rounds 0`` skips it);
6. process start to the first training step of ``python -m jaxcnn.train`` (the arrival of
   its ``compiled`` line, after which the loop dispatches step 1), with an empty
   compilation cache and with a warm one, ``--start-rounds`` times each.

(1) and (2) run in two long-lived worker processes, one per framework, that take turns:
while one measures, the other waits on its input. Each figure is the median over
``--rounds`` rounds; the ratio is PyTorch's time over jaxcnn's (above 1: jaxcnn is
faster). The table is printed and written as JSON (``--json``).

Before the whole-process runs, jaxcnn's modules are compiled to bytecode in the source
tree's ``__pycache__`` folders (git ignores them), as ``pip install`` does for an installed
package and as Python does at a first import. Where ``$PYTHONDONTWRITEBYTECODE`` is set (on
this project's machines it is), an editable install would otherwise compile them from
source at every start, 0.1–0.2 s that the tutorial's program, whose torch and torchvision
were installed with their bytecode, does not pay.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

EXPERIMENTS = Path(__file__).resolve().parent
REPO = EXPERIMENTS.parent
BATCH = 64


# ------------------------------------------------------------------------------ workers


class JaxWorker:
    """jaxcnn's train step and forward pass, as the training loop runs them."""

    def __init__(self, manual_dir: str, data_dir: str) -> None:
        from jaxcnn import xla_flags

        xla_flags.configure()  # as python -m jaxcnn.train does, before JAX starts its backend
        import jax
        import numpy as np

        from jaxcnn import data
        from jaxcnn.config import TrainConfig
        from jaxcnn.training.compile import compile_steps, example_batches, resolve_chunks
        from jaxcnn.training.evaluation import evaluate, placed_eval_batches
        from jaxcnn.training.parallel import create_placement
        from jaxcnn.training.state import new_state

        self.jax, self.np, self.data = jax, np, data
        self.config = TrainConfig()
        self.splits = data.load_dataset("mnist", data_dir, manual_dir)
        self.placement = create_placement(None)
        self.state = self.placement.replicate(new_state(self.config))
        train_batch, eval_batch = example_batches(self.config, self.splits, self.placement)
        chunks = resolve_chunks(None, self.state, self.placement, BATCH)  # as training
        self.compiled = compile_steps(
            self.state, train_batch, eval_batch, self.placement, chunks=chunks
        )
        self.test_batches = placed_eval_batches(self.splits["test"], 1000, self.placement)
        order = data.epoch_permutation(0, 0, len(self.splits["train"]))
        self.batches = list(data.batch_indices(order, BATCH))[:-1]  # full batches only
        self.evaluate = evaluate

    def step(self, count: int) -> float:
        """Return seconds per step over ``count`` steps, dispatched as the loop does."""
        start = time.perf_counter()
        for i in range(count):
            indices, mask = self.batches[i % len(self.batches)]
            batch = self.placement.put_batch(
                self.data.make_batch(self.splits["train"], indices, mask), BATCH
            )
            self.state, metrics = self.compiled.step(self.state, batch)
            if self.placement.wait_every_step:  # as the loop does (see jaxcnn.training.parallel)
                self.jax.block_until_ready(metrics)
        self.jax.block_until_ready((self.state, metrics))
        return (time.perf_counter() - start) / count

    def forward(self) -> float:
        """Return the seconds of one evaluation pass over the 10,000 test images."""
        start = time.perf_counter()
        self.evaluate(self.compiled.eval, self.state, self.test_batches)
        return time.perf_counter() - start


class TorchWorker:
    """The PyTorch reference's train step and forward pass (``experiments/torch_seed.py``)."""

    def __init__(self, manual_dir: str, data_dir: str) -> None:
        del data_dir
        import torch
        from torch_seed import load_split

        from jaxcnn.models.torch_interop import seed_cnn

        torch.manual_seed(0)
        self.torch = torch
        self.train = load_split(Path(manual_dir), "train").tensors
        self.test = load_split(Path(manual_dir), "t10k").tensors
        self.net = seed_cnn()
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=0.001)
        self.criterion = torch.nn.CrossEntropyLoss()
        self.order = torch.randperm(len(self.train[0]))

    def step(self, count: int) -> float:
        """Return seconds per step over ``count`` steps of the tutorial's training loop body."""
        images, labels = self.train
        self.net.train()
        start = time.perf_counter()
        for i in range(count):
            rows = self.order[(i * BATCH) % 59_968 :][:BATCH]
            loss = self.criterion(self.net(images[rows]), labels[rows])
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        return (time.perf_counter() - start) / count

    def forward(self) -> float:
        """Return the seconds of one forward pass over the 10,000 test images."""
        images, labels = self.test
        self.net.eval()
        start = time.perf_counter()
        right = 0
        with self.torch.no_grad():
            for i in range(0, len(images), 1000):
                right += (self.net(images[i : i + 1000]).argmax(1) == labels[i : i + 1000]).sum()
        right.item()
        return time.perf_counter() - start


def serve(kind: str, manual_dir: str, data_dir: str) -> None:
    """Answer the driver's requests (``step N``, ``forward``) on stdin with JSON lines."""
    worker = (JaxWorker if kind == "jax" else TorchWorker)(manual_dir, data_dir)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command, *rest = line.split()
        seconds = worker.step(int(rest[0])) if command == "step" else worker.forward()
        print(json.dumps({"seconds": seconds}), flush=True)


# ------------------------------------------------------------------------------- driver


class Remote:
    """A worker process the driver talks to."""

    def __init__(self, kind: str, args: argparse.Namespace) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                kind,
                "--manual-dir",
                args.manual_dir,
                "--data-dir",
                args.data_dir,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self.ask_raw()  # wait until it is ready

    def ask_raw(self, command: str | None = None) -> dict[str, Any]:
        """Send ``command`` (if any) and return the worker's JSON answer."""
        if command is not None:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("a benchmark worker died; run it alone to see its error")
        return json.loads(line)

    def ask(self, command: str) -> float:
        """Return the seconds the worker measured for ``command``."""
        return self.ask_raw(command)["seconds"]

    def close(self) -> None:
        """Stop the worker."""
        self.process.stdin.close()
        self.process.wait()


def run_job(command: list[str]) -> tuple[float, float]:
    """Run ``command`` to its end; return its wall seconds and peak resident memory in GB."""
    seconds, memory, _ = run_logged(command, dict(os.environ))
    return seconds, memory


def run_logged(
    command: list[str], env: dict[str, str], cwd: Path = REPO
) -> tuple[float, float, list[tuple[float, str]]]:
    """Run ``command`` in ``cwd`` to its end; return its wall seconds, peak memory in GB and,
    for each line it printed, the seconds since launch at which the line arrived (with its
    text)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, text=True, env=env)
    lines = [(time.perf_counter() - start, line) for line in process.stdout]
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed")
    return seconds, usage.ru_maxrss / 1e6, lines  # ru_maxrss is in kB on Linux


def train_command(
    args: argparse.Namespace, workdir: str, *flags: str, python: str = sys.executable
) -> list[str]:
    """Return the ``python -m jaxcnn.train`` command writing to ``workdir``, plus ``flags``."""
    command = [python, "-m", "jaxcnn.train", "--manual-dir", args.manual_dir]
    return [*command, "--data-dir", args.data_dir, "--workdir", workdir, "--no-progress", *flags]


def jaxcnn_phases(args: argparse.Namespace, workdir: str) -> dict[str, float]:
    """Run the tutorial's job with ``python -m jaxcnn.train``; return where its time went.

    The phases come from the arrival of its lines (``backend:`` once imported, ``compiled``
    once the data is loaded, the state initialised and the steps compiled, ``done:``
    once trained) and from ``summary.json`` (compilation, training, test passes).
    """
    command = train_command(args, workdir, "--epochs", str(args.job_epochs))
    wall, memory, lines = run_logged(command, {**os.environ, "PYTHONUNBUFFERED": "1"})
    at = {text.split()[0]: t for t, text in reversed(lines) if text.split()}  # first of each
    summary = json.loads((Path(workdir) / "summary.json").read_text())
    compile_seconds, tests = summary["compile_seconds"], summary["test_pass_seconds"]
    return phases(
        wall,
        memory,
        imports=at["backend:"],
        data_and_init=at["compiled"] - at["backend:"] - compile_seconds,
        compile=compile_seconds,
        training=summary["train_seconds"] - tests,
        tests=tests,
    )


def tutorial_phases(args: argparse.Namespace, scratch: str) -> dict[str, float]:
    """Run the tutorial's own program; return where its time went (its ``$TUTORIAL_TIMINGS``)."""
    raw = Path(scratch) / "MNIST" / "raw"  # where torchvision looks for the .gz files
    raw.mkdir(parents=True, exist_ok=True)
    for path in Path(args.manual_dir).glob("*.gz"):
        if not (raw / path.name).exists():
            (raw / path.name).symlink_to(path)
    timings = Path(scratch) / "timings.json"
    env = {
        **os.environ,
        "TUTORIAL_DATA_ROOT": scratch,
        "TUTORIAL_EPOCHS": str(args.job_epochs),
        "TUTORIAL_TIMINGS": str(timings),
    }
    command = [args.tutorial_python, str(EXPERIMENTS / "tutorial_program.py")]
    wall, memory, _ = run_logged(command, env)
    t = json.loads(timings.read_text())
    return phases(
        wall,
        memory,
        imports=t["imported"],
        data_and_init=t["model"] - t["imported"],
        compile=0.0,
        training=t["train"] - t["test"],
        tests=t["test"],
    )


def seconds_to_first_step(
    args: argparse.Namespace,
    workdir: str,
    cache_dir: str,
    tree: Path = REPO,
    max_steps: int = 1,
    python: str = sys.executable,
) -> float:
    """Run ``python -m jaxcnn.train`` up to step ``max_steps`` (one step in a new
    ``workdir``) from the source tree ``tree`` with the interpreter ``python``, with its
    compilation cache in ``cache_dir``; return the seconds from launch to its ``compiled``
    line (``python -m`` puts ``tree`` first on ``sys.path``)."""
    command = train_command(args, workdir, "--max-steps", str(max_steps), python=python)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "JAXCNN_COMPILATION_CACHE": cache_dir}
    _, _, lines = run_logged(command, env, cwd=tree)
    return next(t for t, text in lines if text.startswith("compiled"))


def start_to_first_step(args: argparse.Namespace, scratch: str) -> dict[str, list[float]]:
    """Return the seconds to the first step, ``--start-rounds`` times with an empty
    compilation cache and as often with a warm one (filled by one run not counted)."""
    warm_cache = f"{scratch}/cache-warm"
    seconds_to_first_step(args, f"{scratch}/start-fill", warm_cache)
    times: dict[str, list[float]] = {"empty cache": [], "warm cache": []}
    for index in range(args.start_rounds):
        times["empty cache"].append(
            seconds_to_first_step(args, f"{scratch}/start-e{index}", f"{scratch}/cache-e{index}")
        )
        times["warm cache"].append(
            seconds_to_first_step(args, f"{scratch}/start-w{index}", warm_cache)
        )
    return times


def check_tutorial_python(python: str) -> None:
    """Exit with one line (status 2) unless ``python`` imports what the tutorial program does."""
    imports = "import matplotlib, numpy, torch, torchvision"
    found = subprocess.run([python, "-c", imports], capture_output=True, text=True)
    if found.returncode != 0:
        reason = (found.stderr.strip().splitlines() or ["it did not start"])[-1]
        print(
            f"bench.py: error: --tutorial-python {python!r} cannot run the tutorial's program "
            f"({reason}); give a Python with torch, torchvision and matplotlib",
            file=sys.stderr,
        )
        raise SystemExit(2)


def phases(wall: float, memory: float, **seconds: float) -> dict[str, float]:
    """Return the phases' seconds, the rest of the wall time as ``exit``, and the totals."""
    return {**seconds, "exit": wall - sum(seconds.values()), "wall": wall, "memory_gb": memory}


def machine() -> dict[str, Any]:
    """Describe this machine and the versions measured."""
    import jax
    import torch

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def median_pair(
    measure_a: Any, measure_b: Any, rounds: int
) -> tuple[float, float, list[float], list[float]]:
    """Alternate ``measure_a`` and ``measure_b`` for ``rounds``; return both medians and values."""
    a_values, b_values = [], []
    for _ in range(rounds):
        a_values.append(measure_a())
        b_values.append(measure_b())
    return statistics.median(a_values), statistics.median(b_values), a_values, b_values


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run every measurement and return the results table."""
    rows = []
    jax_worker, torch_worker = Remote("jax", args), Remote("torch", args)
    try:
        for remote in (jax_worker, torch_worker):  # warm up: compile, caches, allocator
            remote.ask(f"step {args.steps}")
            remote.ask("forward")
        a, b, a_all, b_all = median_pair(
            lambda: jax_worker.ask(f"step {args.steps}"),
            lambda: torch_worker.ask(f"step {args.steps}"),
            args.rounds,
        )
        rows.append(row("train step, batch 64 (ms)", a * 1e3, b * 1e3, a_all, b_all, 1e3))
        a, b, a_all, b_all = median_pair(
            lambda: jax_worker.ask("forward"), lambda: torch_worker.ask("forward"), args.rounds
        )
        rows.append(row("forward, 10,000 test images (ms)", a * 1e3, b * 1e3, a_all, b_all, 1e3))
    finally:
        jax_worker.close()
        torch_worker.close()
    compileall.compile_dir(REPO / "jaxcnn", quiet=1)  # see the module's docstring
    with tempfile.TemporaryDirectory() as scratch:
        jobs = {"jax": [], "torch": []}
        for round_index in range(args.job_rounds):
            jobs["jax"].append(
                run_job(
                    train_command(
                        args, f"{scratch}/run{round_index}", "--epochs", str(args.job_epochs)
                    )
                )
            )
            jobs["torch"].append(
                run_job(
                    [
                        sys.executable,
                        str(EXPERIMENTS / "torch_seed.py"),
                        "--manual-dir",
                        args.manual_dir,
                        "--epochs",
                        str(args.job_epochs),
                    ]
                )
            )
        tutorial = {"jax": [], "tutorial": []}
        for round_index in range(args.tutorial_rounds):
            tutorial["jax"].append(jaxcnn_phases(args, f"{scratch}/phases{round_index}"))
            tutorial["tutorial"].append(tutorial_phases(args, f"{scratch}/tutorial"))
        start = start_to_first_step(args, scratch) if args.start_rounds else {}
    for name in PHASES if args.tutorial_rounds else ():
        a_all = [run[name] for run in tutorial["jax"]]
        b_all = [run[name] for run in tutorial["tutorial"]]
        label = f"the tutorial's program: {name}" + ("" if name == "memory_gb" else " (s)")
        rows.append(row(label, statistics.median(a_all), statistics.median(b_all), a_all, b_all))
    for index, name in ((0, "whole seed job (s)"), (1, "peak resident memory (GB)")):
        if not args.job_rounds:
            break
        a_all = [job[index] for job in jobs["jax"]]
        b_all = [job[index] for job in jobs["torch"]]
        rows.append(row(name, statistics.median(a_all), statistics.median(b_all), a_all, b_all))
    return {
        "machine": machine(),
        "settings": {
            "steps": args.steps,
            "rounds": args.rounds,
            "job_epochs": args.job_epochs,
            "job_rounds": args.job_rounds,
            "tutorial_rounds": args.tutorial_rounds,
            "start_rounds": args.start_rounds,
        },
        "rows": rows,
        "start_to_first_step": start,
    }


#: The phases of a whole job, in order, then its totals (see :func:`phases`).
PHASES = ("imports", "data_and_init", "compile", "training", "tests", "exit", "wall", "memory_gb")


def row(
    name: str,
    jax_value: float,
    torch_value: float,
    jax_all: list[float],
    torch_all: list[float],
    scale: float = 1.0,
) -> dict[str, Any]:
    """Return one table row: both medians, PyTorch ÷ jaxcnn, and every measured value."""
    return {
        "figure": name,
        "jaxcnn": jax_value,
        "pytorch": torch_value,
        "pytorch / jaxcnn": torch_value / jax_value,
        "jaxcnn_values": [value * scale for value in jax_all],
        "pytorch_values": [value * scale for value in torch_all],
    }


def format_table(result: dict[str, Any]) -> str:
    """Return the results as a Markdown table with the machine underneath."""
    lines = [
        "| figure | jaxcnn | PyTorch | PyTorch ÷ jaxcnn |",
        "| --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['figure']} | {r['jaxcnn']:.2f} | {r['pytorch']:.2f} | "
            f"{r['pytorch / jaxcnn']:.2f}× |"
        )
    m, s = result["machine"], result["settings"]
    lines.append("")
    lines.append(
        f"{m['cpu']}, {m['cores']} cores; jax {m['jax']} ({m['backend']}), torch {m['torch']} "
        f"({m['torch_threads']} threads), Python {m['python']}. Medians of {s['rounds']} "
        f"alternating rounds ({s['steps']} steps each) and of {s['job_rounds']} whole jobs "
        f"of {s['job_epochs']} epochs."
    )
    for cache, seconds in result["start_to_first_step"].items():
        each = ", ".join(f"{value:.2f}" for value in seconds)
        lines.append(f"jaxcnn, process start to the first step, {cache}: {each} s")
    return "\n".join(lines)


def main() -> None:
    """Parse the flags; run as the driver, or as a worker when ``--worker`` is given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manual-dir", default=str(REPO.parent / "shared/data/mnist"))
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("TFDS_DATA_DIR", str(Path.home() / "tensorflow_datasets")),
        help="tfds data dir holding (or to hold) the prepared MNIST",
    )
    parser.add_argument("--steps", type=int, default=50, help="train steps per round")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds")
    parser.add_argument("--job-epochs", type=int, default=3, help="epochs of each whole job")
    parser.add_argument(
        "--job-rounds", type=int, default=2, help="whole jobs of each program (0: none)"
    )
    parser.add_argument(
        "--tutorial-rounds",
        type=int,
        default=1,
        help="whole jobs of the tutorial's own program and of jaxcnn, with their phases (0: none)",
    )
    parser.add_argument(
        "--tutorial-python",
        default=sys.executable,
        help="a Python with torch and torchvision, to run experiments/tutorial_program.py",
    )
    parser.add_argument(
        "--start-rounds",
        type=int,
        default=3,
        help="runs of jaxcnn to its first step with an empty and a warm compilation cache",
    )
    parser.add_argument("--json", type=Path, default=EXPERIMENTS / "bench.json")
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        serve(args.worker, args.manual_dir, args.data_dir)
        return
    if args.tutorial_rounds:
        check_tutorial_python(args.tutorial_python)
    result = benchmark(args)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(result))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
