"""Shared fixtures: the real MNIST files, prepared once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from jaxcnn import data, train
from jaxcnn.compilation_cache import CACHE_ENV

REPO = Path(__file__).resolve().parents[1]
#: Scripts the tests run as processes; not test modules (--doctest-modules would import them).
collect_ignore = ["helpers"]


def find_manual_dir() -> Path:
    """Return the folder of the original MNIST files: $JAXCNN_MANUAL_DIR, else ../shared."""
    candidate = Path(os.environ.get(data.MANUAL_DIR_ENV) or REPO.parent / "shared/data/mnist")
    missing = [name for name in data.DATASETS["mnist"].files if not (candidate / name).is_file()]
    if missing:
        pytest.fail(
            f"the data tests need the original MNIST files in {candidate} (missing: {missing}); "
            f"set {data.MANUAL_DIR_ENV} to a folder holding them"
        )
    return candidate.resolve()


def find_fashion_mnist_dir() -> Path:
    """Return the folder of the original Fashion-MNIST files: the ``fashion_mnist`` folder
    beside the MNIST one ($JAXCNN_MANUAL_DIR/../fashion_mnist, else ../shared/data)."""
    candidate = find_manual_dir().parent / "fashion_mnist"
    spec = data.DATASETS["fashion_mnist"]
    missing = [name for name in spec.files if not (candidate / name).is_file()]
    if missing:
        pytest.fail(
            f"the Fashion-MNIST tests need the original files in {candidate} (missing: "
            f"{missing}), beside the MNIST folder"
        )
    return candidate


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One compilation cache for the session (one per pytest-xdist worker) and the processes
    it starts, in a temp folder.

    The tests never write to ~/.cache, and a step compiled by one test is loaded by the next.
    """
    path = tmp_path_factory.mktemp("xla-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(path))
        yield path


@pytest.fixture(scope="session")
def manual_dir() -> Path:
    return find_manual_dir()


@pytest.fixture(scope="session")
def prepared_mnist(
    tmp_path_factory: pytest.TempPathFactory, manual_dir: Path
) -> tuple[Path, dict[str, data.Split]]:
    """Return a tfds data dir with MNIST prepared from the real files (~10 s), and its splits."""
    path = tmp_path_factory.mktemp("tfds")
    return path, data.load_dataset("mnist", str(path), str(manual_dir))


@pytest.fixture(scope="session")
def data_dir(prepared_mnist: tuple[Path, dict[str, data.Split]]) -> Path:
    return prepared_mnist[0]


@pytest.fixture(scope="session")
def mnist(prepared_mnist: tuple[Path, dict[str, data.Split]]) -> dict[str, data.Split]:
    return prepared_mnist[1]


@pytest.fixture(scope="session")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 300 steps, logged with --log-grads at steps 1, 101 and 201 and checkpointed
    at 100, 200 and 300 (about 96% on the test set)."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    argv = ["--max-steps", "300", "--checkpoint-every", "100", "--log-grads"]
    assert train.cli_main([*argv, "--data-dir", str(data_dir), "--workdir", str(workdir)]) == 0
    return workdir


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    return find_fashion_mnist_dir()


@pytest.fixture(scope="session")
def prepared_fashion_mnist(
    tmp_path_factory: pytest.TempPathFactory, fashion_mnist_dir: Path
) -> tuple[Path, dict[str, data.Split]]:
    """Return a tfds data dir with Fashion-MNIST prepared from the real files, and its splits."""
    path = tmp_path_factory.mktemp("tfds_fashion")
    return path, data.load_dataset("fashion_mnist", str(path), str(fashion_mnist_dir))
