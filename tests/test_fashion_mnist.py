"""``--dataset fashion_mnist`` on the real files: training, and class names in evaluate/predict."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.common import run_cli, run_summary, save_pngs

from jaxcnn import data, evaluate, predict, train

#: After 200 steps (12,800 images) the tutorial's CNN is at 78.86% on Fashion-MNIST's test
#: set with seed 0 here (75.00% after 100); chance is 10%, and a run on wrongly read
#: data, or labels paired with the wrong images, stays far below.
SHORT_RUN_MIN_ACCURACY = 0.72
NAMES = data.DATASETS["fashion_mnist"].class_names


@pytest.fixture(scope="module")
def fashion_run(prepared_fashion_mnist, tmp_path_factory):
    data_dir, _ = prepared_fashion_mnist
    path = tmp_path_factory.mktemp("fashion") / "run"
    argv = ["--dataset", "fashion_mnist", "--max-steps", "200", "--data-dir", str(data_dir)]
    assert run_cli(train.cli_main, [*argv, "--workdir", str(path)]) == 0
    return path


def test_fashion_mnist_is_read_whole_from_the_real_files(prepared_fashion_mnist):
    _, splits = prepared_fashion_mnist
    assert splits["train"].images.shape == (60_000, 28, 28, 1)
    assert splits["test"].images.shape == (10_000, 28, 28, 1)
    assert np.bincount(splits["test"].labels).tolist() == [1000] * 10  # balanced classes


def test_short_training_on_fashion_mnist_learns(fashion_run):
    summary = run_summary(fashion_run)
    assert summary["config"]["dataset"] == "fashion_mnist" and summary["steps"] == 200
    assert summary["test_accuracy"] >= SHORT_RUN_MIN_ACCURACY


def test_evaluate_names_fashion_classes(fashion_run, prepared_fashion_mnist, capsys):
    data_dir, _ = prepared_fashion_mnist
    argv = ["--workdir", str(fashion_run), "--data-dir", str(data_dir)]
    assert run_cli(evaluate.cli_main, [*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"] == "fashion_mnist" and report["class_names"] == list(NAMES)
    assert sum(np.array(report["confusion_matrix"]).sum(axis=1) == 1000) == 10
    text = evaluate.format_report(report, str(fashion_run))  # the output without --json
    assert "(cnn on fashion_mnist)" in text and "Ankle boot" in text and "T-shirt/top" in text


def test_predict_names_fashion_classes(fashion_run, prepared_fashion_mnist, tmp_path, capsys):
    _, splits = prepared_fashion_mnist
    test = splits["test"]
    paths = save_pngs(test.images[:20], tmp_path, "item")
    assert run_cli(predict.cli_main, ["--workdir", str(fashion_run), "--json", *paths]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert all(set(result["probabilities"]) == set(NAMES) for result in results)
    predicted = [NAMES.index(result["predicted"]) for result in results]
    assert sum(p == t for p, t in zip(predicted, test.labels[:20], strict=True)) >= 13
