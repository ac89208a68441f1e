"""Run every example command of README.md and write its output into the README.

The README's example outputs sit between markers::

    <!-- example:NAME:begin -->
    ```console
    $ python -m jaxcnn.train --max-steps 200 --workdir runs/quick
    ...the command's output...
    ```
    <sub>the machine it ran on</sub>
    <!-- example:NAME:end -->

This script reads the commands from those blocks (the README is the one list of them),
runs them in order as new processes in a fresh folder (so ``runs/quick`` is a run made
by an earlier block), on the real MNIST files, and rewrites each block with what the
command printed and a line naming the machine. An output shown as head lines, a line
``...`` and tail lines keeps that form: the same number of first and last lines.
``tests/test_readme.py`` runs the same commands (with the begin marker's ``test-args``
appended, where it has them) and checks that their output has the shape shown here.

    python experiments/readme_examples.py [--manual-dir ../shared/data/mnist] [--data-dir DIR]

Float rounding differs between CPU types, so the numbers come out slightly differently
on another machine; the shapes do not.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
#: Files of the repository that example commands read, copied into the example folder.
INPUTS = ("docs/examples",)
#: Pictures the examples draw that the README shows, copied back into the repository.
PICTURES = {"runs/tutorial/accuracy.png": "docs/tutorial_run/accuracy.png"}
ELISION = "..."
BLOCK = re.compile(
    r"<!-- example:(?P<name>[\w-]+):begin(?P<attrs>[^>]*)-->\n(?P<body>.*?)"
    r"<!-- example:(?P=name):end -->",
    re.DOTALL,
)
NUMBER = re.compile(r"\d+(?:[.,]\d+)*(?:e[+-]?\d+)?")


@dataclasses.dataclass(frozen=True)
class Example:
    """One command of a README block and the output the README shows for it."""

    command: str
    shown: list[str]

    def kept(self) -> tuple[int, int | None]:
        """Return how many first and last lines the README shows (None: all of them)."""
        if ELISION not in self.shown:
            return len(self.shown), None
        cut = self.shown.index(ELISION)
        return cut, len(self.shown) - cut - 1


@dataclasses.dataclass(frozen=True)
class Block:
    """A marked example block: its name, the begin marker's attributes, its commands."""

    name: str
    attrs: dict[str, str]
    examples: list[Example]


def parse_blocks(text: str) -> list[Block]:
    """Return the README's example blocks in order, each with its commands and outputs."""
    blocks = []
    for match in BLOCK.finditer(text):
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', match["attrs"]))
        fence = match["body"].split("```console\n", 1)[1].split("\n```", 1)[0]
        examples: list[Example] = []
        for line in fence.splitlines():
            if line.startswith("$ "):
                examples.append(Example(line[2:], []))
            else:
                examples[-1].shown.append(line)
        blocks.append(Block(match["name"], attrs, examples))
    return blocks


def shape(line: str) -> str:
    """Return ``line`` with every number as ``#`` and each run of spaces as one space."""
    return " ".join(NUMBER.sub("#", line).split())


def shown_form(example: Example, output: list[str]) -> list[str]:
    """Return ``output`` cut to the first and last lines the README shows for ``example``."""
    head, tail = example.kept()
    if tail is None:
        return output
    return [*output[:head], ELISION, *(output[len(output) - tail :] if tail else [])]


def shape_differences(example: Example, output: list[str]) -> list[str]:
    """Return how ``output`` differs in shape from what the README shows, line by line."""
    head, tail = example.kept()
    shown = [line for line in example.shown if line != ELISION]
    got = output if tail is None else output[:head] + output[len(output) - tail :]
    problems = [] if len(got) == len(shown) else [f"{len(got)} lines, README shows {len(shown)}"]
    for number, (want, line) in enumerate(zip(shown, got, strict=False)):
        if shape(want) != shape(line):
            problems.append(f"line {number}: {line!r} has not the shape of {want!r}")
    return problems


def machine() -> str:
    """Return the CPU model (with or without AVX-512), core count and jax version."""
    import jax

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    model = found[1].strip() if found else platform.processor() or platform.machine()
    avx512 = "with AVX-512" if re.search(r"\bavx512f\b", cpuinfo) else "without AVX-512"
    return f"{model} {avx512}, {os.cpu_count()} cores, jax {jax.__version__}"


def render(block: Block, outputs: list[list[str]], where: str) -> str:
    """Return the text between a block's markers for the outputs of its commands."""
    lines = ["```console"]
    for example, output in zip(block.examples, outputs, strict=True):
        lines += [f"$ {example.command}", *shown_form(example, output)]
    lines += ["```", f"<sub>Output of `experiments/readme_examples.py` on {where}.</sub>", ""]
    return "\n".join(lines)


def rewrite(text: str, rendered: dict[str, str]) -> str:
    """Return ``text`` with each named block's body replaced by ``rendered[name]``."""

    def replace(match: re.Match[str]) -> str:
        body = rendered.get(match["name"], match["body"])
        begin = f"<!-- example:{match['name']}:begin{match['attrs']}-->"
        return f"{begin}\n{body}<!-- example:{match['name']}:end -->"

    return BLOCK.sub(replace, text)


def run(command: str, folder: Path, env: dict[str, str]) -> list[str]:
    """Run ``command`` (``python -m ...``) in ``folder``; return its stdout's lines."""
    argv = shlex.split(command)
    argv[0] = sys.executable if argv[0] == "python" else argv[0]
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    print(f"{seconds:6.1f} s  exit {result.returncode}  $ {command}", file=sys.stderr)
    if result.returncode != 0:
        raise SystemExit(f"{command!r} failed:\n{result.stderr}")
    return result.stdout.rstrip("\n").splitlines()


def prepared_data_dir(folder: Path, manual_dir: str) -> str:
    """Prepare MNIST in ``folder`` from ``manual_dir``, so no example prints that step."""
    from jaxcnn import data

    folder.mkdir()
    data.load_dataset("mnist", str(folder), manual_dir)
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manual-dir", default=str(REPO.parent / "shared/data/mnist"))
    parser.add_argument("--data-dir", help="a tfds data dir (default: a new one, prepared)")
    args = parser.parse_args()
    text = README.read_text()
    with tempfile.TemporaryDirectory(prefix="readme_examples_") as temp:
        folder = Path(temp) / "examples"
        for path in INPUTS:
            shutil.copytree(REPO / path, folder / path)
        data_dir = args.data_dir or prepared_data_dir(Path(temp) / "tfds", args.manual_dir)
        env = {
            **os.environ,
            "TFDS_DATA_DIR": data_dir,
            "JAXCNN_MANUAL_DIR": args.manual_dir,
            # a new user's cache: empty at the first command (see jaxcnn.compilation_cache)
            "JAXCNN_COMPILATION_CACHE": str(Path(temp) / "xla-cache"),
        }
        where = machine()
        rendered = {
            block.name: render(block, [run(e.command, folder, env) for e in block.examples], where)
            for block in parse_blocks(text)
        }
        for source, target in PICTURES.items():
            (REPO / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / source, REPO / target)
    README.write_text(rewrite(text, rendered))
    print(f"rewrote {len(rendered)} example blocks of {README} ({where})", file=sys.stderr)


if __name__ == "__main__":
    main()
