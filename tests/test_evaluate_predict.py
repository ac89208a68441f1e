"""``jaxcnn.evaluate`` and ``jaxcnn.predict`` on a real checkpoint, and their bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.common import file_digests, run_cli, run_summary, save_pngs
from PIL import Image

from jaxcnn import evaluate, images, predict


@pytest.fixture()
def damaged(trained, tmp_path) -> Path:
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    return workdir


def test_evaluate_reports_what_training_measured(trained, data_dir, capsys):
    assert (
        run_cli(
            evaluate.cli_main, ["--workdir", str(trained), "--data-dir", str(data_dir), "--json"]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    summary = run_summary(trained)
    assert report["step"] == 300
    assert report["test_accuracy"] == summary["test_accuracy"]
    assert report["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-6)
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 10_000
    assert np.trace(matrix) == report["correct"]
    assert matrix.sum(axis=1).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    for index, name in enumerate(report["class_names"]):
        expected = matrix[index, index] / matrix[index].sum()
        assert report["per_class_accuracy"][name] == pytest.approx(expected)


def test_evaluate_text_and_an_older_step(trained, data_dir, capsys):
    assert (
        run_cli(
            evaluate.cli_main,
            ["--workdir", str(trained), "--data-dir", str(data_dir), "--step", "200"],
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("checkpoint step 200 of ")
    assert "per-class accuracy:" in out and "confusion matrix" in out


def test_predict_agrees_with_the_model_on_real_test_digits(trained, mnist, tmp_path, capsys):
    test = mnist["test"]
    paths = save_pngs(test.images[:20], tmp_path, "digit")
    assert run_cli(predict.cli_main, ["--workdir", str(trained), "--json", *paths]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    predicted = [int(r["predicted"]) for r in results]
    assert sum(p == t for p, t in zip(predicted, test.labels[:20], strict=True)) >= 18
    for result in results:
        assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_large_colour_dark_on_light_digits_are_converted_like_mnist(
    trained, mnist, tmp_path, capsys
):
    """A digit scanned big, in colour, dark on light, is read as the same digit."""
    test = mnist["test"]
    originals, converted = [], []
    for i in range(20):
        digit = test.images[i, :, :, 0]
        scan = Image.fromarray(255 - digit).resize((140, 112), Image.Resampling.BICUBIC)
        path = tmp_path / f"scan{i}.jpg"
        scan.convert("RGB").save(path, quality=95)
        converted.append(images.read_image(path))
        originals.append(str(path))
        rows, cols = np.nonzero(converted[-1] > 50)
        assert rows.max() - rows.min() < 21 and cols.max() - cols.min() < 21  # fits in 20x20
        mass = converted[-1].astype(float)
        centre = (
            mass.sum(1) @ np.arange(28) / mass.sum(),
            mass.sum(0) @ np.arange(28) / mass.sum(),
        )
        assert abs(centre[0] - 13.5) <= 1 and abs(centre[1] - 13.5) <= 1
    assert run_cli(predict.cli_main, ["--workdir", str(trained), "--json", *originals]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    predicted = [int(r["predicted"]) for r in results]
    assert sum(p == t for p, t in zip(predicted, test.labels[:20], strict=True)) >= 17


def test_grayscale_28x28_is_used_as_is(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "raw.png")
    np.testing.assert_array_equal(images.read_image(tmp_path / "raw.png"), pixels)


def bad_image(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}.png"
    if kind == "not-an-image":
        path.write_text("this is text, not a PNG\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "huge":
        with path.open("wb") as f:
            f.truncate(51 * 1024 * 1024)  # sparse: takes no disk space
    elif kind == "truncated-png":
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:40])
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("not-an-image", "cannot be read as an image"),
        ("empty", "is empty"),
        ("huge", "over the 50 MB limit"),
        ("truncated-png", "cannot be read as an image"),
        ("missing", "does not exist"),
    ],
)
def test_bad_images_are_refused_with_exit_2(kind, message, trained, tmp_path, capsys):
    path = bad_image(kind, tmp_path)
    before = file_digests(trained)
    assert run_cli(predict.cli_main, ["--workdir", str(trained), str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and message in err
    assert file_digests(trained) == before


def largest_file(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def truncate(workdir: Path) -> str:
    target = largest_file(workdir / "checkpoints" / "200" / "state")
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    return "200"


def corrupt(workdir: Path) -> str:
    target = largest_file(workdir / "checkpoints" / "200" / "state")
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = b"\xff" * 64
    target.write_bytes(bytes(raw))
    return "200"


def partially_written(workdir: Path) -> str:
    """A step folder some of whose files never got written."""
    shutil.copytree(workdir / "checkpoints" / "200", workdir / "checkpoints" / "250")
    shutil.rmtree(workdir / "checkpoints" / "250" / "state" / "ocdbt.process_0")
    return "250"


def evaluate_in_a_process(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jaxcnn.evaluate", *argv],
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )


def emptied(workdir: Path) -> str:
    """A step folder whose files are all gone."""
    for path in (workdir / "checkpoints" / "200").iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return "200"


@pytest.mark.parametrize("damage", [truncate, corrupt, partially_written, emptied])
def test_damaged_checkpoints_are_refused_and_nothing_else_changes(damage, damaged, data_dir):
    """Run as real processes: the user must see one line, and nothing Orbax left behind."""
    step = damage(damaged)
    before = file_digests(damaged)
    result = evaluate_in_a_process(
        ["--workdir", str(damaged), "--data-dir", str(data_dir), "--step", step]
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and f"step {step}" in result.stderr
    assert "Traceback" not in result.stderr
    assert file_digests(damaged) == before


def test_a_checkpoint_of_another_model_is_refused(damaged, data_dir, capsys, monkeypatch):
    """The config names a model whose shapes differ from the checkpoint's (5 classes)."""
    from jaxcnn import models

    monkeypatch.setitem(models.MODELS, "cnn5", lambda num_classes: models.CNN(num_classes=5))
    config = json.loads((damaged / "config.json").read_text())
    (damaged / "config.json").write_text(json.dumps({**config, "model": "cnn5"}))
    before = file_digests(damaged)
    argv = ["--workdir", str(damaged), "--data-dir", str(data_dir), "--step", "200"]
    assert run_cli(evaluate.cli_main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "step 200" in err and "params/out/" in err
    assert file_digests(damaged) == before


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda config: {**config, "model": "nosuchmodel"}, "--model 'nosuchmodel'"),
        (lambda config: [1, 2], "a JSON list, not an object"),
    ],
)
def test_a_config_that_is_not_a_jaxcnn_config_is_refused(edit, problem, damaged, capsys):
    config_path = damaged / "config.json"
    config_path.write_text(json.dumps(edit(json.loads(config_path.read_text()))))
    before = file_digests(damaged)
    for cli_main, extra in ((evaluate.cli_main, []), (predict.cli_main, ["x.png"])):
        assert run_cli(cli_main, ["--workdir", str(damaged), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{config_path} is not a jaxcnn config" in err
        assert problem in err
    assert file_digests(damaged) == before


def test_a_config_that_is_a_folder_is_refused(damaged, capsys):
    (damaged / "config.json").unlink()
    (damaged / "config.json").mkdir()
    assert run_cli(evaluate.cli_main, ["--workdir", str(damaged)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.json is not a jaxcnn config" in err


def test_a_step_that_does_not_exist_is_named_with_the_available_ones(trained, capsys):
    assert run_cli(evaluate.cli_main, ["--workdir", str(trained), "--step", "150"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint at step 150" in err and "available: 100, 200, 300" in err


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_missing_or_empty_workdir_is_refused(state, tmp_path, capsys):
    workdir = tmp_path / "run"
    if state == "empty":
        workdir.mkdir()
    for cli_main, extra in ((evaluate.cli_main, []), (predict.cli_main, ["x.png"])):
        assert run_cli(cli_main, ["--workdir", str(workdir), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(workdir) in err
    assert state == "empty" or not workdir.exists()


def test_evaluate_in_a_real_process_prints_one_line_on_error(tmp_path):
    result = evaluate_in_a_process(["--workdir", str(tmp_path / "none")])
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
